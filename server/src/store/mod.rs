//! Persistence: every table access, behind one [`Store`] that runs on SQLite or PostgreSQL.
//!
//! Each query is written once with `$N` placeholders (both engines accept them) and compiled for
//! both pools through the `read!`/`write!` macros, so the two backends cannot drift apart. SQLite
//! gets a dedicated single-connection writer pool: SQLite allows one writer at a time anyway, and
//! queueing writers in the pool avoids `SQLITE_BUSY` failures under a burst of posts, while readers
//! use WAL snapshots concurrently. A write returns only after its transaction committed, which is
//! what lets the API acknowledge a post with 201 and survive `kill -9`.

mod schema;

use std::path::Path;
use std::time::{Duration, Instant};

use prometheus::HistogramVec;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Connection as _;

use crate::config::Database;

/// File name of the SQLite database inside the data directory.
pub const SQLITE_FILE: &str = "chat.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error("cannot prepare data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("migration {version} failed: {source}")]
    Migration { version: i64, source: sqlx::Error },
}

impl StoreError {
    /// Whether the database refused a text value because of its characters: PostgreSQL cannot
    /// store NUL (`\u0000`) in `text` (SQLSTATE 22021), nor a character missing from the database
    /// encoding (22P05). The value came from the client, so this is its mistake, not ours.
    pub fn is_invalid_text(&self) -> bool {
        match self {
            StoreError::Sqlx(sqlx::Error::Database(d)) => {
                matches!(d.code().as_deref(), Some("22021" | "22P05"))
            }
            _ => false,
        }
    }
}

type Result<T> = std::result::Result<T, StoreError>;

fn conflict(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(what),
        _ => StoreError::Sqlx(e),
    }
}

enum Backend {
    Sqlite { read: SqlitePool, write: SqlitePool },
    Postgres(PgPool),
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: std::sync::Arc<Backend>,
    timings: Option<HistogramVec>,
}

macro_rules! read {
    ($self:expr, $p:ident => $body:expr) => {
        match &*$self.backend {
            Backend::Sqlite { read: $p, .. } => $body,
            Backend::Postgres($p) => $body,
        }
    };
}

macro_rules! write {
    ($self:expr, $p:ident => $body:expr) => {
        match &*$self.backend {
            Backend::Sqlite { write: $p, .. } => $body,
            Backend::Postgres($p) => $body,
        }
    };
}

/// The INSERT of one post, `$1..$12` in [`bind_post!`]'s order; both backends' `create_post` use it.
macro_rules! insert_post_sql {
    () => {
        "INSERT INTO posts (id, channel_id, user_id, root_id, message, kind, props, is_pinned, \
         create_at, update_at, edit_at, delete_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)"
    };
}

/// Binds a post's columns as `$1..$12` of [`insert_post_sql!`].
macro_rules! bind_post {
    ($q:expr, $post:expr) => {
        $q.bind(&$post.id)
            .bind(&$post.channel_id)
            .bind(&$post.user_id)
            .bind(&$post.root_id)
            .bind(&$post.message)
            .bind(&$post.kind)
            .bind(&$post.props)
            .bind($post.is_pinned)
            .bind($post.create_at)
            .bind($post.update_at)
            .bind($post.edit_at)
            .bind($post.delete_at)
    };
}

