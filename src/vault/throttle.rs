//! One vault, many workers: a 429 tells the whole client to wait, not only the worker that got
//! it. Each vault has a gate: a pause (until the time `Retry-After` gave, each waiter resuming
//! with jitter so they do not return as one burst) and a concurrency limit that halves on a 429
//! and grows back by one with each success, up to `--concurrency`.
//!
//! Also the process-wide request counts `/metrics` shows (by vault and kind, and throttled).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::base::retry::Deadline;

#[derive(Debug)]
struct Gate {
    paused_until: Option<Instant>,
    /// How long the last pause was (the spread of the resume jitter).
    pause: Duration,
    limit: usize,
    in_flight: usize,
}

/// How far apart the waiters of one pause resume: over a quarter of the pause, at most 1 s.
fn resume_spread(pause: Duration) -> Duration {
    (pause / 4).min(Duration::from_secs(1))
}

/// The gates of every vault the client talks to.
pub struct Gates {
    max: usize,
    gates: Mutex<HashMap<String, Gate>>,
    changed: Condvar,
}

/// Why no request may start: the deadline came first, or (`paused`) the vault asked for a pause
/// that lasts this much longer, past the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    pub paused: Option<Duration>,
}

/// A request in flight to a vault; dropping it frees the slot.
pub struct Permit<'a> {
    gates: &'a Gates,
    vault: String,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.gates.lock().get_mut(&self.vault) {
            g.in_flight = g.in_flight.saturating_sub(1);
        }
        self.gates.changed.notify_all();
    }
}

