//! `${name}` substitution of vars in every string value.
//!
//! `${name}` is replaced by the var `name`. `${secret:NAME}` and `${postgres:SERVICE}` (the
//! URL of a postgres service, password included) stay references (allowed in `env` values
//! only). In `command`, `env` values and `health.exec`, an undefined
//! upper-case `${NAME}` is left for the instance's environment at run time (`${PORT}`). `$${`
//! writes a literal `${`.

use std::collections::BTreeMap;

use crate::diag::did_you_mean;
use crate::reader::{Reader, index, join};
use crate::yaml::{Node, NodeKind};

/// Where a string sits decides which `${...}` forms it may hold.
#[derive(Clone, Copy)]
struct Allowed {
    runtime: bool,
    secret: bool,
}

/// Substitutes vars in every scalar below `node`; `path` is its config path (`edge` or
/// `services`).
pub fn interpolate(
    node: &mut Node,
    path: &str,
    vars: &BTreeMap<String, String>,
    reader: &mut Reader,
) {
    // `path` is bow's own (`edge`, `services`, or empty at the root): safe to split.
    let mut keys: Vec<String> = path
        .split('.')
        .filter(|key| !key.is_empty())
        .map(str::to_string)
        .collect();
    walk(node, path, &mut keys, vars, reader);
}

/// `keys` are the mapping keys from the root down to `node`, as they are (never re-split
/// from `path`: a service may be named `a.b` or `../x` and still be reported correctly).
fn walk(
    node: &mut Node,
    path: &str,
    keys: &mut Vec<String>,
    vars: &BTreeMap<String, String>,
    reader: &mut Reader,
) {
    match &mut node.kind {
        NodeKind::Map(entries) => {
            for (key, value) in entries {
                let name = key.scalar().unwrap_or_default();
                let child = join(path, name);
                keys.push(name.to_string());
                walk(value, &child, keys, vars, reader);
                keys.pop();
            }
        }
        NodeKind::Seq(items) => {
            for (position, item) in items.iter_mut().enumerate() {
                walk(item, &index(path, position), keys, vars, reader);
            }
        }
        NodeKind::Plain(text) | NodeKind::Quoted(text) => {
            if !text.contains('$') {
                return;
            }
            let plain = matches!(node.kind, NodeKind::Plain(_));
            let text = node.scalar().unwrap_or_default().to_string();
            match expand(&text, node, plain, path, allowed_at(keys), vars, reader) {
                Some(expanded) => match &mut node.kind {
                    NodeKind::Plain(slot) | NodeKind::Quoted(slot) => *slot = expanded,
                    _ => {}
                },
                None => reader.poison(node.span),
            }
        }
    }
}

/// Which `${...}` forms a value may hold, from the keys above it: `services`, the service's
/// name, its field, and below.
fn allowed_at(keys: &[String]) -> Allowed {
    let key = |at: usize| keys.get(at).map(String::as_str);
    let in_service = key(0) == Some("services");
    let field = key(2);
    let env_value = in_service && field == Some("env") && keys.len() == 4;
    let runtime = in_service
        && (field == Some("command")
            || env_value
            || (field == Some("health") && key(3) == Some("exec")));
    // An outside API's injected headers: `services.<name>.proxy.inject_headers.<header>`.
    let injected =
        in_service && field == Some("proxy") && key(3) == Some("inject_headers") && keys.len() == 5;
    Allowed {
        runtime,
        secret: env_value || injected,
    }
}

