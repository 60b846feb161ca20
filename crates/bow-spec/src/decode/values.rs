//! Values with a syntax of their own: routes, volumes, secret and user names, system dirs.

use crate::reader::is_name;
use crate::schema::*;

/// `sni: [names]` of a TCP route: host names, lower-cased, each once.
pub(super) fn server_names(
    node: &crate::yaml::Node,
    path: &str,
    reader: &mut crate::reader::Reader,
) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let items = reader
        .list(node, path, "server names like [db.example.com]")
        .unwrap_or_default();
    for (position, item) in items.iter().enumerate() {
        let item_path = crate::reader::index(path, position);
        let Some(name) = reader.nonempty(item, &item_path, "a server name like db.example.com")
        else {
            continue;
        };
        let name = name.to_ascii_lowercase();
        let valid = name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            reader.error(
                &item_path,
                item.span,
                format!("{name:?} is not a server name"),
                Some(
                    "an exact host name, like db.example.com (no wildcard, port or path)"
                        .to_string(),
                ),
            );
        } else if names.contains(&name) {
            reader.error(
                &item_path,
                item.span,
                format!("{name} is listed twice"),
                None,
            );
        } else {
            names.push(name);
        }
    }
    if names.is_empty() && !items.is_empty() {
        return names;
    }
    if items.is_empty() {
        reader.error(
            path,
            node.blame(),
            "expected at least one server name",
            Some("remove `sni:` for a plain TCP route".to_string()),
        );
    }
    names
}

/// `host` or `host/path/prefix`.
pub fn parse_route(text: &str) -> Result<Route, String> {
    if text.contains("://") {
        return Err(format!(
            "expected a host name without a scheme, found {text:?}"
        ));
    }
    let (host, path) = match text.find('/') {
        Some(at) => (&text[..at], &text[at..]),
        None => (text, "/"),
    };
    if host.contains(':') {
        return Err(format!(
            "expected a host name without a port, found {text:?} (the edge listens on edge.https_port)"
        ));
    }
    let host = host.to_ascii_lowercase();
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|label| is_name(label) || (label == "*" && host.starts_with("*.")));
    if !valid_host {
        return Err(format!(
            "expected a host name like app.example.com, found {text:?}"
        ));
    }
    if path.contains(char::is_whitespace) || path.contains(['?', '#']) {
        return Err(format!(
            "expected a path prefix without spaces, query or fragment, found {path:?}"
        ));
    }
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    Ok(Route::plain(host, path))
}

/// `10/s`, `600/m` or `1000/h`: a count of requests per second, minute or hour.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let expected = || format!("expected a rate like 10/s, 600/m or 1000/h, found {text:?}");
    let (count, unit) = text.trim().split_once('/').ok_or_else(expected)?;
    let count: u32 = count.trim().parse().map_err(|_| expected())?;
    let seconds = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(expected()),
    };
    if count == 0 || count > 1_000_000 {
        return Err(format!(
            "a rate counts 1 to 1000000 requests, found {count}"
        ));
    }
    Ok(Rate {
        count,
        per: std::time::Duration::from_secs(seconds),
    })
}

/// An IPv4 or IPv6 network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), or one
/// address (a /32 or /128); the normal form is returned (`10.1.2.3/8` → `10.0.0.0/8`).
pub fn parse_cidr(text: &str) -> Result<String, String> {
    let text = text.trim();
    let (address, bits) = match text.split_once('/') {
        Some((address, bits)) => (address, Some(bits)),
        None => (text, None),
    };
    let address: core::net::IpAddr = address.parse().map_err(|_| {
        format!("expected a network like 10.0.0.0/8 or 2001:db8::/32, found {text:?}")
    })?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let bits: u32 = match bits {
        None => max,
        Some(bits) => bits
            .parse()
            .ok()
            .filter(|bits| *bits <= max)
            .ok_or_else(|| format!("the prefix length of {text:?} must be 0 to {max}"))?,
    };
    let network = match address {
        core::net::IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            core::net::IpAddr::V4((u32::from(v4) & mask).into())
        }
        core::net::IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            core::net::IpAddr::V6((u128::from(v6) & mask).into())
        }
    };
    Ok(format!("{network}/{bits}"))
}

/// `name:/path[:ro]` or `./dir:/path[:ro]` or `/abs:/path[:ro]`.
pub fn parse_volume(text: &str) -> Result<Volume, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [source, target] => (*source, *target, false),
        [source, target, "ro"] => (*source, *target, true),
        [_, _, "rw"] => {
            return Err("`:rw` is the default; write only `:ro` when needed".to_string());
        }
        _ => return Err(format!("expected SOURCE:/path[:ro], found {text:?}")),
    };
    if !target.starts_with('/') {
        return Err(format!(
            "the volume target must be an absolute path, found {target:?}"
        ));
    }
    let source = if source.starts_with("./") || source.starts_with('/') || source.starts_with("../")
    {
        VolumeSource::Path(source.to_string())
    } else if is_name(source) {
        VolumeSource::Named(source.to_string())
    } else {
        return Err(format!(
            "the volume source {source:?} is neither a name ([a-z0-9-]) nor a path starting with ./ or /"
        ));
    };
    Ok(Volume {
        source,
        target: target.to_string(),
        read_only,
    })
}

/// Secret names become file names: letters, digits, `_`, `-`.
pub fn is_secret_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(super) fn is_user_name(text: &str) -> bool {
    text.len() <= 32
        && text.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Directories a service may not use as its `dir` (nor anything below the ones marked
/// `true`): the root, the system's own trees, and bow's state. A service's dir is hashed for
/// its code version and is the working directory of a process; neither makes sense there.
pub const SYSTEM_DIRS: &[(&str, bool)] = &[
    ("/", false),
    ("/bin", true),
    ("/boot", true),
    ("/dev", true),
    ("/etc", true),
    ("/lib", true),
    ("/lib32", true),
    ("/lib64", true),
    ("/proc", true),
    ("/root", false),
    ("/run", false),
    ("/sbin", true),
    ("/sys", true),
    ("/usr", false),
    ("/usr/bin", true),
    ("/usr/lib", true),
    ("/usr/sbin", true),
    ("/var", false),
    ("/var/lib", false),
    ("/var/lib/bow", true),
    ("/var/log", true),
    ("/home", false),
    ("/tmp", false),
    ("/var/tmp", false),
];

/// The system directory `path` is or lies in (lexically: `.` and `..` resolved, no links
/// followed; the CLI checks the real path too), when it is one [`SYSTEM_DIRS`] refuses.
/// Relative paths are not checked here.
pub fn system_dir(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let clean = format!("/{}", parts.join("/"));
    SYSTEM_DIRS
        .iter()
        .find(|(dir, below)| {
            clean == *dir
                || (*below
                    && clean
                        .strip_prefix(dir)
                        .is_some_and(|rest| rest.starts_with('/')))
        })
        .map(|(dir, _)| *dir)
}