/// Observes a query's duration into `chat_db_query_duration_seconds` when dropped.
struct Timer<'a> {
    hist: Option<&'a HistogramVec>,
    op: &'static str,
    start: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.hist {
            h.with_label_values(&[self.op])
                .observe(self.start.elapsed().as_secs_f64());
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    pub username: String,
    pub email: String,
    pub password_hash: String,
    pub first_name: String,
    pub last_name: String,
    pub nickname: String,
    pub roles: String,
    pub create_at: i64,
    pub update_at: i64,
    pub delete_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TeamRow {
    pub id: String,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub kind: String,
    pub creator_id: String,
    pub create_at: i64,
    pub update_at: i64,
    pub delete_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TeamMemberRow {
    pub team_id: String,
    pub user_id: String,
    pub roles: String,
    pub create_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChannelRow {
    pub id: String,
    pub team_id: String,
    pub name: String,
    pub display_name: String,
    pub kind: String,
    pub purpose: String,
    pub header: String,
    pub creator_id: String,
    pub create_at: i64,
    pub update_at: i64,
    pub delete_at: i64,
    pub last_post_at: i64,
    pub total_msg_count: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChannelMemberRow {
    pub channel_id: String,
    pub user_id: String,
    pub roles: String,
    pub last_viewed_at: i64,
    pub msg_count: i64,
    pub mention_count: i64,
    pub last_update_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PostRow {
    pub id: String,
    pub channel_id: String,
    pub user_id: String,
    pub root_id: String,
    pub message: String,
    pub kind: String,
    pub props: String,
    pub is_pinned: i64,
    pub create_at: i64,
    pub update_at: i64,
    pub edit_at: i64,
    pub delete_at: i64,
    pub reply_count: i64,
}

/// A post with what its WebSocket event needs: channel fields and the sender's username.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PostEventRow {
    #[sqlx(flatten)]
    pub post: PostRow,
    pub ch_team_id: String,
    pub ch_name: String,
    pub ch_display_name: String,
    pub ch_kind: String,
    pub sender_username: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReactionRow {
    pub user_id: String,
    pub post_id: String,
    pub emoji_name: String,
    pub create_at: i64,
}

/// Which slice of a channel's posts to list (see `GET /channels/{id}/posts`).
#[derive(Debug, Clone)]
pub enum PostWindow {
    Page {
        page: i64,
        per_page: i64,
    },
    Since {
        since: i64,
    },
    Before {
        create_at: i64,
        id: String,
        page: i64,
        per_page: i64,
    },
    After {
        create_at: i64,
        id: String,
        page: i64,
        per_page: i64,
    },
}

const USER_COLS: &str = "id, username, email, password_hash, first_name, last_name, nickname, roles, create_at, update_at, delete_at";
const TEAM_COLS: &str =
    "id, name, display_name, description, kind, creator_id, create_at, update_at, delete_at";
const CHANNEL_COLS: &str = "id, team_id, name, display_name, kind, purpose, header, creator_id, create_at, update_at, delete_at, last_post_at, total_msg_count";
const CM_COLS: &str =
    "channel_id, user_id, roles, last_viewed_at, msg_count, mention_count, last_update_at";
const POST_COLS: &str = "p.id, p.channel_id, p.user_id, p.root_id, p.message, p.kind, p.props, p.is_pinned, p.create_at, p.update_at, p.edit_at, p.delete_at, \
     (SELECT COUNT(*) FROM posts r WHERE r.root_id = p.id AND r.delete_at = 0) AS reply_count";

/// `cols` (a `", "`-separated column list) with each column prefixed by the table alias `alias`.
fn qualified(cols: &str, alias: &str) -> String {
    cols.split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

macro_rules! insert_channel {
    ($tx:ident, $c:expr) => {
        sqlx::query(&format!(
            "INSERT INTO channels ({CHANNEL_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)"
        ))
        .bind(&$c.id)
        .bind(&$c.team_id)
        .bind(&$c.name)
        .bind(&$c.display_name)
        .bind(&$c.kind)
        .bind(&$c.purpose)
        .bind(&$c.header)
        .bind(&$c.creator_id)
        .bind($c.create_at)
        .bind($c.update_at)
        .bind($c.delete_at)
        .bind($c.last_post_at)
        .bind($c.total_msg_count)
        .execute(&mut *$tx)
        .await
        .map_err(conflict("A channel with that name"))?;
    };
}

macro_rules! insert_channel_member {
    ($tx:ident, $cid:expr, $uid:expr, $roles:expr, $now:expr) => {
        sqlx::query(&format!(
            "INSERT INTO channel_members ({CM_COLS}) VALUES ($1, $2, $3, $4, 0, 0, $4) ON CONFLICT (channel_id, user_id) DO NOTHING"
        ))
        .bind($cid)
        .bind($uid)
        .bind($roles)
        .bind($now)
        .execute(&mut *$tx)
        .await?;
    };
}

/// Advisory-lock key that serializes schema migrations across instances (arbitrary, fixed).
const MIGRATION_LOCK_KEY: i64 = 0x0063_6861_746d_6967;

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub async fn open(db: &Database, max_connections: u32) -> Result<Store> {
        let backend = match db {
            Database::Sqlite { data_dir } => {
                std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
                    path: data_dir.display().to_string(),
                    source,
                })?;
                let opts = sqlite_options(&data_dir.join(SQLITE_FILE));
                let write = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts.clone())
                    .await?;
                let read = SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .connect_with(opts)
                    .await?;
                Backend::Sqlite { read, write }
            }
            Database::Postgres { url } => Backend::Postgres(
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?,
            ),
        };
        let store = Store {
            backend: std::sync::Arc::new(backend),
            timings: None,
        };
        // Several instances may start at once on an empty PostgreSQL database; concurrent
        // `CREATE TABLE`s would fail in all but one. A session-level advisory lock on a dedicated
        // connection (not from the pool, which may have a single slot) serializes migrations.
        let migration_lock = match db {
            Database::Postgres { url } => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(MIGRATION_LOCK_KEY)
                    .execute(&mut conn)
                    .await?;
                Some(conn)
            }
            Database::Sqlite { .. } => None,
        };
        let migrated = store.migrate().await;
        if let Some(mut conn) = migration_lock {
            // Closing the session releases the lock even if the unlock fails.
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(MIGRATION_LOCK_KEY)
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
        migrated?;
        Ok(store)
    }

    /// Records query durations into `hist` (label `op`).
    pub fn with_timings(mut self, hist: HistogramVec) -> Store {
        self.timings = Some(hist);
        self
    }

    fn timer(&self, op: &'static str) -> Timer<'_> {
        Timer {
            hist: self.timings.as_ref(),
            op,
            start: Instant::now(),
        }
    }

    /// The PostgreSQL pool, for the cross-instance bus; `None` on SQLite.
    pub fn pg_pool(&self) -> Option<PgPool> {
        match &*self.backend {
            Backend::Sqlite { .. } => None,
            Backend::Postgres(p) => Some(p.clone()),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match &*self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        match &*self.backend {
            Backend::Sqlite { read, write } => {
                read.close().await;
                write.close().await;
            }
            Backend::Postgres(p) => p.close().await,
        }
    }

    async fn migrate(&self) -> Result<()> {
        write!(self, p => {
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .execute(p)
            .await?;
            for &(version, sql) in schema::MIGRATIONS {
                let mut tx = p.begin().await?;
                let done: Option<(i64,)> =
                    sqlx::query_as("SELECT version FROM schema_migrations WHERE version = $1")
                        .bind(version)
                        .fetch_optional(&mut *tx)
                        .await?;
                if done.is_some() {
                    continue;
                }
                // One statement at a time: PostgreSQL's extended protocol takes a single statement.
                for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    sqlx::query(stmt)
                        .execute(&mut *tx)
                        .await
                        .map_err(|source| StoreError::Migration { version, source })?;
                }
                sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                    .bind(version)
                    .bind(crate::ids::now_ms())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Ok(())
        })
    }

    // ---- users ----

    /// Inserts a user; the first user of an empty database gets `system_admin`.
    pub async fn create_user(&self, u: &UserRow) -> Result<UserRow> {
        let _t = self.timer("create_user");
        write!(self, p => {
            let mut tx = p.begin().await?;
            let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users").fetch_one(&mut *tx).await?;
            let mut row = u.clone();
            if count == 0 {
                row.roles = "system_admin system_user".into();
            }
            sqlx::query(&format!("INSERT INTO users ({USER_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)"))
                .bind(&row.id).bind(&row.username).bind(&row.email).bind(&row.password_hash)
                .bind(&row.first_name).bind(&row.last_name).bind(&row.nickname).bind(&row.roles)
                .bind(row.create_at).bind(row.update_at).bind(row.delete_at)
                .execute(&mut *tx)
                .await
                .map_err(conflict("A user with that username or email"))?;
            tx.commit().await?;
            Ok(row)
        })
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserRow>> {
        let _t = self.timer("user_by_id");
        read!(self, p => Ok(sqlx::query_as(&format!("SELECT {USER_COLS} FROM users WHERE id = $1"))
            .bind(id).fetch_optional(p).await?))
    }

    pub async fn user_by_username(&self, name: &str) -> Result<Option<UserRow>> {
        let _t = self.timer("user_by_username");
        read!(self, p => Ok(sqlx::query_as(&format!("SELECT {USER_COLS} FROM users WHERE username = $1"))
            .bind(name).fetch_optional(p).await?))
    }

    /// Finds a user by username or email (the `login_id` of a login).
    pub async fn user_by_login(&self, login_id: &str) -> Result<Option<UserRow>> {
        let _t = self.timer("user_by_login");
        let lower = login_id.to_lowercase();
        read!(self, p => Ok(sqlx::query_as(&format!("SELECT {USER_COLS} FROM users WHERE username = $1 OR email = $1"))
            .bind(lower).fetch_optional(p).await?))
    }

    pub async fn users_by_ids(&self, ids: &[String]) -> Result<Vec<UserRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let _t = self.timer("users_by_ids");
        let sql = format!(
            "SELECT {USER_COLS} FROM users WHERE id IN ({}) ORDER BY username",
            placeholders(1, ids.len())
        );
        read!(self, p => {
            let mut q = sqlx::query_as(&sql);
            for id in ids {
                q = q.bind(id);
            }
            Ok(q.fetch_all(p).await?)
        })
    }

    /// Users ordered by username, optionally only members of a channel or team.
    pub async fn list_users(
        &self,
        in_channel: Option<&str>,
        in_team: Option<&str>,
        page: i64,
        per_page: i64,
    ) -> Result<Vec<UserRow>> {
        let _t = self.timer("list_users");
        let cols = qualified(USER_COLS, "u");
        let mut sql = format!("SELECT {cols} FROM users u WHERE u.delete_at = 0");
        let mut n = 1;
        if in_channel.is_some() {
            sql += &format!(
                " AND u.id IN (SELECT user_id FROM channel_members WHERE channel_id = ${n})"
            );
            n += 1;
        }
        if in_team.is_some() {
            sql += &format!(" AND u.id IN (SELECT user_id FROM team_members WHERE team_id = ${n})");
            n += 1;
        }
        sql += &format!(" ORDER BY u.username LIMIT ${} OFFSET ${}", n, n + 1);
        read!(self, p => {
            let mut q = sqlx::query_as(&sql);
            if let Some(c) = in_channel { q = q.bind(c); }
            if let Some(t) = in_team { q = q.bind(t); }
            Ok(q.bind(per_page).bind(page * per_page).fetch_all(p).await?)
        })
    }

    // ---- sessions ----

    pub async fn create_session(
        &self,
        token_hash: &str,
        user_id: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        let _t = self.timer("create_session");
        write!(self, p => {
            sqlx::query("INSERT INTO sessions (token_hash, user_id, create_at, expires_at) VALUES ($1, $2, $3, $4)")
                .bind(token_hash).bind(user_id).bind(now).bind(expires_at)
                .execute(p).await?;
            Ok(())
        })
    }

    /// `(user_id, expires_at)` of a session.
    pub async fn session(&self, token_hash: &str) -> Result<Option<(String, i64)>> {
        let _t = self.timer("session");
        read!(self, p => Ok(sqlx::query_as("SELECT user_id, expires_at FROM sessions WHERE token_hash = $1")
            .bind(token_hash).fetch_optional(p).await?))
    }

    pub async fn delete_session(&self, token_hash: &str) -> Result<()> {
        let _t = self.timer("delete_session");
        write!(self, p => {
            sqlx::query("DELETE FROM sessions WHERE token_hash = $1").bind(token_hash).execute(p).await?;
            Ok(())
        })
    }

    // ---- teams ----

    /// Creates a team with its creator as admin and the default `town-square` and `off-topic`
    /// channels (Mattermost clients expect them), joined by the creator. Returns the channels.
    pub async fn create_team(&self, t: &TeamRow, defaults: &[ChannelRow]) -> Result<()> {
        let _t = self.timer("create_team");
        write!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(&format!("INSERT INTO teams ({TEAM_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)"))
                .bind(&t.id).bind(&t.name).bind(&t.display_name).bind(&t.description).bind(&t.kind)
                .bind(&t.creator_id).bind(t.create_at).bind(t.update_at).bind(t.delete_at)
                .execute(&mut *tx).await.map_err(conflict("A team with that name"))?;
            sqlx::query("INSERT INTO team_members (team_id, user_id, roles, create_at) VALUES ($1, $2, $3, $4)")
                .bind(&t.id).bind(&t.creator_id).bind("team_user team_admin").bind(t.create_at)
                .execute(&mut *tx).await?;
            for c in defaults {
                insert_channel!(tx, c);
                insert_channel_member!(tx, &c.id, &t.creator_id, "channel_user", t.create_at);
            }
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn team_by_id(&self, id: &str) -> Result<Option<TeamRow>> {
        let _t = self.timer("team_by_id");
        read!(self, p => Ok(sqlx::query_as(&format!("SELECT {TEAM_COLS} FROM teams WHERE id = $1 AND delete_at = 0"))
            .bind(id).fetch_optional(p).await?))
    }

    pub async fn team_by_name(&self, name: &str) -> Result<Option<TeamRow>> {
        let _t = self.timer("team_by_name");
        read!(self, p => Ok(sqlx::query_as(&format!("SELECT {TEAM_COLS} FROM teams WHERE name = $1 AND delete_at = 0"))
            .bind(name).fetch_optional(p).await?))
    }

    pub async fn teams_for_user(&self, user_id: &str) -> Result<Vec<TeamRow>> {
        let _t = self.timer("teams_for_user");
        let cols = qualified(TEAM_COLS, "t");
        read!(self, p => Ok(sqlx::query_as(&format!(
            "SELECT {cols} FROM teams t JOIN team_members m ON m.team_id = t.id WHERE m.user_id = $1 AND t.delete_at = 0 ORDER BY t.name"))
            .bind(user_id).fetch_all(p).await?))
    }

    /// Adds a team member (idempotent) and joins it to the team's `town-square`.
    /// Returns the member and the id of the town square it joined, if any.
    pub async fn add_team_member(
        &self,
        team_id: &str,
        user_id: &str,
        now: i64,
    ) -> Result<(TeamMemberRow, Option<String>)> {
        let _t = self.timer("add_team_member");
        write!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query("INSERT INTO team_members (team_id, user_id, roles, create_at) VALUES ($1, $2, 'team_user', $3) ON CONFLICT (team_id, user_id) DO NOTHING")
                .bind(team_id).bind(user_id).bind(now).execute(&mut *tx).await?;
            let town: Option<(String,)> = sqlx::query_as("SELECT id FROM channels WHERE team_id = $1 AND name = 'town-square'")
                .bind(team_id).fetch_optional(&mut *tx).await?;
            if let Some((cid,)) = &town {
                sqlx::query(&format!("INSERT INTO channel_members ({CM_COLS}) VALUES ($1, $2, 'channel_user', 0, 0, 0, $3) ON CONFLICT (channel_id, user_id) DO NOTHING"))
                    .bind(cid).bind(user_id).bind(now).execute(&mut *tx).await?;
            }
            let m: TeamMemberRow = sqlx::query_as("SELECT team_id, user_id, roles, create_at FROM team_members WHERE team_id = $1 AND user_id = $2")
                .bind(team_id).bind(user_id).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            Ok((m, town.map(|t| t.0)))
        })
    }

    pub async fn team_members(
        &self,
        team_id: &str,
        page: i64,
        per_page: i64,
    ) -> Result<Vec<TeamMemberRow>> {
        let _t = self.timer("team_members");
        read!(self, p => Ok(sqlx::query_as("SELECT team_id, user_id, roles, create_at FROM team_members WHERE team_id = $1 ORDER BY user_id LIMIT $2 OFFSET $3")
            .bind(team_id).bind(per_page).bind(page * per_page).fetch_all(p).await?))
    }

    /// Every `(team_id, user_id)` membership, for the in-memory index loaded at startup.
    pub async fn all_team_members(&self) -> Result<Vec<(String, String)>> {
        let _t = self.timer("all_team_members");
        read!(self, p => Ok(sqlx::query_as("SELECT team_id, user_id FROM team_members").fetch_all(p).await?))
    }

    // ---- channels ----

    pub async fn create_channel(&self, c: &ChannelRow) -> Result<()> {
        let _t = self.timer("create_channel");
        write!(self, p => {
            let mut tx = p.begin().await?;
            insert_channel!(tx, c);
            insert_channel_member!(tx, &c.id, &c.creator_id, "channel_user channel_admin", c.create_at);
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn channel_by_id(&self, id: &str) -> Result<Option<ChannelRow>> {
        let _t = self.timer("channel_by_id");
        read!(self, p => Ok(sqlx::query_as(&format!("SELECT {CHANNEL_COLS} FROM channels WHERE id = $1 AND delete_at = 0"))
            .bind(id).fetch_optional(p).await?))
    }

    pub async fn channel_by_name(&self, team_id: &str, name: &str) -> Result<Option<ChannelRow>> {
        let _t = self.timer("channel_by_name");
        read!(self, p => Ok(sqlx::query_as(&format!("SELECT {CHANNEL_COLS} FROM channels WHERE team_id = $1 AND name = $2 AND delete_at = 0"))
            .bind(team_id).bind(name).fetch_optional(p).await?))
    }

    pub async fn public_channels(
        &self,
        team_id: &str,
        page: i64,
        per_page: i64,
    ) -> Result<Vec<ChannelRow>> {
        let _t = self.timer("public_channels");
        read!(self, p => Ok(sqlx::query_as(&format!("SELECT {CHANNEL_COLS} FROM channels WHERE team_id = $1 AND kind = 'O' AND delete_at = 0 ORDER BY display_name, id LIMIT $2 OFFSET $3"))
            .bind(team_id).bind(per_page).bind(page * per_page).fetch_all(p).await?))
    }

    pub async fn channels_for_user(&self, user_id: &str, team_id: &str) -> Result<Vec<ChannelRow>> {
        let _t = self.timer("channels_for_user");
        let cols = qualified(CHANNEL_COLS, "c");
        read!(self, p => Ok(sqlx::query_as(&format!(
            "SELECT {cols} FROM channels c JOIN channel_members m ON m.channel_id = c.id WHERE m.user_id = $1 AND c.team_id = $2 AND c.delete_at = 0 ORDER BY c.display_name, c.id"))
            .bind(user_id).bind(team_id).fetch_all(p).await?))
    }

    pub async fn channel_members_for_user(
        &self,
        user_id: &str,
        team_id: &str,
    ) -> Result<Vec<ChannelMemberRow>> {
        let _t = self.timer("channel_members_for_user");
        let cols = qualified(CM_COLS, "m");
        read!(self, p => Ok(sqlx::query_as(&format!(
            "SELECT {cols} FROM channel_members m JOIN channels c ON m.channel_id = c.id WHERE m.user_id = $1 AND c.team_id = $2 AND c.delete_at = 0 ORDER BY m.channel_id"))
            .bind(user_id).bind(team_id).fetch_all(p).await?))
    }

    /// Adds a channel member (idempotent); returns the member row.
    pub async fn add_channel_member(
        &self,
        channel_id: &str,
        user_id: &str,
        now: i64,
    ) -> Result<ChannelMemberRow> {
        let _t = self.timer("add_channel_member");
        write!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(&format!("INSERT INTO channel_members ({CM_COLS}) VALUES ($1, $2, 'channel_user', 0, 0, 0, $3) ON CONFLICT (channel_id, user_id) DO NOTHING"))
                .bind(channel_id).bind(user_id).bind(now).execute(&mut *tx).await?;
            let m = sqlx::query_as(&format!("SELECT {CM_COLS} FROM channel_members WHERE channel_id = $1 AND user_id = $2"))
                .bind(channel_id).bind(user_id).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            Ok(m)
        })
    }

    pub async fn channel_member(
        &self,
        channel_id: &str,
        user_id: &str,
    ) -> Result<Option<ChannelMemberRow>> {
        let _t = self.timer("channel_member");
        read!(self, p => Ok(sqlx::query_as(&format!("SELECT {CM_COLS} FROM channel_members WHERE channel_id = $1 AND user_id = $2"))
            .bind(channel_id).bind(user_id).fetch_optional(p).await?))
    }

    pub async fn channel_members(
        &self,
        channel_id: &str,
        page: i64,
        per_page: i64,
    ) -> Result<Vec<ChannelMemberRow>> {
        let _t = self.timer("channel_members");
        read!(self, p => Ok(sqlx::query_as(&format!("SELECT {CM_COLS} FROM channel_members WHERE channel_id = $1 ORDER BY user_id LIMIT $2 OFFSET $3"))
            .bind(channel_id).bind(per_page).bind(page * per_page).fetch_all(p).await?))
    }

    /// Returns whether a membership was removed.
    pub async fn remove_channel_member(&self, channel_id: &str, user_id: &str) -> Result<bool> {
        let _t = self.timer("remove_channel_member");
        write!(self, p => {
            let r = sqlx::query("DELETE FROM channel_members WHERE channel_id = $1 AND user_id = $2")
                .bind(channel_id).bind(user_id).execute(p).await?;
            Ok(r.rows_affected() > 0)
        })
    }

    /// Marks a channel read for a user: `msg_count` catches up with the channel's total.
    pub async fn view_channel(&self, channel_id: &str, user_id: &str, now: i64) -> Result<bool> {
        let _t = self.timer("view_channel");
        write!(self, p => {
            let r = sqlx::query("UPDATE channel_members SET last_viewed_at = $3, mention_count = 0, last_update_at = $3, \
                 msg_count = (SELECT total_msg_count FROM channels WHERE id = $1) WHERE channel_id = $1 AND user_id = $2")
                .bind(channel_id).bind(user_id).bind(now).execute(p).await?;
            Ok(r.rows_affected() > 0)
        })
    }

    /// Every `(channel_id, team_id, kind, user_id)` membership, for the fan-out index.
    pub async fn all_channel_members(&self) -> Result<Vec<(String, String)>> {
        let _t = self.timer("all_channel_members");
        read!(self, p => Ok(sqlx::query_as("SELECT channel_id, user_id FROM channel_members").fetch_all(p).await?))
    }

    // ---- posts ----

    /// Inserts a post and bumps the channel's counters atomically; the poster's own read marker
    /// moves with it so its own posts never count as unread. On PostgreSQL that is one statement
    /// (data-modifying CTEs), one round trip instead of five: a post's broadcast waits for it,
    /// so every round trip is in each delivery's latency.
    pub async fn create_post(&self, post: &PostRow) -> Result<()> {
        let _t = self.timer("create_post");
        match &*self.backend {
            Backend::Postgres(p) => {
                // Sub-statements share one snapshot: the member's msg_count takes the channel's
                // new total from the UPDATE's RETURNING, not from a read of `channels`.
                let q = sqlx::query(concat!(
                    "WITH ins AS (",
                    insert_post_sql!(),
                    "), ch AS (UPDATE channels SET last_post_at = $9, total_msg_count = total_msg_count + 1 WHERE id = $2 RETURNING total_msg_count) \
                     UPDATE channel_members SET last_viewed_at = $9, last_update_at = $9, msg_count = (SELECT total_msg_count FROM ch) \
                     WHERE channel_id = $2 AND user_id = $3"
                ));
                bind_post!(q, post)
                    .execute(p)
                    .await
                    .map_err(conflict("A post with that id"))?;
                Ok(())
            }
            // SQLite allows no INSERT or UPDATE inside WITH; its round trips stay in-process.
            Backend::Sqlite { write: p, .. } => {
                let mut tx = p.begin().await?;
                bind_post!(sqlx::query(insert_post_sql!()), post)
                    .execute(&mut *tx)
                    .await
                    .map_err(conflict("A post with that id"))?;
                sqlx::query("UPDATE channels SET last_post_at = $2, total_msg_count = total_msg_count + 1 WHERE id = $1")
                    .bind(&post.channel_id).bind(post.create_at).execute(&mut *tx).await?;
                sqlx::query("UPDATE channel_members SET last_viewed_at = $3, last_update_at = $3, \
                     msg_count = (SELECT total_msg_count FROM channels WHERE id = $1) WHERE channel_id = $1 AND user_id = $2")
                    .bind(&post.channel_id).bind(&post.user_id).bind(post.create_at).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    }

    /// A post, including soft-deleted ones (callers decide whether to show them).
    pub async fn post_by_id(&self, id: &str) -> Result<Option<PostRow>> {
        let _t = self.timer("post_by_id");
        read!(self, p => Ok(sqlx::query_as(&format!("SELECT {POST_COLS} FROM posts p WHERE p.id = $1"))
            .bind(id).fetch_optional(p).await?))
    }

    /// Posts by id with their channel and sender, in one query (events relayed by reference).
    pub async fn post_events(&self, ids: &[String]) -> Result<Vec<PostEventRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let _t = self.timer("post_events");
        let sql = format!(
            "SELECT {POST_COLS}, c.team_id AS ch_team_id, c.name AS ch_name, c.display_name AS ch_display_name, \
             c.kind AS ch_kind, COALESCE(u.username, '') AS sender_username \
             FROM posts p JOIN channels c ON c.id = p.channel_id LEFT JOIN users u ON u.id = p.user_id \
             WHERE p.id IN ({})",
            placeholders(1, ids.len())
        );
        read!(self, p => {
            let mut q = sqlx::query_as(&sql);
            for id in ids {
                q = q.bind(id);
            }
            Ok(q.fetch_all(p).await?)
        })
    }

    pub async fn update_post(&self, post: &PostRow) -> Result<()> {
        let _t = self.timer("update_post");
        write!(self, p => {
            sqlx::query("UPDATE posts SET message = $2, props = $3, is_pinned = $4, update_at = $5, edit_at = $6 WHERE id = $1")
                .bind(&post.id).bind(&post.message).bind(&post.props).bind(post.is_pinned)
                .bind(post.update_at).bind(post.edit_at).execute(p).await?;
            Ok(())
        })
    }

    pub async fn delete_post(&self, id: &str, now: i64) -> Result<()> {
        let _t = self.timer("delete_post");
        write!(self, p => {
            sqlx::query("UPDATE posts SET delete_at = $2, update_at = $2 WHERE id = $1 OR root_id = $1")
                .bind(id).bind(now).execute(p).await?;
            Ok(())
        })
    }

    /// Posts of a channel, newest first.
    pub async fn channel_posts(
        &self,
        channel_id: &str,
        window: &PostWindow,
    ) -> Result<Vec<PostRow>> {
        let _t = self.timer("channel_posts");
        let base = format!("SELECT {POST_COLS} FROM posts p WHERE p.channel_id = $1");
        read!(self, p => {
            let rows: Vec<PostRow> = match window {
                PostWindow::Page { page, per_page } => sqlx::query_as(&format!("{base} AND p.delete_at = 0 ORDER BY p.create_at DESC, p.id DESC LIMIT $2 OFFSET $3"))
                    .bind(channel_id).bind(per_page).bind(page * per_page).fetch_all(p).await?,
                PostWindow::Since { since } => sqlx::query_as(&format!("{base} AND (p.update_at > $2 OR p.create_at > $2) ORDER BY p.create_at DESC, p.id DESC LIMIT 1000"))
                    .bind(channel_id).bind(since).fetch_all(p).await?,
                PostWindow::Before { create_at, id, page, per_page } => sqlx::query_as(&format!(
                    "{base} AND p.delete_at = 0 AND (p.create_at < $2 OR (p.create_at = $2 AND p.id < $3)) ORDER BY p.create_at DESC, p.id DESC LIMIT $4 OFFSET $5"))
                    .bind(channel_id).bind(create_at).bind(id).bind(per_page).bind(page * per_page).fetch_all(p).await?,
                PostWindow::After { create_at, id, page, per_page } => {
                    let mut v: Vec<PostRow> = sqlx::query_as(&format!(
                        "{base} AND p.delete_at = 0 AND (p.create_at > $2 OR (p.create_at = $2 AND p.id > $3)) ORDER BY p.create_at ASC, p.id ASC LIMIT $4 OFFSET $5"))
                        .bind(channel_id).bind(create_at).bind(id).bind(per_page).bind(page * per_page).fetch_all(p).await?;
                    v.reverse();
                    v
                }
            };
            Ok(rows)
        })
    }

    /// A root post and its replies, newest first.
    pub async fn thread(&self, root_id: &str) -> Result<Vec<PostRow>> {
        let _t = self.timer("thread");
        read!(self, p => Ok(sqlx::query_as(&format!("SELECT {POST_COLS} FROM posts p WHERE (p.id = $1 OR p.root_id = $1) AND p.delete_at = 0 ORDER BY p.create_at DESC, p.id DESC"))
            .bind(root_id).fetch_all(p).await?))
    }

    // ---- reactions ----

    pub async fn save_reaction(&self, r: &ReactionRow) -> Result<ReactionRow> {
        let _t = self.timer("save_reaction");
        write!(self, p => {
            sqlx::query("INSERT INTO reactions (post_id, user_id, emoji_name, create_at) VALUES ($1, $2, $3, $4) ON CONFLICT (post_id, user_id, emoji_name) DO NOTHING")
                .bind(&r.post_id).bind(&r.user_id).bind(&r.emoji_name).bind(r.create_at).execute(p).await?;
            Ok(sqlx::query_as("SELECT user_id, post_id, emoji_name, create_at FROM reactions WHERE post_id = $1 AND user_id = $2 AND emoji_name = $3")
                .bind(&r.post_id).bind(&r.user_id).bind(&r.emoji_name).fetch_one(p).await?)
        })
    }

    pub async fn reactions(&self, post_id: &str) -> Result<Vec<ReactionRow>> {
        let _t = self.timer("reactions");
        read!(self, p => Ok(sqlx::query_as("SELECT user_id, post_id, emoji_name, create_at FROM reactions WHERE post_id = $1 ORDER BY create_at, user_id, emoji_name")
            .bind(post_id).fetch_all(p).await?))
    }

    /// Returns whether a reaction was removed.
    pub async fn delete_reaction(&self, post_id: &str, user_id: &str, emoji: &str) -> Result<bool> {
        let _t = self.timer("delete_reaction");
        write!(self, p => {
            let r = sqlx::query("DELETE FROM reactions WHERE post_id = $1 AND user_id = $2 AND emoji_name = $3")
                .bind(post_id).bind(user_id).bind(emoji).execute(p).await?;
            Ok(r.rows_affected() > 0)
        })
    }

    /// Every channel's `(id, team_id, kind)`, for the fan-out index.
    pub async fn all_channels(&self) -> Result<Vec<(String, String, String)>> {
        let _t = self.timer("all_channels");
        read!(self, p => Ok(sqlx::query_as("SELECT id, team_id, kind FROM channels WHERE delete_at = 0").fetch_all(p).await?))
    }
}

fn sqlite_options(file: &Path) -> SqliteConnectOptions {
    // NORMAL is durable against a killed process in WAL mode (the WAL is in the OS page cache);
    // only an OS crash or power loss can lose the last commits.
    SqliteConnectOptions::new()
        .filename(file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(false)
}
