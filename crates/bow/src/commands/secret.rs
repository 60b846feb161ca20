//! `bow secret`: manage the age-encrypted secrets of an environment (`secrets/<env>.yaml`).
//! Values come from stdin or a file, never from arguments; `get` prints only to a terminal
//! unless `--reveal` says otherwise.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use bow_secrets::{KeySource, SecretsFile, Zeroizing};

use crate::cli::{Output, RecipientsCommand, SecretCommand, StackArgs};

/// The stack as the secret commands need it: project, environment, where the file is, and
/// which services use each secret (when the stack file is valid for the environment).
struct Stack {
    project: String,
    environment: String,
    path: PathBuf,
    /// `None` when the stack file is not valid for this environment.
    usage: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

impl Stack {
    fn load(args: &StackArgs) -> Result<Stack> {
        let file = crate::stack::read(args)?;
        let environment = crate::stack::environment(args);
        let (project, usage) = match bow_spec::load(&file.text, &crate::stack::load_options(args)) {
            Ok(spec) => {
                let usage = crate::secret_store::usage(&spec);
                (spec.project, Some(usage))
            }
            // A typo in the environment would make a file nobody reads: refuse it.
            Err(diagnostics)
                if diagnostics
                    .iter()
                    .any(|d| d.message.starts_with("unknown environment")) =>
            {
                eprint!("{}", crate::stack::render_diagnostics(&file, &diagnostics));
                bail!("no environment `{environment}` in {}", file.path.display());
            }
            // Secrets stay manageable while the stack file has other problems.
            Err(_) => (
                bow_spec::project_name(&file.text)
                    .with_context(|| format!("{} has no valid `project:`", file.path.display()))?,
                None,
            ),
        };
        Ok(Stack {
            path: crate::secret_store::file_path(&file.path, &environment),
            project,
            environment,
            usage,
        })
    }

    fn key_source(&self) -> Result<KeySource> {
        Ok(KeySource::from_env(&self.project, &self.environment)?)
    }

    /// The secrets file, which must exist.
    fn file(&self) -> Result<SecretsFile> {
        match SecretsFile::load(&self.path)? {
            Some(file) => Ok(file),
            None => bail!(
                "there is no {} yet; create it with `bow secret init -e {}`",
                self.path.display(),
                self.environment
            ),
        }
    }

    fn save(&self, file: &SecretsFile) -> Result<()> {
        Ok(file.save(&self.path, &self.environment)?)
    }

