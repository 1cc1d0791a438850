//! A reference chat server speaking a subset of the Mattermost API v4 and its WebSocket protocol,
//! on SQLite or PostgreSQL, with Prometheus metrics. It is the system under test for the load
//! tester, and official Mattermost clients work against it.
//!
//! The caller binds the listeners and passes them to [`run`] together with a [`Config`] and a
//! shutdown future (tests bind `127.0.0.1:0`; see [`testing`]). Module map:
//! [`config`] settings, [`store`] persistence, [`auth`] passwords and sessions, [`api`] REST
//! handlers, [`ws`] the WebSocket gateway, [`hub`] membership index and fan-out, [`bus`] the
//! cross-instance event bus (PostgreSQL), [`event`] serialized events, [`metrics`] Prometheus,
//! [`error`] error bodies, [`ids`] ids and clock.

pub mod api;
pub mod auth;
pub mod bus;
pub mod config;
pub mod error;
pub mod event;
pub mod hub;
pub mod ids;
pub mod metrics;
pub mod store;
pub mod testing;
pub mod ws;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, Database, Limits, PasswordCost};
pub use error::Error;

/// Serves the API on `listener` (and metrics on `metrics_listener`) until `shutdown` completes,
/// then stops accepting, closes every WebSocket with a close frame, drains in-flight requests
/// (bounded by `config.shutdown_grace`) and returns.
pub async fn run(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    config.validate()?;
    let metrics = metrics::Metrics::new();
    let store = store::Store::open(&config.database, config.db_max_connections)
        .await?
        .with_timings(metrics.db_duration.clone());
    let hub = hub::Hub::new(metrics.clone());
    // Several instances share a PostgreSQL database: LISTEN before loading membership, so a
    // change committed by another instance meanwhile arrives as a notification, not lost.
    let bus = match (&config.database, store.pg_pool()) {
        (Database::Postgres { url }, Some(pool)) => {
            Some(bus::Bus::connect(url, pool, metrics.clone()).await?)
        }
        _ => None,
    };
    load_membership(&store, &hub).await?;

    let state = Arc::new(api::AppState {
        auth: auth::Auth::new(
            store.clone(),
            config.password_cost.clone(),
            config.session_ttl,
        ),
        config,
        store: store.clone(),
        hub,
        bus: bus.as_ref().map(|b| b.publisher.clone()),
        metrics: metrics.clone(),
        shutdown: CancellationToken::new(),
        ws_tasks: TaskTracker::new(),
    });
    let token = state.shutdown.clone();
    let bus_tasks = bus.map(|b| b.spawn(state.clone(), token.clone()));

    // Forget disconnected connections once their replay window has passed.
    let reaper = {
        let st = state.clone();
        tokio::spawn(async move {
            let keep = st.config.limits.replay_keep;
            let mut tick = tokio::time::interval(Duration::from_secs(5).min(keep));
            loop {
                tokio::select! {
                    _ = st.shutdown.cancelled() => break,
                    _ = tick.tick() => st.hub.reap(keep),
                }
            }
        })
    };

    let metrics_task = metrics_listener.map(|l| {
        let t = token.clone();
        tokio::spawn(
            axum::serve(l, metrics.clone().router())
                .with_graceful_shutdown(async move { t.cancelled().await })
                .into_future(),
        )
    });

    let app = api::router(state.clone());
    let t = token.clone();
    let serve = axum::serve(listener, app)
        .with_graceful_shutdown(async move { t.cancelled().await })
        .into_future();
    tokio::pin!(serve);
    let grace = state.config.shutdown_grace;
    let result = tokio::select! {
        r = &mut serve => {
            token.cancel();
            r
        }
        _ = shutdown => {
            token.cancel();
            match tokio::time::timeout(grace, &mut serve).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("requests still running after {grace:?}; abandoning them");
                    Ok(())
                }
            }
        }
    };
    state.ws_tasks.close();
    if tokio::time::timeout(grace, state.ws_tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("WebSockets still open after {grace:?}; abandoning them");
    }
    let _ = reaper.await;
    for task in bus_tasks.into_iter().flatten() {
        let _ = tokio::time::timeout(grace, task).await;
    }
    if let Some(m) = metrics_task {
        let _ = tokio::time::timeout(grace, m).await;
    }
    store.close().await;
    result.map_err(Error::Io)
}

/// Fills (or refills) the hub's membership index from the database.
async fn load_membership(store: &store::Store, hub: &hub::Hub) -> Result<(), store::StoreError> {
    let channels = store.all_channels().await?;
    let channel_members = store.all_channel_members().await?;
    let team_members = store.all_team_members().await?;
    hub.replace_membership(channels, channel_members, team_members);
    Ok(())
}
