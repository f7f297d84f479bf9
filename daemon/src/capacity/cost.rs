//! What a task costs, in *units*: hundredths of this box's measured
//! capacity (100 units = the most work the box did in real time). Pure:
//! a [`TaskShape`] and a [`CostModel`] fitted to a capacity profile in,
//! a number out.
//!
//! The model is linear in what the recorders do:
//! - single-stream: a fixed part per task and a part per recorded user
//!   (an audio+video user counts 1; audio alone 0.3, video alone 0.7 —
//!   the profile measures A/V users only, so the split is an assumption,
//!   documented in docs/performance.md);
//! - mixed: a fixed part, a part per decoded 360p15 input
//!   (inputs are counted in 640×360×15 pixel rates), a part per encoded
//!   output (in 1280×720×15 pixel rates) and a part per mixed audio;
//! - audio-only mixed: a fixed part and a part per mixed audio.
//!
//! Each part is solved from the profile's measured points (tasks of a
//! known shape that the box held in real time: one such task costs
//! `100 / held` units).

use serde::{Deserialize, Serialize};

/// Pixel rate of one 640×360 input at 15 fps.
pub const INPUT_UNIT: f64 = 640.0 * 360.0 * 15.0;
/// Pixel rate of a 1280×720 canvas at 15 fps.
pub const OUTPUT_UNIT: f64 = 1280.0 * 720.0 * 15.0;

/// What a task does, as far as cost goes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TaskShape {
    pub kind: ShapeKind,
    /// Recorded (or, before they publish, expected) users by media.
    pub av_users: u32,
    pub audio_users: u32,
    pub video_users: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum ShapeKind {
    Single,
    Mixed { width: u32, height: u32, fps: u32 },
    MixedAudio,
}

impl TaskShape {
    /// Users weighted by what their media costs (A/V = 1).
    fn weighted_users(&self) -> f64 {
        f64::from(self.av_users)
            + 0.3 * f64::from(self.audio_users)
            + 0.7 * f64::from(self.video_users)
    }

    fn video_inputs(&self) -> f64 {
        f64::from(self.av_users) + f64::from(self.video_users)
    }

    fn audio_inputs(&self) -> f64 {
        f64::from(self.av_users) + f64::from(self.audio_users)
    }
}

/// Units per part, fitted to a profile.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct CostModel {
    pub single_task: f64,
    pub single_user: f64,
    pub mixed_task: f64,
    pub mixed_input: f64,
    pub mixed_output: f64,
    pub mixed_audio_task: f64,
    pub mixed_audio_user: f64,
}

impl CostModel {
    pub fn cost(&self, s: &TaskShape) -> f64 {
        match s.kind {
            ShapeKind::Single => self.single_task + self.single_user * s.weighted_users(),
            ShapeKind::Mixed { width, height, fps } => {
                let out = f64::from(width) * f64::from(height) * f64::from(fps) / OUTPUT_UNIT;
                self.mixed_task
                    + self.mixed_input * s.video_inputs()
                    + self.mixed_output * out
                    + self.mixed_audio_user * s.audio_inputs()
            }
            ShapeKind::MixedAudio => {
                self.mixed_audio_task + self.mixed_audio_user * s.audio_inputs()
            }
        }
    }
}

/// A measured point: `held` tasks of `shape` ran in real time at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub shape: TaskShape,
    pub held: f64,
}

impl Point {
    fn units(&self) -> f64 {
        100.0 / self.held.max(1e-9)
    }
}

/// Fits the model to measured points. Each family of shapes is fitted by
/// least squares over its points, with every part kept ≥ 0 (a part that
/// would come out negative — noise between close points — is dropped and
/// the rest refitted). A family without points keeps `fallback`'s parts.
pub fn fit(points: &[Point], fallback: &CostModel) -> CostModel {
    let mut m = *fallback;
    let singles: Vec<(Vec<f64>, f64)> = points
        .iter()
        .filter(|p| matches!(p.shape.kind, ShapeKind::Single))
        .map(|p| (vec![1.0, p.shape.weighted_users()], p.units()))
        .collect();
    if let Some(x) = nonnegative_least_squares(&singles, 2) {
        (m.single_task, m.single_user) = (x[0], x[1]);
    }
    let audio: Vec<&Point> = points
        .iter()
        .filter(|p| matches!(p.shape.kind, ShapeKind::MixedAudio))
        .collect();
    if audio.is_empty() {
        // Not measured: an audio-only mix costs what recording its users'
        // audio does (a task, and 0.3 of an A/V user each), an assumption
        // docs/performance.md states.
        if m.mixed_audio_task == 0.0 && m.mixed_audio_user == 0.0 {
            m.mixed_audio_task = m.single_task;
            m.mixed_audio_user = 0.3 * m.single_user;
        }
    } else {
        // One measured size: split it half per task, half per user (the
        // audio mix and its AAC encode per task, an Opus decode per user).
        let per: f64 = audio.iter().map(|p| p.units()).sum::<f64>() / audio.len() as f64;
        let users: f64 =
            audio.iter().map(|p| p.shape.audio_inputs()).sum::<f64>() / audio.len() as f64;
        m.mixed_audio_task = per / 2.0;
        m.mixed_audio_user = per / 2.0 / users.max(1.0);
    }
    let mixed: Vec<(Vec<f64>, f64)> = points
        .iter()
        .filter_map(|p| match p.shape.kind {
            ShapeKind::Mixed { width, height, fps } => {
                let out = f64::from(width) * f64::from(height) * f64::from(fps) / OUTPUT_UNIT;
                // The audio part is known from the audio-only points.
                let audio = m.mixed_audio_user * p.shape.audio_inputs();
                Some((
                    vec![1.0, p.shape.video_inputs(), out],
                    (p.units() - audio).max(0.0),
                ))
            }
            _ => None,
        })
        .collect();
    if let Some(x) = nonnegative_least_squares(&mixed, 3) {
        (m.mixed_task, m.mixed_input, m.mixed_output) = (x[0], x[1], x[2]);
    }
    m
}

