//! Authentication: password hashing, session tokens and finding the token in a request.
//!
//! Passwords are hashed with Argon2id at the cost in [`PasswordCost`] (default 4 MiB, t=1, p=1:
//! a few milliseconds, so logins of thousands of simulated users stay cheap yet every guess still
//! costs an attacker memory). Hashing runs off the event loop, at most one hash per core at a
//! time, on threads of its own ([`Hashing`]): each hash takes its cost's memory, and tokio's
//! blocking pool would run hundreds at once during a load test's setup (thousands of sign-ups and
//! logins arriving together), leaving the server at a gigabyte it never returns. More at once
//! would not finish sooner: hashing is CPU-bound.
//! Session tokens are random 26-character ids; only their SHA-256 is stored, so a database leak does
//! not leak usable tokens. A small in-memory cache avoids a database read per authenticated request;
//! logout removes the session from both.

use std::collections::HashMap;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::http::HeaderMap;
use parking_lot::RwLock;
use sha2::{Digest, Sha256};

use crate::config::PasswordCost;
use crate::error::ApiError;
use crate::ids::{new_id, now_ms};
use crate::store::Store;

/// Issues and checks sessions.
pub struct Auth {
    store: Store,
    cost: PasswordCost,
    ttl_ms: i64,
    cache: RwLock<HashMap<String, (Arc<str>, i64)>>,
    /// Password hashing and verification, one per core at a time.
    hashing: Hashing,
}

/// Runs CPU-bound jobs on `limit` threads of its own; the rest wait in a queue, without a thread.
/// Own threads rather than tokio's blocking pool: the pool would run a job on whichever of up
/// to 512 threads is idle, and each thread's malloc arena keeps the 4 MiB an Argon2 hash took
/// (glibc raises its mmap threshold after the first such free), so memory grows with the
/// threads that ever hashed; here it stays at `limit` of them.
struct Hashing {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl Hashing {
    fn new(limit: usize) -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let queue = Arc::new(parking_lot::Mutex::new(queue));
        for i in 0..limit.max(1) {
            let queue = queue.clone();
            // A thread that cannot be made leaves fewer workers; with none, `run` reports it.
            let _ = std::thread::Builder::new()
                .name(format!("hash-{i}"))
                .spawn(move || loop {
                    let job = queue.lock().recv();
                    match job {
                        Ok(job) => job(),
                        // The server is gone.
                        Err(_) => return,
                    }
                });
        }
        Hashing { jobs }
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(job());
            }))
            .map_err(|_| ApiError::Internal("the hashing threads are gone".into()))?;
        rx.await
            .map_err(|_| ApiError::Internal("a hashing job did not finish".into()))
    }
}

/// The SHA-256 of a token, hex encoded: the only form in which tokens are stored.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Finds the session token in a request, in Mattermost's order: cookie `MMAUTHTOKEN`, then
/// `Authorization: Bearer <t>` (any case), then `Authorization: Token <t>`, then `access_token`.
pub fn token_from_request(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    for cookies in headers.get_all(axum::http::header::COOKIE) {
        let Ok(cookies) = cookies.to_str() else {
            continue;
        };
        for c in cookies.split(';') {
            if let Some(v) = c.trim().strip_prefix("MMAUTHTOKEN=") {
                if !v.is_empty() {
                    return Some(v.to_string());
                }
            }
        }
    }
    if let Some(h) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
    {
        let h = h.trim();
        if let Some((scheme, rest)) = h.split_once(' ') {
            let t = rest.trim();
            if !t.is_empty()
                && (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
            {
                return Some(t.to_string());
            }
        }
    }
    query.and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("access_token="))
            .filter(|t| !t.is_empty())
            .map(str::to_string)
    })
}

impl Auth {
    pub fn new(store: Store, cost: PasswordCost, ttl: std::time::Duration) -> Auth {
        Auth {
            store,
            cost,
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            cache: RwLock::new(HashMap::new()),
            hashing: Hashing::new(std::thread::available_parallelism().map_or(1, |n| n.get())),
        }
    }

