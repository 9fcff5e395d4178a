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
//! Two lists, because they are not alike. Credentials (the header secrets, the Arc key, the
//! federated assertion, tokens) are registered once per token request and are never dropped.
//! Fetched values come from the vault, whose writer may not be the operator: they are kept in
//! a list of their own, so no number or size of values can push a credential out. Each list has
//! a bound ([`MAX_VALUES`]/[`MAX_VALUE_BYTES`], [`MAX_CREDENTIALS`]/[`MAX_CREDENTIAL_BYTES`]),
//! and nothing registered is ever dropped: a string that would pass its list's bound is not
//! kept, and the registry is *saturated* from then on: every text a server sent that would be
//! quoted in a message ([`redact_prefix`], [`cut_quiet`]) is withheld whole ([`WITHHELD`]),
//! since it might hold the string that could not be kept. Fetching and writing go on.
//!
//! Only the string as read is stored. Its JSON-escaped form (a body that is not JSON may quote
//! a JSON request or answer as it was sent) is derived when a text is searched, so a value of
//! control characters, six times longer escaped, costs its own length only.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a redacted string becomes.
pub const MARK: &str = "<redacted>";
/// What a server's text becomes once the registry is saturated.
pub const WITHHELD: &str = "<withheld: more secrets than kvfetch can redact>";
/// Credentials shorter than this are not registered (replacing them would mangle words).
const MIN_CREDENTIAL: usize = 4;
/// Fetched values shorter than this are not registered: values like `true` or `8080` would
/// turn ordinary text into `<redacted>`, and kvfetch never puts a value in a message itself.
const MIN_VALUE: usize = 8;
/// The shortest beginning of a registered string that is replaced at the end of a text.
const MIN_TAIL: usize = 4;
/// Values: Key Vault keeps at most 25 KB a value, so 16 MiB is ~670 of the largest, and a
/// `watch` whose secrets rotate keeps every value it has seen.
const MAX_VALUES: usize = 16384;
const MAX_VALUE_BYTES: usize = 16 << 20;
/// Credentials: one or two per token request (a token is at most 32 KiB).
const MAX_CREDENTIALS: usize = 4096;
const MAX_CREDENTIAL_BYTES: usize = 16 << 20;

/// One list and its bound.
struct List {
    /// Ordered for a dedup in O(log n) (a fetch of thousands of values registers each).
    strings: BTreeSet<String>,
    bytes: usize,
    /// The length of the longest string JSON-escaped.
    longest: usize,
    max_strings: usize,
    max_bytes: usize,
}

impl List {
    const fn new(max_strings: usize, max_bytes: usize) -> List {
        List {
            strings: BTreeSet::new(),
            bytes: 0,
            longest: 0,
            max_strings,
            max_bytes,
        }
    }

    /// Keep `text` (once); false when it would pass the bound (and is not kept).
    fn keep(&mut self, text: &str) -> bool {
        if self.strings.contains(text) {
            return true;
        }
        if self.strings.len() >= self.max_strings || self.bytes + text.len() > self.max_bytes {
            return false;
        }
        self.bytes += text.len();
        self.strings.insert(text.to_string());
        self.longest = self.longest.max(escaped_len(text));
        true
    }
}

struct Held {
    credentials: List,
    values: List,
    /// A string could not be kept: servers' texts are withheld from messages from now on.
    saturated: bool,
}

impl Held {
    const fn new() -> Held {
        Held {
            credentials: List::new(MAX_CREDENTIALS, MAX_CREDENTIAL_BYTES),
            values: List::new(MAX_VALUES, MAX_VALUE_BYTES),
            saturated: false,
        }
    }

    /// Every registered string, credentials first.
    fn strings(&self) -> impl Iterator<Item = &str> {
        let all = self.credentials.strings.iter().chain(&self.values.strings);
        all.map(String::as_str)
    }

