//! Service discovery: a Python client service calls `http://other:PORT/` by name (and as
//! `other.<project>.internal`) and gets the answer, has the `BOW_OTHER_*` variables, the
//! internal address shows in `bow status`, a service added later resolves in the running
//! client, addresses survive down/up, and SIGKILLs of `other`'s instances while the client
//! loops fail none of its requests.

mod support;

use std::time::Duration;

use support::discovery::LoadClient;
use support::procs::{free_port, is_root};
use support::stack::{Stack, WAIT, pid_in};

/// `other` (3 testapp instances, port `port`), `extra` services and the client `caller`
/// (depending on `callees`), made by `client` from the project's name.
fn stack(
    label: &str,
    port: u16,
    extra: &str,
    callees: &str,
    client: impl FnOnce(&str) -> LoadClient,
) -> (Stack, LoadClient) {
    let stack = Stack::new(label, "");
    let client = client(&stack.project);
    let yaml = format!(
        "project: {}\nservices:\n  other:\n    command: {}\n    replicas: 3\n    port: {port}\n    \
         health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n    \
         deploy: {{ drain_timeout: 5s }}\n{}{}",
        stack.project,
        support::stack::testapp().display(),
        extra.replace("{testapp}", support::stack::testapp().to_str().unwrap()),
        client.service_yaml(callees)
    );
    std::fs::write(&stack.file, yaml).unwrap();
    client.install(&stack);
    (stack, client)
}

