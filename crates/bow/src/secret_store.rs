//! The secrets store as the commands see it: where the file and the key are, the digests
//! `plan` and `up` put into the release, and the source the agent reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use bow_secrets::{KeySource, SecretsFile, Source};
use bow_spec::Spec;

use crate::session::Session;

/// `secrets/<env>.yaml` beside the stack file.
pub fn file_path(stack_file: &Path, environment: &str) -> PathBuf {
    let dir = stack_file.parent().unwrap_or(Path::new("."));
    bow_secrets::secrets_file_path(dir, environment)
}

/// What the agent of this session reads secrets from: the file beside the stack file and
/// the key the environment selects (`BOW_AGE_KEY`, `BOW_AGE_KEY_FILE`, or the default path),
/// read afresh whenever an instance starts.
pub fn source(session: &Session) -> Option<Source> {
    let key = KeySource::from_env(&session.spec.project, &session.spec.environment).ok()?;
    Some(Source {
        file: file_path(&session.file, &session.spec.environment),
        key,
    })
}

/// The secrets each service uses: name → services.
pub fn usage(spec: &Spec) -> BTreeMap<String, Vec<String>> {
    let mut usage: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (service_name, service) in &spec.services {
        for secret in bow_spec::used_secrets(service) {
            usage
                .entry(secret.to_string())
                .or_default()
                .push(service_name.clone());
        }
    }
    usage
}

/// Puts the digest of every secret a service uses into the service (its release). Refuses,
/// naming each secret and how to set it, when one is not set; needs the key to compute them.
pub fn attach_digests(session: &mut Session) -> Result<()> {
    let usage = usage(&session.spec);
    if usage.is_empty() {
        return Ok(());
    }
    let environment = session.spec.environment.clone();
    let path = file_path(&session.file, &environment);
    let file = SecretsFile::load(&path)?;
    let names: Vec<&str> = usage.keys().map(String::as_str).collect();
    let missing = match &file {
        Some(file) => file.missing(&names),
        None => names.clone(),
    };
    if !missing.is_empty() {
        let lines: Vec<String> = missing
            .iter()
            .map(|name| {
                format!(
                    "  secret `{name}` (used by {}): set it with `bow secret set {name} -e {environment}` (the value on stdin)",
                    usage[*name].join(", ")
                )
            })
            .collect();
        let init = if file.is_none() {
            format!(
                "\nthere is no {} yet: run `bow secret init -e {environment}` first",
                path.display()
            )
        } else {
            String::new()
        };
        bail!(
            "{} not set in {}; `bow plan` and `bow up` refuse until it is\n{}{init}",
            if missing.len() == 1 {
                "a secret the services use is"
            } else {
                "secrets the services use are"
            },
            path.display(),
            lines.join("\n")
        );
    }
    let file = file.expect("checked above");
    let key = KeySource::from_env(&session.spec.project, &environment)?.load()?;
    let digests = file.digests(&path, &key, &names)?;
    for service in session.spec.services.values_mut() {
        service.secret_digests = bow_spec::used_secrets(service)
            .into_iter()
            .map(|name| (name.to_string(), digests[name].clone()))
            .collect();
    }
    Ok(())
}
