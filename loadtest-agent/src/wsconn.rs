//! A simulated user's WebSocket after the upgrade: RFC 6455 framing over a plain or a TLS
//! stream, sized for chat rather than bulk transfer.
//!
//! Written here rather than taken from tungstenite because of memory: a library connection keeps
//! a read buffer for as long as it is open, and tungstenite reserves a whole frame's length on
//! top of what it holds, so every user of a 30,000-user run kept 4 KiB that it used for a
//! millisecond per event (heap profile in BENCHMARKS.md). Here a plain socket waits for
//! readability holding no buffer, reads into one scratch buffer per thread, parses the frames
//! there, and keeps only what is left after the message it returns (the frames after it, or one
//! that has not fully arrived): between events an idle user's connection holds no read buffer at
//! all, and an event costs no allocation. A read that drains the socket also clears its
//! readiness ([`read_plain`]), so an event costs one read system call, not two. A TLS stream reads into a buffer of its own (rustls holds kilobytes
//! per connection anyway).
//!
//! What a server may send is handled: text messages (returned, parsed by the caller's function),
//! binary messages (skipped), fragmented messages (assembled, up to [`MAX_MESSAGE`]), pings
//! (answered with a pong), pongs (ignored), close (answered, then the end of the stream).
//! Frames sent are masked with a fresh random key, as a client's must be. `recv` is
//! cancel-safe: everything it has read or owes the server lives in the connection, not in the
//! future, so it can sit in a `select!` beside the user's timers.

use std::cell::RefCell;
use std::io;
use std::ops::Range;

