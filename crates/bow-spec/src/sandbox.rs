//! A service's confinement (`sandbox:`): its level and what loosens it, with the names bow
//! knows (Linux capabilities, the system calls bow's filter refuses). The driver turns this
//! into a mount namespace, dropped capabilities and a seccomp filter; here it is plain data.

use serde::{Deserialize, Serialize};

/// `sandbox: {level, writable, caps, syscalls: {allow}}`; every field has a default, so a
/// service without the key is confined at [`SandboxLevel::Default`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sandbox {
    #[serde(default, skip_serializing_if = "SandboxLevel::is_default")]
    pub level: SandboxLevel,
    /// Absolute paths (anchored at the stack file's directory) the service may write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writable: Vec<String>,
    /// Capabilities it keeps, lowercase without `cap_` (`net_bind_service`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
    #[serde(default, skip_serializing_if = "SyscallRules::is_empty")]
    pub syscalls: SyscallRules,
}

impl Sandbox {
    /// True when nothing was written: what is recorded and planned leaves it out.
    pub fn is_default(&self) -> bool {
        *self == Sandbox::default()
    }

    /// `default`, `strict +caps net_bind_service`, `off`: one line for plan and status.
    pub fn summary(&self) -> String {
        let mut text = self.level.name().to_string();
        if self.level != SandboxLevel::Off {
            for (label, names) in [
                ("writable", &self.writable),
                ("caps", &self.caps),
                ("syscalls", &self.syscalls.allow),
            ] {
                if !names.is_empty() {
                    text.push_str(&format!(" +{label} {}", names.join(",")));
                }
            }
        }
        text
    }
}

/// `syscalls: {allow: [...]}`: system calls of bow's filter the service may make after all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyscallRules {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
}

impl SyscallRules {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty()
    }
}

/// How much of the host a service sees and may do (docs/sandbox.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxLevel {
    /// Nothing beyond its own user (and the discovery hosts file).
    Off,
    /// Read-only system, its `dir` writable, private /tmp, minimal /dev, no capabilities,
    /// no new privileges, the default system call filter, rlimits.
    #[default]
    Default,
    /// As `default`, with its `dir` read-only too and [`STRICT_EXTRA_SYSCALLS`] refused.
    Strict,
}

impl SandboxLevel {
    pub const NAMES: [&'static str; 3] = ["strict", "default", "off"];

    pub fn is_default(&self) -> bool {
        *self == SandboxLevel::Default
    }

    pub fn name(self) -> &'static str {
        match self {
            SandboxLevel::Off => "off",
            SandboxLevel::Default => "default",
            SandboxLevel::Strict => "strict",
        }
    }

    pub fn parse(text: &str) -> Option<SandboxLevel> {
        match text {
            "off" => Some(SandboxLevel::Off),
            "default" => Some(SandboxLevel::Default),
            "strict" => Some(SandboxLevel::Strict),
            _ => None,
        }
    }
}

/// Every Linux capability, by the name `caps:` takes (capabilities(7) without `CAP_`), in
/// number order: `CAPABILITIES[n]` is capability `n`.
pub const CAPABILITIES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// The system calls the default filter refuses (EPERM), and why: what a web service or
/// database never needs and an intruder wants.
pub const DEFAULT_DENIED_SYSCALLS: &[(&str, &str)] = &[
    ("init_module", "load a kernel module"),
    ("finit_module", "load a kernel module"),
    ("delete_module", "unload a kernel module"),
    ("kexec_load", "boot another kernel"),
    ("kexec_file_load", "boot another kernel"),
    ("reboot", "reboot or halt the host"),
    ("mount", "mount file systems"),
    ("umount2", "unmount file systems"),
    ("pivot_root", "change the root file system"),
    ("move_mount", "mount file systems"),
    ("open_tree", "mount file systems"),
    ("fsopen", "mount file systems"),
    ("fsmount", "mount file systems"),
    ("fsconfig", "mount file systems"),
    ("fspick", "mount file systems"),
    ("chroot", "change its root directory"),
    ("mount_setattr", "change mount flags"),
    ("swapon", "add swap"),
    ("swapoff", "remove swap"),
    ("ptrace", "trace or inject into other processes"),
    ("process_vm_readv", "read another process's memory"),
    ("process_vm_writev", "write another process's memory"),
    ("pidfd_getfd", "take another process's open files"),
    ("bpf", "load eBPF programs"),
    ("perf_event_open", "profile the kernel and other processes"),
    ("keyctl", "use the kernel keyring"),
    ("add_key", "use the kernel keyring"),
    ("request_key", "use the kernel keyring"),
    ("acct", "switch process accounting"),
    ("settimeofday", "set the clock"),
    ("clock_settime", "set the clock"),
    ("clock_adjtime", "adjust the clock"),
    ("adjtimex", "adjust the clock"),
    ("syslog", "read or clear the kernel log"),
    ("quotactl", "change disk quotas"),
    ("lookup_dcookie", "kernel profiling"),
    (
        "open_by_handle_at",
        "open files by handle, past the mount view",
    ),
    ("name_to_handle_at", "name files by handle"),
    ("userfaultfd", "a tool of kernel exploits"),
    ("unshare", "leave its namespaces"),
    ("setns", "enter other namespaces"),
    ("iopl", "raw port I/O"),
    ("ioperm", "raw port I/O"),
    ("vhangup", "hang up terminals"),
    ("uselib", "a legacy loader call"),
];

/// What `level: strict` refuses on top of [`DEFAULT_DENIED_SYSCALLS`].
pub const STRICT_EXTRA_SYSCALLS: &[(&str, &str)] = &[
    ("personality", "change the execution domain"),
    ("io_uring_setup", "io_uring, a large kernel attack surface"),
    ("io_uring_enter", "io_uring, a large kernel attack surface"),
    (
        "io_uring_register",
        "io_uring, a large kernel attack surface",
    ),
    ("sethostname", "rename the host"),
    ("setdomainname", "rename the host"),
];

/// The system calls a level refuses, by name, before `syscalls.allow`.
pub fn denied_syscalls(level: SandboxLevel) -> Vec<&'static str> {
    let strict: &[(&str, &str)] = match level {
        SandboxLevel::Off => return Vec::new(),
        SandboxLevel::Default => &[],
        SandboxLevel::Strict => STRICT_EXTRA_SYSCALLS,
    };
    DEFAULT_DENIED_SYSCALLS
        .iter()
        .chain(strict)
        .map(|(name, _)| *name)
        .collect()
}

/// Whether `name` is a system call bow's filter (at any level) refuses.
pub fn is_filtered_syscall(name: &str) -> bool {
    DEFAULT_DENIED_SYSCALLS
        .iter()
        .chain(STRICT_EXTRA_SYSCALLS)
        .any(|(known, _)| *known == name)
}
