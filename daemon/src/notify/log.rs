//! What became of recent callbacks, for the operator's console: each
//! callback queued, its attempts, and whether it was delivered or given up.
//! Bounded (the newest [`KEPT`]); the outbox in the state store stays the
//! record that matters, this is only a view of it. No IO.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::Serialize;

use crate::sync::lock;

/// Callbacks remembered, the newest kept.
pub const KEPT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    GivenUp,
}

/// One callback as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallbackRecord {
    #[serde(skip)]
    pub task_id: String,
    pub event_type: u32,
    pub state: DeliveryState,
    pub attempts: u32,
    /// When it was queued, then when it was delivered or given up.
    pub at_ms: u64,
}

#[derive(Debug, Default)]
pub struct DeliveryLog {
    inner: Mutex<Log>,
}

/// Records in the order queued; outbox seqs are unique only among the
/// callbacks waiting (the embedded store may reuse a delivered one's).
#[derive(Debug, Default)]
struct Log {
    next: u64,
    records: BTreeMap<u64, CallbackRecord>,
    /// Waiting callbacks: outbox seq → record.
    pending: HashMap<u64, u64>,
}

impl DeliveryLog {
    pub fn queued(&self, seq: u64, task_id: &str, event_type: u32, attempts: u32, at_ms: u64) {
        let mut log = lock(&self.inner);
        let id = log.next;
        log.next += 1;
        log.pending.insert(seq, id);
        log.records.insert(
            id,
            CallbackRecord {
                task_id: task_id.to_owned(),
                event_type,
                state: DeliveryState::Pending,
                attempts,
                at_ms,
            },
        );
        while log.records.len() > KEPT {
            log.records.pop_first();
        }
    }

    pub fn attempted(&self, seq: u64, attempts: u32) {
        let mut log = lock(&self.inner);
        let Some(id) = log.pending.get(&seq).copied() else {
            return;
        };
        if let Some(r) = log.records.get_mut(&id) {
            r.attempts = attempts;
        }
    }

    /// Delivered at the attempt after those recorded.
    pub fn delivered(&self, seq: u64, at_ms: u64) {
        let mut log = lock(&self.inner);
        let Some(id) = log.pending.remove(&seq) else {
            return;
        };
        if let Some(r) = log.records.get_mut(&id) {
            r.state = DeliveryState::Delivered;
            r.attempts = r.attempts.saturating_add(1);
            r.at_ms = at_ms;
        }
    }

    pub fn given_up(&self, seq: u64, attempts: u32, at_ms: u64) {
        let mut log = lock(&self.inner);
        let Some(id) = log.pending.remove(&seq) else {
            return;
        };
        if let Some(r) = log.records.get_mut(&id) {
            r.state = DeliveryState::GivenUp;
            r.attempts = attempts;
            r.at_ms = at_ms;
        }
    }

    /// A task's callbacks in the order they were queued.
    pub fn of_task(&self, task_id: &str) -> Vec<CallbackRecord> {
        lock(&self.inner)
            .records
            .values()
            .filter(|r| r.task_id == task_id)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callbacks_life_is_recorded_and_the_log_stays_bounded() {
        let log = DeliveryLog::default();
        log.queued(1, "t", 301, 0, 10);
        log.queued(2, "t", 302, 0, 20);
        log.queued(3, "u", 301, 0, 30);
        log.attempted(2, 3);
        log.delivered(1, 15);
        log.given_up(2, 9, 99);
        let t = log.of_task("t");
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].event_type, t[0].state, t[0].attempts, t[0].at_ms),
            (301, DeliveryState::Delivered, 1, 15)
        );
        assert_eq!((t[1].state, t[1].attempts), (DeliveryState::GivenUp, 9));
        for seq in 10..(10 + KEPT as u64) {
            log.queued(seq, "v", 301, 0, seq);
        }
        assert!(log.of_task("t").is_empty(), "the oldest went first");
        // A seq reused once its callback is done is a new callback.
        log.delivered(10, 1);
        assert_eq!(log.of_task("v")[0].state, DeliveryState::Delivered);
        assert_eq!(log.of_task("v").len(), KEPT);
        log.queued(10, "w", 302, 0, 2);
        assert_eq!(log.of_task("w")[0].state, DeliveryState::Pending);
        assert_eq!(log.of_task("v").len(), KEPT - 1, "the oldest made room");
    }
}
