//! Service discovery from a caller's side: a Python client (python3 from /usr/bin, stdlib
//! only) that runs as a bow service, so it sees what any instance sees (the names in its
//! `/etc/hosts`, the `BOW_*` variables), and calls another service by name.
//!
//! Use: put [`LoadClient::service_yaml`] in the stack, [`LoadClient::install`] the script
//! before `up`, then [`LoadClient::start`] the bounded load loop and read its counts with
//! [`LoadClient::counts`] while the test kills or deploys the callee.

use std::time::Duration;

use serde_json::Value;

use super::stack::Stack;

/// The client: waits for `go` in its working directory, then GETs `url` in a keep-alive
/// loop for `seconds` (at most 200 000 requests), and prints one line
/// `LOAD {"ok": N, "failed": N, "errors": [...], "instances": {...}}`.
/// Before that it prints `PROBE {...}`: the names it resolved, one answer per name, and the
/// `BOW_*` variables it got.
const SCRIPT: &str = r#"
import http.client, json, os, socket, sys, time, urllib.parse, urllib.request
urls, seconds = sys.argv[1].split(","), float(sys.argv[2])

def get(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, json.loads(response.read())

probe = {"env": {k: v for k, v in os.environ.items() if k.startswith("BOW_")}, "answers": {}}
for url in urls:
    host = urllib.parse.urlsplit(url).hostname
    try:
        probe["answers"][url] = {"address": socket.gethostbyname(host), "answer": get(url)[1]}
    except Exception as error:
        probe["answers"][url] = {"error": repr(error)}
print("PROBE " + json.dumps(probe), flush=True)

deadline = time.time() + 120
while not os.path.exists("go") and time.time() < deadline:
    time.sleep(0.05)
target = urllib.parse.urlsplit(urls[0])
ok = failed = 0
errors, instances = [], {}
connection = None
end = time.time() + seconds
while time.time() < end and ok + failed < 200000:
    try:
        if connection is None:
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
        connection.request("GET", target.path or "/")
        response = connection.getresponse()
        body = response.read()
        if response.status == 200:
            ok += 1
            instance = json.loads(body).get("instance", "?")
            instances[instance] = instances.get(instance, 0) + 1
        else:
            failed += 1
            errors.append(f"status {response.status}: {body[:200]!r}")
    except Exception as error:
        failed += 1
        errors.append(repr(error))
        connection = None
    time.sleep(0.002)
print("LOAD " + json.dumps({"ok": ok, "failed": failed, "errors": errors[:10],
                            "instances": instances}), flush=True)
time.sleep(3600)
"#;

/// What the load loop counted.
#[derive(Debug, Clone)]
pub struct LoadCounts {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures.
    pub errors: Vec<String>,
    /// Answers per instance id of the callee.
    pub instances: Value,
}

/// A caller service named `name` of the stack.
pub struct LoadClient {
    pub name: String,
    /// Where it calls: the first for the load loop, each once in the probe.
    pub urls: Vec<String>,
    /// How long the load loop runs after [`LoadClient::start`].
    pub seconds: u32,
}

impl LoadClient {
    pub fn new(name: &str, urls: &[&str], seconds: u32) -> LoadClient {
        LoadClient {
            name: name.to_string(),
            urls: urls.iter().map(|u| u.to_string()).collect(),
            seconds,
        }
    }

    fn dir(&self) -> String {
        format!("{}-client", self.name)
    }

    /// The service's entry under `services:` (indented two spaces), depending on `callees`
    /// (`other` or `other, plain`): they are healthy before it starts.
    pub fn service_yaml(&self, callees: &str) -> String {
        format!(
            "  {name}:\n    command: /usr/bin/python3 -u client.py {urls} {seconds}\n    dir: ./{dir}\n    depends_on: [{callees}]\n",
            name = self.name,
            urls = self.urls.join(","),
            seconds = self.seconds,
            dir = self.dir(),
        )
    }

    /// Writes the script into the stack's directory; before `up`.
    pub fn install(&self, stack: &Stack) {
        stack.write(&format!("{}/client.py", self.dir()), SCRIPT);
    }

    /// What the client saw at start: `{"env": {...}, "answers": {url: {address, answer} |
    /// {error}}}`.
    pub fn probe(&self, stack: &Stack) -> Value {
        self.line(stack, "PROBE ", Duration::from_secs(30))
    }

    /// Starts the load loop.
    pub fn start(&self, stack: &Stack) {
        stack.write(&format!("{}/go", self.dir()), "go\n");
    }

    /// Waits for the loop's counts (it runs `seconds` after `start`).
    pub fn counts(&self, stack: &Stack) -> LoadCounts {
        let wait = Duration::from_secs(u64::from(self.seconds) + 30);
        let result = self.line(stack, "LOAD ", wait);
        LoadCounts {
            ok: result["ok"].as_u64().unwrap_or(0),
            failed: result["failed"].as_u64().unwrap_or(u64::MAX),
            errors: result["errors"]
                .as_array()
                .map(|errors| {
                    errors
                        .iter()
                        .map(|e| e.as_str().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default(),
            instances: result["instances"].clone(),
        }
    }

    fn line(&self, stack: &Stack, prefix: &str, timeout: Duration) -> Value {
        let instance = format!("{}.1", self.name);
        let lines = stack.wait_log(&instance, prefix, 1, timeout);
        let text = lines
            .iter()
            .find_map(|line| {
                line.text
                    .split_once(prefix)
                    .map(|(_, json)| json.to_string())
            })
            .expect("the line waited for");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{prefix}line {text:?}: {e}"))
    }
}
