//! The agent's HTTP/1.1 client: keep-alive connections pooled per source address, a request
//! written as one buffer, the answer read into the connection's own buffer and handed to the
//! caller in place.
//!
//! Written here rather than taken from reqwest over hyper because of CPU: the generator's cost per
//! request is what a user pays on every run, and side by side with `wrk` on one server (bench
//! `peers.py`, BENCHMARKS.md) reqwest's layers (a URL and a header map per request, a connection
//! task with a channel to it, body frames collected into new bytes) cost the agent 3.5× wrk's CPU
//! per request. Here a request is formatted straight into a buffer the connection keeps, written
//! with one call, and read by the task that sent it; the answer's body is decoded from the bytes
//! as they were read.
//!
//! What the agent's servers may answer is handled: `Content-Length` and chunked bodies (chunks
//! joined in place, trailers skipped), bodies that end with the connection, interim `1xx` answers
//! (skipped), `Connection: close` and HTTP/1.0 answers (the connection is not reused), plain and
//! TLS (rustls) connections. An idle connection that the server has closed is noticed before it
//! is reused (its readiness, without a system call on a healthy one); if a reused connection
//! still fails before the request was written, or before any answer to a request that may be
//! repeated, the request goes once more over a new connection. Everything one request does,
//! connecting included, runs under the request timeout.
//!
//! Each load runtime ([`crate::shards`]) has pools of its own, so a connection is only ever used
//! by the thread whose driver it is registered with; requests from any other thread (the data
//! set's setup) share one more set.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::net::{connect_tcp, tls_connector, Transport};

/// Idle connections kept per source address: as many as steady traffic needs. Each costs a file
/// descriptor on both ends, and after a burst (the ramp-up's logins) thousands would linger.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused (under the idle timeouts of
/// common servers and proxies: Go's `http.Server` in Mattermost 60 s, nginx 75 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read at a time; a chat answer is mostly smaller.
const READ_CHUNK: usize = 4096;
/// A connection's buffers above this are given back after the answer (a rare large page).
const KEEP_BUFFER: usize = 64 * 1024;
/// Longest answer head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Longest answer body accepted.
pub const MAX_BODY: usize = 64 << 20;
/// Headers of an answer looked at (Mattermost sends about 15).
const MAX_HEADERS: usize = 64;

/// The request methods the agent uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }

    /// Whether sending it twice does what sending it once does (RFC 9110 §9.2.2), so a request
    /// lost with a connection that died under it may go again.
    fn idempotent(self) -> bool {
        !matches!(self, Method::Post)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("the connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("bad answer: {0}")]
    Protocol(String),
}

/// A request: `path` (with its `?query`) is relative to the client's base path; `body`, when
/// given, is JSON.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: Method,
    pub path: &'a str,
    pub token: Option<&'a str>,
    pub body: Option<&'a [u8]>,
}

/// Where requests go, parsed once from the base URL.
#[derive(Debug)]
struct Origin {
    /// `host[:port]` as the URL gives it: the `Host` header.
    host: String,
    /// `host:port` to resolve and connect to.
    authority: String,
    /// The URL's path without a trailing `/` (a request's path is appended).
    base_path: String,
    /// `Some` for https: the name the server's certificate must carry.
    tls: Option<ServerName<'static>>,
}

impl Origin {
    fn parse(url: &str) -> Result<Origin, String> {
        let u = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let tls = match u.scheme() {
            "http" => false,
            "https" => true,
            s => return Err(format!("{url:?}: scheme {s}:// is not http:// or https://")),
        };
        if !u.username().is_empty() || u.password().is_some() {
            return Err(format!("{url:?}: credentials in the URL are not supported"));
        }
        let host = u.host().ok_or_else(|| format!("{url:?} names no host"))?;
        let port = u
            .port_or_known_default()
            .ok_or_else(|| format!("{url:?} names no port"))?;
        let host_str = match &host {
            url::Host::Ipv6(a) => format!("[{a}]"),
            h => h.to_string(),
        };
        let name = match host {
            url::Host::Domain(d) => ServerName::try_from(d.to_string())
                .map_err(|e| format!("{url:?}: {d:?} is not a TLS server name: {e}"))?,
            url::Host::Ipv4(a) => ServerName::IpAddress(IpAddr::V4(a).into()),
            url::Host::Ipv6(a) => ServerName::IpAddress(IpAddr::V6(a).into()),
        };
        Ok(Origin {
            host: match u.port() {
                Some(p) => format!("{host_str}:{p}"),
                None => host_str.clone(),
            },
            authority: format!("{host_str}:{port}"),
            base_path: u.path().trim_end_matches('/').to_string(),
            tls: tls.then_some(name),
        })
    }
}

