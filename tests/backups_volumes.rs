//! Backups of services' volumes (docs/backups.md): a process service's volume to a directory
//! store — the service is stopped for the tar and started again, the backup is verified
//! against its listing, the store holds no plaintext, a restore brings the files back exactly
//! while the service that depends on it is stopped and healthy after, a corrupted object fails
//! the drill and is refused; a container's named volume and bind mount to moto's S3 — a file
//! the container wrote comes back, a store that is down fails the run, keeps the backup before
//! and leaves the service running. Every run and restore is a `backup` event.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::containers::{docker_ok, testapp_image};
use support::procs::is_root;
use support::secrets::{files_containing, init_and_set, use_key};
use support::stack::{Stack, instance, show_events};

const LIMIT: Duration = Duration::from_secs(180);
const MARKER: &str = "volume-plaintext-marker-51c2e8";
const HEALTH: &str = "health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }";

fn bow_ok(stack: &Stack, args: &[&str]) -> String {
    let ran = stack.run(args, LIMIT);
    assert_eq!(ran.code, 0, "bow {args:?}: {}", ran.describe());
    ran.stdout
}

fn list(stack: &Stack, service: &str) -> Vec<Value> {
    let out = bow_ok(stack, &["backup", "list", service, "--output", "json"]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// A test's own directory under /srv for a process service's volume, removed when dropped.
struct HostDir(std::path::PathBuf);

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_process_volume_backs_up_restores_with_its_dependant_stopped_and_refuses_corruption() {
    assert!(is_root(), "this test needs root");
    let volume = HostDir(format!("/srv/bow-e2e-vol-{}", std::process::id()).into());
    let v = volume.0.display().to_string();
    let yaml = format!(
        "services:\n  files:\n    command: \"sh -c 'date +%s%N >> {v}/starts; exec {{testapp}}'\"\n    \
         volumes: [\"data:{v}\"]\n    {HEALTH}\n    \
         backup: {{ to: ./backups, keep: 2, check: 'test -f data/a.txt && grep -q {MARKER} data/a.txt' }}\n  \
         app:\n    command: {{testapp}}\n    depends_on: [files]\n    {HEALTH}\n"
    );
    let stack = Stack::new("bkvol", &yaml);
    use_key(&stack, "me");
    init_and_set(&stack, &[]);
    stack.up_ok();
    // bow made the volume's directory for the service's user.
    let starts = || {
        std::fs::read_to_string(volume.0.join("starts"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(starts(), 1);
    std::fs::write(volume.0.join("a.txt"), format!("{MARKER}\n")).unwrap();
    std::fs::create_dir_all(volume.0.join("sub")).unwrap();
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(volume.0.join("sub/b.bin"), &blob).unwrap();
    std::os::unix::fs::symlink("a.txt", volume.0.join("link")).unwrap();

    let run = bow_ok(&stack, &["backup", "run", "files"]);
    assert!(
        run.contains("verified") && run.contains("backup.check passed"),
        "{run}"
    );
    assert!(run.contains("the service was stopped for"), "{run}");
    // Stopped for the tar, started again after: the service started twice.
    assert_eq!(starts(), 2, "{run}");
    stack.wait_status("files healthy again", LIMIT, support::stack::all_healthy);
    let backups = list(&stack, "files");
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(backups[0]["kind"], "volumes-tar");
    assert_eq!(backups[0]["verified"], true, "{backups:?}");
    assert_eq!(backups[0]["files"], 3, "{backups:?}");
    let store = stack.dir.path().join("backups");
    assert!(files_containing(&store, MARKER.as_bytes()).is_empty());
    assert!(
        files_containing(&store, b"b.bin").is_empty(),
        "names are encrypted too"
    );
    let events = stack.events();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "backup" && e.message.starts_with("backup of files done")),
        "{}",
        show_events(&events)
    );

    // Changes after the backup; the restore takes them back.
    std::fs::remove_file(volume.0.join("a.txt")).unwrap();
    std::fs::write(volume.0.join("sub/b.bin"), b"overwritten").unwrap();
    std::fs::write(volume.0.join("new.txt"), b"written after").unwrap();
    let app_pid = support::stack::pid_in(&stack.status_ok(), "app.1").unwrap();
    let refused = stack.run(&["backup", "restore", "files"], LIMIT);
    assert_eq!(refused.code, 1, "{}", refused.describe());
    assert!(refused.stderr.contains("--yes"), "{}", refused.describe());
    let seen_before = stack.events().len();
    let restored = bow_ok(&stack, &["backup", "restore", "files", "--yes"]);
    assert!(
        restored.contains("stopped app.1, files.1") && restored.contains("restored backup"),
        "{restored}"
    );
    assert_eq!(
        std::fs::read_to_string(volume.0.join("a.txt")).unwrap(),
        format!("{MARKER}\n")
    );
    assert_eq!(std::fs::read(volume.0.join("sub/b.bin")).unwrap(), blob);
    assert!(!volume.0.join("new.txt").exists());
    assert_eq!(
        std::fs::read_link(volume.0.join("link")).unwrap(),
        std::path::Path::new("a.txt")
    );
    // The dependant was stopped during the restore (before the service) and is healthy now,
    // in a new process; the service restarted on the restored files.
    let status = stack.status_ok();
    assert!(support::stack::all_healthy(&status), "{status}");
    let app = instance(&status, "app.1").unwrap();
    assert_ne!(app["pid"].as_i64(), Some(app_pid as i64), "{app}");
    let events = stack.events();
    let during: Vec<_> = events[seen_before..].to_vec();
    let stopped = |id: &str| {
        during
            .iter()
            .position(|e| e.is("stopped", id) && e.message.contains("held"))
    };
    let (app_stop, files_stop) = (stopped("app.1"), stopped("files.1"));
    assert!(
        app_stop.is_some() && files_stop.is_some() && app_stop < files_stop,
        "{}",
        show_events(&during)
    );
    let files_start = during
        .iter()
        .position(|e| e.is("started", "files.1"))
        .unwrap();
    let app_start = during
        .iter()
        .position(|e| e.is("started", "app.1"))
        .unwrap();
    assert!(files_start < app_start, "{}", show_events(&during));
    assert!(
        during
            .iter()
            .any(|e| e.kind == "backup" && e.message.starts_with("restore of files done")),
        "{}",
        show_events(&during)
    );

    // Retention keeps exactly `keep` (2) once the new backup passed its drill.
    let first = backups[0]["id"].as_str().unwrap().to_string();
    bow_ok(&stack, &["backup", "run", "files"]);
    bow_ok(&stack, &["backup", "run", "files"]);
    let backups = list(&stack, "files");
    assert_eq!(backups.len(), 2, "{backups:?}");
    assert!(
        backups.iter().all(|b| b["id"] != first.as_str()),
        "{backups:?}"
    );

    // One byte flipped in the stored tar: the drill fails loudly, restore refuses it.
    let id = backups[1]["id"].as_str().unwrap();
    let data = store.join(format!(
        "{}-development/files/{id}/data.zst.age",
        stack.project
    ));
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&data, bytes).unwrap();
    let verify = stack.run(&["backup", "verify", "files"], LIMIT);
    assert_eq!(verify.code, 1, "{}", verify.describe());
    assert!(
        verify.stderr.contains("FAILED verification"),
        "{}",
        verify.describe()
    );
    std::fs::write(volume.0.join("new.txt"), b"written after").unwrap();
    let refused = stack.run(&["backup", "restore", "files", id, "--yes"], LIMIT);
    assert_eq!(refused.code, 1, "{}", refused.describe());
    assert!(
        refused.stderr.contains("failed its restore drill"),
        "{}",
        refused.describe()
    );
    assert!(volume.0.join("new.txt").exists(), "nothing was changed");
    assert_eq!(stack.down().code, 0);
}

fn s3_endpoint() -> String {
    std::env::var("BOW_TEST_S3").expect(
        "BOW_TEST_S3 is not set: run the tests with scripts/test.sh, which starts moto (scripts/s3.sh)",
    )
}

fn s3(method: &str, url: &str) -> (bool, Vec<u8>) {
    let output = Command::new("curl")
        .args([
            "-s",
            "-f",
            "-X",
            method,
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            "test:test",
            url,
        ])
        .output()
        .unwrap();
    (output.status.success(), output.stdout)
}

fn container_of(stack: &Stack, id: &str) -> String {
    docker_ok(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=dev.bow.scope={}-development", stack.project),
        "--filter",
        &format!("label=dev.bow.instance={id}"),
    ])
    .trim()
    .to_string()
}

#[test]
fn a_container_volume_and_bind_mount_back_up_to_s3_and_an_outage_keeps_the_service_running() {
    assert!(is_root(), "this test needs root");
    let endpoint = s3_endpoint();
    let bucket = format!("bow-e2e-vol-{}", std::process::id());
    assert!(s3("PUT", &format!("{endpoint}/{bucket}")).0, "bucket");
    let image = testapp_image();
    let yaml = format!(
        "services:\n  web:\n    image: {image}\n    \
         command: [\"/bin/sh\", \"-c\", \"echo hello >> /data/greeting; exec /usr/local/bin/bow-testapp\"]\n    \
         volumes: [\"uploads:/data\", \"./site:/site\", \"./conf:/conf:ro\"]\n    {HEALTH}\n    \
         backup: {{ to: 's3://{bucket}/vol', endpoint: '{endpoint}', region: us-east-1, access_key_secret: s3_id, secret_key_secret: s3_key, keep: 3, check: 'grep -q hello uploads/greeting' }}\n"
    );
    let stack = Stack::new("bkvols3", &yaml);
    stack.write("site/index.html", "<h1>the site</h1>\n");
    stack.write("conf/app.conf", "read only\n");
    use_key(&stack, "me");
    init_and_set(&stack, &[("s3_id", "test"), ("s3_key", "test")]);
    stack.up_ok();
    docker_ok(&[
        "exec",
        &container_of(&stack, "web.1"),
        "sh",
        "-c",
        &format!("echo {MARKER} > /data/marker"),
    ]);
    let run = bow_ok(&stack, &["backup", "run", "web"]);
    assert!(
        run.contains("2 volume(s)") && run.contains("verified"),
        "{run}"
    );
    let backups = list(&stack, "web");
    assert_eq!(backups.len(), 1, "{backups:?}");
    let names: Vec<&str> = backups[0]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["uploads", "site"],
        "a read-only mount is not backed up"
    );
    let (ok, listing) = s3("GET", &format!("{endpoint}/{bucket}?list-type=2"));
    assert!(ok);
    let listing = String::from_utf8_lossy(&listing).into_owned();
    let keys: Vec<&str> = listing
        .split("<Key>")
        .skip(1)
        .map(|k| k.split("</Key>").next().unwrap())
        .collect();
    assert_eq!(keys.len(), 4, "data, files, manifest, verify: {listing}");
    for key in &keys {
        let (ok, body) = s3("GET", &format!("{endpoint}/{bucket}/{key}"));
        assert!(ok && !body.is_empty());
        for needle in [MARKER.as_bytes(), b"the site", b"greeting"] {
            assert!(
                !support::secrets::contains(&body, needle),
                "{key} holds plaintext"
            );
        }
    }

    // Lost files in both, restored; the container runs on them.
    let container = container_of(&stack, "web.1");
    docker_ok(&["exec", &container, "/bin/busybox", "rm", "/data/marker"]);
    stack.write("site/index.html", "defaced\n");
    bow_ok(&stack, &["backup", "restore", "web", "--yes"]);
    stack.wait_status("web healthy", LIMIT, support::stack::all_healthy);
    let container = container_of(&stack, "web.1");
    let marker = docker_ok(&["exec", &container, "cat", "/data/marker"]);
    assert_eq!(marker.trim(), MARKER);
    let site = docker_ok(&["exec", &container, "cat", "/site/index.html"]);
    assert_eq!(site, "<h1>the site</h1>\n");

    // The store down: the run fails and says so, the backup before stays, and the service
    // that was stopped for the tar runs again.
    let good = std::fs::read_to_string(&stack.file).unwrap();
    std::fs::write(&stack.file, good.replace(&endpoint, "http://127.0.0.1:9")).unwrap();
    let failed = stack.run(&["backup", "run", "web"], LIMIT);
    assert_eq!(failed.code, 1, "{}", failed.describe());
    assert!(
        failed.stderr.contains("backup failed"),
        "{}",
        failed.describe()
    );
    std::fs::write(&stack.file, &good).unwrap();
    let status = stack.status_ok();
    assert!(support::stack::all_healthy(&status), "{status}");
    let backups = list(&stack, "web");
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(backups[0]["complete"], true);
    let events = stack.events();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "backup" && e.message.starts_with("backup of web FAILED")),
        "{}",
        show_events(&events)
    );
    assert_eq!(stack.down().code, 0);
    let _ = s3("DELETE", &format!("{endpoint}/{bucket}"));
}
