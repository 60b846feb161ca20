//! What most commands need: the loaded stack (paths anchored), its state dir, the agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bow_agent::api::{Request, Response};
use bow_spec::Spec;

use crate::cli::StackArgs;
use crate::stack;

/// A validated stack for one environment, with absolute paths, and where its state lives.
pub struct Session {
    pub file: PathBuf,
    pub spec: Spec,
    pub state_dir: PathBuf,
}

impl Session {
    pub fn load(args: &StackArgs) -> Result<Session> {
        let (stack_file, mut spec) = stack::load(args)?;
        let file = &stack_file;
        let absolute = std::path::absolute(&file.path)
            .with_context(|| format!("cannot resolve {}", file.path.display()))?;
        let base = absolute.parent().unwrap_or(Path::new("/")).to_path_buf();
        bow_spec::anchor_paths(&mut spec, &base);
        let state_dir = stack::state_dir(args, &spec.project, &spec.environment)?;
        let state_dir = std::path::absolute(&state_dir).unwrap_or(state_dir);
        check_service_dirs(file, &spec, &state_dir)?;
        crate::code_version::stamp(&mut spec, &absolute, &state_dir);
        Ok(Session {
            file: absolute,
            spec,
            state_dir,
        })
    }

    /// Sends one request to this stack's agent; `None` when no agent runs.
    pub fn call(&self, request: &Request, timeout: Duration) -> Result<Option<Response>> {
        call(&self.state_dir, request, timeout)
    }
}

/// Refuses a service `dir` that is, once links and `..` are resolved, a system directory
/// (`bow_spec::SYSTEM_DIRS`) or bow's state dir: validation sees only what is written, this
/// sees where it leads (`dir: ../..`, a symlink to /etc, a bow.yaml kept in /etc).
fn check_service_dirs(file: &stack::StackFile, spec: &Spec, state_dir: &Path) -> Result<()> {
    let state_dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let mut diagnostics = Vec::new();
    for (name, service) in &spec.services {
        let Some(dir) = &service.dir else { continue };
        let real = std::fs::canonicalize(dir).unwrap_or_else(|_| Path::new(dir).to_path_buf());
        let real_text = real.to_string_lossy();
        let problem = if let Some(system) = bow_spec::system_dir(&real_text) {
            format!("a system directory ({system})")
        } else if real.starts_with(&state_dir) {
            format!("inside bow's state dir ({})", state_dir.display())
        } else {
            continue;
        };
        let span = bow_spec::locate(&file.text, &["services", name, "dir"]).unwrap_or_default();
        let span = if span.line == 0 {
            bow_spec::Span {
                line: 1,
                col: 1,
                ..span
            }
        } else {
            span
        };
        diagnostics.push(bow_spec::Diagnostic::new(
            format!("services.{name}.dir"),
            span,
            format!("the service's dir {} is {problem}: a service's dir is its code, which bow reads to version it", real.display()),
            Some("give the service a directory of its own, like ./app or /srv/app (a service without `dir` runs in the stack file's directory)".to_string()),
        ));
    }
    if diagnostics.is_empty() {
        return Ok(());
    }
    eprint!("{}", stack::render_diagnostics(file, &diagnostics));
    Err(stack::invalid(file, diagnostics.len()))
}

/// Sends one request to the agent of `state_dir`; `None` when no agent runs.
pub fn call(state_dir: &Path, request: &Request, timeout: Duration) -> Result<Option<Response>> {
    let response = match bow_agent::client::call(state_dir, request, timeout) {
        Err(bow_agent::AgentError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            return Err(permission_denied(
                &state_dir.join(bow_agent::api::SOCKET_FILE),
            ));
        }
        other => {
            other.with_context(|| format!("cannot talk to the agent in {}", state_dir.display()))?
        }
    };
    if let Some(Response::Error { message }) = &response {
        bail!("{message}");
    }
    Ok(response)
}

/// The state dir of the stack: from the file when it is readable, otherwise from the flags.
pub fn state_dir_only(args: &StackArgs) -> Result<PathBuf> {
    if let Some(dir) = stack::explicit_state_dir(args) {
        return Ok(dir);
    }
    // Lenient: `bow down` or `bow logs` must work while the file is being edited.
    let (file, _) = stack::read_lenient(args)?;
    let project = bow_spec::project_name(&file.text).with_context(|| {
        format!(
            "{} has no valid `project:`; pass --state-dir",
            file.path.display()
        )
    })?;
    stack::state_dir(args, &project, &stack::environment(args))
}

/// A message for when no agent answers.
pub fn no_agent(state_dir: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "no agent is running for {}; start one with `bow up -d`",
        state_dir.display()
    )
}

/// Fails with "permission denied: … run as root" when this user may not read `path` (a file
/// or directory of a state dir); a missing path is fine (the caller says what is missing).
/// Without it, `exists()` and `unwrap_or_default()` turn "not allowed" into "nothing there".
pub fn check_readable(path: &Path) -> Result<()> {
    match std::fs::File::open(path) {
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(permission_denied(path))
        }
        _ => Ok(()),
    }
}

/// The error for a state-dir path this user may not use, naming its owner when visible.
pub fn permission_denied(path: &Path) -> anyhow::Error {
    use std::os::unix::fs::MetadataExt;
    let owner = path
        .ancestors()
        .find_map(|p| std::fs::metadata(p).ok().map(|m| m.uid()))
        .and_then(user_name);
    let who = match owner {
        Some(name) if name != "root" => format!("as root (or as {name}, who runs that agent)"),
        _ => "as root (or as the user that runs the agent)".to_string(),
    };
    anyhow::anyhow!(
        "permission denied: cannot read {}; run {who}, or pass --state-dir for a stack of your own",
        path.display()
    )
}

/// The name of `uid` in /etc/passwd.
fn user_name(uid: u32) -> Option<String> {
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            (fields.nth(1)? == uid.to_string()).then(|| name.to_string())
        })
}
