//! The fast path: one pass over the caller's payload for well-formed events of the known schema.
//!
//! Why a second path: simd-json's two stages build a tape of every value and unescape every
//! string before validation can look at one, which on a ~330-byte event costs more than the
//! whole of what the schema needs. Here field dispatch follows the schema (each key is read
//! once and matched against the fields of the topic's family), values AWS spells as constants
//! (`eventType`, `operation`, `status`) are compared in place, strings are borrowed from the
//! payload itself (no padded copy; only strings with escapes are decoded, into one reused
//! buffer), and UTF-8 is validated once for the whole payload.
//!
//! Contract: [`scan`] either accepts, with exactly the values the general simd-json path
//! ([`crate::parse`]) would produce, or gives up (`None`) and the caller runs the general
//! path, which therefore decides every reject, its kind and its message. It gives up on
//! anything it does not handle fully: unknown fields (the `extra` column), duplicate keys,
//! escaped keys, non-integer or negative numbers, surrogate escapes, control characters in
//! strings, any JSON or validation error. The differential test in
//! `crates/parser/tests/differential.rs` runs both paths on generated, mutated and garbage
//! inputs and checks they agree.

use crate::bytes::{is, same, HIGHS, ONES};
use crate::model::{ExecutionOperation, ExecutionStatus, Family, JobStatus, ProcessDetails};
use crate::span::{Span, DECODED};
use crate::time::epoch_ms;
use crate::topic::{Operation, TopicInfo};

/// Scratch memory reused across messages: decoded strings and list/map spans.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub(crate) decoded: String,
    pub(crate) targets: Vec<Span>,
    pub(crate) details: Vec<(Span, Span)>,
    pub(crate) found: Found,
}

impl Default for Found {
    fn default() -> Self {
        Found {
            event_id: Span::default(),
            event_time_ms: 0,
            job_id: Span::default(),
            operation: Operation::Job(crate::model::JobOperation::Completed),
            job_status: JobStatus::Completed,
            execution_status: ExecutionStatus::Queued,
            target_selection: None,
            targets: false,
            description: None,
            comment: None,
            created_at_ms: None,
            last_updated_at_ms: None,
            completed_at_ms: None,
            process_details: None,
            thing_arn: None,
            status_details: false,
        }
    }
}

/// Values of an accepted event; strings as spans into the payload or [`Scratch::decoded`].
/// Kept in [`Scratch`] and filled in place: it is a few hundred bytes, worth not copying.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Found {
    pub(crate) event_id: Span,
    pub(crate) event_time_ms: i64,
    pub(crate) job_id: Span,
    pub(crate) operation: Operation,
    pub(crate) job_status: JobStatus,
    pub(crate) execution_status: ExecutionStatus,
    pub(crate) target_selection: Option<Span>,
    /// Whether `targets` was present (its items are in [`Scratch::targets`]).
    pub(crate) targets: bool,
    pub(crate) description: Option<Span>,
    pub(crate) comment: Option<Span>,
    pub(crate) created_at_ms: Option<i64>,
    pub(crate) last_updated_at_ms: Option<i64>,
    pub(crate) completed_at_ms: Option<i64>,
    pub(crate) process_details: Option<ProcessDetails>,
    pub(crate) thing_arn: Option<Span>,
    /// Whether `statusDetails` was present (its entries are in [`Scratch::details`]).
    pub(crate) status_details: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    EventType,
    EventId,
    Timestamp,
    Operation,
    JobId,
    Status,
    TargetSelection,
    Targets,
    Description,
    Comment,
    CreatedAt,
    LastUpdatedAt,
    CompletedAt,
    JobProcessDetails,
    ThingArn,
    StatusDetails,
}

