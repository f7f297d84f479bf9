//! Capacity: what this box can record, what its tasks cost, and whether
//! one more fits (admission by cost).
//!
//! ```text
//!   capacity.json (kiroku bench capacity) ──profile──▶ cost::fit ──▶ CostModel
//!   task spec + room's publishers ──shape──▶ cost ──▶ admit? (used + cost ≤ fraction × 100)
//!   record::load (per-task CPU, lag, streams) ──▶ /v1/capacity, kiroku_task_* metrics
//! ```
//!
//! - `cost` (pure): task shapes and the linear cost model, in units of a
//!   hundredth of the box's measured capacity.
//! - `profile` (pure data): the measured profile and the reference one
//!   used until `kiroku bench capacity` has run on this box.
//! - This file: the [`Capacity`] ledger the task manager asks before a
//!   Create, and the report behind `GET /v1/capacity` and `/metrics`.
//!
//! Out of scope: measuring the box (`benchmark`, `kiroku bench capacity`,
//! writes the profile), counting tasks (`limits.max_tasks`, the task
//! manager), and placement across a fleet (`cluster`).

pub mod cost;
pub mod profile;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Gauge, GaugeVec, IntGauge};
use serde::Serialize;

use crate::domain::params::{RecordMode, RecordingSpec, StreamType};
use crate::metrics::Metrics;
use crate::record::load::{LoadBoard, LoadReading};
use cost::{CostModel, ShapeKind, TaskShape};
use profile::CapacityProfile;

/// Where the cost model came from.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileInfo {
    /// `measured` (this box's capacity.json) or `reference`.
    pub source: &'static str,
    pub path: String,
    pub measured_at: String,
    pub host_cpus: u32,
    pub cpus_here: u32,
    pub compositor: String,
    pub encoder: String,
    /// Why the measured profile is not used, or what to re-check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Admission settings (`[limits]`).
#[derive(Debug, Clone)]
pub struct CapacitySettings {
    pub profile_path: PathBuf,
    /// Share of measured capacity admitted (0.8: 80 units of 100).
    pub fraction: f64,
    pub admit_by_cost: bool,
}

/// Create refused: the box is full by cost.
#[derive(Debug, Clone, thiserror::Error)]
#[error("this box is at {used:.1} of the {admit:.1} capacity units it admits (limits.capacity_fraction {fraction} of its {profile} capacity) and this {shape} task needs {cost:.1}; stop a task, lower the task's size or add a box")]
pub struct CapacityFull {
    pub used: f64,
    pub admit: f64,
    pub cost: f64,
    pub fraction: f64,
    pub profile: &'static str,
    pub shape: String,
}

/// What a live task is, for costing.
#[derive(Debug, Clone)]
struct Entry {
    sdk_app_id: u32,
    room: String,
    /// The shape at Create (the room's publishers then, at least one).
    expected: TaskShape,
}

/// CPU rate per task, from the last two readings.
#[derive(Debug, Clone, Copy)]
struct Rate {
    cpu: Duration,
    at: Instant,
    cores: f64,
}

struct Gauges {
    used: Gauge,
    task_cost: GaugeVec,
    task_behind: GaugeVec,
    task_cpu: prometheus::CounterVec,
    process_cpu: prometheus::Counter,
    process_rss: IntGauge,
}

pub struct Capacity {
    settings: CapacitySettings,
    model: CostModel,
    info: Mutex<ProfileInfo>,
    loads: Arc<LoadBoard>,
    tasks: Mutex<HashMap<String, Entry>>,
    rates: Mutex<HashMap<String, Rate>>,
    gauges: Gauges,
}

/// One task in the report.
#[derive(Debug, Clone, Serialize)]
pub struct TaskCost {
    pub task_id: String,
    pub sdk_app_id: u32,
    pub room_id: String,
    pub shape: TaskShape,
    pub cost_units: f64,
    /// Measured CPU of its recorder thread, in cores (recent).
    pub cpu_cores: f64,
    pub behind_ms: u64,
    pub output_frames_dropped: u64,
}

