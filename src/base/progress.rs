//! Progress while kvfetch waits. A retry loop that has been at it for a few seconds says so
//! at info level, what it waits for and why, once and then at growing intervals: an operator
//! looking at a stuck init container sees "waiting for the identity endpoint (HTTP 410)" at
//! once, not a silent pod for two minutes. Parallel workers waiting for the same thing share
//! one line per interval (see [`GATE`]), so 100 throttled secrets do not print 100 lines.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::base::log;
use crate::base::retry::human;

/// The first report comes once a wait has lasted this long.
pub const FIRST_REPORT: Duration = Duration::from_secs(3);
/// Reports then come at doubling intervals, at most this far apart.
const MAX_INTERVAL: Duration = Duration::from_secs(300);
/// Lines about one kind of wait are at least this far apart, whichever worker reports.
const SHARED_GAP: Duration = Duration::from_secs(2);

/// When each kind of wait last reported.
static GATE: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);

/// One retry loop's progress: when it started and when it reports next.
pub struct Waiting {
    started: Instant,
    next: Duration,
}

impl Default for Waiting {
    fn default() -> Self {
        Waiting::new()
    }
}

impl Waiting {
    pub fn new() -> Waiting {
        Waiting {
            started: Instant::now(),
            next: FIRST_REPORT,
        }
    }

    /// Before sleeping `delay`: whether the wait, counted to the end of that sleep, has passed
    /// its next report time (and then move that time on). Pure, for tests.
    pub fn due(&mut self, delay: Duration) -> bool {
        let waited = self.started.elapsed() + delay;
        if waited < self.next {
            return false;
        }
        while self.next <= waited {
            self.next = (self.next * 2).min(self.next + MAX_INTERVAL);
        }
        true
    }

    /// When `sleeping` (the retry loop will sleep `delay`, the sleep that really happens, and
    /// try again): report `msg` with `fields`, plus how long it has waited and when it tries
    /// again, if due and no other worker reported this `kind` of wait just now.
    pub fn report_if(
        &mut self,
        sleeping: bool,
        kind: &str,
        delay: Duration,
        msg: &str,
        fields: &[(&str, &str)],
    ) {
        if !sleeping || !self.due(delay) || !first_in_gap(kind) {
            return;
        }
        let (waited, retry_in) = (human(self.started.elapsed()), human(delay));
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        all.extend([("waited", waited.as_str()), ("retry_in", retry_in.as_str())]);
        log::info(msg, &all);
    }
}

/// Whether this report of `kind` is the first in [`SHARED_GAP`] (and note it).
fn first_in_gap(kind: &str) -> bool {
    let mut gate = GATE.lock().unwrap_or_else(|e| e.into_inner());
    let map = gate.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    match map.get(kind) {
        Some(last) if now.duration_since(*last) < SHARED_GAP => false,
        _ => {
            map.insert(kind.to_string(), now);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_start_after_a_few_seconds_and_then_double() {
        let mut w = Waiting::new();
        assert!(!w.due(Duration::from_secs(1)), "a short wait is silent");
        assert!(w.due(Duration::from_secs(3)), "3 s: the first report");
        assert!(!w.due(Duration::from_secs(5)));
        assert!(w.due(Duration::from_secs(6)), "then at 6 s");
        assert!(!w.due(Duration::from_secs(11)));
        assert!(w.due(Duration::from_secs(12)), "12 s");
        // A long sleep passes several report times: one report, and the next is later still.
        assert!(w.due(Duration::from_secs(100)));
        assert!(!w.due(Duration::from_secs(191)));
        assert!(w.due(Duration::from_secs(192)));
        // Never more than five minutes apart.
        let mut w = Waiting::new();
        assert!(w.due(Duration::from_secs(3600)));
        assert!(w.due(Duration::from_secs(3600) + MAX_INTERVAL));
    }

    #[test]
    fn one_line_per_kind_per_gap() {
        assert!(first_in_gap("test kind a"));
        assert!(!first_in_gap("test kind a"), "a second worker stays quiet");
        assert!(first_in_gap("test kind b"), "another kind is reported");
    }
}