/// One keep-alive connection and its buffers.
struct Conn {
    io: Transport,
    /// The answer being read (head, then body); the body is decoded from here.
    buf: Vec<u8>,
    /// The request being written.
    out: Vec<u8>,
    /// The request timeout's timer: made at the connection's first request, then moved later at
    /// each (an atomic compare-and-swap while it has not fired; the runtime's timer wheel moves
    /// it when its old time comes), rather than a timer made, entered in the wheel and taken
    /// out again for every request, as `tokio::time::timeout` does (2 % of the agent's CPU in
    /// the read mix, `bench/peers.py --perf`). An idle connection's timer may fire, waking the
    /// task that used it last once for nothing; the next request sets it anew.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The idle connections of one source address, most recently used last.
struct Pool {
    local: Option<IpAddr>,
    idle: Mutex<VecDeque<(Conn, Instant)>>,
}

impl Pool {
    /// The most recently used idle connection the server has not closed, if any.
    fn take(&self) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = self.idle.lock();
        while let Some((mut c, since)) = idle.pop_back() {
            if now.saturating_duration_since(since) < IDLE_TIMEOUT && c.still_open() {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, c: Conn) {
        let now = Instant::now();
        let mut idle = self.idle.lock();
        while idle
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back((c, now));
        }
    }
}

/// The head of an answer: what the caller sees and how its body is framed.
struct Head {
    status: u16,
    framing: Framing,
    keep_alive: bool,
    token: Option<String>,
}

#[derive(Clone, Copy)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// How reading an answer failed: before any byte of it (the request may not have been seen),
/// or after.
enum ReadError {
    ClosedBeforeAnswer,
    Failed(HttpError),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Failed(HttpError::Io(e))
    }
}

fn protocol(what: impl Into<String>) -> ReadError {
    ReadError::Failed(HttpError::Protocol(what.into()))
}

impl Conn {
    fn new(io: Transport) -> Conn {
        Conn {
            io,
            buf: Vec::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(512),
            timer: None,
        }
    }

