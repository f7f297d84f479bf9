//! The capacity profile: what `kiroku bench capacity` measured on this box
//! (`data_dir/capacity.json`), and the reference profile used until it
//! has been run. Pure data and its conversion to cost-model points.

use serde::{Deserialize, Serialize};

use super::cost::{Point, ShapeKind, TaskShape};

pub const PROFILE_VERSION: u32 = 1;

/// One measured task shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileResult {
    /// e.g. `single-2av`, `mixed-4x360p-720p15`.
    pub name: String,
    pub shape: ShapeSpec,
    /// The most tasks of this shape that ran in real time at once.
    pub held_tasks: u32,
    /// Daemon CPU (cores) per task at `held_tasks`.
    pub cpu_cores_per_task: f64,
    /// Daemon resident memory per task at `held_tasks` (bytes, above idle).
    pub rss_bytes_per_task: f64,
    /// What broke first one step above (`frames`, `drops`, `latency`,
    /// `api`, `publisher`, or `none` when the ramp stopped at its ceiling).
    pub limit: String,
}

/// A task shape as the profile writes it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShapeSpec {
    /// `single`, `mixed` or `mixed_audio`.
    pub mode: ShapeMode,
    /// Audio+video users per task.
    pub users: u32,
    #[serde(default)]
    pub width: u32,
    #[serde(default)]
    pub height: u32,
    #[serde(default)]
    pub fps: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShapeMode {
    Single,
    Mixed,
    MixedAudio,
}

impl ShapeSpec {
    pub fn task_shape(&self) -> TaskShape {
        let kind = match self.mode {
            ShapeMode::Single => ShapeKind::Single,
            ShapeMode::Mixed => ShapeKind::Mixed {
                width: self.width,
                height: self.height,
                fps: self.fps,
            },
            ShapeMode::MixedAudio => ShapeKind::MixedAudio,
        };
        let (av, audio) = match self.mode {
            ShapeMode::MixedAudio => (0, self.users),
            _ => (self.users, 0),
        };
        TaskShape {
            kind,
            av_users: av,
            audio_users: audio,
            video_users: 0,
        }
    }
}

/// The task shapes `kiroku bench capacity` measures, by name, in the order
/// it runs them (docs/performance.md "Capacity").
pub fn named_shapes() -> [(&'static str, ShapeSpec); 7] {
    let s = |mode, users, (width, height, fps)| ShapeSpec {
        mode,
        users,
        width,
        height,
        fps,
    };
    [
        ("single-1av", s(ShapeMode::Single, 1, (0, 0, 0))),
        ("single-5av", s(ShapeMode::Single, 5, (0, 0, 0))),
        ("single-25av", s(ShapeMode::Single, 25, (0, 0, 0))),
        (
            "mixed-4x360p-720p15",
            s(ShapeMode::Mixed, 4, (1280, 720, 15)),
        ),
        (
            "mixed-9x360p-720p15",
            s(ShapeMode::Mixed, 9, (1280, 720, 15)),
        ),
        (
            "mixed-25x360p-1080p15",
            s(ShapeMode::Mixed, 25, (1920, 1080, 15)),
        ),
        ("mixed-audio-4", s(ShapeMode::MixedAudio, 4, (0, 0, 0))),
    ]
}

/// What the machine was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub cpus: u32,
    pub cpu_model: String,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityProfile {
    pub version: u32,
    /// RFC 3339.
    pub measured_at: String,
    pub kiroku_version: String,
    pub host: Host,
    /// The mixed compositor and encoder the daemon used (`cpu`, `wgpu …`;
    /// `openh264`, `nvenc`).
    pub compositor: String,
    pub encoder: String,
    pub results: Vec<ProfileResult>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a capacity profile: {reason}")]
    Invalid { path: String, reason: String },
}

impl CapacityProfile {
    /// Parses and checks a profile (`path` names it in errors).
    pub fn parse(text: &str, path: &str) -> Result<Self, ProfileError> {
        let invalid = |reason: String| ProfileError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let p: CapacityProfile = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if p.version != PROFILE_VERSION {
            return Err(invalid(format!(
                "version {} (this kiroku reads {PROFILE_VERSION}): run kiroku bench capacity again",
                p.version
            )));
        }
        if p.results.iter().all(|r| r.held_tasks == 0) {
            return Err(invalid("no shape held a task in real time".into()));
        }
        Ok(p)
    }

    pub fn load(path: &std::path::Path) -> Result<Option<Self>, ProfileError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ProfileError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// The measured points, `held` scaled by `scale` (the reference
    /// profile on a box with more or fewer cores).
    pub fn points(&self, scale: f64) -> Vec<Point> {
        self.results
            .iter()
            .filter(|r| r.held_tasks > 0)
            .map(|r| Point {
                shape: r.shape.task_shape(),
                held: f64::from(r.held_tasks) * scale,
            })
            .collect()
    }

    /// Measured with `kiroku bench capacity --quick` (release build) on
    /// the 2-core development VM, 2026-12-03 (docs/performance.md
    /// "Capacity"): what a box assumes per 2 cores until it has been
    /// measured itself. The mixed 9-input ramp was stopped early (8 is a
    /// lower bound); the 25-input 1080p and audio-only shapes come from a
    /// second run of the same day (docs/performance.md "Capacity").
    pub fn reference() -> Self {
        let r = |name: &str, held| {
            named_shapes()
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, shape)| ProfileResult {
                    name: name.to_owned(),
                    shape,
                    held_tasks: held,
                    cpu_cores_per_task: 0.0,
                    rss_bytes_per_task: 0.0,
                    limit: "reference".to_owned(),
                })
        };
        CapacityProfile {
            version: PROFILE_VERSION,
            measured_at: "2026-12-03T00:00:00Z".to_owned(),
            kiroku_version: env!("CARGO_PKG_VERSION").to_owned(),
            host: Host {
                cpus: 2,
                cpu_model: "reference: 2-core development VM".to_owned(),
                memory_bytes: 0,
            },
            compositor: "cpu".to_owned(),
            encoder: "openh264".to_owned(),
            results: [
                r("single-1av", 256),
                r("single-5av", 56),
                r("single-25av", 12),
                r("mixed-4x360p-720p15", 20),
                r("mixed-9x360p-720p15", 8),
                r("mixed-25x360p-1080p15", 5),
                r("mixed-audio-4", 80),
            ]
            .into_iter()
            .flatten()
            .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_round_trips_and_bad_ones_say_why() {
        let p = CapacityProfile::reference();
        let text = serde_json::to_string_pretty(&p).expect("serialises");
        assert_eq!(CapacityProfile::parse(&text, "x").expect("parses"), p);
        let old = text.replace("\"version\": 1", "\"version\": 0");
        let e = CapacityProfile::parse(&old, "capacity.json").expect_err("old version");
        assert!(
            e.to_string().contains("run kiroku bench capacity again"),
            "{e}"
        );
        let e = CapacityProfile::parse("{}", "capacity.json").expect_err("empty");
        assert!(e.to_string().contains("capacity.json"), "{e}");
        assert_eq!(p.points(2.0)[0].held, 512.0);
        assert_eq!(p.results.len(), 7, "every reference shape is a named one");
    }
}
