//! The version of the code a service runs from its `dir`, so that new code is a new release.
//!
//! In a git work tree: `git:<commit>`, plus `+<digest>` of the uncommitted changes (tracked
//! and untracked files, honouring `.gitignore`). Elsewhere: `files:<digest>` of the content of
//! the dir, where each file's content hash is cached by (size, mtime) in the state dir so that
//! `plan` stays fast on large trees. The stack file, the `secrets/` dir, hidden entries and
//! well-known build and cache dirs are left out: editing bow.yaml is not new code. So are
//! paths a `.bowignore` in the dir matches (gitignore syntax, in git work trees too) and,
//! when bow runs as root, files owned by the service's own user (what the service wrote:
//! a SQLite file, uploads, a pid file is data, not code).
//!
//! The digest cache lists paths and content hashes of files only root may read (`dir` may
//! hold them): it is written 0600, and an older, wider one is narrowed when read.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use bow_spec::{Spec, Workload};

/// Directory and file names never part of a service's code (besides hidden entries).
const IGNORED: &[&str] = &["__pycache__", "node_modules", "target", "venv", "secrets"];
/// A content digest gives up (and says so in the version) past this many files.
const MAX_FILES: usize = 200_000;
const CACHE_FILE: &str = "code-digests.json";
/// Paths in a service's dir that are not code, in gitignore syntax.
pub const IGNORE_FILE: &str = ".bowignore";
/// Paths of a build context the image is built without.
pub const DOCKER_IGNORE_FILE: &str = ".dockerignore";

/// Set to a build id (e.g. by CI), it is the code version of every process service instead
/// of what bow reads from the dirs. (A `build:` context is always read: its image is built
/// from what is there.)
pub const OVERRIDE_VARIABLE: &str = "BOW_CODE_VERSION";

/// Fills `code` of every process service from its `dir`. `stack_file` is left out of the
/// digest; the cache lives in `state_dir` when it can be written.
pub fn stamp(spec: &mut Spec, stack_file: &Path, state_dir: &Path) {
    let given = std::env::var(OVERRIDE_VARIABLE)
        .ok()
        .filter(|v| !v.is_empty());
    let mut cache = Cache::load(state_dir);
    let mut versions: HashMap<(String, Option<u32>), Option<String>> = HashMap::new();
    for (name, service) in spec.services.iter_mut() {
        // A process's code is its dir; a built image's, its build context.
        let (dir, owner, ignore_file) = match &service.workload {
            Workload::Command(_) => {
                if let Some(given) = &given {
                    service.code = Some(given.clone());
                    continue;
                }
                let Some(dir) = service.dir.clone() else {
                    continue;
                };
                (
                    dir,
                    service_owner(name, service.user.as_deref()),
                    IGNORE_FILE,
                )
            }
            Workload::Container(container) => {
                let Some(build) = &container.build else {
                    continue;
                };
                (build.context.clone(), None, DOCKER_IGNORE_FILE)
            }
            Workload::Postgres(_) | Workload::Proxy(_) => continue,
        };
        let version = versions
            .entry((dir.clone(), owner))
            .or_insert_with(|| {
                let skip = Skip::new(stack_file, state_dir, Path::new(&dir), owner, ignore_file);
                version_of(Path::new(&dir), &skip, &mut cache)
            })
            .clone();
        service.code = version;
    }
    cache.save(state_dir);
}

/// The uid whose files in the dir are the service's data: its own user's, when bow runs as
/// root (and so runs it as that user) and that user is neither root nor us. `None` when the
/// service runs as the user who owns the code too (then only `.bowignore` can tell).
fn service_owner(service: &str, user: Option<&str>) -> Option<u32> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return None;
    }
    let name = user.map_or_else(|| bow_driver::default_service_user(service), str::to_string);
    let uid = bow_driver::users::lookup_user(&name).ok()??.uid;
    (uid != 0 && uid != euid).then_some(uid)
}

/// What is never code even when it sits in a service's dir.
struct Skip<'a> {
    stack_file: &'a Path,
    /// A state dir kept inside the project (its logs change all the time).
    state_dir: &'a Path,
    /// The dir's `.bowignore`, when it has one.
    ignore: Option<Gitignore>,
    /// Files owned by this uid are the service's own (see [`service_owner`]).
    owner: Option<u32>,
}

