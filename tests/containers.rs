//! Container services on a real Docker Engine (Debian's docker.io, started by
//! scripts/docker.sh): start, health and the edge; a crash restarted by bow; `bow down` leaves
//! no container; a container and a process call each other by name; secrets are files at
//! /run/secrets and nowhere else; adoption after the agent is killed; the memory limit holds.

mod support;

use std::time::Duration;

use support::containers::{containers_of, docker, docker_ok, testapp_image};
use support::procs::{free_port, http_get, is_root, kill, wait_gone};
use support::stack::{Stack, WAIT, instance, pid_in, show_events};

fn curl(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
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
fn a_container_starts_turns_healthy_serves_through_the_edge_and_down_removes_it() {
    assert!(is_root(), "this test needs root");
    let image = testapp_image();
    let (http, https) = (free_port(), free_port());
    let stack = Stack::new(
        "ctr-basic",
        &format!(
            "edge: {{ http_port: {http}, https_port: {https} }}\n\
             services:\n  web:\n    image: {image}\n    replicas: 2\n    routes: [\"ctr.bow.localhost\"]\n    \
             health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n"
        ),
    );
    let status = stack.up_ok();
    for id in ["web.1", "web.2"] {
        let instance = instance(&status, id).unwrap_or_else(|| panic!("{id}: {status}"));
        assert_eq!(instance["health"], "healthy", "{instance}");
        assert_eq!(instance["kind"], "container", "{instance}");
        // Published on 127.0.0.1 for operators.
        let port = instance["port"].as_u64().unwrap() as u16;
        let (code, body) = http_get(port, "/healthz");
        assert_eq!(code, 200, "{body}");
    }
    assert_eq!(containers_of(&stack.project).len(), 2);
    let trust = stack.run(&["trust"], WAIT);
    let ca = trust.stdout.trim().to_string();
    let resolve = format!("ctr.bow.localhost:{https}:127.0.0.1");
    let (ok, body) = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        &format!("https://ctr.bow.localhost:{https}/"),
    ]);
    assert!(ok && body.contains("\"service\":\"web\""), "{body}");
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
    assert!(
        containers_of(&stack.project).is_empty(),
        "bow down left containers: {:?}",
        containers_of(&stack.project)
    );
}

fn web_stack(label: &str, replicas: u32, extra: &str) -> Stack {
    let image = testapp_image();
    Stack::new(
        label,
        &format!(
            "services:\n  web:\n    image: {image}\n    replicas: {replicas}\n    \
             health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n{extra}"
        ),
    )
}

#[test]
fn a_killed_container_is_restarted_and_a_killed_agent_adopts_them_without_duplicates() {
    assert!(is_root(), "this test needs root");
    let stack = web_stack("ctr-crash", 2, "");
    let status = stack.up_ok();
    let pid = pid_in(&status, "web.1").expect("web.1 has a pid");
    kill(pid, libc::SIGKILL);
    wait_gone(pid, WAIT);
    stack.wait_status("web.1 healthy again in a new container", WAIT, |s| {
        instance(s, "web.1")
            .is_some_and(|i| i["health"] == "healthy" && i["pid"].as_i64() != Some(pid as i64))
    });
    // Its end is seen by the engine's wait (`exited`), or — on a loaded machine — first by
    // the health checks (`unhealthy`, then a stop that finds it already gone).
    let events = stack.events();
    assert!(
        (events.iter().any(|e| e.is("exited", "web.1"))
            || events
                .iter()
                .any(|e| e.is("stopped", "web.1") && e.message.contains("already gone")))
            && events.iter().any(|e| e.is("restarted", "web.1")),
        "{}",
        show_events(&events)
    );
    // One container per instance: the killed one was started again (or removed).
    let before = containers_of(&stack.project);
    assert_eq!(before.len(), 2, "{before:?}");

    let agent = stack.agent_pid_file().expect("agent.pid");
    kill(agent, libc::SIGKILL);
    wait_gone(agent, WAIT);
    let ran = stack.up();
    assert_eq!(
        ran.code,
        0,
        "bow up -d after the agent was killed: {}",
        ran.describe()
    );
    stack.wait_status("adopted and healthy", WAIT, support::stack::all_healthy);
    let mut after = containers_of(&stack.project);
    let mut expected = before.clone();
    after.sort();
    expected.sort();
    assert_eq!(
        after,
        expected,
        "the same containers, adopted: none new, none lost\n{}",
        show_events(&stack.events())
    );
    let events = stack.events();
    for id in ["web.1", "web.2"] {
        assert!(
            events.iter().any(|e| e.is("adopted", id)),
            "no adopted event for {id}: {}",
            show_events(&events)
        );
    }
    // Output written while no agent ran still reaches bow's log.
    let port = instance(&stack.status_ok(), "web.1").unwrap()["port"]
        .as_u64()
        .unwrap() as u16;
    assert_eq!(http_get(port, "/after-adoption").0, 404);
    stack.wait_log("web.1", "GET /after-adoption 404", 1, WAIT);
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
    assert!(containers_of(&stack.project).is_empty());
}

