//! How the configuration structs of the library crates read the values a file writes
//! differently from the Rust type: durations as whole seconds (the `*_secs` keys) and values
//! with a textual form (`zstd:3`, `delta`, `5`) through their `FromStr`. A value that does not
//! parse fails inside the deserializer, so the file's error names the key and the line, like
//! any serde error.

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// A duration written as whole seconds.
///
/// # Errors
/// The value is not a non-negative integer.
pub fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_secs)
}

/// A duration written as whole seconds, for settings whose absence means "never".
///
/// # Errors
/// The value is not a non-negative integer.
pub fn some_seconds<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    seconds(deserializer).map(Some)
}

/// A value written as text and parsed by its `FromStr`, whose error is the message.
///
/// # Errors
/// The text does not parse.
pub fn parsed<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(D::Error::custom)
}

/// Like [`parsed`], the message starting with the setting's name as users write it
/// (`parquet.encodings: unknown encodings "rle": …`): the type's own message is shared with
/// flags that are not that setting.
///
/// # Errors
/// The text does not parse.
pub fn parsed_as<'de, D, T>(setting: &str, deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse()
        .map_err(|e| D::Error::custom(format!("{setting}: {e}")))
}

/// A setting that must be at least 1, checked by the configs' `validate`.
///
/// # Errors
/// [`crate::SinkError::Config`] naming `setting` when `value` is 0.
pub fn at_least_one(setting: &'static str, value: u64) -> Result<(), crate::SinkError> {
    if value == 0 {
        Err(crate::SinkError::Config {
            setting,
            value: "0".into(),
            reason: "must be at least 1".into(),
        })
    } else {
        Ok(())
    }
}
