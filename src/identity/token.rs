//! Tokens as the identity endpoints answer them: the access token (never shown), its expiry
//! from whichever form the endpoint uses (numbers as strings or numbers, epoch or date strings),
//! and the claims messages and `kvfetch doctor` name.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::base::stamps::days_from_civil;
use crate::error::Error;

/// An access token. Its `Debug` never shows the token itself.
#[derive(Clone)]
pub struct Token {
    access: String,
    /// Unix seconds at which the token expires.
    pub expires_on: u64,
    /// `expires_in`, where the answer gave it: the lifetime in seconds.
    pub lifetime: Option<u64>,
    /// The identity's object id (`oid` claim), for messages.
    pub object_id: Option<String>,
    /// The identity's client id (`appid` claim), for messages.
    pub client_id: Option<String>,
    /// The tenant (`tid`), audience (`aud`) and the managed identity's resource id
    /// (`xms_mirid`): what `kvfetch doctor` shows of a token (never the token).
    pub tenant_id: Option<String>,
    pub audience: Option<String>,
    pub mi_resource_id: Option<String>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("expires_on", &self.expires_on)
            .field("object_id", &self.object_id)
            .finish_non_exhaustive()
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        crate::base::redact::wipe(&mut self.access);
    }
}

impl Token {
    /// The `Authorization` header value.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.access)
    }

    /// Whether this is the same token as `other`.
    pub fn same_as(&self, other: &Token) -> bool {
        self.access == other.access
    }

    /// "object id X" or "client id Y", for messages.
    pub fn who(&self) -> String {
        match (&self.object_id, &self.client_id) {
            (Some(oid), _) => format!("object id {oid}"),
            (None, Some(cid)) => format!("client id {cid}"),
            _ => "unknown object id".into(),
        }
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The largest access token kvfetch sends (real ones are 1-4 KB; headers over 16-32 KB are
/// refused by servers).
const MAX_TOKEN: usize = 32 * 1024;

/// Parse a token answer: numbers may be strings, `expires_on` may be epoch or a date string.
pub fn parse_token(body: &str, who: &str) -> Result<Token, Error> {
    let bad = |why: &str| {
        Error::NoToken(format!(
            "the identity endpoint for {who} sent an unusable token answer: {why}"
        ))
    };
    let v: Value = serde_json::from_str(body).map_err(|_| bad("not JSON"))?;
    let access = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("no access_token"))?;
    crate::base::redact::credential(access);
    if access.len() > MAX_TOKEN {
        return Err(bad("the access_token is larger than 32 KiB"));
    }
    if !access.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "the access_token holds characters that cannot go into an HTTP header",
        ));
    }
    let claims = jwt_claims(access);
    let claim = |k: &str| {
        claims
            .as_ref()
            .and_then(|c| c.get(k))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let lifetime = v.get("expires_in").and_then(number);
    let expires_on = v
        .get("expires_on")
        .and_then(number_or_date)
        .or_else(|| now().checked_add(lifetime?))
        .or_else(|| claims.as_ref().and_then(|c| c.get("exp")).and_then(number))
        .ok_or_else(|| bad("no usable expires_on or expires_in"))?;
    Ok(Token {
        access: access.to_string(),
        expires_on,
        lifetime: lifetime.filter(|l| *l > 0 && *l < 10 * 365 * 86400),
        object_id: claim("oid"),
        client_id: claim("appid").or_else(|| claim("azp")),
        tenant_id: claim("tid"),
        audience: claim("aud"),
        mi_resource_id: claim("xms_mirid"),
    })
}

/// A number of seconds as endpoints write it: a JSON number, or a string of digits, possibly
/// with a fraction (`"1586984735.5"` → 1586984735). Never negative, NaN or overflowing.
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e15)
                .map(|f| f as u64)
        }),
        Value::String(s) => {
            let s = s.trim();
            let (whole, fraction) = s.split_once('.').unwrap_or((s, "0"));
            let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
            (digits(whole) && digits(fraction))
                .then(|| whole.parse().ok())
                .flatten()
        }
        _ => None,
    }
}

fn number_or_date(v: &Value) -> Option<u64> {
    number(v).or_else(|| {
        v.as_str()
            .and_then(|s| parse_date(s).or_else(|| parse_iso(s)))
    })
}

