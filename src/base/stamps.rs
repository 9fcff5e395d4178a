//! What kvfetch stamps things with, in one place: calendar dates of Unix days (a token's
//! expiry read from a date, the names of the atomic layout's generations) and random version-4
//! UUIDs (each request's `x-ms-client-request-id`). std has neither; a crate for each would be
//! larger than the twenty lines they take.

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A random (version 4) UUID for `x-ms-client-request-id`.
pub fn request_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // No randomness to be had: an id that is at least unique within this process.
        let n = crate::base::retry::random_unit().to_bits();
        b[..8].copy_from_slice(&n.to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = crate::base::encoding::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Every day from year -10,000 to 10,000 has one date, and that date names that day.
        #[test]
        fn days_and_dates_are_inverse(days in -4_371_588i64..2_932_897) {
            let (y, m, d) = civil_from_days(days);
            proptest::prop_assert!((1..=12).contains(&m) && (1..=31).contains(&d), "{y}-{m}-{d}");
            proptest::prop_assert_eq!(days_from_civil(y, i64::from(m), i64::from(d)), days);
        }

        /// The next day is the next date: the day of the month goes up by one, or the month
        /// (or the year) turns over on its first day.
        #[test]
        fn consecutive_days_are_consecutive_dates(days in -4_371_588i64..2_932_897) {
            let (y0, m0, d0) = civil_from_days(days);
            let (y1, m1, d1) = civil_from_days(days + 1);
            let same_month = (y1, m1, d1) == (y0, m0, d0 + 1);
            let new_month = d1 == 1 && ((y1 == y0 && m1 == m0 + 1) || (y1 == y0 + 1 && m0 == 12 && m1 == 1));
            proptest::prop_assert!(same_month || new_month, "{y0}-{m0}-{d0} then {y1}-{m1}-{d1}");
        }
    }

    #[test]
    fn known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 2, 29), 11_016);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