/// `GET /v1/capacity`.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    pub capacity_units: f64,
    pub admit_fraction: f64,
    pub admit_units: f64,
    pub used_units: f64,
    pub free_units: f64,
    pub admit_by_cost: bool,
    pub profile: ProfileInfo,
    pub model: CostModel,
    pub tasks: Vec<TaskCost>,
    /// What common shapes cost here, and how many fit in the admit limit.
    pub shapes: std::collections::BTreeMap<&'static str, ShapeFit>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShapeFit {
    pub cost_units: f64,
    pub tasks_at_admit_limit: u64,
}

fn cpus_here() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

impl Capacity {
    /// Loads the profile (the reference one, scaled by cores, when this box
    /// has none or it cannot be read — said in the report and the log).
    pub fn new(settings: CapacitySettings, loads: Arc<LoadBoard>, metrics: &Metrics) -> Self {
        let here = cpus_here();
        let path = settings.profile_path.display().to_string();
        let reference = CapacityProfile::reference();
        let (profile, source, scale, note) = match CapacityProfile::load(&settings.profile_path) {
            Ok(Some(p)) => (p, "measured", 1.0, None),
            Ok(None) => {
                let scale = f64::from(here) / f64::from(reference.host.cpus);
                let note = format!("no profile at {path}: the reference profile (2-core VM) scaled to {here} CPUs; run kiroku bench capacity on this box");
                tracing::info!("{note}");
                (reference.clone(), "reference", scale, Some(note))
            }
            Err(e) => {
                let scale = f64::from(here) / f64::from(reference.host.cpus);
                let note = format!("{e}; using the reference profile scaled to {here} CPUs");
                tracing::warn!("{note}");
                (reference.clone(), "reference", scale, Some(note))
            }
        };
        let fallback = cost::fit(
            &reference.points(f64::from(here) / 2.0),
            &CostModel::default(),
        );
        let model = cost::fit(&profile.points(scale), &fallback);
        let info = ProfileInfo {
            source,
            path,
            measured_at: profile.measured_at.clone(),
            host_cpus: profile.host.cpus,
            cpus_here: here,
            compositor: profile.compositor.clone(),
            encoder: profile.encoder.clone(),
            note,
        };
        tracing::info!(source, model = ?model, "capacity model");
        Self {
            gauges: Gauges::register(metrics, &settings),
            settings,
            model,
            info: Mutex::new(info),
            loads,
            tasks: Mutex::new(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
        }
    }

    /// The compositor mixed tasks use on this box, once known: a profile
    /// measured with another one is flagged (its mixed costs are off).
    pub fn compositor_in_use(&self, compositor: &str) {
        let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
        if info.source == "measured" && !same_compositor(&info.compositor, compositor) {
            let n = format!(
                "the profile was measured with the {} compositor and this box now runs {compositor}: run kiroku bench capacity again",
                info.compositor
            );
            tracing::warn!("{n}");
            info.note = Some(n);
        }
    }

    pub fn loads(&self) -> &Arc<LoadBoard> {
        &self.loads
    }

    pub fn admit_units(&self) -> f64 {
        100.0 * self.settings.fraction
    }

    /// The shape of a task created with `spec` in a room whose publishers
    /// are `(av, audio-only, video-only)` users now (at least one user is
    /// assumed: a task is created for someone to record).
    pub fn shape(spec: &RecordingSpec, publishers: (u32, u32, u32)) -> TaskShape {
        let (mut av, mut audio, mut video) = publishers;
        match spec.record.stream_type {
            StreamType::AudioOnly => {
                audio += av;
                av = 0;
                video = 0;
            }
            StreamType::VideoOnly => {
                video += av;
                av = 0;
                audio = 0;
            }
            StreamType::AudioVideo => {}
        }
        if av + audio + video == 0 {
            match spec.record.stream_type {
                StreamType::AudioOnly => audio = 1,
                StreamType::VideoOnly => video = 1,
                StreamType::AudioVideo => av = 1,
            }
        }
        let kind = match (&spec.record.mode, &spec.mix) {
            (RecordMode::Mixed, _) if spec.record.stream_type == StreamType::AudioOnly => {
                ShapeKind::MixedAudio
            }
            (RecordMode::Mixed, Some(mix)) => ShapeKind::Mixed {
                width: mix.transcode.video.width,
                height: mix.transcode.video.height,
                fps: mix.transcode.video.fps,
            },
            _ => ShapeKind::Single,
        };
        TaskShape {
            kind,
            av_users: av,
            audio_users: audio,
            video_users: video,
        }
    }

    pub fn cost(&self, shape: &TaskShape) -> f64 {
        self.model.cost(shape)
    }

    /// Whether a task of `shape` fits beside the live ones; `Ok(cost)`.
    pub fn admit(&self, shape: &TaskShape) -> Result<f64, CapacityFull> {
        let cost = self.cost(shape);
        if !self.settings.admit_by_cost {
            return Ok(cost);
        }
        let used = self.used();
        let admit = self.admit_units();
        // A task bigger than the whole admit limit still runs on an empty
        // box (refusing it everywhere would help nobody).
        if used > 0.0 && used + cost > admit {
            return Err(CapacityFull {
                used,
                admit,
                cost,
                fraction: self.settings.fraction,
                profile: self.info.lock().unwrap_or_else(|p| p.into_inner()).source,
                shape: describe(shape),
            });
        }
        Ok(cost)
    }

    /// Like [`Self::admit`], with `replaced`'s cost freed (a task whose
    /// bot user re-enters displaces the old one).
    pub fn admit_replacing(&self, shape: &TaskShape, replaced: &str) -> Result<f64, CapacityFull> {
        let freed = self
            .costs()
            .into_iter()
            .find(|c| c.0 == replaced)
            .map_or(0.0, |c| c.3);
        let cost = self.cost(shape);
        match self.admit(shape) {
            Err(full) if full.used - freed + cost <= full.admit || full.used - freed <= 0.0 => {
                Ok(cost)
            }
            other => other,
        }
    }

    /// Makes the ledger hold exactly the `running` tasks (those not yet
    /// Exited); one it did not know (restored, taken over) is costed from
    /// its room's publishers now. Load records of tasks that left the
    /// box (`known` is false) are dropped.
    pub fn sync<'a>(
        &self,
        running: impl Iterator<Item = (&'a str, &'a RecordingSpec)>,
        publishers: impl Fn(&RecordingSpec) -> (u32, u32, u32),
        known: impl Fn(&str) -> bool,
    ) {
        let mut keep = std::collections::HashSet::new();
        let mut added = Vec::new();
        {
            let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            for (id, spec) in running {
                keep.insert(id.to_owned());
                if !tasks.contains_key(id) {
                    added.push((id.to_owned(), spec.clone()));
                }
            }
        }
        for (id, spec) in added {
            let shape = Self::shape(&spec, publishers(&spec));
            self.add(&id, spec.sdk_app_id, spec.room.to_string(), shape);
        }
        let gone: Vec<String> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|id| !keep.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.remove(&id);
        }
        for (id, _) in self.loads.readings() {
            if !known(&id) {
                self.loads.remove(&id);
            }
        }
    }

    /// A task runs here from now on.
    pub fn add(&self, task_id: &str, sdk_app_id: u32, room: String, expected: TaskShape) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.insert(
            task_id.to_owned(),
            Entry {
                sdk_app_id,
                room,
                expected,
            },
        );
    }

    /// The task stopped counting (Delete answered, ended, moved away).
    pub fn remove(&self, task_id: &str) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(task_id);
        self.rates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(task_id);
        let _ = self.gauges.task_cost.remove_label_values(&[task_id]);
        let _ = self.gauges.task_behind.remove_label_values(&[task_id]);
        let _ = self.gauges.task_cpu.remove_label_values(&[task_id]);
    }

    /// A task's shape now: what its recorder records once it records
    /// anything, else what was expected at Create.
    fn current(entry: &Entry, reading: Option<&LoadReading>) -> TaskShape {
        let Some(r) = reading.filter(|r| r.video_streams + r.audio_streams > 0) else {
            return entry.expected;
        };
        let (v, a) = (r.video_streams, r.audio_streams);
        let av = v.min(a);
        TaskShape {
            kind: entry.expected.kind,
            av_users: av,
            audio_users: a - av,
            video_users: v - av,
        }
    }

    fn costs(&self) -> Vec<(String, Entry, TaskShape, f64, Option<LoadReading>)> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out: Vec<_> = tasks
            .into_iter()
            .map(|(id, e)| {
                let reading = self.loads.read(&id);
                let shape = Self::current(&e, reading.as_ref());
                let cost = self.model.cost(&shape);
                (id, e, shape, cost, reading)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn used(&self) -> f64 {
        self.costs().iter().fold(0.0, |sum, c| sum + c.3)
    }

    /// Reads every task's CPU clock and refreshes the metrics (about once
    /// a second, and before each report).
    pub fn refresh(&self, now: Instant) {
        let costs = self.costs();
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let mut used = 0.0;
        for (id, _, _, cost, reading) in &costs {
            used += cost;
            self.gauges.task_cost.with_label_values(&[id]).set(*cost);
            let Some(r) = reading else { continue };
            self.gauges
                .task_behind
                .with_label_values(&[id])
                .set(r.behind.as_secs_f64());
            let counter = self.gauges.task_cpu.with_label_values(&[id]);
            let grown = r.cpu.as_secs_f64() - counter.get();
            if grown > 0.0 {
                counter.inc_by(grown);
            }
            let rate = rates.entry(id.clone()).or_insert(Rate {
                cpu: r.cpu,
                at: now,
                cores: 0.0,
            });
            let dt = now.saturating_duration_since(rate.at);
            if dt >= Duration::from_millis(900) {
                let cores = r.cpu.saturating_sub(rate.cpu).as_secs_f64() / dt.as_secs_f64();
                // Smooth over a few seconds: one slow tick is not a trend.
                rate.cores = if rate.cores == 0.0 {
                    cores
                } else {
                    0.6 * rate.cores + 0.4 * cores
                };
                rate.cpu = r.cpu;
                rate.at = now;
            }
        }
        self.gauges.used.set(used);
        let cpu = crate::record::load::process_cpu_time().as_secs_f64();
        let grown = cpu - self.gauges.process_cpu.get();
        if grown > 0.0 {
            self.gauges.process_cpu.inc_by(grown);
        }
        self.gauges.process_rss.set(resident_bytes());
    }

    pub fn report(&self) -> CapacityReport {
        self.refresh(Instant::now());
        let rates = self.rates.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let costs = self.costs();
        let used = costs.iter().fold(0.0, |sum, c| sum + c.3);
        let tasks = costs
            .into_iter()
            .map(|(id, e, shape, cost, reading)| TaskCost {
                cpu_cores: rates.get(&id).map_or(0.0, |r| r.cores),
                behind_ms: reading.map_or(0, |r| {
                    u64::try_from(r.behind.as_millis()).unwrap_or(u64::MAX)
                }),
                output_frames_dropped: reading.map_or(0, |r| r.output_frames_dropped),
                task_id: id,
                sdk_app_id: e.sdk_app_id,
                room_id: e.room,
                shape,
                cost_units: cost,
            })
            .collect();
        let admit = self.admit_units();
        let shapes = reference_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let c = self.model.cost(&shape);
                let n = if c > 0.0 {
                    (admit / c).floor() as u64
                } else {
                    0
                };
                (
                    name,
                    ShapeFit {
                        cost_units: c,
                        tasks_at_admit_limit: n,
                    },
                )
            })
            .collect();
        CapacityReport {
            capacity_units: 100.0,
            admit_fraction: self.settings.fraction,
            admit_units: admit,
            used_units: used,
            free_units: (admit - used).max(0.0),
            admit_by_cost: self.settings.admit_by_cost,
            profile: self.info.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            model: self.model,
            tasks,
            shapes,
        }
    }
}

