//! Per-hardware-address token buckets: [`BURST`] packets at once, then
//! [`RATE`] per second. A well-behaved client sends a handful of packets
//! per lease; a flood from one MAC cannot monopolize the store. At most
//! [`MAX_TRACKED`] addresses are tracked; when full, idle (refilled)
//! buckets are forgotten, and a new address that still finds no room is
//! refused.

use std::collections::HashMap;
use std::time::Instant;

/// Packets a hardware address may send at once.
pub const BURST: f64 = 16.0;
/// Packets per second a hardware address may send on average.
pub const RATE: f64 = 4.0;
/// Hardware addresses tracked at once.
pub const MAX_TRACKED: usize = 4096;

/// The buckets of one server.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: HashMap<[u8; 6], (f64, Instant)>,
}

impl RateLimiter {
    /// Takes a token for `hwaddr` at `now`; false when it has none.
    pub fn allow(&mut self, hwaddr: [u8; 6], now: Instant) -> bool {
        if !self.buckets.contains_key(&hwaddr) && self.buckets.len() >= MAX_TRACKED {
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * RATE < BURST
            });
            if self.buckets.len() >= MAX_TRACKED {
                return false;
            }
        }
        let (tokens, at) = self.buckets.entry(hwaddr).or_insert((BURST, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * RATE).min(BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate_per_address() {
        let mut r = RateLimiter::default();
        let t0 = Instant::now();
        let a = [2, 0, 0, 0, 0, 1];
        let allowed = (0..100).filter(|_| r.allow(a, t0)).count();
        assert_eq!(allowed, BURST as usize);
        // another address is not affected
        assert!(r.allow([2, 0, 0, 0, 0, 2], t0));
        // one second later, RATE more
        let t1 = t0 + Duration::from_secs(1);
        let allowed = (0..100).filter(|_| r.allow(a, t1)).count();
        assert_eq!(allowed, RATE as usize);
    }

    #[test]
    fn table_is_bounded() {
        let mut r = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            let b = i.to_be_bytes();
            assert!(r.allow([2, 0, b[0], b[1], b[2], b[3]], t0));
        }
        // full of busy buckets: a newcomer is refused …
        assert!(!r.allow([4, 0, 0, 0, 0, 1], t0));
        // … until the others have refilled
        assert!(r.allow([4, 0, 0, 0, 0, 1], t0 + Duration::from_secs(10)));
        assert!(r.buckets.len() <= MAX_TRACKED);
    }
}
