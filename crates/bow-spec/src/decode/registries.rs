//! `registries:`: credentials for pulling images, by registry host; the password is a bow
//! secret's name.

use std::collections::BTreeMap;

use crate::reader::{Reader, join};
use crate::schema::RegistryAuth;
use crate::yaml::Node;

use super::REGISTRY_KEYS;
use super::values::is_secret_name;

pub(super) fn registries(
    node: &Node,
    path: &str,
    reader: &mut Reader,
) -> BTreeMap<String, RegistryAuth> {
    let mut out = BTreeMap::new();
    for (key, value) in reader
        .map(node, path, "a mapping of registry hosts to credentials")
        .unwrap_or_default()
    {
        let host = key.scalar().unwrap_or_default();
        let entry_path = join(path, host);
        if !is_registry_host(host) {
            reader.error(
                &entry_path,
                key.span,
                format!("expected a registry host like ghcr.io or registry.example.com:5000, found {host:?}"),
                Some("write the host (and port) only, without https:// or a path".to_string()),
            );
            continue;
        }
        let Some(fields) = reader.fields(
            value,
            &entry_path,
            "a mapping with username and password_secret",
            REGISTRY_KEYS,
        ) else {
            continue;
        };
        let username = match fields.get("username") {
            Some((n, p)) => reader.nonempty(n, &p, "a user name"),
            None => {
                reader.error(
                    &entry_path,
                    value.blame(),
                    "missing `username`",
                    Some("add username: <the registry user>".to_string()),
                );
                None
            }
        };
        let password_secret = match fields.get("password_secret") {
            Some((n, p)) => reader.nonempty(n, &p, "a secret name").filter(|name| {
                let ok = is_secret_name(name);
                if !ok {
                    reader.error(
                        &p,
                        n.span,
                        format!("secret name {name:?} is not valid: expected letters, digits, `_` and `-`"),
                        None,
                    );
                }
                ok
            }),
            None => {
                reader.error(
                    &entry_path,
                    value.blame(),
                    "missing `password_secret`: the name of the bow secret holding the password or token",
                    Some("add password_secret: registry_token, then `bow secret set registry_token`".to_string()),
                );
                None
            }
        };
        if let (Some(username), Some(password_secret)) = (username, password_secret) {
            out.insert(
                host.to_string(),
                RegistryAuth {
                    username,
                    password_secret,
                },
            );
        }
    }
    out
}

/// `host[:port]`: lower-case letters, digits, `.` and `-`, an optional numeric port.
fn is_registry_host(text: &str) -> bool {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && port.is_none_or(|p| p.parse::<u16>().is_ok())
}
