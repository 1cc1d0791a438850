//! A server's WebSocket frame, read where it lies in the connection's buffer, as far as a user
//! needs it: the event's name and sequence number, an action reply's `seq_reply` and `status`,
//! a `hello`'s `connection_id`, and in `posted` the post's ids and measurement stamps.
//!
//! A big run receives tens of thousands of frames a second, each a `posted` event of about a
//! kilobyte that carries the post as a JSON string inside the JSON (its quotes escaped). Decoded
//! with serde_json, the frames were a fifth of the agent's CPU in the headline workload (`perf`
//! under `bench/f1.py --perf`), with an allocation for each post's unescaped text. Here the frame
//! is read with [`crate::json`]'s scanner, everything but the wanted keys skipped whole, and the
//! post's text is unescaped into a buffer the caller keeps and reads from there.
//!
//! A key given twice counts with its last value. A frame or post that is not JSON where it is
//! read is an error; what is skipped is checked for structure only (see [`crate::json`]).

use std::borrow::Cow;

use crate::json::{JsonError, Result, Scan, Str};

/// A server frame: an event (with `seq`) or a reply to an action (with `seq_reply`).
#[derive(Debug, Default)]
pub struct Frame<'a> {
    pub event: Option<Cow<'a, str>>,
    pub seq: Option<u64>,
    pub seq_reply: Option<u64>,
    pub status: Option<Cow<'a, str>>,
    pub data: Option<EventData<'a>>,
}

/// The fields of `data` the agent reads.
#[derive(Debug, Default)]
pub struct EventData<'a> {
    pub connection_id: Option<Cow<'a, str>>,
    /// In `posted`, the post encoded as a JSON string, as it lies in the frame.
    post: Option<Str<'a>>,
}

/// The fields of a received post that delivery measurement and a user's next actions need.
#[derive(Debug, Default, PartialEq)]
pub struct PostedPost<'a> {
    pub id: Cow<'a, str>,
    pub channel_id: Cow<'a, str>,
    pub root_id: Cow<'a, str>,
    pub props: Option<PostProps<'a>>,
}

/// The measurement stamp every agent post carries.
#[derive(Debug, Default, PartialEq)]
pub struct PostProps<'a> {
    pub lt_id: Option<Cow<'a, str>>,
    pub lt_sent_at: Option<i64>,
    /// Send time in the coordinator's clock (`lt_sent_at` − the sender's clock offset).
    pub lt_sent_at_ref: Option<i64>,
    /// Run id of the sender.
    pub lt_run: Option<Cow<'a, str>>,
}

/// Reads a frame.
pub fn parse_frame(text: &[u8]) -> Result<Frame<'_>> {
    let mut s = Scan { b: text, i: 0 };
    let mut f = Frame::default();
    s.object(|s, key| {
        match key.raw {
            b"event" => f.event = s.text_or_null()?,
            b"seq" => f.seq = s.u64_or_null()?,
            b"seq_reply" => f.seq_reply = s.u64_or_null()?,
            b"status" => f.status = s.text_or_null()?,
            b"data" if s.peek()? == b'{' => {
                let mut d = EventData::default();
                s.object(|s, key| {
                    match key.raw {
                        b"connection_id" => d.connection_id = s.text_or_null()?,
                        b"post" if s.peek()? == b'"' => d.post = Some(s.string()?),
                        _ => s.skip_value()?,
                    }
                    Ok(())
                })?;
                f.data = Some(d);
            }
            _ => s.skip_value()?,
        }
        Ok(())
    })?;
    s.end()?;
    Ok(f)
}

impl EventData<'_> {
    /// The post of a `posted` event: its text unescaped into `buf` (which the caller keeps, so
    /// that reading a post allocates nothing once the buffer has grown) and read from there.
    /// `None` without a post; an error when the post is not a JSON object with a string `id`.
    pub fn post<'b>(&self, buf: &'b mut Vec<u8>) -> Option<Result<PostedPost<'b>>> {
        let raw = self.post?;
        Some(raw.unescape_into(buf).and_then(|()| parse_post(buf)))
    }
}

