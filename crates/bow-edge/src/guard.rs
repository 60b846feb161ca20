//! What a route asks of a request before it goes upstream (a route's [`RoutePolicy`]): the
//! client's address in its allowed networks and not in its denied ones (else 403), under its
//! request rate (a token bucket per client address, else 429 with `Retry-After`), a body no
//! larger than its limit (413), and signed in (HTTP Basic against `htpasswd` lines, else 401
//! with `WWW-Authenticate`; or a sub-request to an auth service, [`crate::forward_auth`]).
//!
//! A policy is resolved once, when the route table is built; a route without one costs the
//! request path a single `None` check. Its state (rate buckets, verified credentials) lives
//! in the policy, so the caller keeps one `Arc<RoutePolicy>` across route tables as long as
//! the route's settings do not change.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, StatusCode};

use crate::passwords::PasswordHash;

/// A route's checks; see the module documentation.
#[derive(Debug, Default)]
pub struct RoutePolicy {
    /// Clients outside these networks get 403 (when not empty).
    pub allow: Vec<ipnet::IpNet>,
    /// Clients in these networks get 403.
    pub deny: Vec<ipnet::IpNet>,
    /// Requests per client address.
    pub rate: Option<RateLimit>,
    /// The largest request body (instead of the edge's `max_body_size`).
    pub max_body_size: Option<u64>,
    /// How a client signs in.
    pub auth: Option<Auth>,
    /// Why the route's checks could not be set up: every request gets 503 (a route that
    /// should sign users in is never left open).
    pub unavailable: Option<String>,
}

/// How a route's clients sign in.
#[derive(Debug)]
pub enum Auth {
    Basic(BasicAuth),
    Forward(crate::forward_auth::ForwardAuth),
    Oidc(Box<crate::oidc::OidcAuth>),
}

/// Why a request is refused, as the edge answers it.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
    }
}

impl RoutePolicy {
    /// The checks of addresses, rate and body size, which need no waiting.
    pub(crate) fn admit(
        &self,
        client: IpAddr,
        declared_length: Option<u64>,
    ) -> Result<(), Refusal> {
        if self.unavailable.is_some() {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 this route's sign-in or limits could not be set up (`bow events` says why)",
            ));
        }
        let client = client.to_canonical();
        let denied = self.deny.iter().any(|network| network.contains(&client))
            || (!self.allow.is_empty() && !self.allow.iter().any(|net| net.contains(&client)));
        if denied {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("403 address {client} may not use this route"),
            ));
        }
        if let Some(rate) = &self.rate
            && let Err(wait) = rate.take(client, Instant::now())
        {
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut refusal = Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("429 too many requests from {client}: retry in {seconds}s"),
            );
            refusal
                .headers
                .push((http::header::RETRY_AFTER, HeaderValue::from(seconds)));
            return Err(refusal);
        }
        if let (Some(limit), Some(length)) = (self.max_body_size, declared_length)
            && length > limit
        {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("413 request body larger than {limit} bytes"),
            ));
        }
        Ok(())
    }
}

/// A token bucket per client address (an IPv6 client counts by its /64, as one host usually
/// has the whole /64). Memory is bounded: at [`RateLimit::MAX_CLIENTS`] buckets, the ones
/// that have filled up again (no different from a new one) are forgotten, and if that is not
/// enough the oldest half.
#[derive(Debug)]
pub struct RateLimit {
    /// Tokens added per second.
    per_second: f64,
    /// The bucket's size: requests a client may make at once.
    burst: f64,
    shards: [Mutex<HashMap<IpAddr, Bucket>>; SHARDS],
}

const SHARDS: usize = 8;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// Buckets kept per shard at most.
    pub const MAX_CLIENTS: usize = 16_384;

    /// `count` requests per `per`, `burst` at once (at least 1).
    pub fn new(count: u32, per: Duration, burst: u32) -> RateLimit {
        RateLimit {
            per_second: f64::from(count) / per.as_secs_f64().max(1e-3),
            burst: f64::from(burst.max(1)),
            shards: Default::default(),
        }
    }

    /// Takes a token for `client`, or says how long until one is there.
    fn take(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = match client {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            v4 => v4,
        };
        let shard = match key {
            IpAddr::V4(v4) => u32::from(v4) as usize,
            IpAddr::V6(v6) => (u128::from(v6) >> 64) as usize,
        } % SHARDS;
        let mut buckets = self.shards[shard]
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if buckets.len() >= Self::MAX_CLIENTS && !buckets.contains_key(&key) {
            self.forget_idle(&mut buckets, now);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }

    fn forget_idle(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        buckets.retain(|_, bucket| self.refilled(bucket, now) < self.burst);
        if buckets.len() >= Self::MAX_CLIENTS {
            let mut ages: Vec<Instant> = buckets.values().map(|bucket| bucket.at).collect();
            let middle = ages.len() / 2;
            let (_, median, _) = ages.select_nth_unstable(middle);
            let median = *median;
            buckets.retain(|_, bucket| bucket.at > median);
        }
    }
}

