//! Secrets for the instances the agent starts, and cleaning up after instances that vanished.
//!
//! The agent reads the secrets file and its key itself ([`bow_secrets::Source`], given by the
//! command that runs the agent), so it can start and restart instances without the CLI, also
//! after an agent restart. Values are decrypted when an instance starts and kept in memory,
//! per secret with its digest: an instance gets the value whose digest the applied release
//! names. When the file now holds another value (set but not applied yet), the instance gets
//! the file's value and an event says so.

use bow_reconcile::EventKind;
use std::collections::BTreeMap;
use std::sync::Mutex;

use bow_driver::SecretFile;
use bow_secrets::Zeroizing;
use bow_spec::Service;

use crate::agent::Agent;

struct Cached {
    digest: String,
    value: Zeroizing<Vec<u8>>,
}

/// Where the agent's secrets come from, and the values it has decrypted.
pub(crate) struct Supply {
    source: Option<bow_secrets::Source>,
    cache: Mutex<BTreeMap<String, Cached>>,
}

impl Supply {
    pub(crate) fn new(source: Option<bow_secrets::Source>) -> Supply {
        Supply {
            source,
            cache: Mutex::new(BTreeMap::new()),
        }
    }
}

/// One secret's value, for the agent's own use (a registry password): never a file, never
/// an instance's.
pub(crate) fn reveal(agent: &Agent, name: &str) -> Result<Vec<u8>, String> {
    reveal_from(agent.secrets.source.as_ref(), name)
}

/// One secret's value from `source`.
pub(crate) fn reveal_from(
    source: Option<&bow_secrets::Source>,
    name: &str,
) -> Result<Vec<u8>, String> {
    let Some(source) = source else {
        return Err(format!(
            "secret {name} is needed, and this agent was given no secrets file"
        ));
    };
    let revealed = source
        .reveal(&[name])
        .map_err(|e| format!("secrets: {e}"))?;
    revealed
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.value.to_vec())
        .ok_or_else(|| format!("no secret {name} in {}", source.file.display()))
}

/// The secret files for an instance of `service` (empty when it uses no secrets); `Err`
/// says why they cannot be had.
pub(crate) fn files_for(
    agent: &Agent,
    service_name: &str,
    service: &Service,
) -> Result<Vec<SecretFile>, String> {
    let names = bow_spec::service_secrets(service);
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let supply = &agent.secrets;
    let Some(source) = &supply.source else {
        return Err("the service uses secrets, and this agent was given no secrets file".into());
    };
    let mut cache = supply.cache.lock().unwrap_or_else(|e| e.into_inner());
    let stale: Vec<&str> = names
        .iter()
        .copied()
        .filter(
            |name| match (cache.get(*name), service.secret_digests.get(*name)) {
                (Some(cached), Some(wanted)) => &cached.digest != wanted,
                (Some(_), None) => false,
                (None, _) => true,
            },
        )
        .collect();
    if !stale.is_empty() {
        let revealed = source.reveal(&stale).map_err(|e| format!("secrets: {e}"))?;
        for secret in revealed {
            if service
                .secret_digests
                .get(&secret.name)
                .is_some_and(|wanted| wanted != &secret.digest)
            {
                agent.emit(
                    service_name,
                    "",
                    EventKind::SecretChanged,
                    &format!(
                        "secret {} in {} differs from the applied release; instances started now get the file's value; run `bow up` to deploy it to every instance",
                        secret.name,
                        source.file.display()
                    ),
                );
            }
            cache.insert(
                secret.name,
                Cached {
                    digest: secret.digest,
                    value: secret.value,
                },
            );
        }
    }
    Ok(names
        .iter()
        .map(|name| SecretFile {
            name: name.to_string(),
            value: cache[*name].value.to_vec(),
        })
        .collect())
}

/// The environment of an instance's exec health check: like the instance's, with
/// `BOW_SECRETS_DIR` and `${secret:NAME}` resolved (a reference that cannot be is left as it
/// is: the check then fails visibly rather than the instance).
pub(crate) fn health_env(
    agent: &Agent,
    service_name: &str,
    service: &Service,
    handle: &bow_driver::Handle,
    mut env: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    if let Some(dir) = &handle.secrets_dir() {
        env.insert(
            bow_driver::SECRETS_DIR_ENV.to_string(),
            dir.display().to_string(),
        );
    }
    if env.values().any(|v| v.contains("${secret:"))
        && let Ok(files) = files_for(agent, service_name, service)
    {
        for value in env.values_mut() {
            if let Ok(resolved) = resolve_references(value, &files) {
                *value = resolved;
            }
        }
    }
    env
}

