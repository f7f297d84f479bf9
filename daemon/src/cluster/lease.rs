//! A box's own view of its lease, sans IO: the fleet counts a box alive
//! while its last heartbeat (the database's clock at commit) is younger
//! than the lease; the box itself only knows when it *sent* each heartbeat
//! that then committed. Counting from the send (never later than the
//! commit) and stopping a margin early, a box always believes it has lost
//! its lease before the others can take its rooms: it fences itself first.
//!
//! A box takes nothing from another box until it has held its own lease
//! for a whole lease ([`Lease::settled`]): after an outage of the database
//! every box's heartbeat is old, and the first box back must not take the
//! rooms of boxes that are alive but have not heartbeat again yet.
//! Time is an input.

use std::time::{Duration, Instant};

/// How much earlier than the fleet a box gives its own lease up: a fifth
/// of the lease (1.6 s of the default 8 s).
const MARGIN_DIVISOR: u32 = 5;

#[derive(Debug, Clone)]
pub struct Lease {
    duration: Duration,
    /// When the newest heartbeat that committed was sent.
    renewed_from: Option<Instant>,
    /// When the first heartbeat of the current unbroken hold was sent.
    held_since: Option<Instant>,
}

impl Lease {
    pub fn new(duration: Duration) -> Self {
        Self {
            duration,
            renewed_from: None,
            held_since: None,
        }
    }

    /// A heartbeat sent at `sent` has committed.
    pub fn renewed(&mut self, sent: Instant) {
        if !self.holds(sent) {
            self.held_since = Some(sent);
        }
        if self.renewed_from.is_none_or(|t| sent > t) {
            self.renewed_from = Some(sent);
        }
    }

    /// Whether this box has held its lease, unbroken, for a whole lease:
    /// only then may it take rooms from boxes it believes dead.
    pub fn settled(&self, now: Instant) -> bool {
        self.holds(now)
            && self
                .held_since
                .is_some_and(|h| now.saturating_duration_since(h) >= self.duration)
    }

    /// Whether this box may still act as the owner of its rooms at `now`.
    pub fn holds(&self, now: Instant) -> bool {
        let margin = self.duration / MARGIN_DIVISOR;
        self.renewed_from
            .is_some_and(|t| now.saturating_duration_since(t) + margin < self.duration)
    }

    /// How often to heartbeat: five times a lease, so that two lost
    /// heartbeats in a row still leave the lease held.
    pub fn heartbeat_interval(&self) -> Duration {
        self.duration / 5
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_held_from_the_send_of_the_last_committed_heartbeat_minus_a_margin() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut lease = Lease::new(s(10));
        assert!(!lease.holds(t0), "no heartbeat yet: not held");
        lease.renewed(t0);
        assert!(lease.holds(t0));
        assert!(lease.holds(t0 + Duration::from_millis(7_999)));
        assert!(
            !lease.holds(t0 + s(8)),
            "given up 2 s before the fleet may take over"
        );
        // An older heartbeat committing late does not move it back.
        lease.renewed(t0 + s(4));
        lease.renewed(t0 + s(2));
        assert!(lease.holds(t0 + s(11)));
        assert!(!lease.holds(t0 + s(12)));
        assert_eq!(lease.heartbeat_interval(), s(2));
    }

    #[test]
    fn a_box_takes_over_nothing_until_it_has_held_its_lease_for_a_whole_lease() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut lease = Lease::new(s(10));
        for k in 0..5 {
            lease.renewed(t0 + s(2 * k));
        }
        assert!(!lease.settled(t0 + s(9)));
        lease.renewed(t0 + s(10));
        assert!(lease.settled(t0 + s(10)));
        // The database goes away for 20 s: the lease lapses; once it is
        // back the box holds its lease again at once but is not settled
        // for another whole lease.
        assert!(!lease.holds(t0 + s(25)));
        lease.renewed(t0 + s(30));
        assert!(lease.holds(t0 + s(30)) && !lease.settled(t0 + s(30)));
        for k in 16..20 {
            lease.renewed(t0 + s(2 * k));
        }
        assert!(!lease.settled(t0 + s(39)));
        lease.renewed(t0 + s(40));
        assert!(lease.settled(t0 + s(40)));
    }
}
