//! A route entry: `app.example.com/api`, or `{host, path, auth, limits}`.

use crate::reader::{Reader, index};
use crate::schema::*;
use crate::yaml::{Node, NodeKind};

use super::values::{is_secret_name, parse_cidr, parse_rate, parse_route};
use super::{AUTH_KEYS, BASIC_AUTH_KEYS, FORWARD_KEYS, LIMITS_KEYS, OIDC_KEYS, ROUTE_KEYS};

const ROUTE_HINT: &str = "a route is a host name with an optional path prefix, like app.example.com/api, or {host: app.example.com, path: /api, auth: ..., limits: ...}";

/// One entry of `routes:`; `None` after an error was reported.
pub(super) fn route(item: &Node, path: &str, reader: &mut Reader) -> Option<Route> {
    if !matches!(item.kind, NodeKind::Map(_)) {
        let text = reader.nonempty(item, path, "a route like app.example.com/path")?;
        return match parse_route(&text) {
            Ok(route) => Some(route),
            Err(message) => {
                reader.error(path, item.span, message, Some(ROUTE_HINT.to_string()));
                None
            }
        };
    }
    let fields = reader.fields(item, path, "a route mapping", ROUTE_KEYS)?;
    let Some((host_node, host_path)) = fields.get("host") else {
        reader.error(
            path,
            item.blame(),
            "missing required key `host`",
            Some("the host name the route serves, e.g. {host: app.example.com}".to_string()),
        );
        return None;
    };
    let host = reader.nonempty(host_node, &host_path, "a host name like app.example.com")?;
    if host.contains('/') {
        reader.error(
            &host_path,
            host_node.span,
            format!("expected a host name without a path, found {host:?}"),
            Some(
                "put the path prefix in `path:`, e.g. {host: app.example.com, path: /api}"
                    .to_string(),
            ),
        );
        return None;
    }
    let mut text = host.clone();
    if let Some((n, p)) = fields.get("path") {
        let prefix = reader.nonempty(n, &p, "a path prefix like /api")?;
        if !prefix.starts_with('/') {
            reader.error(
                &p,
                n.span,
                format!("expected a path prefix starting with /, found {prefix:?}"),
                Some(format!("write /{}", prefix.trim_start_matches('/'))),
            );
            return None;
        }
        text.push_str(&prefix);
    }
    let mut route = match parse_route(&text) {
        Ok(route) => route,
        Err(message) => {
            reader.error(
                &host_path,
                host_node.span,
                message,
                Some(ROUTE_HINT.to_string()),
            );
            return None;
        }
    };
    if let Some((n, p)) = fields.get("auth") {
        route.auth = auth(n, &p, reader);
    }
    if let Some((n, p)) = fields.get("limits") {
        route.limits = limits(n, &p, reader);
    }
    Some(route)
}

