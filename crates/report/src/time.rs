//! Times as people write them: the window's flags in, ISO 8601 and durations out. All UTC.

use jobstream_sink::time::{civil_from_days, parse_date};

const DAY_MS: i64 = 86_400_000;

/// A time that is not one of the accepted spellings; the message says which are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} {problem}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]Z (UTC)")]
pub struct TimeError {
    text: String,
    problem: &'static str,
}

/// Ms since the epoch of `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS]Z` (a space for the `T`, and
/// `+00:00` for the `Z`, are taken too).
///
/// # Errors
/// Any other spelling, an impossible date or time of day, and any offset but UTC.
pub fn parse_time(text: &str) -> Result<i64, TimeError> {
    let fail = |problem| TimeError {
        text: text.to_owned(),
        problem,
    };
    let (date, time) = match text.split_once(['T', ' ']) {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let days = parse_date(date).ok_or_else(|| fail("is not a date"))?;
    let mut ms = days * DAY_MS;
    if let Some(time) = time {
        let time = time
            .strip_suffix('Z')
            .or_else(|| time.strip_suffix("+00:00"))
            .unwrap_or(time);
        if time.contains(['+', '-']) {
            return Err(fail("has an offset: only UTC times are accepted"));
        }
        let parts: Vec<&str> = time.split(':').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(fail("has a bad time of day"));
        }
        let field = |i: usize, max: i64| -> Result<i64, TimeError> {
            match parts.get(i) {
                None => Ok(0),
                Some(p) => match p.parse::<i64>() {
                    Ok(v) if (0..=max).contains(&v) && p.len() == 2 => Ok(v),
                    _ => Err(fail("has a bad time of day")),
                },
            }
        };
        ms += field(0, 23)? * 3_600_000 + field(1, 59)? * 60_000 + field(2, 59)? * 1000;
    }
    Ok(ms)
}

/// `2026-11-20T00:00:00.000Z` of ms since the epoch.
pub(crate) fn iso(ms: i64) -> String {
    let (y, mo, d) = civil_from_days(ms.div_euclid(DAY_MS));
    let rest = ms.rem_euclid(DAY_MS);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    )
}

/// `2026-11-20 00:00:00Z`, for tables read by people.
pub(crate) fn short_time(ms: i64) -> String {
    let full = iso(ms);
    format!("{} {}Z", &full[..10], &full[11..19])
}

/// `1h 02m 03s`: the two largest units, or seconds to a tenth below a minute.
pub(crate) fn human_duration(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{sign}{d}d {h:02}h {m:02}m")
    } else if h > 0 {
        format!("{sign}{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{sign}{m}m {s:02}s")
    } else {
        format!("{sign}{s}.{}s", ms % 1000 / 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_utc_and_refuse_offsets() {
        assert_eq!(parse_time("1970-01-02"), Ok(86_400_000));
        assert_eq!(parse_time("1970-01-01T01:02:03Z"), Ok(3_723_000));
        assert_eq!(parse_time("1970-01-01 01:02"), Ok(3_720_000));
        assert_eq!(parse_time("1970-01-01T00:00:01+00:00"), Ok(1000));
        let offset = parse_time("1970-01-01T01:00+02:00")
            .expect_err("an offset")
            .to_string();
        assert!(offset.contains("only UTC"), "{offset}");
        assert!(parse_time("1970-01-01T25:00").is_err());
        let word = parse_time("yesterday").expect_err("a word").to_string();
        assert!(word.contains("YYYY-MM-DD"), "{word}");
    }

    #[test]
    fn times_and_durations_read_as_people_write_them() {
        assert_eq!(iso(1_795_132_800_123), "2026-11-20T00:00:00.123Z");
        assert_eq!(short_time(1_795_132_800_123), "2026-11-20 00:00:00Z");
        assert_eq!(human_duration(3_723_000), "1h 02m 03s");
        assert_eq!(human_duration(90_061_000), "1d 01h 01m");
        assert_eq!(human_duration(1_500), "1.5s");
    }
}
