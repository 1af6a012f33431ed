//! Where the fast path's strings live: a [`Span`] of the payload or of the decoded buffer.

/// Where a string's text lives: `start..end` in the payload, or (when it had escapes, flagged
/// by the top bit of `end`) in the decoded buffer. Eight bytes, so spans travel in registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

/// The flag bit in [`Span::end`]; [`scan`] refuses payloads this large, so no offset has it.
pub(crate) const DECODED: u32 = 1 << 31;

impl Span {
    #[inline]
    pub(crate) fn payload(start: usize, end: usize) -> Self {
        // Offsets fit: `scan` gives up on payloads of 2 GiB or more.
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    #[inline]
    pub(crate) fn decoded(start: usize, end: usize) -> Option<Self> {
        let span = Span::payload(start, end);
        (span.end < DECODED).then_some(Span {
            start: span.start,
            end: span.end | DECODED,
        })
    }

    /// The text. The bounds always lie on ASCII quotes or at ends of pushed text, so `get`
    /// never fails; the empty fallback only keeps this function free of panics.
    #[inline]
    pub(crate) fn get<'i>(self, payload: &'i str, decoded: &'i str) -> &'i str {
        let (text, end) = if self.end & DECODED == 0 {
            (payload, self.end)
        } else {
            (decoded, self.end & !DECODED)
        };
        text.get(self.start as usize..end as usize)
            .unwrap_or_default()
    }
}
