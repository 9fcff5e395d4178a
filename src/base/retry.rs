//! Retry timing: exponential backoff with jitter, bounded by one deadline for the whole run.
//!
//! Microsoft documents the shapes (IMDS: retry 404/429/5xx with exponential backoff, keep
//! retrying 410 for 70 s; Key Vault: 1, 2, 4, 8, 16 s on 429, `Retry-After` when present). All
//! delays scale with `--backoff-base` (default 1 s) so tests and impatient operators can shrink
//! them without changing their shape; a `Retry-After` from the server is honoured as sent.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Exponential backoff: `base × 2^attempt`, capped, with ±20% jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap_factor: u32,
}

impl Backoff {
    /// The delay before retry number `attempt` (0 = first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(16)).min(self.cap_factor);
        jitter(self.base * factor, 0.2)
    }
}

/// Spread `d` by ±`fraction` at random.
pub fn jitter(d: Duration, fraction: f64) -> Duration {
    let r = random_unit() * 2.0 - 1.0;
    d.mul_f64((1.0 + r * fraction).max(0.0))
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let addr = &t as *const u64 as u64;
    (t ^ addr.rotate_left(32) ^ (std::process::id() as u64) << 16) | 1
}

/// A uniform number in [0, 1) from a per-thread xorshift generator (jitter needs no more).
pub fn random_unit() -> f64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// The instant by which the whole run must be over. Shared by the parallel fetchers; only an
/// IMDS 410 ("back within 70 s") may push it later, and never past its hard limit (a `watch`
/// refresh's: the moment `--max-stale` runs out).
#[derive(Debug)]
pub struct Deadline {
    started: Instant,
    /// Nanoseconds after `started`.
    end: AtomicU64,
    /// Nanoseconds after `started` that [`Deadline::extend_to`] cannot pass.
    limit: u64,
}

impl Deadline {
    pub fn after(d: Duration) -> Deadline {
        Deadline::capped(d, None)
    }

    /// A deadline `d` from now that nothing moves past `limit` (None: no limit); `d` itself is
    /// cut to it.
    pub fn capped(d: Duration, limit: Option<Instant>) -> Deadline {
        let started = Instant::now();
        let limit = limit.map_or(u64::MAX, |t| nanos(t.saturating_duration_since(started)));
        Deadline {
            started,
            end: AtomicU64::new(nanos(d).min(limit)),
            limit,
        }
    }

    /// When this deadline's run (one fetch) started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The instant itself.
    pub fn at(&self) -> Instant {
        self.started + Duration::from_nanos(self.end.load(Ordering::SeqCst))
    }

    /// Move the deadline to `t` if that is later, but never past its hard limit.
    pub fn extend_to(&self, t: Instant) {
        let at = nanos(t.saturating_duration_since(self.started)).min(self.limit);
        self.end.fetch_max(at, Ordering::SeqCst);
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.at().saturating_duration_since(Instant::now())
    }

    /// Before the next try after `d`: sleep and return true when a try still fits before the
    /// deadline. A delay the server asked for (`strict`) is never shortened: if it does not
    /// fit, false. Our own backoff is cut to leave [`LAST_TRY`] for a last try, so retrying goes
    /// on until the deadline, not until the first delay that would overshoot it.
    pub fn sleep_within(&self, d: Duration, strict: bool) -> bool {
        match self.planned(d, strict) {
            Some(d) => {
                std::thread::sleep(d);
                true
            }
            None => false,
        }
    }

    /// The sleep [`Deadline::sleep_within`] would take now, or None when it would give up.
    pub fn planned(&self, d: Duration, strict: bool) -> Option<Duration> {
        let left = self.remaining();
        if strict {
            return (d < left).then_some(d);
        }
        (left > LAST_TRY).then(|| d.min(left - LAST_TRY))
    }

