//! JSON read where it lies, as far as the reader needs it: the scanner under [`crate::page`]
//! (a posts page) and [`crate::ws`] (a server frame and the post inside it).
//!
//! A value is read token by token where the reader wants something from it, and skipped
//! otherwise: a string by looking for its closing quote (eight bytes at a time in a word for a
//! short one, by masks of 64 bytes for a long one), an object or array whole by [`walk`], 64
//! bytes at a time: quotes, backslashes and brackets are found as bit masks (AVX2, with
//! PCLMULQDQ for the prefix XOR, where the processor has both, checked at run time; SSE2, which
//! every x86-64 processor has, otherwise; a plain loop on other processors), escaped quotes are
//! dropped, a prefix XOR of the quotes marks the bytes inside strings, and the brackets outside
//! them are counted. What is checked of a skipped container is its structure (its strings are
//! closed, its brackets balance); a bad token inside it is not looked for. Strings that are read
//! are read as strict JSON strings, borrowed unless they have escapes to undo.

use std::borrow::Cow;
use std::fmt;

/// Containers nested deeper than this are refused (no chat message nests more than a few
/// levels; a text that does is not one).
pub(crate) const MAX_DEPTH: usize = 512;

/// Why a text could not be read: what was wrong and at which byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    pub at: usize,
    pub what: String,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

impl std::error::Error for JsonError {}

pub(crate) type Result<T> = std::result::Result<T, JsonError>;

/// A JSON string as it lies in the text: its bytes between the quotes, escapes not undone.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Str<'a> {
    pub(crate) raw: &'a [u8],
    /// Where it starts in the page.
    pub(crate) at: usize,
    /// Whether it has a backslash (an escape) in it.
    pub(crate) escaped: bool,
}

impl<'a> Str<'a> {
    /// Its value, escapes undone (borrowed from the text when it has none).
    pub(crate) fn text(&self) -> Result<Cow<'a, str>> {
        if !self.escaped {
            return std::str::from_utf8(self.raw)
                .map(Cow::Borrowed)
                .map_err(|_| self.not_utf8());
        }
        let mut v = Vec::with_capacity(self.raw.len());
        self.unescape_into(&mut v)?;
        String::from_utf8(v)
            .map(Cow::Owned)
            .map_err(|_| self.not_utf8())
    }

    fn not_utf8(&self) -> JsonError {
        JsonError {
            at: self.at,
            what: "a string that is not UTF-8".into(),
        }
    }

    /// Its bytes with the escapes undone, into `out` (cleared first). Not checked for UTF-8.
    pub(crate) fn unescape_into(&self, out: &mut Vec<u8>) -> Result<()> {
        let raw = self.raw;
        // `at` is the escape's backslash in `raw`; the string's bytes start one past its quote.
        let bad = |at: usize| JsonError {
            at: self.at + 1 + at,
            what: "a bad escape".into(),
        };
        let hex4 = |at: usize| -> Option<u32> {
            let h = std::str::from_utf8(raw.get(at..at + 4)?).ok()?;
            u32::from_str_radix(h, 16)
                .ok()
                .filter(|_| h.bytes().all(|c| c.is_ascii_hexdigit()))
        };
        out.clear();
        out.reserve(raw.len());
        // `i` is the next byte to copy; the backslashes are found 64 bytes at a time.
        let mut i = 0;
        let mut base = 0;
        while base < raw.len() {
            let mut backslashes = Masks::of(&raw[base..]).backslash;
            while backslashes != 0 {
                let at = base + backslashes.trailing_zeros() as usize;
                backslashes &= backslashes - 1;
                if at < i {
                    // Part of the escape before (the second backslash of `\\`).
                    continue;
                }
                out.extend_from_slice(&raw[i..at]);
                let byte = match raw.get(at + 1) {
                    Some(b'"') => b'"',
                    Some(b'\\') => b'\\',
                    Some(b'/') => b'/',
                    Some(b'b') => 8,
                    Some(b'f') => 12,
                    Some(b'n') => b'\n',
                    Some(b'r') => b'\r',
                    Some(b't') => b'\t',
                    Some(b'u') => {
                        let cp = hex4(at + 2).ok_or_else(|| bad(at))?;
                        i = at + 6;
                        let ch = if (0xD800..0xDC00).contains(&cp) {
                            // A high surrogate: its low half must follow as an escape of its own.
                            let low = (raw.get(i..i + 2) == Some(&b"\\u"[..]))
                                .then(|| hex4(i + 2))
                                .flatten()
                                .filter(|lo| (0xDC00..0xE000).contains(lo));
                            low.and_then(|lo| {
                                i += 6;
                                char::from_u32(0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00))
                            })
                        } else {
                            // A lone low surrogate is no character.
                            char::from_u32(cp)
                        };
                        let ch = ch.ok_or_else(|| bad(at))?;
                        out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                        continue;
                    }
                    _ => return Err(bad(at)),
                };
                out.push(byte);
                i = at + 2;
            }
            base += 64;
        }
        out.extend_from_slice(&raw[i..]);
        Ok(())
    }

    /// Whether two strings have the same value (ids are compared as they lie unless one of them
    /// has an escape).
    pub(crate) fn same(&self, other: &Str) -> bool {
        // Ids differ mostly in their last bytes: look there before comparing all of them.
        if self.raw.len() == other.raw.len()
            && self.raw.last() == other.raw.last()
            && self.raw == other.raw
        {
            return true;
        }
        (self.escaped || other.escaped)
            && matches!((self.text(), other.text()), (Ok(a), Ok(b)) if a == b)
    }
}