/// The known field whose key (with its closing quote) starts at `b[i..]`, and its length;
/// `None` for any other key (then `extra` would be needed, which only the general path
/// writes), including escaped spellings of known keys.
///
/// Dispatch on the first byte, then one fixed-size comparison per candidate: no scan for the
/// closing quote, no string match over every key.
#[inline]
fn field(family: Family, b: &[u8], i: usize) -> Option<(Field, usize)> {
    let job = family == Family::Job;
    macro_rules! key {
        ($key:literal, $field:ident) => {
            if is(b, i, $key) {
                return Some((Field::$field, $key.len()));
            }
        };
    }
    match *b.get(i)? {
        b'e' => {
            key!(b"eventId\"", EventId);
            key!(b"eventType\"", EventType);
        }
        b't' => {
            key!(b"timestamp\"", Timestamp);
            if job {
                key!(b"targets\"", Targets);
                key!(b"targetSelection\"", TargetSelection);
            } else {
                key!(b"thingArn\"", ThingArn);
            }
        }
        b'o' => key!(b"operation\"", Operation),
        b'j' => {
            key!(b"jobId\"", JobId);
            if job {
                key!(b"jobProcessDetails\"", JobProcessDetails);
            }
        }
        b's' => {
            key!(b"status\"", Status);
            if !job {
                key!(b"statusDetails\"", StatusDetails);
            }
        }
        b'd' if job => key!(b"description\"", Description),
        b'c' if job => {
            key!(b"comment\"", Comment);
            key!(b"createdAt\"", CreatedAt);
            key!(b"completedAt\"", CompletedAt);
        }
        b'l' if job => key!(b"lastUpdatedAt\"", LastUpdatedAt),
        _ => {}
    }
    None
}

/// Scans one payload; `None` means "use the general path". `text` is the payload as text when
/// the caller already has it so (validated), else it is validated here.
///
/// On success the values are in [`Scratch::found`] and the payload is returned as text.
pub(crate) fn scan<'p>(
    payload: &'p [u8],
    text: Option<&'p str>,
    topic: &TopicInfo<'_>,
    scratch: &mut Scratch,
) -> Option<&'p str> {
    // UTF-8 once for the whole payload (simd-json validates all of it too), with SIMD (the
    // same validator simd-json uses): every span below starts and ends at an ASCII quote, so
    // slicing the validated text needs no re-check.
    if payload.len() >= DECODED as usize {
        return None;
    }
    let text = match text {
        Some(text) => text,
        None => simdutf8::basic::from_utf8(payload).ok()?,
    };
    scratch.decoded.clear();
    scratch.targets.clear();
    scratch.details.clear();
    let mut s = Scanner {
        b: payload,
        text,
        i: 0,
        decoded: &mut scratch.decoded,
    };
    let family = topic.family;
    let mut seen = 0u32;
    let mut event_id = None;
    let mut timestamp = None;
    let mut job_id = None;
    let mut operation_seen = false;
    let mut status = None::<(JobStatus, ExecutionStatus)>;
    let found = &mut scratch.found;
    found.operation = topic.operation;
    found.target_selection = None;
    found.targets = false;
    found.description = None;
    found.comment = None;
    found.created_at_ms = None;
    found.last_updated_at_ms = None;
    found.completed_at_ms = None;
    found.process_details = None;
    found.thing_arn = None;
    found.status_details = false;

    s.ws();
    s.byte(b'{')?;
    s.ws();
    loop {
        s.byte(b'"')?;
        let (field, len) = field(family, s.b, s.i)?;
        s.i += len;
        s.ws();
        s.byte(b':')?;
        s.ws();
        if s.literal(b"null") {
            // null is "absent", exactly as the general path treats it.
        } else {
            let bit = 1u32 << (field as u32);
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            match field {
                Field::EventType => s.constant(family.event_type())?,
                Field::EventId => event_id = Some(s.string()?),
                Field::Timestamp => timestamp = Some(epoch_ms(s.integer()?)?),
                Field::Operation => {
                    s.constant(topic.operation.as_str())?;
                    operation_seen = true;
                }
                Field::JobId => {
                    let span = s.string()?;
                    if !same(
                        span.get(text, s.decoded).as_bytes(),
                        topic.job_id.as_bytes(),
                    ) {
                        return None;
                    }
                    job_id = Some(span);
                }
                Field::Status => status = Some(s.status(topic.operation)?),
                Field::TargetSelection => found.target_selection = Some(s.string()?),
                Field::Targets => {
                    s.string_list(&mut scratch.targets)?;
                    found.targets = true;
                }
                Field::Description => found.description = Some(s.string()?),
                Field::Comment => found.comment = Some(s.string()?),
                Field::CreatedAt => found.created_at_ms = Some(epoch_ms(s.integer()?)?),
                Field::LastUpdatedAt => found.last_updated_at_ms = Some(epoch_ms(s.integer()?)?),
                Field::CompletedAt => found.completed_at_ms = Some(epoch_ms(s.integer()?)?),
                Field::JobProcessDetails => found.process_details = Some(s.counters()?),
                Field::ThingArn => found.thing_arn = Some(s.string()?),
                Field::StatusDetails => {
                    s.string_map(&mut scratch.details)?;
                    found.status_details = true;
                }
            }
        }
        s.ws();
        match s.next()? {
            b',' => s.ws(),
            b'}' => break,
            _ => return None,
        }
    }
    s.ws();
    if s.i != s.b.len() {
        return None;
    }
    // Every required field present (the `eventType` check happened in place).
    if seen & (1 << Field::EventType as u32) == 0 || !operation_seen {
        return None;
    }
    found.event_id = event_id?;
    found.event_time_ms = timestamp?;
    found.job_id = job_id?;
    (found.job_status, found.execution_status) = status?;
    if family == Family::Execution && found.thing_arn.is_none() {
        return None;
    }
    Some(text)
}

