//! The WebSocket side of a simulated user: connect (optionally from a chosen source address),
//! authenticate with Mattermost's `authentication_challenge`, resume with `connection_id` +
//! `sequence_number`, and parse the frames a user cares about.
//!
//! The HTTP upgrade is done here and the framing after it by [`crate::wsconn`], so that an idle
//! user's socket holds no read buffer: library connections keep kilobytes per socket for as long
//! as it is open, which 30,000 users multiply.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::frame::{parse_frame, Frame};
use crate::net::{connect_tcp, tls_connector, Io, Transport};
use crate::wsconn::WsConn;

/// One authenticated WebSocket.
pub type Ws = WsConn;

/// Host name of a `wss://host[:port]/path` URL, for TLS server name indication and checking.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next();
    }
    authority.split(':').next().filter(|h| !h.is_empty())
}

/// Why a WebSocket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("authentication refused: {0}")]
    Auth(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unsupported URL {0}: use ws:// or wss://")]
    Unsupported(String),
}

impl WsError {
    pub fn class(&self) -> loadtest_contract::results::ErrorClass {
        use loadtest_contract::results::ErrorClass;
        match self {
            WsError::Connect(_) => ErrorClass::Connect,
            WsError::Timeout(_) => ErrorClass::Timeout,
            WsError::Handshake(_) | WsError::Auth(_) | WsError::Unsupported(_) => {
                ErrorClass::Protocol
            }
        }
    }
}

/// Where WebSockets go: the URL (for the handshake's Host and path) and its resolved address.
#[derive(Clone, Debug)]
pub struct WsTarget {
    pub url: String,
    pub addr: SocketAddr,
    pub timeout: Duration,
}

/// Resume point of a dropped connection.
#[derive(Clone, Debug)]
pub struct Resume {
    pub connection_id: String,
    /// The next sequence number expected (last received + 1).
    pub sequence_number: u64,
}

/// Frames received before the authentication reply (normally none) are returned, as the text
/// they came as, so the caller can process them in order.
pub struct Connected {
    pub ws: Ws,
    pub early: Vec<Vec<u8>>,
    /// Client sequence number to use for the next action frame.
    pub next_client_seq: u64,
}

/// Opens, upgrades and authenticates a WebSocket. Returns once the server accepted the token.
pub async fn connect(
    target: &WsTarget,
    local: Option<IpAddr>,
    token: &str,
    resume: Option<&Resume>,
) -> Result<Connected, WsError> {
    tokio::time::timeout(target.timeout, connect_inner(target, local, token, resume))
        .await
        .map_err(|_| WsError::Timeout(target.timeout))?
}

async fn connect_inner(
    target: &WsTarget,
    local: Option<IpAddr>,
    token: &str,
    resume: Option<&Resume>,
) -> Result<Connected, WsError> {
    if !(target.url.starts_with("ws://") || target.url.starts_with("wss://")) {
        return Err(WsError::Unsupported(target.url.clone()));
    }
    let url = match resume {
        Some(r) => format!(
            "{}?connection_id={}&sequence_number={}",
            target.url, r.connection_id, r.sequence_number
        ),
        None => target.url.clone(),
    };
    let request = url
        .as_str()
        .into_client_request()
        .map_err(|e| WsError::Handshake(e.to_string()))?;
    let tcp = connect_tcp(target.addr, local).await?;
    let mut stream = if target.url.starts_with("wss://") {
        let host = url_host(&target.url).ok_or_else(|| WsError::Unsupported(target.url.clone()))?;
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| WsError::Handshake(format!("bad TLS server name {host:?}: {e}")))?;
        let tls = tls_connector()
            .connect(name, tcp)
            .await
            .map_err(|e| WsError::Handshake(format!("TLS: {e}")))?;
        Transport::Tls(Box::new(tls))
    } else {
        Transport::Plain(tcp)
    };
    let part = upgrade(stream.io(), &request).await?;
    let mut ws = WsConn::new(stream, part);
    let challenge = serde_json::json!({
        "seq": 1,
        "action": "authentication_challenge",
        "data": {"token": token},
    });
    ws.send_text(&challenge.to_string())
        .await
        .map_err(|e| WsError::Handshake(e.to_string()))?;
    let mut early = Vec::new();
    loop {
        let text = ws
            .recv(|b| b.to_vec())
            .await
            .map_err(|e| WsError::Handshake(e.to_string()))?
            .ok_or_else(|| WsError::Auth("connection closed before the reply".into()))?;
        let frame =
            parse_frame(&text).map_err(|e| WsError::Handshake(format!("unexpected frame: {e}")))?;
        if frame.seq_reply == Some(1) {
            if frame.status.as_deref() == Some("OK") {
                return Ok(Connected {
                    ws,
                    early,
                    next_client_seq: 2,
                });
            }
            return Err(WsError::Auth(
                String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned(),
            ));
        }
        // Servers that authenticate before answering may already send hello; keep it.
        if early.len() < 64 {
            early.push(text);
        }
    }
}

