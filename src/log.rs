//! One line per event on stderr, as text or JSON. Callers pass names, ids and counts only:
//! nothing here ever receives a secret value or a token.
//!
//! Messages often quote what a server said (an error code, a message). A server must not be
//! able to forge a log line, so text lines escape every control character (line breaks, ESC,
//! C1 controls, Unicode line separators) in the message and in every field; JSON escapes them
//! by construction.

use std::io::Write;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

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

fn emit(min_level: u8, level: &str, msg: &str, fields: &[(&str, &str)]) {
    let l = logger();
    if l.level < min_level {
        return;
    }
    let line = match l.format {
        Format::Text => text_line(level, msg, fields),
        Format::Json => json_line(level, msg, fields),
    };
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
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

/// Characters that could break a log line or drive a terminal.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{85}')
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
        obj.insert((*k).into(), (*v).into());
    }
    format!("{}\n", serde_json::Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
