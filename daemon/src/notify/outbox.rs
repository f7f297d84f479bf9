//! Delivery schedule of the callback outbox.
//!
//! Sans-IO state machine over the pending callbacks (the durable copy lives
//! in the task store; this is its in-memory index). Rules:
//!
//! - **In order per task**: only the oldest pending callback of a task is
//!   ever in flight; the next one waits until it is delivered or given up.
//!   Tasks are independent of each other.
//! - **Retry with backoff**: attempt *n* (n ≥ 1) failed → the next attempt
//!   is `min(BASE · 2^(n-1), MAX_BACKOFF)` later: 1 s, 2 s, 4 s … 5 min.
//! - **Give up** once the next attempt would fall later than `retry_for`
//!   after the callback was created (default 24 h).
//!
//! Driving contract: call [`Schedule::due`] with `now`, send what it returns,
//! report each result with [`Schedule::complete`], then sleep until
//! [`Schedule::next_wakeup`]. Times are Unix milliseconds so that they
//! survive restarts unchanged.

use std::collections::{BTreeMap, HashSet, VecDeque};

pub const BASE_BACKOFF_MS: u64 = 1_000;
pub const MAX_BACKOFF_MS: u64 = 300_000;

/// What the schedule knows about one pending callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: u64,
    pub task_id: String,
    pub created_ms: u64,
    pub attempts: u32,
    pub next_attempt_ms: u64,
}

/// What to do with the durable copy after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered: delete it.
    Delivered { seq: u64 },
    /// Failed, will retry: store the new attempt count and time.
    Retry {
        seq: u64,
        attempts: u32,
        next_attempt_ms: u64,
    },
    /// Failed for longer than `retry_for`: delete it and count it lost.
    GivenUp { seq: u64, attempts: u32 },
}

pub fn backoff_ms(failed_attempts: u32) -> u64 {
    let exp = failed_attempts.saturating_sub(1).min(20);
    BASE_BACKOFF_MS
        .saturating_mul(1u64 << exp)
        .min(MAX_BACKOFF_MS)
}

#[derive(Debug, Default)]
pub struct Schedule {
    retry_for_ms: u64,
    /// Per task, pending callbacks in seq order.
    queues: BTreeMap<String, VecDeque<Pending>>,
    in_flight: HashSet<u64>,
}

impl Schedule {
    pub fn new(retry_for_ms: u64) -> Self {
        Self {
            retry_for_ms,
            ..Self::default()
        }
    }

    /// Adds a pending callback (new, or loaded from the store at start-up).
    /// Seqs must grow per task; loading in seq order guarantees it.
    pub fn push(&mut self, p: Pending) {
        self.queues
            .entry(p.task_id.clone())
            .or_default()
            .push_back(p);
    }

