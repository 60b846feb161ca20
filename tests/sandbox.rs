//! Confinement (docs/sandbox.md): every process service runs sandboxed by default. One test
//! per confinement, each proving it holds from inside a real service (a shell probe that
//! reports what it could do), and what a confined service must still be able to do.

mod support;

use std::time::Duration;

use support::procs::is_root;
use support::stack::{Stack, WAIT};

/// A stack with `target` (the testapp, with a port other services call it on, and a dir
/// of its own holding a private file) and `probe`, which runs `script` from its own dir
/// under `sandbox` and then sleeps; returns the stack and the probe's `R ...` lines.
fn probe(label: &str, probe_extra: &str, script: &str) -> (Stack, Vec<String>) {
    assert!(
        is_root(),
        "this test needs root: the sandbox is built as root"
    );
    let target_port = support::procs::free_port();
    let stack = Stack::new(
        label,
        &format!(
            "
services:
  target:
    command: {{testapp}}
    dir: ./target
    port: {target_port}
    health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }}
  probe:
    command: sh probe.sh
    dir: ./probe
    depends_on: [target]
{probe_extra}"
        ),
    );
    stack.write("target/private.txt", "target's own\n");
    let data = stack.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let full = format!(
        "set +e\nTARGET_PORT={target_port}\nSTATE_DIR={}\nOTHER_DIR={}\n{script}\necho 'R done'\nexec sleep 1000\n",
        stack.state_dir.display(),
        stack.dir.path().join("target").display(),
    );
    stack.write("probe/probe.sh", &full);
    stack.up_ok();
    let lines = results(&stack);
    (stack, lines)
}

