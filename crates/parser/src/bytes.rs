//! Byte searches and comparisons eight bytes at a time (SWAR), for the short strings events are
//! made of, where a call to `memcmp` or `memchr` costs more than the work.

pub(crate) const ONES: u64 = 0x0101_0101_0101_0101;
pub(crate) const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether `b[i..]` starts with `key`; the constant size lets the comparison be inlined.
#[inline(always)]
pub(crate) fn is<const N: usize>(b: &[u8], i: usize, key: &[u8; N]) -> bool {
    match b.get(i..i + N) {
        Some(s) => s == key,
        None => false,
    }
}

/// Byte equality in 8-byte words, inlined: the values compared (operations, statuses) are
/// a dozen bytes, where a call to `memcmp` costs more than the comparison.
#[inline(always)]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |s: &[u8], i: usize| {
        s.get(i..i + 8)
            .and_then(|w| w.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    let n = a.len();
    if n < 8 {
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    let mut i = 0;
    while i + 8 < n {
        if word(a, i) != word(b, i) {
            return false;
        }
        i += 8;
    }
    // The last word overlaps the previous one rather than comparing a tail byte by byte.
    word(a, n - 8) == word(b, n - 8)
}

/// The position of the first `byte` in `s`, eight bytes at a time: a topic's job id is a few
/// dozen bytes, where a byte loop costs several times more and a `memchr` call's setup as much.
#[inline(always)]
pub(crate) fn find_byte(s: &[u8], byte: u8) -> Option<usize> {
    let mut chunks = s.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let w = chunk.try_into().map_or(0, u64::from_le_bytes) ^ (ONES * u64::from(byte));
        // Borrows can flag bytes above the first match, never below it: the lowest is exact.
        let hits = w.wrapping_sub(ONES) & !w & HIGHS;
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == byte)
        .map(|k| at + k)
}

/// The position of the last `byte` in `s`, eight bytes at a time from the end (a thing name
/// is the part of its ARN after the last `/`).
#[inline(always)]
pub(crate) fn rfind_byte(s: &[u8], byte: u8) -> Option<usize> {
    let mut chunks = s.rchunks_exact(8);
    let mut end = s.len();
    for chunk in &mut chunks {
        end -= 8;
        let w = chunk.try_into().map_or(0, u64::from_le_bytes) ^ (ONES * u64::from(byte));
        // Exact per byte (no borrow crosses bytes), unlike `find_byte`'s test whose false
        // hits lie above a true one, exactly where a search from the end looks first.
        let nonzero = ((w & !HIGHS).wrapping_add(!HIGHS) | w) & HIGHS;
        let hits = !nonzero & HIGHS;
        if hits != 0 {
            return Some(end + 7 - (hits.leading_zeros() / 8) as usize);
        }
    }
    chunks.remainder().iter().rposition(|&c| c == byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_searches_agree_with_byte_loops_at_every_length_and_position() {
        // `.` is `/` with the lowest bit flipped and `0` is `/` + 1: the bytes a borrow
        // between neighbours could misreport; high bytes test the sign handling.
        let fillers: [&[u8]; 4] = [b"a", b".", b"0", "é".as_bytes()];
        for len in 0..40 {
            for filler in fillers {
                let base: Vec<u8> = filler.iter().copied().cycle().take(len).collect();
                let mut cases = vec![base.clone()];
                for i in 0..len {
                    for j in i..len {
                        let mut s = base.clone();
                        s[i] = b'/';
                        s[j] = b'/';
                        cases.push(s);
                    }
                }
                for s in cases {
                    assert_eq!(
                        find_byte(&s, b'/'),
                        s.iter().position(|&c| c == b'/'),
                        "{s:?}"
                    );
                    assert_eq!(
                        rfind_byte(&s, b'/'),
                        s.iter().rposition(|&c| c == b'/'),
                        "{s:?}"
                    );
                }
            }
        }
    }
}