/// Longest upgrade response read before giving up on the server.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// The client's HTTP upgrade (RFC 6455 §4.1), done here rather than by tungstenite: its
/// handshake reads into a 4 KiB buffer that the WebSocket then keeps as its read buffer for as
/// long as it is open, 4 KiB of every user (heap profile in BENCHMARKS.md). Returns what the
/// server sent after its response head (frames may follow the `101` at once).
async fn upgrade(
    stream: &mut dyn Io,
    request: &tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<Vec<u8>, WsError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = request
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec())
        .ok_or_else(|| WsError::Handshake("no Sec-WebSocket-Key in the request".into()))?;
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut head = format!("GET {target} HTTP/1.1\r\n").into_bytes();
    for (name, value) in request.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    stream.write_all(&head).await?;
    stream.flush().await?;
    let mut got = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(WsError::Handshake(
                "the server closed the connection before answering the upgrade".into(),
            ));
        }
        got.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&got) {
            Ok(httparse::Status::Complete(len)) => {
                check_upgrade(&response, &key)?;
                return Ok(got[len..].to_vec());
            }
            Ok(httparse::Status::Partial) if got.len() < MAX_RESPONSE_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(WsError::Handshake(format!(
                    "the upgrade response head is over {MAX_RESPONSE_HEAD} bytes"
                )))
            }
            Err(e) => {
                return Err(WsError::Handshake(format!(
                    "the upgrade response is not HTTP: {e}"
                )))
            }
        }
    }
}

/// A `101 Switching Protocols` that accepts our key, or why not.
fn check_upgrade(response: &httparse::Response<'_, '_>, key: &[u8]) -> Result<(), WsError> {
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let code = response.code.unwrap_or(0);
    if code != 101 {
        return Err(WsError::Handshake(format!(
            "HTTP error: {code} {} (the server refused the WebSocket upgrade)",
            response.reason.unwrap_or("")
        )));
    }
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err(WsError::Handshake(
            "the 101 response has no `Upgrade: websocket`".into(),
        ));
    }
    let expected = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
    if header("sec-websocket-accept").as_deref() != Some(expected.as_str()) {
        return Err(WsError::Handshake(
            "the server's Sec-WebSocket-Accept does not match our key".into(),
        ));
    }
    Ok(())
}

/// The `user_typing` action frame.
pub fn typing_frame(seq: u64, channel_id: &str, parent_id: &str) -> String {
    let v = serde_json::json!({
        "action": "user_typing",
        "seq": seq,
        "data": {"channel_id": channel_id, "parent_id": parent_id},
    });
    v.to_string()
}

/// Per-connection event sequence tracking: Mattermost numbers events contiguously per
/// connection, so a jump means events were lost and a repeat means a duplicate.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    pub connection_id: Option<String>,
    /// Next expected event sequence number.
    pub expected: u64,
    /// Events skipped (gaps) since the tracker was created.
    pub gaps: u64,
    /// Events seen twice.
    pub repeats: u64,
}

/// What an event meant for the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum SeqOutcome {
    /// A fresh `hello`: `resumed` is false when it replaced an earlier connection id (the server
    /// could not fill the gap).
    Hello {
        new_connection: bool,
    },
    InOrder,
    Gap(u64),
    Repeat,
    /// A frame without `seq` (replies).
    Unnumbered,
}

impl SeqTracker {
    pub fn observe(&mut self, frame: &Frame) -> SeqOutcome {
        if frame.event.as_deref() == Some("hello") {
            let id = frame
                .data
                .as_ref()
                .and_then(|d| d.connection_id.as_deref())
                .map(str::to_owned);
            let new_connection = self.connection_id.is_some() && id != self.connection_id;
            self.connection_id = id;
            self.expected = frame.seq.unwrap_or(0) + 1;
            return SeqOutcome::Hello { new_connection };
        }
        let Some(seq) = frame.seq else {
            return SeqOutcome::Unnumbered;
        };
        if seq == self.expected {
            self.expected += 1;
            SeqOutcome::InOrder
        } else if seq > self.expected {
            let gap = seq - self.expected;
            self.gaps += gap;
            self.expected = seq + 1;
            SeqOutcome::Gap(gap)
        } else {
            self.repeats += 1;
            SeqOutcome::Repeat
        }
    }

