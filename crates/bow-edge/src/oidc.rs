//! OpenID Connect sign-in at the edge, per route (`auth: {oidc: …}`): the authorization code
//! flow with PKCE (S256), `state` and `nonce`; the ID token verified against the provider's
//! JWKS (RS256 or ES256 only; issuer, audience, expiry, nonce); the user let in when their
//! email or one of their groups is allowed; then a session cookie sealed with
//! XChaCha20-Poly1305 (authenticated and encrypted; `Secure`, `HttpOnly`, `SameSite=Lax`,
//! bounded lifetime) carries the identity, which goes upstream as `X-Bow-User` and
//! `X-Bow-Email` (headers a client's own `X-Bow-*` never reach the service with).
//!
//! The provider's discovery document and keys are fetched when first needed, the keys again
//! when a token names a key not seen yet (at most once a minute). The provider is reached
//! over TLS verified against [`crate::trusted_roots`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::error_chain as reasons;
use crate::guard::Refusal;
use crate::uri::{decode_query_value as decode, encode_component as encode};

/// How long a sign-in may take, from the redirect to the callback.
const FLOW_LIFETIME: u64 = 600;
/// How long a JWKS is trusted before a token with an unknown key may fetch it again.
const JWKS_REFRESH: Duration = Duration::from_secs(60);
/// How long the provider may take to answer one request.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// A route's OpenID Connect settings, as the agent resolves them.
#[derive(Clone)]
pub struct OidcSettings {
    /// The provider's issuer URL, without a trailing `/`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// Emails or group names let in; empty: anyone the provider signs in.
    pub allowed: Vec<String>,
    /// Where the provider sends the user back: `https://<host>[:port]<prefix>/.bow/oidc/callback`.
    pub redirect_uri: String,
    /// How long a session lasts.
    pub session_lifetime: Duration,
    /// The key sessions are sealed with (32 bytes, kept by the agent across restarts).
    pub session_key: [u8; 32],
    /// The roots the provider's certificate must chain to.
    pub roots: Arc<rustls::RootCertStore>,
}

/// The provider's endpoints and keys.
struct Provider {
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    keys: jsonwebtoken::jwk::JwkSet,
    keys_fetched: std::time::Instant,
}

/// A route's OpenID Connect sign-in.
pub struct OidcAuth {
    settings: OidcSettings,
    callback_path: String,
    cipher: XChaCha20Poly1305,
    session_cookie: String,
    flow_cookie: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    provider: tokio::sync::Mutex<Option<Provider>>,
}

impl std::fmt::Debug for OidcAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcAuth")
            .field("issuer", &self.settings.issuer)
            .field("client_id", &self.settings.client_id)
            .field("redirect_uri", &self.settings.redirect_uri)
            .finish_non_exhaustive()
    }
}

/// What a session cookie holds.
#[derive(Serialize, Deserialize)]
struct Session {
    user: String,
    email: Option<String>,
    groups: Vec<String>,
    exp: u64,
}

/// What the sign-in cookie holds between the redirect and the callback.
#[derive(Serialize, Deserialize)]
struct Flow {
    state: String,
    nonce: String,
    verifier: String,
    to: String,
    exp: u64,
}

#[derive(Deserialize)]
struct IdClaims {
    sub: String,
    nonce: Option<String>,
    email: Option<String>,
    email_verified: Option<bool>,
    preferred_username: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random(bytes: usize) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; bytes];
    getrandom::fill(&mut out).map_err(|e| format!("no randomness: {e}"))?;
    Ok(out)
}

fn refusal(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
        headers: Vec::new(),
    }
}