/// The probe's `R ...` lines, once it printed `R done`.
fn results(stack: &Stack) -> Vec<String> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let ran = stack.run(&["logs", "probe"], Duration::from_secs(20));
        let lines: Vec<String> = ran
            .stdout
            .lines()
            .filter_map(|line| line.split_once("| R ").map(|(_, r)| r.to_string()))
            .collect();
        if lines.iter().any(|l| l == "done") {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the probe never finished:\n{}\n{}",
            ran.stdout,
            ran.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn result<'a>(lines: &'a [String], name: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no result {name} in {lines:#?}"))
}

#[test]
fn the_system_is_read_only() {
    let (_stack, lines) = probe(
        "sbro",
        "",
        "for p in /etc/bow-probe /usr/bow-probe /var/bow-probe /opt/bow-probe; do
           if touch $p 2>/dev/null; then echo \"R write$p yes\"; rm -f $p; else echo \"R write$p no\"; fi
         done",
    );
    for path in ["/etc", "/usr", "/var", "/opt"] {
        assert_eq!(
            result(&lines, &format!("write{path}/bow-probe")),
            "no",
            "{path}"
        );
    }
}

#[test]
fn another_services_dir_secrets_and_bow_state_are_invisible() {
    let (stack, lines) = probe(
        "sbother",
        "",
        "if cat $OTHER_DIR/private.txt >/dev/null 2>&1; then echo 'R other-dir readable'; else echo 'R other-dir hidden'; fi
         echo \"R state-entries $(ls -A $STATE_DIR 2>/dev/null | wc -l)\"
         echo \"R run-bow-entries $(ls -A /run/bow 2>/dev/null | wc -l)\"",
    );
    // The file is readable by all on the host: only the sandbox hides it.
    assert!(std::fs::read_to_string(stack.dir.path().join("target/private.txt")).is_ok());
    assert!(std::fs::read_dir(&stack.state_dir).unwrap().count() > 0);
    assert_eq!(result(&lines, "other-dir"), "hidden");
    assert_eq!(result(&lines, "state-entries"), "0");
    assert_eq!(result(&lines, "run-bow-entries"), "0");
}

#[test]
fn another_services_secret_is_invisible_and_its_own_is_there() {
    let stack = Stack::new(
        "sbsecret",
        "
services:
  keeper:
    command: {testapp}
    secrets: [token]
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
  probe:
    command: sh probe/probe.sh
    secrets: [mine]
    depends_on: [keeper]
",
    );
    support::secrets::use_key(&stack, "me");
    support::secrets::init_and_set(
        &stack,
        &[("token", "keeper-secret-1"), ("mine", "probe-secret-1")],
    );
    let keeper_dir = std::path::Path::new("/run/bow")
        .join(format!("{}-development", stack.project))
        .join("keeper.1");
    stack.write(
        "probe/probe.sh",
        &format!(
            "if cat {}/token >/dev/null 2>&1; then echo 'R other-secret readable'; else echo 'R other-secret hidden'; fi
             [ \"$(cat $BOW_SECRETS_DIR/mine)\" = probe-secret-1 ] && echo 'R own-secret readable'
             echo 'R done'; exec sleep 1000\n",
            keeper_dir.display()
        ),
    );
    stack.up_ok();
    assert!(
        keeper_dir.join("token").exists(),
        "the keeper's secret exists on the host"
    );
    let lines = results(&stack);
    assert_eq!(result(&lines, "other-secret"), "hidden");
    assert_eq!(result(&lines, "own-secret"), "readable");
}

#[test]
fn home_and_root_are_hidden() {
    let marker = format!("/root/.bow-e2e-sandbox-{}", std::process::id());
    std::fs::write(&marker, "root's").unwrap();
    let (_stack, lines) = probe(
        "sbroot",
        "",
        &format!(
            "if [ -e {marker} ]; then echo 'R root-marker seen'; else echo 'R root-marker hidden'; fi
             echo \"R root-entries $(ls -A /root | wc -l)\"
             echo \"R home-entries $(ls -A /home | wc -l)\""
        ),
    );
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(result(&lines, "root-marker"), "hidden");
    assert_eq!(result(&lines, "root-entries"), "0");
    assert_eq!(result(&lines, "home-entries"), "0");
}

#[test]
fn a_sibling_cannot_be_traced() {
    // Two replicas run as the same user: without the filter, one could ptrace the other.
    let (_stack, lines) = probe(
        "sbptrace",
        "    replicas: 2\n",
        "python3 - <<'PY'
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
me, mine = os.getuid(), {os.getpid(), os.getppid()}
def siblings():
    found = []
    for p in os.listdir('/proc'):
        try:
            if p.isdigit() and int(p) not in mine and os.stat('/proc/' + p).st_uid == me \
                    and b'probe.sh' in open('/proc/%s/cmdline' % p, 'rb').read():
                found.append(int(p))
        except OSError:
            pass
    return found
deadline = time.time() + 20
while not siblings() and time.time() < deadline:
    time.sleep(0.1)
found = siblings()
print('R siblings', 'some' if found else 'none', flush=True)
if found:
    result = libc.ptrace(16, found[0], 0, 0)  # PTRACE_ATTACH
    print('R ptrace', 'refused' if result == -1 and ctypes.get_errno() == 1 else 'allowed %d %d' % (result, ctypes.get_errno()), flush=True)
PY
         sleep 1",
    );
    assert_eq!(result(&lines, "siblings"), "some");
    assert_eq!(result(&lines, "ptrace"), "refused");
}

#[test]
fn modules_mounts_and_namespaces_are_refused() {
    // As root (allow_root), so that only the sandbox stands in the way.
    let (_stack, lines) = probe(
        "sbmount",
        "    user: root\n    allow_root: true\n",
        "python3 - <<'PY'
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def errno(result):
    return 'ok' if result == 0 else 'errno %d' % ctypes.get_errno()
print('R finit_module', errno(libc.syscall(313, 0, b'', 0)), flush=True)
print('R mount', errno(libc.mount(b'none', b'/mnt', b'tmpfs', 0, None)), flush=True)
# setns(-1) is EBADF (9) unless the filter answers first with EPERM (1).
print('R setns', errno(libc.syscall(308, -1, 0)), flush=True)
PY
         grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status | while read name value; do echo \"R $name $value\"; done",
    );
    assert_eq!(result(&lines, "finit_module"), "errno 1");
    assert_eq!(result(&lines, "mount"), "errno 1");
    assert_eq!(
        result(&lines, "setns"),
        "errno 1",
        "the filter, not a missing capability"
    );
    for set in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:"] {
        assert_eq!(
            result(&lines, set),
            "0000000000000000",
            "{set} of a root service"
        );
    }
}

#[test]
fn no_capabilities_unless_listed() {
    let (_stack, lines) = probe(
        "sbcaps",
        "",
        "grep -E '^Cap(Eff|Bnd)' /proc/self/status | while read name value; do echo \"R $name $value\"; done",
    );
    assert_eq!(result(&lines, "CapEff:"), "0000000000000000");
    assert_eq!(result(&lines, "CapBnd:"), "0000000000000000");

    // An opted-in capability is there, and works: binding a port below 1024.
    let (_stack, lines) = probe(
        "sbcapsnet",
        "    sandbox: { caps: [net_bind_service] }\n",
        "grep -E '^Cap(Eff|Bnd)' /proc/self/status | while read name value; do echo \"R $name $value\"; done
         python3 -c \"import socket; s = socket.socket(); s.bind(('127.0.0.1', 1000 + $$ % 20)); print('R bind-low bound')\" 2>/dev/null || echo 'R bind-low refused'",
    );
    assert_eq!(result(&lines, "CapEff:"), "0000000000000400");
    assert_eq!(result(&lines, "CapBnd:"), "0000000000000400");
    assert_eq!(result(&lines, "bind-low"), "bound");
}

#[test]
fn tmp_is_private() {
    let marker = format!("/tmp/bow-e2e-sandbox-tmp-{}", std::process::id());
    std::fs::write(&marker, "host's").unwrap();
    let (stack, lines) = probe(
        "sbtmp",
        "",
        &format!(
            "if [ -e {marker} ]; then echo 'R host-tmp seen'; else echo 'R host-tmp hidden'; fi
             echo mine > /tmp/probe-{}-file && echo 'R write-tmp ok'",
            std::process::id()
        ),
    );
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(result(&lines, "host-tmp"), "hidden");
    assert_eq!(result(&lines, "write-tmp"), "ok");
    assert!(
        !std::path::Path::new(&format!("/tmp/probe-{}-file", std::process::id())).exists(),
        "the service's /tmp file leaked to the host's /tmp"
    );
    drop(stack);
}

#[test]
fn what_a_service_needs_still_works() {
    // Its writable path, its own dir, the program it names under /tmp-like private places,
    // and outbound HTTP to another service by name.
    let (stack, lines) = probe(
        "sbworks",
        "    sandbox: { writable: [./data] }\n",
        "echo kept > ../data/written && echo 'R write-writable ok'
         cat probe.sh >/dev/null && echo 'R read-own-dir ok'
         echo \"R devices $(head -c 16 /dev/urandom | wc -c) $(echo x > /dev/null && echo null-ok)\"
         python3 -c \"import urllib.request; print('R http', urllib.request.urlopen('http://target:%d/healthz' % $TARGET_PORT, timeout=5).status)\" 2>&1 | grep '^R' || echo 'R http failed'",
    );
    assert_eq!(result(&lines, "write-writable"), "ok");
    assert_eq!(
        std::fs::read_to_string(stack.dir.path().join("data/written")).unwrap(),
        "kept\n"
    );
    assert_eq!(result(&lines, "read-own-dir"), "ok");
    assert_eq!(result(&lines, "devices"), "16 null-ok");
    assert_eq!(result(&lines, "http"), "200");
}

#[test]
fn health_exec_checks_run_in_the_same_sandbox() {
    let marker = format!("/root/.bow-e2e-sandbox-check-{}", std::process::id());
    std::fs::write(&marker, "root's").unwrap();
    // Healthy only when the check sees an empty /root (the marker is not named: a path the
    // definition names stays visible) and has no capabilities.
    let (stack, _lines) = probe(
        "sbcheck",
        "    health: { exec: \"test -z \\\"$(ls -A /root)\\\" && grep -q '^CapBnd:.0000000000000000' /proc/self/status\", interval: 200ms, timeout: 2s, retries: 3 }\n",
        "",
    );
    std::fs::remove_file(&marker).unwrap();
    let status = stack.status_ok();
    let probe = support::stack::instance(&status, "probe.1").unwrap();
    assert_eq!(probe["health"], "healthy", "{probe}");
}

#[test]
fn strict_makes_its_dir_read_only_too() {
    // As root (allow_root), so that only the mount's read-only flag can refuse the write.
    let script = "python3 -c \"
import errno
try:
    open('written-here', 'w').write('x'); print('R write-dir ok')
except OSError as e:
    print('R write-dir', errno.errorcode[e.errno])
\"";
    let (_stack, lines) = probe(
        "sbstrict",
        "    user: root\n    allow_root: true\n    sandbox: { level: strict }\n",
        script,
    );
    assert_eq!(result(&lines, "write-dir"), "EROFS");
    let (_stack, lines) = probe(
        "sbdefault",
        "    user: root\n    allow_root: true\n",
        script,
    );
    assert_eq!(result(&lines, "write-dir"), "ok");
}

#[test]
fn status_and_security_show_the_sandbox() {
    let (stack, _lines) = probe("sbshow", "    sandbox: { caps: [net_bind_service] }\n", "");
    let status = stack.status_ok();
    let probe = support::stack::service(&status, "probe").unwrap();
    assert_eq!(
        probe["sandbox"], "default +caps net_bind_service",
        "{probe}"
    );
    let target = support::stack::service(&status, "target").unwrap();
    assert_eq!(target["sandbox"], "default", "{target}");
    let text = stack.run(&["status"], Duration::from_secs(20));
    assert!(
        text.stdout
            .contains("sandbox: probe default +caps net_bind_service · target default"),
        "{}",
        text.stdout
    );

    let security = stack.run(&["security", "probe"], Duration::from_secs(20));
    assert_eq!(security.code, 0, "{}", security.describe());
    assert!(
        security
            .stdout
            .contains("✗ CAP_NET_(BIND_SERVICE|BROADCAST|RAW)")
            && security.stdout.contains("net_bind_service kept")
            && security.stdout.contains("✓ ProtectSystem=strict")
            && security.stdout.contains("Overall exposure level for probe"),
        "{}",
        security.stdout
    );
    let json = stack.run(
        &["security", "target", "--output", "json"],
        Duration::from_secs(20),
    );
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["rating"], "OK", "{report}");
    assert!(report["exposure"].as_f64().unwrap() < 5.0, "{report}");
    let missing = stack.run(&["security", "nope"], Duration::from_secs(20));
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("probe, target"),
        "{}",
        missing.stderr
    );
}
