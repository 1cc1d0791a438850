//! `setup`: creates the data set of a workload through the API, idempotently — every step first
//! looks for what exists (teams and channels by name, users by username, memberships by listing
//! members, posts by counting) and creates only what is missing, so a second run creates nothing.
//! Work runs concurrently with a bounded number of requests in flight, with progress lines.
//!
//! The admin account (`target.admin_username`) is logged in, or created when the server allows
//! open sign-up (on our chat server the first user becomes the system admin).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use loadtest_contract::workload::WorkloadConfig;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client::{Api, ApiError, Channel, Team};
use crate::dataset::{ChannelKey, Layout};

/// What `setup` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupReport {
    pub admin_created: bool,
    pub teams_created: u64,
    pub users_created: u64,
    pub team_members_added: u64,
    pub channels_created: u64,
    pub channel_members_added: u64,
    pub posts_created: u64,
    /// Teams, users and channels that already existed.
    pub existing: u64,
}

impl SetupReport {
    /// Anything created at all.
    pub fn created(&self) -> u64 {
        u64::from(self.admin_created)
            + self.teams_created
            + self.users_created
            + self.team_members_added
            + self.channels_created
            + self.channel_members_added
            + self.posts_created
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("no admin password: set target.admin_password or the variable named by target.admin_password_env")]
    NoAdminPassword,
    #[error("cannot log in as admin {user:?} and cannot create it ({create}); create the admin account on the server, or fix target.admin_username / admin_password")]
    Admin { user: String, create: ApiError },
    #[error("{0}")]
    Api(#[from] ApiError),
    #[error("{what}: {failures} requests failed, e.g. {example}")]
    Partial {
        what: String,
        failures: u64,
        example: ApiError,
    },
}

/// Progress printed every couple of seconds (stderr, so stdout stays clean for scripts).
struct Progress {
    what: String,
    total: u64,
    done: AtomicU64,
    last: parking_lot::Mutex<Instant>,
}

impl Progress {
    fn new(what: &str, total: u64) -> Arc<Self> {
        tracing::info!("setup: {what}: {total} to check");
        Arc::new(Self {
            what: what.into(),
            total,
            done: AtomicU64::new(0),
            last: parking_lot::Mutex::new(Instant::now()),
        })
    }
    fn tick(&self) {
        let d = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last.lock();
        if last.elapsed() >= Duration::from_secs(2) {
            *last = Instant::now();
            tracing::info!("setup: {}: {d}/{}", self.what, self.total);
        }
    }
}

/// Runs `f` over `items` with at most `concurrency` in flight; collects failures.
async fn for_each<T, F, Fut>(
    what: &str,
    items: Vec<T>,
    concurrency: usize,
    f: F,
) -> Result<(), SetupError>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<(), ApiError>>,
{
    let progress = Progress::new(what, items.len() as u64);
    let mut failures = 0;
    let mut example = None;
    let mut results = stream::iter(items.into_iter().map(|i| {
        let fut = f(i);
        let p = progress.clone();
        async move {
            let r = fut.await;
            p.tick();
            r
        }
    }))
    .buffer_unordered(concurrency.max(1));
    while let Some(r) = results.next().await {
        if let Err(e) = r {
            failures += 1;
            example.get_or_insert(e);
        }
    }
    match example {
        None => Ok(()),
        Some(example) => Err(SetupError::Partial {
            what: what.into(),
            failures,
            example,
        }),
    }
}

/// Retries a request a few times on errors that can be transient (timeouts, connects, 5xx).
async fn retry<T, F, Fut>(f: F) -> Result<T, ApiError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Err(e) if attempt < 4 && (e.status.is_none() || e.status >= Some(500)) => {
                attempt += 1;
                tokio::time::sleep(crate::user::backoff(attempt)).await;
            }
            r => return r,
        }
    }
}