use crate::net::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest message accepted, whole or assembled from fragments (chat events are under 4 KiB).
pub const MAX_MESSAGE: usize = 4 << 20;
/// Bytes read from a plain socket at a time, into the thread's scratch buffer.
const SCRATCH: usize = 16 * 1024;
/// Bytes read from a TLS stream at a time, into the connection's own buffer.
const TLS_READ: usize = 4096;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Waits for a plain socket to have something and reads it into the thread's scratch buffer:
/// how many bytes (0 at the end of the stream).
///
/// A read that leaves the socket drained (fewer bytes than asked for) also clears the socket's
/// readiness, as a read that found nothing would: the next wait then sleeps until more arrives,
/// instead of costing one more system call that finds nothing after every event. A wake-up for
/// data that arrived meanwhile is not lost: tokio clears the readiness only if no new event came
/// since it was seen.
async fn read_plain(tcp: &tokio::net::TcpStream) -> io::Result<usize> {
    use std::io::Read as _;
    loop {
        // The socket's one reader slot rather than `readable()`, whose future joins a list of
        // waiters under a lock and leaves it when dropped: the user's loop makes this future
        // anew at every wake-up (every HTTP answer too), so that was paid every time.
        std::future::poll_fn(|cx| tcp.poll_read_ready(cx)).await?;
        let mut drained = 0;
        let read = SCRATCH_BUF.with(|s| {
            let mut s = s.borrow_mut();
            tcp.try_io(tokio::io::Interest::READABLE, || {
                let n = (&*socket2::SockRef::from(tcp)).read(&mut s[..])?;
                if n > 0 && n < s.len() {
                    drained = n;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            })
        });
        match read {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && drained > 0 => return Ok(drained),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A frame whose header and payload have fully arrived, relative to the unread bytes.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: Range<usize>,
}

fn protocol(what: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("WebSocket protocol: {}", what.into()),
    )
}

/// The first frame of `b` if it is complete, `None` if more bytes are needed.
fn parse_header(b: &[u8]) -> io::Result<Option<Header>> {
    let &[b0, b1, ..] = b else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(protocol(
            "reserved bits set, but no extension was negotiated",
        ));
    }
    let opcode = b0 & 0x0f;
    let (len, mut at) = match b1 & 0x7f {
        126 => match b.get(2..4) {
            Some(l) => (u64::from(u16::from_be_bytes([l[0], l[1]])), 4),
            None => return Ok(None),
        },
        127 => match b.get(2..10) {
            Some(l) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(l);
                (u64::from_be_bytes(n), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len > MAX_MESSAGE as u64 {
        return Err(protocol(format!(
            "a frame of {len} bytes is over the {MAX_MESSAGE}-byte limit"
        )));
    }
    let fin = b0 & 0x80 != 0;
    if opcode >= OP_CLOSE && (!fin || len > 125) {
        return Err(protocol("a control frame fragmented or over 125 bytes"));
    }
    let mask = if b1 & 0x80 != 0 {
        let Some(m) = b.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    let end = at + len as usize;
    if b.len() < end {
        return Ok(None);
    }
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        payload: at..end,
    }))
}

fn apply_mask(bytes: &mut [u8], mask: [u8; 4]) {
    for (i, b) in bytes.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends one masked client frame (`fin` set) to `out`.
fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask: [u8; 4] = rand::random();
    out.extend_from_slice(&mask);
    let from = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[from..], mask);
}

/// A fragmented message being assembled.
struct Fragments {
    text: bool,
    data: Vec<u8>,
}

/// An open WebSocket (client side).
pub struct WsConn {
    io: Transport,
    /// Bytes read and not yet consumed, from `start`; empty (unallocated) between events.
    buf: Vec<u8>,
    start: usize,
    message: Option<Fragments>,
    /// Frames owed to the server (pongs, a close reply, the frame being sent), from `out_at`.
    out: Vec<u8>,
    out_at: usize,
    /// The close handshake happened or the stream ended: nothing more will be read.
    ended: bool,
}

impl WsConn {
    /// A connection over `io` after the upgrade; `early` is what the server sent after its
    /// response head (frames may follow the `101` at once).
    pub fn new(io: Transport, early: Vec<u8>) -> WsConn {
        WsConn {
            io,
            buf: early,
            start: 0,
            message: None,
            out: Vec::new(),
            out_at: 0,
            ended: false,
        }
    }

    /// The next text message, given to `parse`; `None` once the server closed the connection
    /// (its close frame answered) or the stream ended. Cancel-safe.
    pub async fn recv<T>(&mut self, mut parse: impl FnMut(&[u8]) -> T) -> io::Result<Option<T>> {
        loop {
            // What is left of the last read: frames after the one returned, or the start of one.
            let mut buf = std::mem::take(&mut self.buf);
            let mut start = self.start;
            let got = self.next_in(&mut buf, &mut start, &mut parse);
            (self.buf, self.start) = (buf, start);
            self.compact();
            if let Some(got) = got? {
                return Ok(Some(got));
            }
            // Pongs and a close reply are written before waiting for more; a close reply the
            // server no longer reads is no error.
            let flushed = self.flush_out().await;
            if self.ended {
                return Ok(None);
            }
            flushed?;
            let read = match &mut self.io {
                Transport::Plain(tcp) if self.buf.is_empty() => {
                    // Nothing held: the frames are read where they land, in the thread's
                    // scratch buffer, and only what is left after a message is kept.
                    let n = read_plain(tcp).await?;
                    SCRATCH_BUF.with(|s| {
                        let mut s = s.borrow_mut();
                        let mut start = 0;
                        let got = self.next_in(&mut s[..n], &mut start, &mut parse);
                        self.buf.extend_from_slice(&s[start..n]);
                        got.map(|got| (n, got))
                    })
                }
                Transport::Plain(tcp) => {
                    let n = read_plain(tcp).await?;
                    SCRATCH_BUF.with(|s| self.buf.extend_from_slice(&s.borrow()[..n]));
                    Ok((n, None))
                }
                Transport::Tls(tls) => {
                    self.buf.reserve(TLS_READ);
                    Ok((tls.read_buf(&mut self.buf).await?, None))
                }
            };
            match read? {
                (_, Some(got)) => return Ok(Some(got)),
                (0, None) => {
                    self.ended = true;
                    if self.start < self.buf.len() || self.message.is_some() {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the server closed the connection in the middle of a frame",
                        ));
                    }
                }
                _ => {}
            }
        }
    }

    /// The next text message among the complete frames of `buf[*start..]`, consuming the
    /// frames before it (control frames answered, fragments gathered); `None` when no complete
    /// frame is left (`*start` is then where the incomplete one begins) or the stream ended.
    fn next_in<T>(
        &mut self,
        buf: &mut [u8],
        start: &mut usize,
        mut parse: impl FnMut(&[u8]) -> T,
    ) -> io::Result<Option<T>> {
        while !self.ended {
            let Some(h) = parse_header(&buf[*start..])? else {
                break;
            };
            let p = *start + h.payload.start..*start + h.payload.end;
            *start = p.end;
            if let Some(got) = self.take(&mut buf[p], h, &mut parse)? {
                return Ok(Some(got));
            }
        }
        Ok(None)
    }

    /// Consumes the complete frame `h`; a finished text message is parsed and returned.
    fn take<T>(
        &mut self,
        payload: &mut [u8],
        h: Header,
        mut parse: impl FnMut(&[u8]) -> T,
    ) -> io::Result<Option<T>> {
        if let Some(mask) = h.mask {
            apply_mask(payload, mask);
        }
        match (h.opcode, self.message.as_mut()) {
            (OP_TEXT | OP_BINARY, Some(_)) => Err(protocol(
                "a new message began before the fragmented one ended",
            )),
            (OP_TEXT, None) if h.fin => Ok(Some(parse(payload))),
            (OP_BINARY, None) if h.fin => Ok(None),
            (OP_TEXT | OP_BINARY, None) => {
                self.message = Some(Fragments {
                    text: h.opcode == OP_TEXT,
                    data: payload.to_vec(),
                });
                Ok(None)
            }
            (OP_CONTINUATION, None) => Err(protocol("a continuation frame outside a message")),
            (OP_CONTINUATION, Some(m)) => {
                if m.data.len() + payload.len() > MAX_MESSAGE {
                    return Err(protocol(format!(
                        "a fragmented message over the {MAX_MESSAGE}-byte limit"
                    )));
                }
                m.data.extend_from_slice(payload);
                if !h.fin {
                    return Ok(None);
                }
                let m = self.message.take().expect("matched Some above");
                Ok(m.text.then(|| parse(&m.data)))
            }
            (OP_PING, _) => {
                encode(&mut self.out, OP_PONG, payload);
                Ok(None)
            }
            (OP_PONG, _) => Ok(None),
            (OP_CLOSE, _) => {
                // Answer with the server's status code (RFC 6455 §5.5.1), then read no more.
                let code = payload.get(..2).map(<[u8]>::to_vec).unwrap_or_default();
                encode(&mut self.out, OP_CLOSE, &code);
                self.ended = true;
                Ok(None)
            }
            (op, _) => Err(protocol(format!("unknown opcode {op:#x}"))),
        }
    }

    /// Drops consumed bytes; frees the buffer once everything in it is consumed.
    fn compact(&mut self) {
        if self.start == self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
        } else if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Writes what is owed to the server. Cancel-safe: progress is kept in `out_at`.
    async fn flush_out(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        while self.out_at < self.out.len() {
            let n = self.io.io().write(&self.out[self.out_at..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.out_at += n;
        }
        self.io.io().flush().await?;
        self.out = Vec::new();
        self.out_at = 0;
        Ok(())
    }

    /// Sends one text message.
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        encode(&mut self.out, OP_TEXT, text.as_bytes());
        self.flush_out().await
    }

    /// Starts the close handshake (status 1000) and shuts the sending side; the caller drops
    /// the connection after.
    pub async fn close(&mut self) -> io::Result<()> {
        if !self.ended {
            encode(&mut self.out, OP_CLOSE, &1000u16.to_be_bytes());
            self.ended = true;
        }
        self.flush_out().await?;
        self.io.io().shutdown().await
    }

    /// Bytes this connection holds for reading (0 between events on a plain socket).
    pub fn buffered(&self) -> usize {
        self.buf.capacity() + self.message.as_ref().map_or(0, |m| m.data.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    /// A server frame (unmasked unless `mask`).
    fn server_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => f.push(m | n as u8),
            n @ 126..=0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mut p = payload.to_vec();
        if let Some(k) = mask {
            f.extend_from_slice(&k);
            apply_mask(&mut p, k);
        }
        f.extend_from_slice(&p);
        f
    }

    /// Decodes one masked client frame: (opcode, payload, bytes used).
    fn client_frame(b: &[u8]) -> (u8, Vec<u8>, usize) {
        let h = parse_header(b).expect("valid").expect("complete");
        assert!(h.fin);
        let mask = h.mask.expect("a client frame is masked");
        let mut p = b[h.payload.clone()].to_vec();
        apply_mask(&mut p, mask);
        (h.opcode, p, h.payload.end)
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8(b.to_vec()).expect("utf-8")
    }

    /// A real loopback socket pair: the connection under test and the server's end.
    async fn pair() -> (WsConn, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        (WsConn::new(Transport::Plain(c), Vec::new()), s)
    }

    #[test]
    fn headers_need_every_byte_of_the_frame() {
        let f = server_frame(true, OP_TEXT, &[b'x'; 300], None);
        for cut in 0..f.len() {
            assert_eq!(parse_header(&f[..cut]).expect("valid"), None, "{cut}");
        }
        let h = parse_header(&f).expect("valid").expect("complete");
        assert_eq!((h.opcode, h.payload), (OP_TEXT, 4..304));
        let long = server_frame(true, OP_BINARY, &vec![0; 70_000], None);
        let h = parse_header(&long).expect("valid").expect("complete");
        assert_eq!(h.payload, 10..70_010);
    }

    #[test]
    fn bad_frames_are_refused_with_a_reason() {
        let reserved = [0xC1, 0x00];
        let err = parse_header(&reserved).expect_err("reserved bit");
        assert!(err.to_string().contains("reserved bits"), "{err}");
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&(MAX_MESSAGE as u64 + 1).to_be_bytes());
        let err = parse_header(&huge).expect_err("too long");
        assert!(err.to_string().contains("limit"), "{err}");
        let fragmented_ping = [0x09, 0x00];
        let err = parse_header(&fragmented_ping).expect_err("control fragment");
        assert!(err.to_string().contains("control frame"), "{err}");
    }

    #[test]
    fn client_frames_are_masked_with_the_right_length_encoding() {
        for len in [0, 1, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            encode(&mut out, OP_TEXT, &payload);
            let (op, got, used) = client_frame(&out);
            assert_eq!((op, used), (OP_TEXT, out.len()), "{len}");
            assert_eq!(got, payload, "{len}");
        }
    }

    /// Several frames in one read, a frame split across reads, a fragmented message with a
    /// ping between its fragments (answered with a pong), a binary message (skipped), a masked
    /// frame, then the server's close (answered with its code) and the end.
    #[tokio::test]
    async fn reads_what_a_server_may_send_and_answers_pings_and_close() {
        let (mut ws, mut server) = pair().await;
        let mut burst = server_frame(true, OP_TEXT, b"one", None);
        burst.extend(server_frame(true, OP_TEXT, b"two", None));
        let split = server_frame(true, OP_TEXT, &[b'3'; 2000], None);
        burst.extend_from_slice(&split[..1000]);
        server.write_all(&burst).await.expect("write");
        assert_eq!(ws.recv(text).await.expect("recv"), Some("one".into()));
        assert_eq!(ws.recv(text).await.expect("recv"), Some("two".into()));
        server.write_all(&split[1000..]).await.expect("write");
        assert_eq!(
            ws.recv(text).await.expect("recv").map(|t| t.len()),
            Some(2000)
        );
        assert_eq!(ws.buffered(), 0, "nothing is held between messages");

        let mut rest = server_frame(false, OP_TEXT, b"frag", None);
        rest.extend(server_frame(true, OP_PING, b"p!", None));
        rest.extend(server_frame(true, OP_CONTINUATION, b"mented", None));
        rest.extend(server_frame(true, OP_BINARY, b"\x00\x01", None));
        rest.extend(server_frame(true, OP_TEXT, b"masked", Some([1, 2, 3, 4])));
        rest.extend(server_frame(
            true,
            OP_CLOSE,
            &[0x03, 0xE8, b'b', b'y', b'e'],
            None,
        ));
        server.write_all(&rest).await.expect("write");
        assert_eq!(
            ws.recv(text).await.expect("recv"),
            Some("fragmented".into())
        );
        assert_eq!(ws.recv(text).await.expect("recv"), Some("masked".into()));
        assert_eq!(ws.recv(text).await.expect("recv"), None);
        assert_eq!(
            ws.recv(text).await.expect("recv"),
            None,
            "ended stays ended"
        );

        let mut got = Vec::new();
        while got.len() < 2 * (2 + 4) + 2 + 2 {
            let n = server.read_buf(&mut got).await.expect("read");
            assert!(n > 0, "the client's answers cut short: {got:?}");
        }
        let (op, p, used) = client_frame(&got);
        assert_eq!((op, p.as_slice()), (OP_PONG, &b"p!"[..]));
        let (op, p, _) = client_frame(&got[used..]);
        assert_eq!((op, p.as_slice()), (OP_CLOSE, &[0x03, 0xE8][..]));
    }

    #[tokio::test]
    async fn sends_masked_text_and_closes_with_1000() {
        let (mut ws, mut server) = pair().await;
        ws.send_text("{\"action\":\"user_typing\"}")
            .await
            .expect("send");
        ws.close().await.expect("close");
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read");
        let (op, p, used) = client_frame(&got);
        assert_eq!(
            (op, text(&p)),
            (OP_TEXT, "{\"action\":\"user_typing\"}".into())
        );
        let (op, p, used2) = client_frame(&got[used..]);
        assert_eq!((op, p.as_slice()), (OP_CLOSE, &[0x03, 0xE8][..]));
        assert_eq!(used + used2, got.len(), "nothing after the close");
    }

    #[tokio::test]
    async fn a_stream_ending_mid_frame_is_an_error_and_a_clean_end_is_none() {
        let (mut ws, mut server) = pair().await;
        let f = server_frame(true, OP_TEXT, b"cut short", None);
        server.write_all(&f[..5]).await.expect("write");
        drop(server);
        let err = ws.recv(text).await.expect_err("cut");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let (mut ws, server) = pair().await;
        drop(server);
        assert_eq!(ws.recv(text).await.expect("clean end"), None);
    }

    #[tokio::test]
    async fn a_protocol_error_names_what_was_wrong() {
        let (mut ws, mut server) = pair().await;
        server
            .write_all(&server_frame(true, OP_CONTINUATION, b"x", None))
            .await
            .expect("write");
        let err = ws.recv(text).await.expect_err("stray continuation");
        assert!(
            err.to_string().contains("continuation frame outside"),
            "{err}"
        );
    }

    /// `recv` dropped while waiting (as `select!` does when a timer fires) loses nothing.
    #[tokio::test]
    async fn recv_cancelled_while_waiting_loses_nothing() {
        let (mut ws, mut server) = pair().await;
        let f = server_frame(true, OP_TEXT, b"after the timer", None);
        server.write_all(&f[..4]).await.expect("write");
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), ws.recv(text)).await;
        assert!(waited.is_err(), "no message yet");
        server.write_all(&f[4..]).await.expect("write");
        assert_eq!(
            ws.recv(text).await.expect("recv"),
            Some("after the timer".into())
        );
    }

    /// Frames as a server's writes deliver them: one per read (the socket then drained, its
    /// readiness cleared with the data), several in one read, one split across reads, one bigger
    /// than the scratch buffer. Every message arrives once and in order, no wake-up is lost, and
    /// nothing is held between events.
    #[tokio::test]
    async fn frames_however_they_arrive_are_read_once_in_order() {
        let (mut ws, mut server) = pair().await;
        let within = std::time::Duration::from_secs(5);
        for i in 0..200 {
            let f = server_frame(true, OP_TEXT, format!("one {i}").as_bytes(), None);
            server.write_all(&f).await.expect("write");
            let got = tokio::time::timeout(within, ws.recv(text))
                .await
                .expect("no wake-up lost");
            assert_eq!(got.expect("recv"), Some(format!("one {i}")));
            assert_eq!(ws.buffered(), 0, "nothing held between events");
        }
        let mut burst = Vec::new();
        for i in 0..50 {
            burst.extend(server_frame(
                true,
                OP_TEXT,
                format!("burst {i}").as_bytes(),
                None,
            ));
        }
        let big = "x".repeat(SCRATCH * 3 + 17);
        burst.extend(server_frame(true, OP_TEXT, big.as_bytes(), None));
        burst.extend(server_frame(true, OP_TEXT, b"last", None));
        for piece in burst.chunks(700) {
            server.write_all(piece).await.expect("write");
        }
        for i in 0..50 {
            let got = tokio::time::timeout(within, ws.recv(text))
                .await
                .expect("in time");
            assert_eq!(got.expect("recv"), Some(format!("burst {i}")));
        }
        assert_eq!(
            tokio::time::timeout(within, ws.recv(text))
                .await
                .expect("in time")
                .expect("recv"),
            Some(big)
        );
        assert_eq!(
            tokio::time::timeout(within, ws.recv(text))
                .await
                .expect("in time")
                .expect("recv"),
            Some("last".into())
        );
        assert_eq!(ws.buffered(), 0);
    }
}