    /// Every registered string and, where it differs, its JSON-escaped form, of at most `max`
    /// bytes (a longer one cannot be in a text of `max` bytes).
    fn forms(&self, max: usize) -> impl Iterator<Item = Cow<'_, str>> {
        self.strings()
            .filter(move |s| s.len() <= max)
            .flat_map(move |s| {
                let escaped = escaped(s).filter(|e| e.len() <= max);
                std::iter::once(Cow::Borrowed(s)).chain(escaped.map(Cow::Owned))
            })
    }

    /// Every registered string and, where it differs, the JSON-escaped form of its first `len`
    /// characters: enough to tell whether a tail of `len` bytes begins one of them.
    fn tail_forms(&self, len: usize) -> impl Iterator<Item = Cow<'_, str>> {
        self.strings().flat_map(move |s| {
            let head = s.char_indices().nth(len).map_or(s, |(at, _)| &s[..at]);
            std::iter::once(Cow::Borrowed(s)).chain(escaped(head).map(Cow::Owned))
        })
    }

    /// The longest form of any registered string.
    fn longest(&self) -> usize {
        self.credentials.longest.max(self.values.longest)
    }
}

static HELD: Mutex<Held> = Mutex::new(Held::new());
/// Whether the one warning that the registry is saturated was logged.
static WARNED: AtomicBool = AtomicBool::new(false);

fn held() -> std::sync::MutexGuard<'static, Held> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Register a credential (a header secret, the Arc key, the federated assertion, a token).
pub fn credential(text: &str) {
    if text.chars().count() >= MIN_CREDENTIAL {
        let kept = held().credentials.keep(text);
        saturate_unless(kept);
    }
}

/// Register a fetched secret value.
pub fn value(text: &str) {
    if text.chars().count() >= MIN_VALUE {
        let kept = held().values.keep(text);
        saturate_unless(kept);
    }
}

/// Whether servers' texts are withheld from messages (see the module's documentation).
pub fn saturated() -> bool {
    held().saturated
}

fn saturate_unless(kept: bool) {
    if kept {
        return;
    }
    held().saturated = true;
    if !WARNED.swap(true, Ordering::SeqCst) {
        crate::base::log::warn(
            "kvfetch holds more secret values or credentials than it can redact; from now on what servers say in their errors is withheld from messages",
            &[],
        );
    }
}

/// `text` as a JSON string's contents, when that differs from `text`.
fn escaped(text: &str) -> Option<String> {
    if !text.chars().any(needs_escape) {
        return None;
    }
    let json = serde_json::to_string(text).ok()?;
    json.get(1..json.len() - 1).map(str::to_string)
}

/// The characters JSON escapes (serde_json leaves `/` and non-ASCII as they are).
fn needs_escape(c: char) -> bool {
    c < ' ' || c == '"' || c == '\\'
}

/// The length of `text` JSON-escaped, without escaping it.
fn escaped_len(text: &str) -> usize {
    let extra: usize = text
        .chars()
        .filter(|c| needs_escape(*c))
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 1,
            _ => 5,
        })
        .sum();
    text.len() + extra
}

/// `text` with every registered string, and every run shaped like a JWT, replaced by
/// [`MARK`] (`<token>` for the JWT shape). Longer strings first, so a string that holds a
/// shorter one is replaced whole.
pub fn redact(text: &str) -> String {
    let h = held();
    // A string longer than the text cannot be in it (and is not searched: a search prepares
    // its whole needle first).
    let mut found: Vec<Cow<str>> = h
        .forms(text.len())
        .filter(|s| text.contains(&**s))
        .collect();
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for s in found {
        out = out.replace(&*s, MARK);
    }
    drop(h);
    redact_tokens(&out)
}

