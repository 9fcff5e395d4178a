//! The one redactor: a process-wide registry of every sensitive string this process holds, and
//! the function every message, log line and doctor line passes through.
//!
//! Why a registry: a server can quote back what it was sent (an identity endpoint its header
//! secret, Entra the federated assertion, the Arc agent its key) or what another answer held (a
//! vault another secret's value). Scrubbing per call site missed some of them, and scrubbing
//! after a message was cut to length left the prefix of a copy placed across the cut. So each
//! value is registered the moment it is read or received ([`credential`], [`value`]), and
//! [`cut`] replaces every registered value (and anything shaped like a JWT) *before* cutting,
//! then also replaces a tail that begins a registered value (a copy cut short by the server).
//!
//! The registry keeps at most [`MAX_HELD`] strings and [`MAX_BYTES`] bytes, oldest dropped
//! first, so a long-running `watch` (tokens renewed, values rotated) does not grow without end.

use std::collections::VecDeque;
use std::sync::Mutex;

/// What a redacted string becomes.
pub const MARK: &str = "<redacted>";
/// Credentials shorter than this are not registered (replacing them would mangle words).
const MIN_CREDENTIAL: usize = 4;
/// Fetched values shorter than this are not registered: values like `true` or `8080` would
/// turn ordinary text into `<redacted>`, and kvfetch never puts a value in a message itself.
const MIN_VALUE: usize = 8;
/// The shortest beginning of a registered string that is replaced at the end of a text.
const MIN_TAIL: usize = 4;
const MAX_HELD: usize = 4096;
const MAX_BYTES: usize = 16 << 20;

struct Held {
    strings: VecDeque<String>,
    bytes: usize,
}

static HELD: Mutex<Held> = Mutex::new(Held {
    strings: VecDeque::new(),
    bytes: 0,
});

fn held() -> std::sync::MutexGuard<'static, Held> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Register a credential (a header secret, the Arc key, the federated assertion, a token).
pub fn credential(text: &str) {
    add(text, MIN_CREDENTIAL);
}

/// Register a fetched secret value.
pub fn value(text: &str) {
    add(text, MIN_VALUE);
}

/// Keep `text` and, when it differs, its JSON-escaped form (a body that is not JSON, e.g. a
/// proxy's page, may quote a JSON request or answer as it was sent).
fn add(text: &str, min: usize) {
    if text.chars().count() < min {
        return;
    }
    let mut h = held();
    h.push(text);
    let json = serde_json::to_string(text).unwrap_or_default();
    let escaped = json
        .get(1..json.len().saturating_sub(1))
        .unwrap_or_default();
    if escaped != text && !escaped.is_empty() {
        h.push(escaped);
    }
}

impl Held {
    /// Keep `text` (once), dropping the oldest beyond the bounds.
    fn push(&mut self, text: &str) {
        if self.strings.iter().any(|s| s == text) {
            return;
        }
        self.bytes += text.len();
        self.strings.push_back(text.to_string());
        while self.strings.len() > MAX_HELD || (self.bytes > MAX_BYTES && self.strings.len() > 1) {
            if let Some(old) = self.strings.pop_front() {
                self.bytes -= old.len();
            }
        }
    }
}

/// `text` with every registered string, and every run shaped like a JWT, replaced by
/// [`MARK`] (`<token>` for the JWT shape). Longer strings first, so a string that holds a
/// shorter one is replaced whole.
pub fn redact(text: &str) -> String {
    let h = held();
    // A string longer than the text cannot be in it (and is not searched: a search prepares
    // its whole needle first).
    let mut found: Vec<&str> = h
        .strings
        .iter()
        .map(String::as_str)
        .filter(|s| s.len() <= text.len() && text.contains(s))
        .collect();
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for s in found {
        out = out.replace(s, MARK);
    }
    drop(h);
    redact_tokens(&out)
}

/// [`redact`] of the first `max` characters of `text` (a server's text can be a megabyte; what
/// is shown is far shorter). Where `text` is longer, a tail of the kept part that begins a
/// registered string is replaced too.
pub fn redact_prefix(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => redact(&scrub_tail(&text[..at])),
        None => redact(text),
    }
}

/// [`redact`], then cut to `max` characters; a cut text ends in `…(cut)`, and where it was
/// cut, a tail that is the beginning of a registered string is replaced too (a copy no
/// registered string matched whole, as one already cut short).
pub fn cut(text: &str, max: usize) -> String {
    let (clean, cut) = redact_and_cut(text, max);
    if cut {
        format!("{clean}…(cut)")
    } else {
        clean
    }
}

/// [`cut`] without the `…(cut)` mark, for texts quoted inside a message.
pub fn cut_quiet(text: &str, max: usize) -> String {
    redact_and_cut(text, max).0
}

