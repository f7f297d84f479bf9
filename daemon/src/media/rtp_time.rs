//! RTP timestamps are 32 bits and wrap (every 13.3 h at 90 kHz, 24.9 h at
//! 48 kHz); a recording can outlast that. [`Unwrapper`] extends them to 64
//! bits, tolerating reordering of up to half the range.

#[derive(Debug, Clone, Default)]
pub struct Unwrapper {
    last: Option<u64>,
}

impl Unwrapper {
    pub fn extend(&mut self, ts: u32) -> u64 {
        let Some(last) = self.last else {
            // Start one cycle up so that a slightly earlier (reordered)
            // timestamp right after the first never underflows.
            let v = (1u64 << 32) + u64::from(ts);
            self.last = Some(v);
            return v;
        };
        let delta = ts.wrapping_sub(last as u32) as i32;
        let v = (last as i64 + i64::from(delta)).max(0) as u64;
        if v > last {
            self.last = Some(v);
        }
        v
    }
}

/// Seconds from `from` to `to` for two 32-bit RTP timestamps close together
/// (either order, across a wrap).
pub fn delta_seconds(from: u32, to: u32, clock_rate: u32) -> f64 {
    f64::from(to.wrapping_sub(from) as i32) / f64::from(clock_rate.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extends_across_the_wrap_and_tolerates_reordering() {
        let mut u = Unwrapper::default();
        let a = u.extend(u32::MAX - 3000);
        let b = u.extend(2999); // wrapped
        assert_eq!(b - a, 6000);
        let c = u.extend(u32::MAX - 1000); // late packet from before the wrap
        assert_eq!(b - c, 4000);
        let d = u.extend(6000);
        assert_eq!(d - b, 3001);
    }

    #[test]
    fn delta_across_wrap() {
        assert!((delta_seconds(u32::MAX - 44_999, 45_000, 90_000) - 1.0).abs() < 1e-9);
        assert!((delta_seconds(45_000, u32::MAX - 44_999, 90_000) + 1.0).abs() < 1e-9);
    }
}