pub(crate) struct Scan<'a> {
    pub(crate) b: &'a [u8],
    pub(crate) i: usize,
}

impl<'a> Scan<'a> {
    pub(crate) fn err<T>(&self, what: impl Into<String>) -> Result<T> {
        Err(JsonError {
            at: self.i,
            what: what.into(),
        })
    }

    pub(crate) fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    pub(crate) fn peek(&mut self) -> Result<u8> {
        self.ws();
        match self.b.get(self.i) {
            Some(c) => Ok(*c),
            None => self.err("the text ends early"),
        }
    }

    pub(crate) fn expect(&mut self, c: u8) -> Result<()> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            self.err(format!("expected {:?}", c as char))
        }
    }

    /// Only white space after the value.
    pub(crate) fn end(&mut self) -> Result<()> {
        self.ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            self.err("bytes after the value")
        }
    }

    /// A string, found 64 bytes at a time (a post's text inside a frame has an escape every
    /// few bytes: looking for the next quote or backslash anew after each was the slow part).
    pub(crate) fn string(&mut self) -> Result<Str<'a>> {
        if self.peek()? != b'"' {
            return self.err("expected a string");
        }
        let start = self.i + 1;
        // Keys and ids end within a few bytes: found eight at a time, where a block's four
        // masks, a byte loop or a call of memchr (its set-up) cost more.
        if let Some(k) = quote_or_backslash(&self.b[start..]) {
            if self.b[start + k] == b'"' {
                self.i = start + k + 1;
                return Ok(Str {
                    raw: &self.b[start..start + k],
                    at: start - 1,
                    escaped: false,
                });
            }
        }
        let mut escaped_any = false;
        let mut carry = false;
        let mut base = start;
        while base < self.b.len() {
            let m = Masks::of(&self.b[base..]);
            let carried = carry;
            let esc = if m.backslash == 0 && !carry {
                0
            } else {
                escaped(m.backslash, &mut carry)
            };
            let quotes = m.quote & !esc;
            if quotes != 0 {
                let k = quotes.trailing_zeros();
                let end = base + k as usize;
                escaped_any |= carried || m.backslash & ((1u64 << k) - 1) != 0;
                self.i = end + 1;
                return Ok(Str {
                    raw: &self.b[start..end],
                    at: start - 1,
                    escaped: escaped_any,
                });
            }
            escaped_any |= carried || m.backslash != 0;
            base += 64;
        }
        self.i = self.b.len();
        self.err("a string that is not closed")
    }

    /// `{ "key": value, ... }`, calling `each` at every value with its key.
    pub(crate) fn object(
        &mut self,
        mut each: impl FnMut(&mut Self, Str<'a>) -> Result<()>,
    ) -> Result<()> {
        self.list(b'{', b'}', "an object", |s| {
            let key = s.string()?;
            s.expect(b':')?;
            each(s, key)
        })
    }

    /// `[ value, ... ]`, calling `each` at every value.
    pub(crate) fn array(&mut self, each: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        self.list(b'[', b']', "an array", each)
    }

    /// `open` items separated by commas `close`, calling `each` at every item.
    fn list(
        &mut self,
        open: u8,
        close: u8,
        what: &str,
        mut each: impl FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        self.expect(open)?;
        if self.peek()? == close {
            self.i += 1;
            return Ok(());
        }
        loop {
            each(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                c if c == close => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err(format!("expected ',' or '{}' in {what}", close as char)),
            }
        }
    }

    /// A string's value, or `None` for `null`.
    pub(crate) fn text_or_null(&mut self) -> Result<Option<Cow<'a, str>>> {
        if self.peek()? == b'n' {
            return self.skip_value().map(|()| None);
        }
        self.string()?.text().map(Some)
    }

    /// A whole number that fits a `u64`, or `None` for `null`.
    pub(crate) fn u64_or_null(&mut self) -> Result<Option<u64>> {
        self.whole_or_null()
    }

    /// A whole number that fits an `i64`, or `None` for `null`.
    pub(crate) fn i64_or_null(&mut self) -> Result<Option<i64>> {
        self.whole_or_null()
    }

    fn whole_or_null<T: std::str::FromStr>(&mut self) -> Result<Option<T>> {
        if self.peek()? == b'n' {
            return self.skip_value().map(|()| None);
        }
        let start = self.i;
        while let Some(b'0'..=b'9' | b'-') = self.b.get(self.i) {
            self.i += 1;
        }
        let whole = !matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E' | b'+'));
        match std::str::from_utf8(&self.b[start..self.i])
            .ok()
            .filter(|_| whole)
            .and_then(|t| t.parse().ok())
        {
            Some(n) => Ok(Some(n)),
            None => {
                self.i = start;
                self.err("expected a whole number")
            }
        }
    }

    pub(crate) fn skip_value(&mut self) -> Result<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => match skip_container(self.b, self.i) {
                Some(end) => {
                    self.i = end;
                    Ok(())
                }
                None => self.err("an object or array that is not closed"),
            },
            _ => {
                let start = self.i;
                while let Some(b'0'..=b'9' | b'a'..=b'z' | b'+' | b'-' | b'.' | b'E') =
                    self.b.get(self.i)
                {
                    self.i += 1;
                }
                let word = &self.b[start..self.i];
                let number = word
                    .first()
                    .is_some_and(|c| c.is_ascii_digit() || *c == b'-');
                if matches!(word, b"true" | b"false" | b"null") || number {
                    Ok(())
                } else {
                    self.i = start;
                    self.err("expected a value")
                }
            }
        }
    }
}

