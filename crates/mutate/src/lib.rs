//! Mutations for fuzzing AWS IoT Jobs payloads, shared by the parser's differential test and the
//! integration fuzzer, so both explore the same space.
//!
//! Each call applies one to four mutations: flip a bit, insert a byte, delete a stretch, put a
//! JSON fragment in (inserted, or over a token-sized stretch), splice another seed's tail on,
//! truncate, swap a value for another, or nest brackets thousands deep. Fragments are the
//! values that trip parsers: huge and negative numbers, lone surrogates, escapes, invalid
//! UTF-8, wrong types in known fields, undocumented statuses.

use rand::rngs::SmallRng;
use rand::Rng;

/// JSON fragments and bytes that trip parsers.
pub const FRAGMENTS: &[&[u8]] = &[
    b"null",
    b"true",
    b"-1",
    b"0",
    b"01",
    b"1.5",
    b"1e309",
    b"18446744073709551616",
    b"\"\\ud800\"",
    b"\"\\u0000\"",
    b"\"\\ud83d\\ude00\"",
    b"\"\\\"\"",
    b"\"\x01\"",
    b"[]",
    b"{}",
    b"[\"a\",\"b\"]",
    b"{\"a\":\"b\"}",
    b"\"eventType\":\"JOB\"",
    b"\"status\":",
    b"\"targets\":[1]",
    b"\"statusDetails\":{\"a\":1}",
    b"\"jobProcessDetails\":{\"numberOfFailedThings\":-3}",
    b"\"jobProcessDetails\":{\"numberOfFailedThings\":3}",
    b"\xff\xfe",
    b"\xc3\xa9",
    b"\"timestamp\":1e3",
    b",\"x\":",
    b"\\",
    b"\\n",
    b"\\u00e9",
    b"\"",
    b"}",
    b"]",
    b":",
    b",",
    b" ",
    b"\n",
    b"-9223372036854775809",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    b"\"statusDetails\":{\"n\":120,\"b\":true,\"o\":{\"x\":[1,\"\\u00e9\"]}}",
    b"\"status\":\"SUCCEEDED\"",
    b"\"status\":\"PAUSED\"",
    b"\"description\":7",
];

/// Mutates `input` in place, one to four times; `seeds` are (topic, payload) pairs to splice
/// from.
pub fn mutate(rng: &mut SmallRng, seeds: &[(String, Vec<u8>)], input: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=4) {
        let len = input.len();
        match rng.random_range(0..10) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let i = rng.random_range(0..=len);
                input.insert(i, rng.random());
            }
            2 if len > 0 => {
                let start = rng.random_range(0..len);
                let end = (start + rng.random_range(1..16)).min(len);
                input.drain(start..end);
            }
            3 => {
                let fragment = FRAGMENTS[rng.random_range(0..FRAGMENTS.len())];
                let i = rng.random_range(0..=len);
                input.splice(i..i, fragment.iter().copied());
            }
            4 | 5 => {
                // Replace a token-sized stretch with a fragment: often still JSON.
                let fragment = FRAGMENTS[rng.random_range(0..FRAGMENTS.len())];
                let i = rng.random_range(0..=len);
                let end = (i + rng.random_range(0..12)).min(len);
                input.splice(i..end, fragment.iter().copied());
            }
            6 if !seeds.is_empty() => {
                let other = &seeds[rng.random_range(0..seeds.len())].1;
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..=other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            7 if len > 0 => input.truncate(rng.random_range(0..len)),
            8 => {
                let depth = rng.random_range(1..5000);
                let i = rng.random_range(0..=len);
                let nested: Vec<u8> = std::iter::repeat_n(b'[', depth)
                    .chain(std::iter::repeat_n(b']', depth))
                    .collect();
                input.splice(i..i, nested);
            }
            _ => {
                // Swap the stretch between the first ':' and the last ',' for a short string.
                if let (Some(a), Some(b)) = (
                    input.iter().position(|&c| c == b':'),
                    input.iter().rposition(|&c| c == b','),
                ) {
                    if a < b && rng.random_bool(0.5) {
                        input.drain(a + 1..b);
                        input.splice(a + 1..a + 1, b"\"v\"".iter().copied());
                    }
                }
            }
        }
    }
}