/// Shapes the report prices, by name.
fn reference_shapes() -> Vec<(&'static str, TaskShape)> {
    let s = |kind, av| TaskShape {
        kind,
        av_users: av,
        audio_users: 0,
        video_users: 0,
    };
    let mixed = |w, h| ShapeKind::Mixed {
        width: w,
        height: h,
        fps: 15,
    };
    vec![
        ("single_1av", s(ShapeKind::Single, 1)),
        ("single_2av", s(ShapeKind::Single, 2)),
        ("single_25av", s(ShapeKind::Single, 25)),
        ("mixed_4x360p_720p15", s(mixed(1280, 720), 4)),
        ("mixed_9x360p_720p15", s(mixed(1280, 720), 9)),
        ("mixed_25x360p_1080p15", s(mixed(1920, 1080), 25)),
        (
            "mixed_audio_4",
            TaskShape {
                kind: ShapeKind::MixedAudio,
                av_users: 0,
                audio_users: 4,
                video_users: 0,
            },
        ),
    ]
}

fn describe(s: &TaskShape) -> String {
    let users = s.av_users + s.audio_users + s.video_users;
    match s.kind {
        ShapeKind::Single => format!("single-stream {users}-user"),
        ShapeKind::Mixed { width, height, fps } => {
            format!("mixed {users}-user {width}x{height}@{fps}")
        }
        ShapeKind::MixedAudio => format!("audio-only mixed {users}-user"),
    }
}

