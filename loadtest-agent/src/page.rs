//! Decoding a posts page (Mattermost's `PostList`) as far as a user's next actions need it,
//! without decoding the rest.
//!
//! A page is ~14 KB of JSON of which a user keeps a few ids: how many posts there are, the
//! newest [`NEWEST_KEPT`] ids with their thread roots, and the oldest id. Decoded with
//! serde_json (every post skipped as a raw value), it was 40 % of the agent's CPU in the read
//! mix (`perf` under `bench/peers.py --perf`). Libraries that skip JSON fast were measured on a
//! 30-post, 19 KB page on this project's benchmark machine, built for any x86-64 as a release
//! is: serde_json 22 µs, sonic-rs 23, jiter 18, simd-json 19 (its whole tape); they use wide
//! vectors only when built for the machine they run on. This module reads it in 6.5 µs
//! (`cargo run --release -p loadtest-agent --example page_speed` sets it against serde_json).
//!
//! The page's top level and its `order` array are read token by token. Each post is skipped
//! whole by [`walk`], 64 bytes at a time: quotes, backslashes and brackets are found as bit
//! masks (SSE2, which every x86-64 processor has; a plain loop on other processors), escaped
//! quotes are dropped, a prefix XOR of the quotes marks the bytes inside strings, and the
//! brackets outside them are counted. A kept post's own `root_id` key is searched for and
//! confirmed to be at its top level. What is checked of a skipped post is its structure (its
//! strings are closed, its brackets balance), so a cut or garbled page is an error; a bad token
//! inside a post the user does not keep is not looked for. Ids and roots are read as strict
//! JSON strings.

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

use memchr::memmem::Finder;

/// Posts of a page whose ids (and thread roots) a user keeps: the newest ones, to reply to and
/// react on.
pub const NEWEST_KEPT: usize = 8;

/// Containers nested deeper than this inside a post are refused (no Mattermost post nests more
/// than a few levels; a page that does is not one).
const MAX_DEPTH: usize = 512;

/// A page of posts, decoded only as far as a user's next actions need: how many posts it holds,
/// the newest [`NEWEST_KEPT`] ids with their thread roots (newest first) and the oldest id (to
/// page back from). The ids are borrowed from the answer unless they had escapes to undo, so
/// reading a page allocates nothing: a user copies what it keeps into strings it already has.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page<'a> {
    pub len: usize,
    newest: [(Cow<'a, str>, Cow<'a, str>); NEWEST_KEPT],
    kept: usize,
    pub oldest: Option<Cow<'a, str>>,
}

/// Why a page could not be read: what was wrong and at which byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageError {
    pub at: usize,
    pub what: String,
}

impl fmt::Display for PageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

impl std::error::Error for PageError {}

type Result<T> = std::result::Result<T, PageError>;

impl<'a> Page<'a> {
    /// (post id, root id) of the newest posts, newest first; the root is "" for a thread root.
    pub fn newest(&self) -> &[(Cow<'a, str>, Cow<'a, str>)] {
        &self.newest[..self.kept]
    }

    /// Reads a `PostList` answer.
    pub fn parse(b: &'a [u8]) -> Result<Page<'a>> {
        let mut s = Scan { b, i: 0 };
        let mut order: Vec<Str> = Vec::with_capacity(NEWEST_KEPT);
        let mut order_seen = false;
        let mut len = 0;
        let mut oldest = None;
        // The root ids of the kept posts, found in `posts`.
        let mut roots: [Option<Str>; NEWEST_KEPT] = [None; NEWEST_KEPT];
        let mut posts_later = None;
        s.object(|s, key| {
            match key.raw {
                b"order" => {
                    order_seen = true;
                    s.array(|s| {
                        let id = s.string()?;
                        if order.len() < NEWEST_KEPT {
                            order.push(id);
                        }
                        oldest = Some(id);
                        len += 1;
                        Ok(())
                    })?;
                }
                b"posts" if order_seen => s.posts(&order, &mut roots)?,
                // `posts` before `order` (Mattermost and this project's server send `order`
                // first): read once `order` is known.
                b"posts" => {
                    posts_later = Some(s.i);
                    s.skip_value()?;
                }
                _ => s.skip_value()?,
            }
            Ok(())
        })?;
        s.end()?;
        if let Some(at) = posts_later {
            Scan { b, i: at }.posts(&order, &mut roots)?;
        }
        let mut page = Page {
            len,
            kept: order.len(),
            oldest: oldest.map(|o| o.text()).transpose()?,
            ..Page::default()
        };
        for ((id, root), slot) in order.iter().zip(roots).zip(&mut page.newest) {
            let root = root.map(|r| r.text()).transpose()?.unwrap_or_default();
            *slot = (id.text()?, root);
        }
        Ok(page)
    }
}

/// A JSON string as it lies in the page: its bytes between the quotes, escapes not undone.
#[derive(Clone, Copy)]
struct Str<'a> {
    raw: &'a [u8],
    /// Where it starts in the page.
    at: usize,
    /// Whether it has a backslash (an escape) in it.
    escaped: bool,
}

