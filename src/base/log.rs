//! One line per event on stderr, as text or JSON. Callers pass names, ids and counts only;
//! as a second line of defence every message and field goes through [`crate::base::redact`] (every
//! credential and value the process holds replaced) before it is cut to length.
//!
//! Messages often quote what a server said (an error code, a message). A server must not be
//! able to forge a log line, so text lines escape every control character (line breaks, ESC,
//! C1 controls, Unicode line separators) in the message and in every field; JSON escapes them
//! by construction.
//!
//! Logging never blocks the caller: lines go through a bounded queue to a writer thread, and a
//! line that finds the queue full (stderr not being read: a stalled pipe, a full FIFO) is dropped
//! and counted (`kvfetch_log_lines_dropped_total`), so a stalled reader can never hold up a
//! refresh or a shutdown. [`flush`] waits (boundedly) for the queue before the process exits or
//! `execve`s.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// How much is logged: 0 errors only (`-q`), 1 normal, 2 verbose (`-v`).
#[derive(Debug, Clone, Copy)]
pub struct Logger {
    pub format: Format,
    pub level: u8,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Set the process-wide logger (the first call wins).
pub fn init(logger: Logger) {
    let _ = LOGGER.set(logger);
}

fn logger() -> Logger {
    *LOGGER.get().unwrap_or(&Logger {
        format: Format::Text,
        level: 1,
    })
}

/// An error line (always printed).
pub fn error(msg: &str, fields: &[(&str, &str)]) {
    emit(0, "error", msg, fields);
}

/// A warning (hidden by `-q`).
pub fn warn(msg: &str, fields: &[(&str, &str)]) {
    emit(1, "warn", msg, fields);
}

/// A normal event (hidden by `-q`).
pub fn info(msg: &str, fields: &[(&str, &str)]) {
    emit(1, "info", msg, fields);
}

/// A detail shown with `-v`.
pub fn debug(msg: &str, fields: &[(&str, &str)]) {
    emit(2, "debug", msg, fields);
}

/// Lines about the entries of one list a server sends (ids left out, secrets skipped): the
/// first [`Capped::NAMED`] are logged as they come, the rest only counted, and
/// [`Capped::finish`] gives their number in one line. A hostile list of 25,000 entries so costs
/// a few lines per pass, not 25,000.
#[derive(Debug, Default)]
pub struct Capped {
    named: usize,
    more: usize,
}

impl Capped {
    /// Entries logged one by one before the rest are only counted.
    pub const NAMED: usize = 5;

    pub fn new() -> Capped {
        Capped::default()
    }

    /// Run `line` (which logs one entry) while fewer than [`Capped::NAMED`] were; else count.
    pub fn note(&mut self, line: impl FnOnce()) {
        if self.named < Self::NAMED {
            self.named += 1;
            line();
        } else {
            self.more += 1;
        }
    }

    /// One line (a warning when `warn`, else info) for the entries not named, if there were
    /// any: `msg` with the fields given, `more` (not named) and `in_all` (named and not).
    pub fn finish(&self, warn: bool, msg: &str, fields: &[(&str, &str)]) {
        if self.more == 0 {
            return;
        }
        let (more, all) = (self.more.to_string(), (self.named + self.more).to_string());
        let mut with = fields.to_vec();
        with.extend([("more", more.as_str()), ("in_all", all.as_str())]);
        emit(1, if warn { "warn" } else { "info" }, msg, &with);
    }
}

/// Lines the queue holds before new ones are dropped.
const QUEUE: usize = 1024;
/// How long [`flush`] waits for a stalled stderr.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

static WRITER: OnceLock<Option<SyncSender<String>>> = OnceLock::new();
static QUEUED: AtomicUsize = AtomicUsize::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static REPORTED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped because stderr was not being read.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::SeqCst)
}

/// The writer thread's queue (started on first use); None where no thread can be had, and then
/// lines are written directly.
fn writer() -> Option<&'static SyncSender<String>> {
    WRITER
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<String>(QUEUE);
            let spawned = std::thread::Builder::new()
                .name("log".into())
                .stack_size(64 * 1024)
                .spawn(move || {
                    for line in rx {
                        let dropped = dropped();
                        let reported = REPORTED.load(Ordering::SeqCst);
                        if dropped > reported {
                            let note = format!(
                                "kvfetch: warn: {} log lines dropped: stderr was not being read\n",
                                dropped - reported
                            );
                            let _ = std::io::stderr().lock().write_all(note.as_bytes());
                            REPORTED.store(dropped, Ordering::SeqCst);
                        }
                        let _ = std::io::stderr().lock().write_all(line.as_bytes());
                        QUEUED.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            spawned.ok().map(|_| tx)
        })
        .as_ref()
}