/// Reads a post's JSON.
pub fn parse_post(text: &[u8]) -> Result<PostedPost<'_>> {
    let mut s = Scan { b: text, i: 0 };
    let mut p = PostedPost::default();
    let mut id = None;
    s.object(|s, key| {
        match key.raw {
            b"id" => id = Some(s.string()?.text()?),
            b"channel_id" => p.channel_id = s.text_or_null()?.unwrap_or_default(),
            b"root_id" => p.root_id = s.text_or_null()?.unwrap_or_default(),
            b"props" if s.peek()? == b'{' => {
                let mut pr = PostProps::default();
                s.object(|s, key| {
                    match key.raw {
                        b"lt_id" => pr.lt_id = s.text_or_null()?,
                        b"lt_sent_at" => pr.lt_sent_at = s.i64_or_null()?,
                        b"lt_sent_at_ref" => pr.lt_sent_at_ref = s.i64_or_null()?,
                        b"lt_run" => pr.lt_run = s.text_or_null()?,
                        _ => s.skip_value()?,
                    }
                    Ok(())
                })?;
                p.props = Some(pr);
            }
            b"props" => {
                s.skip_value()?;
                p.props = None;
            }
            _ => s.skip_value()?,
        }
        Ok(())
    })?;
    s.end()?;
    p.id = id.ok_or_else(|| JsonError {
        at: 0,
        what: "a post without an id".into(),
    })?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use serde_json::{json, Value};

    /// What the agent reads of a frame and its post, from serde_json's whole document.
    fn reference(frame: &str) -> (Option<String>, Option<u64>, Option<String>, Option<Value>) {
        let v: Value = serde_json::from_str(frame).expect("frame");
        let post = v["data"]["post"]
            .as_str()
            .map(|p| serde_json::from_str(p).expect("post"));
        (
            v["event"].as_str().map(String::from),
            v["seq"].as_u64(),
            v["data"]["connection_id"].as_str().map(String::from),
            post,
        )
    }

    fn read(frame: &str) -> (Option<String>, Option<u64>, Option<String>, Option<Value>) {
        let f = parse_frame(frame.as_bytes()).expect("frame");
        let mut buf = Vec::new();
        let post = f.data.as_ref().and_then(|d| d.post(&mut buf)).map(|p| {
            let p = p.expect("post");
            let props = p.props.map(|pr| {
                json!({"lt_id": pr.lt_id, "lt_sent_at": pr.lt_sent_at,
                       "lt_sent_at_ref": pr.lt_sent_at_ref, "lt_run": pr.lt_run})
            });
            json!({"id": p.id, "channel_id": p.channel_id, "root_id": p.root_id, "props": props})
        });
        (
            f.event.map(Cow::into_owned),
            f.seq,
            f.data.and_then(|d| d.connection_id).map(Cow::into_owned),
            post,
        )
    }

    /// The reference's post cut down to what [`read`] returns.
    fn kept(post: &Value) -> Value {
        let props = post.get("props").filter(|p| p.is_object()).map(|p| {
            json!({"lt_id": p.get("lt_id"), "lt_sent_at": p.get("lt_sent_at"),
                   "lt_sent_at_ref": p.get("lt_sent_at_ref"), "lt_run": p.get("lt_run")})
        });
        json!({"id": post["id"], "channel_id": post.get("channel_id").cloned().unwrap_or(json!("")),
               "root_id": post.get("root_id").cloned().unwrap_or(json!("")), "props": props})
    }

    #[test]
    fn a_posted_frame_yields_the_post_and_its_stamps() {
        let frame = r#"{"event":"posted","seq":3,"broadcast":{"channel_id":"c","omit_users":null},"data":{"post":"{\"id\":\"p1\",\"channel_id\":\"c\",\"message\":\"say \\\"id\\\": \\\\\\\"x\\\\\\\" é\",\"root_id\":\"r\",\"props\":{\"lt_id\":\"a-1\",\"lt_sent_at\":5,\"lt_sent_at_ref\":-2,\"lt_run\":\"run\",\"x\":[{}]}}","channel_type":"O","sender_name":"@u"}}"#;
        let f = parse_frame(frame.as_bytes()).expect("frame");
        assert_eq!((f.event.as_deref(), f.seq), (Some("posted"), Some(3)));
        let mut buf = Vec::new();
        let p = f
            .data
            .expect("data")
            .post(&mut buf)
            .expect("a post")
            .expect("read");
        assert_eq!((&*p.id, &*p.channel_id, &*p.root_id), ("p1", "c", "r"));
        let pr = p.props.expect("props");
        assert_eq!(pr.lt_id.as_deref(), Some("a-1"));
        assert_eq!((pr.lt_sent_at, pr.lt_sent_at_ref), (Some(5), Some(-2)));
        assert_eq!(pr.lt_run.as_deref(), Some("run"));

        let hello = parse_frame(br#"{"event":"hello","data":{"connection_id":"c\u0031\ud83d\ude00\\","server_version":"9"},"seq":0,"broadcast":{}}"#).expect("hello");
        assert_eq!(
            hello.data.and_then(|d| d.connection_id).as_deref(),
            Some("c1😀\\")
        );
        assert_eq!(hello.seq, Some(0));
        let reply = parse_frame(br#" { "status" : "OK" , "seq_reply" : 7 } "#).expect("reply");
        assert_eq!(
            (reply.status.as_deref(), reply.seq_reply, reply.event),
            (Some("OK"), Some(7), None)
        );
    }

    #[test]
    fn a_bad_frame_or_post_is_an_error_saying_what_and_where() {
        let cases: [(&str, &str); 5] = [
            (
                r#"{"event":"posted","seq":-1}"#,
                "expected a whole number at byte 24",
            ),
            (
                r#"{"event":"posted","seq":1.5}"#,
                "expected a whole number at byte 24",
            ),
            (r#"{"event":7}"#, "expected a string at byte 9"),
            (r#"{"data":{"post":"x"}"#, "the text ends early"),
            (r#"["event"]"#, "expected '{' at byte 0"),
        ];
        for (frame, want) in cases {
            let e = parse_frame(frame.as_bytes()).expect_err(frame);
            assert!(e.to_string().contains(want), "{frame}: {e}");
        }
        let mut buf = Vec::new();
        for (post, want) in [
            (
                r#"{"data":{"post":"{\"channel_id\":\"c\"}"}}"#,
                "a post without an id",
            ),
            (r#"{"data":{"post":"{\"id\":\"p\\x\"}"}}"#, "a bad escape"),
            (
                r#"{"data":{"post":"{\"id\":\"\\ud800\"}"}}"#,
                "a bad escape",
            ),
            (r#"{"data":{"post":"[1]"}}"#, "expected '{' at byte 0"),
        ] {
            let f = parse_frame(post.as_bytes()).expect(post);
            let e = f
                .data
                .expect("data")
                .post(&mut buf)
                .expect("post")
                .expect_err(post);
            assert!(e.to_string().contains(want), "{post}: {e}");
        }
        // A frame cut anywhere is an error, never a panic.
        let frame = r#"{"event":"posted","data":{"post":"{\"id\":\"p\"}"},"seq":12}"#;
        for cut in 0..frame.len() {
            assert!(
                parse_frame(&frame.as_bytes()[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    /// Random posts whose texts are full of what the scanner must not be fooled by (quotes,
    /// runs of backslashes, brackets, keys named like the ones read, escapes of every kind,
    /// multi-byte characters), in frames with fields in any order: what serde_json reads.
    #[test]
    fn random_frames_read_as_serde_json_reads_them() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let pieces = [
            "\"", "\\", "\\\\", "{", "}", "[", "]", "\"id\":", "lt_id", "é", "€", "😀", "\n", "\t",
            "\u{1}", "a", " ", ":", ",", "/",
        ];
        for round in 0..400 {
            let text: String = (0..rng.gen_range(0..60))
                .map(|_| pieces[rng.gen_range(0..pieces.len())])
                .collect();
            let mut post = json!({"id": format!("p{round}{text}"), "message": text,
                                  "channel_id": "c", "props": {"t": text, "lt_id": "x"}});
            if rng.gen_bool(0.7) {
                post["props"] = json!({"from_bot": text, "lt_id": format!("a-{round}"),
                    "lt_sent_at": rng.gen::<i64>(), "lt_sent_at_ref": rng.gen::<u32>(), "lt_run": text});
            }
            if rng.gen_bool(0.5) {
                post["root_id"] = json!(text);
            }
            let post = serde_json::to_string(&post).expect("post");
            let frame = if rng.gen_bool(0.5) {
                json!({"event": "posted", "data": {"channel_name": text, "post": post, "set_online": true},
                       "broadcast": {"omit_users": null, "channel_id": "c"}, "seq": rng.gen::<u64>()})
            } else {
                json!({"seq": round, "data": {"post": post, "connection_id": text}, "event": text})
            };
            let frame = serde_json::to_string(&frame).expect("frame");
            let (event, seq, conn, post) = reference(&frame);
            let got = read(&frame);
            assert_eq!(got, (event, seq, conn, post.as_ref().map(kept)), "{frame}");
        }
    }
}