/// A mask with the high bit set in the lowest byte of `w` that is `"`, `\` or below 0x20
/// (bytes above the first hit may be flagged falsely; only the lowest one is used).
#[inline]
fn special_bytes(w: u64) -> u64 {
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let zero_quote = quote.wrapping_sub(ONES) & !quote;
    let zero_backslash = backslash.wrapping_sub(ONES) & !backslash;
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    (zero_quote | zero_backslash | control) & HIGHS
}

/// Whether all eight bytes of `w` are ASCII digits.
#[inline(always)]
fn eight_digits(w: u64) -> bool {
    let high = w & 0xF0F0_F0F0_F0F0_F0F0;
    let carried = w.wrapping_add(0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0;
    high | (carried >> 4) == 0x3333_3333_3333_3333
}

/// The value of eight ASCII digits (the first in the lowest byte): pairs, then quads, then
/// the whole, each step one multiply.
#[inline(always)]
fn eight_digit_value(w: u64) -> i64 {
    let pairs = ((w & 0x0F0F_0F0F_0F0F_0F0F).wrapping_mul(2561)) >> 8;
    let quads = ((pairs & 0x00FF_00FF_00FF_00FF).wrapping_mul(6_553_601)) >> 16;
    let all = ((quads & 0x0000_FFFF_0000_FFFF).wrapping_mul(42_949_672_960_001)) >> 32;
    // At most 99,999,999: always fits.
    all as i64
}

struct Scanner<'p, 'd> {
    b: &'p [u8],
    text: &'p str,
    i: usize,
    decoded: &'d mut String,
}

impl Scanner<'_, '_> {
    /// Skips whitespace; compact JSON has none, so one comparison decides the usual case.
    #[inline(always)]
    fn ws(&mut self) {
        match self.b.get(self.i) {
            Some(&c) if c > b' ' => {}
            _ => self.ws_loop(),
        }
    }

    #[inline(never)]
    fn ws_loop(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let c = *self.b.get(self.i)?;
        self.i += 1;
        Some(c)
    }

    #[inline]
    fn byte(&mut self, expected: u8) -> Option<()> {
        (self.next()? == expected).then_some(())
    }

    /// Consumes `word` if the input continues with it.
    #[inline]
    fn literal(&mut self, word: &[u8]) -> bool {
        let end = self.i + word.len();
        if self.b.get(self.i..end) == Some(word) {
            self.i = end;
            true
        } else {
            false
        }
    }

    /// The position of the next `"`, `\` or control byte from `self.i`.
    ///
    /// Sixteen bytes per step, then one word; the last few bytes of the payload are read as
    /// the payload's final word with the bytes already checked shifted out, not one by one.
    #[inline(always)]
    fn find_special(&self) -> Option<usize> {
        let word = |s: &[u8]| s.try_into().map_or(0, u64::from_le_bytes);
        let rest = self.b.get(self.i..)?;
        let mut pairs = rest.chunks_exact(16);
        let mut at = self.i;
        for pair in &mut pairs {
            let low = special_bytes(word(&pair[..8]));
            let high = special_bytes(word(&pair[8..]));
            if low | high != 0 {
                let bits = if low != 0 {
                    low.trailing_zeros()
                } else {
                    64 + high.trailing_zeros()
                };
                return Some(at + (bits / 8) as usize);
            }
            at += 16;
        }
        let mut tail = pairs.remainder();
        if let Some(first) = tail.get(..8) {
            let hits = special_bytes(word(first));
            if hits != 0 {
                return Some(at + (hits.trailing_zeros() / 8) as usize);
            }
            at += 8;
            tail = &tail[8..];
        }
        if tail.is_empty() {
            return None;
        }
        match self.b.len().checked_sub(8) {
            Some(last) => {
                // `at - last` bytes of this word were checked already; shifting them out
                // brings zero bytes in at the top, which read as control bytes, so only hits
                // within the tail count.
                let skip = at - last;
                let hits = special_bytes(word(&self.b[last..]) >> (8 * skip));
                let k = (hits.trailing_zeros() / 8) as usize;
                (k < tail.len()).then_some(at + k)
            }
            None => tail
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .map(|k| at + k),
        }
    }

    /// The bytes of a key up to its closing quote; keys with escapes fall back.
    #[inline]
    fn raw_key(&mut self) -> Option<&[u8]> {
        let start = self.i;
        let end = self.find_special()?;
        if self.b.get(end) != Some(&b'"') {
            return None;
        }
        self.i = end + 1;
        self.b.get(start..end)
    }

    /// A string value that must be exactly `expected` (which has no quotes or escapes).
    #[inline]
    fn constant(&mut self, expected: &str) -> Option<()> {
        let start = self.i + 1;
        let end = start + expected.len();
        if self.b.get(self.i) == Some(&b'"')
            && self
                .b
                .get(start..end)
                .is_some_and(|s| same(s, expected.as_bytes()))
            && self.b.get(end) == Some(&b'"')
        {
            self.i = end + 1;
            Some(())
        } else {
            None
        }
    }

    /// A status value allowed for the topic's operation (the general path's rules).
    fn status(&mut self, operation: Operation) -> Option<(JobStatus, ExecutionStatus)> {
        match operation {
            Operation::Job(op) => {
                let status = op.expected_status();
                self.constant(status.as_str())?;
                Some((status, ExecutionStatus::Queued))
            }
            Operation::Execution(op) => match only_status(op) {
                Some(status) => {
                    self.constant(status.as_str())?;
                    Some((JobStatus::Completed, status))
                }
                None => {
                    for &status in ExecutionStatus::ALL {
                        if op.allows_status(status) && self.constant(status.as_str()).is_some() {
                            return Some((JobStatus::Completed, status));
                        }
                    }
                    None
                }
            },
        }
    }

    /// A string value, borrowed when it has no escapes, decoded otherwise.
    #[inline(always)]
    fn string(&mut self) -> Option<Span> {
        if self.next()? != b'"' {
            return None;
        }
        let start = self.i;
        let end = self.find_special()?;
        if self.b.get(end) == Some(&b'"') {
            self.i = end + 1;
            return Some(Span::payload(start, end));
        }
        self.i = end;
        self.decode(start)
    }

    /// The rest of a string with escapes (`self.i` is at the first `\`), into `decoded`.
    #[cold]
    fn decode(&mut self, start: usize) -> Option<Span> {
        let from = self.decoded.len();
        self.decoded.push_str(self.text.get(start..self.i)?);
        loop {
            match self.next()? {
                b'"' => break,
                b'\\' => {
                    let c = match self.next()? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hex = self.b.get(self.i..self.i + 4)?;
                            let hex = std::str::from_utf8(hex).ok()?;
                            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                                return None;
                            }
                            self.i += 4;
                            // Surrogates (pairs or lone) are left to the general path.
                            char::from_u32(u32::from_str_radix(hex, 16).ok()?)?
                        }
                        _ => return None,
                    };
                    self.decoded.push(c);
                }
                _ => {
                    let run_start = self.i - 1;
                    let run_end = self.find_special()?;
                    if self.b[run_start] < 0x20 {
                        return None;
                    }
                    self.decoded.push_str(self.text.get(run_start..run_end)?);
                    self.i = run_end;
                }
            }
        }
        Span::decoded(from, self.decoded.len())
    }

    /// A non-negative integer in plain form (no sign, fraction, exponent or leading zero) of
    /// at most 18 digits, so it cannot overflow and simd-json reads it as the same `i64`.
    #[inline]
    fn integer(&mut self) -> Option<i64> {
        let start = self.i;
        let mut n: i64 = 0;
        // Eight digits at once (epoch times have 10 or 13), then one at a time.
        if let Some(chunk) = self.b.get(start..start + 8) {
            let w = chunk.try_into().map_or(0, u64::from_le_bytes);
            if eight_digits(w) {
                n = eight_digit_value(w);
                self.i += 8;
            }
        }
        while let Some(&c) = self.b.get(self.i) {
            if !c.is_ascii_digit() {
                break;
            }
            // Wrapping: a value of more than 18 digits is refused below before it is used.
            n = n.wrapping_mul(10).wrapping_add(i64::from(c - b'0'));
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0 || digits > 18 || (digits > 1 && self.b[start] == b'0') {
            return None;
        }
        match self.b.get(self.i) {
            Some(b'.' | b'e' | b'E') => None,
            _ => Some(n),
        }
    }

    fn string_list(&mut self, out: &mut Vec<Span>) -> Option<()> {
        self.byte(b'[')?;
        self.ws();
        if self.literal(b"]") {
            return Some(());
        }
        loop {
            out.push(self.string()?);
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    fn string_map(&mut self, out: &mut Vec<(Span, Span)>) -> Option<()> {
        self.byte(b'{')?;
        self.ws();
        if self.literal(b"}") {
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.ws();
            self.byte(b':')?;
            self.ws();
            let value = self.string()?;
            out.push((key, value));
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    fn counters(&mut self) -> Option<ProcessDetails> {
        let mut details = ProcessDetails::default();
        self.byte(b'{')?;
        self.ws();
        if self.literal(b"}") {
            return Some(details);
        }
        loop {
            self.byte(b'"')?;
            let start = self.i;
            self.raw_key()?;
            let key = self.text.get(start..self.i - 1)?;
            // An unknown counter would need `extra`.
            let slot = details.slot(key)?;
            self.ws();
            self.byte(b':')?;
            self.ws();
            // Repeated keys overwrite and null leaves a counter as it was: the general path's
            // rules, so no duplicate check is needed here.
            if !self.literal(b"null") {
                *slot = Some(self.integer()?);
            }
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b'}' => return Some(details),
                _ => return None,
            }
        }
    }
}

/// The one status a terminal execution operation allows; `None` for `deleted`, which allows
/// any (the unit test below holds this to [`ExecutionOperation::allows_status`]).
#[inline]
fn only_status(op: ExecutionOperation) -> Option<ExecutionStatus> {
    use ExecutionOperation as Op;
    use ExecutionStatus as St;
    Some(match op {
        Op::Succeeded => St::Succeeded,
        Op::Failed => St::Failed,
        Op::Rejected => St::Rejected,
        Op::Canceled => St::Canceled,
        Op::Removed => St::Removed,
        Op::TimedOut => St::TimedOut,
        Op::Deleted => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_status_agrees_with_allows_status() {
        for &op in ExecutionOperation::ALL {
            for &status in ExecutionStatus::ALL {
                let fast = only_status(op).is_none_or(|only| only == status);
                assert_eq!(fast, op.allows_status(status), "{op:?} {status:?}");
            }
        }
    }

    #[test]
    fn eight_digit_words_are_read_exactly() {
        for text in [
            b"00000000",
            b"12345678",
            b"99999999",
            b"17951328",
            b"10000001",
        ] {
            let w = u64::from_le_bytes(*text);
            assert!(eight_digits(w));
            let expected: i64 = std::str::from_utf8(text)
                .expect("ascii")
                .parse()
                .expect("n");
            assert_eq!(eight_digit_value(w), expected);
        }
        for text in [
            b"1234567a",
            b"/2345678",
            b":2345678",
            b"1234 678",
            b"\x002345678",
        ] {
            assert!(!eight_digits(u64::from_le_bytes(*text)), "{text:?}");
        }
    }
}
