//! Calendar arithmetic for the dates the identity endpoints write: Entra's timestamps, the
//! legacy App Service `expires_on` and certificate validity dates. UTC only.

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as i32, month as u8, day as u8)
}

/// A UTC date and time: year, month, day, hour, minute, second.
struct Utc {
    year: i32,
    month: u8,
    day: u8,
    hour: u64,
    minute: u64,
    second: u64,
}

fn utc(unix: u64) -> Utc {
    let (year, month, day) = civil_from_days((unix / 86_400) as i64);
    let secs = unix % 86_400;
    Utc {
        year,
        month,
        day,
        hour: secs / 3_600,
        minute: secs / 60 % 60,
        second: secs % 60,
    }
}

/// Entra's `timestamp` field and `Timestamp:` line: `2022-10-27 23:39:22Z`.
pub fn entra_timestamp(unix: u64) -> String {
    let t = utc(unix);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// The ISO form with seven fractional digits Entra writes inside messages:
/// `2024-10-02T22:05:03.0000000Z`.
pub fn entra_iso(unix: u64) -> String {
    let t = utc(unix);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.0000000Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// The legacy App Service (`2017-09-01`) `expires_on`: `09/14/2017 01:05:09 PM +00:00`
/// (zero-padded month and day, a 12-hour clock with AM/PM, UTC).
pub fn legacy_expires_on(unix: u64) -> String {
    let t = utc(unix);
    let (hour12, half) = match t.hour {
        0 => (12, "AM"),
        h @ 1..=11 => (h, "AM"),
        12 => (12, "PM"),
        h => (h - 12, "PM"),
    };
    format!(
        "{:02}/{:02}/{:04} {:02}:{:02}:{:02} {half} +00:00",
        t.month, t.day, t.year, hour12, t.minute, t.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn formats() {
        // 2024-02-29 00:05:09 UTC, then 12:00:00 and 13:07:01 the same day.
        let midnight = 19_782 * 86_400;
        assert_eq!(entra_timestamp(midnight + 309), "2024-02-29 00:05:09Z");
        assert_eq!(entra_iso(midnight + 309), "2024-02-29T00:05:09.0000000Z");
        assert_eq!(
            legacy_expires_on(midnight + 309),
            "02/29/2024 12:05:09 AM +00:00"
        );
        assert_eq!(
            legacy_expires_on(midnight + 3_600 + 1),
            "02/29/2024 01:00:01 AM +00:00"
        );
        assert_eq!(
            legacy_expires_on(midnight + 12 * 3_600),
            "02/29/2024 12:00:00 PM +00:00"
        );
        assert_eq!(
            legacy_expires_on(midnight + 13 * 3_600 + 421),
            "02/29/2024 01:07:01 PM +00:00"
        );
        assert_eq!(legacy_expires_on(0), "01/01/1970 12:00:00 AM +00:00");
    }
}