impl<'a> Skip<'a> {
    fn new(
        stack_file: &'a Path,
        state_dir: &'a Path,
        dir: &Path,
        owner: Option<u32>,
        ignore_name: &str,
    ) -> Self {
        let ignore_file = dir.join(ignore_name);
        let ignore = ignore_file.is_file().then(|| {
            let mut builder = GitignoreBuilder::new(dir);
            // A line that does not parse is left out; the others still apply.
            let _ = builder.add(&ignore_file);
            builder.build().unwrap_or_else(|_| Gitignore::empty())
        });
        Skip {
            stack_file,
            state_dir,
            ignore,
            owner,
        }
    }

    fn skips(&self, path: &Path) -> bool {
        path == self.stack_file || path.starts_with(self.state_dir)
    }

    /// Whether `relative` (to the service's dir) is left out by `.bowignore`, itself or
    /// through a parent directory.
    fn ignored(&self, relative: &Path, is_dir: bool) -> bool {
        self.ignore.as_ref().is_some_and(|ignore| {
            ignore
                .matched_path_or_any_parents(relative, is_dir)
                .is_ignore()
        })
    }

    /// Whether the service's own user owns `meta`'s file.
    fn owned_by_service(&self, meta: &std::fs::Metadata) -> bool {
        self.owner.is_some_and(|uid| meta.uid() == uid)
    }
}

/// The version of `dir`; `None` when it cannot be read (start will say why).
fn version_of(dir: &Path, skip: &Skip, cache: &mut Cache) -> Option<String> {
    if !dir.is_dir() {
        return None;
    }
    git_version(dir, skip).or_else(|| Some(files_version(dir, skip, cache)))
}

fn git(dir: &Path, args: &[&str]) -> Option<Vec<u8>> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output.status.success().then_some(output.stdout)
}

fn git_version(dir: &Path, skip: &Skip) -> Option<String> {
    let head = git(dir, &["rev-parse", "--verify", "-q", "HEAD"])?;
    let head = String::from_utf8_lossy(&head).trim().to_string();
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    let top = PathBuf::from(String::from_utf8_lossy(&top).trim());
    let real_dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let status = git(
        dir,
        &[
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=all",
            "--",
            ".",
        ],
    )?;
    let mut digest = Sha256::new();
    let mut dirty = false;
    // Entries: "XY path\0" (renames add "\0old-path").
    let mut entries = status.split(|b| *b == 0).filter(|e| !e.is_empty());
    while let Some(entry) = entries.next() {
        if entry.len() < 4 {
            continue;
        }
        let code = &entry[..2];
        let relative = String::from_utf8_lossy(&entry[3..]).into_owned();
        if code.contains(&b'R') || code.contains(&b'C') {
            entries.next();
        }
        let path = top.join(&relative);
        if skip.skips(&path) || ignored_path(&path, dir) {
            continue;
        }
        // git names paths from the real top; `dir` may be reached through a link.
        if let Ok(in_dir) = path.strip_prefix(&real_dir)
            && skip.ignored(in_dir, false)
        {
            continue;
        }
        if std::fs::symlink_metadata(&path).is_ok_and(|meta| skip.owned_by_service(&meta)) {
            continue;
        }
        dirty = true;
        digest.update(relative.as_bytes());
        digest.update([0]);
        match std::fs::read(&path) {
            Ok(content) => digest.update(Sha256::digest(&content)),
            Err(_) => digest.update(b"(deleted)"),
        }
    }
    let short = &head[..head.len().min(12)];
    Some(if dirty {
        format!("git:{short}+{}", &hex(&digest.finalize())[..8])
    } else {
        format!("git:{short}")
    })
}

/// True when a path under `dir` is in a hidden or ignored directory (or is one).
fn ignored_path(path: &Path, dir: &Path) -> bool {
    let Ok(relative) = path.strip_prefix(dir) else {
        return false;
    };
    relative.components().any(|c| {
        let name = c.as_os_str().to_string_lossy();
        name.starts_with('.') || IGNORED.contains(&name.as_ref())
    })
}