/// ISO 8601 / RFC 3339 forms: `2026-11-28T15:13:34Z`, `2026-11-28 15:13:34`, with a fraction of
/// a second and an offset (`+01:00`) or none (UTC) → Unix seconds. Range-checked like
/// [`parse_date`].
fn parse_iso(s: &str) -> Option<u64> {
    let s = s.trim();
    let (body, offset) = if let Some(b) = s.strip_suffix(['Z', 'z']) {
        (b, 0)
    } else if s.len() > 6 && matches!(s.as_bytes()[s.len() - 6], b'+' | b'-') {
        // An ASCII sign: a char boundary, so the split below cannot cut a character.
        let (b, o) = s.split_at(s.len() - 6);
        let sign = if o.starts_with('-') { -1 } else { 1 };
        let (h, m) = o[1..].split_once(':')?;
        let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
        if !(0..=14).contains(&h) || !(0..=59).contains(&m) {
            return None;
        }
        (b, sign * (h * 3600 + m * 60))
    } else {
        (s, 0)
    };
    let (date, time) = body.split_once(['T', 't', ' '])?;
    let num = |t: &str| -> Option<i64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) && t.len() <= 4)
            .then(|| t.parse().ok())
            .flatten()
    };
    let d: Vec<i64> = date.split('-').map(num).collect::<Option<_>>()?;
    let time = time.split_once('.').map_or(time, |(whole, frac)| {
        if frac.bytes().all(|b| b.is_ascii_digit()) {
            whole
        } else {
            ""
        }
    });
    let t: Vec<i64> = time.split(':').map(num).collect::<Option<_>>()?;
    let (&[y, mo, day], &[h, mi, sec]) = (d.as_slice(), t.as_slice()) else {
        return None;
    };
    let in_range = (1970..=9999).contains(&y)
        && (1..=12).contains(&mo)
        && (1..=31).contains(&day)
        && (0..=23).contains(&h)
        && (0..=59).contains(&mi)
        && (0..=60).contains(&sec);
    if !in_range {
        return None;
    }
    u64::try_from(days_from_civil(y, mo, day) * 86400 + h * 3600 + mi * 60 + sec - offset).ok()
}

