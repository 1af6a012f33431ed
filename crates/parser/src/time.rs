//! Times: AWS sends `timestamp` in epoch seconds and the `…At` fields in milliseconds; every
//! time becomes milliseconds by one rule, on both paths.

/// Epoch values below this are seconds, at or above it milliseconds.
///
/// AWS sends `timestamp` in seconds and the `…At` fields in milliseconds. 10^11 seconds is the
/// year 5138 and 10^11 milliseconds is March 1973, before AWS IoT existed, so the two ranges
/// cannot be confused for any real event, and a relay that already converted to ms still works.
pub const SECONDS_BELOW: i64 = 100_000_000_000;

/// The largest millisecond value accepted (year 9999), so every time fits Parquet readers.
pub(crate) const MAX_EPOCH_MS: i64 = 253_402_300_799_999;

/// An epoch time in seconds or milliseconds (see [`SECONDS_BELOW`]) as milliseconds, if it
/// lies between 1970 and 9999.
#[inline]
pub(crate) fn epoch_ms(n: i64) -> Option<i64> {
    let ms = if n < SECONDS_BELOW {
        n.checked_mul(1000)?
    } else {
        n
    };
    (0..=MAX_EPOCH_MS).contains(&ms).then_some(ms)
}
