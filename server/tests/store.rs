//! The store suite, written once and run against SQLite and PostgreSQL.
//!
//! Each case is an `async fn(Store)`; the `both!` macro makes a `sqlite_*` and a `postgres_*`
//! test of it. PostgreSQL tests use a fresh database per test (see `support/pg.rs`).
#![allow(clippy::unwrap_used)]

#[path = "support/pg.rs"]
mod pg;

use chat_server::ids::{new_id, now_ms};
use chat_server::store::{
    ChannelRow, PostRow, PostWindow, ReactionRow, Store, StoreError, TeamRow, UserRow,
};
use chat_server::Database;

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = super::Store::open(&super::Database::Sqlite { data_dir: dir.path().to_path_buf() }, 4).await.unwrap();
                    super::$case(store.clone()).await;
                    store.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(admin) = super::pg::admin_url() else { return };
                    let db = super::pg::fresh_database(&admin).await;
                    let store = super::Store::open(&super::Database::Postgres { url: db.url.clone() }, 4).await.unwrap();
                    super::$case(store.clone()).await;
                    store.close().await;
                    db.drop_db().await;
                }
            )*
        }
    };
}

both!(
    users_roundtrip_and_uniqueness,
    sessions_create_lookup_revoke,
    teams_channels_and_memberships,
    posts_windows_threads_and_counts,
    reactions_are_idempotent,
    migrations_are_idempotent,
);

fn user(name: &str) -> UserRow {
    let now = now_ms();
    UserRow {
        id: new_id(),
        username: name.into(),
        email: format!("{name}@example.com"),
        password_hash: "hash".into(),
        first_name: "F".into(),
        last_name: "L".into(),
        nickname: String::new(),
        roles: "system_user".into(),
        create_at: now,
        update_at: now,
        delete_at: 0,
    }
}

fn team(name: &str, creator: &str) -> TeamRow {
    TeamRow {
        id: new_id(),
        name: name.into(),
        display_name: name.into(),
        description: String::new(),
        kind: "O".into(),
        creator_id: creator.into(),
        create_at: 1,
        update_at: 1,
        delete_at: 0,
    }
}

fn channel(team_id: &str, name: &str, kind: &str, creator: &str) -> ChannelRow {
    ChannelRow {
        id: new_id(),
        team_id: team_id.into(),
        name: name.into(),
        display_name: name.into(),
        kind: kind.into(),
        purpose: String::new(),
        header: String::new(),
        creator_id: creator.into(),
        create_at: 1,
        update_at: 1,
        delete_at: 0,
        last_post_at: 0,
        total_msg_count: 0,
    }
}

fn post(channel_id: &str, user_id: &str, at: i64, root: &str) -> PostRow {
    PostRow {
        id: new_id(),
        channel_id: channel_id.into(),
        user_id: user_id.into(),
        root_id: root.into(),
        message: format!("at {at}"),
        kind: String::new(),
        props: r#"{"a":1}"#.into(),
        is_pinned: 0,
        create_at: at,
        update_at: at,
        edit_at: 0,
        delete_at: 0,
        reply_count: 0,
    }
}

