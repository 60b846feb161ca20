//! Load through the edge while something happens: a Python client on loopback sends
//! keep-alive HTTPS GETs (bounded in time and count) and reports what it saw, including which
//! app versions answered after a moment the test marks.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::stack::Stack;

/// The client: bench/load_client.py (one copy for the tests and bench/deploy.sh).
const CLIENT: &str = include_str!("../../bench/load_client.py");

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
        Load::launch(stack, host, https_port, seconds, &ca, false)
    }

    /// [`Load::start`] naming `host` in the handshake (SNI) and verifying the edge with the CA
    /// certificate `ca` (an ACME CA's root, not bow's local CA).
    pub fn start_trusting(
        stack: &Stack,
        host: &str,
        https_port: u16,
        seconds: f64,
        ca: &str,
    ) -> Load {
        Load::launch(stack, host, https_port, seconds, ca, true)
    }

    fn launch(
        stack: &Stack,
        host: &str,
        https_port: u16,
        seconds: f64,
        ca: &str,
        sni: bool,
    ) -> Load {
        let script = stack.write("load-client.py", CLIENT);
        let marker = stack.dir.path().join("load-marker");
        let child = Command::new("python3")
            .arg(&script)
            .args([
                host,
                &https_port.to_string(),
                ca,
                &seconds.to_string(),
                marker.to_str().unwrap(),
                if sni { "sni" } else { "" },
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
