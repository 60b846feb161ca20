//! The sandbox's mount namespace. Built in the child, before the user switch:
//!
//! 1. a namespace of its own whose mounts do not propagate (`unshare`, `MS_PRIVATE`);
//! 2. a detached copy (`open_tree`) of every path that must stay visible or writable, taken
//!    while the host's tree is still in view, read-only unless writable;
//! 3. the whole tree read-only in one call (`mount_setattr` with `AT_RECURSIVE`), `/proc`
//!    writable again (but `/proc/sys` read-only, from step 2);
//! 4. layers, shallowest first: a fresh tmpfs on `/tmp`, empty read-only tmpfs over `/home`,
//!    `/root`, bow's runtime and state dirs and other services' dirs, a minimal `/dev`, and
//!    each copy of step 2 moved back to its own place (`move_mount`), its mount point made
//!    in the tmpfs above it when needed;
//! 5. the hiding tmpfs made read-only; the hosts file over `/etc/hosts`.
//!
//! A copy is only moved back where a layer hides its place (or where it must be writable):
//! a path on the read-only host tree is visible already, so most services need few mounts.
//! Every path and string is made before the fork; the child only makes system calls.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use super::{Context, SandboxSpec, c_path, errno};

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Device nodes a service gets in its `/dev` (made with mknod: a node is no mount, so the
/// namespace has fewer to copy and to tear down), with their major and minor numbers.
const DEVICES: [(&std::ffi::CStr, u32, u32); 6] = [
    (c"/dev/null", 1, 3),
    (c"/dev/zero", 1, 5),
    (c"/dev/full", 1, 7),
    (c"/dev/random", 1, 8),
    (c"/dev/urandom", 1, 9),
    (c"/dev/tty", 5, 0),
];
/// Hidden behind an empty tmpfs in every sandbox.
const HIDDEN_ALWAYS: [&str; 2] = ["/home", "/root"];

/// What is kept: a detached copy of the host's `source` that goes back to `target`.
#[derive(Debug)]
struct Kept {
    source: CString,
    target: CString,
    writable: bool,
    /// A missing source is an error (writable) or skipped (visible).
    required: bool,
    is_file: bool,
    tree: AtomicI32,
}

#[derive(Debug)]
enum Layer {
    /// A tmpfs; `read_only` ones are made read-only once everything below is in place.
    Tmpfs {
        target: CString,
        options: CString,
        flags: libc::c_ulong,
        read_only: bool,
        /// Skip when the target does not exist (a hidden path that is not there).
        only_if_exists: bool,
    },
    /// Kept copy number `n` back in place.
    Attach(usize),
    /// The minimal `/dev` inside the `/dev` tmpfs: devpts, shm, links.
    DevExtras,
}

/// Every step of the namespace, with what a failure is about.
#[derive(Debug)]
pub struct MountPlan {
    kept: Vec<Kept>,
    /// (depth-ordered layer, its mount points to create first: (path, is_file) shallowest first)
    layers: Vec<(Layer, Vec<(CString, bool)>)>,
    read_only_after: Vec<CString>,
    hosts: Option<usize>,
    /// For messages: what entry `n` of the steps was.
    pub described: Vec<String>,
}

impl MountPlan {
    pub fn new(spec: &SandboxSpec, context: &Context<'_>) -> Result<MountPlan, String> {
        let canonical = |path: &Path| std::fs::canonicalize(path).ok();
        let mut kept: Vec<(PathBuf, bool, bool)> = Vec::new(); // (path, writable, required)
        for path in &spec.writable {
            let Some(real) = canonical(path) else {
                return Err(format!(
                    "sandbox: the writable path {} does not exist; create it or take it out of sandbox.writable",
                    path.display()
                ));
            };
            kept.push((real, true, true));
        }
        let program_dir = context.program.parent().map(Path::to_path_buf);
        let secrets = context.secrets_dir.map(Path::to_path_buf);
        for path in spec.visible.iter().chain(&program_dir).chain(&secrets) {
            if let Some(real) = canonical(path) {
                kept.push((real, false, false));
            }
        }
        // A named path that is a layer of the sandbox itself, or above one (`/tmp`, `/home`,
        // `/`), is not kept: only what lies below them is.
        let layers: Vec<PathBuf> = ["/tmp", "/dev", "/proc", "/home", "/root"]
            .iter()
            .map(PathBuf::from)
            .chain([PathBuf::from(crate::secret_files::ROOT_SECRETS_BASE)])
            .chain(spec.hidden.iter().filter_map(|p| canonical(p)))
            .collect();
        kept.retain(|(path, writable, _)| {
            *writable || !layers.iter().any(|layer| layer.starts_with(path))
        });
        kept.push((PathBuf::from("/proc/sys"), false, false));
        // Writable wins over the same path read-only.
        kept.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        kept.dedup_by(|later, earlier| later.0 == earlier.0);

        let mut hidden: Vec<PathBuf> = HIDDEN_ALWAYS.iter().map(PathBuf::from).collect();
        hidden.push(PathBuf::from(crate::secret_files::ROOT_SECRETS_BASE));
        hidden.extend(spec.hidden.iter().filter_map(|p| canonical(p)));
        hidden.retain(|h| !kept.iter().any(|(k, _, _)| k == h));
        hidden.sort();
        hidden.dedup();

        // Which layer covers a path: the deepest tmpfs, hidden dir or writable copy above it.
        #[derive(Clone, Copy, PartialEq)]
        enum Cover {
            Host,
            Tmpfs,
            Writable,
            Visible,
        }
        let mut planned: Vec<(PathBuf, Cover)> = vec![
            (PathBuf::from("/tmp"), Cover::Tmpfs),
            (PathBuf::from("/dev"), Cover::Tmpfs),
        ];
        planned.extend(hidden.iter().map(|h| (h.clone(), Cover::Tmpfs)));
        let covering = |planned: &[(PathBuf, Cover)], path: &Path| {
            planned
                .iter()
                .filter(|(p, _)| path.starts_with(p) && path != p.as_path())
                .max_by_key(|(p, _)| p.components().count())
                .map_or(Cover::Host, |(_, cover)| *cover)
        };
        let mut kept_sorted = kept.clone();
        kept_sorted.sort_by_key(|(p, _, _)| p.components().count());
        let mut attach: Vec<(PathBuf, bool, bool)> = Vec::new();
        for (path, writable, required) in kept_sorted {
            let above = covering(&planned, &path);
            let needed = if writable {
                above != Cover::Writable
            } else {
                above == Cover::Tmpfs
            };
            if needed && path != Path::new("/") {
                planned.push((
                    path.clone(),
                    if writable {
                        Cover::Writable
                    } else {
                        Cover::Visible
                    },
                ));
                attach.push((path, writable, required));
            }
        }
        // /proc/sys is attached read-only whatever covers it.
        if !attach.iter().any(|(p, _, _)| p == Path::new("/proc/sys")) {
            attach.push((PathBuf::from("/proc/sys"), false, false));
        }

        let mut plan = MountPlan {
            kept: Vec::new(),
            layers: Vec::new(),
            read_only_after: Vec::new(),
            hosts: None,
            described: Vec::new(),
        };
        let mut entries: Vec<(PathBuf, Layer)> = Vec::new();
        let tmpfs = |target: &Path, options: &str, read_only: bool, only_if_exists: bool| {
            let flags = match target.to_str() {
                // Like systemd's PrivateTmp: programs may run from it.
                Some("/tmp") => libc::MS_NOSUID | libc::MS_NODEV,
                Some("/dev") => libc::MS_NOSUID | libc::MS_NOEXEC,
                _ => libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            };
            Layer::Tmpfs {
                target: c_path(target),
                options: CString::new(options).expect("no NUL"),
                flags,
                read_only,
                only_if_exists,
            }
        };
        entries.push((
            PathBuf::from("/tmp"),
            tmpfs(Path::new("/tmp"), "mode=1777", false, false),
        ));
        entries.push((
            PathBuf::from("/dev"),
            tmpfs(Path::new("/dev"), "mode=0755,size=64k", true, false),
        ));
        entries.push((PathBuf::from("/dev/pts"), Layer::DevExtras));
        for hidden in &hidden {
            entries.push((
                hidden.clone(),
                tmpfs(hidden, "mode=0755,size=16k", true, true),
            ));
        }
        for (path, writable, required) in attach {
            let is_file = std::fs::metadata(&path).is_ok_and(|m| !m.is_dir());
            plan.kept.push(Kept {
                source: c_path(&path),
                target: c_path(&path),
                writable,
                required,
                is_file,
                tree: AtomicI32::new(-1),
            });
            entries.push((path, Layer::Attach(plan.kept.len() - 1)));
        }
        if let Some(hosts) = context.hosts_file {
            plan.kept.push(Kept {
                source: c_path(hosts),
                target: CString::new("/etc/hosts").expect("no NUL"),
                writable: false,
                required: true,
                is_file: true,
                tree: AtomicI32::new(-1),
            });
            plan.hosts = Some(plan.kept.len() - 1);
        }
        // Shallowest first; at the same depth a tmpfs before what goes inside it.
        entries.sort_by_key(|(path, layer)| {
            (
                path.components().count(),
                !matches!(layer, Layer::Tmpfs { .. }),
            )
        });
        for (path, layer) in entries {
            plan.described.push(match &layer {
                Layer::Tmpfs {
                    read_only: false, ..
                } => format!("a private tmpfs on {}", path.display()),
                Layer::Tmpfs { .. } => format!("an empty tmpfs over {}", path.display()),
                Layer::Attach(n) if plan.kept[*n].writable => {
                    format!("{} (writable)", path.display())
                }
                Layer::Attach(_) => format!("{} (read-only)", path.display()),
                Layer::DevExtras => "the devices, /dev/pts, /dev/shm and links of /dev".to_string(),
            });
            if let Layer::Tmpfs {
                target,
                read_only: true,
                ..
            } = &layer
            {
                plan.read_only_after.push(target.clone());
            }
            // Every dir from the top down: one that exists answers EEXIST (even on a
            // read-only mount); one a tmpfs layer hides is made in it.
            let mut points = Vec::new();
            let mut current = PathBuf::from("/");
            let parts: Vec<_> = path.components().skip(1).collect();
            for (position, part) in parts.iter().enumerate() {
                current.push(part);
                let last = position + 1 == parts.len();
                if last && matches!(layer, Layer::Tmpfs { .. } | Layer::DevExtras) {
                    break;
                }
                let is_file = last && matches!(layer, Layer::Attach(n) if plan.kept[n].is_file);
                points.push((c_path(&current), is_file));
            }
            plan.layers.push((layer, points));
        }
        plan.described
            .push("its mount namespace (a read-only view of the host)".into());
        plan.described.push(match context.hosts_file {
            Some(hosts) => format!("{} over /etc/hosts", hosts.display()),
            None => "/etc/hosts".into(),
        });
        Ok(plan)
    }

    /// In the child: builds the namespace; on failure, which entry of
    /// [`MountPlan::described`] failed and the errno. Async-signal-safe.
    pub fn apply(&self) -> Result<(), (usize, i32)> {
        let failed = |entry: usize, errno: i32| (entry, errno);
        let root_entry = self.described.len() - 2;
        // SAFETY: unshare and mount with NUL-terminated strings.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(failed(root_entry, errno()));
            }
            let private = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                private,
                std::ptr::null(),
            ) != 0
            {
                return Err(failed(root_entry, errno()));
            }
        }
        for (position, kept) in self.kept.iter().enumerate() {
            let flags = OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint;
            // SAFETY: open_tree on a NUL-terminated path.
            let tree = unsafe {
                libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    kept.source.as_ptr(),
                    flags,
                )
            } as libc::c_int;
            if tree < 0 {
                let code = errno();
                if kept.required || code != libc::ENOENT {
                    return Err(failed(self.entry_of(position).unwrap_or(root_entry), code));
                }
                continue;
            }
            kept.tree.store(tree, Ordering::Relaxed);
            if !kept.writable {
                set_read_only(
                    tree,
                    c"",
                    libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
                )
                .map_err(|code| failed(self.entry_of(position).unwrap_or(root_entry), code))?;
            }
        }
        set_read_only(libc::AT_FDCWD, c"/", AT_RECURSIVE)
            .map_err(|code| failed(root_entry, code))?;
        clear_read_only(c"/proc").map_err(|code| failed(root_entry, code))?;
        for (entry, (layer, points)) in self.layers.iter().enumerate() {
            self.apply_layer(layer, points)
                .map_err(|code| failed(entry, code))?;
        }
        for target in &self.read_only_after {
            if let Err(code) = set_read_only(libc::AT_FDCWD, target, 0)
                && code != libc::EINVAL
                && code != libc::ENOENT
            {
                return Err(failed(root_entry, code));
            }
        }
        if let Some(hosts) = self.hosts {
            let kept = &self.kept[hosts];
            move_mount(kept.tree.load(Ordering::Relaxed), &kept.target)
                .map_err(|code| failed(self.described.len() - 1, code))?;
        }
        Ok(())
    }

    fn entry_of(&self, kept: usize) -> Option<usize> {
        if self.hosts == Some(kept) {
            return Some(self.described.len() - 1);
        }
        self.layers
            .iter()
            .position(|(layer, _)| matches!(layer, Layer::Attach(n) if *n == kept))
    }

    fn apply_layer(&self, layer: &Layer, points: &[(CString, bool)]) -> Result<(), i32> {
        match layer {
            Layer::Tmpfs {
                target,
                options,
                flags,
                only_if_exists,
                ..
            } => {
                if *only_if_exists && !exists(target) {
                    return Ok(());
                }
                make_points(points)?;
                let flags = *flags;
                // SAFETY: mount with NUL-terminated strings.
                let result = unsafe {
                    libc::mount(
                        c"tmpfs".as_ptr(),
                        target.as_ptr(),
                        c"tmpfs".as_ptr(),
                        flags,
                        options.as_ptr().cast(),
                    )
                };
                if result != 0 {
                    return Err(errno());
                }
                Ok(())
            }
            Layer::Attach(n) => {
                let kept = &self.kept[*n];
                if kept.tree.load(Ordering::Relaxed) < 0 {
                    return Ok(());
                }
                make_points(points)?;
                move_mount(kept.tree.load(Ordering::Relaxed), &kept.target)
            }
            Layer::DevExtras => dev_extras(),
        }
    }
}

