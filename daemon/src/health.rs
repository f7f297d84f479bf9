//! What `/healthz` and the systemd watchdog report (docs/operations.md,
//! "Health"): the parts of the daemon that are down right now, and
//! whether the media engine is making progress.
//!
//! A supervised part that fails marks itself down with a reason (`down`)
//! and up again once it runs (`up`); `/healthz` answers 503 with the
//! reasons while any is down. The ingest engine stamps its loop
//! (`engine_progress`); the watchdog is fed only while those stamps are
//! fresh, so a wedged engine gets the daemon restarted by systemd rather
//! than pinged along by an unrelated task.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Health {
    down: Mutex<BTreeMap<String, String>>,
    /// Monotonic milliseconds (crate::clock::mono_ms) of the engine loop's
    /// last pass; 0 before it ran.
    engine_beat_ms: AtomicU64,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// `part` is down because of `why` (shown by `/healthz`).
    pub fn down(&self, part: &str, why: &str) {
        crate::sync::lock(&self.down).insert(part.to_owned(), why.to_owned());
    }

    pub fn up(&self, part: &str) {
        crate::sync::lock(&self.down).remove(part);
    }

    /// Every part that is down, with why: `None` when all are up.
    pub fn problems(&self) -> Option<String> {
        let down = crate::sync::lock(&self.down);
        if down.is_empty() {
            return None;
        }
        Some(
            down.iter()
                .map(|(part, why)| format!("{part}: {why}"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    /// The engine loop made a pass at monotonic `now_ms`.
    pub fn engine_progress(&self, now_ms: u64) {
        self.engine_beat_ms.store(now_ms.max(1), Ordering::Relaxed);
    }

    /// Whether the engine made a pass within `within_ms` of `now_ms`.
    pub fn engine_alive(&self, now_ms: u64, within_ms: u64) -> bool {
        let beat = self.engine_beat_ms.load(Ordering::Relaxed);
        beat != 0 && now_ms.saturating_sub(beat) <= within_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_go_down_and_up_and_the_engine_beat_ages() {
        let h = Health::new();
        assert_eq!(h.problems(), None);
        h.down("ingest engine", "restarting after a panic");
        h.down("recorder of task t1", "restarting (1 of 3)");
        assert_eq!(
            h.problems().as_deref(),
            Some(
                "ingest engine: restarting after a panic\nrecorder of task t1: restarting (1 of 3)"
            )
        );
        h.up("ingest engine");
        h.up("recorder of task t1");
        assert_eq!(h.problems(), None);
        assert!(!h.engine_alive(1_000, 5_000), "never ran");
        h.engine_progress(1_000);
        assert!(h.engine_alive(6_000, 5_000));
        assert!(!h.engine_alive(6_001, 5_000));
    }
}