/// Replaces each `${secret:NAME}` in an env value by the secret's text. (The spec loader has
/// already turned `$${` into a literal `${`, and checked that NAME is among the service's
/// secrets.)
pub(crate) fn resolve_references(value: &str, files: &[SecretFile]) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("${secret:") {
        let after = &rest[at + "${secret:".len()..];
        let Some(end) = after.find('}') else {
            break;
        };
        let name = &after[..end];
        let file = files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| format!("secret `{name}` is not among the service's secrets"))?;
        let text = std::str::from_utf8(&file.value).map_err(|_| {
            format!(
                "secret `{name}` is not text, so it cannot go in an environment variable; read it from $BOW_SECRETS_DIR/{name}"
            )
        })?;
        if text.contains('\0') {
            return Err(format!(
                "secret `{name}` contains a NUL byte, which an environment variable cannot hold"
            ));
        }
        out.push_str(&rest[..at]);
        out.push_str(text);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Removes the secrets dirs of instances that no longer run (their shim was killed before it
/// could clean up), keeping those of `running` instance ids.
pub(crate) fn sweep(agent: &Agent, running: &dyn Fn(&str) -> bool) {
    let project = format!("{}-{}", agent.project, agent.environment);
    let base = bow_driver::secret_files::project_secrets_base(
        &project,
        &crate::layout::run_dir(&agent.state_dir),
        agent.root,
    );
    for id in bow_driver::secret_files::sweep(&base, running) {
        agent.emit(
            "",
            &id,
            EventKind::Cleaned,
            "removed the secrets of an instance that no longer runs",
        );
    }
}

/// Runs `work` with `names`' values as files in a private directory of the agent's own (a
/// tmpfs as root, 0400 files owned by the agent's user) that is removed when `work` returns:
/// how the agent lends a secret to a program it runs itself (git's deploy key), never in its
/// argv or environment and never on disk outside the tmpfs. `purpose` names the directory,
/// apart from the instances' (their sweep never sees it). Each value ends with a newline.
pub fn with_secret_files<T>(
    agent: &Agent,
    purpose: &str,
    names: &[&str],
    work: impl FnOnce(&std::path::Path) -> T,
) -> Result<T, String> {
    let mut files = Vec::new();
    for name in names {
        // Ended by a newline, as key files must be (ssh refuses a key without one).
        let mut value = reveal(agent, name)?;
        if !value.ends_with(b"\n") {
            value.push(b'\n');
        }
        files.push(SecretFile {
            name: name.to_string(),
            value,
        });
    }
    let run_dir = crate::layout::run_dir(&agent.state_dir);
    let dir = if agent.root {
        bow_driver::secret_files::project_secrets_base(
            &format!("{}-{}.{purpose}", agent.project, agent.environment),
            &run_dir,
            true,
        )
    } else {
        run_dir.join(format!("{purpose}-secrets"))
    };
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    bow_driver::secret_files::deliver(&dir, &files, uid, gid, agent.root)?;
    let result = work(&dir);
    if let Err(error) = bow_driver::secret_files::remove(&dir) {
        agent.emit(
            "",
            "",
            EventKind::Cleaned,
            &format!("cannot remove {}: {error}", dir.display()),
        );
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_and_other_text_stays() {
        let files = vec![SecretFile {
            name: "db".into(),
            value: b"pw".to_vec(),
        }];
        assert_eq!(
            resolve_references("postgres://u:${secret:db}@h/${PORT}", &files).unwrap(),
            "postgres://u:pw@h/${PORT}"
        );
        assert!(resolve_references("${secret:other}", &files).is_err());
        let binary = vec![SecretFile {
            name: "k".into(),
            value: vec![0xff, 0xfe],
        }];
        let message = resolve_references("${secret:k}", &binary).unwrap_err();
        assert!(message.contains("$BOW_SECRETS_DIR/k"), "{message}");
    }
}