fn exists(path: &CString) -> bool {
    // SAFETY: access on a NUL-terminated path.
    unsafe { libc::access(path.as_ptr(), libc::F_OK) == 0 }
}

/// Creates mount points (dirs, or an empty file for the last one when `true`).
fn make_points(points: &[(CString, bool)]) -> Result<(), i32> {
    for (path, is_file) in points {
        // SAFETY: mkdir/mknod on NUL-terminated paths.
        let result = unsafe {
            if *is_file {
                libc::mknod(path.as_ptr(), libc::S_IFREG | 0o644, 0)
            } else {
                libc::mkdir(path.as_ptr(), 0o755)
            }
        };
        if result != 0 && errno() != libc::EEXIST {
            return Err(errno());
        }
    }
    Ok(())
}

fn move_mount(tree: libc::c_int, target: &CString) -> Result<(), i32> {
    // SAFETY: move_mount of a detached tree onto a NUL-terminated path.
    let result = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if result != 0 {
        return Err(errno());
    }
    Ok(())
}

fn mount_setattr(
    dir: libc::c_int,
    path: &std::ffi::CStr,
    flags: libc::c_uint,
    attr: &MountAttr,
) -> Result<(), i32> {
    // SAFETY: mount_setattr with a valid struct and a NUL-terminated path.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dir,
            path.as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if result != 0 {
        return Err(errno());
    }
    Ok(())
}

