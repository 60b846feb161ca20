//! Continuous deployment: the agent follows a git branch (`bow up -d --follow [BRANCH]`).
//!
//! The settings live in `<state-dir>/follow.json` (0600), written by `bow up --follow` and
//! `bow follow …`, read by a thread of the `bow agent` process at every tick. Each interval
//! (or at once when `follow.trigger` appears) it fetches the branch's upstream and, when it
//! moved, fast-forwards the work tree — never a merge, never over local changes: a dirty or
//! diverged tree is an event and nothing is applied — then loads, plans and applies the file
//! exactly as `bow apply` does (rolling/blue-green, automatic rollback), records the commit
//! with the revision (`bow history`), and waits for the deploys. A commit whose deploy failed
//! is recorded and not tried again until a newer one arrives. `bow rollback` pauses following
//! until `bow follow resume`, so the next poll does not undo it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bow_agent::Agent;
use bow_agent::api::Phase;
use bow_reconcile::EventKind;
use serde::{Deserialize, Serialize};

use crate::cli::StackArgs;

/// The settings file in the state dir.
pub const SETTINGS: &str = bow_agent::hooks::FOLLOW_SETTINGS;
/// Touched (by the webhook, `bow follow resume`) to fetch at once.
pub const TRIGGER: &str = bow_agent::hooks::FOLLOW_TRIGGER;
/// How long one deploy may take before the follower stops waiting for it.
const DEPLOY_PATIENCE: Duration = Duration::from_secs(1800);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The git work tree (the stack file's directory's top level).
    pub work_tree: PathBuf,
    pub branch: String,
    pub interval_ms: u64,
    /// The stack file and environment `bow up --follow` was given.
    pub file: PathBuf,
    pub environment: String,
    /// Why following is paused (`bow rollback`, `bow follow pause`), if it is.
    #[serde(default)]
    pub paused: Option<String>,
    /// The last commit applied (or found with nothing to change).
    #[serde(default)]
    pub applied: Option<String>,
    /// A commit whose deploy failed: not tried again.
    #[serde(default)]
    pub failed: Option<String>,
    /// The last thing said about a commit that was not applied (events are not repeated).
    #[serde(default)]
    pub said: Option<String>,
    /// The bow secret that signs `POST /hooks/git` on the admin listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// The bow secret holding the SSH deploy key that fetches (`--git-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_key_secret: Option<String>,
    /// The bow secret holding the HTTPS token that fetches (`--git-token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_token_secret: Option<String>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(SETTINGS)
}

pub fn read(state_dir: &Path) -> Option<Settings> {
    let text = std::fs::read_to_string(path(state_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn write(state_dir: &Path, settings: &Settings) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let target = path(state_dir);
    let temporary = target.with_extension("json.new");
    let text = serde_json::to_string_pretty(settings)?;
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        file.write_all(text.as_bytes())?;
    }
    std::fs::rename(&temporary, &target)
        .with_context(|| format!("cannot write {}", target.display()))
}

/// Runs git in `dir`; its trimmed stdout, or why it failed.
fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    git_with(dir, args, &[])
}

/// [`git`] with more environment (how a fetch gets its credentials).
fn git_with(
    dir: &Path,
    args: &[&str],
    env: &[(&str, std::ffi::OsString)],
) -> Result<String, String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The settings for following `branch` (the current one when `None`) of the work tree that
/// holds `file`; refused when it is no work tree or the branch has no upstream.
pub fn settings_for(
    file: &Path,
    environment: &str,
    branch: Option<&str>,
    interval: Duration,
) -> Result<Settings> {
    let dir = file.parent().unwrap_or(Path::new("/"));
    let top = git(dir, &["rev-parse", "--show-toplevel"])
        .map_err(|e| anyhow::anyhow!("--follow needs the stack file in a git work tree: {e}"))?;
    let current = git(dir, &["symbolic-ref", "--short", "HEAD"])
        .map_err(|e| anyhow::anyhow!("the work tree is on no branch: {e}"))?;
    let branch = branch.unwrap_or(&current).to_string();
    if branch != current {
        bail!(
            "the work tree at {top} is on {current}, not {branch}: check out {branch} first (`git switch {branch}`)"
        );
    }
    git(
        dir,
        &[
            "rev-parse",
            "--abbrev-ref",
            &format!("{branch}@{{upstream}}"),
        ],
    )
    .map_err(|_| {
        anyhow::anyhow!(
            "{branch} has no upstream to follow: `git branch --set-upstream-to origin/{branch}`"
        )
    })?;
    if interval < Duration::from_secs(1) {
        bail!("--interval is at least 1s");
    }
    Ok(Settings {
        work_tree: PathBuf::from(top),
        branch,
        interval_ms: interval.as_millis() as u64,
        file: file.to_path_buf(),
        environment: environment.to_string(),
        paused: None,
        applied: git(dir, &["rev-parse", "HEAD"]).ok(),
        failed: None,
        said: None,
        webhook_secret: None,
        git_key_secret: None,
        git_token_secret: None,
    })
}