/// Least squares `min |A x - b|` with `x ≥ 0` by dropping negative
/// coefficients (tiny systems: at most 3 unknowns). `None` without rows.
fn nonnegative_least_squares(rows: &[(Vec<f64>, f64)], n: usize) -> Option<Vec<f64>> {
    if rows.is_empty() {
        return None;
    }
    let mut active: Vec<usize> = (0..n).collect();
    loop {
        let x = least_squares(rows, &active)?;
        let mut full = vec![0.0; n];
        for (i, &j) in active.iter().enumerate() {
            full[j] = x[i];
        }
        match active.iter().position(|&j| full[j] < 0.0) {
            None => return Some(full),
            Some(worst) => {
                active.remove(worst);
                if active.is_empty() {
                    return Some(vec![0.0; n]);
                }
            }
        }
    }
}

/// Least squares over the columns in `cols` (normal equations, Gaussian
/// elimination with pivoting; a singular system drops its last column).
fn least_squares(rows: &[(Vec<f64>, f64)], cols: &[usize]) -> Option<Vec<f64>> {
    let k = cols.len();
    if k == 0 {
        return None;
    }
    let mut a = vec![vec![0.0; k + 1]; k];
    for (r, b) in rows {
        for i in 0..k {
            for j in 0..k {
                a[i][j] += r[cols[i]] * r[cols[j]];
            }
            a[i][k] += r[cols[i]] * b;
        }
    }
    for col in 0..k {
        let pivot = (col..k).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            // Fewer independent points than parts: fit without the last.
            return least_squares(rows, &cols[..k - 1]).map(|mut x| {
                x.push(0.0);
                x
            });
        }
        a.swap(col, pivot);
        let pivot_row = a[col].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (x, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    Some((0..k).map(|i| a[i][k] / a[i][i]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(users: u32) -> TaskShape {
        TaskShape {
            kind: ShapeKind::Single,
            av_users: users,
            audio_users: 0,
            video_users: 0,
        }
    }

    fn mixed(users: u32, width: u32, height: u32) -> TaskShape {
        TaskShape {
            kind: ShapeKind::Mixed {
                width,
                height,
                fps: 15,
            },
            av_users: users,
            audio_users: 0,
            video_users: 0,
        }
    }

    #[test]
    fn a_linear_box_is_fitted_exactly_and_predicts_other_shapes() {
        // A box where a single task costs 0.2 + 0.3 per user.
        let truth = |u: u32| 0.2 + 0.3 * f64::from(u);
        let points: Vec<Point> = [1, 5, 25]
            .iter()
            .map(|&u| Point {
                shape: single(u),
                held: 100.0 / truth(u),
            })
            .collect();
        let m = fit(&points, &CostModel::default());
        assert!((m.single_task - 0.2).abs() < 1e-9, "{m:?}");
        assert!((m.single_user - 0.3).abs() < 1e-9, "{m:?}");
        assert!((m.cost(&single(2)) - 0.8).abs() < 1e-9);
    }

    #[test]
    fn mixed_parts_come_from_three_shapes_and_stay_nonnegative() {
        // 1 unit a task, 2 per input, 10 per 720p15 output.
        let truth = |n: u32, out: f64| 1.0 + 2.0 * f64::from(n) + 10.0 * out;
        let p1080 = 1920.0 * 1080.0 / (1280.0 * 720.0);
        let points = [
            Point {
                shape: mixed(4, 1280, 720),
                held: 100.0 / truth(4, 1.0),
            },
            Point {
                shape: mixed(9, 1280, 720),
                held: 100.0 / truth(9, 1.0),
            },
            Point {
                shape: mixed(25, 1920, 1080),
                held: 100.0 / truth(25, p1080),
            },
        ];
        let m = fit(&points, &CostModel::default());
        assert!((m.mixed_task - 1.0).abs() < 1e-6, "{m:?}");
        assert!((m.mixed_input - 2.0).abs() < 1e-6, "{m:?}");
        assert!((m.mixed_output - 10.0).abs() < 1e-6, "{m:?}");
        // Noisy points that would need a negative fixed part: it is dropped.
        let noisy = [
            Point {
                shape: single(1),
                held: 400.0,
            },
            Point {
                shape: single(5),
                held: 70.0,
            },
            Point {
                shape: single(25),
                held: 15.0,
            },
        ];
        let m = fit(&noisy, &CostModel::default());
        assert!(m.single_task >= 0.0 && m.single_user > 0.0, "{m:?}");
    }

    #[test]
    fn families_without_points_keep_the_fallback() {
        let fallback = CostModel {
            mixed_task: 3.0,
            ..CostModel::default()
        };
        let m = fit(
            &[Point {
                shape: single(1),
                held: 100.0,
            }],
            &fallback,
        );
        assert_eq!(m.mixed_task, 3.0);
        assert!(m.single_task + m.single_user > 0.99);
    }
}