fn auth(node: &Node, path: &str, reader: &mut Reader) -> Option<RouteAuth> {
    let what = "a mapping with one of basic: {users_secret: NAME}, forward: SERVICE or oidc: {issuer, client_id, client_secret_secret}";
    let fields = reader.fields(node, path, what, AUTH_KEYS)?;
    let given: Vec<&str> = AUTH_KEYS
        .iter()
        .copied()
        .filter(|key| fields.get(key).is_some())
        .collect();
    if given.len() != 1 {
        reader.error(
            path,
            node.blame(),
            format!("expected exactly one way to sign in, found {}", given.len()),
            Some(
                "write one of auth: {basic: {users_secret: NAME}}, auth: {forward: SERVICE} or auth: {oidc: {issuer, client_id, client_secret_secret}}"
                    .to_string(),
            ),
        );
        return None;
    }
    if let Some((n, p)) = fields.get("basic") {
        let basic = reader.fields(
            n,
            &p,
            "a mapping like {users_secret: NAME}",
            BASIC_AUTH_KEYS,
        )?;
        let Some((n, p)) = basic.get("users_secret") else {
            reader.error(
                &p,
                n.blame(),
                "missing required key `users_secret`",
                Some(
                    "the bow secret holding user:hash lines as `htpasswd -nB USER` prints them"
                        .to_string(),
                ),
            );
            return None;
        };
        let name = secret_name(n, &p, reader)?;
        return Some(RouteAuth::Basic { users_secret: name });
    }
    if let Some((n, p)) = fields.get("oidc") {
        return oidc(n, &p, reader).map(RouteAuth::Oidc);
    }
    let (n, p) = fields.get("forward")?;
    let mut forward = ForwardAuth {
        service: String::new(),
        path: "/".to_string(),
        headers: Vec::new(),
    };
    let service_node = if matches!(n.kind, NodeKind::Map(_)) {
        let what = "a service name, or {service, path, headers}";
        let fields = reader.fields(n, &p, what, FORWARD_KEYS)?;
        if let Some((n, p)) = fields.get("path") {
            let path = reader.nonempty(n, &p, "a path like /auth")?;
            if !path.starts_with('/') || path.contains(char::is_whitespace) {
                reader.error(
                    &p,
                    n.span,
                    format!("expected a path like /auth, found {path:?}"),
                    None,
                );
                return None;
            }
            forward.path = path;
        }
        if let Some((n, p)) = fields.get("headers") {
            for (position, item) in reader.list(n, &p, "header names")?.iter().enumerate() {
                let item_path = index(&p, position);
                let Some(name) = reader.nonempty(item, &item_path, "a header name") else {
                    continue;
                };
                let token = name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !token {
                    reader.error(
                        &item_path,
                        item.span,
                        format!("{name:?} is not a header name"),
                        Some("letters, digits and -, like X-Auth-User".to_string()),
                    );
                    continue;
                }
                forward.headers.push(name.to_ascii_lowercase());
            }
        }
        match fields.get("service") {
            Some(found) => found,
            None => {
                reader.error(
                    &p,
                    n.blame(),
                    "missing required key `service`",
                    Some("the service that decides, e.g. {service: auth}".to_string()),
                );
                return None;
            }
        }
    } else {
        (n, p)
    };
    let (n, p) = service_node;
    forward.service = reader.nonempty(n, &p, "the name of the service that decides")?;
    if !reader.name(&forward.service, n.span, &p, "a service name") {
        return None;
    }
    Some(RouteAuth::Forward(forward))
}

fn oidc(node: &Node, path: &str, reader: &mut Reader) -> Option<OidcAuth> {
    let what = "a mapping like {issuer: https://id.example.com, client_id: app, client_secret_secret: NAME}";
    let fields = reader.fields(node, path, what, OIDC_KEYS)?;
    let mut missing = false;
    for key in ["issuer", "client_id", "client_secret_secret"] {
        if fields.get(key).is_none() {
            reader.error(
                path,
                node.blame(),
                format!("missing required key `{key}`"),
                Some("oidc: {issuer: https://id.example.com, client_id: app, client_secret_secret: NAME} (the secret holds the client secret)".to_string()),
            );
            missing = true;
        }
    }
    if missing {
        return None;
    }
    let (n, p) = fields.get("issuer")?;
    let issuer = reader.nonempty(n, &p, "the provider's issuer URL")?;
    if !issuer.starts_with("https://") || crate::check_proxy_url(&issuer).is_err() {
        reader.error(
            &p,
            n.span,
            format!("expected the provider's https:// issuer URL, found {issuer:?}"),
            Some(
                "the URL its discovery document names, e.g. https://accounts.google.com"
                    .to_string(),
            ),
        );
        return None;
    }
    let (n, p) = fields.get("client_id")?;
    let client_id = reader.nonempty(n, &p, "the client id the provider gave")?;
    let (n, p) = fields.get("client_secret_secret")?;
    let client_secret_secret = secret_name(n, &p, reader)?;
    let mut allowed = Vec::new();
    if let Some((n, p)) = fields.get("allowed") {
        for (position, item) in reader
            .list(n, &p, "emails or group names")?
            .iter()
            .enumerate()
        {
            let item_path = index(&p, position);
            if let Some(entry) = reader.nonempty(item, &item_path, "an email or a group name") {
                allowed.push(entry);
            }
        }
    }
    Some(OidcAuth {
        issuer: issuer.trim_end_matches('/').to_string(),
        client_id,
        client_secret_secret,
        allowed,
    })
}

fn secret_name(node: &Node, path: &str, reader: &mut Reader) -> Option<String> {
    let name = reader.nonempty(node, path, "a secret name")?;
    if !is_secret_name(&name) {
        reader.error(
            path,
            node.span,
            format!("{name:?} is not a valid secret name"),
            Some("use letters, digits, `_` and `-`".to_string()),
        );
        return None;
    }
    Some(name)
}