#[test]
fn a_container_and_a_process_call_each_other_by_name() {
    assert!(
        is_root(),
        "this test needs root: names live in a mount namespace"
    );
    let image = testapp_image();
    let testapp = support::stack::testapp();
    let (api_port, front_port) = (free_port(), free_port());
    // `front` is a container whose image listens on a fixed port (80); its check calls the
    // process `api` by name. `api`'s check calls the container `front` by name.
    let stack = Stack::new(
        "ctr-names",
        &format!(
            "services:\n  front:\n    image: {image}\n    container_port: 80\n    port: {front_port}\n    replicas: 2\n    \
             health: {{ exec: \"bow-testapp fetch http://api:{api_port}/healthz\", interval: 300ms, timeout: 3s, retries: 5 }}\n  \
             api:\n    command: {testapp}\n    port: {api_port}\n    \
             health: {{ http: /healthz, interval: 200ms }}\n  \
             caller:\n    command: \"sh -c 'while true; do {testapp} fetch http://front:{front_port}/ && echo; echo FETCHED; sleep 0.3; done'\"\n    depends_on: [front]\n",
            testapp = testapp.display()
        ),
    );
    let status = stack.up_ok();
    for id in ["front.1", "front.2", "api.1", "caller.1"] {
        assert_eq!(
            instance(&status, id).unwrap()["health"],
            "healthy",
            "{status}"
        );
    }
    // The container listens on 80 inside: two replicas, no clash; env tells it its own port.
    let front = instance(&status, "front.1").unwrap();
    let endpoint = front["endpoint"].as_str().unwrap_or_default();
    assert!(endpoint.ends_with(":80"), "{front}");
    let env = docker_ok(&["exec", &container_of(&stack, "front.1"), "env"]);
    assert!(env.contains("PORT=80"), "{env}");
    assert!(env.contains(&format!("BOW_API_PORT={api_port}")), "{env}");
    let hosts = docker_ok(&[
        "exec",
        &container_of(&stack, "front.1"),
        "cat",
        "/etc/hosts",
    ]);
    assert!(
        hosts.contains(" api ") || hosts.contains("\tapi "),
        "{hosts}"
    );
    stack.down();
}

/// The container id of an instance.
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
fn secrets_are_files_in_the_container_and_nowhere_else() {
    assert!(is_root(), "this test needs root");
    let stack = web_stack(
        "ctr-secrets",
        1,
        "    user: app\n    secrets: [api_key]\n    env: { TESTAPP_ECHO_ENV: \"PORT\" }\n",
    );
    support::secrets::use_key(&stack, "ctr-secrets");
    support::secrets::init_and_set(&stack, &[("api_key", "s3cr3t-value-42")]);
    stack.up_ok();
    let id = container_of(&stack, "web.1");
    let listing = docker_ok(&["exec", &id, "ls", "-ln", "/run/secrets"]);
    assert!(
        listing.contains("-r--------") && listing.contains(" 1000 ") && listing.contains("api_key"),
        "{listing}"
    );
    let value = docker_ok(&["exec", "-u", "1000", &id, "cat", "/run/secrets/api_key"]);
    assert_eq!(value.trim(), "s3cr3t-value-42");
    // Not in the container's env, not in what the engine shows, not in bow's logs.
    let inspect = docker_ok(&["inspect", &id]);
    assert!(
        !inspect.contains("s3cr3t-value-42"),
        "docker inspect shows the secret"
    );
    let env = docker_ok(&["exec", &id, "env"]);
    assert!(!env.contains("s3cr3t-value-42"), "{env}");
    assert!(env.contains("BOW_SECRETS_DIR=/run/secrets"), "{env}");
    // A secret the program prints is redacted in bow's log.
    docker_ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "cat /run/secrets/api_key > /proc/1/fd/1",
    ]);
    stack.wait_log("web.1", "[redacted:api_key]", 1, WAIT);
    let log = std::fs::read_to_string(stack.state_dir.join("logs/web.1.log")).unwrap();
    assert!(!log.contains("s3cr3t-value-42"), "{log}");
    stack.down();
    let _ = docker;
}

