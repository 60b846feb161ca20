//! Load through the edge while something happens: a Python client on loopback sends
//! keep-alive HTTPS GETs (bounded in time and count) and reports what it saw, including which
//! app versions answered after a moment the test marks.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::stack::Stack;

/// A Python client on loopback: keep-alive HTTPS GETs for `seconds`, counting failures and,
/// after the time written in the marker file, the `version` of each answer.
const CLIENT: &str = r#"
import http.client, json, os, ssl, sys, time
host, port, ca, seconds, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]
# SNI 127.0.0.1 gets the edge's default leaf (valid for 127.0.0.1); Host picks the route.
context = ssl.create_default_context(cafile=ca)
ok = failed = 0
errors = []
seen = []
connection = None
end = time.time() + seconds
while time.time() < end and ok + failed < 200000:
    try:
        if connection is None:
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
        connection.request("GET", "/", headers={"Host": host})
        response = connection.getresponse()
        body = response.read()
        if response.status == 200:
            ok += 1
            try:
                seen.append((time.time(), json.loads(body).get("version", "?")))
            except ValueError:
                seen.append((time.time(), "?"))
        else:
            failed += 1
            errors.append(f"status {response.status}: {body[:200]!r}")
    except Exception as error:
        failed += 1
        errors.append(repr(error))
        connection = None
    time.sleep(0.002)
after = {}
if os.path.exists(marker):
    mark = float(open(marker).read())
    for at, version in seen:
        if at > mark:
            after[version] = after.get(version, 0) + 1
versions = {}
for _, version in seen:
    versions[version] = versions.get(version, 0) + 1
print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:10], "versions": versions,
                  "after_mark": after, "seconds": seconds}))
"#;

/// A running load client.
pub struct Load {
    child: Child,
    marker: PathBuf,
}

impl Load {
    /// Starts the client against the edge's HTTPS port with `host` as the Host header.
    pub fn start(stack: &Stack, host: &str, https_port: u16, seconds: f64) -> Load {
        let ca = stack
            .run(&["trust"], super::stack::WAIT)
            .stdout
            .trim()
            .to_string();
        let script = stack.write("load-client.py", CLIENT);
        let marker = stack.dir.path().join("load-marker");
        let child = Command::new("python3")
            .arg(&script)
            .args([
                host,
                &https_port.to_string(),
                &ca,
                &seconds.to_string(),
                marker.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        Load { child, marker }
    }

    /// From now on, answers count in `after_mark`.
    pub fn mark(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        std::fs::write(&self.marker, now.to_string()).unwrap();
    }

    /// Waits for the client to finish; its JSON report.
    pub fn finish(self) -> serde_json::Value {
        let output = self.child.wait_with_output().expect("load client");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        println!("load: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("client JSON ({e}): {text}"))
    }
}