fn limits(node: &Node, path: &str, reader: &mut Reader) -> Option<RouteLimits> {
    let what = "a mapping like {rate: 10/s, burst: 20, body: 1MiB, allow: [10.0.0.0/8]}";
    let fields = reader.fields(node, path, what, LIMITS_KEYS)?;
    let mut limits = RouteLimits::default();
    if let Some((n, p)) = fields.get("rate") {
        let text = reader.nonempty(n, &p, "a rate like 10/s")?;
        match parse_rate(&text) {
            Ok(rate) => limits.rate = Some(rate),
            Err(message) => reader.error(
                &p,
                n.span,
                message,
                Some("requests per client address: a count, /, and s, m or h".to_string()),
            ),
        }
    }
    if let Some((n, p)) = fields.get("burst") {
        limits.burst = reader
            .integer(n, &p, "a number of requests", 1, 1_000_000)
            .map(|burst| burst as u32);
        if limits.rate.is_none() && fields.get("rate").is_none() {
            reader.error(
                &p,
                n.span,
                "`burst` applies to a `rate`",
                Some("add rate: like rate: 10/s, or remove burst".to_string()),
            );
        }
    }
    if let Some((n, p)) = fields.get("body") {
        limits.body = reader.size(n, &p);
    }
    for key in ["allow", "deny"] {
        let Some((n, p)) = fields.get(key) else {
            continue;
        };
        let items = reader.list(n, &p, "networks like 10.0.0.0/8")?;
        let mut networks = Vec::new();
        for (position, item) in items.iter().enumerate() {
            let item_path = index(&p, position);
            let Some(text) = reader.nonempty(item, &item_path, "a network like 10.0.0.0/8") else {
                continue;
            };
            match parse_cidr(&text) {
                Ok(network) => networks.push(network),
                Err(message) => reader.error(
                    &item_path,
                    item.span,
                    message,
                    Some("an address, or an address/prefix length in CIDR notation".to_string()),
                ),
            }
        }
        if key == "allow" {
            limits.allow = networks;
        } else {
            limits.deny = networks;
        }
    }
    Some(limits)
}

#[cfg(test)]
mod tests {
    use crate::{LoadOptions, RouteAuth, load};

    #[test]
    fn route_objects_decode_and_record_as_they_were() {
        let text = "project: p\nservices:\n  auth: {command: a, port: 4180}\n  web:\n    command: w\n    routes:\n      - Plain.example.com/x/\n      - host: a.example.com\n        path: /api\n        auth: {basic: {users_secret: users}}\n        limits: {rate: 600/m, body: 1M, allow: [10.1.2.3/8], deny: ['::1']}\n      - {host: b.example.com, auth: {forward: auth}}\n";
        let spec = load(text, &LoadOptions::default()).unwrap();
        let routes = &spec.services["web"].routes;
        assert_eq!(routes[0].to_string(), "plain.example.com/x");
        assert!(routes[0].auth.is_none() && routes[0].limits.is_none());
        assert_eq!(routes[1].to_string(), "a.example.com/api");
        let limits = routes[1].limits.as_ref().unwrap();
        assert_eq!(limits.rate.unwrap().to_string(), "600/m");
        assert_eq!(limits.allow, ["10.0.0.0/8"]);
        assert_eq!(limits.deny, ["::1/128"]);
        assert_eq!(limits.body.unwrap().bytes(), 1024 * 1024);
        match &routes[2].auth {
            Some(RouteAuth::Forward(forward)) => {
                assert_eq!(
                    (forward.service.as_str(), forward.path.as_str()),
                    ("auth", "/")
                );
            }
            other => panic!("{other:?}"),
        }
        // Recorded: a plain route stays a string (specs recorded before objects plan no
        // change), an object comes back the same.
        let json = serde_json::to_value(routes).unwrap();
        assert_eq!(json[0], "plain.example.com/x");
        let back: Vec<crate::Route> = serde_json::from_value(json).unwrap();
        assert_eq!(&back, routes);
        assert_eq!(crate::route_secrets(&spec.services["web"]), ["users"]);
        assert!(crate::service_secrets(&spec.services["web"]).is_empty());
    }
}
