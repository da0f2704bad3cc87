//! API keys and rate limits of the control plane: `pk_…` keys made from 32 random bytes,
//! kept only as their SHA-256, looked up with a short cache (so a revoked key stops working
//! within [`KEY_CACHE_TTL`]), and two token buckets per key (an hour's budget and a minute's
//! burst). Buckets live in each replica's memory: with N replicas a key may get up to N times
//! the limit (written down in docs/control-plane.md).

use super::db::{Db, DbError, KeyProject};
use crate::wire::RequestError;
use base64::Engine;
use rand::RngCore;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a key's lookup (found or not) is trusted before the database is asked again.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);
/// Cached lookups at most; past it the cache starts over (a flood of random keys cannot grow it).
const KEY_CACHE_MAX: usize = 50_000;
/// The characters of a key shown in listings (`pk_` and 8 more).
const PREFIX_LEN: usize = 11;

/// A new key: (the key, shown once; its hash; its prefix).
pub fn new_key() -> (String, Vec<u8>, String) {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let key = format!("pk_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
    let hash = hash(&key);
    let prefix = key.chars().take(PREFIX_LEN).collect();
    (key, hash, prefix)
}

pub fn hash(key: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
        .as_ref()
        .to_vec()
}

/// The bearer token of a request, if it has the form of a key.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && token.starts_with("pk_") && token.len() <= 256).then_some(token)
}

/// A cached lookup: when it was made, and what it found.
type Lookup = (Instant, Option<KeyProject>);

/// Resolves keys to their project, with a short cache.
pub struct Keys {
    db: Db,
    cache: Mutex<HashMap<Vec<u8>, Lookup>>,
    limits: RateLimits,
}

/// Requests a key may make: per hour, and as a burst per minute; 0 turns a limit off.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_hour: u32,
    pub per_minute: u32,
}

impl Keys {
    pub fn new(db: Db, limits: Limits) -> Keys {
        Keys {
            db,
            cache: Mutex::new(HashMap::new()),
            limits: RateLimits::new(limits),
        }
    }

    /// The project of the request's key, its rate limit taken: 401 without a valid key, 429
    /// past the limits.
    pub async fn authorize(&self, headers: &http::HeaderMap) -> Result<KeyProject, RequestError> {
        let unauthorized =
            || RequestError::Unauthorized("a valid API key is required: send `Authorization: Bearer pk_…`".into());
        let token = bearer(headers).ok_or_else(unauthorized)?;
        let h = hash(token);
        let found = self.lookup(h).await.map_err(db_error)?;
        let project = found.ok_or_else(unauthorized)?;
        self.limits.take(project.key_id, Instant::now())?;
        Ok(project)
    }

    async fn lookup(&self, h: Vec<u8>) -> Result<Option<KeyProject>, DbError> {
        let now = Instant::now();
        if let Ok(cache) = self.cache.lock()
            && let Some((at, found)) = cache.get(&h)
            && now.duration_since(*at) < KEY_CACHE_TTL
        {
            return Ok(found.clone());
        }
        let found = self.db.key_project(&h).await?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= KEY_CACHE_MAX {
                cache.clear();
            }
            cache.insert(h, (now, found.clone()));
        }
        Ok(found)
    }
}

/// A database failure as the client sees it: retry later, no detail of the database.
pub fn db_error(e: DbError) -> RequestError {
    tracing::warn!(error = %e, "database request failed");
    RequestError::Retry("the database is unavailable; retry later".into())
}

/// A token bucket: `capacity` tokens, refilled at `capacity` per `period`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

struct RateLimits {
    limits: Limits,
    buckets: Mutex<HashMap<i64, [Bucket; 2]>>,
}

impl RateLimits {
    fn new(limits: Limits) -> RateLimits {
        RateLimits {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from both of the key's buckets, or says how long until it could.
    fn take(&self, key: i64, now: Instant) -> Result<(), RequestError> {
        let specs = [
            (self.limits.per_hour, Duration::from_secs(3600)),
            (self.limits.per_minute, Duration::from_secs(60)),
        ];
        if specs.iter().all(|(cap, _)| *cap == 0) {
            return Ok(());
        }
        let Ok(mut all) = self.buckets.lock() else {
            return Ok(());
        };
        let fresh = |cap: u32| Bucket {
            tokens: f64::from(cap),
            at: now,
        };
        let buckets = all.entry(key).or_insert_with(|| [fresh(specs[0].0), fresh(specs[1].0)]);
        let mut wait = 0f64;
        for (b, (cap, period)) in buckets.iter_mut().zip(specs) {
            if cap == 0 {
                continue;
            }
            let rate = f64::from(cap) / period.as_secs_f64();
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(f64::from(cap));
            b.at = now;
            if b.tokens < 1.0 {
                wait = wait.max((1.0 - b.tokens) / rate);
            }
        }
        if wait > 0.0 {
            return Err(RequestError::RateLimited {
                retry_after_secs: wait.ceil().max(1.0) as u64,
            });
        }
        for (b, (cap, _)) in buckets.iter_mut().zip(specs) {
            if cap > 0 {
                b.tokens -= 1.0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hashed() {
        let (a, ha, pa) = new_key();
        let (b, hb, _) = new_key();
        assert_ne!(a, b);
        assert!(a.starts_with("pk_") && a.len() == 46, "{a}");
        assert_eq!(ha, hash(&a));
        assert_ne!(ha, hb);
        assert_eq!(pa, &a[..PREFIX_LEN]);
    }

    #[test]
    fn bearer_takes_only_keys() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer pk_abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("pk_abc"));
        h.insert(http::header::AUTHORIZATION, "bearer  pk_abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("pk_abc"));
        h.insert(http::header::AUTHORIZATION, "Basic pk_abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer sk_abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn the_burst_then_the_refill() {
        let rl = RateLimits::new(Limits {
            per_hour: 10_000,
            per_minute: 100,
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            rl.take(1, t0).unwrap();
        }
        let Err(RequestError::RateLimited { retry_after_secs }) = rl.take(1, t0) else {
            panic!("the 101st request of a minute must be refused");
        };
        assert_eq!(retry_after_secs, 1);
        // Another key has its own buckets.
        rl.take(2, t0).unwrap();
        // 0.6 s later one token is back (100 a minute).
        rl.take(1, t0 + Duration::from_millis(610)).unwrap();
        assert!(rl.take(1, t0 + Duration::from_millis(620)).is_err());
    }

    #[test]
    fn the_hour_budget_binds_past_the_bursts() {
        let rl = RateLimits::new(Limits {
            per_hour: 150,
            per_minute: 100,
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            rl.take(1, t0).unwrap();
        }
        // A minute later the burst is full again but only 50 (+2.5 refilled) of the hour remain.
        let t1 = t0 + Duration::from_secs(60);
        let ok = (0..100).filter(|_| rl.take(1, t1).is_ok()).count();
        assert_eq!(ok, 52);
        let Err(RequestError::RateLimited { retry_after_secs }) = rl.take(1, t1) else {
            panic!("the hour's budget is spent");
        };
        assert!((1..=24).contains(&retry_after_secs), "{retry_after_secs}");
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let rl = RateLimits::new(Limits {
            per_hour: 0,
            per_minute: 0,
        });
        let t0 = Instant::now();
        for _ in 0..10_000 {
            rl.take(1, t0).unwrap();
        }
    }
}
