//! `proxy: {to, inject_headers}`: a service that is an outside API (docs/outside-apis.md).

use std::collections::BTreeMap;

use crate::interp::{postgres_references, secret_references};
use crate::reader::{Fields, Reader, join};
use crate::schema::OutsideApi;

use super::values::is_secret_name;
use super::{PROXY_KEYS, PROXY_SERVICE_KEYS};

/// Headers the agent sets itself or that describe one hop: an injected one would break the
/// exchange or be dropped on the way.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// The `proxy:` mapping of a service whose other keys were already read into `fields`.
pub(super) fn proxy(fields: &Fields<'_>, path: &str, reader: &mut Reader) -> Option<OutsideApi> {
    for (key, _) in fields.entries() {
        let name = key.scalar().unwrap_or_default();
        if !PROXY_SERVICE_KEYS.contains(&name) && super::SERVICE_KEYS.contains(&name) {
            reader.error(
                &join(path, name),
                key.span,
                format!("`{name}` does not apply to a `proxy:` service: no instance of it runs"),
                Some(
                    "a proxy service has `proxy: {to, inject_headers}` and an optional `port:` (80 by default)"
                        .to_string(),
                ),
            );
        }
    }
    let (n, p) = fields.get("proxy")?;
    let what = "a mapping like {to: https://api.example.com, inject_headers: {X-API-Key: ${secret:api_key}}}";
    let proxy = reader.fields(n, &p, what, PROXY_KEYS)?;
    let Some((to_node, to_path)) = proxy.get("to") else {
        reader.error(
            &p,
            n.blame(),
            "missing required key `to`",
            Some("the outside API's URL, e.g. to: https://api.example.com".to_string()),
        );
        return None;
    };
    let to = reader.nonempty(to_node, &to_path, "a URL like https://api.example.com")?;
    if let Err(message) = check_url(&to) {
        reader.error(
            &to_path,
            to_node.span,
            message,
            Some(
                "write https://host[:port][/base-path], e.g. https://api.example.com/v2"
                    .to_string(),
            ),
        );
        return None;
    }
    let mut inject_headers = BTreeMap::new();
    let mut ok = true;
    if let Some((n, p)) = proxy.get("inject_headers") {
        for (key, value) in reader.map(n, &p, "a mapping of header names to values")? {
            let name = key.scalar().unwrap_or_default().to_string();
            let header_path = join(&p, &name);
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
            if !token {
                reader.error(
                    &header_path,
                    key.span,
                    format!("{name:?} is not a header name"),
                    Some("letters, digits and -, like X-API-Key".to_string()),
                );
                ok = false;
                continue;
            }
            let lower = name.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                reader.error(
                    &header_path,
                    key.span,
                    format!("`{name}` cannot be injected: it describes the connection, which bow sets itself"),
                    Some("inject the API's own header, like X-API-Key or Authorization".to_string()),
                );
                ok = false;
                continue;
            }
            let Some(text) = reader.string(value, &header_path, "a header value") else {
                ok = false;
                continue;
            };
            if text.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                reader.error(
                    &header_path,
                    value.span,
                    "a header value cannot hold a line break",
                    None,
                );
                ok = false;
                continue;
            }
            if !postgres_references(&text).is_empty() {
                reader.error(
                    &header_path,
                    value.span,
                    "`${postgres:...}` is a database URL, not a header value",
                    Some("use ${secret:NAME} for a key".to_string()),
                );
                ok = false;
                continue;
            }
            for secret in secret_references(&text) {
                if !is_secret_name(secret) {
                    reader.error(
                        &header_path,
                        value.span,
                        format!("{secret:?} is not a valid secret name"),
                        Some("use letters, digits, `_` and `-`".to_string()),
                    );
                    ok = false;
                }
            }
            if inject_headers.insert(lower, text).is_some() {
                reader.error(
                    &header_path,
                    key.span,
                    format!("header `{name}` is given twice (names are case-insensitive)"),
                    None,
                );
                ok = false;
            }
        }
    }
    ok.then_some(OutsideApi { to, inject_headers })
}

/// `http(s)://host[:port][/path]`: no user info, query or fragment.
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("expected an https:// (or http://) URL, found {url:?}"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if authority.contains('@') {
        return Err("a URL with user info would put a credential in the file: use inject_headers: {Authorization: ...} with a secret".to_string());
    }
    if rest.contains('?') || rest.contains('#') {
        return Err(format!(
            "{url:?} has a query or fragment: give only the base URL"
        ));
    }
    if rest
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!("{url:?} holds spaces or control characters"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => return Err(format!("{url:?}: the IPv6 host has no closing bracket")),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|port| port > 0)
    {
        return Err(format!("{port:?} is not a port"));
    }
    Ok(())
}