    fn argon2(cost: &PasswordCost) -> Result<Argon2<'static>, ApiError> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|e| ApiError::Internal(format!("argon2 params: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// A PHC-format Argon2id hash of `password`.
    pub async fn hash_password(&self, password: String) -> Result<String, ApiError> {
        let cost = self.cost.clone();
        self.hashing
            .run(move || {
                let salt = SaltString::generate(&mut rand::thread_rng());
                Auth::argon2(&cost)?
                    .hash_password(password.as_bytes(), &salt)
                    .map(|h| h.to_string())
                    .map_err(|e| ApiError::Internal(format!("hashing: {e}")))
            })
            .await?
    }

    /// Whether `password` matches `hash` (the cost stored in the hash is used).
    pub async fn verify_password(&self, password: String, hash: String) -> bool {
        self.hashing
            .run(move || {
                PasswordHash::new(&hash)
                    .map(|h| {
                        Argon2::default()
                            .verify_password(password.as_bytes(), &h)
                            .is_ok()
                    })
                    .unwrap_or(false)
            })
            .await
            .unwrap_or(false)
    }

    /// Creates a session and returns its token (the only time the plain token exists).
    pub async fn create_session(&self, user_id: &str) -> Result<String, ApiError> {
        let token = new_id();
        let now = now_ms();
        let expires = now.saturating_add(self.ttl_ms);
        let h = hash_token(&token);
        self.store.create_session(&h, user_id, now, expires).await?;
        self.cache.write().insert(h, (Arc::from(user_id), expires));
        Ok(token)
    }

    /// The user id of a valid session token.
    pub async fn user_for_token(&self, token: &str) -> Result<Option<Arc<str>>, ApiError> {
        let h = hash_token(token);
        let now = now_ms();
        if let Some((uid, exp)) = self.cache.read().get(&h) {
            if *exp > now {
                return Ok(Some(uid.clone()));
            }
        }
        match self.store.session(&h).await? {
            Some((uid, exp)) if exp > now => {
                let uid: Arc<str> = Arc::from(uid);
                let mut cache = self.cache.write();
                // Bounded: sessions of a load test can number in the hundreds of thousands.
                if cache.len() > 200_000 {
                    cache.clear();
                }
                cache.insert(h, (uid.clone(), exp));
                Ok(Some(uid))
            }
            _ => Ok(None),
        }
    }

    /// Revokes a session.
    pub async fn revoke(&self, token: &str) -> Result<(), ApiError> {
        let h = hash_token(token);
        self.cache.write().remove(&h);
        self.store.delete_session(&h).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_hashes_run_at_once_than_the_limit() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let h = Arc::new(Hashing::new(2));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..24)
            .map(|_| {
                let (h, running, most) = (h.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    h.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for j in jobs {
            j.await.expect("the job task").expect("the job");
        }
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} ran at once");
    }

    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn token_sources_in_mattermost_order() {
        let mut h = HeaderMap::new();
        assert_eq!(
            token_from_request(&h, Some("a=1&access_token=q")),
            Some("q".into())
        );
        h.insert("authorization", HeaderValue::from_static("Token tok"));
        assert_eq!(
            token_from_request(&h, Some("access_token=q")),
            Some("tok".into())
        );
        h.insert("authorization", HeaderValue::from_static("BEARER bt"));
        assert_eq!(token_from_request(&h, None), Some("bt".into()));
        h.insert(
            "cookie",
            HeaderValue::from_static("x=1; MMAUTHTOKEN=ck; y=2"),
        );
        assert_eq!(token_from_request(&h, None), Some("ck".into()));
    }

    #[test]
    fn malformed_authorization_is_no_token() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(token_from_request(&h, None), None);
        h.insert("authorization", HeaderValue::from_static("Bearer"));
        assert_eq!(token_from_request(&h, None), None);
        assert_eq!(token_from_request(&h, Some("access_token=")), None);
    }

    #[test]
    fn token_hash_is_hex_sha256() {
        let h = hash_token("abc");
        assert_eq!(h.len(), 64);
        assert!(h.starts_with("ba7816bf"));
    }
}