async fn admin_token(
    api: &Api,
    cfg: &WorkloadConfig,
    report: &mut SetupReport,
) -> Result<String, SetupError> {
    let user = &cfg.target.admin_username;
    let password = cfg
        .target
        .admin_password()
        .ok_or(SetupError::NoAdminPassword)?;
    match api.login(0, user, &password).await {
        Ok(l) => return Ok(l.token),
        Err(e) if e.status.is_none() || e.status >= Some(500) => return Err(e.into()),
        Err(_) => {}
    }
    if let Err(create) = api.create_user(0, None, user, &password).await {
        return Err(SetupError::Admin {
            user: user.clone(),
            create,
        });
    }
    report.admin_created = true;
    Ok(api.login(0, user, &password).await?.token)
}

/// Lists every member id of a team or channel.
async fn member_ids(
    api: &Api,
    token: &str,
    kind: &str,
    id: &str,
) -> Result<HashSet<String>, ApiError> {
    let mut out = HashSet::new();
    let per_page = 200;
    for page in 0.. {
        let batch = retry(|| api.members_page(0, token, kind, id, page, per_page)).await?;
        let n = batch.len();
        out.extend(batch.into_iter().map(|m| m.user_id));
        if n < per_page as usize {
            break;
        }
    }
    Ok(out)
}