    /// Sleep for `d` if that still ends before the deadline; false (without sleeping) if not.
    pub fn sleep(&self, d: Duration) -> bool {
        if d >= self.remaining() {
            return false;
        }
        std::thread::sleep(d);
        true
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// The time a last try before the deadline gets to be answered.
pub const LAST_TRY: Duration = Duration::from_millis(200);

/// A duration as people read it ("1m 10s", "250ms").
pub fn human(d: Duration) -> String {
    let rounded = if d >= Duration::from_secs(1) {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_millis(d.as_millis() as u64)
    };
    humantime::format_duration(rounded).to_string()
}

/// "1 attempt", "3 attempts".
pub fn attempts(n: u32) -> String {
    if n == 1 {
        "1 attempt".into()
    } else {
        format!("{n} attempts")
    }
}

/// The shortest wait a server's `Retry-After` can ask for (`Retry-After: 0` must not spin).
pub const RETRY_AFTER_FLOOR: Duration = Duration::from_millis(100);
/// The longest wait honoured from a `Retry-After` (the run's deadline still ends it sooner).
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(300);

/// A delay a server asked for, kept between [`RETRY_AFTER_FLOOR`] and [`RETRY_AFTER_CAP`].
pub fn clamp_retry_after(d: Duration) -> Duration {
    d.clamp(RETRY_AFTER_FLOOR, RETRY_AFTER_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_units_are_uniform_and_jitter_stays_within_its_band() {
        let xs: Vec<f64> = (0..2000).map(|_| random_unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((0.45..0.55).contains(&mean), "mean {mean}");
        let low = xs.iter().filter(|x| **x < 0.1).count();
        assert!((120..280).contains(&low), "{low} of 2000 below 0.1");
        let mut distinct = xs.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        assert!(distinct.len() > 1990);
        let b = Backoff {
            base: Duration::from_millis(100),
            cap_factor: 16,
        };
        for (attempt, factor) in [(0, 1), (1, 2), (3, 8), (4, 16), (9, 16), (40, 16)] {
            let d = b.delay(attempt).as_secs_f64();
            let f = factor as f64 * 0.1;
            assert!(d >= f * 0.8 - 1e-9 && d <= f * 1.2 + 1e-9, "{attempt}: {d}");
        }
        let spread: Vec<Duration> = (0..200)
            .map(|_| jitter(Duration::from_secs(1), 0.1))
            .collect();
        assert!(
            spread
                .iter()
                .all(|d| *d >= Duration::from_millis(900) && *d <= Duration::from_millis(1100))
        );
        assert!(spread.iter().any(|d| *d < Duration::from_millis(960)));
        assert!(spread.iter().any(|d| *d > Duration::from_millis(1040)));
    }

    #[test]
    fn the_deadline_moves_only_later() {
        // Long enough that no scheduling delay of a loaded machine reaches it.
        let d = Deadline::after(Duration::from_secs(60));
        let at = d.at();
        d.extend_to(at - Duration::from_secs(10));
        assert_eq!(d.at(), at);
        d.extend_to(at + Duration::from_secs(10));
        assert_eq!(d.at(), at + Duration::from_secs(10));
        assert!(
            !d.sleep(Duration::from_secs(3600)),
            "a sleep past the deadline is refused"
        );
        assert!(d.remaining() > Duration::from_secs(60));
        assert_eq!(human(Duration::from_millis(1500)), "1s");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn a_capped_deadline_never_moves_past_its_limit() {
        let limit = Instant::now() + Duration::from_secs(60);
        let d = Deadline::capped(Duration::from_secs(30), Some(limit));
        let at = d.at();
        d.extend_to(at + Duration::from_secs(70));
        assert!(d.at() <= limit, "moved past the limit");
        assert!(d.at() > at);
        // A timeout longer than the limit is cut to it.
        let short = Deadline::capped(Duration::from_secs(3600), Some(limit));
        assert!(short.at() <= limit);
        let free = Deadline::capped(Duration::from_secs(30), None);
        free.extend_to(free.at() + Duration::from_secs(70));
        assert!(free.at() > limit);
    }
}