/// Queue a line. An error line that finds the queue full waits for room a little (up to 100 ms):
/// errors explain exit codes and are rare; other lines are dropped at once.
fn write_line(line: String, error: bool) {
    let Some(tx) = writer() else {
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        return;
    };
    QUEUED.fetch_add(1, Ordering::SeqCst);
    let mut line = line;
    let until = Instant::now() + Duration::from_millis(100);
    loop {
        match tx.try_send(line) {
            Ok(()) => return,
            Err(TrySendError::Full(back)) if error && Instant::now() < until => {
                line = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(TrySendError::Full(_)) => {
                QUEUED.fetch_sub(1, Ordering::SeqCst);
                DROPPED.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Err(TrySendError::Disconnected(back)) => {
                QUEUED.fetch_sub(1, Ordering::SeqCst);
                let _ = std::io::stderr().lock().write_all(back.as_bytes());
                return;
            }
        }
    }
}

/// Wait until every queued line is written, for at most two seconds, then say how many lines
/// were dropped, if any were and the writer has not said so yet.
pub fn flush() {
    let until = Instant::now() + FLUSH_WAIT;
    while QUEUED.load(Ordering::SeqCst) > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    let dropped = dropped().saturating_sub(REPORTED.load(Ordering::SeqCst));
    if dropped > 0 && QUEUED.load(Ordering::SeqCst) == 0 {
        let note =
            format!("kvfetch: warn: {dropped} log lines dropped: stderr was not being read\n");
        let _ = std::io::stderr().lock().write_all(note.as_bytes());
    }
}

fn emit(min_level: u8, level: &str, msg: &str, fields: &[(&str, &str)]) {
    let l = logger();
    if l.level < min_level {
        return;
    }
    let msg = sanitize(msg, MAX_MESSAGE);
    let values: Vec<String> = fields.iter().map(|(_, v)| sanitize(v, MAX_FIELD)).collect();
    let fields: Vec<(&str, &str)> = fields
        .iter()
        .zip(&values)
        .map(|((k, _), v)| (*k, v.as_str()))
        .collect();
    let (msg, fields) = (msg.as_str(), fields.as_slice());
    let line = match l.format {
        Format::Text => text_line(level, msg, fields),
        Format::Json => json_line(level, msg, fields),
    };
    write_line(line, min_level == 0);
}

fn text_line(level: &str, msg: &str, fields: &[(&str, &str)]) -> String {
    let mut line = format!("kvfetch: {level}: {}", escape(msg));
    for (k, v) in fields {
        if v.contains([' ', '"']) || v.is_empty() || v.chars().any(needs_escape) {
            line.push_str(&format!(" {k}={v:?}"));
        } else {
            line.push_str(&format!(" {k}={v}"));
        }
    }
    line.push('\n');
    line
}

/// The longest message and field value a log line carries (server text can be any length).
const MAX_MESSAGE: usize = 2000;
const MAX_FIELD: usize = 500;

/// A log text cut to `max` characters, with every sensitive string the process holds and
/// anything shaped like a JWT replaced first (see [`crate::base::redact`]): a hostile server could
/// echo a credential it was sent into an error text.
pub fn sanitize(text: &str, max: usize) -> String {
    crate::base::redact::cut(text, max)
}

/// See [`crate::base::redact::redact_tokens`].
pub fn redact_tokens(text: &str) -> String {
    crate::base::redact::redact_tokens(text)
}

/// Characters that could break a log line, drive a terminal or reorder what is shown
/// (bidirectional and other invisible format characters).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{85}' | '\u{61c}' | '\u{feff}'
        )
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}')
}

/// `msg` with every [`needs_escape`] character written as `\n`, `\r`, `\t` or `\u{..}`.
pub fn escape(msg: &str) -> String {
    if !msg.chars().any(needs_escape) {
        return msg.to_string();
    }
    msg.chars()
        .map(|c| match c {
            '\n' => "\\n".to_string(),
            '\r' => "\\r".to_string(),
            '\t' => "\\t".to_string(),
            c if needs_escape(c) => format!("\\u{{{:x}}}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

/// Fields that always hold a whole number: JSON lines carry them as numbers, so a machine
/// can compare them without parsing. Every other field stays a string, whatever it holds (a
/// secret named `123` is still a name).
const NUMERIC_FIELDS: &[&str] = &["count", "exit_code", "pid", "pgid", "secrets", "signal"];

fn json_line(level: &str, msg: &str, fields: &[(&str, &str)]) -> String {
    let mut obj = serde_json::Map::new();
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    obj.insert(
        "ts".into(),
        serde_json::json!((ts * 1000.0).round() / 1000.0),
    );
    obj.insert("level".into(), level.into());
    obj.insert("msg".into(), msg.into());
    for (k, v) in fields {
        let number = NUMERIC_FIELDS
            .contains(k)
            .then(|| v.parse::<i64>().ok())
            .flatten();
        let value = number.map_or_else(|| (*v).into(), serde_json::Value::from);
        obj.insert((*k).into(), value);
    }
    format!("{}\n", serde_json::Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_lines_name_a_few_and_count_the_rest() {
        let mut c = Capped::new();
        let mut logged = 0;
        for _ in 0..10_000 {
            c.note(|| logged += 1);
        }
        assert_eq!(logged, Capped::NAMED);
        assert_eq!((c.named, c.more), (Capped::NAMED, 10_000 - Capped::NAMED));
    }

    #[test]
    fn text_lines_cannot_be_forged() {
        let hostile = "Bad\n kvfetch: info: all good\r\u{1b}[2J\u{2028}x";
        let line = text_line("error", hostile, &[("code", hostile), ("n", "a\nb")]);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.ends_with('\n'));
        assert!(!line.contains(['\r', '\u{1b}', '\u{2028}']), "{line}");
        assert!(line.contains("Bad\\n kvfetch: info"), "{line}");
        let json = json_line("error", hostile, &[("code", hostile)]);
        assert_eq!(json.matches('\n').count(), 1);
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["msg"], hostile);
    }

    #[test]
    fn tokens_are_redacted_and_long_text_is_cut() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJvaWQiOiJ4In0.c2lnbmF0dXJl";
        let text = format!("HTTP 201 {{\"access_token\":\"{jwt}\"}} eyJ short");
        let clean = sanitize(&text, 2000);
        assert!(
            !clean.contains("eyJhbGci") && clean.contains("<token>"),
            "{clean}"
        );
        assert!(clean.ends_with("eyJ short"));
        assert_eq!(sanitize(&"x".repeat(3000), 10), "xxxxxxxxxx…(cut)");
        assert!(escape("a\u{202e}b").contains("\\u{202e}"));
    }
}