#[test]
fn the_memory_limit_holds_in_a_container() {
    assert!(is_root(), "this test needs root");
    let stack = web_stack(
        "ctr-memory",
        1,
        "    resources: { memory: 64M }\n    env: { TESTAPP_GROW_MEMORY: 8M }\n",
    );
    let ran = stack.up();
    assert_eq!(ran.code, 0, "{}", ran.describe());
    let events = stack.wait_event("oom-killed", Duration::from_secs(60), |e| {
        e.is("oom-killed", "web.1")
    });
    let oom = events.iter().find(|e| e.is("oom-killed", "web.1")).unwrap();
    assert!(oom.message.contains("memory limit"), "{oom}");
    stack.down();
}

/// A stack of 3 `web` containers behind the edge, `APP_VERSION: v1`.
fn routed_stack(label: &str, host: &str) -> (Stack, u16) {
    let image = testapp_image();
    let (http, https) = (free_port(), free_port());
    let stack = Stack::new(
        label,
        &format!(
            "edge: {{ http_port: {http}, https_port: {https} }}\n\
             services:\n  web:\n    image: {image}\n    replicas: 3\n    routes: [\"{host}\"]\n    \
             env: {{ APP_VERSION: v1 }}\n    \
             health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n    \
             deploy: {{ timeout: 6s, drain_timeout: 5s }}\n"
        ),
    );
    (stack, https)
}

fn set_version(stack: &Stack, env: &str) {
    let text = std::fs::read_to_string(&stack.file).unwrap();
    std::fs::write(&stack.file, text.replace("APP_VERSION: v1", env)).unwrap();
}

fn releases_running(status: &serde_json::Value) -> Vec<i64> {
    let mut releases: Vec<i64> = support::stack::instances(status)
        .iter()
        .map(|i| i["release"].as_i64().unwrap_or(-1))
        .collect();
    releases.sort();
    releases
}

#[test]
fn a_rolling_deploy_of_three_containers_under_load_fails_no_request() {
    assert!(is_root(), "this test needs root");
    let host = "ctr-roll.bow.localhost";
    let (stack, https) = routed_stack("ctr-roll", host);
    stack.up_ok();
    let load = support::load::Load::start(&stack, host, https, 12.0);
    std::thread::sleep(Duration::from_secs(2));
    set_version(&stack, "APP_VERSION: v2");
    let ran = stack.run(&["apply", "--yes"], Duration::from_secs(90));
    assert_eq!(ran.code, 0, "apply failed: {}", ran.describe());
    assert!(
        ran.output().contains("web: release 2 live (rolling"),
        "{}",
        ran.output()
    );
    load.mark();
    assert_eq!(releases_running(&stack.status_ok()), [2, 2, 2]);
    let report = load.finish();
    assert!(
        report["ok"].as_u64().unwrap() > 300,
        "too few requests: {report}"
    );
    assert_eq!(
        report["failed"],
        0,
        "failed requests: {report}\n{}",
        show_events(&stack.events())
    );
    let after = report["after_mark"].as_object().unwrap();
    assert!(after.len() == 1 && after.contains_key("v2"), "{report}");
    // The replaced containers are gone: three, all of release 2.
    assert_eq!(containers_of(&stack.project).len(), 3);
    stack.down();
}

#[test]
fn a_container_release_that_fails_its_checks_is_rolled_back_under_load() {
    assert!(is_root(), "this test needs root");
    let host = "ctr-back.bow.localhost";
    let (stack, https) = routed_stack("ctr-back", host);
    stack.up_ok();
    let load = support::load::Load::start(&stack, host, https, 10.0);
    std::thread::sleep(Duration::from_secs(1));
    set_version(&stack, "APP_VERSION: v2, TESTAPP_FAIL_HEALTH: \"1\"");
    let ran = stack.run(&["apply", "--yes"], Duration::from_secs(90));
    assert_eq!(ran.code, 1, "apply must fail: {}", ran.describe());
    let out = ran.output();
    assert!(out.contains("web: release 2 FAILED"), "{out}");
    assert!(
        out.contains("rolled back: release 1 keeps serving"),
        "{out}"
    );
    load.mark();
    assert_eq!(releases_running(&stack.status_ok()), [1, 1, 1]);
    let report = load.finish();
    assert_eq!(report["failed"], 0, "failed requests: {report}");
    let versions: Vec<&String> = report["versions"].as_object().unwrap().keys().collect();
    assert_eq!(versions, ["v1"], "{report}");
    assert_eq!(
        containers_of(&stack.project).len(),
        3,
        "the failed ones are removed"
    );
    stack.down();
}