impl OidcAuth {
    /// The sign-in of a route whose path prefix is `prefix` (`""` for the whole host).
    pub fn new(settings: OidcSettings, prefix: &str) -> Result<OidcAuth, String> {
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(settings.roots.clone())
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(PROVIDER_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        // One cookie name per route key: routes of one host never read each other's.
        let tag = &hex(&Sha256::digest(settings.session_key))[..8];
        Ok(OidcAuth {
            callback_path: format!("{}/.bow/oidc/callback", prefix.trim_end_matches('/')),
            cipher: XChaCha20Poly1305::new((&settings.session_key).into()),
            session_cookie: format!("__Host-bow-session-{tag}"),
            flow_cookie: format!("__Host-bow-signin-{tag}"),
            settings,
            client,
            provider: tokio::sync::Mutex::new(None),
        })
    }

    /// Checks a request (its upstream head as the edge wrote it): `Ok` with the identity
    /// headers to put on it, or the answer the client gets (a redirect to sign in, the
    /// callback's redirect back with the session cookie, 401, 403).
    pub(crate) async fn check(
        &self,
        method: &Method,
        head: &[u8],
    ) -> Result<Vec<(HeaderName, Vec<u8>)>, Refusal> {
        let target = request_target(head);
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if path == self.callback_path {
            return Err(self.callback(query, head).await);
        }
        if let Some(session) = self
            .cookie(head, &self.session_cookie)
            .and_then(|sealed| self.open::<Session>(&sealed))
            .filter(|session| session.exp > now())
        {
            if !self.allows(session.email.as_deref(), &session.groups) {
                return Err(refusal(
                    StatusCode::FORBIDDEN,
                    format!("403 {} may not use this route", session.user),
                ));
            }
            let mut identity = vec![(
                HeaderName::from_static("x-bow-user"),
                session.user.into_bytes(),
            )];
            if let Some(email) = session.email {
                identity.push((HeaderName::from_static("x-bow-email"), email.into_bytes()));
            }
            return Ok(identity);
        }
        // A page a browser navigates to is sent to sign in; anything else (an API call, a
        // WebSocket upgrade) is told it must sign in first.
        let upgrade = crate::guard::header_value(head, b"upgrade").is_some();
        if !(method == Method::GET || method == Method::HEAD) || upgrade {
            let mut answer = refusal(StatusCode::UNAUTHORIZED, "401 sign in first");
            answer
                .headers
                .push((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            return Err(answer);
        }
        Err(self.sign_in(target).await)
    }

    fn allows(&self, email: Option<&str>, groups: &[String]) -> bool {
        let allowed = &self.settings.allowed;
        allowed.is_empty()
            || allowed.iter().any(|entry| {
                email.is_some_and(|email| entry.eq_ignore_ascii_case(email))
                    || groups.iter().any(|group| group == entry)
            })
    }

    /// The redirect to the provider, with a sign-in cookie holding state, nonce and verifier.
    async fn sign_in(&self, target: &str) -> Refusal {
        let endpoint = match self.provider(false).await {
            Ok(endpoint) => endpoint.0,
            Err(why) => {
                return refusal(
                    StatusCode::BAD_GATEWAY,
                    format!("502 the sign-in provider failed: {why}"),
                );
            }
        };
        let (Ok(state), Ok(nonce), Ok(verifier)) = (random(16), random(16), random(32)) else {
            return refusal(StatusCode::INTERNAL_SERVER_ERROR, "500 no randomness");
        };
        let flow = Flow {
            state: URL_SAFE_NO_PAD.encode(state),
            nonce: URL_SAFE_NO_PAD.encode(nonce),
            verifier: URL_SAFE_NO_PAD.encode(verifier),
            to: return_path(target),
            exp: now() + FLOW_LIFETIME,
        };
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(flow.verifier.as_bytes()));
        let location = format!(
            "{endpoint}{}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={challenge}&code_challenge_method=S256",
            if endpoint.contains('?') { '&' } else { '?' },
            encode(&self.settings.client_id),
            encode(&self.settings.redirect_uri),
            encode("openid email profile"),
            flow.state,
            flow.nonce,
        );
        let mut answer = refusal(StatusCode::FOUND, "302 sign in first");
        if let (Ok(location), Some(cookie)) = (
            HeaderValue::from_str(&location),
            self.seal(&flow)
                .map(|sealed| self.set_cookie(&self.flow_cookie, &sealed, FLOW_LIFETIME)),
        ) {
            answer.headers.push((header::LOCATION, location));
            answer.headers.push((header::SET_COOKIE, cookie));
            answer
                .headers
                .push((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        }
        answer
    }

    /// The provider sent the user back: the code is exchanged, the ID token verified, and a
    /// session begins (or the user is refused).
    async fn callback(&self, query: &str, head: &[u8]) -> Refusal {
        let param = |name: &str| {
            query.split('&').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                (key == name).then(|| decode(value))
            })
        };
        let Some(flow) = self
            .cookie(head, &self.flow_cookie)
            .and_then(|sealed| self.open::<Flow>(&sealed))
            .filter(|flow| flow.exp > now())
        else {
            return refusal(
                StatusCode::BAD_REQUEST,
                "400 no sign-in in progress (or it took too long): start again",
            );
        };
        if param("state").as_deref() != Some(flow.state.as_str()) {
            return refusal(
                StatusCode::BAD_REQUEST,
                "400 the sign-in's state does not match",
            );
        }
        if let Some(error) = param("error") {
            return refusal(
                StatusCode::FORBIDDEN,
                format!("403 the provider refused the sign-in: {error}"),
            );
        }
        let Some(code) = param("code") else {
            return refusal(StatusCode::BAD_REQUEST, "400 the provider sent no code");
        };
        let claims = match self.redeem(&code, &flow).await {
            Ok(claims) => claims,
            Err(why) => {
                return refusal(
                    StatusCode::BAD_GATEWAY,
                    format!("502 the sign-in could not be completed: {why}"),
                );
            }
        };
        let email = claims
            .email
            .filter(|_| claims.email_verified != Some(false));
        let user = claims.preferred_username.unwrap_or(claims.sub);
        if !self.allows(email.as_deref(), &claims.groups) {
            return refusal(
                StatusCode::FORBIDDEN,
                format!("403 {user} may not use this route"),
            );
        }
        let lifetime = self.settings.session_lifetime.as_secs();
        let session = Session {
            user,
            email,
            groups: claims.groups,
            exp: now() + lifetime,
        };
        let mut answer = refusal(StatusCode::FOUND, "302 signed in");
        if let (Ok(location), Some(sealed)) = (HeaderValue::from_str(&flow.to), self.seal(&session))
        {
            answer.headers.push((header::LOCATION, location));
            answer.headers.push((
                header::SET_COOKIE,
                self.set_cookie(&self.session_cookie, &sealed, lifetime),
            ));
            answer.headers.push((
                header::SET_COOKIE,
                self.set_cookie(&self.flow_cookie, "", 0),
            ));
            answer
                .headers
                .push((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        }
        answer
    }

    /// The code for tokens at the token endpoint; the ID token's verified claims.
    async fn redeem(&self, code: &str, flow: &Flow) -> Result<IdClaims, String> {
        let (_, token_endpoint) = self.provider(false).await?;
        let form = format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
            encode(code),
            encode(&self.settings.redirect_uri),
            encode(&flow.verifier)
        );
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            encode(&self.settings.client_id),
            encode(&self.settings.client_secret)
        ));
        let request = Request::post(&token_endpoint)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::AUTHORIZATION, format!("Basic {basic}"))
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| e.to_string())?;
        let (status, body) = self.exchange(request).await?;
        if !status.is_success() {
            return Err(format!(
                "the token endpoint answered {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ));
        }
        #[derive(Deserialize)]
        struct Tokens {
            id_token: String,
        }
        let tokens: Tokens = serde_json::from_slice(&body)
            .map_err(|e| format!("the token endpoint's answer: {e}"))?;
        let claims = self.verify(&tokens.id_token).await?;
        if claims.nonce.as_deref() != Some(flow.nonce.as_str()) {
            return Err("the ID token's nonce does not match".to_string());
        }
        Ok(claims)
    }

    /// The ID token's claims, once its signature (RS256 or ES256, by a key of the provider's
    /// JWKS), issuer, audience and expiry hold.
    async fn verify(&self, token: &str) -> Result<IdClaims, String> {
        use jsonwebtoken::{Algorithm, DecodingKey, Validation};
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("the ID token: {e}"))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(format!(
                "the ID token is signed with {:?}; RS256 or ES256 expected",
                header.alg
            ));
        }
        let find = |keys: &jsonwebtoken::jwk::JwkSet| match &header.kid {
            Some(kid) => keys.find(kid).cloned(),
            None => keys.keys.first().cloned(),
        };
        let mut key = {
            let provider = self.provider.lock().await;
            provider.as_ref().and_then(|p| find(&p.keys))
        };
        if key.is_none() {
            self.provider(true).await?;
            let provider = self.provider.lock().await;
            key = provider.as_ref().and_then(|p| find(&p.keys));
        }
        let key = key.ok_or("the ID token names a key the provider does not publish")?;
        let key = DecodingKey::from_jwk(&key).map_err(|e| format!("the provider's key: {e}"))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer, &format!("{}/", self.settings.issuer)]);
        validation.set_audience(&[&self.settings.client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 60;
        jsonwebtoken::decode::<IdClaims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| format!("the ID token does not verify: {e}"))
    }

    /// The authorization and token endpoints; fetches the discovery document and the keys
    /// when first needed, and the keys again when `refresh_keys` (at most once a minute).
    async fn provider(&self, refresh_keys: bool) -> Result<(String, String), String> {
        let mut provider = self.provider.lock().await;
        if provider.is_none() {
            let url = format!("{}/.well-known/openid-configuration", self.settings.issuer);
            #[derive(Deserialize)]
            struct Discovery {
                issuer: String,
                authorization_endpoint: String,
                token_endpoint: String,
                jwks_uri: String,
            }
            let document: Discovery = serde_json::from_slice(&self.get(&url).await?)
                .map_err(|e| format!("{url}: {e}"))?;
            if document.issuer.trim_end_matches('/') != self.settings.issuer {
                return Err(format!(
                    "{url} names the issuer {}, not {}",
                    document.issuer, self.settings.issuer
                ));
            }
            let keys = self.keys(&document.jwks_uri).await?;
            *provider = Some(Provider {
                authorization_endpoint: document.authorization_endpoint,
                token_endpoint: document.token_endpoint,
                jwks_uri: document.jwks_uri,
                keys,
                keys_fetched: std::time::Instant::now(),
            });
        } else if refresh_keys
            && let Some(known) = provider.as_mut()
            && known.keys_fetched.elapsed() >= JWKS_REFRESH
        {
            known.keys = self.keys(&known.jwks_uri).await?;
            known.keys_fetched = std::time::Instant::now();
        }
        let known = provider.as_ref().ok_or("no provider")?;
        Ok((
            known.authorization_endpoint.clone(),
            known.token_endpoint.clone(),
        ))
    }

    async fn keys(&self, url: &str) -> Result<jsonwebtoken::jwk::JwkSet, String> {
        serde_json::from_slice(&self.get(url).await?).map_err(|e| format!("{url}: {e}"))
    }

    async fn get(&self, url: &str) -> Result<Bytes, String> {
        let request = Request::get(url)
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("{url}: {e}"))?;
        let (status, body) = self
            .exchange(request)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{url} answered {status}"));
        }
        Ok(body)
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String> {
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| reasons(&e))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body.to_bytes()))
        };
        tokio::time::timeout(PROVIDER_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {PROVIDER_TIMEOUT:?}"))?
    }

    fn seal<T: Serialize>(&self, value: &T) -> Option<String> {
        let plain = serde_json::to_vec(value).ok()?;
        let nonce = random(24).ok()?;
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), plain.as_slice())
            .ok()?;
        let mut out = nonce;
        out.extend_from_slice(&sealed);
        Some(URL_SAFE_NO_PAD.encode(out))
    }

    fn open<T: for<'de> Deserialize<'de>>(&self, sealed: &str) -> Option<T> {
        let bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if bytes.len() < 24 {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(24);
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), sealed)
            .ok()?;
        serde_json::from_slice(&plain).ok()
    }

    fn set_cookie(&self, name: &str, value: &str, max_age: u64) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "{name}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax"
        ))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The value of cookie `name` in the request's `Cookie` headers (one or several).
    fn cookie(&self, head: &[u8], name: &str) -> Option<String> {
        head.split(|&b| b == b'\n')
            .skip(1)
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .take_while(|line| !line.is_empty())
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                line[..colon]
                    .eq_ignore_ascii_case(b"cookie")
                    .then(|| &line[colon + 1..])
            })
            .flat_map(|value| value.split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = std::str::from_utf8(pair).ok()?.trim();
                let (key, value) = pair.split_once('=')?;
                (key == name).then(|| value.to_string())
            })
    }
}

