//! The MaxIdleTime rule: a task stops by itself once its room has had no
//! publisher ("anchor") for `max_idle` (spec §3.4). A publisher who is in
//! the room but sends nothing still counts as present.
//!
//! Sans-IO: the caller reports presence changes with the time they happened
//! and asks for the deadline; nothing here sleeps or reads a clock.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct IdleTimer {
    max_idle: Duration,
    /// When the room last became empty; `None` while someone publishes.
    empty_since: Option<Instant>,
}

impl IdleTimer {
    /// A timer for a room that is empty from `now` on.
    pub fn new(max_idle: Duration, now: Instant) -> Self {
        Self {
            max_idle,
            empty_since: Some(now),
        }
    }

    /// Reports how many publishers the room has at `now`.
    pub fn set_publishers(&mut self, publishers: usize, now: Instant) {
        match (publishers, self.empty_since) {
            (0, None) => self.empty_since = Some(now),
            (0, Some(_)) => {}
            (_, _) => self.empty_since = None,
        }
    }

    /// When the task must stop if nothing changes; `None` while publishers are present.
    pub fn deadline(&self) -> Option<Instant> {
        self.empty_since.map(|t| t + self.max_idle)
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_room_expires_after_max_idle() {
        let t0 = Instant::now();
        let timer = IdleTimer::new(Duration::from_secs(30), t0);
        assert!(!timer.expired(t0 + Duration::from_secs(29)));
        assert!(timer.expired(t0 + Duration::from_secs(30)));
        assert_eq!(timer.deadline(), Some(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn a_publisher_stops_the_count_and_leaving_restarts_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut timer = IdleTimer::new(s(10), t0);
        timer.set_publishers(1, t0 + s(5));
        assert_eq!(timer.deadline(), None);
        assert!(!timer.expired(t0 + s(100)));
        timer.set_publishers(2, t0 + s(101));
        timer.set_publishers(0, t0 + s(200));
        assert!(!timer.expired(t0 + s(209)));
        // A second "empty" report does not restart the count.
        timer.set_publishers(0, t0 + s(205));
        assert!(timer.expired(t0 + s(210)));
    }
}
