//! Values with a syntax of their own: routes, volumes, secret and user names, system dirs.

use crate::reader::is_name;
use crate::schema::*;

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
    Ok(Route {
        host,
        path: path.to_string(),
    })
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