    /// Whether an idle connection can take a request: not closed by the server, nothing unasked
    /// for in it. On a plain socket this reads the runtime's readiness flag, which costs no
    /// system call unless the socket became readable while idle.
    fn still_open(&mut self) -> bool {
        let Transport::Plain(tcp) = &self.io else {
            return true;
        };
        let mut cx = Context::from_waker(Waker::noop());
        match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: the end of the stream, stray bytes, or a stale flag from the last answer.
            Poll::Ready(Ok(())) => matches!(
                tcp.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Formats `req` into `out`. Fails on a path or token that would break the request line or a
    /// header (the caller's bug or a server's odd token; either way nothing is sent).
    fn write_request(&mut self, origin: &Origin, req: &Request<'_>) -> Result<(), HttpError> {
        let bad = |b: &u8| b.is_ascii_control() || *b == b' ';
        if req.path.bytes().any(|b| bad(&b)) || !req.path.starts_with('/') {
            return Err(HttpError::Protocol(format!(
                "refusing to send a request for path {:?}",
                req.path
            )));
        }
        if req.token.is_some_and(|t| t.bytes().any(|b| bad(&b))) {
            return Err(HttpError::Protocol(
                "refusing to send a session token with spaces or control characters".into(),
            ));
        }
        let out = &mut self.out;
        out.clear();
        for part in [
            req.method.as_str(),
            " ",
            &origin.base_path,
            req.path,
            " HTTP/1.1\r\nHost: ",
            &origin.host,
            concat!(
                "\r\nUser-Agent: loadtest-agent/",
                env!("CARGO_PKG_VERSION"),
                "\r\nAccept: application/json\r\n"
            ),
        ] {
            out.extend_from_slice(part.as_bytes());
        }
        if let Some(t) = req.token {
            out.extend_from_slice(b"Authorization: Bearer ");
            out.extend_from_slice(t.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let body = req.body.unwrap_or_default();
        if req.body.is_some() {
            out.extend_from_slice(b"Content-Type: application/json\r\n");
        }
        if req.body.is_some() || matches!(req.method, Method::Post | Method::Put) {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        Ok(())
    }

    async fn send(&mut self) -> io::Result<()> {
        self.io.io().write_all(&self.out).await?;
        if matches!(self.io, Transport::Tls(_)) {
            self.io.io().flush().await?;
        }
        Ok(())
    }

    /// Reads more of the answer; `false` at the end of the stream.
    async fn fill(&mut self) -> io::Result<bool> {
        self.buf.reserve(READ_CHUNK);
        Ok(self.io.io().read_buf(&mut self.buf).await? > 0)
    }

    /// Reads one answer. Its body is `buf[body]` afterwards; `keep_alive` in the head is
    /// cleared when the connection cannot take another request.
    async fn read_answer(&mut self, want_token: bool) -> Result<(Head, Range<usize>), ReadError> {
        self.buf.clear();
        let (mut head, start) = loop {
            if let Some(parsed) = parse_head(&self.buf, want_token)? {
                let (head, start) = parsed;
                if (100..200).contains(&head.status) {
                    // Interim answer (100 Continue, 103 Early Hints): the real one follows.
                    self.buf.drain(..start);
                    continue;
                }
                break (head, start);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(protocol(format!("an answer head over {MAX_HEAD} bytes")));
            }
            if !self.fill().await? {
                return Err(if self.buf.is_empty() {
                    ReadError::ClosedBeforeAnswer
                } else {
                    protocol("the server closed the connection in the middle of the answer head")
                });
            }
        };
        // `body` is where the body is in `buf`, `end` where the answer ends.
        let (body, end) = match head.framing {
            Framing::Empty => (start..start, start),
            Framing::Length(n) => {
                while self.buf.len() < start + n {
                    if !self.fill().await? {
                        return Err(protocol(format!(
                            "the server closed the connection after {} of the {n} body bytes it announced",
                            self.buf.len() - start
                        )));
                    }
                }
                (start..start + n, start + n)
            }
            Framing::Chunked => self.read_chunked(start).await?,
            Framing::UntilClose => {
                while self.fill().await? {
                    if self.buf.len() - start > MAX_BODY {
                        return Err(protocol(format!("a body over {MAX_BODY} bytes")));
                    }
                }
                (start..self.buf.len(), self.buf.len())
            }
        };
        // Bytes beyond the answer were not asked for: read no other answer after them.
        if self.buf.len() > end {
            head.keep_alive = false;
        }
        Ok((head, body))
    }

    /// Joins a chunked body in place, from `start`: each chunk's data moves down over the size
    /// lines before it. Returns the body's range and where the answer ends (trailers skipped).
    async fn read_chunked(&mut self, start: usize) -> Result<(Range<usize>, usize), ReadError> {
        let mut w = start;
        let mut r = start;
        loop {
            match httparse::parse_chunk_size(&self.buf[r..]) {
                Ok(httparse::Status::Complete((used, size))) => {
                    let size = usize::try_from(size)
                        .ok()
                        .filter(|s| w - start + s <= MAX_BODY)
                        .ok_or_else(|| protocol(format!("a body over {MAX_BODY} bytes")))?;
                    if size == 0 {
                        r += used;
                        break;
                    }
                    let end = r + used + size;
                    if self.buf.len() < end + 2 {
                        self.fill_or("the server closed the connection inside a chunk")
                            .await?;
                        continue;
                    }
                    if &self.buf[end..end + 2] != b"\r\n" {
                        return Err(protocol("a chunk not followed by CRLF"));
                    }
                    self.buf.copy_within(r + used..end, w);
                    w += size;
                    r = end + 2;
                }
                Ok(httparse::Status::Partial) => {
                    self.fill_or("the server closed the connection inside a chunked body")
                        .await?;
                }
                Err(_) => return Err(protocol("a chunk size that is not hexadecimal")),
            }
        }
        // Trailers: header lines up to an empty line.
        loop {
            match self.buf[r..].windows(2).position(|p| p == b"\r\n") {
                Some(0) => return Ok((start..w, r + 2)),
                Some(n) => r += n + 2,
                None => {
                    if self.buf.len() - r > MAX_HEAD {
                        return Err(protocol(format!("trailers over {MAX_HEAD} bytes")));
                    }
                    self.fill_or("the server closed the connection in the trailers")
                        .await?;
                }
            }
        }
    }

    async fn fill_or(&mut self, what: &'static str) -> Result<(), ReadError> {
        if self.fill().await? {
            Ok(())
        } else {
            Err(protocol(what))
        }
    }

    /// Gives back a buffer that one large answer grew.
    fn trim(&mut self) {
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::with_capacity(READ_CHUNK);
        }
        if self.out.capacity() > KEEP_BUFFER {
            self.out = Vec::with_capacity(512);
        }
    }
}

/// The head at the start of `b` if it is complete: the status, how the body is framed, whether
/// the connection may be reused, and the `Token` header when wanted.
fn parse_head(b: &[u8], want_token: bool) -> Result<Option<(Head, usize)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let start = match r.parse(b) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(protocol(format!("not an HTTP/1 answer: {e}"))),
    };
    let status = r.code.unwrap_or(0);
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut close = r.version == Some(0);
    let mut token = None;
    for h in r.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| protocol("a Content-Length that is not a number"))?;
            if length.is_some_and(|l| l != n) {
                return Err(protocol("two different Content-Lengths"));
            }
            if n > MAX_BODY {
                return Err(protocol(format!("a body of {n} bytes, over {MAX_BODY}")));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must be the last coding; anything else is read until the close.
            chunked = h
                .value
                .rsplit(|c| *c == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                close = true;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for opt in h.value.split(|c| *c == b',').map(<[u8]>::trim_ascii) {
                if opt.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if opt.eq_ignore_ascii_case(b"keep-alive") && r.version == Some(0) {
                    close = false;
                }
            }
        } else if want_token && name.eq_ignore_ascii_case("token") {
            token = std::str::from_utf8(h.value)
                .ok()
                .map(|t| t.trim().to_string());
        }
    }
    // No body, whatever the headers say: interim answers, 204 and 304 (RFC 9112 §6.3).
    let framing = if status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        close = true;
        Framing::UntilClose
    };
    Ok(Some((
        Head {
            status,
            framing,
            keep_alive: !close,
            token,
        },
        start,
    )))
}