#[test]
fn a_build_service_is_built_from_its_dockerfile_and_a_changed_context_rolls_it() {
    assert!(is_root(), "this test needs root");
    let base = testapp_image();
    let port = free_port();
    let stack = Stack::new(
        "ctr-build",
        &format!(
            "services:\n  web:\n    build: {{ context: ./app, args: {{ GREETING: hello }} }}\n    port: {port}\n    \
             health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n"
        ),
    );
    stack.write(
        "app/Dockerfile",
        &format!(
            "FROM {base}\nARG GREETING\nENV APP_VERSION=b1-$GREETING\nCOPY page.txt /page.txt\n"
        ),
    );
    stack.write("app/page.txt", "one\n");
    stack.write("app/.dockerignore", "notes/\n");
    stack.write("app/notes/todo.txt", "not part of the image\n");
    let status = stack.up_ok();
    let web = instance(&status, "web.1").unwrap();
    let (code, body) = http_get(web["port"].as_u64().unwrap() as u16, "/");
    assert_eq!(code, 200);
    assert!(body.contains("b1-hello"), "{body}");
    let events = stack.events();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "built" && e.message.contains("bow-build/")),
        "{}",
        show_events(&events)
    );
    // What .dockerignore leaves out is no new code; the Dockerfile is.
    stack.write("app/notes/todo.txt", "edited\n");
    let plan = stack.run(&["plan"], WAIT);
    assert_eq!(plan.code, 0, "nothing to do: {}", plan.describe());
    stack.write(
        "app/Dockerfile",
        &format!(
            "FROM {base}\nARG GREETING\nENV APP_VERSION=b2-$GREETING\nCOPY page.txt /page.txt\n"
        ),
    );
    let ran = stack.run(&["apply", "--yes"], Duration::from_secs(120));
    assert_eq!(ran.code, 0, "{}", ran.describe());
    assert!(
        ran.output().contains("web: release 2 live"),
        "{}",
        ran.output()
    );
    let status = stack.status_ok();
    let web = support::stack::instances(&status)[0].clone();
    let (_, body) = http_get(web["port"].as_u64().unwrap() as u16, "/");
    assert!(body.contains("b2-hello"), "{body}");
    stack.down();
}

#[test]
fn without_an_engine_plan_names_the_socket_and_only_the_container_services_fail() {
    let image = "shop-web:1.0";
    let stack = Stack::new(
        "ctr-noengine",
        &format!(
            "services:\n  web:\n    image: {image}\n    replicas: 1\n  worker:\n    command: {{testapp}}\n"
        ),
    );
    stack.set_env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let plan = stack.run(&["plan"], WAIT);
    assert_eq!(plan.code, 2, "{}", plan.describe());
    assert!(
        plan.stdout
            .contains("no container engine at unix:///nonexistent/docker.sock")
            && plan.stdout.contains("web cannot start")
            && !plan.stdout.contains("worker cannot start"),
        "{}",
        plan.stdout
    );
    // The process service runs; the container service says why it cannot.
    let ran = stack.up();
    assert_ne!(ran.code, 0, "{}", ran.describe());
    let status = stack.wait_status("worker healthy", WAIT, |s| {
        instance(s, "worker.1").is_some_and(|i| i["health"] == "healthy")
    });
    let web = instance(&status, "web.1").unwrap();
    assert!(
        web["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no container engine at unix:///nonexistent/docker.sock")),
        "{web}"
    );
    stack.down();
}