/// HTTP Basic sign-in against `user:hash` lines. A password that verified is remembered (a
/// keyed SHA-256 of it, per user, compared in constant time), so the slow hash (bcrypt) is
/// paid once per user and password, not per request; the memory is bounded by the number of
/// users in the file.
pub struct BasicAuth {
    realm: String,
    users: HashMap<String, PasswordHash>,
    /// A hash of the file, checked for unknown users: they take as long as known ones.
    decoy: PasswordHash,
    verified: Mutex<HashMap<String, [u8; 32]>>,
    key: [u8; 32],
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl BasicAuth {
    /// From the text of an `htpasswd` file: `user:hash` lines, `#` comments and blank lines.
    /// Hashes: bcrypt (`$2y$`, what `htpasswd -B` writes), `$apr1$` (MD5, `htpasswd -m`)
    /// and `{SHA}` (`htpasswd -s`). An error names the line (never its hash).
    pub fn from_htpasswd(realm: &str, text: &str) -> Result<BasicAuth, String> {
        let mut users = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("line {}: expected user:hash", number + 1));
            };
            let hash = PasswordHash::parse(hash)
                .map_err(|why| format!("line {} (user {user}): {why}", number + 1))?;
            if users.insert(user.to_string(), hash).is_some() {
                return Err(format!("line {}: user {user} appears twice", number + 1));
            }
        }
        let Some(decoy) = users.values().max_by_key(|hash| hash.cost()).cloned() else {
            return Err("no user:hash line".to_string());
        };
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| format!("no randomness: {e}"))?;
        Ok(BasicAuth {
            realm: realm.replace(['"', '\\'], ""),
            users,
            decoy,
            verified: Mutex::new(HashMap::new()),
            key,
        })
    }

    /// The signed-in user of a request whose `Authorization` header is `authorization`.
    pub(crate) async fn check(&self, authorization: Option<&[u8]>) -> Result<String, Refusal> {
        let credentials = authorization.and_then(basic_credentials);
        let Some((user, password)) = credentials else {
            return Err(self.challenge("401 sign in with a user name and password"));
        };
        let Some(hash) = self.users.get(&user) else {
            // The same work as a wrong password, so that timing does not tell users apart.
            let _ = self.decoy.clone().verify_blocking(&password).await;
            return Err(self.challenge("401 wrong user name or password"));
        };
        let digest = self.digest(&password);
        let remembered = self
            .verified
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&user)
            .is_some_and(|known| subtle::ConstantTimeEq::ct_eq(&known[..], &digest[..]).into());
        if remembered {
            return Ok(user);
        }
        if hash.clone().verify_blocking(&password).await {
            self.verified
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .insert(user.clone(), digest);
            return Ok(user);
        }
        Err(self.challenge("401 wrong user name or password"))
    }

    fn digest(&self, password: &str) -> [u8; 32] {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(self.key);
        hasher.update(password.as_bytes());
        hasher.finalize().into()
    }

    fn challenge(&self, message: &str) -> Refusal {
        let mut refusal = Refusal::new(StatusCode::UNAUTHORIZED, message);
        let value = format!("Basic realm=\"{}\", charset=\"UTF-8\"", self.realm);
        if let Ok(value) = HeaderValue::from_str(&value) {
            refusal
                .headers
                .push((http::header::WWW_AUTHENTICATE, value));
        }
        refusal
    }
}

/// `Basic base64(user:password)` → (user, password).
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    use base64::Engine;
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The value of the first `name` header of a request head (the upstream head, as the edge
/// wrote it: `name: value\r\n` lines), for routes that look at one.
pub(crate) fn header_value<'h>(head: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    head.split(|&byte| byte == b'\n')
        .skip(1)
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let colon = line.iter().position(|&byte| byte == b':')?;
            line[..colon]
                .eq_ignore_ascii_case(name)
                .then(|| line[colon + 1..].trim_ascii())
        })
}