/// [`redact`] of the first `max` characters of a server's `text` (it can be a megabyte; what
/// is shown is far shorter). Where `text` is longer, a tail of the kept part that begins a
/// registered string is replaced too. [`WITHHELD`] once the registry is saturated.
pub fn redact_prefix(text: &str, max: usize) -> String {
    if saturated() {
        return WITHHELD.to_string();
    }
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

/// [`cut`] without the `…(cut)` mark, for a server's texts quoted inside a message;
/// [`WITHHELD`] once the registry is saturated.
pub fn cut_quiet(text: &str, max: usize) -> String {
    if saturated() {
        return WITHHELD.to_string();
    }
    redact_and_cut(text, max).0
}

/// The text redacted and cut, and whether it was cut. Only the first `max` characters plus the
/// longest registered string are searched: a copy that begins within the first `max` lies
/// wholly inside them, and anything later is cut away.
fn redact_and_cut(text: &str, max: usize) -> (String, bool) {
    let longest = held().longest();
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
/// (or its JSON-escaped form) replaced by [`MARK`].
fn scrub_tail(text: &str) -> String {
    let h = held();
    let mut earliest = text.len();
    for s in h.tail_forms(text.len()) {
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

    /// Only a run of at least 20 token characters holding a `.` is a token (tests written from
    /// a missed mutant: `&&` → `||` took any long run, or any dotted one, for a token).
    #[test]
    fn a_token_is_long_and_dotted() {
        assert_eq!(
            redact_tokens("x eyJhbGciOiJIUzI1NiJ9xyz y"),
            "x eyJhbGciOiJIUzI1NiJ9xyz y"
        );
        assert_eq!(redact_tokens("x eyJ.a y"), "x eyJ.a y");
        assert_eq!(redact_tokens("x eyJhbGciOiJIUzI1NiJ9.e30 y"), "x <token> y");
    }

    /// A cut text's tail is replaced only when it is the beginning of a registered string, not
    /// when it merely starts like one (a missed mutant: `&&` → `||` replaced both).
    #[test]
    fn a_tail_is_replaced_only_when_it_begins_a_registered_string() {
        value("zq9-tail-probe-value");
        let begins = format!("the message: zq9-tail-p{}", "x".repeat(50));
        let shown = redact_prefix(&begins, "the message: zq9-tail-p".chars().count());
        assert!(!shown.contains("zq9-"), "{shown}");
        let differs = format!("the message: zq9-other{}", "x".repeat(50));
        let shown = redact_prefix(&differs, "the message: zq9-other".chars().count());
        assert_eq!(shown, "the message: zq9-other");
    }

    /// A list keeps strings up to its byte bound exactly, and not one byte past it (tests
    /// written from two missed mutants of the bound's `>`).
    #[test]
    fn a_list_keeps_up_to_its_byte_bound_exactly() {
        let mut list = List::new(10, 8);
        assert!(list.keep("abcd"));
        assert!(list.keep("efgh"), "8 bytes of 8 fit");
        assert!(list.keep("abcd"), "a string already kept costs nothing");
        assert!(!list.keep("i"), "9 bytes of 8 do not");
        assert_eq!(list.bytes, 8);
        let mut few = List::new(1, 100);
        assert!(few.keep("a"));
        assert!(!few.keep("b"), "one string of one");
    }

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
    fn values_never_push_out_a_credential_and_nothing_kept_is_dropped() {
        let mut h = Held::new();
        assert!(h.credentials.keep("RdZ-header-secret"));
        // Values of control characters: the escaped form (6 times longer) is not stored.
        let big = |i: usize| format!("{i:03}{}", "\u{1}".repeat(25_000));
        for i in 0..600 {
            assert!(h.values.keep(&big(i)), "{i}");
        }
        assert_eq!(h.values.bytes, 600 * 25_003);
        // Past the bound a value is not kept (the caller saturates); none is dropped.
        for i in 0..MAX_VALUES {
            if !h.values.keep(&format!("RdZ-bounded-{i:06}")) {
                break;
            }
        }
        assert!(!h.values.keep(&big(999)));
        assert!(h.values.bytes <= MAX_VALUE_BYTES);
        assert!(h.values.keep(&big(0)), "one already kept is kept");
        assert!(h.values.strings.contains(&big(0)));
        assert!(h.credentials.strings.iter().eq(["RdZ-header-secret"]));
        let mut few = List::new(2, 1 << 20);
        assert!(few.keep("one-value") && few.keep("two-value") && few.keep("one-value"));
        assert!(!few.keep("three-value"));
        assert!(few.strings.iter().eq(["one-value", "two-value"]));
    }

    #[test]
    fn escaped_forms_are_found_without_being_stored() {
        credential("RdE-cred\u{1}with-control");
        assert_eq!(
            redact("x RdE-cred\\u0001with-control y"),
            format!("x {MARK} y")
        );
        assert_eq!(escaped_len("a\u{1}\n\"\\b"), "a\\u0001\\n\\\"\\\\b".len());
        // A tail that begins the escaped form, cut short.
        let shown = cut(&format!("{} RdE-cred\\u0001with-co", "z".repeat(20)), 30);
        assert!(!shown.contains("RdE-cred"), "{shown}");
    }
}