#[test]
fn a_client_calls_other_by_name_and_gets_the_answer() {
    assert!(
        is_root(),
        "this test needs root: names live in a mount namespace"
    );
    let port = free_port();
    // `plain` has a tcp health check: discovery forwards TCP to it.
    let plain_port = free_port();
    let plain = format!(
        "  plain:\n    command: {{testapp}}\n    port: {plain_port}\n    \
         health: {{ tcp: true, interval: 200ms }}\n"
    );
    let (stack, client) = stack("disc-names", port, &plain, "other, plain", |project| {
        let by_name = format!("http://other:{port}/");
        let internal = format!("http://other.{project}.internal:{port}/");
        let tcp = format!("http://plain:{plain_port}/");
        LoadClient::new("caller", &[&by_name, &internal, &tcp], 1)
    });
    let status = stack.up_ok();

    // bow status shows the internal address.
    let discovery = &status["discovery"];
    let other = discovery
        .as_array()
        .and_then(|entries| entries.iter().find(|e| e["service"] == "other"))
        .unwrap_or_else(|| panic!("no discovery entry for other: {status:#}"));
    let address = other["address"].as_str().unwrap().to_string();
    let (ip, listed_port) = address.rsplit_once(':').unwrap();
    assert_eq!(listed_port, port.to_string());
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    assert!(
        ip.octets()[0] == 127 && (64..128).contains(&ip.octets()[1]),
        "{ip} is not in 127.64.0.0/10"
    );
    assert_eq!(other["protocol"], "http");
    let text = stack.run(&["status"], WAIT).stdout;
    assert!(
        text.contains(&format!(
            "other  http://{address}  other, other.{}.internal",
            stack.project
        )),
        "{text}"
    );

    // The client resolved both names to that address and got testapp's answer through it.
    let probe = client.probe(&stack);
    eprintln!("{text}\ncaller saw: {probe:#}");
    for url in &client.urls[..2] {
        let answer = &probe["answers"][url];
        assert_eq!(answer["address"], ip.to_string(), "{url}: {probe:#}");
        assert_eq!(answer["answer"]["service"], "other", "{url}: {probe:#}");
        let instance_id = answer["answer"]["instance"].as_str().unwrap_or_default();
        assert!(instance_id.starts_with("other."), "{url}: {probe:#}");
    }

    // Through TCP forwarding to the service with a tcp check.
    let plain_answer = &probe["answers"][&client.urls[2]];
    assert_eq!(plain_answer["answer"]["service"], "plain", "{probe:#}");
    let plain_entry = status["discovery"]
        .as_array()
        .and_then(|entries| entries.iter().find(|e| e["service"] == "plain"))
        .unwrap_or_else(|| panic!("no discovery entry for plain: {status:#}"));
    assert_eq!(plain_entry["protocol"], "tcp");
    assert_eq!(
        probe["env"]["BOW_PLAIN_URL"],
        format!("tcp://{}", plain_entry["address"].as_str().unwrap()),
        "{probe:#}"
    );

    // The variables, as the client saw them and as its process has them.
    let env = &probe["env"];
    assert_eq!(env["BOW_OTHER_HOST"], ip.to_string(), "{probe:#}");
    assert_eq!(env["BOW_OTHER_PORT"], port.to_string(), "{probe:#}");
    assert_eq!(
        env["BOW_OTHER_URL"],
        format!("http://{address}"),
        "{probe:#}"
    );
    let pid = pid_in(&stack.status_ok(), "caller.1").expect("caller pid");
    let process = support::procs::process(pid).expect("caller process");
    assert_eq!(
        process.env("BOW_OTHER_URL"),
        Some(format!("http://{address}").as_str())
    );

    // The host's own /etc/hosts is untouched: the names live in the instances' namespaces.
    let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap();
    assert!(!host_hosts.contains(&format!("other.{}.internal", stack.project)));
    let caller_hosts = || std::fs::read_to_string(format!("/proc/{pid}/root/etc/hosts")).unwrap();
    assert!(
        caller_hosts().contains(&format!("{ip}\tother other.{}.internal\n", stack.project)),
        "{}",
        caller_hosts()
    );

    // A service added later: the running caller (not restarted) resolves it at once.
    let late_port = free_port();
    let mut yaml = std::fs::read_to_string(&stack.file).unwrap();
    yaml.push_str(&format!(
        "  late:\n    command: {}\n    port: {late_port}\n    health: {{ http: /healthz, interval: 200ms }}\n",
        support::stack::testapp().display()
    ));
    std::fs::write(&stack.file, yaml).unwrap();
    let status = stack.up_ok();
    assert_eq!(
        pid_in(&status, "caller.1"),
        Some(pid),
        "the caller was restarted"
    );
    let late = status["discovery"]
        .as_array()
        .and_then(|entries| entries.iter().find(|e| e["service"] == "late"))
        .unwrap_or_else(|| panic!("no discovery entry for late: {status:#}"));
    let late_ip = late["address"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .0;
    assert!(
        caller_hosts().contains(&format!(
            "{late_ip}\tlate late.{}.internal\n",
            stack.project
        )),
        "{}",
        caller_hosts()
    );
    assert!(
        caller_hosts().starts_with(&host_hosts),
        "{}",
        caller_hosts()
    );

    // Addresses never move: the same after down and up again.
    let down = stack.down();
    assert_eq!(down.code, 0, "bow down: {}", down.describe());
    let again = stack.up_ok();
    let entry = |status: &serde_json::Value, name: &str| {
        status["discovery"]
            .as_array()
            .and_then(|entries| entries.iter().find(|e| e["service"] == name))
            .map(|e| e["address"].clone())
    };
    assert_eq!(entry(&again, "other").unwrap(), address.as_str());
    assert_eq!(entry(&again, "late"), entry(&status, "late"));
}

#[test]
fn killing_instances_of_the_callee_fails_no_request_of_the_caller() {
    assert!(
        is_root(),
        "this test needs root: names live in a mount namespace"
    );
    let port = free_port();
    let (stack, client) = stack("disc-kill", port, "", "other", |_| {
        LoadClient::new("caller", &[&format!("http://other:{port}/")], 12)
    });
    stack.up_ok();
    let probe = client.probe(&stack);
    assert!(
        probe["answers"][&client.urls[0]]["answer"]["service"] == "other",
        "the caller cannot reach other by name: {probe:#}"
    );
    client.start(&stack);
    std::thread::sleep(Duration::from_millis(1000));
    // Kill one of the three instances, wait until all are healthy again, three times over.
    stack.kill_instances_in_turn("other", 3, 3);
    let counts = client.counts(&stack);
    eprintln!("caller: {counts:?}");
    assert!(counts.ok > 300, "too few requests: {counts:?}");
    assert_eq!(
        counts.failed, 0,
        "failed requests of the caller: {counts:?}"
    );
    let answered = counts.instances.as_object().map_or(0, |o| o.len());
    assert_eq!(
        answered, 3,
        "requests were not spread over the instances: {counts:?}"
    );
}

#[test]
fn a_rolling_deploy_of_the_callee_fails_no_request_of_the_caller() {
    assert!(
        is_root(),
        "this test needs root: names live in a mount namespace"
    );
    let port = free_port();
    let (stack, client) = stack("disc-deploy", port, "", "other", |_| {
        LoadClient::new("caller", &[&format!("http://other:{port}/")], 12)
    });
    // The client writes into its own dir: a fixed code version keeps it out of the deploy.
    let with_version = |args: &[&str]| {
        let mut command = stack.command(args);
        command.env("BOW_CODE_VERSION", "test");
        support::stack::run_for(&mut command, Duration::from_secs(90))
    };
    let up = with_version(&["up", "-d"]);
    assert_eq!(up.code, 0, "{}", up.describe());
    stack.wait_status("all healthy", WAIT, support::stack::all_healthy);
    client.probe(&stack);
    client.start(&stack);
    std::thread::sleep(Duration::from_millis(1000));
    let text = std::fs::read_to_string(&stack.file).unwrap();
    std::fs::write(
        &stack.file,
        text.replace(
            "    replicas: 3\n    port:",
            "    replicas: 3\n    env: { APP_VERSION: v2 }\n    port:",
        ),
    )
    .unwrap();
    let apply = with_version(&["apply", "--yes"]);
    assert_eq!(apply.code, 0, "{}", apply.describe());
    assert!(
        apply.stdout.contains("other: release 2 live (rolling"),
        "{}",
        apply.describe()
    );
    assert!(
        !apply.stdout.contains("caller: release"),
        "{}",
        apply.stdout
    );
    let counts = client.counts(&stack);
    eprintln!("caller: {counts:?}");
    assert!(counts.ok > 300, "too few requests: {counts:?}");
    assert_eq!(
        counts.failed, 0,
        "failed requests of the caller during the deploy: {counts:?}"
    );
}