/// The client address a policy sees.
pub(crate) fn client_ip(client: SocketAddr) -> IpAddr {
    client.ip().to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_the_rate() {
        let limit = RateLimit::new(5, Duration::from_secs(1), 5);
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let start = Instant::now();
        for _ in 0..5 {
            assert!(limit.take(client, start).is_ok());
        }
        let wait = limit.take(client, start).unwrap_err();
        assert!(wait <= Duration::from_millis(200) && wait > Duration::from_millis(150));
        // Another client has its own bucket.
        assert!(limit.take("10.0.0.2".parse().unwrap(), start).is_ok());
        assert!(
            limit
                .take(client, start + Duration::from_millis(210))
                .is_ok()
        );
        assert!(
            limit
                .take(client, start + Duration::from_millis(220))
                .is_err()
        );
        // One host's IPv6 addresses share their /64.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let once = RateLimit::new(1, Duration::from_secs(60), 1);
        assert!(once.take(a, start).is_ok());
        assert!(once.take(b, start).is_err());
    }

    #[test]
    fn memory_stays_bounded_under_many_clients() {
        let limit = RateLimit::new(1, Duration::from_secs(3600), 2);
        let start = Instant::now();
        for n in 0..(RateLimit::MAX_CLIENTS as u32 * SHARDS as u32 * 3) {
            let client = IpAddr::V4(n.into());
            let _ = limit.take(client, start + Duration::from_micros(u64::from(n)));
        }
        for shard in &limit.shards {
            assert!(shard.lock().unwrap().len() <= RateLimit::MAX_CLIENTS);
        }
    }

    #[test]
    fn addresses_are_allowed_and_denied_by_network() {
        let policy = RoutePolicy {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            deny: vec!["10.9.0.0/16".parse().unwrap()],
            max_body_size: Some(10),
            ..RoutePolicy::default()
        };
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert!(policy.admit(ip("10.1.2.3"), None).is_ok());
        assert_eq!(
            policy.admit(ip("10.9.2.3"), None).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            policy.admit(ip("192.168.1.1"), None).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert!(policy.admit(ip("::ffff:10.1.2.3"), Some(10)).is_ok());
        assert_eq!(
            policy.admit(ip("10.1.2.3"), Some(11)).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn the_authorization_header_is_found_in_a_head() {
        let head = b"GET / HTTP/1.1\r\nhost: a\r\nAuthorization:  Basic eA== \r\nx: y\r\n\r\n";
        assert_eq!(
            header_value(head, b"authorization"),
            Some(&b"Basic eA=="[..])
        );
        assert_eq!(header_value(head, b"cookie"), None);
        use base64::Engine;
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:wonder: land")
        );
        assert_eq!(
            basic_credentials(value.as_bytes()),
            Some(("alice".to_string(), "wonder: land".to_string()))
        );
        assert_eq!(basic_credentials(b"Bearer x"), None);
    }

    #[tokio::test]
    async fn htpasswd_lines_sign_users_in() {
        let text = "# users\nalice:$2y$05$tm4Ug1.F5puELvTDuscKNO8OzPNPAzeaed4Yc1NVLF6HcOnXnFjsq\n\
                    bob:$apr1$ITi9r8b3$.hfTExDojFnkJtvbaRpA51\ncarol:{SHA}w24zq5KWQmx3ubdRSJwinHNdFYQ=\n";
        let auth = BasicAuth::from_htpasswd("app", text).unwrap();
        let header = |user: &str, password: &str| {
            use base64::Engine;
            let pair = format!("{user}:{password}");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        };
        for user in ["alice", "bob", "carol"] {
            let right = header(user, "wonder land");
            assert_eq!(auth.check(Some(right.as_bytes())).await.unwrap(), user);
            // Again: from the remembered digest.
            assert_eq!(auth.check(Some(right.as_bytes())).await.unwrap(), user);
            let wrong = header(user, "wonder lan");
            let refused = auth.check(Some(wrong.as_bytes())).await.unwrap_err();
            assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
            assert!(
                refused.headers[0]
                    .1
                    .to_str()
                    .unwrap()
                    .contains("realm=\"app\"")
            );
        }
        assert!(auth.check(None).await.is_err());
        let nobody = header("dave", "wonder land");
        assert!(auth.check(Some(nobody.as_bytes())).await.is_err());
        let bad = BasicAuth::from_htpasswd("app", "alice:plaintext\n").unwrap_err();
        assert!(
            bad.contains("line 1") && !bad.contains("plaintext"),
            "{bad}"
        );
    }
}
