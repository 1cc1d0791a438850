//! Decoding a posts page (Mattermost's `PostList`) as far as a user's next actions need it,
//! without decoding the rest.
//!
//! A page is ~14 KB of JSON of which a user keeps a few ids: how many posts there are, the
//! newest [`NEWEST_KEPT`] ids with their thread roots, and the oldest id. Decoded with
//! serde_json (every post skipped as a raw value), it was 40 % of the agent's CPU in the read
//! mix (`perf` under `bench/peers.py --perf`). Libraries that skip JSON fast were measured on a
//! 30-post, 19 KB page on this project's benchmark machine, built for any x86-64 as a release
//! is: serde_json 22 µs, sonic-rs 23, jiter 18, simd-json 19 (its whole tape); they use wide
//! vectors only when built for the machine they run on. This module read it in 6.5 µs with
//! SSE2, and in 3.1–3.4 µs (best of a run, against 4.9–5.3 µs before) since it takes 32 bytes at
//! a time where the processor has AVX2 and PCLMULQDQ and finds short strings' ends eight bytes
//! at a time (`cargo run --release -p loadtest-agent --example page_speed` sets it against
//! serde_json).
//!
//! The page is read with [`crate::json`]'s scanner: its top level and its `order` array token
//! by token, each post skipped whole 64 bytes at a time. A kept post's own `root_id` key is
//! searched for and confirmed to be at its top level. What is checked of a skipped post is its
//! structure (its strings are closed, its brackets balance), so a cut or garbled page is an
//! error; a bad token inside a post the user does not keep is not looked for. Ids and roots are
//! read as strict JSON strings.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem::Finder;

use crate::json::{walk, JsonError, Result, Scan, Str, Walk};

/// Posts of a page whose ids (and thread roots) a user keeps: the newest ones, to reply to and
/// react on.
pub const NEWEST_KEPT: usize = 8;

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
pub type PageError = JsonError;

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

impl<'a> Scan<'a> {
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
                "bytes after the value at byte 24",
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
            "[".repeat(crate::json::MAX_DEPTH + 70),
            "]".repeat(crate::json::MAX_DEPTH + 70)
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
}