    fn users_of(&self, name: &str) -> Vec<String> {
        self.usage
            .as_ref()
            .and_then(|u| u.get(name).cloned())
            .unwrap_or_default()
    }
}

pub fn run(command: SecretCommand, outer: &StackArgs) -> Result<ExitCode> {
    match command {
        SecretCommand::Init { stack } => init(&Stack::load(&stack.or(outer))?),
        SecretCommand::Set {
            stack,
            name,
            from_file,
        } => set(&Stack::load(&stack.or(outer))?, &name, from_file.as_deref()),
        SecretCommand::Get {
            stack,
            name,
            reveal,
        } => get(&Stack::load(&stack.or(outer))?, &name, reveal),
        SecretCommand::List { stack, output } => list(&Stack::load(&stack.or(outer))?, output),
        SecretCommand::Rm { stack, name } => remove(&Stack::load(&stack.or(outer))?, &name),
        SecretCommand::Recipients { command } => match command {
            RecipientsCommand::Add { stack, recipient } => {
                change_recipients(&Stack::load(&stack.or(outer))?, &recipient, true)
            }
            RecipientsCommand::Rm { stack, recipient } => {
                change_recipients(&Stack::load(&stack.or(outer))?, &recipient, false)
            }
            RecipientsCommand::List { stack } => list_recipients(&Stack::load(&stack.or(outer))?),
        },
        SecretCommand::Rotate { stack } => rotate(&Stack::load(&stack.or(outer))?),
    }
}

fn now() -> String {
    humantime_rfc3339(std::time::SystemTime::now())
}

fn humantime_rfc3339(time: std::time::SystemTime) -> String {
    let text = bow_driver::format_rfc3339_micros(time);
    // Seconds are precise enough for "last changed".
    match text.find('.') {
        Some(dot) => format!("{}Z", &text[..dot]),
        None => text,
    }
}

fn init(stack: &Stack) -> Result<ExitCode> {
    let source = stack.key_source()?;
    let key = match &source {
        KeySource::File { path, .. } if !path.exists() => {
            let key = bow_secrets::write_new_key(path)?;
            eprintln!(
                "created the key {} (mode 0600); keep it out of the repository and back it up",
                path.display()
            );
            key
        }
        _ => source.load()?,
    };
    eprintln!("your public key (recipient): {}", key.recipient);
    match SecretsFile::load(&stack.path)? {
        None => {
            let file = SecretsFile::create(vec![key.recipient.clone()])?;
            stack.save(&file)?;
            eprintln!(
                "created {}, encrypted to your key; commit it with the code",
                stack.path.display()
            );
        }
        Some(file) if file.recipients.contains(&key.recipient) => {
            eprintln!(
                "{} is already encrypted to your key; nothing to do",
                stack.path.display()
            );
        }
        Some(_) => {
            eprintln!(
                "{} exists and is not encrypted to your key: ask someone who can decrypt it to run `bow secret recipients add {} -e {}`",
                stack.path.display(),
                key.recipient,
                stack.environment
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The value from `--from-file` (exact bytes) or stdin (one trailing newline dropped; typed
/// without echo on a terminal).
fn read_value(name: &str, from_file: Option<&Path>) -> Result<Zeroizing<Vec<u8>>> {
    let mut value = Zeroizing::new(Vec::new());
    if let Some(path) = from_file {
        let mut file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        file.read_to_end(&mut value)
            .with_context(|| format!("cannot read {}", path.display()))?;
    } else {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprint!("value of {name} (not shown; Enter ends it): ");
            let _echo = EchoOff::new();
            let mut line = Zeroizing::new(String::new());
            stdin.read_line(&mut line).context("cannot read stdin")?;
            eprintln!();
            value.extend_from_slice(line.as_bytes());
        } else {
            stdin
                .lock()
                .read_to_end(&mut value)
                .context("cannot read the value from stdin")?;
        }
        if value.ends_with(b"\n") {
            value.pop();
            if value.ends_with(b"\r") {
                value.pop();
            }
        }
    }
    if value.is_empty() {
        bail!(
            "the value of {name} is empty; pipe it in (`printf %s \"$VALUE\" | bow secret set {name}`) or use --from-file"
        );
    }
    Ok(value)
}

/// Turns terminal echo off while it lives.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed termios it fills.
        unsafe {
            let mut original: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut original) != 0 {
                return EchoOff(None);
            }
            let mut quiet = original;
            quiet.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &quiet);
            EchoOff(Some(original))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(original) = &self.0 {
            // SAFETY: restores the settings read in `new`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, original) };
        }
    }
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

fn check_name(name: &str) -> Result<()> {
    if !bow_secrets::is_valid_name(name) {
        bail!("`{name}` is not a secret name: use letters, digits, `_` and `-` (at most 128)");
    }
    Ok(())
}

fn set(stack: &Stack, name: &str, from_file: Option<&Path>) -> Result<ExitCode> {
    check_name(name)?;
    let mut file = stack.file()?;
    let value = read_value(name, from_file)?;
    // Setting the same value again changes nothing (no diff, no deploy), when the key can tell.
    if file.secrets.contains_key(name)
        && let Ok(key) = stack.key_source().and_then(|s| Ok(s.load()?))
        && let Ok(old) = file.reveal(&stack.path, &key, name)
        && *old == *value
    {
        eprintln!("{name} already has this value; nothing changed");
        return Ok(ExitCode::SUCCESS);
    }
    file.set(name, &value, &now())?;
    stack.save(&file)?;
    let users = stack.users_of(name);
    let next = if users.is_empty() {
        "no service uses it yet; list it under a service's `secrets:`".to_string()
    } else {
        format!(
            "used by {}; `bow up -e {}` deploys it",
            users.join(", "),
            stack.environment
        )
    };
    eprintln!(
        "set {name} in {} (encrypted to {}); {next}",
        stack.path.display(),
        plural(file.recipients.len(), "recipient")
    );
    Ok(ExitCode::SUCCESS)
}

fn get(stack: &Stack, name: &str, reveal: bool) -> Result<ExitCode> {
    check_name(name)?;
    let mut stdout = std::io::stdout();
    if !reveal && !stdout.is_terminal() {
        bail!(
            "refusing to write secret {name} to a pipe or file, where it could end up in logs; pass --reveal if that is what you want"
        );
    }
    let file = stack.file()?;
    let key = stack.key_source()?.load()?;
    let value = file.reveal(&stack.path, &key, name)?;
    stdout.write_all(&value)?;
    if stdout.is_terminal() && !value.ends_with(b"\n") {
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Serialize)]
struct Listed {
    name: String,
    /// When it was last set (RFC 3339); `None`: used by a service but not set.
    changed: Option<String>,
    used_by: Vec<String>,
}

fn list(stack: &Stack, output: Output) -> Result<ExitCode> {
    let file = SecretsFile::load(&stack.path)?;
    let mut rows: Vec<Listed> = file
        .iter()
        .flat_map(|f| f.secrets.iter())
        .map(|(name, entry)| Listed {
            name: name.clone(),
            changed: Some(entry.changed.clone()),
            used_by: stack.users_of(name),
        })
        .collect();
    for (name, users) in stack.usage.iter().flatten() {
        if !rows.iter().any(|r| &r.name == name) {
            rows.push(Listed {
                name: name.clone(),
                changed: None,
                used_by: users.clone(),
            });
        }
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Text => {
            if file.is_none() {
                eprintln!(
                    "there is no {} yet; create it with `bow secret init -e {}`",
                    stack.path.display(),
                    stack.environment
                );
            }
            let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
            println!("{:<width$}  {:<20}  USED BY", "NAME", "LAST CHANGED");
            for row in &rows {
                let used = if stack.usage.is_none() {
                    "? (the stack file is not valid)".to_string()
                } else if row.used_by.is_empty() {
                    "-".to_string()
                } else {
                    row.used_by.join(", ")
                };
                println!(
                    "{:<width$}  {:<20}  {used}",
                    row.name,
                    row.changed.as_deref().unwrap_or("(not set)")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn remove(stack: &Stack, name: &str) -> Result<ExitCode> {
    check_name(name)?;
    let mut file = stack.file()?;
    if !file.remove(name) {
        bail!("secret {name} is not set in {}", stack.path.display());
    }
    stack.save(&file)?;
    let users = stack.users_of(name);
    if users.is_empty() {
        eprintln!("removed {name} from {}", stack.path.display());
    } else {
        eprintln!(
            "removed {name} from {}; {} still use it, so `bow plan` and `bow up` refuse until it is set again or removed from their `secrets:`",
            stack.path.display(),
            users.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn change_recipients(stack: &Stack, recipient: &str, add: bool) -> Result<ExitCode> {
    let mut file = stack.file()?;
    let key = stack.key_source()?.load()?;
    let mut recipients = file.recipients.clone();
    if add {
        if recipients.iter().any(|r| r == recipient) {
            eprintln!("{recipient} is already a recipient; nothing changed");
            return Ok(ExitCode::SUCCESS);
        }
        recipients.push(recipient.to_string());
    } else {
        if !recipients.iter().any(|r| r == recipient) {
            bail!(
                "{recipient} is not a recipient of {}; see `bow secret recipients list`",
                stack.path.display()
            );
        }
        recipients.retain(|r| r != recipient);
        if recipients.is_empty() {
            bail!("{recipient} is the only recipient; add another one before removing it");
        }
    }
    file.reencrypt(&stack.path, &key, recipients)?;
    stack.save(&file)?;
    if add {
        eprintln!(
            "added {recipient}; re-encrypted {} to {}",
            plural(file.secrets.len(), "secret"),
            plural(file.recipients.len(), "recipient")
        );
    } else {
        eprintln!(
            "removed {recipient}; re-encrypted {} to {}. Older copies of the file (git history) still open with that key: change the values it could read",
            plural(file.secrets.len(), "secret"),
            plural(file.recipients.len(), "recipient")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn list_recipients(stack: &Stack) -> Result<ExitCode> {
    let file = stack.file()?;
    let mine = stack
        .key_source()
        .ok()
        .and_then(|s| s.load().ok())
        .map(|k| k.recipient);
    for recipient in &file.recipients {
        let marker = if Some(recipient) == mine.as_ref() {
            "  (your key)"
        } else {
            ""
        };
        println!("{recipient}{marker}");
    }
    Ok(ExitCode::SUCCESS)
}

fn rotate(stack: &Stack) -> Result<ExitCode> {
    let source = stack.key_source()?;
    let Some(path) = source.path().map(Path::to_path_buf) else {
        bail!(
            "the key comes from BOW_AGE_KEY; rotate writes the new key to a file: set BOW_AGE_KEY_FILE (or unset BOW_AGE_KEY to use the default path)"
        );
    };
    let old = source.load()?;
    let mut file = stack.file()?;
    let staged = path.with_extension("key.new");
    let _ = std::fs::remove_file(&staged);
    let new = bow_secrets::write_new_key(&staged)?;
    let recipients: Vec<String> = file
        .recipients
        .iter()
        .map(|r| {
            if *r == old.recipient {
                new.recipient.clone()
            } else {
                r.clone()
            }
        })
        .chain((!file.recipients.contains(&old.recipient)).then(|| new.recipient.clone()))
        .collect();
    if let Err(error) = file.reencrypt(&stack.path, &old, recipients) {
        let _ = std::fs::remove_file(&staged);
        return Err(error.into());
    }
    stack.save(&file)?;
    let backup = path.with_extension("key.old");
    std::fs::rename(&path, &backup)
        .with_context(|| format!("cannot move the old key to {}", backup.display()))?;
    std::fs::rename(&staged, &path)
        .with_context(|| format!("cannot move the new key to {}", path.display()))?;
    eprintln!(
        "rotated: {} is re-encrypted to the new key {} (in {}); the old key is kept as {} for older copies of the file, delete it when none is needed",
        stack.path.display(),
        new.recipient,
        path.display(),
        backup.display()
    );
    eprintln!(
        "put the new key on every host that runs this environment; a running agent reads it at the next start of an instance"
    );
    Ok(ExitCode::SUCCESS)
}
