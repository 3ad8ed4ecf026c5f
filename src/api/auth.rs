//! Bearer tokens: `Authorization: Bearer <token>` (the scheme in any case,
//! RFC 9110 §11.1). A token of the wrong shape is refused without asking
//! the database; a well-shaped one is looked up by its SHA-256 (a unique
//! index, so the answer takes the same time whatever the token), and
//! remembered for [`TOKEN_TTL`] once verified. *Failed* token checks are
//! rate-limited per source address, so guessing tokens costs the guesser
//! time and the database next to nothing, while valid tokens never spend
//! the budget: behind a load balancer, every tenant's requests come from
//! one address, and one guesser there must not lock them out. The source
//! is the peer, or — for a peer in `api.trusted_proxies` — the client that
//! `X-Forwarded-For` names.

use super::{Api, Problem};
use crate::domain::TenantId;
use crate::http_server::IpRange;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// How long a verified token is trusted without asking the database again.
/// A replaced token stays valid in a running api for at most that long.
pub const TOKEN_TTL: Duration = Duration::from_secs(10);

/// Failed token checks per second per source address.
pub const AUTH_CHECKS_PER_SEC: NonZeroU32 = NonZeroU32::new(10).unwrap();
/// How many failed checks may come at once.
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

/// Whose budget a failed token check spends: the client's address (an IPv6
/// client's /64, which one host usually owns whole), or — when the server
/// does not say who the peer is — one bucket shared by all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Shared,
    Addr(IpAddr),
}

impl Source {
    fn of(parts: &Parts, trusted: &[IpRange]) -> Self {
        match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(peer)) => match client(peer.ip(), &parts.headers, trusted) {
                IpAddr::V6(v6) => Source::Addr(IpAddr::V6(Ipv6Addr::from(
                    u128::from(v6) & !u128::from(u64::MAX),
                ))),
                v4 => Source::Addr(v4),
            },
            None => Source::Shared,
        }
    }
}

/// The client's address: the peer's, or — when the peer is a trusted proxy
/// — the last `X-Forwarded-For` address that is not a trusted proxy. Each
/// proxy appends the address it saw, so the hops right of that one were
/// written by trusted proxies, and whatever is left of it a client may have
/// made up. A hop that does not read as an address ends the walk at the
/// proxy after it.
fn client(peer: IpAddr, headers: &HeaderMap, trusted: &[IpRange]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |addr: IpAddr| trusted.iter().any(|range| range.contains(addr));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let parsed = hop
            .parse::<IpAddr>()
            .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()));
        let Ok(addr) = parsed else {
            break;
        };
        client = addr.to_canonical();
        if !is_trusted(client) {
            break;
        }
    }
    client
}

/// Recently verified tokens (by hash) and the per-source budget of failed
/// checks.
pub(super) struct Auth {
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], (TenantId, Instant)>>,
    failures: DefaultKeyedRateLimiter<Source>,
    /// Sources whose budget ran out, until it has room again: their tokens
    /// not in memory are answered 429 without a lookup, so a guesser costs
    /// the database at most [`AUTH_CHECKS_PER_SEC`] lookups a second.
    blocked: std::sync::Mutex<std::collections::HashMap<Source, Instant>>,
    /// The proxies whose `X-Forwarded-For` is believed.
    trusted: Vec<IpRange>,
}

/// The most sources remembered before stale entries are dropped.
const MAX_SOURCES: usize = 10_000;

