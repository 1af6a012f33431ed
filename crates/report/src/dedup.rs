//! Counting an event once per `eventId`: AWS delivers at least once, so copies of an event can
//! sit in any file of its partition.

use std::path::{Path, PathBuf};

use crate::hash::FastSet;
use crate::scan::partitioned_by_date;

/// The event ids that can still have copies ahead: those of the current date partition when
/// every file is in one (files come sorted, so a partition's files are read together), all of
/// them otherwise.
pub(crate) struct Dedup {
    by_partition: bool,
    partition: Option<PathBuf>,
    seen: Seen,
}

impl Dedup {
    pub(crate) fn new(files: &[PathBuf]) -> Self {
        Dedup {
            by_partition: partitioned_by_date(files),
            partition: None,
            seen: Seen::default(),
        }
    }

    /// The set for the file at `path`.
    pub(crate) fn scope(&mut self, path: &Path) -> &mut Seen {
        if self.by_partition && self.partition.as_deref() != path.parent() {
            self.partition = path.parent().map(Path::to_owned);
            self.seen = Seen::default();
        }
        &mut self.seen
    }
}

/// Event ids seen so far. AWS ids are UUIDs, kept as 16 bytes each.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    uuids: FastSet<u128>,
    other: FastSet<Box<str>>,
}

impl Seen {
    /// True the first time `id` is offered.
    pub(crate) fn first(&mut self, id: &str) -> bool {
        match uuid_bits(id) {
            Some(bits) => self.uuids.insert(bits),
            None => !self.other.contains(id) && self.other.insert(id.into()),
        }
    }
}

/// A canonical lower-case UUID as 128 bits; other ids stay strings.
///
/// Eight hex digits at a time in a `u64` (SWAR): one id per event makes this a tenth of the
/// report's time when done a character at a time.
fn uuid_bits(id: &str) -> Option<u128> {
    let b: &[u8; 36] = id.as_bytes().try_into().ok()?;
    if b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let word = |at: usize| -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let halves = |first: usize, second: usize| -> u64 {
        let mut w = [0u8; 8];
        w[..4].copy_from_slice(&b[first..first + 4]);
        w[4..].copy_from_slice(&b[second..second + 4]);
        u64::from_le_bytes(w)
    };
    // The groups are 8-4-4-4-12 digits: 0..8, 9..13 + 14..18, 19..23 + 24..28, 28..36.
    let words = [word(0), halves(9, 14), halves(19, 24), word(28)];
    let mut v: u128 = 0;
    for w in words {
        v = (v << 32) | u128::from(hex_word(w)?);
    }
    Some(v)
}