impl Gates {
    pub fn new(max: usize) -> Gates {
        Gates {
            max: max.max(1),
            gates: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Gate>> {
        self.gates.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until `vault` is not paused and has a free slot. No wait passes `deadline`: when the
    /// vault's pause (a `Retry-After`) ends after it, or the deadline comes while waiting for a
    /// slot, no request may start, and the answer is the time the vault still asked for.
    pub fn enter(&self, vault: &str, deadline: &Deadline) -> Result<Permit<'_>, Closed> {
        let mut gates = self.lock();
        let max = self.max;
        let mut resume: Option<Instant> = None;
        loop {
            let g = gates.entry(vault.to_string()).or_insert_with(|| Gate {
                paused_until: None,
                pause: Duration::ZERO,
                limit: max,
                in_flight: 0,
            });
            let now = Instant::now();
            let end = deadline.at();
            if now >= end {
                return Err(Closed { paused: None });
            }
            if let Some(until) = g.paused_until.filter(|u| *u > now && *u >= end) {
                return Err(Closed {
                    paused: Some(until - now),
                });
            }
            let wait = match g.paused_until {
                Some(until) if until > now => {
                    let at =
                        until + resume_spread(g.pause).mul_f64(crate::base::retry::random_unit());
                    resume = Some(resume.map_or(at, |r| r.max(at)));
                    Some(at - now)
                }
                _ if resume.is_some_and(|r| r > now) => resume.map(|r| r - now),
                _ if g.in_flight >= g.limit => Some(Duration::from_millis(100)),
                _ => None,
            };
            let Some(wait) = wait else {
                g.in_flight += 1;
                break;
            };
            gates = self
                .changed
                .wait_timeout(gates, wait.min(end - now))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(Permit {
            gates: self,
            vault: vault.to_string(),
        })
    }

    /// A 429: pause the vault for `pause` (or longer, if already paused so) and halve its limit.
    pub fn throttled(&self, vault: &str, pause: Duration) {
        let mut gates = self.lock();
        if let Some(g) = gates.get_mut(vault) {
            let until = Instant::now() + pause;
            if g.paused_until.is_none_or(|u| u < until) {
                g.paused_until = Some(until);
                g.pause = pause;
            }
            g.limit = (g.limit / 2).max(1);
        }
        drop(gates);
        count(&THROTTLED, (vault.to_string(), ""));
    }

    /// A success: one more request may be in flight, up to the maximum.
    pub fn succeeded(&self, vault: &str) {
        if let Some(g) = self.lock().get_mut(vault) {
            g.limit = (g.limit + 1).min(self.max);
        }
        self.changed.notify_all();
    }

    /// The current limit for `vault` (tests).
    pub fn limit(&self, vault: &str) -> Option<usize> {
        self.lock().get(vault).map(|g| g.limit)
    }
}

type Counts = Mutex<BTreeMap<(String, &'static str), u64>>;

static REQUESTS: Counts = Mutex::new(BTreeMap::new());
static THROTTLED: Counts = Mutex::new(BTreeMap::new());

fn count(counts: &Counts, key: (String, &'static str)) {
    *counts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default() += 1;
}

/// Count one request sent to `vault` (`kind`: `get` or `list`).
pub fn sent(vault: &str, kind: &'static str) {
    count(&REQUESTS, (vault.to_string(), kind));
}

/// Requests sent, by (vault, kind).
pub fn requests() -> BTreeMap<(String, &'static str), u64> {
    REQUESTS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// 429 answers, by vault.
pub fn throttled() -> BTreeMap<String, u64> {
    let t = THROTTLED.lock().unwrap_or_else(|e| e.into_inner());
    t.iter().map(|((v, _), n)| (v.clone(), *n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How late a loaded 2-core machine may run a thread: far below the waits the tests tell
    /// apart (5 s pauses), far above any scheduling delay.
    const SLACK: Duration = Duration::from_secs(2);

    #[test]
    fn a_429_pauses_every_worker_and_halves_the_limit() {
        let gates = Gates::new(8);
        let deadline = Deadline::after(Duration::from_secs(10));
        let v = "https://v.test";
        drop(gates.enter(v, &deadline));
        gates.throttled(v, Duration::from_millis(200));
        assert_eq!(gates.limit(v), Some(4));
        let t = Instant::now();
        let p = gates.enter(v, &deadline);
        let waited = t.elapsed();
        // Paused 200 ms, then up to a quarter of that at random.
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        // The spread itself is checked exactly below; here only that the wait is not unbounded.
        assert!(waited < Duration::from_millis(250) + SLACK, "{waited:?}");
        drop(p);
        for _ in 0..10 {
            gates.succeeded(v);
        }
        assert_eq!(
            gates.limit(v),
            Some(8),
            "grows back to the maximum, no further"
        );
        gates.throttled(v, Duration::ZERO);
        gates.throttled(v, Duration::ZERO);
        gates.throttled(v, Duration::ZERO);
        gates.throttled(v, Duration::ZERO);
        assert_eq!(gates.limit(v), Some(1), "never below one");
        // Other vaults are not held up.
        gates.throttled(v, Duration::from_secs(5));
        let t = Instant::now();
        drop(gates.enter("https://w.test", &deadline));
        assert!(
            t.elapsed() < SLACK,
            "the other vault waited out the 5 s pause"
        );
        // The deadline ends a wait.
        let short = Deadline::after(Duration::from_millis(50));
        let t = Instant::now();
        let closed = gates.enter(v, &short).err();
        assert!(
            t.elapsed() < SLACK,
            "the 5 s pause outlived a 50 ms deadline"
        );
        assert!(
            closed.is_some_and(|c| c.paused.is_some()),
            "a request was let through into a pause that outlasts the deadline"
        );
    }

    #[test]
    fn waiters_of_one_pause_resume_after_it_spread_apart() {
        // A 2 s pause spreads its waiters over the half second after it ends: none enters
        // before the end, and they do not all enter at once (eight waiters within 100 ms of
        // each other: about 1 in 10^5). A loaded machine can only spread them further.
        let gates = std::sync::Arc::new(Gates::new(16));
        let v = "https://v.test";
        let deadline = Deadline::after(Duration::from_secs(60));
        drop(gates.enter(v, &deadline));
        gates.throttled(v, Duration::from_secs(2));
        let end = Instant::now() + Duration::from_secs(2);
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let g = gates.clone();
                std::thread::spawn(move || {
                    let d = Deadline::after(Duration::from_secs(60));
                    let _permit = g.enter(v, &d);
                    Instant::now()
                })
            })
            .collect();
        let entered: Vec<Instant> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        assert!(
            entered.iter().all(|t| *t >= end),
            "a waiter entered before the pause ended"
        );
        let first = entered.iter().min().unwrap();
        let last = entered.iter().max().unwrap();
        assert!(
            *last - *first > Duration::from_millis(100),
            "all resumed within {:?}",
            *last - *first
        );
    }

    #[test]
    fn waiters_resume_over_a_quarter_of_the_pause_at_most_a_second() {
        assert_eq!(resume_spread(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            resume_spread(Duration::from_millis(200)),
            Duration::from_millis(50)
        );
        assert_eq!(
            resume_spread(Duration::from_secs(4)),
            Duration::from_secs(1)
        );
        assert_eq!(
            resume_spread(Duration::from_secs(300)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn the_limit_bounds_requests_in_flight() {
        // What the code promises is an order, not a speed: with a limit of one, a second request
        // enters only after the first has left. The second thread says it is about to enter, the
        // first permit is held a while longer and then released with a flag set; the second must
        // see the flag. A late-starting thread or a slow machine changes nothing here.
        use std::sync::atomic::{AtomicBool, Ordering};
        let gates = std::sync::Arc::new(Gates::new(4));
        let deadline = Deadline::after(Duration::from_secs(60));
        let v = "https://v.test";
        drop(gates.enter(v, &deadline));
        gates.throttled(v, Duration::ZERO);
        gates.throttled(v, Duration::ZERO); // limit 1
        assert_eq!(gates.limit(v), Some(1));
        let first = gates.enter(v, &deadline);
        let released = std::sync::Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (g, r) = (gates.clone(), released.clone());
        let second = std::thread::spawn(move || {
            let d = Deadline::after(Duration::from_secs(60));
            ready_tx.send(()).unwrap();
            drop(g.enter(v, &d));
            r.load(Ordering::SeqCst)
        });
        ready_rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        released.store(true, Ordering::SeqCst);
        drop(first);
        assert!(
            second.join().unwrap(),
            "the second request entered while the first held the only slot"
        );
    }
}