/// The settings `--follow` and its flags ask for (`None` without `--follow`), checked before
/// anything starts: a work tree on the branch with an upstream, and the secrets they name.
pub fn settings_from_flags(
    session: &crate::session::Session,
    flags: crate::cli::FollowFlags,
) -> Result<Option<Settings>> {
    let Some(branch) = flags.follow.as_deref() else {
        return Ok(None);
    };
    let interval: bow_spec::units::Duration = flags
        .interval
        .parse()
        .map_err(|e| anyhow::anyhow!("--interval {}: {e}", flags.interval))?;
    let mut settings = settings_for(
        &session.file,
        &session.spec.environment,
        Some(branch).filter(|b| !b.is_empty()),
        interval.as_std(),
    )?;
    // They must be there now: the agent reveals them at each fetch or push.
    for (flag, name) in [
        ("--webhook-secret", &flags.webhook_secret),
        ("--git-key", &flags.git_key),
        ("--git-token", &flags.git_token),
    ] {
        if let Some(name) = name {
            let source = crate::secret_store::source(session).ok_or_else(|| {
                anyhow::anyhow!(
                    "{flag} {name}: no secrets file or key for {} (`bow secret set {name}`)",
                    session.spec.environment
                )
            })?;
            source
                .reveal(&[name.as_str()])
                .map_err(|e| anyhow::anyhow!("{flag} {name}: {e}"))?;
        }
    }
    settings.webhook_secret = flags.webhook_secret;
    settings.git_key_secret = flags.git_key;
    settings.git_token_secret = flags.git_token;
    Ok(Some(settings))
}

/// Writes `settings`, keeping what the follower recorded when the same branch of the same
/// work tree was followed before (a restarted `bow agent --follow` stays paused after a
/// rollback, and does not try a failed commit again).
pub fn write_keeping_progress(state_dir: &Path, mut settings: Settings) -> Result<()> {
    if let Some(before) = read(state_dir)
        && before.work_tree == settings.work_tree
        && before.branch == settings.branch
    {
        settings.paused = before.paused;
        settings.applied = before.applied.or(settings.applied);
        settings.failed = before.failed;
        settings.said = before.said;
    }
    write(state_dir, &settings)
}

/// The `--follow` flags of `settings`, as `bow agent --print-systemd-unit` writes them.
pub fn flags_of(settings: &Settings) -> String {
    let mut out = format!(
        " --follow {} --interval {}",
        settings.branch,
        bow_spec::units::Duration(Duration::from_millis(settings.interval_ms))
    );
    for (flag, name) in [
        ("--webhook-secret", &settings.webhook_secret),
        ("--git-key", &settings.git_key_secret),
        ("--git-token", &settings.git_token_secret),
    ] {
        if let Some(name) = name {
            out.push_str(&format!(" {flag} {name}"));
        }
    }
    out
}

/// The follower thread of a `bow agent`: checks the settings every second, runs a cycle at
/// each interval or trigger. Ends with the process.
pub fn spawn(agent: Arc<Agent>, state_dir: PathBuf, runtime: tokio::runtime::Handle) {
    std::thread::Builder::new()
        .name("bow-follow".into())
        .spawn(move || {
            let _runtime = runtime.enter();
            let mut next = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let Some(settings) = read(&state_dir) else {
                    continue;
                };
                let trigger = state_dir.join(TRIGGER);
                let triggered = std::fs::remove_file(&trigger).is_ok();
                if settings.paused.is_some() || (!triggered && Instant::now() < next) {
                    continue;
                }
                next = Instant::now() + Duration::from_millis(settings.interval_ms);
                let mut settings = settings;
                cycle(&agent, &state_dir, &mut settings);
                // `bow follow pause` or a rollback may have written since: keep theirs.
                if let Some(now) = read(&state_dir) {
                    settings.paused = now.paused.or(settings.paused);
                }
                if let Err(error) = write(&state_dir, &settings) {
                    agent.emit("", "", EventKind::Follow, &format!("{error:#}"));
                }
            }
        })
        .expect("a thread starts");
}

