//! The container tests' engine and images: the engine `DOCKER_HOST` names (scripts/test.sh
//! starts one of the tests' own with scripts/docker.sh) and test images built here from a
//! rootfs (busybox-static plus bow-testapp and the libraries it links), since no registry is
//! reachable. The docker CLI is used only to set tests up and to look from the outside.

use std::path::Path;
use std::process::{Command, Output};

/// The engine's socket; set for the whole test process (the `bow` commands inherit it).
pub fn docker_host() -> String {
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        return host;
    }
    let socket = "/var/tmp/bow-test-docker/docker.sock";
    assert!(
        Path::new(socket).exists(),
        "the container tests need an engine: run `bash scripts/docker.sh start` (scripts/test.sh does)"
    );
    let host = format!("unix://{socket}");
    // SAFETY: set before any thread of this test process reads the environment.
    unsafe { std::env::set_var("DOCKER_HOST", &host) };
    host
}

/// Podman's Docker-compatible service of the tests (scripts/podman.sh).
pub fn podman_host() -> String {
    let host = std::env::var("BOW_TEST_PODMAN_HOST")
        .unwrap_or_else(|_| "unix:///var/tmp/bow-test-podman/podman.sock".to_string());
    assert!(
        Path::new(host.trim_start_matches("unix://")).exists(),
        "the podman tests need podman's API service: run `bash scripts/podman.sh start` (scripts/test.sh does)"
    );
    host
}

/// `docker ARGS` against the tests' engine.
pub fn docker(args: &[&str]) -> Output {
    docker_on(&docker_host(), args)
}

/// `docker ARGS` against the engine at `host` (Docker's CLI speaks to Podman's API too).
pub fn docker_on(host: &str, args: &[&str]) -> Output {
    Command::new("/usr/bin/docker")
        .args(["-H", host])
        .args(args)
        .output()
        .expect("run /usr/bin/docker")
}

/// `docker ARGS`, which must succeed; its stdout.
pub fn docker_ok(args: &[&str]) -> String {
    docker_ok_on(&docker_host(), args)
}

/// `docker ARGS` against `host`, which must succeed; its stdout.
pub fn docker_ok_on(host: &str, args: &[&str]) -> String {
    let output = docker_on(host, args);
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// An image that runs bow-testapp (`CMD ["/usr/local/bin/bow-testapp"]`), with busybox for
/// shell commands and a user `app` (uid 1000); tagged by the testapp binary's digest, made
/// once for all test processes.
pub fn testapp_image() -> String {
    testapp_image_on(&docker_host())
}

/// [`testapp_image`] on the engine at `host`.
pub fn testapp_image_on(host: &str) -> String {
    use sha2::{Digest, Sha256};
    let testapp = super::stack::testapp();
    let binary = std::fs::read(&testapp).expect("read bow-testapp");
    let digest = Sha256::digest(&binary);
    let tag = format!(
        "bow-test/testapp:{}",
        digest[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    if docker_on(host, &["image", "inspect", &tag])
        .status
        .success()
    {
        return tag;
    }
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for dir in [
        "bin",
        "usr/local/bin",
        "etc",
        "tmp",
        "lib/x86_64-linux-gnu",
        "lib64",
        "data",
    ] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).expect("busybox-static is installed");
    for applet in [
        "sh", "cat", "ls", "echo", "sleep", "id", "wget", "nc", "env", "true", "false", "touch",
        "mkdir", "test",
    ] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(applet)).unwrap();
    }
    std::fs::copy(&testapp, r.join("usr/local/bin/bow-testapp")).unwrap();
    for library in [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/x86_64-linux-gnu/libgcc_s.so.1",
        "/lib/x86_64-linux-gnu/libm.so.6",
    ] {
        std::fs::copy(library, r.join(&library[1..])).unwrap();
    }
    std::fs::copy(
        "/lib64/ld-linux-x86-64.so.2",
        r.join("lib64/ld-linux-x86-64.so.2"),
    )
    .unwrap();
    std::fs::write(
        r.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/data:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(r.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    let tar = root.path().with_extension("tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(r)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    docker_ok_on(
        host,
        &[
            "import",
            "--change",
            r#"CMD ["/usr/local/bin/bow-testapp"]"#,
            "--change",
            "ENV PATH=/usr/local/bin:/bin",
            "--change",
            "ENV TESTAPP_HOST=0.0.0.0",
            tar.to_str().unwrap(),
            &tag,
        ],
    );
    let _ = std::fs::remove_file(&tar);
    tag
}

/// The ids of the containers of a project (any state).
pub fn containers_of(project: &str) -> Vec<String> {
    containers_of_on(&docker_host(), project)
}

/// [`containers_of`] on the engine at `host`.
pub fn containers_of_on(host: &str, project: &str) -> Vec<String> {
    docker_ok_on(
        host,
        &[
            "ps",
            "-a",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=dev.bow.scope={project}-development"),
        ],
    )
    .lines()
    .map(str::to_string)
    .collect()
}