    pub fn resume(&self) -> Option<Resume> {
        self.connection_id.as_ref().map(|id| Resume {
            connection_id: id.clone(),
            sequence_number: self.expected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Frame<'_> {
        parse_frame(text.as_bytes()).expect("frame")
    }

    /// Runs our upgrade against a scripted server on an in-memory pipe: it reads the request,
    /// answers with `respond(key)` and returns the request it read.
    async fn upgrade_against(
        respond: impl FnOnce(&str) -> Vec<u8> + Send + 'static,
    ) -> (Result<Vec<u8>, WsError>, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut server) = tokio::io::duplex(4096);
        let served = tokio::spawn(async move {
            let mut req = Vec::new();
            let mut b = [0u8; 256];
            while !req.ends_with(b"\r\n\r\n") {
                let n = server.read(&mut b).await.expect("read request");
                assert!(n > 0, "request cut short");
                req.extend_from_slice(&b[..n]);
            }
            let req = String::from_utf8(req).expect("utf-8 request");
            let key = req
                .lines()
                .find_map(|l| l.strip_prefix("sec-websocket-key: "))
                .expect("a key")
                .to_string();
            server.write_all(&respond(&key)).await.expect("respond");
            req
        });
        let request = "ws://127.0.0.1:1/api/v4/websocket?connection_id=c1&sequence_number=7"
            .into_client_request()
            .expect("request");
        let mut stream = client;
        let got = upgrade(&mut stream, &request).await;
        (got, served.await.expect("server"))
    }

    #[tokio::test]
    async fn the_upgrade_keeps_what_follows_the_101_and_checks_the_key() {
        let (got, req) = upgrade_against(|key| {
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes()
            .into_iter()
            .chain(*b"\x81\x02hi")
            .collect()
        })
        .await;
        assert_eq!(got.expect("upgraded"), b"\x81\x02hi");
        assert!(
            req.starts_with(
                "GET /api/v4/websocket?connection_id=c1&sequence_number=7 HTTP/1.1\r\n"
            ),
            "{req}"
        );
        assert!(req.contains("sec-websocket-version: 13\r\n"), "{req}");
        assert!(req.contains("host: 127.0.0.1:1\r\n"), "{req}");

        let (got, _) = upgrade_against(|_| {
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\r\n"
                .to_vec()
        })
        .await;
        assert!(
            matches!(got, Err(WsError::Handshake(ref m)) if m.contains("Sec-WebSocket-Accept")),
            "{:?}",
            got.err()
        );
    }

    #[tokio::test]
    async fn a_refused_upgrade_names_the_status() {
        let (got, _) =
            upgrade_against(|_| b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_vec())
                .await;
        assert!(
            matches!(got, Err(WsError::Handshake(ref m)) if m.starts_with("HTTP error: 401 Unauthorized")),
            "{:?}",
            got.err()
        );
        let (got, _) = upgrade_against(|_| b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec()).await;
        assert!(
            matches!(got, Err(WsError::Handshake(ref m)) if m.contains("not HTTP")),
            "{:?}",
            got.err()
        );
    }

    #[test]
    fn tls_server_name_comes_from_the_url() {
        assert_eq!(
            url_host("wss://chat.example.com/api/v4/websocket"),
            Some("chat.example.com")
        );
        assert_eq!(
            url_host("wss://chat.example.com:8443/api/v4/websocket"),
            Some("chat.example.com")
        );
        assert_eq!(url_host("wss://[::1]:8443/x"), Some("::1"));
        assert_eq!(url_host("wss://u@h:1/x"), Some("h"));
        assert_eq!(url_host("wss:///x"), None);
        let _ = tls_connector();
    }

    #[tokio::test]
    async fn wss_to_a_plain_server_is_a_handshake_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // A server that answers the TLS ClientHello with plain HTTP.
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let target = WsTarget {
            url: "wss://localhost/api/v4/websocket".into(),
            addr,
            timeout: Duration::from_secs(5),
        };
        let err = connect(&target, None, "t", None)
            .await
            .err()
            .expect("must fail");
        assert!(
            matches!(err, WsError::Handshake(ref m) if m.starts_with("TLS")),
            "{err}"
        );
    }

    #[test]
    fn sequence_tracking_sees_gaps_repeats_and_new_hellos() {
        let mut t = SeqTracker::default();
        let hello =
            |id: &str| format!(r#"{{"event":"hello","seq":0,"data":{{"connection_id":"{id}"}}}}"#);
        assert_eq!(
            t.observe(&frame(&hello("c1"))),
            SeqOutcome::Hello {
                new_connection: false
            }
        );
        assert_eq!(
            t.observe(&frame(r#"{"event":"x","seq":1}"#)),
            SeqOutcome::InOrder
        );
        assert_eq!(
            t.observe(&frame(r#"{"event":"x","seq":4}"#)),
            SeqOutcome::Gap(2)
        );
        assert_eq!(
            t.observe(&frame(r#"{"event":"x","seq":2}"#)),
            SeqOutcome::Repeat
        );
        assert_eq!(
            t.observe(&frame(r#"{"status":"OK","seq_reply":2}"#)),
            SeqOutcome::Unnumbered
        );
        let r = t.resume().expect("resume point");
        assert_eq!((r.connection_id.as_str(), r.sequence_number), ("c1", 5));
        assert_eq!(
            t.observe(&frame(&hello("c2"))),
            SeqOutcome::Hello {
                new_connection: true
            }
        );
    }
}
