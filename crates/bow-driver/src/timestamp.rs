//! RFC 3339 UTC timestamps with microseconds (`2026-11-22T00:00:00.123456Z`), without a date crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Formats a time as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds).
pub fn format_rfc3339_micros(time: SystemTime) -> String {
    let micros: i128 = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_micros() as i128,
        Err(before) => -(before.duration().as_micros() as i128),
    };
    let seconds = micros.div_euclid(1_000_000) as i64;
    let fraction = micros.rem_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:06}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (UTC only; up to 9 fraction digits).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !text.is_ascii() {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = &text[range];
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let separators_ok = bytes[4] == b'-'
        && bytes[7] == b'-'
        && (bytes[10] == b'T' || bytes[10] == b't')
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !separators_ok {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let rest = &text[19..];
    let (fraction, zone) = match rest.strip_prefix('.') {
        Some(after_dot) => {
            let digits = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 9 {
                return None;
            }
            (&after_dot[..digits], &after_dot[digits..])
        }
        None => ("", rest),
    };
    if zone != "Z" && zone != "z" {
        return None;
    }
    let nanos: u32 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().ok()?
    };
    let days = days_from_civil(year, month as u32, day as u32);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    let since_epoch = Duration::new(u64::try_from(seconds).ok()?, nanos);
    UNIX_EPOCH.checked_add(since_epoch)
}

/// Milliseconds since the Unix epoch, for state files.
pub fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) to days since 1970-01-01; Howard Hinnant's `days_from_civil`.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(
            format_rfc3339_micros(UNIX_EPOCH),
            "1970-01-01T00:00:00.000000Z"
        );
        let time = UNIX_EPOCH + Duration::new(1_795_305_600, 123_456_789);
        assert_eq!(format_rfc3339_micros(time), "2026-11-22T00:00:00.123456Z");
        let leap_day = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661);
        assert_eq!(
            format_rfc3339_micros(leap_day),
            "2000-02-29T01:01:01.000000Z"
        );
    }

    #[test]
    fn parse_inverts_format() {
        for seconds in [0u64, 59, 86_399, 951_782_400, 1_795_305_600, 4_102_444_800] {
            let time = UNIX_EPOCH + Duration::new(seconds, 654_321_000);
            assert_eq!(parse_rfc3339(&format_rfc3339_micros(time)), Some(time));
        }
    }

    #[test]
    fn parse_accepts_other_precisions() {
        let expected = UNIX_EPOCH + Duration::from_secs(1_795_305_600);
        assert_eq!(parse_rfc3339("2026-11-22T00:00:00Z"), Some(expected));
        assert_eq!(
            parse_rfc3339("2026-11-22T00:00:00.5Z"),
            Some(expected + Duration::from_millis(500))
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T00:00:00.000000001Z"),
            Some(expected + Duration::from_nanos(1))
        );
    }

    #[test]
    fn parse_rejects_malformed_text() {
        for bad in [
            "",
            "2026-11-22",
            "2026-11-22 00:00:00Z",
            "2026-13-22T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T00:00:00+01:00",
            "2026-11-22T00:00:00.Z",
            "2026-11-22T00:00:00.1234567890Z",
            "1969-12-31T23:59:59Z",
            "2026-1a-22T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }
}