impl Auth {
    /// Checks charged to sources behind `trusted_proxies` (entries that do
    /// not parse are left out; start-up refuses them).
    pub(super) fn new(trusted_proxies: &[String]) -> Self {
        Self {
            verified: Default::default(),
            failures: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(AUTH_CHECKS_PER_SEC).allow_burst(AUTH_CHECKS_BURST),
            ),
            blocked: Default::default(),
            trusted: trusted_proxies
                .iter()
                .filter_map(|entry| entry.parse().ok())
                .collect(),
        }
    }

    fn remembered(&self, key: &[u8; 32], now: Instant) -> Option<TenantId> {
        let cache = self.verified.lock().ok()?;
        cache
            .get(key)
            .filter(|(_, at)| now.duration_since(*at) < TOKEN_TTL)
            .map(|(tenant, _)| *tenant)
    }

    fn remember(&self, key: [u8; 32], tenant: TenantId, now: Instant) {
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() > MAX_SOURCES {
                cache.retain(|_, (_, at)| now.duration_since(*at) < TOKEN_TTL);
            }
            cache.insert(key, (tenant, now));
        }
    }

    /// A 429 while `source` has no room for another failure.
    fn admit(&self, source: Source, now: Instant) -> Result<(), Problem> {
        let until = self
            .blocked
            .lock()
            .ok()
            .and_then(|blocked| blocked.get(&source).copied());
        match until {
            Some(until) if until > now => Err(too_many(until - now)),
            _ => Ok(()),
        }
    }

    /// Charges one failed check to `source`; past its budget, a 429 (and
    /// the source waits, see [`Auth::blocked`]).
    fn fail(&self, source: Source, now: Instant) -> Result<(), Problem> {
        if self.failures.len() > MAX_SOURCES {
            self.failures.retain_recent();
        }
        let Err(not_until) = self.failures.check_key(&source) else {
            return Ok(());
        };
        let wait = not_until.wait_time_from(self.failures.clock().now());
        if let Ok(mut blocked) = self.blocked.lock() {
            if blocked.len() > MAX_SOURCES {
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(source, now + wait);
        }
        Err(too_many(wait))
    }
}

/// The answer to a source past its budget of failed checks.
fn too_many(wait: Duration) -> Problem {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed token checks from this address; retry later",
    )
    .retry_after(secs.max(1))
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
        let source = Source::of(parts, &api.auth.trusted);
        api.auth.admit(source, now)?;
        let found = if well_formed(token) {
            api.store.tenant_by_token(token).await?
        } else {
            None
        };
        match found {
            Some(tenant) => {
                api.auth.remember(key, tenant, now);
                Ok(Tenant(tenant))
            }
            None => {
                api.auth.fail(source, now)?;
                Err(Problem::new(StatusCode::UNAUTHORIZED, "unknown token"))
            }
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
    fn the_client_is_the_last_forwarded_address_a_trusted_proxy_did_not_write() {
        let ip = |t: &str| t.parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}"));
        let trusted: Vec<IpRange> = ["10.0.0.0/8"]
            .iter()
            .filter_map(|t| t.parse().ok())
            .collect();
        let forwarded = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                if let Ok(v) = v.parse() {
                    headers.append("x-forwarded-for", v);
                }
            }
            headers
        };
        let proxy = ip("10.0.0.5");
        // An untrusted peer's header is its own invention.
        let spoofed = forwarded(&["198.51.100.1"]);
        assert_eq!(
            client(ip("203.0.113.9"), &spoofed, &trusted),
            ip("203.0.113.9")
        );
        // Through two trusted proxies: the address the first one saw.
        let chain = forwarded(&["198.51.100.1, 203.0.113.7", "10.1.1.1"]);
        assert_eq!(client(proxy, &chain, &trusted), ip("203.0.113.7"));
        // No header: the proxy itself; a garbled hop stops at the proxy after it.
        assert_eq!(client(proxy, &HeaderMap::new(), &trusted), proxy);
        let garbled = forwarded(&["203.0.113.7, garbage, 10.1.1.1"]);
        assert_eq!(client(proxy, &garbled, &trusted), ip("10.1.1.1"));
        // A port is tolerated; an IPv4-mapped peer is its IPv4 address.
        let with_port = forwarded(&["203.0.113.7:4711"]);
        assert_eq!(client(proxy, &with_port, &trusted), ip("203.0.113.7"));
        assert_eq!(
            client(ip("::ffff:10.0.0.5"), &with_port, &trusted),
            ip("203.0.113.7")
        );
        // Without trusted proxies, the peer always.
        assert_eq!(client(proxy, &chain, &[]), proxy);
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
