//! How long reading one `posted` frame takes: this agent's `frame` module against the serde_json
//! structs it replaced (borrowed strings, the post's escaped text unescaped into a new string and
//! decoded again), on a frame shaped as chat-server sends one in the headline workload.
//!
//! ```sh
//! cargo run --release -p loadtest-agent --example frame_speed
//! ```
//!
//! The best of 10 rounds of 20,000 reads each is printed, in µs per frame; both readers must
//! agree on what the frame holds.

use std::borrow::Cow;
use std::time::Instant;

use loadtest_agent::frame::parse_frame;
use serde::Deserialize;
use serde_json::json;

/// What a reader returns: seq, post id, channel, root, lt_id and the send stamp.
type Kept = (
    Option<u64>,
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
);

/// What both readers return, from what they read.
fn kept(seq: Option<u64>, ids: [Cow<str>; 3], lt_id: Option<Cow<str>>, sent: Option<i64>) -> Kept {
    let [id, channel, root] = ids.map(Cow::into_owned);
    (seq, id, channel, root, lt_id.map(Cow::into_owned), sent)
}

/// A `posted` event as chat-server renders one (the post as a JSON string inside the frame).
fn frame() -> String {
    let post = json!({
        "id": "k3x9q8w7e6r5t4y3u2i1o0p9aa", "create_at": 1_765_000_000_000i64,
        "update_at": 1_765_000_000_000i64, "edit_at": 0, "delete_at": 0, "is_pinned": false,
        "user_id": "abcdefghijklmnopqrstuvwxyz", "channel_id": "zyxwvutsrqponmlkjihgfedcba",
        "root_id": "", "original_id": "", "type": "", "hashtags": "", "pending_post_id": "",
        "message": format!("a message with \"quotes\", {{braces}} and naïve café — {}", "lorem ipsum ".repeat(6)),
        "props": {"lt_id": "agent-1-12345", "lt_sent_at": 1_765_000_000_000i64,
                  "lt_sent_at_ref": 1_765_000_000_001i64, "lt_run": "20261206T120000Z-abcd"},
        "reply_count": 0, "last_reply_at": 0, "participants": null, "metadata": {},
    })
    .to_string();
    json!({
        "event": "posted",
        "data": {"channel_display_name": "Channel 7", "channel_name": "channel-7", "channel_type": "O",
                 "post": post, "sender_name": "@user12345", "set_online": true,
                 "team_id": "teamteamteamteamteamteamte"},
        "broadcast": {"omit_users": null, "user_id": "", "channel_id": "zyxwvutsrqponmlkjihgfedcba", "team_id": ""},
        "seq": 4321,
    })
    .to_string()
}

/// The agent's reader before `frame`: serde_json into borrowed structs, then the post's text
/// (always escaped, so always a new string) decoded again.
fn serde_structs(b: &[u8]) -> Kept {
    #[derive(Deserialize)]
    struct Frame<'a> {
        #[serde(default, borrow)]
        #[allow(dead_code)]
        event: Option<Cow<'a, str>>,
        #[serde(default)]
        seq: Option<u64>,
        #[serde(default, borrow)]
        data: Option<Data<'a>>,
    }
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(default, borrow)]
        post: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Post<'a> {
        #[serde(borrow)]
        id: Cow<'a, str>,
        #[serde(default, borrow)]
        channel_id: Cow<'a, str>,
        #[serde(default, borrow)]
        root_id: Cow<'a, str>,
        #[serde(default, borrow)]
        props: Option<Props<'a>>,
    }
    #[derive(Deserialize)]
    struct Props<'a> {
        #[serde(default, borrow)]
        lt_id: Option<Cow<'a, str>>,
        #[serde(default)]
        lt_sent_at_ref: Option<i64>,
    }
    let f: Frame = serde_json::from_slice(b).expect("a frame");
    let text = f.data.and_then(|d| d.post).expect("a post");
    let p: Post = serde_json::from_str(&text).expect("a post");
    let props = p.props.expect("props");
    kept(
        f.seq,
        [p.id, p.channel_id, p.root_id],
        props.lt_id,
        props.lt_sent_at_ref,
    )
}

fn with_frame(b: &[u8], buf: &mut Vec<u8>) -> Kept {
    let f = parse_frame(b).expect("a frame");
    let data = f.data.expect("data");
    let p = data.post(buf).expect("a post").expect("a post");
    let props = p.props.expect("props");
    kept(
        f.seq,
        [p.id, p.channel_id, p.root_id],
        props.lt_id,
        props.lt_sent_at_ref,
    )
}

fn main() {
    let text = frame();
    let b = text.as_bytes();
    let mut buf = Vec::new();
    assert_eq!(
        with_frame(b, &mut buf),
        serde_structs(b),
        "the two readers disagree"
    );
    let time = |read: &mut dyn FnMut(&[u8]) -> Kept| {
        (0..10)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..20_000 {
                    std::hint::black_box(read(std::hint::black_box(b)));
                }
                t.elapsed().as_secs_f64() * 1e6 / 20_000.0
            })
            .fold(f64::MAX, f64::min)
    };
    let ours = time(&mut |b| with_frame(b, &mut buf));
    let serde = time(&mut serde_structs);
    println!(
        "a posted frame of {} bytes; best of 10 rounds of 20,000 reads:",
        b.len()
    );
    println!("  frame::parse_frame + post    {ours:6.2} µs");
    println!(
        "  serde_json structs           {serde:6.2} µs ({:.1}× as long)",
        serde / ours
    );
}
