//! Live progress of a run: an indicatif bar (elapsed/total, users connected, req/s, errors, p99
//! so far) when stdout is a terminal, plain log lines every few seconds otherwise (CI logs and
//! files should not fill with carriage-return redraws).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::run::RunShared;

/// Shows progress until `done` is cancelled.
pub async fn show(shared: Arc<RunShared>, done: tokio_util::sync::CancellationToken) {
    let total = shared.plan.config.users.duration;
    if std::io::stdout().is_terminal() {
        let bar = ProgressBar::new(total.as_secs().max(1));
        if let Ok(style) =
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = done.cancelled() => break,
                _ = tick.tick() => {}
            }
            let s = shared.status();
            bar.set_position((s.elapsed_ms / 1000).min(total.as_secs()));
            bar.set_message(line(&s));
        }
        bar.finish_and_clear();
    } else {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = done.cancelled() => break,
                _ = tick.tick() => {}
            }
            let s = shared.status();
            tracing::info!(
                "{:>5}s/{}s {}",
                s.elapsed_ms / 1000,
                total.as_secs(),
                line(&s)
            );
        }
    }
}

fn line(s: &loadtest_contract::control::RunStatus) -> String {
    format!(
        "users {}/{} ws {} | {:.0} req/s, {} errors | p99 {:.1} ms, delivery p99 {:.1} ms, lag p99 {:.1} ms",
        s.active_users,
        s.target_users,
        s.websocket_connections,
        s.requests_per_sec,
        s.errors_total,
        s.response_p99_ms,
        s.delivery_p99_ms,
        s.schedule_lag_p99_ms
    )
}