fn files_version(dir: &Path, skip: &Skip, cache: &mut Cache) -> String {
    let mut files = Vec::new();
    let mut complete = true;
    walk(dir, dir, skip, &mut files, &mut complete);
    files.sort();
    let mut digest = Sha256::new();
    for relative in &files {
        let path = dir.join(relative);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let content = if meta.file_type().is_symlink() {
            std::fs::read_link(&path)
                .map(|target| hex(&Sha256::digest(target.as_os_str().as_encoded_bytes())))
                .unwrap_or_default()
        } else {
            cache.content_digest(&path, &meta)
        };
        digest.update(relative.as_os_str().as_encoded_bytes());
        digest.update([0]);
        digest.update(content.as_bytes());
        digest.update([0]);
    }
    let version = format!("files:{}", &hex(&digest.finalize())[..12]);
    if complete {
        version
    } else {
        format!("{version} (first {MAX_FILES} files)")
    }
}

fn walk(root: &Path, dir: &Path, skip: &Skip, out: &mut Vec<PathBuf>, complete: &mut bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let text = name.to_string_lossy();
        if text.starts_with('.') || IGNORED.contains(&text.as_ref()) {
            continue;
        }
        let path = entry.path();
        if skip.skips(&path) || text.ends_with(".pyc") {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let kind = meta.file_type();
        if skip.owned_by_service(&meta)
            || path
                .strip_prefix(root)
                .is_ok_and(|relative| skip.ignored(relative, kind.is_dir()))
        {
            continue;
        }
        if kind.is_dir() {
            walk(root, &path, skip, out, complete);
        } else if out.len() >= MAX_FILES {
            *complete = false;
            return;
        } else if let Ok(relative) = path.strip_prefix(root) {
            out.push(relative.to_path_buf());
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Content digests by path, valid while size and mtime are unchanged.
#[derive(Default, Serialize, Deserialize)]
struct Cache {
    entries: BTreeMap<PathBuf, CacheEntry>,
    #[serde(skip)]
    used: BTreeMap<PathBuf, CacheEntry>,
    #[serde(skip)]
    changed: bool,
}

#[derive(Clone, Serialize, Deserialize)]
struct CacheEntry {
    size: u64,
    mtime_ns: i128,
    sha256: String,
}

impl Cache {
    fn load(state_dir: &Path) -> Cache {
        let path = state_dir.join(CACHE_FILE);
        // One written by an older bow is world-readable: narrow it first.
        if std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn content_digest(&mut self, path: &Path, meta: &std::fs::Metadata) -> String {
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        if let Some(entry) = self.entries.get(path)
            && entry.size == meta.len()
            && entry.mtime_ns == mtime_ns
        {
            let entry = entry.clone();
            let digest = entry.sha256.clone();
            self.used.insert(path.to_path_buf(), entry);
            return digest;
        }
        let sha256 = std::fs::read(path)
            .map(|content| hex(&Sha256::digest(&content)))
            .unwrap_or_else(|_| "(unreadable)".to_string());
        self.changed = true;
        self.used.insert(
            path.to_path_buf(),
            CacheEntry {
                size: meta.len(),
                mtime_ns,
                sha256: sha256.clone(),
            },
        );
        sha256
    }

    /// Keeps the entries this run used; silently skipped when the state dir is not writable
    /// (e.g. `plan` as a user against root's state).
    fn save(self, state_dir: &Path) {
        if !self.changed && self.used.len() == self.entries.len() {
            return;
        }
        if !state_dir.is_dir() {
            return;
        }
        let cache = Cache {
            entries: self.used,
            ..Cache::default()
        };
        if let Ok(json) = serde_json::to_vec(&cache) {
            let temporary = state_dir.join(format!("{CACHE_FILE}.tmp"));
            let _ = std::fs::remove_file(&temporary);
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temporary)
                .and_then(|mut file| std::io::Write::write_all(&mut file, &json));
            if written.is_ok() {
                let _ = std::fs::rename(&temporary, state_dir.join(CACHE_FILE));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(dir: &Path) -> String {
        version_owned(dir, None)
    }

    /// The version of `dir` for a service whose own user is `owner`.
    fn version_owned(dir: &Path, owner: Option<u32>) -> String {
        let mut cache = Cache::default();
        let stack_file = dir.join("bow.yaml");
        let state_dir = dir.join("state");
        let skip = Skip::new(&stack_file, &state_dir, dir, owner, IGNORE_FILE);
        version_of(dir, &skip, &mut cache).unwrap()
    }

    fn git(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .status()
            .expect("git is installed (scripts/test.sh installs it)")
            .success();
        assert!(ok, "git {args:?}");
    }

    /// What a service writes into its dir: a database, uploads, a pid file.
    fn write_data(dir: &Path) {
        std::fs::write(dir.join("app.sqlite3"), "rows").unwrap();
        std::fs::create_dir_all(dir.join("uploads/2026")).unwrap();
        std::fs::write(dir.join("uploads/2026/cat.png"), "png").unwrap();
        std::fs::write(dir.join("app.pid"), "42").unwrap();
    }

    #[test]
    fn bowignore_leaves_data_out_of_a_content_digest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.py"), "print(1)").unwrap();
        std::fs::write(
            dir.path().join(IGNORE_FILE),
            "# data\n*.sqlite3\nuploads/\n*.pid\n!keep.pid\n",
        )
        .unwrap();
        let first = version(dir.path());
        write_data(dir.path());
        assert_eq!(version(dir.path()), first, "data is not code");
        std::fs::write(dir.path().join("keep.pid"), "negated: code").unwrap();
        let with_keep = version(dir.path());
        assert_ne!(with_keep, first, "`!keep.pid` is code again");
        std::fs::write(dir.path().join("app.py"), "print(2)").unwrap();
        assert_ne!(version(dir.path()), with_keep);
    }

    #[test]
    fn bowignore_is_honoured_in_a_git_work_tree() {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q"]);
        std::fs::write(dir.path().join("app.py"), "print(1)").unwrap();
        std::fs::write(dir.path().join(IGNORE_FILE), "*.sqlite3\nuploads/\n*.pid\n").unwrap();
        git(dir.path(), &["add", "."]);
        git(dir.path(), &["commit", "-q", "-m", "one"]);
        let clean = version(dir.path());
        assert!(clean.starts_with("git:") && !clean.contains('+'), "{clean}");
        write_data(dir.path());
        assert_eq!(version(dir.path()), clean, "untracked data is not code");
        std::fs::write(dir.path().join("app.py"), "print(2)").unwrap();
        assert!(version(dir.path()).starts_with(&format!("{clean}+")));
    }

    #[test]
    fn files_the_service_user_owns_are_its_data() {
        // Runs as root (scripts/test.sh): chown gives the files to the service's user.
        let service_uid = 65534;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.py"), "print(1)").unwrap();
        let first = version_owned(dir.path(), Some(service_uid));
        write_data(dir.path());
        for path in ["app.sqlite3", "uploads", "app.pid"] {
            std::os::unix::fs::chown(dir.path().join(path), Some(service_uid), None)
                .expect("chown (the tests run as root)");
        }
        assert_eq!(version_owned(dir.path(), Some(service_uid)), first);
        // Without the owner rule (the service runs as the code's owner) they are code.
        assert_ne!(version_owned(dir.path(), None), first);
        // Everything below a directory the service owns is its data.
        std::fs::write(dir.path().join("uploads/2026/readme.txt"), "x").unwrap();
        assert_eq!(version_owned(dir.path(), Some(service_uid)), first);
    }

    #[test]
    fn the_digest_cache_is_private_and_an_old_one_is_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "one").unwrap();
        let mut spec = bow_spec::load(
            "project: p\nservices:\n  a: {command: run}\n",
            &Default::default(),
        )
        .unwrap();
        bow_spec::anchor_paths(&mut spec, dir.path());
        let cache = state.path().join(CACHE_FILE);
        let mode = || std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
        stamp(&mut spec, &dir.path().join("bow.yaml"), state.path());
        assert_eq!(mode(), 0o600);
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Nothing changed, so nothing is written: the old file is narrowed all the same.
        stamp(&mut spec, &dir.path().join("bow.yaml"), state.path());
        assert_eq!(mode(), 0o600);
    }

    #[test]
    fn content_digest_follows_code_not_the_stack_file_or_caches() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bow.yaml"), "project: a").unwrap();
        std::fs::write(dir.path().join("app.py"), "print(1)").unwrap();
        let first = version(dir.path());
        assert!(first.starts_with("files:"), "{first}");
        std::fs::write(dir.path().join("bow.yaml"), "project: b").unwrap();
        std::fs::create_dir_all(dir.path().join("__pycache__")).unwrap();
        std::fs::write(dir.path().join("__pycache__/app.pyc"), "x").unwrap();
        std::fs::write(dir.path().join(".env"), "x").unwrap();
        std::fs::create_dir_all(dir.path().join("state/logs")).unwrap();
        std::fs::write(dir.path().join("state/logs/a.log"), "x").unwrap();
        assert_eq!(version(dir.path()), first);
        std::fs::write(dir.path().join("app.py"), "print(2)").unwrap();
        assert_ne!(version(dir.path()), first);
    }

    #[test]
    fn cached_digests_are_reused_until_size_or_mtime_change() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "one").unwrap();
        let mut spec = bow_spec::load(
            "project: p\nservices:\n  a: {command: run}\n",
            &Default::default(),
        )
        .unwrap();
        bow_spec::anchor_paths(&mut spec, dir.path());
        stamp(&mut spec, &dir.path().join("bow.yaml"), state.path());
        let first = spec.services["a"].code.clone().unwrap();
        let cache = Cache::load(state.path());
        assert_eq!(cache.entries.len(), 1);
        std::fs::write(dir.path().join("a.txt"), "two").unwrap();
        stamp(&mut spec, &dir.path().join("bow.yaml"), state.path());
        assert_ne!(spec.services["a"].code.clone().unwrap(), first);
    }

    #[test]
    fn git_work_trees_give_the_commit_and_uncommitted_changes() {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            git(dir.path(), args);
            true
        };
        run(&["init", "-q"]);
        std::fs::write(dir.path().join("app.py"), "print(1)").unwrap();
        std::fs::write(dir.path().join("bow.yaml"), "project: a").unwrap();
        assert!(run(&["add", "."]));
        assert!(run(&["commit", "-q", "-m", "one"]));
        let clean = version(dir.path());
        assert!(clean.starts_with("git:") && !clean.contains('+'), "{clean}");
        std::fs::write(dir.path().join("bow.yaml"), "project: b").unwrap();
        assert_eq!(
            version(dir.path()),
            clean,
            "editing bow.yaml is not new code"
        );
        std::fs::write(dir.path().join("app.py"), "print(2)").unwrap();
        let dirty = version(dir.path());
        assert!(dirty.starts_with(&format!("{clean}+")), "{dirty}");
        std::fs::write(dir.path().join("app.py"), "print(3)").unwrap();
        assert_ne!(version(dir.path()), dirty);
    }
}

