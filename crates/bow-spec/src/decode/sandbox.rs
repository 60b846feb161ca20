//! `sandbox:` of a service: level, writable paths, kept capabilities, allowed system calls.

use crate::reader::{Reader, index};
use crate::sandbox::{CAPABILITIES, Sandbox, SandboxLevel, is_filtered_syscall};
use crate::yaml::Node;

use super::values::system_dir;
use super::{SANDBOX_KEYS, SYSCALLS_KEYS};

/// The sandbox of a service; the default where the key or a field has errors.
pub(super) fn sandbox(node: &Node, path: &str, reader: &mut Reader) -> Sandbox {
    let mut sandbox = Sandbox::default();
    let Some(fields) = reader.fields(node, path, "a sandbox mapping", SANDBOX_KEYS) else {
        return sandbox;
    };
    if let Some((n, p)) = fields.get("level")
        && let Some(text) = reader.nonempty(n, &p, "a sandbox level")
    {
        match SandboxLevel::parse(&text) {
            Some(level) => sandbox.level = level,
            None => {
                let hint = match crate::diag::did_you_mean(&text, SandboxLevel::NAMES) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => "one of strict, default, off".to_string(),
                };
                reader.error(
                    &p,
                    n.span,
                    format!("unknown sandbox level {text:?}"),
                    Some(hint),
                );
            }
        }
    }
    if let Some((n, p)) = fields.get("writable") {
        for (position, item) in names(n, &p, "paths", reader) {
            let item_path = index(&p, position);
            let Some(text) = reader.nonempty(item, &item_path, "a path") else {
                continue;
            };
            if let Some(system) = system_dir(&text) {
                reader.error(
                    &item_path,
                    item.span,
                    format!("`{text}` is a system directory ({system}): a sandbox that may write it protects nothing"),
                    Some("name the service's own data directory, or use `level: off`".to_string()),
                );
            } else if !sandbox.writable.contains(&text) {
                sandbox.writable.push(text);
            }
        }
    }
    if let Some((n, p)) = fields.get("caps") {
        for (position, item) in names(n, &p, "capability names", reader) {
            let item_path = index(&p, position);
            let Some(text) = reader.nonempty(item, &item_path, "a capability name") else {
                continue;
            };
            let name = text.to_ascii_lowercase();
            let name = name.strip_prefix("cap_").unwrap_or(&name).to_string();
            if !CAPABILITIES.contains(&name.as_str()) {
                let hint = match crate::diag::did_you_mean(&name, CAPABILITIES) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => "names as in capabilities(7) without CAP_, like net_bind_service"
                        .to_string(),
                };
                reader.error(
                    &item_path,
                    item.span,
                    format!("unknown capability {text:?}"),
                    Some(hint),
                );
            } else if !sandbox.caps.contains(&name) {
                sandbox.caps.push(name);
            }
        }
    }
    if let Some((n, p)) = fields.get("syscalls")
        && let Some(rules) = reader.fields(n, &p, "a mapping with allow", SYSCALLS_KEYS)
        && let Some((n, p)) = rules.get("allow")
    {
        for (position, item) in names(n, &p, "system call names", reader) {
            let item_path = index(&p, position);
            let Some(name) = reader.nonempty(item, &item_path, "a system call name") else {
                continue;
            };
            if !is_filtered_syscall(&name) {
                let known = crate::sandbox::DEFAULT_DENIED_SYSCALLS
                    .iter()
                    .chain(crate::sandbox::STRICT_EXTRA_SYSCALLS)
                    .map(|(name, _)| *name);
                let hint = match crate::diag::did_you_mean(&name, known) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => "only system calls bow's filter refuses need allowing; `bow security SERVICE` lists them".to_string(),
                };
                reader.error(
                    &item_path,
                    item.span,
                    format!("{name:?} is not a system call bow's filter refuses"),
                    Some(hint),
                );
            } else if !sandbox.syscalls.allow.contains(&name) {
                sandbox.syscalls.allow.push(name);
            }
        }
    }
    sandbox
}

fn names<'n>(
    node: &'n Node,
    path: &str,
    what: &str,
    reader: &mut Reader,
) -> Vec<(usize, &'n Node)> {
    reader
        .list(node, path, what)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .collect()
}
