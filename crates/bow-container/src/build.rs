//! `build:` services: the image is built by the engine from a tar of the context directory
//! (what `.dockerignore` leaves out stays out; the Dockerfile always goes in), tagged by the
//! context's code version, so the same code is built once and new code is a new image (and a
//! new release). The build's output lines are kept for the event that says why it failed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::StreamExt;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::engine::{Engine, is_not_found, message};

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub context: PathBuf,
    /// Relative to the context; `Dockerfile` when `None`.
    pub dockerfile: Option<String>,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
    /// The tag the image gets (and is looked up by).
    pub tag: String,
}

/// How a build went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Built {
    /// The engine has the tag already: the same code was built before.
    Reused,
    /// Built now; the last lines of its output.
    Built { last_lines: Vec<String> },
}

/// The tag a `build:` service's image gets: one per service and code version
/// (`bow-build/<project>-<service>:<12 hex digits>`), the same in every environment.
pub fn image_tag(project: &str, service: &str, code: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(code.unwrap_or("unversioned").as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("bow-build/{project}-{service}:{hex}")
}

/// Lines of build output kept for messages.
const KEPT_LINES: usize = 12;

/// Builds `request.tag` unless the engine has it.
pub async fn build(engine: &Engine, request: &BuildRequest) -> Result<Built, String> {
    let docker = engine.docker().await?;
    match docker.inspect_image(&request.tag).await {
        Ok(_) => return Ok(Built::Reused),
        Err(error) if is_not_found(&error) => {}
        Err(error) => {
            return Err(format!(
                "cannot inspect image {}: {}",
                request.tag,
                message(&error)
            ));
        }
    }
    let dockerfile = request
        .dockerfile
        .clone()
        .unwrap_or_else(|| "Dockerfile".to_string());
    if !request.context.join(&dockerfile).is_file() {
        return Err(format!(
            "no {dockerfile} in the build context {}",
            request.context.display()
        ));
    }
    let context = request.context.clone();
    let dockerfile_in_tar = dockerfile.clone();
    let archive = tokio::task::spawn_blocking(move || context_tar(&context, &dockerfile_in_tar))
        .await
        .map_err(|e| format!("packing the build context failed: {e}"))??;
    let args: HashMap<String, String> = request.args.clone().into_iter().collect();
    let mut options = BuildImageOptionsBuilder::default()
        .dockerfile(&dockerfile)
        .t(&request.tag)
        .rm(true)
        .forcerm(true)
        .buildargs(&args);
    if let Some(target) = &request.target {
        options = options.target(target);
    }
    let mut stream = docker.build_image(
        options.build(),
        None,
        Some(bollard::body_full(bytes::Bytes::from(archive))),
    );
    let mut lines: Vec<String> = Vec::new();
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| build_error(&request.tag, &message(&e), &lines))?;
        if let Some(detail) = info.error_detail {
            let reason = detail
                .message
                .unwrap_or_else(|| "the build failed".to_string());
            return Err(build_error(&request.tag, &reason, &lines));
        }
        if let Some(text) = info.stream {
            for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                lines.push(line.to_string());
                if lines.len() > KEPT_LINES {
                    lines.remove(0);
                }
            }
        }
    }
    // The stream can end without an error and without the tag (the engine went away).
    docker
        .inspect_image(&request.tag)
        .await
        .map_err(|e| build_error(&request.tag, &message(&e), &lines))?;
    Ok(Built::Built { last_lines: lines })
}

/// Gives the image `tag` the name `image` too (`image:` beside `build:`, as in Compose).
pub async fn tag(engine: &Engine, tag: &str, image: &str) -> Result<(), String> {
    let docker = engine.docker().await?;
    let (repo, version) = match image.rsplit_once(':') {
        Some((repo, version)) if !version.contains('/') => (repo, version),
        _ => (image, "latest"),
    };
    let options = bollard::query_parameters::TagImageOptionsBuilder::default()
        .repo(repo)
        .tag(version)
        .build();
    docker
        .tag_image(tag, Some(options))
        .await
        .map_err(|e| format!("cannot tag {tag} as {image}: {}", message(&e)))
}

fn build_error(tag: &str, reason: &str, lines: &[String]) -> String {
    let mut text = format!("building {tag} failed: {}", reason.trim());
    if !lines.is_empty() {
        text.push_str("; last lines:");
        for line in lines.iter().rev().take(5).rev() {
            text.push_str("\n  ");
            text.push_str(line);
        }
    }
    text
}

/// A tar of `context` without what its `.dockerignore` matches (the Dockerfile always in).
pub fn context_tar(context: &Path, dockerfile: &str) -> Result<Vec<u8>, String> {
    let ignore = dockerignore(context);
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let mut files = Vec::new();
    walk(context, context, &ignore, &mut files)?;
    let dockerfile = Path::new(dockerfile);
    if !files.iter().any(|f| f == dockerfile) {
        files.push(dockerfile.to_path_buf());
    }
    for relative in files {
        builder
            .append_path_with_name(context.join(&relative), &relative)
            .map_err(|e| format!("cannot pack {}: {e}", context.join(&relative).display()))?;
    }
    builder
        .into_inner()
        .map_err(|e| format!("cannot pack the build context: {e}"))
}

fn dockerignore(context: &Path) -> Option<Gitignore> {
    let file = context.join(".dockerignore");
    file.is_file().then(|| {
        let mut builder = GitignoreBuilder::new(context);
        let _ = builder.add(&file);
        builder.build().unwrap_or_else(|_| Gitignore::empty())
    })
}

/// Every file, symlink and directory under `dir`, relative to `root`, in a stable order.
fn walk(
    root: &Path,
    dir: &Path,
    ignore: &Option<Gitignore>,
    out: &mut Vec<PathBuf>,
) -> Result<(), String> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let ignored = ignore.as_ref().is_some_and(|i| {
            i.matched_path_or_any_parents(&relative, kind.is_dir())
                .is_ignore()
        });
        if ignored {
            continue;
        }
        if kind.is_dir() {
            out.push(relative);
            walk(root, &path, ignore, out)?;
        } else {
            out.push(relative);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_tar_leaves_out_what_dockerignore_matches_but_never_the_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(
            root.join(".dockerignore"),
            "secret.txt\nbuild/\nDockerfile\n",
        )
        .unwrap();
        std::fs::write(root.join("app.txt"), "app").unwrap();
        std::fs::write(root.join("secret.txt"), "no").unwrap();
        std::fs::create_dir(root.join("build")).unwrap();
        std::fs::write(root.join("build/out"), "no").unwrap();
        let archive = context_tar(root, "Dockerfile").unwrap();
        let mut names: Vec<String> = tar::Archive::new(&archive[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(names, [".dockerignore", "Dockerfile", "app.txt"]);
    }
}