fn same_compositor(measured: &str, now: &str) -> bool {
    let family = |s: &str| {
        s.split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    family(measured) == family(now)
}

/// This process's resident memory (bytes; 0 where /proc is unreadable).
pub fn resident_bytes() -> i64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<i64>().ok())
        })
        .unwrap_or(0);
    pages.saturating_mul(4096)
}

impl Gauges {
    fn register(m: &Metrics, s: &CapacitySettings) -> Self {
        let r = m.registry();
        let g = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let gv = |name: &str, help: &str| {
            let g = GaugeVec::new(prometheus::Opts::new(name, help), &["task_id"])
                .expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let capacity_units = g(
            "kiroku_capacity_units",
            "This box's measured capacity in cost units (always 100: a task's cost is a hundredth share of it; GET /v1/capacity)",
        );
        capacity_units.set(100.0);
        let admit_units = g(
            "kiroku_capacity_admit_units",
            "Cost units this box admits (limits.capacity_fraction × 100); Create is refused beyond it",
        );
        admit_units.set(100.0 * s.fraction);
        let task_cpu = crate::metrics::float_counter_vec(
            r,
            "kiroku_task_cpu_seconds_total",
            "CPU time of each live task's recorder thread",
            &["task_id"],
        );
        let process_cpu = crate::metrics::float_counter(
            r,
            "kiroku_process_cpu_seconds_total",
            "CPU time of the kiroku process (every thread)",
        );
        Self {
            used: g(
                "kiroku_capacity_used_units",
                "Sum of the live tasks' estimated costs (re-estimated as their publishers change)",
            ),
            task_cost: gv(
                "kiroku_task_cost_units",
                "Estimated cost of each live task, in capacity units",
            ),
            task_behind: gv(
                "kiroku_task_behind_seconds",
                "How far each live task's recorder trails real time (single-stream: queue wait of its frames; mixed: output clock lag)",
            ),
            task_cpu,
            process_cpu,
            process_rss: crate::metrics::gauge(
                r,
                "kiroku_process_resident_memory_bytes",
                "Resident memory of the kiroku process",
            ),
        }
    }
}