/// The text redacted and cut, and whether it was cut. Only the first `max` characters plus the
/// longest registered string are searched: a copy that begins within the first `max` lies
/// wholly inside them, and anything later is cut away.
fn redact_and_cut(text: &str, max: usize) -> (String, bool) {
    let longest = held().strings.iter().map(String::len).max().unwrap_or(0);
    let window = max.saturating_add(longest).saturating_add(1);
    let (part, windowed) = match text.char_indices().nth(window) {
        Some((at, _)) => (scrub_tail(&text[..at]), true),
        None => (text.to_string(), false),
    };
    let clean = redact(&part);
    match clean.char_indices().nth(max) {
        Some((at, _)) => (scrub_tail(&clean[..at]), true),
        None => (clean, windowed),
    }
}

/// `text` with a tail of at least [`MIN_TAIL`] characters that begins a registered string
/// replaced by [`MARK`].
fn scrub_tail(text: &str) -> String {
    let h = held();
    let mut earliest = text.len();
    for s in &h.strings {
        let Some((lead_end, _)) = s.char_indices().nth(MIN_TAIL) else {
            continue;
        };
        let lead = &s[..lead_end];
        let window = text.len().saturating_sub(s.len());
        let from = (window..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        for (i, _) in text[from..].match_indices(lead) {
            let start = from + i;
            if start < earliest && s.starts_with(&text[start..]) {
                earliest = start;
            }
        }
    }
    if earliest == text.len() {
        return text.to_string();
    }
    format!("{}{MARK}", &text[..earliest])
}

/// Replace every run that starts with `eyJ` (a base64url JSON header), holds a `.` and is at
/// least 20 characters of base64url and dots, with `<token>`.
pub fn redact_tokens(text: &str) -> String {
    let token_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("eyJ") {
        out.push_str(&rest[..start]);
        let run = &rest[start..];
        let len = run.find(|c: char| !token_char(c)).unwrap_or(run.len());
        if len >= 20 && run[..len].contains('.') {
            out.push_str("<token>");
        } else {
            out.push_str(&run[..len]);
        }
        rest = &run[len..];
    }
    out.push_str(rest);
    out
}

/// Overwrite a string's bytes, its whole capacity, with zeros before its memory is freed (a
/// guard against values lingering in freed heap memory; copies made by the HTTP stack are not
/// reached). `zeroize` writes so that the compiler cannot remove them; the string is left empty.
pub fn wipe(s: &mut String) {
    zeroize::Zeroize::zeroize(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_strings_are_replaced_before_the_cut() {
        let header = "RdX-header-0123456789abcdef0123456789abcdef0123456789abcdef012345";
        credential(header);
        let text = format!("{}{header} trailing words", "x".repeat(171));
        let shown = cut(&text, 200);
        assert!(!shown.contains("RdX-header"), "{shown}");
        assert!(shown.contains(MARK), "{shown}");
        // A copy no registered string matches whole (here one character differs at its end),
        // cut: its beginning at the cut is replaced.
        let near = format!(
            "{}{}Q trailing",
            "x".repeat(171),
            &header[..header.len() - 1]
        );
        let shown = cut(&near, 200);
        assert_eq!(shown, format!("{}{MARK}…(cut)", "x".repeat(171)));
        assert_eq!(cut_quiet(&"y".repeat(300), 10), "y".repeat(10));
        // A megabyte of text is searched only as far as it is shown, and still redacted there.
        let huge = format!("{header}{}", "z".repeat(1 << 20));
        assert_eq!(cut(&huge, 20), format!("{MARK}zzzzzzzzzz…(cut)"));
        assert_eq!(
            redact_prefix(&format!("ab {header}"), 30),
            format!("ab {MARK}")
        );
    }

    #[test]
    fn short_values_stay_and_the_longest_wins() {
        value("true");
        assert_eq!(redact("true"), "true");
        credential("RdY-inner-secret");
        credential("RdY-outer-RdY-inner-secret-tail");
        assert_eq!(
            redact("a RdY-outer-RdY-inner-secret-tail b"),
            format!("a {MARK} b")
        );
        value("RdW \"quoted\" value\nline two");
        assert_eq!(
            redact(r#"raw: RdW \"quoted\" value\nline two"#),
            format!("raw: {MARK}")
        );
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJvaWQiOiJ4In0.c2lnbmF0dXJl";
        assert_eq!(redact(&format!("t={jwt}")), "t=<token>");
    }

    #[test]
    fn the_registry_is_bounded() {
        let mut h = Held {
            strings: VecDeque::new(),
            bytes: 0,
        };
        for i in 0..MAX_HELD + 10 {
            h.push(&format!("RdZ-bounded-{i:06}"));
            h.push(&format!("RdZ-bounded-{i:06}"));
        }
        assert_eq!(h.strings.len(), MAX_HELD);
        assert_eq!(h.strings.front().unwrap(), "RdZ-bounded-000010");
        h.push(&"v".repeat(MAX_BYTES));
        assert!(h.bytes <= MAX_BYTES && h.strings.len() == 1);
    }
}