/// Creates whatever of the data set is missing. `concurrency` bounds requests in flight.
pub async fn run_setup(
    cfg: &WorkloadConfig,
    concurrency: usize,
) -> Result<SetupReport, SetupError> {
    // Not on the load runtimes: the setup's requests share the pools of other threads.
    let api = Arc::new(Api::new(
        &cfg.target.url,
        cfg.target.request_timeout,
        &cfg.target.local_addresses,
        0,
    )?);
    let layout = Layout::new(&cfg.dataset);
    let mut report = SetupReport::default();
    let token = admin_token(&api, cfg, &mut report).await?;
    let counters = Arc::new(Counts::default());

    // Teams.
    let mut teams: Vec<Team> = Vec::new();
    for t in 0..layout.teams {
        let name = layout.team_name(t);
        let team = match retry(|| api.team_by_name(0, &token, &name)).await {
            Ok(team) => {
                report.existing += 1;
                team
            }
            Err(e) if e.is_not_found() => {
                report.teams_created += 1;
                retry(|| api.create_team(0, &token, &name)).await?
            }
            Err(e) => return Err(e.into()),
        };
        teams.push(team);
    }

    // Users, with their ids (index order).
    let user_ids = Arc::new(parking_lot::Mutex::new(vec![
        String::new();
        layout.users as usize
    ]));
    for_each("users", (0..layout.users).collect(), concurrency, |i| {
        let (api, token, layout, ids, c) = (
            api.clone(),
            token.clone(),
            &layout,
            user_ids.clone(),
            counters.clone(),
        );
        let password = cfg.dataset.user_password.clone();
        async move {
            let name = layout.username(i);
            let id = match retry(|| api.user_by_name(i as usize, &token, &name)).await {
                Ok(u) => {
                    c.existing.fetch_add(1, Ordering::Relaxed);
                    u.id
                }
                Err(e) if e.is_not_found() => {
                    c.users.fetch_add(1, Ordering::Relaxed);
                    retry(|| api.create_user(i as usize, Some(&token), &name, &password))
                        .await?
                        .id
                }
                Err(e) => return Err(e),
            };
            ids.lock()[i as usize] = id;
            Ok(())
        }
    })
    .await?;
    let user_ids: Vec<String> = user_ids.lock().clone();

    // Team memberships.
    for (t, team) in teams.iter().enumerate() {
        let have = member_ids(&api, &token, "teams", &team.id).await?;
        let missing: Vec<u64> = (0..layout.team_size(t as u32))
            .map(|j| layout.team_user(t as u32, j))
            .filter(|u| !have.contains(&user_ids[*u as usize]))
            .collect();
        for_each(
            &format!("members of {}", team.name),
            missing,
            concurrency,
            |u| {
                let (api, token, team_id, uid, c) = (
                    api.clone(),
                    token.clone(),
                    team.id.clone(),
                    user_ids[u as usize].clone(),
                    counters.clone(),
                );
                async move {
                    retry(|| api.add_team_member(u as usize, &token, &team_id, &uid)).await?;
                    c.team_members.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            },
        )
        .await?;
    }

    // Channels.
    let keys: Vec<ChannelKey> = layout.channels().collect();
    let channels = Arc::new(parking_lot::Mutex::new(Vec::<(ChannelKey, Channel)>::new()));
    for_each("channels", keys, concurrency, |k| {
        let (api, token, c, out) = (
            api.clone(),
            token.clone(),
            counters.clone(),
            channels.clone(),
        );
        let team_id = teams[k.team as usize].id.clone();
        let name = layout.channel_name(k);
        let private = layout.is_private(k);
        async move {
            let ch = match retry(|| api.channel_by_name(0, &token, &team_id, &name)).await {
                Ok(ch) => {
                    c.existing.fetch_add(1, Ordering::Relaxed);
                    ch
                }
                Err(e) if e.is_not_found() => {
                    c.channels.fetch_add(1, Ordering::Relaxed);
                    retry(|| api.create_channel(0, &token, &team_id, &name, private)).await?
                }
                Err(e) => return Err(e),
            };
            out.lock().push((k, ch));
            Ok(())
        }
    })
    .await?;
    let mut channels = channels.lock().clone();
    channels.sort_by_key(|(k, _)| *k);

    // Channel memberships: list each channel's members, add the missing ones.
    let mut adds: Vec<(String, String, u64)> = Vec::new();
    let progress = Progress::new("channel member lists", channels.len() as u64);
    for (k, ch) in &channels {
        let have = member_ids(&api, &token, "channels", &ch.id).await?;
        for u in layout.members(*k) {
            let uid = &user_ids[u as usize];
            if !have.contains(uid) {
                adds.push((ch.id.clone(), uid.clone(), u));
            }
        }
        progress.tick();
    }
    for_each("channel memberships", adds, concurrency, |(ch, uid, u)| {
        let (api, token, c) = (api.clone(), token.clone(), counters.clone());
        async move {
            retry(|| api.add_channel_member(u as usize, &token, &ch, &uid)).await?;
            c.channel_members.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    })
    .await?;

    // Posts to read: top each channel up to `posts_per_channel` (the admin created, or is
    // added to, every channel).
    let want = cfg.dataset.posts_per_channel;
    if want > 0 {
        let admin_id: String = api
            .call(
                0,
                crate::client::Method::Get,
                "/users/me",
                Some(&token),
                None,
            )
            .await
            .map(|u: crate::client::User| u.id)?;
        for_each("posts", channels.clone(), concurrency, |(_, ch)| {
            let (api, token, c, admin_id) = (api.clone(), token.clone(), counters.clone(), admin_id.clone());
            async move {
                let count = |page: &crate::client::Page<'_>| page.len as u32;
                let existing = match api.channel_posts(0, &token, &ch.id, None, want, count).await {
                    Ok(n) => n,
                    Err(e) if e.status == Some(403) => {
                        api.add_channel_member(0, &token, &ch.id, &admin_id).await?;
                        api.channel_posts(0, &token, &ch.id, None, want, count).await?
                    }
                    Err(e) => return Err(e),
                };
                for n in existing..want {
                    let body = serde_json::to_vec(&json!({"channel_id": ch.id, "message": format!("seed post {n} in {}", ch.name)})).unwrap_or_default();
                    retry(|| api.call_ignore(0, crate::client::Method::Post, "/posts", Some(&token), Some(&body))).await?;
                    c.posts.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
        })
        .await?;
    }

    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    report.users_created = g(&counters.users);
    report.team_members_added = g(&counters.team_members);
    report.channels_created = g(&counters.channels);
    report.channel_members_added = g(&counters.channel_members);
    report.posts_created = g(&counters.posts);
    report.existing += g(&counters.existing);
    Ok(report)
}

#[derive(Default)]
struct Counts {
    users: AtomicU64,
    team_members: AtomicU64,
    channels: AtomicU64,
    channel_members: AtomicU64,
    posts: AtomicU64,
    existing: AtomicU64,
}