    pub fn pending(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    /// Heads of task queues that are due at `now` and not in flight; they
    /// are marked in flight.
    pub fn due(&mut self, now_ms: u64) -> Vec<Pending> {
        let mut out = Vec::new();
        for q in self.queues.values() {
            if let Some(head) = q.front() {
                if head.next_attempt_ms <= now_ms && !self.in_flight.contains(&head.seq) {
                    out.push(head.clone());
                }
            }
        }
        for p in &out {
            self.in_flight.insert(p.seq);
        }
        out
    }

    /// The earliest time something not in flight becomes due.
    pub fn next_wakeup(&self) -> Option<u64> {
        self.queues
            .values()
            .filter_map(|q| q.front())
            .filter(|h| !self.in_flight.contains(&h.seq))
            .map(|h| h.next_attempt_ms)
            .min()
    }

    /// Reports the result of sending `seq`.
    pub fn complete(
        &mut self,
        task_id: &str,
        seq: u64,
        delivered: bool,
        now_ms: u64,
    ) -> Option<Outcome> {
        self.in_flight.remove(&seq);
        let q = self.queues.get_mut(task_id)?;
        let head = q.front_mut().filter(|h| h.seq == seq)?;
        let outcome = if delivered {
            Outcome::Delivered { seq }
        } else {
            head.attempts += 1;
            let next = now_ms.saturating_add(backoff_ms(head.attempts));
            if next > head.created_ms.saturating_add(self.retry_for_ms) {
                Outcome::GivenUp {
                    seq,
                    attempts: head.attempts,
                }
            } else {
                head.next_attempt_ms = next;
                return Some(Outcome::Retry {
                    seq,
                    attempts: head.attempts,
                    next_attempt_ms: next,
                });
            }
        };
        q.pop_front();
        if q.is_empty() {
            self.queues.remove(task_id);
        }
        Some(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(seq: u64, task: &str, t: u64) -> Pending {
        Pending {
            seq,
            task_id: task.into(),
            created_ms: t,
            attempts: 0,
            next_attempt_ms: t,
        }
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let seq: Vec<u64> = (1..=12).map(backoff_ms).collect();
        assert_eq!(
            seq,
            vec![
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000,
                300_000, 300_000
            ]
        );
    }

    #[test]
    fn one_in_flight_per_task_in_seq_order() {
        let mut s = Schedule::new(86_400_000);
        s.push(p(1, "a", 0));
        s.push(p(2, "a", 0));
        s.push(p(3, "b", 0));
        let due: Vec<u64> = s.due(0).iter().map(|x| x.seq).collect();
        assert_eq!(due, vec![1, 3]);
        assert!(
            s.due(0).is_empty(),
            "in-flight heads are not handed out twice"
        );
        assert_eq!(
            s.complete("a", 1, true, 10),
            Some(Outcome::Delivered { seq: 1 })
        );
        let due: Vec<u64> = s.due(10).iter().map(|x| x.seq).collect();
        assert_eq!(due, vec![2]);
    }

    #[test]
    fn a_failure_blocks_the_task_until_retry() {
        let mut s = Schedule::new(86_400_000);
        s.push(p(1, "a", 0));
        s.push(p(2, "a", 0));
        s.due(0);
        assert_eq!(
            s.complete("a", 1, false, 100),
            Some(Outcome::Retry {
                seq: 1,
                attempts: 1,
                next_attempt_ms: 1_100
            })
        );
        assert!(s.due(1_099).is_empty(), "seq 2 must wait behind seq 1");
        assert_eq!(s.next_wakeup(), Some(1_100));
        assert_eq!(
            s.due(1_100).iter().map(|x| x.seq).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(
            s.complete("a", 1, false, 1_100),
            Some(Outcome::Retry {
                seq: 1,
                attempts: 2,
                next_attempt_ms: 3_100
            })
        );
    }

    #[test]
    fn gives_up_after_retry_for_then_moves_on() {
        let mut s = Schedule::new(10_000);
        s.push(p(1, "a", 0));
        s.push(p(2, "a", 0));
        let mut now = 0;
        let mut attempts = 0;
        loop {
            assert_eq!(s.due(now).len(), 1);
            attempts += 1;
            match s.complete("a", 1, false, now) {
                Some(Outcome::Retry {
                    next_attempt_ms, ..
                }) => now = next_attempt_ms,
                Some(Outcome::GivenUp {
                    seq: 1,
                    attempts: n,
                }) => {
                    assert_eq!(n, attempts);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // 1+2+4 s = 7 s of retries; the next (8 s later) would pass 10 s.
        assert_eq!(attempts, 4);
        assert_eq!(
            s.due(now).iter().map(|x| x.seq).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(s.pending(), 1);
    }

    #[test]
    fn stale_results_are_ignored() {
        let mut s = Schedule::new(1_000);
        s.push(p(1, "a", 0));
        assert_eq!(s.complete("a", 9, true, 0), None);
        assert_eq!(s.complete("zz", 1, true, 0), None);
        assert_eq!(s.pending(), 1);
    }
}