/// Eight lower-case hex digits (the first in the lowest byte) as a number, or `None` if any
/// byte is not one of `0-9a-f`.
fn hex_word(w: u64) -> Option<u32> {
    const LOW: u64 = 0x0f0f_0f0f_0f0f_0f0f;
    const ONES: u64 = 0x0101_0101_0101_0101;
    // '0'..'9' are 0x30..0x39 and 'a'..'f' 0x61..0x66: the low nibble, plus 9 for letters
    // (bit 6 set). Each byte stays below 25, so no byte carries into the next.
    let nibbles = (w & LOW) + ((w >> 6) & ONES) * 9;
    // A hex digit gives a nibble (below 16) that spells it back: anything else fails one.
    let over_15 = (nibbles + 0x7070_7070_7070_7070) & 0x8080_8080_8080_8080;
    let letters = ((nibbles + 0x7676_7676_7676_7676) >> 7) & ONES;
    if over_15 != 0 || nibbles + 0x3030_3030_3030_3030 + letters * 0x27 != w {
        return None;
    }
    // Pairs of nibbles into bytes (the first digit is the high nibble), then bytes in order.
    let bytes = ((nibbles & 0x000f_000f_000f_000f) << 4) | ((nibbles >> 8) & 0x000f_000f_000f_000f);
    let byte = |k: u32| ((bytes >> (16 * k)) & 0xff) as u32;
    Some((byte(0) << 24) | (byte(1) << 16) | (byte(2) << 8) | byte(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The character-at-a-time reading `uuid_bits` replaced, as the reference.
    fn uuid_bits_by_characters(id: &str) -> Option<u128> {
        let b = id.as_bytes();
        if b.len() != 36 {
            return None;
        }
        let mut v: u128 = 0;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return None;
                }
                continue;
            }
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            v = (v << 4) | u128::from(d);
        }
        Some(v)
    }

    #[test]
    fn uuids_read_eight_digits_at_a_time_agree_with_reading_one_at_a_time() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let hex = b"0123456789abcdef";
        let mut checked = 0;
        for _ in 0..20_000 {
            let mut id: Vec<u8> = (0..36)
                .map(|i| {
                    if matches!(i, 8 | 13 | 18 | 23) {
                        b'-'
                    } else {
                        hex[rng.random_range(0..16)]
                    }
                })
                .collect();
            // Most ids get one byte replaced by any value: every position, every byte.
            if rng.random_bool(0.7) {
                let at = rng.random_range(0..36);
                id[at] = rng.random();
            }
            if let Ok(id) = std::str::from_utf8(&id) {
                assert_eq!(uuid_bits(id), uuid_bits_by_characters(id), "{id}");
                checked += 1;
            }
        }
        assert!(checked > 10_000, "{checked}");
        for id in [
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "00000000-0000-0000-0000-000000000000",
            "0123456789abcdef0123456789abcdef0123",
            "01234567-89ab-cdef-0123-456789abcde",
            "01234567-89ab-cdef-0123-456789abcdefg",
            "01234567-89ab-cdef-0123-456789abcdeg",
            "01234567-89ab-cdef-0123-456789abcde/",
            "01234567-89ab-cdef-0123-456789abcde:",
            "01234567-89ab-cdef-0123-456789abcde`",
            "01234567-89ab-cdef-0123-456789abcdeG",
            "01234567-89ab-cdef-0123-456789abcdeF",
        ] {
            assert_eq!(uuid_bits(id), uuid_bits_by_characters(id), "{id}");
        }
        assert_eq!(
            uuid_bits("01234567-89ab-cdef-0123-456789abcdef"),
            Some(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)
        );
    }

    #[test]
    fn uuids_pack_and_other_ids_do_not() {
        assert_eq!(uuid_bits("00000000-0000-0000-0000-0000000000ff"), Some(255));
        assert_eq!(uuid_bits("00000000-0000-0000-0000-0000000000FF"), None);
        assert_eq!(uuid_bits("not-a-uuid"), None);
        let mut seen = Seen::default();
        assert!(seen.first("a"));
        assert!(!seen.first("a"));
        assert!(seen.first("00000000-0000-0000-0000-0000000000ff"));
        assert!(!seen.first("00000000-0000-0000-0000-0000000000ff"));
    }

    #[test]
    fn duplicates_are_tracked_per_date_partition_only_when_every_file_has_one() {
        let day = |d: &str| PathBuf::from(format!("t/date={d}/f.parquet"));
        let files = [day("2026-11-01"), day("2026-11-02")];
        let mut dedup = Dedup::new(&files);
        assert!(dedup.scope(&files[0]).first("x"));
        assert!(!dedup.scope(&files[0]).first("x"));
        assert!(
            dedup.scope(&files[1]).first("x"),
            "a new partition starts afresh"
        );
        let mixed = [day("2026-11-01"), PathBuf::from("t/other/f.parquet")];
        let mut dedup = Dedup::new(&mixed);
        assert!(dedup.scope(&mixed[0]).first("x"));
        assert!(
            !dedup.scope(&mixed[1]).first("x"),
            "one set when not all are partitioned"
        );
    }
}