/// An answer, read whole. Its connection goes back to the pool when this is dropped (unless the
/// server asked to close it).
pub struct Response<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    pub status: u16,
    /// The `Token` header, when the request asked for it.
    pub token: Option<String>,
    body: Range<usize>,
    reuse: bool,
}

impl Response<'_> {
    pub fn body(&self) -> &[u8] {
        self.conn
            .as_ref()
            .map_or(&[], |c| &c.buf[self.body.clone()])
    }
}

impl Drop for Response<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.conn.take() {
            if self.reuse {
                c.trim();
                self.pool.put(c);
            }
        }
    }
}

/// The client of one server: a pool of connections per load runtime and source address.
pub struct Client {
    origin: Origin,
    /// `sources` pools per load runtime, then `sources` for every other thread.
    pools: Vec<Pool>,
    sources: usize,
    shards: usize,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("origin", &self.origin)
            .field("pools", &self.pools.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Client {
    /// A client for the server at `url` (http or https; requests' paths are appended to its
    /// path). Connections are spread over `local_addrs` by slot (none: the system chooses), and
    /// kept apart for each of `shards` load runtimes.
    pub fn new(
        url: &str,
        timeout: Duration,
        local_addrs: &[IpAddr],
        shards: usize,
    ) -> Result<Client, String> {
        let origin = Origin::parse(url)?;
        let locals: Vec<Option<IpAddr>> = if local_addrs.is_empty() {
            vec![None]
        } else {
            local_addrs.iter().copied().map(Some).collect()
        };
        let pools = (0..=shards)
            .flat_map(|_| locals.iter())
            .map(|&local| Pool {
                local,
                idle: Mutex::new(VecDeque::new()),
            })
            .collect();
        Ok(Client {
            origin,
            pools,
            sources: locals.len(),
            shards,
            timeout,
        })
    }

    /// The pool of source address `slot` (modulo their number) for the calling thread.
    fn pool(&self, slot: usize) -> &Pool {
        let runtime = crate::shards::current()
            .filter(|&s| s < self.shards)
            .unwrap_or(self.shards);
        &self.pools[runtime * self.sources + slot % self.sources]
    }

    /// The path requests are sent under (the base URL's path).
    pub fn base_path(&self) -> &str {
        &self.origin.base_path
    }

    /// Sends `req` over a connection of source address `slot` (modulo their number) of the
    /// calling thread's pools and reads the answer, all within the timeout. `want_token` keeps the `Token` header.
    pub async fn send(
        &self,
        slot: usize,
        req: Request<'_>,
        want_token: bool,
    ) -> Result<Response<'_>, HttpError> {
        let pool = self.pool(slot);
        let deadline = Instant::now() + self.timeout;
        self.exchange(pool, req, want_token, deadline).await
    }

    async fn exchange<'a>(
        &'a self,
        pool: &'a Pool,
        req: Request<'_>,
        want_token: bool,
        deadline: Instant,
    ) -> Result<Response<'a>, HttpError> {
        let timed_out = || HttpError::Timeout(self.timeout);
        let mut retried = false;
        loop {
            let (mut conn, reused) = match pool.take() {
                Some(c) => (c, !retried),
                // Boxed: opening (TLS included) is most of this future's size, and rare.
                None => {
                    let open = Box::pin(self.open(pool.local));
                    let open = tokio::time::timeout_at(deadline, open).await;
                    (open.map_err(|_| timed_out())??, false)
                }
            };
            conn.write_request(&self.origin, &req)?;
            let mut timer = conn
                .timer
                .take()
                .unwrap_or_else(|| Box::pin(tokio::time::sleep_until(deadline)));
            timer.as_mut().reset(deadline);
            // The timer is polled outside the task's budget, as `tokio::time::timeout` polls
            // its own: an answer that keeps arriving (a huge body, endless `1xx` heads) spends
            // the budget, and must not keep the deadline from being seen.
            let sent = tokio::select! {
                biased;
                sent = conn.send() => sent,
                () = tokio::task::unconstrained(timer.as_mut()) => return Err(timed_out()),
            };
            if let Err(e) = sent {
                // The server closed a kept connection: the request did not reach it whole.
                if reused {
                    retried = true;
                    continue;
                }
                return Err(HttpError::Io(e));
            }
            let answer = tokio::select! {
                biased;
                answer = conn.read_answer(want_token) => answer,
                () = tokio::task::unconstrained(timer.as_mut()) => return Err(timed_out()),
            };
            conn.timer = Some(timer);
            match answer {
                Ok((head, body)) => {
                    return Ok(Response {
                        pool,
                        status: head.status,
                        token: head.token,
                        reuse: head.keep_alive,
                        body,
                        conn: Some(conn),
                    });
                }
                Err(ReadError::ClosedBeforeAnswer) if reused && req.method.idempotent() => {
                    retried = true;
                }
                Err(ReadError::ClosedBeforeAnswer) => {
                    return Err(HttpError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection without answering",
                    )))
                }
                Err(ReadError::Failed(e)) => return Err(e),
            }
        }
    }

    /// A new connection from `local`: TCP, then TLS for https.
    async fn open(&self, local: Option<IpAddr>) -> Result<Conn, HttpError> {
        let connect_err = |source| HttpError::Connect {
            addr: self.origin.authority.clone(),
            source,
        };
        let addr: SocketAddr = tokio::net::lookup_host(self.origin.authority.as_str())
            .await
            .map_err(connect_err)?
            .next()
            .ok_or_else(|| {
                connect_err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the name has no address",
                ))
            })?;
        let tcp = connect_tcp(addr, local).await.map_err(connect_err)?;
        let io = match &self.origin.tls {
            None => Transport::Plain(tcp),
            Some(name) => Transport::Tls(Box::new(
                tls_connector()
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(connect_err)?,
            )),
        };
        Ok(Conn::new(io))
    }

    /// Idle connections held, over all source addresses.
    pub fn idle_connections(&self) -> usize {
        self.pools.iter().map(|p| p.idle.lock().len()).sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Reads one request (head and `Content-Length` body) from `s`; `None` at the end of the
    /// stream. `pending` keeps bytes that arrived beyond it.
    pub(crate) async fn read_request(s: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
        loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().expect("length"));
                let total = end + 4 + len;
                while pending.len() < total {
                    if s.read_buf(pending).await.ok()? == 0 {
                        return None;
                    }
                }
                return Some(pending.drain(..total).collect());
            }
            if s.read_buf(pending).await.ok()? == 0 {
                return None;
            }
        }
    }

    /// A server on 127.0.0.1:0 that runs `serve(connection number, stream)` for every connection
    /// it accepts; returns its URL and the number of connections accepted so far.
    async fn server<F, Fut>(serve: F) -> (String, Arc<AtomicUsize>)
    where
        F: Fn(usize, TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/base", l.local_addr().expect("addr"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(n, s));
            }
        });
        (url, accepted)
    }

    fn client(url: &str) -> Client {
        Client::new(url, Duration::from_secs(5), &[], 1).expect("client")
    }

    fn get(path: &str) -> Request<'_> {
        Request {
            method: Method::Get,
            path,
            token: Some("tok123"),
            body: None,
        }
    }

    async fn body_of(c: &Client, req: Request<'_>) -> Result<(u16, String), HttpError> {
        let r = c.send(0, req, false).await?;
        Ok((r.status, String::from_utf8_lossy(r.body()).into_owned()))
    }

    /// The request as written: the base path before the request's own, Host, the bearer token,
    /// a JSON body with its length, an empty POST with `Content-Length: 0`.
    #[tokio::test]
    async fn requests_carry_the_base_path_host_token_and_body_length() {
        let (url, _) = server(|_, mut s| async move {
            let mut pending = Vec::new();
            while let Some(req) = read_request(&mut s, &mut pending).await {
                let body = String::from_utf8_lossy(&req).replace("\r\n", "|");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(answer.as_bytes()).await.expect("write");
            }
        })
        .await;
        let c = client(&url);
        let host = url.trim_start_matches("http://").trim_end_matches("/base");
        let (_, echoed) = body_of(&c, get("/users/me?x=1")).await.expect("get");
        assert!(
            echoed.starts_with(&format!(
                "GET /base/users/me?x=1 HTTP/1.1|Host: {host}|User-Agent: loadtest-agent/"
            )),
            "{echoed}"
        );
        assert!(
            echoed.contains("|Authorization: Bearer tok123|"),
            "{echoed}"
        );
        assert!(!echoed.contains("Content-Length"), "{echoed}");
        let post = Request {
            method: Method::Post,
            path: "/posts",
            token: None,
            body: Some(br#"{"a":1}"#),
        };
        let (_, echoed) = body_of(&c, post).await.expect("post");
        assert!(echoed.starts_with("POST /base/posts HTTP/1.1|"), "{echoed}");
        assert!(
            echoed.ends_with(r#"|Content-Type: application/json|Content-Length: 7||{"a":1}"#),
            "{echoed}"
        );
        assert!(!echoed.contains("Authorization"), "{echoed}");
        let empty = Request {
            method: Method::Post,
            path: "/users/logout",
            token: Some("t"),
            body: None,
        };
        let (_, echoed) = body_of(&c, empty).await.expect("post");
        assert!(echoed.ends_with("|Content-Length: 0||"), "{echoed}");
    }

    #[tokio::test]
    async fn a_path_or_token_that_would_break_the_request_is_not_sent() {
        let (url, accepted) = server(|_, _| async {}).await;
        let c = client(&url);
        for path in ["/a b", "/a\r\nX: y", "relative"] {
            let e = body_of(&c, get(path)).await.expect_err(path);
            assert!(e.to_string().contains("refusing to send"), "{e}");
        }
        let req = Request {
            token: Some("t\r\nX-Injected: 1"),
            ..get("/ok")
        };
        let e = body_of(&c, req).await.expect_err("token");
        assert!(e.to_string().contains("session token"), "{e}");
        // A connection may have been opened for them, but nothing was written to it.
        assert!(accepted.load(Ordering::SeqCst) <= 4);
    }

    /// Every way a body may be framed, over one kept connection: a length, chunks split across
    /// writes (with an extension and trailers), an interim 100 answer, a 204; then a body that
    /// ends with the connection, after which the next request opens a new one.
    #[tokio::test]
    async fn bodies_of_every_framing_are_read_whole_and_the_connection_kept() {
        let (url, accepted) = server(|_, mut s| async move {
            let mut pending = Vec::new();
            let mut n = 0;
            while read_request(&mut s, &mut pending).await.is_some() {
                n += 1;
                let parts: Vec<&[u8]> = match n {
                    1 => vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"],
                    2 => vec![
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nchun",
                        b"\r\n",
                        b"7\r\nked bod\r\n1\r\ny\r\n0\r\nX-Trailer: 1\r\n",
                        b"\r\n",
                    ],
                    3 => vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"],
                    4 => vec![b"HTTP/1.1 204 No Content\r\n\r\n"],
                    _ => vec![b"HTTP/1.1 200 OK\r\n\r\nuntil the ", b"end"],
                };
                for p in parts {
                    s.write_all(p).await.expect("write");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if n == 5 {
                    return;
                }
            }
        })
        .await;
        let c = client(&url);
        let want = [
            (200, "hello"),
            (200, "chunked body"),
            (201, "ok"),
            (204, ""),
            (200, "until the end"),
        ];
        for (i, (status, body)) in want.iter().enumerate() {
            let got = body_of(&c, get("/x")).await.expect("answer");
            assert_eq!(got, (*status, body.to_string()), "answer {}", i + 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one kept connection");
        assert_eq!(
            c.idle_connections(),
            0,
            "a body ended by the close is not reused"
        );
        let _ = body_of(&c, get("/x")).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// `Connection: close` and HTTP/1.0 answers are not reused; HTTP/1.0 with keep-alive is.
    #[tokio::test]
    async fn the_server_decides_whether_a_connection_is_kept() {
        let (url, accepted) = server(|n, mut s| async move {
            let mut pending = Vec::new();
            while read_request(&mut s, &mut pending).await.is_some() {
                let a: &[u8] = match n {
                    0 => b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na",
                    1 => b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb",
                    _ => b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\nc",
                };
                s.write_all(a).await.expect("write");
            }
        })
        .await;
        let c = client(&url);
        for want in ["a", "b", "c", "c"] {
            let (_, got) = body_of(&c, get("/x")).await.expect("answer");
            assert_eq!(got, want);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(c.idle_connections(), 1);
    }

    /// An idle connection the server closed is noticed and not used; a kept connection that
    /// dies under a request (read, then closed without an answer) costs a GET nothing, since it
    /// goes again over a new connection, but fails a POST, which may have been carried out.
    #[tokio::test]
    async fn dead_kept_connections_are_replaced_and_only_repeatable_requests_resent() {
        // Mode 0: answer once, then close. Mode 1: answer once, then read a request and close.
        let mode = Arc::new(AtomicUsize::new(0));
        let m = mode.clone();
        let (url, accepted) = server(move |_, mut s| {
            let m = m.clone();
            async move {
                let mut pending = Vec::new();
                if read_request(&mut s, &mut pending).await.is_none() {
                    return;
                }
                let a = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                s.write_all(a).await.expect("write");
                if m.load(Ordering::SeqCst) == 1 {
                    let _ = read_request(&mut s, &mut pending).await;
                }
            }
        })
        .await;
        let c = client(&url);
        body_of(&c, get("/x")).await.expect("first");
        // Let the server's close arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        body_of(&c, get("/x")).await.expect("over a new connection");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        mode.store(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        body_of(&c, get("/x")).await.expect("third connection");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        let got = body_of(&c, get("/x")).await.expect("resent once");
        assert_eq!(got, (200, "ok".into()));
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        let post = Request {
            method: Method::Post,
            path: "/posts",
            token: None,
            body: Some(b"{}"),
        };
        let e = body_of(&c, post).await.expect_err("a POST is not resent");
        assert!(matches!(e, HttpError::Io(_)), "{e}");
        assert!(e.to_string().contains("without answering"), "{e}");
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn bad_answers_name_what_was_wrong() {
        let answers: [&[u8]; 5] = [
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ];
        let want = [
            "not an HTTP/1 answer",
            "Content-Length that is not a number",
            "after 5 of the 10 body bytes",
            "chunk size that is not hexadecimal",
            "two different Content-Lengths",
        ];
        for (a, w) in answers.iter().zip(want) {
            let a = a.to_vec();
            let (url, _) = server(move |_, mut s| {
                let a = a.clone();
                async move {
                    let mut pending = Vec::new();
                    let _ = read_request(&mut s, &mut pending).await;
                    let _ = s.write_all(&a).await;
                }
            })
            .await;
            let e = body_of(&client(&url), get("/x")).await.expect_err(w);
            assert!(matches!(e, HttpError::Protocol(_)), "{w}: {e}");
            assert!(e.to_string().contains(w), "{w}: {e}");
        }
    }

    #[tokio::test]
    async fn no_answer_within_the_timeout_is_a_timeout_and_nobody_listening_a_connect_error() {
        let (url, _) = server(|_, mut s| async move {
            let mut pending = Vec::new();
            let _ = read_request(&mut s, &mut pending).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;
        let c = Client::new(&url, Duration::from_millis(100), &[], 1).expect("client");
        let e = body_of(&c, get("/x")).await.expect_err("silent server");
        assert!(matches!(e, HttpError::Timeout(_)), "{e}");

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let c = client(&format!("http://127.0.0.1:{port}"));
        let e = body_of(&c, get("/x")).await.expect_err("nobody listens");
        assert!(matches!(e, HttpError::Connect { .. }), "{e}");
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    }

    /// A kept connection's one timer (`Conn::timer`) times each request from its own start: it
    /// is moved later for every request, set anew after it fired while the connection was
    /// idle, and still ends a request the server does not answer.
    #[tokio::test]
    async fn each_request_on_a_kept_connection_has_a_timeout_of_its_own() {
        let (url, accepted) = server(|_, mut s| async move {
            let mut pending = Vec::new();
            while let Some(req) = read_request(&mut s, &mut pending).await {
                if req.starts_with(b"GET /base/slow ") {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                let a = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
                s.write_all(a).await.expect("write");
            }
        })
        .await;
        let timeout = Duration::from_millis(150);
        let c = Client::new(&url, timeout, &[], 1).expect("client");
        let ok = |r: Result<(u16, String), HttpError>| r.map(|(status, _)| status);
        // Requests 60 ms apart for longer than the timeout: each has its own.
        for _ in 0..6 {
            assert_eq!(ok(body_of(&c, get("/fast")).await).expect("fast"), 200);
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        // Idle past the timeout: the timer fired with nobody waiting on it.
        tokio::time::sleep(timeout * 3).await;
        assert_eq!(
            ok(body_of(&c, get("/fast")).await).expect("after idle"),
            200
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one kept connection");

        let started = Instant::now();
        let e = body_of(&c, get("/slow")).await.expect_err("no answer");
        assert!(matches!(e, HttpError::Timeout(_)), "{e}");
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
        // The connection the request died on is not reused.
        assert_eq!(
            ok(body_of(&c, get("/fast")).await).expect("new connection"),
            200
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_token_header_is_kept_when_asked_for() {
        let (url, _) = server(|_, mut s| async move {
            let mut pending = Vec::new();
            while read_request(&mut s, &mut pending).await.is_some() {
                let a = b"HTTP/1.1 200 OK\r\ntoken: abc\r\nContent-Length: 2\r\n\r\n{}";
                s.write_all(a).await.expect("write");
            }
        })
        .await;
        let c = client(&url);
        let r = c.send(0, get("/login"), true).await.expect("answer");
        assert_eq!(r.token.as_deref(), Some("abc"));
        drop(r);
        let r = c.send(0, get("/login"), false).await.expect("answer");
        assert_eq!(r.token, None);
    }

    #[test]
    fn base_urls_parse_into_host_authority_and_path() {
        let o = Origin::parse("http://127.0.0.1:8065/prefix/api/v4").expect("url");
        assert_eq!(
            (o.host.as_str(), o.authority.as_str(), o.base_path.as_str()),
            ("127.0.0.1:8065", "127.0.0.1:8065", "/prefix/api/v4")
        );
        assert!(o.tls.is_none());
        let o = Origin::parse("https://chat.example.com/").expect("url");
        assert_eq!(
            (o.host.as_str(), o.authority.as_str(), o.base_path.as_str()),
            ("chat.example.com", "chat.example.com:443", "")
        );
        assert!(o.tls.is_some());
        let o = Origin::parse("http://[::1]:9/x").expect("url");
        assert_eq!(
            (o.host.as_str(), o.authority.as_str()),
            ("[::1]:9", "[::1]:9")
        );
        for bad in ["chat.example.com", "ws://h/", "http://u:p@h/"] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }
}