/// `MM/DD/YYYY HH:MM:SS [AM|PM] [+HH:MM]` (the legacy App Service form) → Unix seconds.
/// Every field is range-checked, so no input can overflow the arithmetic.
fn parse_date(s: &str) -> Option<u64> {
    let mut parts = s.split_whitespace();
    let fields = |text: &str, sep: char| -> Option<Vec<i64>> {
        text.split(sep).map(|p| p.parse().ok()).collect()
    };
    let date = fields(parts.next()?, '/')?;
    let time = fields(parts.next()?, ':')?;
    let rest: Vec<&str> = parts.collect();
    let &[mo, d, y] = date.as_slice() else {
        return None;
    };
    let (hour, min, sec) = match *time.as_slice() {
        [h, m] => (h, m, 0),
        [h, m, s] => (h, m, s),
        _ => return None,
    };
    let hour = match rest.first().map(|w| w.to_ascii_uppercase()).as_deref() {
        Some("AM") if (0..=12).contains(&hour) => hour % 12,
        Some("PM") if (0..=12).contains(&hour) => hour % 12 + 12,
        Some("AM" | "PM") => return None,
        _ => hour,
    };
    let in_range = (1970..=9999).contains(&y)
        && (1..=12).contains(&mo)
        && (1..=31).contains(&d)
        && (0..=23).contains(&hour)
        && (0..=59).contains(&min)
        && (0..=60).contains(&sec);
    if !in_range {
        return None;
    }
    let offset = match rest.last().filter(|o| o.starts_with(['+', '-'])) {
        Some(o) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (h, m) = o[1..].split_once(':').unwrap_or((&o[1..], "0"));
            let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
            if !(0..=14).contains(&h) || !(0..=59).contains(&m) {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
        None => 0,
    };
    let days = days_from_civil(y, mo, d);
    u64::try_from(days * 86400 + hour * 3600 + min * 60 + sec - offset).ok()
}

/// The claims of a JWT-shaped token (no signature check: only for naming the identity).
fn jwt_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&crate::base::encoding::base64url_decode(payload)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(body: &str) -> Result<Token, Error> {
        parse_token(body, "the identity")
    }

    #[test]
    fn a_tokens_debug_names_its_expiry_and_owner_never_itself() {
        let t = token(r#"{"access_token":"a.eyJvaWQiOiJvLTcifQ.Sg9x","expires_on":"1700000000"}"#)
            .unwrap();
        let shown = format!("{t:?}");
        assert!(
            shown.contains("expires_on: 1700000000") && shown.contains("o-7"),
            "{shown}"
        );
        assert!(!shown.contains("Sg9x") && !shown.contains("eyJ"), "{shown}");
        assert!(t.same_as(&t.clone()));
        let other =
            token(r#"{"access_token":"a.eyJvaWQiOiJvLTcifQ.Sg9y","expires_on":"1700000000"}"#)
                .unwrap();
        assert!(!t.same_as(&other), "the same claims but another token");
    }

    #[test]
    fn who_names_the_object_id_else_the_client_id() {
        // {"oid":"o-7","appid":"c-8"}, {"appid":"c-8"}, {}
        let both =
            token(r#"{"access_token":"a.eyJvaWQiOiJvLTciLCJhcHBpZCI6ImMtOCJ9.s","expires_in":60}"#)
                .unwrap();
        let client =
            token(r#"{"access_token":"a.eyJhcHBpZCI6ImMtOCJ9.s","expires_in":60}"#).unwrap();
        let none = token(r#"{"access_token":"a.e30.s","expires_in":60}"#).unwrap();
        assert_eq!(both.who(), "object id o-7");
        assert_eq!(client.who(), "client id c-8");
        assert_eq!(none.who(), "unknown object id");
    }

    #[test]
    fn now_is_the_clock_and_expires_in_counts_from_it() {
        let before = now();
        assert!(before > 1_700_000_000, "{before}");
        let t = token(r#"{"access_token":"x","expires_in":"3600"}"#).unwrap();
        assert!(
            (before + 3600..=now() + 3600).contains(&t.expires_on),
            "{}",
            t.expires_on
        );
    }

    #[test]
    fn the_token_size_limit_is_32_kib_exactly() {
        let answer =
            |n: usize| format!(r#"{{"access_token":"{}","expires_in":60}}"#, "t".repeat(n));
        assert!(token(&answer(32 * 1024)).is_ok());
        let e = token(&answer(32 * 1024 + 1)).unwrap_err().to_string();
        assert!(
            e.contains("larger than 32 KiB") && e.contains("the identity"),
            "{e}"
        );
    }

    #[test]
    fn a_lifetime_is_kept_only_between_0_and_10_years() {
        let lifetime = |v: &str| {
            token(&format!(r#"{{"access_token":"x","expires_in":{v}}}"#))
                .unwrap()
                .lifetime
        };
        let ten_years = 10 * 365 * 86400;
        assert_eq!(lifetime("1"), Some(1));
        assert_eq!(lifetime(&(ten_years - 1).to_string()), Some(ten_years - 1));
        assert_eq!(lifetime(&ten_years.to_string()), None);
        let t = token(r#"{"access_token":"x","expires_in":0,"expires_on":1700000000}"#).unwrap();
        assert_eq!((t.lifetime, t.expires_on), (None, 1_700_000_000));
    }

    #[test]
    fn numbers_as_floats_are_whole_non_negative_and_bounded() {
        use serde_json::json;
        assert_eq!(number(&json!(1_700_000_000.75)), Some(1_700_000_000));
        assert_eq!(
            number(&json!(999_999_999_999_999.0)),
            Some(999_999_999_999_999)
        );
        assert_eq!(number(&json!(1e15)), None);
        assert_eq!(number(&json!(-1.0)), None);
        assert_eq!(number(&json!(-0.5)), None);
        assert_eq!(number(&json!("1700000000.5")), Some(1_700_000_000));
        assert_eq!(number(&json!("17a")), None);
    }

    #[test]
    fn iso_dates_take_only_digit_fields_of_up_to_4_digits() {
        assert_eq!(parse_iso("2026-11-28T15:13:34Z"), Some(1_795_878_814));
        assert_eq!(parse_iso("2026-11-28T16:13:34+01:00"), Some(1_795_878_814));
        assert_eq!(
            parse_iso("2026-11-28T15:13:34.123456Z"),
            Some(1_795_878_814)
        );
        assert_eq!(
            parse_iso("2026-+1-28T15:13:34Z"),
            None,
            "a sign is not a digit"
        );
        assert_eq!(parse_iso("2026-00011-28T15:13:34Z"), None, "5 digits");
        assert_eq!(parse_iso("2026--28T15:13:34Z"), None, "an empty field");
        assert_eq!(parse_iso("2026-11-28T15:13:34+ü0:00"), None);
    }

    #[test]
    fn days_from_civil_counts_every_day_like_a_calendar() {
        // A day-by-day count from 1970 through 2104 (leap years, 2000, and the skipped 2100).
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let mut days = 0;
        for y in 1970..2105 {
            for m in 1..=12 {
                let len = match m {
                    2 if leap(y) => 29,
                    2 => 28,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                };
                for d in 1..=len {
                    assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
                    days += 1;
                }
            }
        }
    }

    #[test]
    fn token_answers_with_string_numbers_and_dates() {
        let t = parse_token(r#"{"access_token":"a.eyJvaWQiOiJ4In0.c","expires_on":"1506484173","expires_in":"3599"}"#, "x").unwrap();
        assert_eq!(
            (t.expires_on, t.object_id.as_deref()),
            (1_506_484_173, Some("x"))
        );
        let t = parse_token(r#"{"access_token":"abc","expires_on":1506484173}"#, "x").unwrap();
        assert_eq!(t.expires_on, 1_506_484_173);
        let t = parse_token(
            r#"{"access_token":"abc","expires_on":"05/22/2021 17:14:33 +00:00"}"#,
            "x",
        )
        .unwrap();
        assert_eq!(t.expires_on, 1_621_703_673);
        let t = parse_token(
            r#"{"access_token":"abc","expires_on":"09/14/2017 00:00:00 PM +00:00"}"#,
            "x",
        )
        .unwrap();
        assert_eq!(t.expires_on, 1_505_390_400);
        assert_eq!(
            parse_date("09/14/2017 12:00:00 AM +00:00"),
            Some(1_505_347_200)
        );
        assert_eq!(
            parse_date("09/14/2017 12:00:00 PM +00:00"),
            Some(1_505_390_400)
        );
        assert_eq!(
            parse_date("09/14/2017 01:00:00 PM -01:30"),
            Some(1_505_399_400)
        );
        for bad in [
            "13/14/2017 00:00:00",
            "09/14/99999999999999 00:00:00",
            "09/14/2017 24:00:00",
            "09/14/2017 13:00:00 PM",
            "09/14/2017 13:00:00 AM",
            "09/14/2017 00:00:00 +99:00",
            "09/14 00:00:00",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        // ISO 8601 forms, fractional epochs, and both AM/PM ways.
        for (text, want) in [
            ("2017-09-14T12:00:00Z", 1_505_390_400),
            ("2017-09-14 12:00:00", 1_505_390_400),
            ("2017-09-14T12:00:00.1234567+00:00", 1_505_390_400),
            ("2017-09-14T13:30:00+01:30", 1_505_390_400),
            ("2017-09-14T10:00:00-02:00", 1_505_390_400),
            ("1505390400.75", 1_505_390_400),
            ("09/14/2017 12:00:00 PM +00:00", 1_505_390_400),
            ("9/14/2017 12:00:00 pm +00:00", 1_505_390_400),
            ("09/14/2017 12:00:00 +00:00", 1_505_390_400),
            ("09/14/2017 12:00 PM +00:00", 1_505_390_400),
        ] {
            assert_eq!(
                number_or_date(&Value::String(text.into())),
                Some(want),
                "{text}"
            );
        }
        for bad in [
            "2017-13-14T12:00:00Z",
            "2017-09-14T25:00:00Z",
            "2017-09-14T12:00:00+15:00",
            "99999-09-14T12:00:00Z",
            "2017-09-14",
            "1e400",
            "NaN",
            "-5",
            "1.2.3",
            "12.",
            "2017-09-14T1\u{e9}0000",
            "2017-09-14T12:00:00\u{e9}:00",
            "\u{e9}\u{e9}\u{e9}\u{e9}",
        ] {
            assert_eq!(number_or_date(&Value::String(bad.into())), None, "{bad}");
        }
        for bad in [r"a\nb", "a b", r"\u00e9", r"a\u0000"] {
            let body = format!(r#"{{"access_token":"{bad}","expires_in":"60"}}"#);
            assert!(parse_token(&body, "x").is_err(), "{bad}");
        }
        let long = format!(
            r#"{{"access_token":"{}","expires_in":"60"}}"#,
            "a".repeat(40_000)
        );
        assert!(parse_token(&long, "x").is_err());
        let huge = format!(r#"{{"access_token":"abc","expires_in":"{}"}}"#, u64::MAX);
        assert!(parse_token(&huge, "x").is_err(), "no overflow");
        let t = parse_token(r#"{"access_token":"abc","expires_in":"60"}"#, "x").unwrap();
        assert!(t.expires_on >= now() + 59);
        assert!(parse_token(r#"{"access_token":""}"#, "x").is_err());
        assert!(!format!("{t:?}").contains("abc"));
    }
}