impl<'a> Str<'a> {
    /// Its value, escapes undone (borrowed from the page when it has none).
    fn text(&self) -> Result<Cow<'a, str>> {
        let bad = |what: String| PageError { at: self.at, what };
        if !self.escaped {
            return std::str::from_utf8(self.raw)
                .map(Cow::Borrowed)
                .map_err(|_| bad("a string that is not UTF-8".into()));
        }
        let mut quoted = Vec::with_capacity(self.raw.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(self.raw);
        quoted.push(b'"');
        serde_json::from_slice::<String>(&quoted)
            .map(Cow::Owned)
            .map_err(|e| bad(format!("a bad string ({e})")))
    }

    /// Whether two strings have the same value (ids are compared as they lie unless one of them
    /// has an escape).
    fn same(&self, other: &Str) -> bool {
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

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn err<T>(&self, what: impl Into<String>) -> Result<T> {
        Err(PageError {
            at: self.i,
            what: what.into(),
        })
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Result<u8> {
        self.ws();
        match self.b.get(self.i) {
            Some(c) => Ok(*c),
            None => self.err("the page ends early"),
        }
    }

    fn expect(&mut self, c: u8) -> Result<()> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            self.err(format!("expected {:?}", c as char))
        }
    }

    /// Only white space after the value.
    fn end(&mut self) -> Result<()> {
        self.ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            self.err("bytes after the page")
        }
    }

    /// A string.
    fn string(&mut self) -> Result<Str<'a>> {
        if self.peek()? != b'"' {
            return self.err("expected a string");
        }
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            let rest = self.b.get(self.i..).unwrap_or_default();
            match memchr::memchr2(b'"', b'\\', rest) {
                Some(n) => {
                    self.i += n;
                    if self.b[self.i] == b'"' {
                        self.i += 1;
                        return Ok(Str {
                            raw: &self.b[start..self.i - 1],
                            at: start - 1,
                            escaped,
                        });
                    }
                    escaped = true;
                    self.i += 2;
                }
                None => {
                    self.i = self.b.len();
                    return self.err("a string that is not closed");
                }
            }
        }
    }

    /// `{ "key": value, ... }`, calling `each` at every value with its key.
    fn object(&mut self, mut each: impl FnMut(&mut Self, Str<'a>) -> Result<()>) -> Result<()> {
        self.list(b'{', b'}', "an object", |s| {
            let key = s.string()?;
            s.expect(b':')?;
            each(s, key)
        })
    }

    /// `[ value, ... ]`, calling `each` at every value.
    fn array(&mut self, each: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
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

    /// The `posts` map: each post skipped whole, and the `root_id` of those in `kept` found.
    fn posts(&mut self, kept: &[Str], roots: &mut [Option<Str<'a>>; NEWEST_KEPT]) -> Result<()> {
        self.object(|p, id| {
            p.peek()?;
            let at = p.i;
            p.skip_value()?;
            let mut root = None;
            // An id listed twice in `order` gets its root at both places.
            for (k, kept) in kept.iter().enumerate() {
                if !kept.same(&id) {
                    continue;
                }
                if root.is_none() {
                    root = Some(root_id(p.b, at, p.i).map_err(|e| PageError {
                        at: e.at,
                        what: format!("post {}: {}", String::from_utf8_lossy(id.raw), e.what),
                    })?);
                }
                roots[k] = root.flatten();
            }
            Ok(())
        })
    }

    fn skip_value(&mut self) -> Result<()> {
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

/// The `root_id` of the post at `b[start..end]`: the first `"root_id"` found in it that is one
/// of its own keys (not in a string, not in an object inside it); `None` when it has none or it
/// is `null`.
fn root_id(b: &[u8], start: usize, end: usize) -> Result<Option<Str<'_>>> {
    static KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"root_id\""));
    if b[start] != b'{' {
        return Err(PageError {
            at: start,
            what: "not an object".into(),
        });
    }
    let mut from = start;
    while let Some(n) = KEY.find(&b[from..end]) {
        let q = from + n;
        from = q + 1;
        if walk(b, start, q)
            != (Walk::At {
                depth: 1,
                in_string: false,
            })
        {
            continue;
        }
        let mut s = Scan { b: &b[..end], i: q };
        s.string()?;
        if s.peek()? != b':' {
            // A value that reads "root_id".
            continue;
        }
        s.i += 1;
        return match s.peek()? {
            b'"' => s.string().map(Some),
            b'n' => s.skip_value().map(|()| None),
            _ => s.err("root_id is not a string"),
        };
    }
    Ok(None)
}

/// Where [`walk`] stopped.
#[derive(Debug, PartialEq, Eq)]
enum Walk {
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
fn skip_container(b: &[u8], start: usize) -> Option<usize> {
    match walk(b, start, usize::MAX) {
        Walk::Closed(end) => Some(end),
        _ => None,
    }
}

/// Follows the object or array opening at `b[start]` to its end, or to `stop` if that comes
/// first.
fn walk(b: &[u8], start: usize, stop: usize) -> Walk {
    let mut depth = 0usize;
    // All ones while inside a string at the end of the last block.
    let mut in_string = 0u64;
    // The first byte of the next block is escaped by a backslash ending this one.
    let mut escape_carry = false;
    let mut base = start;
    while base < b.len() {
        let m = Masks::of(&b[base..]);
        let escaped = if m.backslash == 0 && !escape_carry {
            0
        } else {
            escaped(m.backslash, &mut escape_carry)
        };
        let quotes = m.quote & !escaped;
        let carried = in_string != 0;
        let inside = prefix_xor(quotes) ^ in_string;
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
        if b.len() >= 64 {
            Masks::block(b[..64].try_into().unwrap_or(&[b' '; 64]))
        } else {
            let mut pad = [b' '; 64];
            pad[..b.len()].copy_from_slice(b);
            Masks::block(&pad)
        }
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
    use serde_json::{json, Value};

    /// What a user keeps of a page: its length, (id, root) of the newest and the oldest id.
    #[derive(Debug, Default, PartialEq)]
    struct PostList {
        len: usize,
        newest: Vec<(String, String)>,
        oldest: Option<String>,
    }

    impl PostList {
        fn parse(b: &[u8]) -> Result<PostList> {
            let p = Page::parse(b)?;
            Ok(PostList {
                len: p.len,
                newest: p
                    .newest()
                    .iter()
                    .map(|(i, r)| (i.to_string(), r.to_string()))
                    .collect(),
                oldest: p.oldest.map(|o| o.into_owned()),
            })
        }
    }

    /// What a page holds for a user, read with serde_json into a whole document.
    fn reference(page: &str) -> PostList {
        let v: Value = serde_json::from_str(page).expect("a valid page");
        let order: Vec<String> = v["order"]
            .as_array()
            .map(|o| {
                o.iter()
                    .filter_map(|i| i.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let root = |id: &str| v["posts"][id]["root_id"].as_str().unwrap_or("").to_string();
        PostList {
            len: order.len(),
            newest: order
                .iter()
                .take(NEWEST_KEPT)
                .map(|id| (id.clone(), root(id)))
                .collect(),
            oldest: order.last().cloned(),
        }
    }

    fn pairs(list: &PostList) -> Vec<(&str, &str)> {
        list.newest
            .iter()
            .map(|(p, r)| (p.as_str(), r.as_str()))
            .collect()
    }

    /// A page as a server may send it: only the newest ids with their roots and the oldest id
    /// are kept, whatever else a post carries (nested objects, escapes in strings and ids, fields
    /// in any order, keys named like the ones read inside nested objects and strings).
    #[test]
    fn a_page_keeps_the_newest_ids_their_roots_and_the_oldest() {
        let page = r#"{"order":["p3","p2","p1"],"next_post_id":"","posts":{
            "p1":{"id":"p1","message":"hello \"there\" \"root_id\":\"no\"","props":{"lt_id":"a-1","root_id":"x"},"root_id":""},
            "p2":{"root_id":"p1","id":"p2","metadata":{"embeds":[{"a":[1,2,{"b":"}]"}]}],"x":"root_id"},"message":"re \\"},
            "p\u0033":{"id":"p3","props":{"root_id":"decoy"},"root_id":"p\u0031","message":"escaped ids"}
        },"has_next":false}"#;
        let list = PostList::parse(page.as_bytes()).expect("decodes");
        assert_eq!(list.len, 3);
        assert_eq!(pairs(&list), [("p3", "p1"), ("p2", "p1"), ("p1", "")]);
        assert_eq!(list.oldest.as_deref(), Some("p1"));
        assert_eq!(list, reference(page));

        let twice = r#"{"order":["b","a","b"],"posts":{"a":{"root_id":""},"b":{"root_id":"a"}}}"#;
        assert_eq!(PostList::parse(twice.as_bytes()), Ok(reference(twice)));

        let empty = PostList::parse(br#"{"order":[],"posts":{}}"#).expect("empty");
        assert_eq!(empty, PostList::default());
        // `posts` first, white space everywhere, a null root.
        let page = " {\n \"posts\" : { \"a\" : { \"root_id\" : null } , \"b\" : {\"root_id\" : \"a\"} } ,\n \"order\" : [ \"b\" , \"a\" ] } \n";
        let list = PostList::parse(page.as_bytes()).expect("posts first");
        assert_eq!(pairs(&list), [("b", "a"), ("a", "")]);
        // Only the newest few are kept, however long the page.
        let ids: Vec<String> = (0..30).map(|i| format!("\"i{i}\"")).collect();
        let long = format!(r#"{{"order":[{}],"posts":{{}}}}"#, ids.join(","));
        let list = PostList::parse(long.as_bytes()).expect("long page");
        assert_eq!((list.len, list.newest.len()), (30, NEWEST_KEPT));
        assert_eq!(list.oldest.as_deref(), Some("i29"));
    }

    #[test]
    fn a_bad_page_is_an_error_saying_what_and_where() {
        let cases: [(&str, &str); 7] = [
            (r#"{"order":[],"posts":[]}"#, "expected '{' at byte 20"),
            (
                r#"{"order":["a"],"posts":{"a":{"root_id":7}}}"#,
                "post a: root_id is not a string",
            ),
            (
                r#"{"order":["a"],"posts":{"a":"text"}}"#,
                "post a: not an object at byte 28",
            ),
            (
                r#"{"order":["a"],"posts":{"a":{"m":"x\"}}}"#,
                "an object or array that is not closed at byte 28",
            ),
            (
                r#"{"order":["a"] "posts":{}}"#,
                "expected ',' or '}' in an object at byte 15",
            ),
            (
                r#"{"order":[],"posts":{}} x"#,
                "bytes after the page at byte 24",
            ),
            (
                r#"{"order":[tru],"posts":{}}"#,
                "expected a string at byte 10",
            ),
        ];
        for (page, want) in cases {
            let e = PostList::parse(page.as_bytes()).expect_err(page);
            assert!(e.to_string().contains(want), "{page}: {e}");
        }
        // A page cut anywhere is an error, never a panic or a short list.
        let page = serde_json::to_string(&json!({
            "order": ["b", "a"],
            "posts": {"a": {"root_id": "", "message": "x\\\"{["}, "b": {"root_id": "a", "props": {"k": [1, "]"]}}},
            "has_next": false,
        }))
        .expect("page");
        for cut in 0..page.len() {
            assert!(
                PostList::parse(&page.as_bytes()[..cut]).is_err(),
                "cut at {cut}: {}",
                &page[..cut]
            );
        }
        assert_eq!(PostList::parse(page.as_bytes()), Ok(reference(&page)));
        // Nesting beyond any real post is refused rather than followed.
        let deep = format!(
            r#"{{"order":["a"],"posts":{{"a":{}{}}}}}"#,
            "[".repeat(MAX_DEPTH + 70),
            "]".repeat(MAX_DEPTH + 70)
        );
        assert!(PostList::parse(deep.as_bytes()).is_err());
    }

    /// Random pages whose messages are full of what the block scanner must not be fooled by
    /// (quotes, runs of backslashes, brackets, multi-byte characters), at every length so that
    /// each of them falls on both sides of a 64-byte boundary: the same answer as serde_json.
    #[test]
    fn random_pages_read_as_serde_json_reads_them() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let pieces = [
            "\"",
            "\\",
            "\\\\",
            "{",
            "}",
            "[",
            "]",
            "root_id",
            "\"root_id\":",
            "é",
            "€",
            "a",
            " ",
            ":",
            ",",
        ];
        for round in 0..400 {
            let n = rng.gen_range(0..40);
            let mut order = Vec::new();
            let mut posts = serde_json::Map::new();
            for i in 0..n {
                let id = format!("id{round}x{i}");
                let text: String = (0..rng.gen_range(0..90))
                    .map(|_| pieces[rng.gen_range(0..pieces.len())])
                    .collect();
                let root = if rng.gen_bool(0.3) {
                    format!("id{round}x{}", rng.gen_range(0..n))
                } else {
                    String::new()
                };
                let mut post =
                    json!({"id": id, "message": text, "props": {"t": text, "root_id": "decoy"}});
                // The root before or after the nested objects and the message.
                if rng.gen_bool(0.5) {
                    post["root_id"] = json!(root);
                } else {
                    post = json!({"root_id": root, "x": post});
                }
                posts.insert(id.clone(), post);
                order.push(id);
            }
            let page = if rng.gen_bool(0.5) {
                serde_json::to_string(&json!({"order": order, "posts": posts}))
            } else {
                serde_json::to_string_pretty(
                    &json!({"posts": posts, "order": order, "x": [1.5e3, true, null]}),
                )
            }
            .expect("page");
            assert_eq!(
                PostList::parse(page.as_bytes()),
                Ok(reference(&page)),
                "{page}"
            );
        }
    }

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
}