/// Where the first quote or backslash is among the first 32 bytes of `b`, if there is one:
/// eight bytes at a time, each word's matching bytes found by the borrow of a subtraction (the
/// lowest byte found is exact, which is the one wanted).
fn quote_or_backslash(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut words = b.chunks_exact(8);
    for (k, w) in words.by_ref().take(4).enumerate() {
        let x = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        let hit = zero(x ^ (ONES * u64::from(b'"'))) | zero(x ^ (ONES * u64::from(b'\\')));
        if hit != 0 {
            return Some(8 * k + hit.trailing_zeros() as usize / 8);
        }
    }
    if b.len() >= 32 {
        return None;
    }
    let rest = b.len() - b.len() % 8;
    b[rest..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|k| rest + k)
}

/// Where [`walk`] stopped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Walk {
    /// The container closed: one past its closing bracket.
    Closed(usize),
    /// `stop` came first: the nesting depth there and whether it is inside a string.
    At { depth: usize, in_string: bool },
    /// The bytes ended first, or the nesting went deeper than [`MAX_DEPTH`].
    Unclosed,
}

/// The end (one past its closing bracket) of the object or array opening at `b[start]`, or
/// `None` if it is not closed (or nests deeper than [`MAX_DEPTH`]). Strings are followed, with
/// their escapes, so brackets inside them do not count.
pub(crate) fn skip_container(b: &[u8], start: usize) -> Option<usize> {
    match walk(b, start, usize::MAX) {
        Walk::Closed(end) => Some(end),
        _ => None,
    }
}

