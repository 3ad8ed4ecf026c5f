//! Bearer tokens: `Authorization: Bearer <token>` (the scheme in any case,
//! RFC 9110 §11.1). A token of the wrong shape is refused without asking
//! the database; a well-shaped one is looked up by its SHA-256 (a unique
//! index, so the answer takes the same time whatever the token), and
//! remembered for [`TOKEN_TTL`] once verified. Token checks not answered
//! from memory are rate-limited per source address, so guessing tokens
//! costs the guesser time and the database nothing.

use super::{Api, Problem};
use crate::domain::TenantId;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// How long a verified token is trusted without asking the database again.
/// A replaced token stays valid in a running api for at most that long.
pub const TOKEN_TTL: Duration = Duration::from_secs(10);

/// Token checks (not answered from memory) per second per source address.
pub const AUTH_CHECKS_PER_SEC: NonZeroU32 = NonZeroU32::new(10).unwrap();
/// How many of them may come at once.
pub const AUTH_CHECKS_BURST: NonZeroU32 = NonZeroU32::new(20).unwrap();

/// The shape of the tokens `crmsync tenant create` issues: `cst_` and 32
/// random bytes in unpadded URL-safe base64.
fn well_formed(token: &str) -> bool {
    token.len() == 47
        && token.starts_with("cst_")
        && token[4..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The credentials of an `Authorization` value with the Bearer scheme.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whose budget a token check spends: the peer's address (an IPv6 peer's
/// /64, which one host usually owns whole), or — when the server does not
/// say who the peer is — one bucket shared by all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Shared,
    Addr(IpAddr),
}

impl Source {
    fn of(parts: &Parts) -> Self {
        match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(addr)) => match addr.ip().to_canonical() {
                IpAddr::V6(v6) => Source::Addr(IpAddr::V6(Ipv6Addr::from(
                    u128::from(v6) & !u128::from(u64::MAX),
                ))),
                v4 => Source::Addr(v4),
            },
            None => Source::Shared,
        }
    }
}

/// Recently verified tokens (by hash) and the per-source budget of checks.
pub(super) struct Auth {
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], (TenantId, Instant)>>,
    checks: DefaultKeyedRateLimiter<Source>,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            verified: Default::default(),
            checks: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(AUTH_CHECKS_PER_SEC).allow_burst(AUTH_CHECKS_BURST),
            ),
        }
    }
}

impl Auth {
    fn remembered(&self, key: &[u8; 32], now: Instant) -> Option<TenantId> {
        let cache = self.verified.lock().ok()?;
        cache
            .get(key)
            .filter(|(_, at)| now.duration_since(*at) < TOKEN_TTL)
            .map(|(tenant, _)| *tenant)
    }

    fn remember(&self, key: [u8; 32], tenant: TenantId, now: Instant) {
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() > 10_000 {
                cache.retain(|_, (_, at)| now.duration_since(*at) < TOKEN_TTL);
            }
            cache.insert(key, (tenant, now));
        }
    }

    /// Spends one check of `source`'s budget, or says when one is free.
    fn spend(&self, source: Source) -> Result<(), Problem> {
        if self.checks.len() > 10_000 {
            self.checks.retain_recent();
        }
        self.checks.check_key(&source).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.checks.clock().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many token checks from this address; retry later",
            )
            .retry_after(secs.max(1))
        })
    }
}

/// The caller's tenant, from `Authorization: Bearer <token>`.
pub struct Tenant(pub TenantId);

impl FromRequestParts<Api> for Tenant {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or_else(|| Problem::new(StatusCode::UNAUTHORIZED, "missing bearer token"))?;
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some(tenant) = api.auth.remembered(&key, now) {
            return Ok(Tenant(tenant));
        }
        api.auth.spend(Source::of(parts))?;
        if !well_formed(token) {
            return Err(Problem::new(StatusCode::UNAUTHORIZED, "unknown token"));
        }
        match api.store.tenant_by_token(token).await? {
            Some(tenant) => {
                api.auth.remember(key, tenant, now);
                Ok(Tenant(tenant))
            }
            None => Err(Problem::new(StatusCode::UNAUTHORIZED, "unknown token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_case_insensitive_and_the_token_must_be_there() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER \t abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn only_issued_shapes_are_looked_up() {
        let issued = format!("cst_{}", "A".repeat(43));
        assert!(well_formed(&issued));
        assert!(!well_formed("cst_not-a-token"));
        assert!(!well_formed(&format!("cst_{}", "é".repeat(21))));
        assert!(!well_formed(&format!("cst_{}!", "A".repeat(42))));
    }
}
