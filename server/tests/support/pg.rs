//! PostgreSQL for tests: each test gets its own freshly created database on the server named by
//! `CHAT_TEST_POSTGRES_URL` (a superuser URL), so tests run in parallel without interfering.
//! Without the variable the test is skipped with a note, except under `CI=true`, where that fails.
#![allow(dead_code, clippy::unwrap_used)]

use sqlx::Connection;

pub const ENV: &str = "CHAT_TEST_POSTGRES_URL";

/// The admin URL, or `None` (after printing why) when PostgreSQL tests should be skipped.
pub fn admin_url() -> Option<String> {
    match std::env::var(ENV) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{ENV} is not set but CI=true: PostgreSQL tests must run in CI (scripts/test.sh starts one; or: scripts/postgres.sh start DIR)");
            }
            eprintln!("note: skipping PostgreSQL test: {ENV} not set (scripts/test.sh starts one; or export {ENV}=$(scripts/postgres.sh start $(mktemp -d)))");
            None
        }
    }
}

pub struct TestDb {
    pub url: String,
    admin: String,
    name: String,
}

/// `admin` with its database name replaced by `db`.
pub fn with_database(admin: &str, db: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{host_part}/{db}{query}")
}

pub async fn fresh_database(admin: &str) -> TestDb {
    let name = format!("chat_test_{}", chat_server::ids::new_id());
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    TestDb {
        url: with_database(admin, &name),
        admin: admin.to_string(),
        name,
    }
}

impl TestDb {
    pub async fn drop_db(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }
}