/// Says `message` once per distinct message (the next poll finds the same tree).
fn say_once(agent: &Agent, settings: &mut Settings, message: String) {
    if settings.said.as_deref() != Some(&message) {
        agent.emit("", "", EventKind::Follow, &message);
        settings.said = Some(message);
    }
}

/// The variable that makes this binary git's askpass program: it names the token's file.
pub const ASKPASS_ENV: &str = "BOW_GIT_ASKPASS";
/// The user name an HTTPS token goes with when its secret does not say `USER:TOKEN`.
const TOKEN_USER: &str = "x-access-token";
/// Where the host keys of SSH remotes are remembered (first use), before the user's own.
const KNOWN_HOSTS: &str = "git-known-hosts";

/// `git fetch REMOTE` in the work tree, with the deploy key or token the settings name lent
/// for the fetch only (a tmpfs file, never argv or the environment of anything but git).
fn fetch(
    agent: &Agent,
    state_dir: &Path,
    settings: &Settings,
    remote: &str,
) -> Result<String, String> {
    let dir = &settings.work_tree;
    let args = ["fetch", "--quiet", remote];
    if let Some(name) = &settings.git_key_secret {
        let known = state_dir.join(KNOWN_HOSTS);
        return bow_agent::secrets::with_secret_files(agent, "git", &[name], |files| {
            // Run by git through `sh -c`: every path single-quoted. A host seen first is
            // remembered; a changed host key fails the fetch (and says so in the event).
            let ssh = format!(
                "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={}",
                shell_quote(&files.join(name).to_string_lossy()),
                shell_quote(&format!("{} ~/.ssh/known_hosts", known.display())),
            );
            git_with(dir, &args, &[("GIT_SSH_COMMAND", ssh.into())])
        })?;
    }
    if let Some(name) = &settings.git_token_secret {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find the bow binary: {e}"))?;
        return bow_agent::secrets::with_secret_files(agent, "git", &[name], |files| {
            // `-c credential.helper=`: no stored credential answers instead, and git keeps
            // none of this one.
            let args = ["-c", "credential.helper=", "fetch", "--quiet", remote];
            git_with(
                dir,
                &args,
                &[
                    ("GIT_ASKPASS", exe.clone().into_os_string()),
                    (ASKPASS_ENV, files.join(name).into_os_string()),
                ],
            )
        })?;
    }
    git(dir, &args)
}

/// `'text'` for `sh`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// This binary run by git as its askpass program ([`ASKPASS_ENV`] set): answers git's
/// "Username for …" or "Password for …" prompt from the token file, prints nothing else.
pub fn askpass_main(
    file: &std::ffi::OsStr,
    prompt: Option<&std::ffi::OsStr>,
) -> std::process::ExitCode {
    let Ok(text) = std::fs::read_to_string(file) else {
        eprintln!("bow: cannot read the git token's file");
        return std::process::ExitCode::FAILURE;
    };
    let token = text.trim();
    let (user, secret) = match token.split_once(':') {
        Some((user, secret)) if !user.is_empty() => (user, secret),
        _ => (TOKEN_USER, token),
    };
    let asks_user = prompt.is_some_and(|p| p.to_string_lossy().starts_with("Username"));
    println!("{}", if asks_user { user } else { secret });
    std::process::ExitCode::SUCCESS
}