async fn users_roundtrip_and_uniqueness(s: Store) {
    let a = s.create_user(&user("alice")).await.unwrap();
    assert_eq!(a.roles, "system_admin system_user");
    let b = s.create_user(&user("bob")).await.unwrap();
    assert_eq!(b.roles, "system_user");
    assert!(matches!(
        s.create_user(&user("alice")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.user_by_id(&a.id).await.unwrap().unwrap().username,
        "alice"
    );
    assert_eq!(s.user_by_username("bob").await.unwrap().unwrap().id, b.id);
    assert_eq!(
        s.user_by_login("bob@example.com")
            .await
            .unwrap()
            .unwrap()
            .id,
        b.id
    );
    assert_eq!(s.user_by_login("BOB").await.unwrap().unwrap().id, b.id);
    assert!(s.user_by_id("missing").await.unwrap().is_none());
    let both = s
        .users_by_ids(&[a.id.clone(), b.id.clone(), "nope".into()])
        .await
        .unwrap();
    assert_eq!(both.len(), 2);
    assert_eq!(s.list_users(None, None, 0, 1).await.unwrap().len(), 1);
    assert_eq!(
        s.list_users(None, None, 1, 1).await.unwrap()[0].username,
        "bob"
    );
    // Parameters are never spliced into SQL.
    assert!(s.user_by_username("x' OR '1'='1").await.unwrap().is_none());
}

async fn sessions_create_lookup_revoke(s: Store) {
    let u = s.create_user(&user("alice")).await.unwrap();
    s.create_session("h1", &u.id, 1, 99).await.unwrap();
    assert_eq!(s.session("h1").await.unwrap(), Some((u.id.clone(), 99)));
    s.delete_session("h1").await.unwrap();
    assert_eq!(s.session("h1").await.unwrap(), None);
}

async fn teams_channels_and_memberships(s: Store) {
    let a = s.create_user(&user("alice")).await.unwrap();
    let b = s.create_user(&user("bob")).await.unwrap();
    let t = team("team1", &a.id);
    let town = ChannelRow {
        name: "town-square".into(),
        ..channel(&t.id, "town-square", "O", &a.id)
    };
    s.create_team(&t, std::slice::from_ref(&town))
        .await
        .unwrap();
    assert!(matches!(
        s.create_team(&team("team1", &a.id), &[]).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.team_by_name("team1").await.unwrap().unwrap().id, t.id);
    assert_eq!(s.teams_for_user(&a.id).await.unwrap().len(), 1);
    assert!(s.teams_for_user(&b.id).await.unwrap().is_empty());

    let (m, joined) = s.add_team_member(&t.id, &b.id, 5).await.unwrap();
    assert_eq!(m.roles, "team_user");
    assert_eq!(joined.as_deref(), Some(town.id.as_str()));
    s.add_team_member(&t.id, &b.id, 6).await.unwrap(); // idempotent
    assert_eq!(s.team_members(&t.id, 0, 10).await.unwrap().len(), 2);
    assert_eq!(s.all_team_members().await.unwrap().len(), 2);

    let open = channel(&t.id, "open", "O", &a.id);
    let private = channel(&t.id, "private", "P", &a.id);
    s.create_channel(&open).await.unwrap();
    s.create_channel(&private).await.unwrap();
    assert!(matches!(
        s.create_channel(&channel(&t.id, "open", "O", &a.id)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.channel_by_name(&t.id, "private")
            .await
            .unwrap()
            .unwrap()
            .id,
        private.id
    );
    let public: Vec<String> = s
        .public_channels(&t.id, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(public.len(), 2);
    assert!(!public.contains(&"private".to_string()));

    let cm = s.add_channel_member(&private.id, &b.id, 7).await.unwrap();
    assert_eq!(cm.user_id, b.id);
    assert_eq!(
        s.channel_members(&private.id, 0, 10).await.unwrap().len(),
        2
    );
    assert_eq!(s.channels_for_user(&b.id, &t.id).await.unwrap().len(), 2);
    assert_eq!(
        s.channel_members_for_user(&b.id, &t.id)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s.list_users(Some(&private.id), None, 0, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s.list_users(Some(&open.id), Some(&t.id), 0, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(s.remove_channel_member(&private.id, &b.id).await.unwrap());
    assert!(!s.remove_channel_member(&private.id, &b.id).await.unwrap());
    assert!(s
        .channel_member(&private.id, &b.id)
        .await
        .unwrap()
        .is_none());
    let all = s.all_channels().await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all
        .iter()
        .any(|(id, _, kind)| id == &private.id && kind == "P"));
}

async fn posts_windows_threads_and_counts(s: Store) {
    let a = s.create_user(&user("alice")).await.unwrap();
    let b = s.create_user(&user("bob")).await.unwrap();
    let t = team("team1", &a.id);
    s.create_team(&t, &[]).await.unwrap();
    let c = channel(&t.id, "chan", "O", &a.id);
    s.create_channel(&c).await.unwrap();
    s.add_channel_member(&c.id, &b.id, 1).await.unwrap();

    let mut ids = vec![];
    for at in 10..15 {
        let p = post(&c.id, &a.id, at, "");
        s.create_post(&p).await.unwrap();
        ids.push(p.id);
    }
    let reply = post(&c.id, &b.id, 20, &ids[0]);
    s.create_post(&reply).await.unwrap();
    // A repeated id is a conflict and moves no counter: a post and its counters are one unit
    // (one statement on PostgreSQL, one transaction on SQLite); the counts below are unchanged.
    assert!(matches!(
        s.create_post(&reply).await,
        Err(StoreError::Conflict(_))
    ));

    let ch = s.channel_by_id(&c.id).await.unwrap().unwrap();
    assert_eq!(ch.total_msg_count, 6);
    assert_eq!(ch.last_post_at, 20);
    assert_eq!(
        s.channel_member(&c.id, &b.id)
            .await
            .unwrap()
            .unwrap()
            .msg_count,
        6,
        "poster is caught up"
    );
    assert_eq!(
        s.channel_member(&c.id, &a.id)
            .await
            .unwrap()
            .unwrap()
            .msg_count,
        5
    );
    s.view_channel(&c.id, &a.id, 30).await.unwrap();
    let m = s.channel_member(&c.id, &a.id).await.unwrap().unwrap();
    assert_eq!((m.msg_count, m.last_viewed_at), (6, 30));

    let page = s
        .channel_posts(
            &c.id,
            &PostWindow::Page {
                page: 0,
                per_page: 3,
            },
        )
        .await
        .unwrap();
    let order: Vec<&str> = page.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(
        order,
        vec![reply.id.as_str(), ids[4].as_str(), ids[3].as_str()]
    );
    let root = s.post_by_id(&ids[0]).await.unwrap().unwrap();
    assert_eq!(root.reply_count, 1);
    assert_eq!(root.props, r#"{"a":1}"#);

    let before = s
        .channel_posts(
            &c.id,
            &PostWindow::Before {
                create_at: 12,
                id: ids[2].clone(),
                page: 0,
                per_page: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        before.iter().map(|p| &p.id).collect::<Vec<_>>(),
        vec![&ids[1], &ids[0]]
    );
    let after = s
        .channel_posts(
            &c.id,
            &PostWindow::After {
                create_at: 13,
                id: ids[3].clone(),
                page: 0,
                per_page: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        after.iter().map(|p| &p.id).collect::<Vec<_>>(),
        vec![&reply.id, &ids[4]],
        "newest first"
    );
    let since = s
        .channel_posts(&c.id, &PostWindow::Since { since: 13 })
        .await
        .unwrap();
    assert_eq!(since.len(), 2);

    assert_eq!(s.thread(&ids[0]).await.unwrap().len(), 2);
    let mut edited = root.clone();
    edited.message = "edited".into();
    edited.edit_at = 40;
    edited.update_at = 40;
    s.update_post(&edited).await.unwrap();
    assert_eq!(
        s.post_by_id(&ids[0]).await.unwrap().unwrap().message,
        "edited"
    );
    s.delete_post(&ids[0], 50).await.unwrap();
    assert_eq!(s.post_by_id(&ids[0]).await.unwrap().unwrap().delete_at, 50);
    assert_eq!(
        s.post_by_id(&reply.id).await.unwrap().unwrap().delete_at,
        50,
        "replies go with the root"
    );
    assert_eq!(
        s.channel_posts(
            &c.id,
            &PostWindow::Page {
                page: 0,
                per_page: 60
            }
        )
        .await
        .unwrap()
        .len(),
        4
    );
}

async fn reactions_are_idempotent(s: Store) {
    let a = s.create_user(&user("alice")).await.unwrap();
    let r = ReactionRow {
        user_id: a.id.clone(),
        post_id: "p".into(),
        emoji_name: "smile".into(),
        create_at: 1,
    };
    s.save_reaction(&r).await.unwrap();
    s.save_reaction(&r).await.unwrap();
    assert_eq!(s.reactions("p").await.unwrap().len(), 1);
    assert!(s.delete_reaction("p", &a.id, "smile").await.unwrap());
    assert!(!s.delete_reaction("p", &a.id, "smile").await.unwrap());
}

async fn migrations_are_idempotent(s: Store) {
    // Opening the same database again must not re-run or fail migrations.
    s.create_user(&user("alice")).await.unwrap();
    assert_eq!(s.list_users(None, None, 0, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn sqlite_reopen_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::Sqlite {
        data_dir: dir.path().to_path_buf(),
    };
    let s = Store::open(&db, 2).await.unwrap();
    s.create_user(&user("alice")).await.unwrap();
    s.close().await;
    let s = Store::open(&db, 2).await.unwrap();
    assert!(s.user_by_username("alice").await.unwrap().is_some());
    s.close().await;
}

#[tokio::test]
async fn postgres_url_helper_replaces_database() {
    assert_eq!(
        pg::with_database("postgres://u@h:1/postgres", "x"),
        "postgres://u@h:1/x"
    );
    assert_eq!(
        pg::with_database("postgres://u@h:1/postgres?sslmode=disable", "x"),
        "postgres://u@h:1/x?sslmode=disable"
    );
    assert_eq!(
        pg::with_database("postgres://u@h:1", "x"),
        "postgres://u@h:1/x"
    );
}
