//! An SFTP upload service behind a TCP route (issue 21): Debian's sshd run by bow as an
//! ordinary process service — its own unix user, its host key a bow secret delivered as a
//! file, `internal-sftp` forced — reached through `tcp: {port}`. A file put through the route
//! arrives intact in the service's upload directory; after the sshd instance is killed, the
//! restarted one serves the next session; `bow down` closes the port.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::git::ssh_key;
use support::procs::{free_port, uid_of};
use support::secrets::{init_and_set, use_key};
use support::stack::{Stack, WAIT, all_healthy, instance, pid_in};

/// `sftp -b -` with `commands` through 127.0.0.1:`port` as `user`; (success, output).
fn sftp(port: u16, key: &std::path::Path, user: &str, commands: &str) -> (bool, String) {
    let mut child = Command::new("sftp")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-i"])
        .arg(key)
        .args(["-P", &port.to_string(), "-b", "-"])
        .arg(format!("{user}@127.0.0.1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sftp (openssh-client) runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn files_go_up_through_a_tcp_route_to_sshd_run_as_a_service() {
    let port = free_port();
    let keys = tempfile::tempdir().unwrap();
    let (client, public) = ssh_key(keys.path(), "uploader");
    let (host_key, _) = ssh_key(keys.path(), "host");
    let host_key_file = host_key.clone();
    let host_key = std::fs::read_to_string(host_key).unwrap();
    let stack = Stack::new(
        "sftp",
        &format!(
            "services:\n  files:\n    \
             command: /usr/sbin/sshd -D -e -f ./sshd_config -o Port=${{PORT}} -o ListenAddress=127.0.0.1 -o HostKey=${{BOW_SECRETS_DIR}}/host_key\n    \
             secrets: [host_key]\n    health: {{ tcp: true, interval: 200ms }}\n    tcp: {{ port: {port} }}\n"
        ),
    );
    let dir = stack.dir.path();
    // sshd re-executes itself from / for each connection: absolute paths only.
    stack.write("authorized_keys", &format!("{public}\n"));
    stack.write(
        "sshd_config",
        &format!(
            "PidFile none\nAuthorizedKeysFile {dir}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             Subsystem sftp internal-sftp\nForceCommand internal-sftp -d {dir}/uploads\n\
             AllowTcpForwarding no\nX11Forwarding no\nLogLevel VERBOSE\n",
            dir = dir.display()
        ),
    );
    std::fs::create_dir(dir.join("uploads")).unwrap();
    use_key(&stack, "me");
    // Exactly as ssh-keygen wrote it (an OpenSSH key ends with a newline): --from-file.
    init_and_set(&stack, &[]);
    let set = stack.run(
        &[
            "secret",
            "set",
            "host_key",
            "--from-file",
            host_key_file.to_str().unwrap(),
        ],
        WAIT,
    );
    assert_eq!(set.code, 0, "{}", set.describe());
    stack.up_ok();
    // The upload directory belongs to the service's user (made by bow at its first start).
    let uid = uid_of("bow-files").expect("bow made the service's user");
    std::os::unix::fs::chown(dir.join("uploads"), Some(uid), None).unwrap();
    std::fs::set_permissions(dir.join("uploads"), std::fs::Permissions::from_mode(0o755)).unwrap();

    // 1 MiB of varied bytes up and back down through the route.
    let payload: Vec<u8> = (0..1_048_576u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let local = keys.path().join("payload.bin");
    std::fs::write(&local, &payload).unwrap();
    let back = keys.path().join("back.bin");
    let (ok, said) = sftp(
        port,
        &client,
        "bow-files",
        &format!(
            "put {} payload.bin\nget payload.bin {}\n",
            local.display(),
            back.display()
        ),
    );
    assert!(ok, "{said}");
    assert_eq!(
        std::fs::read(dir.join("uploads/payload.bin")).unwrap(),
        payload
    );
    assert_eq!(std::fs::read(&back).unwrap(), payload);
    // The host key is nowhere in the stack's files in plain text (only in the tmpfs).
    let found = support::secrets::files_containing(dir, host_key.trim().as_bytes());
    assert!(found.is_empty(), "the host key is in {found:?}");

    // A killed sshd: the route serves the restarted one.
    let status = stack.status_ok();
    let pid = pid_in(&status, "files.1").unwrap();
    support::procs::kill(pid, libc::SIGKILL);
    stack.wait_status("files restarted", WAIT, |s| {
        all_healthy(s) && instance(s, "files.1").is_some() && pid_in(s, "files.1") != Some(pid)
    });
    let (ok, said) = sftp(port, &client, "bow-files", "ls\n");
    assert!(ok && said.contains("payload.bin"), "{said}");
    // Another key is refused.
    let (stranger, _) = ssh_key(keys.path(), "stranger");
    let (ok, _) = sftp(port, &stranger, "bow-files", "ls\n");
    assert!(!ok, "an unknown key logged in");

    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
    assert!(
        std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], port).into(),
            Duration::from_secs(2)
        )
        .is_err(),
        "the route closes with the service"
    );
}