/// One poll: fetch, fast-forward, apply.
fn cycle(agent: &Arc<Agent>, state_dir: &Path, settings: &mut Settings) {
    let dir = settings.work_tree.clone();
    let branch = settings.branch.clone();
    let upstream = format!("{branch}@{{upstream}}");
    let remote = git(&dir, &["config", &format!("branch.{branch}.remote")]);
    let fetched = match &remote {
        Ok(remote) => fetch(agent, state_dir, settings, remote),
        Err(e) => Err(e.clone()),
    };
    if let Err(reason) = fetched {
        say_once(agent, settings, format!("fetch failed: {reason}"));
        return;
    }
    let (Ok(head), Ok(target)) = (
        git(&dir, &["rev-parse", "HEAD"]),
        git(&dir, &["rev-parse", &upstream]),
    ) else {
        say_once(agent, settings, format!("{upstream} cannot be read"));
        return;
    };
    let short = |commit: &str| commit.chars().take(12).collect::<String>();
    if head != target {
        if git(&dir, &["symbolic-ref", "--short", "HEAD"]).as_deref() != Ok(branch.as_str()) {
            say_once(
                agent,
                settings,
                format!(
                    "{} arrived, and the work tree is not on {branch}: not applied",
                    short(&target)
                ),
            );
            return;
        }
        match git(&dir, &["status", "--porcelain", "--untracked-files=no"]) {
            Ok(changes) if changes.is_empty() => {}
            Ok(changes) => {
                let files: Vec<&str> = changes.lines().take(5).collect();
                say_once(
                    agent,
                    settings,
                    format!(
                        "{} arrived, and the work tree has local changes ({}): not applied; commit or discard them",
                        short(&target),
                        files.join(", ")
                    ),
                );
                return;
            }
            Err(reason) => {
                say_once(agent, settings, reason);
                return;
            }
        }
        if git(&dir, &["merge-base", "--is-ancestor", "HEAD", &target]).is_err() {
            say_once(
                agent,
                settings,
                format!(
                    "{branch} and {upstream} have diverged (HEAD {}, upstream {}): never merged; not applied",
                    short(&head),
                    short(&target)
                ),
            );
            return;
        }
        if settings.failed.as_deref() == Some(target.as_str()) {
            return;
        }
        if let Err(reason) = git(&dir, &["merge", "--ff-only", "--quiet", &target]) {
            say_once(agent, settings, reason);
            return;
        }
    }
    if settings.applied.as_deref() == Some(target.as_str())
        || settings.failed.as_deref() == Some(target.as_str())
    {
        return;
    }
    let subject = git(&dir, &["log", "-1", "--format=%s", &target]).unwrap_or_default();
    let commit = format!("{} {subject}", short(&target));
    match apply(agent, state_dir, settings, &commit) {
        Ok(None) => {
            agent.emit(
                "",
                "",
                EventKind::Follow,
                &format!("{commit}: nothing to change"),
            );
            settings.applied = Some(target);
        }
        Ok(Some(revision)) => {
            agent.emit(
                "",
                "",
                EventKind::Follow,
                &format!("{commit}: live as revision {revision}"),
            );
            settings.applied = Some(target);
        }
        Err(reason) => {
            agent.emit(
                "",
                "",
                EventKind::Follow,
                &format!("{commit}: {reason}; not tried again until a newer commit"),
            );
            settings.failed = Some(target);
        }
    }
    settings.said = None;
}

/// Loads, plans and applies the file as checked out; records `commit` (short hash and
/// subject) with the revision; waits for its deploys. `Ok(None)`: nothing to change.
fn apply(
    agent: &Arc<Agent>,
    state_dir: &Path,
    settings: &Settings,
    commit: &str,
) -> Result<Option<i64>, String> {
    let args = StackArgs {
        file: Some(settings.file.clone()),
        env: Some(settings.environment.clone()),
        state_dir: Some(state_dir.to_path_buf()),
    };
    let mut session =
        crate::session::Session::load(&args).map_err(|e| format!("the file is refused: {e:#}"))?;
    crate::secret_store::attach_digests(&mut session).map_err(|e| format!("{e:#}"))?;
    let recorded = crate::commands::plan::recorded_spec(state_dir).map_err(|e| format!("{e:#}"))?;
    if !bow_plan::plan(&session.spec, recorded.as_ref()).has_changes() {
        return Ok(None);
    }
    let (revision, _) = agent.apply(session.spec).map_err(|e| e.to_string())?;
    agent.note_source(revision, commit);
    let deadline = Instant::now() + DEPLOY_PATIENCE;
    loop {
        let report = agent.progress(revision);
        if report.done {
            let failed: Vec<String> = report
                .services
                .iter()
                .filter(|s| s.phase == Phase::Failed)
                .map(|s| {
                    format!(
                        "{} release {} failed ({})",
                        s.service,
                        s.release,
                        s.failure.as_ref().map_or("", |f| f.reason.as_str())
                    )
                })
                .collect();
            return if failed.is_empty() {
                Ok(Some(revision))
            } else {
                Err(format!("revision {revision}: {}", failed.join("; ")))
            };
        }
        if Instant::now() >= deadline {
            return Err(format!("revision {revision} still deploying after 30 min"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
