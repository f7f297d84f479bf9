//! The one place that reads the wall clock. Sans-IO cores never call it:
//! they take time as an input, and the edges that drive them read it here,
//! so every reading of "now" in the daemon can be found from this module.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    since_epoch().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_secs() -> u64 {
    since_epoch().map_or(0, |d| d.as_secs())
}

/// A monotonic instant paired with the wall-clock time read at the same
/// moment: what a sans-IO core needs to turn its monotonic inputs into
/// wall-clock times.
pub fn anchor() -> (Instant, SystemTime) {
    (Instant::now(), SystemTime::now())
}

/// Monotonic milliseconds since the first call in this process (for
/// liveness stamps that must not jump with the wall clock).
pub fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn since_epoch() -> Option<std::time::Duration> {
    SystemTime::now().duration_since(UNIX_EPOCH).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_agree_and_are_after_2020() {
        let ms = unix_ms();
        let s = unix_secs();
        assert!(s >= 1_577_836_800, "clock before 2020: {s}");
        assert!(ms / 1000 >= s.saturating_sub(1) && ms / 1000 <= s + 1);
    }
}