/// Where the callback sends the user back: the page they asked for, on this host only (a
/// target like `//evil.example` or `/\\evil.example` would be read as another host).
fn return_path(target: &str) -> String {
    let local = target.starts_with('/')
        && !target.starts_with("//")
        && !target.starts_with("/\\")
        && !target.bytes().any(|b| b.is_ascii_control());
    if local {
        target.to_string()
    } else {
        "/".to_string()
    }
}

/// The target of the request line (`/path?query`).
fn request_target(head: &[u8]) -> &str {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    std::str::from_utf8(line)
        .unwrap_or_default()
        .split(' ')
        .nth(1)
        .unwrap_or("/")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(allowed: &[&str]) -> OidcAuth {
        OidcAuth::new(
            OidcSettings {
                issuer: "https://id.example.com".into(),
                client_id: "app".into(),
                client_secret: "s".into(),
                allowed: allowed.iter().map(|s| s.to_string()).collect(),
                redirect_uri: "https://app.example.com/.bow/oidc/callback".into(),
                session_lifetime: Duration::from_secs(3600),
                session_key: [7; 32],
                roots: Arc::new(rustls::RootCertStore::empty()),
            },
            "",
        )
        .unwrap()
    }

    #[test]
    fn sessions_are_sealed_and_a_changed_byte_breaks_them() {
        let auth = auth(&[]);
        let session = Session {
            user: "alice".into(),
            email: Some("a@example.com".into()),
            groups: vec![],
            exp: 9,
        };
        let sealed = auth.seal(&session).unwrap();
        assert!(!sealed.contains("alice"), "encrypted, not only signed");
        let opened: Session = auth.open(&sealed).unwrap();
        assert_eq!((opened.user.as_str(), opened.exp), ("alice", 9));
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(
            auth.open::<Session>(&URL_SAFE_NO_PAD.encode(bytes))
                .is_none()
        );
        // Another key (another route) cannot open it.
        let mut other = auth.settings.clone();
        other.session_key = [8; 32];
        let other = OidcAuth::new(other, "").unwrap();
        assert!(other.open::<Session>(&sealed).is_none());
    }

    #[test]
    fn emails_and_groups_are_allowed_and_cookies_are_found() {
        let auth = auth(&["Carol@example.com", "admins"]);
        assert!(auth.allows(Some("carol@example.com"), &[]));
        assert!(auth.allows(None, &["admins".into()]));
        assert!(!auth.allows(Some("bob@example.com"), &["guests".into()]));
        let head = format!(
            "GET /x?y=1 HTTP/1.1\r\nhost: a\r\ncookie: a=1\r\ncookie: b=2; {}=v; c=3\r\n\r\n",
            auth.session_cookie
        );
        assert_eq!(
            auth.cookie(head.as_bytes(), &auth.session_cookie)
                .as_deref(),
            Some("v")
        );
        assert_eq!(request_target(head.as_bytes()), "/x?y=1");
        assert_eq!(return_path("/x?y=1"), "/x?y=1");
        for elsewhere in [
            "//evil.example/x",
            "/\\evil.example",
            "https://evil.example",
            "*",
        ] {
            assert_eq!(return_path(elsewhere), "/", "{elsewhere}");
        }
        assert_eq!(decode("a%2Fb+c%"), "a/b c%");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
