//! Operating-system plumbing for many sockets: raising `RLIMIT_NOFILE` so tens of thousands of
//! WebSockets fit, and spreading connections over several local source addresses because one
//! source/destination address pair only has ~28,000 loopback ephemeral ports.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

/// Why the process cannot hold the sockets a run needs.
#[derive(Debug, thiserror::Error)]
#[error("this run needs about {needed} open files but the limit is {soft} (hard {hard}); run `ulimit -n {needed}` (as root if the hard limit is lower) and start again")]
pub struct FdLimitError {
    pub needed: u64,
    pub soft: u64,
    pub hard: u64,
}

/// File descriptors a run with `users` simulated users needs: one WebSocket each, pooled HTTP
/// connections (bounded by the requests in flight: users act every few seconds at most, so an
/// eighth of the users is generous) and headroom for the runtime and the control API.
pub fn fds_needed(users: u64) -> u64 {
    users
        .saturating_add((users / 8).max(256))
        .saturating_add(64)
}

/// Raises the soft (and, when permitted, hard) open-file limit to at least `needed`. Returns the
/// limit now in force, or an error that says which `ulimit` command to run.
pub fn raise_nofile(needed: u64) -> Result<u64, FdLimitError> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|_| FdLimitError {
        needed,
        soft: 0,
        hard: 0,
    })?;
    if soft >= needed {
        return Ok(soft);
    }
    // Take everything the hard limit allows (bursts of reconnects and requests need slack), and
    // when even that is short try raising the hard limit (possible with CAP_SYS_RESOURCE).
    if needed <= hard {
        if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            return Ok(hard);
        }
    } else if setrlimit(Resource::RLIMIT_NOFILE, needed, needed).is_ok() {
        return Ok(needed);
    }
    Err(FdLimitError { needed, soft, hard })
}

/// Memory one simulated user may need at most (measured steady: about 20 KiB; setup and
/// reconnect bursts add to it).
pub const BYTES_PER_USER: u64 = 32 * 1024;

/// Whether this process can hold `users` simulated users: memory (`MemAvailable` against
/// [`BYTES_PER_USER`] each) and open files (raising the limit if it may). The error says how
/// many it can hold and what to do; checked before anything is allocated per user.
pub fn check_capacity(users: u64) -> Result<(), String> {
    if let Some(avail) = mem_available() {
        let fit = avail / BYTES_PER_USER;
        if users > fit {
            return Err(format!(
                "this agent can hold about {fit} simulated users in its available memory ({} MiB at {} KiB each), not {users}: spread the users over more agents or give this one more memory",
                avail >> 20,
                BYTES_PER_USER >> 10
            ));
        }
    }
    raise_nofile(fds_needed(users)).map(|_| ()).map_err(|e| {
        format!("cannot hold {users} simulated users: {e}; or spread them over more agents")
    })
}

/// `MemAvailable` of /proc/meminfo in bytes (Linux), if readable.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Source addresses to bind outgoing sockets to, handed out round-robin. Empty means "let the OS
/// choose", which is right until one address pair's ports run out.
#[derive(Debug, Default)]
pub struct SourceAddrs {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl SourceAddrs {
    pub fn new(addrs: Vec<IpAddr>) -> Self {
        Self {
            addrs,
            next: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    pub fn all(&self) -> &[IpAddr] {
        &self.addrs
    }

    /// The next address in rotation, or `None` when no addresses are configured.
    pub fn pick(&self) -> Option<IpAddr> {
        if self.addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len();
        Some(self.addrs[i])
    }

    /// Index of the address (or 0) for slot `n`: used to choose one of the pooled HTTP clients.
    pub fn slot(&self, n: usize) -> usize {
        if self.addrs.is_empty() {
            0
        } else {
            n % self.addrs.len()
        }
    }
}

/// A byte stream of a connection: a plain TCP stream, or rustls for `https://` and `wss://`.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The stream under a connection. TLS is boxed: a rustls connection is kilobytes and a plain
/// user should not carry its space.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Transport {
    /// The stream as bytes in and out (for the upgrade and for writes).
    pub fn io(&mut self) -> &mut dyn Io {
        match self {
            Transport::Plain(t) => t,
            Transport::Tls(t) => &mut **t,
        }
    }
}

/// rustls client configuration with the web PKI roots, built once per process. The crypto
/// provider is named (ring) rather than taken from rustls's process default, which panics when a
/// build enables more than one provider (a workspace build also compiles the AWS SDK's).
pub fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONFIG: std::sync::OnceLock<std::sync::Arc<tokio_rustls::rustls::ClientConfig>> =
        std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = tokio_rustls::rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        std::sync::Arc::new(
            tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports rustls's default protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    });
    tokio_rustls::TlsConnector::from(config.clone())
}

/// Connects to `target`, first binding the socket to `local` when given so the connection uses
/// that source address's port range.
pub async fn connect_tcp(target: SocketAddr, local: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = local {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(target).await?;
    // Small interactive frames: do not let Nagle delay them (it would show up as latency).
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Resolves `host:port` of an http(s)/ws(s) URL to one socket address.
pub async fn resolve_url(url: &str) -> std::io::Result<SocketAddr> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{url}: no scheme"),
        )
    })?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let default_port = match scheme {
        "https" | "wss" => 443,
        _ => 80,
    };
    let with_port = if authority.rsplit_once(':').is_some_and(|(h, p)| {
        !h.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && !authority.ends_with(']')
    }) {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    let found = tokio::net::lookup_host(with_port.as_str()).await?.next();
    found.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{with_port}: no address"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_rotate() {
        let s = SourceAddrs::new(vec![
            "127.0.0.2".parse().expect("ip"),
            "127.0.0.3".parse().expect("ip"),
        ]);
        let picks: Vec<_> = (0..4).filter_map(|_| s.pick()).collect();
        assert_eq!(picks[0], picks[2]);
        assert_ne!(picks[0], picks[1]);
        assert_eq!(SourceAddrs::default().pick(), None);
    }

    #[test]
    fn raising_to_current_limit_is_a_no_op() {
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!(raise_nofile(soft.min(64)).expect("within limit"), soft);
        let err = raise_nofile(u64::MAX / 2);
        if let Err(e) = err {
            assert!(e.to_string().contains("ulimit -n"), "{e}");
        }
    }

    #[tokio::test]
    async fn resolves_urls_with_and_without_ports() {
        let a = resolve_url("http://127.0.0.1:8065/x")
            .await
            .expect("resolve");
        assert_eq!(a.port(), 8065);
        let a = resolve_url("ws://127.0.0.1/api/v4/websocket")
            .await
            .expect("resolve");
        assert_eq!(a.port(), 80);
    }
}