#[cfg(test)]
mod build_context_tests {
    use super::*;

    #[test]
    fn a_build_context_is_versioned_without_what_dockerignore_matches() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("app/notes")).unwrap();
        std::fs::write(root.join("app/Dockerfile"), "FROM a\n").unwrap();
        std::fs::write(root.join("app/.dockerignore"), "notes/\n").unwrap();
        std::fs::write(root.join("app/notes/x"), "1").unwrap();
        let file = root.join("bow.yaml");
        std::fs::write(
            &file,
            "project: p\nservices:\n  web:\n    build: { context: ./app }\n",
        )
        .unwrap();
        let load = || {
            let mut spec = bow_spec::load(
                &std::fs::read_to_string(&file).unwrap(),
                &Default::default(),
            )
            .unwrap();
            bow_spec::anchor_paths(&mut spec, root);
            stamp(&mut spec, &file, &root.join("state"));
            spec.services["web"].code.clone()
        };
        let first = load();
        assert!(
            first.as_deref().is_some_and(|c| c.starts_with("files:")),
            "{first:?}"
        );
        std::fs::write(root.join("app/notes/x"), "2").unwrap();
        assert_eq!(load(), first);
        std::fs::write(root.join("app/Dockerfile"), "FROM b\n").unwrap();
        assert_ne!(load(), first);
    }
}