fn set_read_only(dir: libc::c_int, path: &std::ffi::CStr, flags: libc::c_uint) -> Result<(), i32> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    mount_setattr(dir, path, flags, &attr)
}

fn clear_read_only(path: &std::ffi::CStr) -> Result<(), i32> {
    let attr = MountAttr {
        attr_set: 0,
        attr_clr: MOUNT_ATTR_RDONLY,
        propagation: 0,
        userns_fd: 0,
    };
    mount_setattr(libc::AT_FDCWD, path, 0, &attr)
}

/// `/dev/pts` (a new devpts instance), `/dev/ptmx`, `/dev/shm` (tmpfs) and the usual links.
fn dev_extras() -> Result<(), i32> {
    // SAFETY: mkdir, mount and symlink with NUL-terminated strings.
    unsafe {
        for dir in [c"/dev/pts", c"/dev/shm"] {
            if libc::mkdir(dir.as_ptr(), 0o755) != 0 && errno() != libc::EEXIST {
                return Err(errno());
            }
        }
        for (path, major, minor) in DEVICES {
            let device = libc::makedev(major, minor);
            if libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, device) != 0 {
                return Err(errno());
            }
            // mknod's mode is masked by the umask.
            if libc::chmod(path.as_ptr(), 0o666) != 0 {
                return Err(errno());
            }
        }
        let pts_options = c"newinstance,ptmxmode=0666,mode=0620";
        if libc::mount(
            c"devpts".as_ptr(),
            c"/dev/pts".as_ptr(),
            c"devpts".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            pts_options.as_ptr().cast(),
        ) != 0
        {
            return Err(errno());
        }
        if libc::mount(
            c"tmpfs".as_ptr(),
            c"/dev/shm".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=1777".as_ptr().cast(),
        ) != 0
        {
            return Err(errno());
        }
        for (target, link) in [
            (c"pts/ptmx", c"/dev/ptmx"),
            (c"/proc/self/fd", c"/dev/fd"),
            (c"/proc/self/fd/0", c"/dev/stdin"),
            (c"/proc/self/fd/1", c"/dev/stdout"),
            (c"/proc/self/fd/2", c"/dev/stderr"),
        ] {
            if libc::symlink(target.as_ptr(), link.as_ptr()) != 0 && errno() != libc::EEXIST {
                return Err(errno());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(spec: &SandboxSpec) -> MountPlan {
        let context = Context {
            program: Path::new("/usr/bin/env"),
            hosts_file: None,
            secrets_dir: None,
            root: true,
            switches_user: true,
        };
        MountPlan::new(spec, &context).unwrap()
    }

    #[test]
    fn only_what_a_layer_hides_is_moved_back() {
        let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
        let app = dir.path().join("app");
        let tool = dir.path().join("tool");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::create_dir_all(&tool).unwrap();
        let spec = SandboxSpec {
            level: "default".into(),
            writable: vec![app.clone()],
            // /usr/bin is on the read-only host already; /tmp and /root are layers.
            visible: vec![
                tool.join("."),
                "/usr/bin".into(),
                "/tmp".into(),
                "/root".into(),
            ],
            hidden: vec![dir.path().join("state")],
            ..SandboxSpec::default()
        };
        let described = plan(&spec).described;
        let app = std::fs::canonicalize(&app).unwrap();
        let tool = std::fs::canonicalize(&tool).unwrap();
        let position = |text: &str| described.iter().position(|d| d == text);
        let app_at = position(&format!("{} (writable)", app.display())).expect("app");
        let tool_at = position(&format!("{} (read-only)", tool.display())).expect("tool");
        let tmp_at = position("a private tmpfs on /tmp").expect("/tmp");
        assert!(tmp_at < app_at && tmp_at < tool_at, "{described:#?}");
        assert!(
            position("an empty tmpfs over /root").is_some(),
            "{described:#?}"
        );
        assert!(
            position("an empty tmpfs over /home").is_some(),
            "{described:#?}"
        );
        assert!(
            !described.iter().any(|d| d.starts_with("/usr/bin")),
            "{described:#?}"
        );
        assert!(
            !described.iter().any(|d| d == "/tmp (read-only)"),
            "{described:#?}"
        );
    }

    #[test]
    fn a_missing_writable_path_is_an_error_that_names_it() {
        let spec = SandboxSpec {
            writable: vec!["/nonexistent/bow-data".into()],
            ..SandboxSpec::default()
        };
        let context = Context {
            program: Path::new("/usr/bin/env"),
            hosts_file: None,
            secrets_dir: None,
            root: true,
            switches_user: true,
        };
        let error = MountPlan::new(&spec, &context).unwrap_err();
        assert!(
            error.contains("/nonexistent/bow-data") && error.contains("writable"),
            "{error}"
        );
    }
}
