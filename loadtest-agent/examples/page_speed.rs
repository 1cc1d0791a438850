//! How long reading one posts page takes: this agent's `page` module against serde_json skipping
//! every post as a raw value (what the agent did before), on a page shaped as chat-server and
//! Mattermost send it (30 posts with nested objects, escapes and multi-byte text).
//!
//! ```sh
//! cargo run --release -p loadtest-agent --example page_speed
//! ```
//!
//! The best of 10 rounds of 3,000 reads each is printed, in µs per page; both readers must
//! agree on what the page holds.

use std::borrow::Cow;
use std::time::Instant;

use loadtest_agent::page::{Page, NEWEST_KEPT};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map};

/// What a reader returns: the page's length and (id, root) of its newest posts.
type Kept = (usize, Vec<(String, String)>);

/// A page of 30 posts, newest first, as the server renders one (keys sorted, posts keyed by id).
fn page() -> String {
    let mut posts = Map::new();
    let mut order = Vec::new();
    for i in 0..30u64 {
        let id = format!("{:026x}", 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i + 1));
        let root = if i % 3 == 0 {
            format!("{:026}", i)
        } else {
            String::new()
        };
        posts.insert(
            id.clone(),
            json!({
                "id": id, "create_at": 1_765_000_000_000i64 + i as i64, "update_at": 1_765_000_000_000i64,
                "edit_at": 0, "delete_at": 0, "is_pinned": false,
                "user_id": "abcdefghijklmnopqrstuvwxyz", "channel_id": "zyxwvutsrqponmlkjihgfedcba",
                "root_id": root, "original_id": "", "type": "", "hashtags": "", "pending_post_id": "",
                "message": format!("message {i}: \"quoted\", {{braces}} and [brackets], naïve café — {}", "lorem ipsum ".repeat(8)),
                "props": {"lt_id": format!("agent-0-{i}"), "lt_sent_at": 1_765_000_000_000i64},
                "reply_count": 3, "last_reply_at": 0, "participants": null, "metadata": {},
            }),
        );
        order.push(id);
    }
    json!({"order": order, "posts": posts, "next_post_id": "", "prev_post_id": "", "has_next": false})
        .to_string()
}

/// The agent's reader before `page`: serde_json, every post skipped as a borrowed raw value and
/// the kept ones decoded again for `root_id`.
fn serde_raw(b: &[u8]) -> Kept {
    #[derive(Deserialize)]
    struct Root<'a> {
        #[serde(default, borrow)]
        root_id: Cow<'a, str>,
    }
    #[derive(Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        order: Vec<Cow<'a, str>>,
        #[serde(borrow)]
        posts: std::collections::BTreeMap<Cow<'a, str>, &'a RawValue>,
    }
    let doc: Doc = serde_json::from_slice(b).expect("a valid page");
    let newest = doc
        .order
        .iter()
        .take(NEWEST_KEPT)
        .map(|id| {
            let root = doc.posts.get(id).map_or(String::new(), |p| {
                serde_json::from_str::<Root>(p.get())
                    .expect("a post")
                    .root_id
                    .into_owned()
            });
            (id.to_string(), root)
        })
        .collect();
    (doc.order.len(), newest)
}

fn with_page(b: &[u8]) -> Kept {
    let p = Page::parse(b).expect("a valid page");
    let newest = p
        .newest()
        .iter()
        .map(|(i, r)| (i.to_string(), r.to_string()))
        .collect();
    (p.len, newest)
}

fn main() {
    let text = page();
    let b = text.as_bytes();
    assert_eq!(with_page(b), serde_raw(b), "the two readers disagree");
    let time = |read: fn(&[u8]) -> Kept| {
        (0..10)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..3000 {
                    std::hint::black_box(read(std::hint::black_box(b)));
                }
                t.elapsed().as_secs_f64() * 1e6 / 3000.0
            })
            .fold(f64::MAX, f64::min)
    };
    let (ours, serde) = (time(with_page), time(serde_raw));
    println!(
        "a posts page of {} bytes, 30 posts; best of 10 rounds of 3,000 reads:",
        b.len()
    );
    println!("  page::Page::parse            {ours:6.2} µs");
    println!(
        "  serde_json, posts as raw     {serde:6.2} µs ({:.1}× as long)",
        serde / ours
    );
}
