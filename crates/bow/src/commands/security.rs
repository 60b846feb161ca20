//! `bow security SERVICE`: what a service's sandbox lets it do, in the style of
//! `systemd-analyze security`: one line per hardening option systemd scores, ✓ where bow's
//! sandbox gives the same protection, ✗ with the exposure where it does not, and an overall
//! exposure level (0 safest, 10 least safe) with systemd's weights and ratings.

use std::process::ExitCode;

use anyhow::{Result, bail};
use bow_spec::sandbox::{Sandbox, SandboxLevel};
use bow_spec::{Service, Workload};
use serde::Serialize;

use crate::cli::{Output, StackArgs};
use crate::stack;

/// `systemd-analyze security --offline=true` of a unit with only `ExecStart=` and `User=`
/// (9.2) and of one running as root (9.6), measured with systemd 252 (docs/sandbox.md).
const SYSTEMD_DEFAULT_WITH_USER: f64 = 9.2;
const SYSTEMD_DEFAULT_AS_ROOT: f64 = 9.6;

#[derive(Debug, Serialize)]
pub struct Assessment {
    pub service: String,
    pub level: String,
    pub exposure: f64,
    pub rating: &'static str,
    pub checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    /// The systemd option that gives the same protection.
    pub option: &'static str,
    pub protected: bool,
    pub description: String,
    /// What it adds to the exposure when not protected (systemd's weight).
    pub weight: f64,
}

pub fn run(args: &StackArgs, service: &str, output: Output) -> Result<ExitCode> {
    let (_, spec) = stack::load(args)?;
    let Some(definition) = spec.services.get(service) else {
        let names: Vec<&str> = spec.services.keys().map(String::as_str).collect();
        bail!(
            "no service {service:?} in the stack; its services: {}",
            names.join(", ")
        );
    };
    if matches!(definition.workload, Workload::Container(_)) {
        bail!(
            "{service} is a container service: the engine confines it; the sandbox applies to process and postgres services"
        );
    }
    let assessment = assess(service, definition);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&assessment)?),
        Output::Text => print!("{}", render(&assessment)),
    }
    Ok(ExitCode::SUCCESS)
}

/// systemd's ratings of an overall exposure.
pub fn rating(exposure: f64) -> &'static str {
    match exposure {
        e if e < 1.0 => "PERFECT",
        e if e < 2.0 => "SAFE",
        e if e < 5.0 => "OK",
        e if e < 7.0 => "MEDIUM",
        e if e < 9.0 => "EXPOSED",
        _ => "UNSAFE",
    }
}

/// Capability groups systemd scores, with their weights.
const CAPABILITY_GROUPS: &[(&str, &[&str], &str, f64)] = &[
    (
        "CAP_SYS_ADMIN",
        &["sys_admin"],
        "administrator privileges",
        0.3,
    ),
    (
        "CAP_SYS_PTRACE",
        &["sys_ptrace"],
        "ptrace() any process",
        0.3,
    ),
    (
        "CAP_SET(UID|GID|PCAP)",
        &["setuid", "setgid", "setpcap"],
        "change UID/GID identities and capabilities",
        0.3,
    ),
    (
        "CAP_(DAC_*|FOWNER|IPC_OWNER)",
        &["dac_override", "dac_read_search", "fowner", "ipc_owner"],
        "override file and IPC permission checks",
        0.2,
    ),
    (
        "CAP_(CHOWN|FSETID|SETFCAP)",
        &["chown", "fsetid", "setfcap"],
        "change file ownership, modes and capabilities",
        0.2,
    ),
    (
        "CAP_SYS_MODULE",
        &["sys_module"],
        "load kernel modules",
        0.2,
    ),
    ("CAP_SYS_RAWIO", &["sys_rawio"], "do raw I/O", 0.2),
    (
        "CAP_SYS_TIME",
        &["sys_time"],
        "change the system clock",
        0.2,
    ),
    (
        "CAP_NET_ADMIN",
        &["net_admin"],
        "configure the network",
        0.2,
    ),
    (
        "CAP_NET_(BIND_SERVICE|BROADCAST|RAW)",
        &["net_bind_service", "net_broadcast", "net_raw"],
        "use elevated networking privileges",
        0.1,
    ),
    ("CAP_SYS_BOOT", &["sys_boot"], "call reboot()", 0.1),
    ("CAP_SYS_CHROOT", &["sys_chroot"], "call chroot()", 0.1),
    ("CAP_KILL", &["kill"], "signal any process", 0.1),
    ("CAP_SYS_PACCT", &["sys_pacct"], "call acct()", 0.1),
    (
        "CAP_WAKE_ALARM",
        &["wake_alarm"],
        "set timers that wake the system",
        0.1,
    ),
    (
        "CAP_LINUX_IMMUTABLE",
        &["linux_immutable"],
        "mark files immutable",
        0.1,
    ),
    ("CAP_IPC_LOCK", &["ipc_lock"], "lock memory into RAM", 0.1),
    ("CAP_BPF", &["bpf"], "load BPF programs", 0.1),
    (
        "CAP_SYS_TTY_CONFIG",
        &["sys_tty_config"],
        "call vhangup()",
        0.1,
    ),
    (
        "CAP_BLOCK_SUSPEND",
        &["block_suspend"],
        "take wake locks",
        0.1,
    ),
    ("CAP_LEASE", &["lease"], "take file leases", 0.1),
    ("CAP_MKNOD", &["mknod"], "create device nodes", 0.1),
    (
        "CAP_MAC_*",
        &["mac_admin", "mac_override"],
        "adjust MAC policy",
        0.1,
    ),
    (
        "CAP_SYS_(NICE|RESOURCE)",
        &["sys_nice", "sys_resource"],
        "change resource limits and priorities",
        0.1,
    ),
    (
        "CAP_AUDIT_*",
        &["audit_control", "audit_read", "audit_write"],
        "use the audit subsystem",
        0.1,
    ),
    ("CAP_SYSLOG", &["syslog"], "read the kernel log", 0.1),
];

