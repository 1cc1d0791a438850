//! Schema migrations, shared by SQLite and PostgreSQL.
//!
//! Each migration is applied once, in order, inside a transaction, and recorded in
//! `schema_migrations`. The SQL sticks to the common subset of both engines (TEXT, BIGINT,
//! composite primary keys, `CREATE INDEX IF NOT EXISTS`) so there is one schema to reason about.
//! Booleans are BIGINT 0/1 for the same reason. Never edit a released migration; append a new one.

/// `(version, SQL)`; statements separated by `;`.
pub const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    r#"
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    nickname TEXT NOT NULL,
    roles TEXT NOT NULL,
    create_at BIGINT NOT NULL,
    update_at BIGINT NOT NULL,
    delete_at BIGINT NOT NULL
);
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    create_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user_id);
CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    description TEXT NOT NULL,
    kind TEXT NOT NULL,
    creator_id TEXT NOT NULL,
    create_at BIGINT NOT NULL,
    update_at BIGINT NOT NULL,
    delete_at BIGINT NOT NULL
);
CREATE TABLE team_members (
    team_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    roles TEXT NOT NULL,
    create_at BIGINT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX IF NOT EXISTS team_members_user ON team_members (user_id);
CREATE TABLE channels (
    id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL,
    name TEXT NOT NULL,
    display_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    purpose TEXT NOT NULL,
    header TEXT NOT NULL,
    creator_id TEXT NOT NULL,
    create_at BIGINT NOT NULL,
    update_at BIGINT NOT NULL,
    delete_at BIGINT NOT NULL,
    last_post_at BIGINT NOT NULL,
    total_msg_count BIGINT NOT NULL,
    UNIQUE (team_id, name)
);
CREATE TABLE channel_members (
    channel_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    roles TEXT NOT NULL,
    last_viewed_at BIGINT NOT NULL,
    msg_count BIGINT NOT NULL,
    mention_count BIGINT NOT NULL,
    last_update_at BIGINT NOT NULL,
    PRIMARY KEY (channel_id, user_id)
);
CREATE INDEX IF NOT EXISTS channel_members_user ON channel_members (user_id);
CREATE TABLE posts (
    id TEXT PRIMARY KEY,
    channel_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    root_id TEXT NOT NULL,
    message TEXT NOT NULL,
    kind TEXT NOT NULL,
    props TEXT NOT NULL,
    is_pinned BIGINT NOT NULL,
    create_at BIGINT NOT NULL,
    update_at BIGINT NOT NULL,
    edit_at BIGINT NOT NULL,
    delete_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS posts_channel_create ON posts (channel_id, create_at);
CREATE INDEX IF NOT EXISTS posts_channel_update ON posts (channel_id, update_at);
CREATE INDEX IF NOT EXISTS posts_root ON posts (root_id);
CREATE TABLE reactions (
    post_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    emoji_name TEXT NOT NULL,
    create_at BIGINT NOT NULL,
    PRIMARY KEY (post_id, user_id, emoji_name)
)
"#,
)];