#[test]
fn a_named_volume_keeps_its_data_across_deploys_and_down_and_only_volume_rm_deletes_it() {
    assert!(is_root(), "this test needs root");
    let stack = web_stack(
        "ctr-volume",
        1,
        "    volumes: [\"uploads:/data\"]\n    env: { APP_VERSION: v1 }\n",
    );
    stack.up_ok();
    docker_ok(&[
        "exec",
        &container_of(&stack, "web.1"),
        "sh",
        "-c",
        "echo kept > /data/file",
    ]);
    // A new release (env change) runs a new container on the same volume.
    let text = std::fs::read_to_string(&stack.file).unwrap();
    std::fs::write(
        &stack.file,
        text.replace("APP_VERSION: v1", "APP_VERSION: v2"),
    )
    .unwrap();
    let ran = stack.run(&["apply", "--yes"], Duration::from_secs(90));
    assert_eq!(ran.code, 0, "{}", ran.describe());
    let read = |stack: &Stack| {
        let status = stack.status_ok();
        let id = support::stack::instances(&status)[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        docker_ok(&["exec", &container_of(stack, &id), "cat", "/data/file"])
    };
    assert_eq!(read(&stack).trim(), "kept");
    // In use: refused.
    let rm = stack.run(&["volume", "rm", "uploads", "--yes"], WAIT);
    assert_eq!(rm.code, 1, "{}", rm.describe());
    assert!(rm.stderr.contains("in use"), "{}", rm.describe());
    // down keeps it; up finds the data.
    assert_eq!(stack.down().code, 0);
    let ls = stack.run(&["volume", "ls"], WAIT);
    assert!(
        ls.stdout.contains("uploads") && ls.stdout.contains("web"),
        "{}",
        ls.describe()
    );
    stack.up_ok();
    assert_eq!(read(&stack).trim(), "kept");
    assert_eq!(stack.down().code, 0);
    // Without --yes and without a terminal: refused, kept.
    let rm = stack.run(&["volume", "rm", "uploads"], WAIT);
    assert_eq!(rm.code, 1, "{}", rm.describe());
    let rm = stack.run(&["volume", "rm", "uploads", "--yes"], WAIT);
    assert_eq!(rm.code, 0, "{}", rm.describe());
    let ls = stack.run(&["volume", "ls", "--output", "json"], WAIT);
    assert_eq!(ls.stdout.trim(), "[]", "{}", ls.describe());
}

/// A registry of the test's own (Debian's docker-registry) with htpasswd logins, on loopback
/// (which the engine treats as an insecure registry), killed when dropped.
struct Registry {
    child: std::process::Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn registry(user: &str, password: &str) -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let htpasswd = std::process::Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .expect("htpasswd (apache2-utils)");
    std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).unwrap();
    let config = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\nhttp:\n  addr: 127.0.0.1:{port}\n\
         auth:\n  htpasswd:\n    realm: bow-test\n    path: {root}/htpasswd\n",
        root = dir.path().display()
    );
    std::fs::write(dir.path().join("config.yml"), config).unwrap();
    let child = std::process::Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("docker-registry");
    let address = format!("127.0.0.1:{port}");
    support::procs::wait_for("the registry to listen", WAIT, || {
        std::net::TcpStream::connect(&address).is_ok()
    });
    Registry {
        child,
        address,
        _dir: dir,
    }
}

#[test]
fn an_image_is_pulled_with_the_registry_login_from_a_bow_secret() {
    assert!(is_root(), "this test needs root");
    let registry = registry("deploy-bot", "right-token");
    // Push the test image there with the docker CLI (its own config dir), then drop the tag.
    let pushed = format!("{}/bow-test/pulled:1", registry.address);
    let cli_config = tempfile::tempdir().unwrap();
    let host = support::containers::docker_host();
    let docker_cli = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut child = std::process::Command::new("/usr/bin/docker")
            .env("DOCKER_CONFIG", cli_config.path())
            .args(["-H", &host])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    docker_cli(&["tag", &testapp_image(), &pushed], None);
    docker_cli(
        &[
            "login",
            &registry.address,
            "-u",
            "deploy-bot",
            "--password-stdin",
        ],
        Some("right-token"),
    );
    docker_cli(&["push", &pushed], None);
    docker_cli(&["rmi", &pushed], None);
    let stack = Stack::new(
        "ctr-pull",
        &format!(
            "registries:\n  \"{}\": {{ username: deploy-bot, password_secret: registry_token }}\n\
             services:\n  web:\n    image: {pushed}\n    \
             health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n",
            registry.address
        ),
    );
    support::secrets::use_key(&stack, "ctr-pull");
    support::secrets::init_and_set(&stack, &[("registry_token", "wrong-token")]);
    // A wrong token: the start fails naming the image, and nothing else of the login shows.
    let ran = stack.up();
    assert_ne!(ran.code, 0, "{}", ran.describe());
    let status = stack.wait_status("web.1 failed", WAIT, |s| {
        instance(s, "web.1").is_some_and(|i| {
            i["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("could not be pulled"))
        })
    });
    let error = instance(&status, "web.1").unwrap()["last_error"].to_string();
    assert!(
        error.contains(&pushed) && !error.contains("wrong-token"),
        "{error}"
    );
    // The right token: the next retry pulls and runs it.
    let set = support::secrets::run_with_stdin(
        &stack,
        &["secret", "set", "registry_token"],
        b"right-token",
    );
    assert_eq!(set.code, 0, "{}", set.describe());
    stack.wait_status(
        "web.1 healthy after the pull",
        Duration::from_secs(60),
        |s| instance(s, "web.1").is_some_and(|i| i["health"] == "healthy"),
    );
    let events = stack.events();
    assert!(!format!("{events:?}").contains("right-token"));
    stack.down();
    let _ = docker(&["rmi", &pushed]);
}