fn expand(
    text: &str,
    node: &Node,
    plain: bool,
    path: &str,
    allowed: Allowed,
    vars: &BTreeMap<String, String>,
    reader: &mut Reader,
) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut consumed = 0;
    let mut ok = true;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let offset = consumed + at;
        let span = if plain && text.len() == node.span.end - node.span.start {
            node.span
                .sub(offset, tail.find('}').map_or(1, |end| end + 1))
        } else {
            node.span
        };
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            consumed = offset + 3;
            continue;
        }
        if !tail.starts_with("${") {
            out.push('$');
            rest = &tail[1..];
            consumed = offset + 1;
            continue;
        }
        let Some(end) = tail.find('}') else {
            reader.error(
                path,
                span,
                "unclosed `${`: expected `}`",
                Some("write `$${` for a literal `${`".to_string()),
            );
            return None;
        };
        let reference = &tail[2..end];
        if let Some(secret) = reference.strip_prefix("secret:") {
            if !allowed.secret {
                reader.error(
                    path,
                    span,
                    format!("secret reference `${{secret:{secret}}}` is only allowed in env values and a proxy's inject_headers"),
                    Some("services read secrets as files in $BOW_SECRETS_DIR; list the secret under `secrets:`".to_string()),
                );
                ok = false;
            }
            out.push_str(&tail[..=end]);
        } else if let Some(service) = reference.strip_prefix("postgres:") {
            if !allowed.secret {
                reader.error(
                    path,
                    span,
                    format!("`${{postgres:{service}}}` is only allowed in env values"),
                    Some(format!(
                        "write it as an env value, e.g. DATABASE_URL: ${{postgres:{service}}}"
                    )),
                );
                ok = false;
            }
            out.push_str(&tail[..=end]);
        } else if let Some(value) = vars.get(reference) {
            out.push_str(value);
        } else if allowed.runtime
            && is_env_name(reference)
            && reference.bytes().all(|b| !b.is_ascii_lowercase())
        {
            out.push_str(&tail[..=end]);
        } else {
            let hint = match did_you_mean(reference, vars.keys().map(String::as_str)) {
                Some(close) => format!("did you mean `${{{close}}}`?"),
                None if allowed.runtime => "define it under `vars:`; upper-case names like ${PORT} are left to the environment at run time".to_string(),
                None => "define it under `vars:` (or in the environment's `vars:`)".to_string(),
            };
            reader.error(
                path,
                span,
                format!("undefined variable `{reference}`"),
                Some(hint),
            );
            ok = false;
            out.push_str(&tail[..=end]);
        }
        rest = &tail[end + 1..];
        consumed = offset + end + 1;
    }
    out.push_str(rest);
    ok.then_some(out)
}

/// `[A-Za-z_][A-Za-z0-9_]*`: a name a shell accepts as an environment variable.
pub fn is_env_name(text: &str) -> bool {
    let mut bytes = text.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The names in `${secret:NAME}` references of `text`.
pub fn secret_references(text: &str) -> Vec<&str> {
    references(text, "${secret:")
}

/// The services in `${postgres:SERVICE}` references of `text`.
pub fn postgres_references(text: &str) -> Vec<&str> {
    references(text, "${postgres:")
}

fn references<'t>(text: &'t str, opening: &str) -> Vec<&'t str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(opening) {
        let tail = &rest[at + opening.len()..];
        let Some(end) = tail.find('}') else { break };
        names.push(&tail[..end]);
        rest = &tail[end + 1..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse;

    fn run(yaml: &str) -> (Node, Vec<String>) {
        let mut node = parse(yaml).unwrap().unwrap();
        let vars = BTreeMap::from([
            ("domain".to_string(), "dash.localhost".to_string()),
            ("p".to_string(), "5001".to_string()),
        ]);
        let mut reader = Reader::default();
        interpolate(&mut node, "", &vars, &mut reader);
        (
            node,
            reader
                .diagnostics
                .into_iter()
                .map(|d| d.to_string())
                .collect(),
        )
    }

    #[test]
    fn substitutes_vars_and_keeps_runtime_and_secret_refs() {
        let (node, errors) = run(
            "services:\n  a:\n    command: run -b 127.0.0.1:${PORT} --d ${domain}\n    port: ${p}\n    env: {X: '${secret:k}', Y: '$${literal}'}\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let a = node.get("services").unwrap().get("a").unwrap();
        assert_eq!(
            a.get("command").unwrap().scalar(),
            Some("run -b 127.0.0.1:${PORT} --d dash.localhost")
        );
        assert_eq!(a.get("port").unwrap().kind, NodeKind::Plain("5001".into()));
        assert_eq!(
            a.get("env").unwrap().get("X").unwrap().scalar(),
            Some("${secret:k}")
        );
        assert_eq!(
            a.get("env").unwrap().get("Y").unwrap().scalar(),
            Some("${literal}")
        );
    }

    #[test]
    fn odd_service_names_keep_runtime_refs() {
        // A name with dots or slashes is a name error (decode), never an undefined PORT.
        for name in ["'../x'", "a.b", "'x/y.z'"] {
            let (_, errors) = run(&format!(
                "services:\n  {name}:\n    command: run ${{PORT}}\n    env: {{A: '${{PORT}}', B: '${{secret:k}}'}}\n"
            ));
            assert!(errors.is_empty(), "{name}: {errors:?}");
        }
    }

    #[test]
    fn reports_undefined_and_misplaced_refs() {
        let (_, errors) =
            run("services:\n  a:\n    routes: ['${domian}', '${PORT}']\n    dir: '${secret:x}'\n");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("undefined variable `domian`"));
    }
}
