//! Calendar helpers: event time (ms since the epoch, UTC) → the `date=YYYY-MM-DD` partition.

/// Days since 1970-01-01 of a millisecond timestamp (UTC).
pub fn epoch_day(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// (year, month, day) of a day number since 1970-01-01, proleptic Gregorian.
///
/// The era arithmetic follows the well-known days-from-civil inverse: shift the epoch to
/// 0000-03-01 so leap days fall at the end of a 400-year era.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `YYYY-MM-DD` of a day number since 1970-01-01.
pub fn date_string(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Day number of a `YYYY-MM-DD` string, `None` if it is not one.
pub fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (date_string(days) == text).then_some(days)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_convert_both_ways() {
        assert_eq!(date_string(0), "1970-01-01");
        assert_eq!(date_string(epoch_day(1_234_567_890_000)), "2009-02-13");
        assert_eq!(date_string(epoch_day(951_782_400_000)), "2000-02-29");
        assert_eq!(date_string(epoch_day(253_402_300_799_999)), "9999-12-31");
        for days in [-1, 0, 59, 60, 10_957, 11_016, 20_000, 2_932_896] {
            assert_eq!(parse_date(&date_string(days)), Some(days));
        }
        assert_eq!(parse_date("2023-02-30"), None);
        assert_eq!(parse_date("not-a-date"), None);
    }
}