/// systemd's system call groups bow's filter covers, with the calls bow refuses for each
/// (a group counts only when none of them is allowed back).
const SYSCALL_GROUPS: &[(&str, &[&str], f64)] = &[
    (
        "@clock",
        &["settimeofday", "clock_settime", "clock_adjtime", "adjtimex"],
        0.2,
    ),
    (
        "@debug",
        &[
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "perf_event_open",
            "lookup_dcookie",
            "pidfd_getfd",
        ],
        0.2,
    ),
    (
        "@module",
        &["init_module", "finit_module", "delete_module"],
        0.2,
    ),
    (
        "@mount",
        &[
            "mount",
            "umount2",
            "pivot_root",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsmount",
            "fsconfig",
            "fspick",
            "mount_setattr",
            "chroot",
        ],
        0.2,
    ),
    ("@raw-io", &["iopl", "ioperm"], 0.2),
    ("@reboot", &["reboot", "kexec_load", "kexec_file_load"], 0.2),
    ("@swap", &["swapon", "swapoff"], 0.2),
];

/// Options bow does not provide (yet), with systemd's weights: always exposed.
const NOT_PROVIDED: &[(&str, &str, f64)] = &[
    (
        "PrivateNetwork=",
        "has the host's network (services talk over it)",
        0.5,
    ),
    (
        "RestrictNamespaces=~user",
        "may create user namespaces with clone() (unshare and setns are refused)",
        0.3,
    ),
    (
        "RestrictNamespaces=~(pid|net|uts|mnt|cgroup|ipc)",
        "may create other namespaces with clone()",
        0.6,
    ),
    (
        "RestrictAddressFamilies=~AF_(INET|INET6)",
        "may allocate Internet sockets",
        0.3,
    ),
    (
        "RestrictAddressFamilies=~…",
        "may allocate exotic sockets",
        0.3,
    ),
    (
        "RestrictAddressFamilies=~AF_PACKET",
        "may allocate packet sockets (needs net_raw, dropped)",
        0.2,
    ),
    (
        "RestrictAddressFamilies=~(AF_NETLINK|AF_UNIX)",
        "may allocate netlink and local sockets",
        0.2,
    ),
    ("PrivateUsers=", "sees the host's users", 0.2),
    ("ProtectProc=", "sees the whole process tree in /proc", 0.2),
    ("ProcSubset=", "sees non-process /proc files", 0.1),
    (
        "RestrictSUIDSGID=",
        "may create SUID/SGID files (they grant nothing: no new privileges)",
        0.2,
    ),
    ("IPAddressDeny=", "no IP address allow list", 0.2),
    (
        "SystemCallFilter=~@privileged",
        "@privileged calls are not filtered (capabilities are dropped)",
        0.2,
    ),
    (
        "SystemCallFilter=~@resources",
        "@resources calls are not filtered",
        0.2,
    ),
    (
        "SystemCallFilter=~@(obsolete|cpu-emulation)",
        "obsolete and cpu-emulation calls are not filtered",
        0.2,
    ),
    (
        "MemoryDenyWriteExecute=",
        "may map writable executable memory (JITs need it)",
        0.1,
    ),
    ("RestrictRealtime=", "may acquire realtime scheduling", 0.1),
    ("RemoveIPC=", "may leave SysV IPC objects behind", 0.1),
    (
        "RootDirectory=",
        "runs within the host's root directory (read-only)",
        0.1,
    ),
    (
        "UMask=",
        "files it creates are world-readable by default",
        0.1,
    ),
];

