//! Starting a real server inside a test process, for this crate's tests and for other crates'
//! (the load-test agent and ltops test against it).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let dir = tempfile_like_dir();
//! let server = chat_server::testing::start_sqlite(&dir).await?;
//! println!("{}", server.url); // http://127.0.0.1:PORT
//! server.stop().await.expect("clean shutdown");
//! # Ok(()) }
//! # fn tempfile_like_dir() -> std::path::PathBuf { std::env::temp_dir() }
//! ```

use std::net::SocketAddr;
use std::path::Path;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Config, Error};

/// A server running in this process on `127.0.0.1:0`. Dropping it shuts the server down.
pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), Error>>>,
}

impl TestServer {
    /// `ws://127.0.0.1:PORT/api/v4/websocket`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/api/v4/websocket", self.addr)
    }

    /// Triggers a graceful shutdown and waits for [`crate::run`] to return.
    pub async fn stop(mut self) -> Result<(), Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => h
                .await
                .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?,
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts a server with `config` (its listen addresses are ignored: both listeners bind
/// `127.0.0.1:0`). Returns once the listeners are bound; the database opens in the background,
/// and requests made meanwhile simply wait in the accept queue.
pub async fn start(config: Config) -> std::io::Result<TestServer> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let metrics = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let metrics_addr = metrics.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(crate::run(listener, Some(metrics), config, async move {
        let _ = rx.await;
    }));
    Ok(TestServer {
        addr,
        metrics_addr,
        url: format!("http://{addr}"),
        shutdown: Some(tx),
        handle: Some(handle),
    })
}

/// Starts a server with default settings and SQLite in `data_dir`.
pub async fn start_sqlite(data_dir: &Path) -> std::io::Result<TestServer> {
    start(Config::for_data_dir(data_dir)).await
}
