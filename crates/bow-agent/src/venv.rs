//! Python virtualenvs for `python: {requirements}`: built once per digest of the
//! requirements file and interpreter version, cached under `<state-dir>/venvs/<digest>`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Builds (or reuses) the venv for `requirements` and returns its directory. `search_path`
/// is the PATH the service runs with: the interpreter is looked up there, not in the agent's
/// own PATH, so that the service's user can run what the venv links to.
pub async fn ensure(
    state_dir: &Path,
    service_dir: &Path,
    requirements: &str,
    version: Option<&str>,
    search_path: &str,
) -> Result<PathBuf, String> {
    let requirements_path = service_dir.join(requirements);
    let content = tokio::fs::read(&requirements_path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", requirements_path.display()))?;
    let python = match version {
        Some(version) => format!("python{version}"),
        None => "python3".to_string(),
    };
    let python = which(&python, search_path).ok_or_else(|| {
        format!("{python} is not on PATH {search_path}; install it (Debian: python3 python3-venv)")
    })?;
    let python_version = tokio::process::Command::new(&python)
        .arg("--version")
        .output()
        .await
        .map_err(|e| {
            format!(
                "cannot run {}: {e}; install it or change python.version",
                python.display()
            )
        })?;
    let mut hasher = Sha256::new();
    hasher.update(&content);
    hasher.update(&python_version.stdout);
    hasher.update(&python_version.stderr);
    let digest: String = hasher
        .finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    let venvs = state_dir.join("venvs");
    let target = venvs.join(&digest);
    // One build at a time: two services with the same requirements share one venv.
    static BUILDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _guard = BUILDING.lock().await;
    if target.join(COMPLETE_MARKER).exists() {
        return Ok(target);
    }
    tokio::fs::create_dir_all(&venvs)
        .await
        .map_err(|e| format!("cannot create {}: {e}", venvs.display()))?;
    // A venv records its own path, so it is built in place; a half-built one is removed first.
    let _ = tokio::fs::remove_dir_all(&target).await;
    run(
        tokio::process::Command::new(&python)
            .arg("-m")
            .arg("venv")
            .arg(&target),
        "python -m venv",
    )
    .await?;
    run(
        tokio::process::Command::new(target.join("bin/pip"))
            .args([
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-q",
                "-r",
            ])
            .arg(&requirements_path),
        "pip install",
    )
    .await?;
    tokio::fs::write(target.join(COMPLETE_MARKER), b"")
        .await
        .map_err(|e| e.to_string())?;
    // Services run as their own users: let them read and execute the venv.
    run(
        tokio::process::Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&target),
        "chmod",
    )
    .await?;
    Ok(target)
}

/// Written last: a venv without it is incomplete and rebuilt.
const COMPLETE_MARKER: &str = ".bow-complete";

async fn run(command: &mut tokio::process::Command, what: &str) -> Result<(), String> {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    Err(format!(
        "{what} failed ({}): {}",
        output.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    ))
}

/// The first executable `name` in `search_path`.
fn which(name: &str, search_path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    search_path
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|path| {
            path.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