pub fn assess(name: &str, service: &Service) -> Assessment {
    let sandbox: &Sandbox = &service.sandbox;
    let on = sandbox.level != SandboxLevel::Off;
    let strict = sandbox.level == SandboxLevel::Strict;
    let kept = |cap: &str| sandbox.caps.iter().any(|c| c == cap);
    let allowed = |call: &str| sandbox.syscalls.allow.iter().any(|c| c == call);
    let as_root = service.user.as_deref() == Some("root");
    let mut checks = Vec::new();
    let mut check =
        |option: &'static str, protected: bool, yes: String, no: String, weight: f64| {
            checks.push(Check {
                option,
                protected,
                description: if protected { yes } else { no },
                weight,
            })
        };
    check(
        "User=",
        !as_root,
        "runs as a user of its own".into(),
        "runs as root".into(),
        0.4,
    );
    let writable = if sandbox.writable.is_empty() {
        String::new()
    } else {
        format!(", and {}", sandbox.writable.join(", "))
    };
    let own_dir = if strict {
        "nothing but /tmp".to_string()
    } else {
        format!("its dir{writable}")
    };
    check(
        "ProtectSystem=strict",
        on,
        format!("the system is read-only; it may write {own_dir}"),
        "may write wherever its user may".into(),
        0.2,
    );
    check(
        "ProtectHome=",
        on,
        "/home and /root are empty".into(),
        "sees /home and /root".into(),
        0.2,
    );
    check(
        "PrivateTmp=",
        on,
        "its /tmp is its own".into(),
        "shares /tmp with every other program".into(),
        0.2,
    );
    check(
        "PrivateDevices=",
        on,
        "/dev has null, zero, full, random, urandom, tty, pts, shm only".into(),
        "sees every device".into(),
        0.2,
    );
    check(
        "DeviceAllow=",
        on,
        "no hardware device".into(),
        "no device allow list".into(),
        0.2,
    );
    check(
        "PrivateMounts=",
        on,
        "mounts of its own, none propagate".into(),
        "may install system mounts".into(),
        0.2,
    );
    check(
        "NoNewPrivileges=",
        on,
        "cannot gain privileges (setuid binaries, file capabilities)".into(),
        "may gain privileges through setuid binaries".into(),
        0.2,
    );
    check(
        "ProtectKernelTunables=",
        on,
        "/proc/sys and /sys are read-only".into(),
        "may alter kernel tunables".into(),
        0.2,
    );
    check(
        "ProtectControlGroups=",
        on,
        "the cgroup file system is read-only".into(),
        "may modify the cgroup file system".into(),
        0.2,
    );
    let modules = on
        && !kept("sys_module")
        && !["init_module", "finit_module", "delete_module"]
            .iter()
            .any(|c| allowed(c));
    check(
        "ProtectKernelModules=",
        modules,
        "cannot load kernel modules".into(),
        "may load kernel modules".into(),
        0.2,
    );
    let logs = on && !kept("syslog") && !allowed("syslog");
    check(
        "ProtectKernelLogs=",
        logs,
        "cannot read the kernel log".into(),
        "may read the kernel log".into(),
        0.2,
    );
    let clock = on
        && !kept("sys_time")
        && !["settimeofday", "clock_settime", "clock_adjtime", "adjtimex"]
            .iter()
            .any(|c| allowed(c));
    check(
        "ProtectClock=",
        clock,
        "cannot set the clock".into(),
        "may set the clock".into(),
        0.2,
    );
    check(
        "ProtectHostname=",
        on && !kept("sys_admin"),
        "cannot rename the host".into(),
        "may rename the host".into(),
        0.1,
    );
    check(
        "SystemCallArchitectures=native",
        on,
        "other ABIs' system calls are refused".into(),
        "may make system calls of every ABI".into(),
        0.2,
    );
    check(
        "LockPersonality=",
        strict && !allowed("personality"),
        "cannot change its ABI personality".into(),
        "may change its ABI personality (level strict refuses it)".into(),
        0.1,
    );
    check(
        "KeyringMode=private",
        on && !allowed("keyctl"),
        "no kernel keyring".into(),
        "may use the kernel keyring".into(),
        0.1,
    );
    for (group, caps, what, weight) in CAPABILITY_GROUPS {
        let held: Vec<&str> = caps.iter().copied().filter(|c| kept(c)).collect();
        let protected = on && held.is_empty();
        let no = if on {
            format!("may {what} ({} kept)", held.join(", "))
        } else {
            format!("may {what} if it gains the capability (none dropped)")
        };
        check(group, protected, format!("cannot {what}"), no, *weight);
    }
    for (group, calls, weight) in SYSCALL_GROUPS {
        let back: Vec<&str> = calls.iter().copied().filter(|c| allowed(c)).collect();
        let protected = on && back.is_empty();
        let no = if on {
            format!("{} allowed back", back.join(", "))
        } else {
            "no system call filter".to_string()
        };
        check(
            group,
            protected,
            format!("refused: {}", calls.join(", ")),
            no,
            *weight,
        );
    }
    for (option, what, weight) in NOT_PROVIDED {
        check(option, false, String::new(), (*what).to_string(), *weight);
    }
    let total: f64 = checks.iter().map(|c| c.weight).sum();
    let exposed: f64 = checks
        .iter()
        .filter(|c| !c.protected)
        .map(|c| c.weight)
        .sum();
    let exposure = (100.0 * exposed / total).round() / 10.0;
    Assessment {
        service: name.to_string(),
        level: sandbox.summary(),
        exposure,
        rating: rating(exposure),
        checks,
    }
}