/// Follows the object or array opening at `b[start]` to its end, or to `stop` if that comes
/// first. 32 bytes at a time where the processor has AVX2 and PCLMULQDQ (most x86-64 made since
/// 2013, checked once per process), 16 otherwise: one build runs on any x86-64 and uses what it
/// finds.
pub(crate) fn walk(b: &[u8], start: usize, stop: usize) -> Walk {
    #[cfg(target_arch = "x86_64")]
    if wide::available() {
        // SAFETY: `walk_wide` needs AVX2 and PCLMULQDQ beyond x86-64 itself, and the processor
        // has both: `wide::available` asked it just now.
        #[allow(unsafe_code)]
        return unsafe { walk_wide(b, start, stop) };
    }
    walk_narrow(b, start, stop)
}

/// [`walk`]'s body, made once with each way of finding a block's masks: `$masks` (the masks of
/// up to 64 bytes, [`Masks::of`]'s contract) and `$prefix_xor` ([`prefix_xor`]'s).
macro_rules! walker {
    ($(#[$attr:meta])* $name:ident, $masks:path, $prefix_xor:path) => {
        $(#[$attr])*
        fn $name(b: &[u8], start: usize, stop: usize) -> Walk {
            let mut depth = 0usize;
            // All ones while inside a string at the end of the last block.
            let mut in_string = 0u64;
            // The first byte of the next block is escaped by a backslash ending this one.
            let mut escape_carry = false;
            let mut base = start;
            while base < b.len() {
                let m = $masks(&b[base..]);
                let escaped = if m.backslash == 0 && !escape_carry {
                    0
                } else {
                    escaped(m.backslash, &mut escape_carry)
                };
                let quotes = m.quote & !escaped;
                let carried = in_string != 0;
                let inside = $prefix_xor(quotes) ^ in_string;
                in_string = ((inside as i64) >> 63) as u64;
                // Only the bytes before `stop`.
                let before = match stop.checked_sub(base) {
                    Some(n) if n < 64 => (1u64 << n) - 1,
                    Some(_) => u64::MAX,
                    None => 0,
                };
                let open = m.open & !inside & before;
                let close = m.close & !inside & before;
                let mut both = open | close;
                while both != 0 {
                    let bit = both & both.wrapping_neg();
                    if open & bit != 0 {
                        depth += 1;
                    } else {
                        depth -= 1;
                        if depth == 0 {
                            return Walk::Closed(base + bit.trailing_zeros() as usize + 1);
                        }
                    }
                    both &= both - 1;
                }
                if before != u64::MAX {
                    // `stop` is in this block: inside a string there if the byte before it is.
                    let n = stop - base;
                    let in_string = match n {
                        0 => carried,
                        n => inside & (1u64 << (n - 1)) != 0,
                    };
                    return Walk::At { depth, in_string };
                }
                if depth > MAX_DEPTH {
                    return Walk::Unclosed;
                }
                base += 64;
            }
            Walk::Unclosed
        }
    };
}

walker!(
    /// [`walk`] with 16-byte vectors (SSE2, part of x86-64 itself) or, on other processors, a
    /// byte at a time.
    walk_narrow,
    Masks::of,
    prefix_xor
);

#[cfg(target_arch = "x86_64")]
walker!(
    /// [`walk`] with 32-byte vectors, the quotes' prefix XOR one carry-less multiplication.
    #[target_feature(enable = "avx2,pclmulqdq")]
    walk_wide,
    wide::masks,
    wide::prefix_xor
);

/// What [`walk_wide`] runs on: AVX2 for the masks, PCLMULQDQ for the prefix XOR.
#[cfg(target_arch = "x86_64")]
mod wide {
    use super::Masks;
    use std::arch::x86_64::*;

    /// Whether this processor has both (std asks it once and keeps the answer).
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }

    /// [`Masks::of`], 32 bytes at a time.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn masks(b: &[u8]) -> Masks {
        let mut pad = [0; 64];
        let block = super::block_of(b, &mut pad);
        let (lo, hi) = block.split_at(32);
        let blank = [b' '; 32];
        let lo = half(lo.try_into().unwrap_or(&blank));
        let hi = half(hi.try_into().unwrap_or(&blank));
        // '[' and ']' are '{' and '}' without 0x20.
        let fold = _mm256_set1_epi8(0x20);
        let (flo, fhi) = (_mm256_or_si256(lo, fold), _mm256_or_si256(hi, fold));
        Masks {
            quote: eq(lo, b'"') | eq(hi, b'"') << 32,
            backslash: eq(lo, b'\\') | eq(hi, b'\\') << 32,
            open: eq(flo, b'{') | eq(fhi, b'{') << 32,
            close: eq(flo, b'}') | eq(fhi, b'}') << 32,
        }
    }

    /// Thirty-two bytes in order (compiled to one unaligned load).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn half(c: &[u8; 32]) -> __m256i {
        let i = |n: usize| c[n] as i8;
        #[rustfmt::skip]
        let v = _mm256_setr_epi8(
            i(0), i(1), i(2), i(3), i(4), i(5), i(6), i(7),
            i(8), i(9), i(10), i(11), i(12), i(13), i(14), i(15),
            i(16), i(17), i(18), i(19), i(20), i(21), i(22), i(23),
            i(24), i(25), i(26), i(27), i(28), i(29), i(30), i(31),
        );
        v
    }

    /// Which of the 32 bytes equal `c`, one bit per byte.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn eq(v: __m256i, c: u8) -> u64 {
        u64::from(_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(c as i8))) as u32)
    }

    /// [`super::prefix_xor`]: `x` times all ones, carry-less, is the XOR of every prefix.
    #[inline]
    #[target_feature(enable = "pclmulqdq")]
    pub(super) fn prefix_xor(x: u64) -> u64 {
        let all_ones = _mm_set1_epi8(-1);
        _mm_cvtsi128_si64(_mm_clmulepi64_si128(
            _mm_set_epi64x(0, x as i64),
            all_ones,
            0,
        )) as u64
    }
}

