//! The routes of the typed stack: a route's host and path, its sign-in (`auth`) and its
//! limits, and how a route is recorded (`schema.rs` re-exports them).

use serde::{Deserialize, Serialize};

use crate::units::Size;

/// A host plus path prefix the edge serves from a service: `app.example.com/api`, written as
/// a string, or as `{host, path, auth, limits}` when the route signs users in or is limited.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub host: String,
    /// Starts with `/`; `/` matches everything on the host.
    pub path: String,
    /// Who may use the route (`None`: everyone).
    pub auth: Option<RouteAuth>,
    /// Per-client rate, body size and address limits (`None`: the edge's defaults only).
    pub limits: Option<RouteLimits>,
}

impl Route {
    /// A route open to everyone, without limits of its own.
    pub fn plain(host: impl Into<String>, path: impl Into<String>) -> Route {
        Route {
            host: host.into(),
            path: path.into(),
            auth: None,
            limits: None,
        }
    }
}

/// `auth:` of a route: how the edge checks a request before it goes to the service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum RouteAuth {
    /// HTTP Basic: `user:hash` lines (as `htpasswd -B` writes them) in a bow secret.
    Basic { users_secret: String },
    /// A sub-request to a service of the stack (nginx `auth_request`, Traefik forwardAuth):
    /// its 2xx lets the request through, any other answer goes back to the client.
    Forward(ForwardAuth),
    /// OpenID Connect sign-in (authorization code + PKCE) against `issuer`, with a session
    /// cookie the edge seals; `allowed` names who may pass (emails or groups; empty: anyone
    /// the provider signs in).
    Oidc(OidcAuth),
}

/// `oidc: {issuer, client_id, client_secret_secret, allowed}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcAuth {
    /// The provider's issuer URL (its discovery document is at
    /// `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    /// The bow secret holding the client secret (read by the edge only).
    pub client_secret_secret: String,
    /// Emails (`a@example.com`) or group names (the `groups` claim) let in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
}

/// `forward: SERVICE` or `forward: {service, path, headers}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuth {
    /// The service asked (through its `port:`).
    pub service: String,
    /// The path asked; `/` by default.
    pub path: String,
    /// Headers of the service's 2xx answer put on the request upstream (`X-Auth-User`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
}

/// `limits:` of a route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimits {
    /// Requests per client address (a token bucket), e.g. `10/s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// How many requests a client may make at once above the rate (default: the rate's count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// The largest request body the route takes (instead of `edge.max_body_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Size>,
    /// When not empty, only clients in these networks (CIDR) may use the route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Clients in these networks (CIDR) are refused (deny wins over allow).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// A request rate: `count` requests per `per` (`10/s`, `600/m`, `1000/h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rate {
    pub count: u32,
    pub per: std::time::Duration,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            60 => "m",
            3600 => "h",
            _ => "s",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        crate::decode::parse_rate(&text).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path == "/" {
            write!(f, "{}", self.host)
        } else {
            write!(f, "{}{}", self.host, self.path)
        }
    }
}

/// A route as recorded: the plain string when it has no auth or limits (as before they
/// existed, so recorded specs plan no change), else the object.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RecordedRoute {
    Plain(String),
    Object {
        host: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth: Option<RouteAuth>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limits: Option<RouteLimits>,
    },
}

impl Serialize for Route {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.auth.is_none() && self.limits.is_none() {
            return serializer.collect_str(self);
        }
        RecordedRoute::Object {
            host: self.to_string(),
            auth: self.auth.clone(),
            limits: self.limits.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Route {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (text, auth, limits) = match RecordedRoute::deserialize(deserializer)? {
            RecordedRoute::Plain(text) => (text, None, None),
            RecordedRoute::Object { host, auth, limits } => (host, auth, limits),
        };
        let mut route = crate::decode::parse_route(&text).map_err(serde::de::Error::custom)?;
        route.auth = auth;
        route.limits = limits;
        Ok(route)
    }
}
