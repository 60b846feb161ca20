//! The edge's per-route checks (`auth:`, `limits:` of a route) as `bow-edge` policies. A
//! policy is made when its route's settings, its secret's digest or its auth service's
//! address change, and kept otherwise: it holds the route's rate buckets and verified
//! credentials, which a new route table (every health change makes one) must not reset.
//!
//! A policy that cannot be made (a secret missing, an `htpasswd` line unreadable, an auth
//! service without an address yet) fails closed: the route answers 503 and says why, and an
//! `edge-warning` event names the route.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bow_edge::RoutePolicy;
use bow_reconcile::EventKind;
use bow_spec::{RouteAuth, Spec};

use crate::plane::Plane;

/// How long an OpenID Connect session lasts before the user signs in again.
const OIDC_SESSION: Duration = Duration::from_secs(8 * 3600);

/// The edge's session key (32 random bytes, made once, 0600): sessions survive restarts.
fn session_key(state_dir: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join("edge").join("session.key");
    if let Ok(key) = std::fs::read(&path)
        && key.len() == 32
    {
        return Ok(key);
    }
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key).map_err(|e| format!("no randomness: {e}"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(&key)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(key)
}

/// How long an auth service may take to answer.
const FORWARD_AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a policy was made from.
#[derive(Clone, PartialEq)]
struct Made {
    route: bow_spec::Route,
    secret_digest: Option<String>,
    forward_to: Option<SocketAddr>,
    /// The edge's HTTPS port (an OpenID Connect redirect URI names it).
    https_port: u16,
}

/// The policies made so far, by route label (`host/prefix`).
#[derive(Default)]
pub(crate) struct Policies {
    made: Mutex<HashMap<String, (Made, Arc<RoutePolicy>)>>,
}

/// The label the edge gives a route (`host` + prefix), the key of its policy.
pub(crate) fn label(route: &bow_spec::Route) -> String {
    format!("{}{}", route.host, route.path)
}

impl Plane {
    /// The policy of every route of `spec` that has `auth` or `limits`, by label; `names`
    /// gives each service's discovery address (an auth service's).
    pub(crate) fn route_policies(
        &self,
        spec: Option<&Spec>,
        names: &std::collections::BTreeMap<String, SocketAddr>,
    ) -> HashMap<String, Arc<RoutePolicy>> {
        let Some(spec) = spec else {
            return HashMap::new();
        };
        let mut wanted = Vec::new();
        for service in spec.services.values() {
            for route in &service.routes {
                if route.auth.is_none() && route.limits.is_none() {
                    continue;
                }
                let secret_digest = match &route.auth {
                    Some(RouteAuth::Basic { users_secret }) => {
                        service.secret_digests.get(users_secret).cloned()
                    }
                    Some(RouteAuth::Oidc(oidc)) => service
                        .secret_digests
                        .get(&oidc.client_secret_secret)
                        .cloned(),
                    _ => None,
                };
                let forward_to = match &route.auth {
                    Some(RouteAuth::Forward(forward)) => names.get(&forward.service).copied(),
                    _ => None,
                };
                wanted.push(Made {
                    route: route.clone(),
                    secret_digest,
                    forward_to,
                    https_port: spec.edge.https_port,
                });
            }
        }
        let mut made = self
            .route_policies
            .made
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut policies = HashMap::new();
        let mut warnings = Vec::new();
        for want in wanted {
            let key = label(&want.route);
            let policy = match made.get(&key) {
                Some((before, policy)) if *before == want => policy.clone(),
                _ => {
                    let policy = match self.make_policy(&want) {
                        Ok(policy) => policy,
                        Err(reason) => {
                            warnings
                                .push(format!("route {key}: {reason}; it answers 503 until fixed"));
                            RoutePolicy {
                                unavailable: Some(reason),
                                ..RoutePolicy::default()
                            }
                        }
                    };
                    let policy = Arc::new(policy);
                    made.insert(key.clone(), (want, policy.clone()));
                    policy
                }
            };
            policies.insert(key, policy);
        }
        made.retain(|key, _| policies.contains_key(key));
        drop(made);
        for warning in warnings {
            self.emit("", "", EventKind::EdgeWarning, &warning);
        }
        policies
    }

    /// A route's OpenID Connect sign-in: its client secret from the secrets file, its session
    /// key derived from the edge's (`<state-dir>/edge/session.key`) and the route's label.
    fn oidc(&self, made: &Made, oidc: &bow_spec::OidcAuth) -> Result<bow_edge::OidcAuth, String> {
        use hmac::Mac;
        let secret =
            crate::secrets::reveal_from(self.secrets.as_ref(), &oidc.client_secret_secret)?;
        let client_secret = String::from_utf8(secret)
            .map_err(|_| format!("secret {} is not text", oidc.client_secret_secret))?;
        let edge_key = session_key(&self.state_dir)?;
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&edge_key).map_err(|e| e.to_string())?;
        mac.update(b"bow oidc session\0");
        mac.update(label(&made.route).as_bytes());
        let session_key: [u8; 32] = mac.finalize().into_bytes().into();
        let prefix = made.route.path.trim_end_matches('/');
        let port = match made.https_port {
            443 => String::new(),
            port => format!(":{port}"),
        };
        let settings = bow_edge::OidcSettings {
            issuer: oidc.issuer.clone(),
            client_id: oidc.client_id.clone(),
            client_secret,
            allowed: oidc.allowed.clone(),
            redirect_uri: format!(
                "https://{}{port}{prefix}/.bow/oidc/callback",
                made.route.host
            ),
            session_lifetime: OIDC_SESSION,
            session_key,
            roots: Arc::new(bow_edge::trusted_roots()?),
        };
        bow_edge::OidcAuth::new(settings, prefix)
    }

    fn make_policy(&self, made: &Made) -> Result<RoutePolicy, String> {
        let mut policy = RoutePolicy::default();
        if let Some(limits) = &made.route.limits {
            let networks = |list: &[String]| {
                list.iter()
                    .map(|text| {
                        text.parse::<ipnet::IpNet>()
                            .map_err(|e| format!("{text}: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            policy.allow = networks(&limits.allow)?;
            policy.deny = networks(&limits.deny)?;
            policy.max_body_size = limits.body.map(|size| size.bytes());
            if let Some(rate) = limits.rate {
                let burst = limits.burst.unwrap_or(rate.count);
                policy.rate = Some(bow_edge::RateLimit::new(rate.count, rate.per, burst));
            }
        }
        policy.auth = match &made.route.auth {
            None => None,
            Some(RouteAuth::Basic { users_secret }) => {
                let text = crate::secrets::reveal_from(self.secrets.as_ref(), users_secret)?;
                let text = String::from_utf8(text)
                    .map_err(|_| format!("secret {users_secret} is not text"))?;
                let basic = bow_edge::BasicAuth::from_htpasswd(&made.route.host, &text)
                    .map_err(|e| format!("secret {users_secret}: {e}"))?;
                Some(bow_edge::Auth::Basic(basic))
            }
            Some(RouteAuth::Forward(forward)) => {
                let addr = made.forward_to.ok_or_else(|| {
                    format!("auth service {} has no address yet", forward.service)
                })?;
                let headers = forward
                    .headers
                    .iter()
                    .map(|name| {
                        http::HeaderName::from_bytes(name.as_bytes())
                            .map_err(|_| format!("{name:?} is not a header name"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some(bow_edge::Auth::Forward(bow_edge::ForwardAuth {
                    service: forward.service.clone(),
                    addr,
                    path: forward.path.clone(),
                    headers,
                    timeout: FORWARD_AUTH_TIMEOUT,
                }))
            }
            Some(RouteAuth::Oidc(oidc)) => {
                Some(bow_edge::Auth::Oidc(Box::new(self.oidc(made, oidc)?)))
            }
        };
        Ok(policy)
    }
}