/// The first 64 bytes of `b`, or all of it padded with spaces (none of the bytes the masks
/// look for) in `pad` when it is shorter: what both ways of making [`Masks`] read.
fn block_of<'a>(b: &'a [u8], pad: &'a mut [u8; 64]) -> &'a [u8; 64] {
    match b.first_chunk::<64>() {
        Some(block) => block,
        None => {
            pad.fill(b' ');
            pad[..b.len()].copy_from_slice(b);
            pad
        }
    }
}

/// Which of up to 64 bytes are a quote, a backslash, an opening or a closing bracket (bit `i`
/// for byte `i`; bytes past the end are none of them).
#[derive(Debug, Default, PartialEq, Eq)]
struct Masks {
    quote: u64,
    backslash: u64,
    open: u64,
    close: u64,
}

impl Masks {
    fn of(b: &[u8]) -> Masks {
        let mut pad = [0; 64];
        Masks::block(block_of(b, &mut pad))
    }

    #[cfg(target_arch = "x86_64")]
    fn block(b: &[u8; 64]) -> Masks {
        // SAFETY: SSE2 is part of x86-64 itself (every x86-64 processor has it and the target
        // enables it), so a function that needs only SSE2 runs on any machine this one runs on.
        #[allow(unsafe_code)]
        unsafe {
            Masks::block_sse2(b)
        }
    }

    /// Sixteen bytes at a time: compare with each byte wanted, one bit per byte.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse2")]
    fn block_sse2(b: &[u8; 64]) -> Masks {
        use std::arch::x86_64::*;
        let eq = |v: __m128i, c: u8| -> u64 {
            u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8))) as u16)
        };
        let mut m = Masks::default();
        for (k, c) in b.chunks_exact(16).enumerate() {
            let i = |n: usize| c[n] as i8;
            // Sixteen bytes in order (compiled to one unaligned load).
            #[rustfmt::skip]
            let v = _mm_set_epi8(
                i(15), i(14), i(13), i(12), i(11), i(10), i(9), i(8),
                i(7), i(6), i(5), i(4), i(3), i(2), i(1), i(0),
            );
            let s = 16 * k;
            m.quote |= eq(v, b'"') << s;
            m.backslash |= eq(v, b'\\') << s;
            // '[' and ']' are '{' and '}' without 0x20.
            let folded = _mm_or_si128(v, _mm_set1_epi8(0x20));
            m.open |= eq(folded, b'{') << s;
            m.close |= eq(folded, b'}') << s;
        }
        m
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn block(b: &[u8; 64]) -> Masks {
        Masks::block_plain(b)
    }

    /// A byte at a time: what other processors run, and what the tests hold the vector
    /// version to.
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    fn block_plain(b: &[u8; 64]) -> Masks {
        let mut m = Masks::default();
        for (i, c) in b.iter().enumerate() {
            let bit = 1u64 << i;
            match c {
                b'"' => m.quote |= bit,
                b'\\' => m.backslash |= bit,
                b'{' | b'[' => m.open |= bit,
                b'}' | b']' => m.close |= bit,
                _ => {}
            }
        }
        m
    }
}