pub fn render(assessment: &Assessment) -> String {
    let width = assessment
        .checks
        .iter()
        .map(|c| c.option.len())
        .max()
        .unwrap_or(0);
    let mut out = format!(
        "{:w$}  {:64}  EXPOSURE\n",
        "  NAME",
        "DESCRIPTION",
        w = width + 2
    );
    let mut checks: Vec<&Check> = assessment.checks.iter().collect();
    checks.sort_by(|a, b| {
        a.protected
            .cmp(&b.protected)
            .then(b.weight.total_cmp(&a.weight))
    });
    for check in checks {
        let mark = if check.protected { '✓' } else { '✗' };
        let exposure = if check.protected {
            String::new()
        } else {
            format!("{:.1}", check.weight)
        };
        out.push_str(&format!(
            "{mark} {:w$}  {:64}  {exposure}\n",
            check.option,
            check.description,
            w = width
        ));
    }
    out.push_str(&format!(
        "\n→ Overall exposure level for {} (sandbox: {}): {:.1} {}\n  a default systemd unit for the same app: {SYSTEMD_DEFAULT_WITH_USER} {} with User=, {SYSTEMD_DEFAULT_AS_ROOT} {} as root (systemd-analyze security)\n",
        assessment.service,
        assessment.level,
        assessment.exposure,
        assessment.rating,
        rating(SYSTEMD_DEFAULT_WITH_USER),
        rating(SYSTEMD_DEFAULT_AS_ROOT),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Service {
        let spec = bow_spec::load(
            &format!("project: p\nservices:\n  web: {yaml}\n"),
            &Default::default(),
        )
        .unwrap();
        spec.services["web"].clone()
    }

    #[test]
    fn the_default_sandbox_scores_far_better_than_a_default_systemd_unit() {
        let default = assess("web", &service("{command: run}"));
        let off = assess("web", &service("{command: run, sandbox: {level: off}}"));
        let strict = assess("web", &service("{command: run, sandbox: {level: strict}}"));
        assert_eq!(default.rating, "OK", "{}", render(&default));
        assert!(default.exposure < 5.0, "{}", default.exposure);
        assert!(strict.exposure < default.exposure);
        assert!(off.exposure >= 9.0, "{}", render(&off));
        let loose = assess(
            "web",
            &service("{command: run, sandbox: {caps: [sys_admin], syscalls: {allow: [mount]}}}"),
        );
        assert!(loose.exposure > default.exposure);
        let text = render(&loose);
        assert!(text.contains("sys_admin kept"), "{text}");
        assert!(text.contains("mount allowed back"), "{text}");
    }
}