/// The bytes escaped by a backslash: each backslash that is not itself escaped escapes the byte
/// after it. `carry` is whether the first byte is escaped (from the last block) and becomes
/// whether the next block's first byte is.
fn escaped(backslash: u64, carry: &mut bool) -> u64 {
    let mut escaped = *carry as u64;
    *carry = false;
    let mut bs = backslash;
    while bs != 0 {
        let bit = bs & bs.wrapping_neg();
        if escaped & bit == 0 {
            if bit == 1 << 63 {
                *carry = true;
            } else {
                escaped |= bit << 1;
            }
        }
        bs &= bs - 1;
    }
    escaped
}

/// Bit `i` set when an odd number of the bits `0..=i` of `x` are.
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn the_vector_masks_are_the_plain_ones() {
        let mut rng = ChaCha8Rng::seed_from_u64(64);
        let bytes = b"\"\\{}[]az \x7b\x5b\x7d\x5d\xfb\xdb\xdd\x80\x00\x22\x5c";
        for _ in 0..2000 {
            let block: [u8; 64] = std::array::from_fn(|_| bytes[rng.gen_range(0..bytes.len())]);
            assert_eq!(
                Masks::block(&block),
                Masks::block_plain(&block),
                "{block:?}"
            );
        }
    }

    #[test]
    fn a_quote_or_backslash_is_found_where_a_byte_loop_finds_it() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let bytes = b"\"\\az\x22\x5c\xa2\xdc\x21\x5b\x00\xff";
        for _ in 0..20_000 {
            let len = rng.gen_range(0..48);
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    // Mostly plain bytes, so that a hit falls anywhere in the first 32.
                    if rng.gen_bool(0.9) {
                        b'a' + rng.gen_range(0..26)
                    } else {
                        bytes[rng.gen_range(0..bytes.len())]
                    }
                })
                .collect();
            let want = text.iter().take(32).position(|&c| c == b'"' || c == b'\\');
            assert_eq!(quote_or_backslash(&text), want, "{text:?}");
        }
    }

    /// Random text over the bytes that matter to a walk, and more of the ones that do not (so
    /// that containers nest and run across blocks).
    fn random_text(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
        let bytes = b"\"\\{}[]\"{}abcdefghijklmnopqrstuvwxyz :,\xfb\xdb";
        (0..len)
            .map(|_| bytes[rng.gen_range(0..bytes.len())])
            .collect()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_wide_masks_and_walk_are_the_narrow_ones() {
        if !wide::available() {
            eprintln!("this processor has no AVX2 or PCLMULQDQ: the wide walk is never taken here");
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(32);
        for _ in 0..2000 {
            // Whole blocks and the short ones a text ends with.
            let len = rng.gen_range(1..=64);
            let text = random_text(&mut rng, len);
            let x = rng.gen::<u64>();
            // SAFETY (this block and the two below): the processor has AVX2 and PCLMULQDQ,
            // checked at the start of the test.
            #[allow(unsafe_code)]
            let m = unsafe { wide::masks(&text) };
            assert_eq!(m, Masks::of(&text), "{text:?}");
            #[allow(unsafe_code)]
            let px = unsafe { wide::prefix_xor(x) };
            assert_eq!(px, prefix_xor(x), "{x:#x}");
        }
        // Containers that close, nest, hold strings with escapes, and stop part way.
        let mut seen = [0; 3];
        for _ in 0..3000 {
            let mut text = vec![b'{'];
            let len = rng.gen_range(0..400);
            text.extend(random_text(&mut rng, len));
            let stop = if rng.gen_bool(0.5) {
                usize::MAX
            } else {
                rng.gen_range(0..=text.len())
            };
            #[allow(unsafe_code)]
            let got = unsafe { walk_wide(&text, 0, stop) };
            assert_eq!(got, walk_narrow(&text, 0, stop), "stop {stop}: {text:?}");
            seen[match got {
                Walk::Closed(end) if end > 64 => 0,
                Walk::At { .. } => 1,
                _ => 2,
            }] += 1;
        }
        // Every way a walk ends, and closes past the first block, came up.
        assert!(seen.iter().all(|&n| n > 100), "{seen:?}");
    }
}
