//! Debian's Pebble (a test ACME CA) and pebble-challtestsrv (its DNS: every name is
//! 127.0.0.1) on free loopback ports, validating against the edge's own HTTP and HTTPS ports.
//! Stopped (by PID) when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::procs::free_port;

pub struct Pebble {
    pub dir: tempfile::TempDir,
    /// `https://127.0.0.1:PORT/dir`.
    pub directory: String,
    /// The CA certificate of Pebble's own HTTPS endpoint (for `directory_ca`).
    pub server_ca: PathBuf,
    management: u16,
    pebble: Option<Child>,
    dns: Child,
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pebble {
    /// Starts both; Pebble validates HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`.
    pub fn start(http_port: u16, tls_port: u16) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        // Pebble's own HTTPS: a leaf for localhost/127.0.0.1 signed by a CA made here (a
        // self-signed CA certificate cannot be a server's certificate for rustls).
        let path = |name: &str| dir.path().join(name);
        let (ca, ca_key, cert, key) = (
            path("ca.pem"),
            path("ca.key"),
            path("cert.pem"),
            path("key.pem"),
        );
        let openssl = |args: &[&str]| {
            let made = Command::new("openssl")
                .current_dir(dir.path())
                .args(args)
                .stderr(Stdio::null())
                .status()
                .expect("openssl");
            assert!(made.success(), "openssl {args:?}");
        };
        std::fs::write(
            path("leaf.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=pebble test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ]);
        let _ = &ca_key;
        let (listen, management, dns) = (free_port(), free_port(), free_udp_port());
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("pebble-challtestsrv (apt-get install pebble)");
        let mut pebble = Pebble {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            server_ca: ca,
            management,
            pebble: None,
            dns: dns_server,
            dir,
        };
        pebble.pebble = Some(pebble.spawn(&config_path, dns));
        pebble.wait_answering();
        pebble
    }

    fn spawn(&self, config: &std::path::Path, dns: u16) -> Child {
        let log = |name: &str| std::fs::File::create(self.dir.path().join(name)).unwrap();
        Command::new("pebble")
            .arg("-config")
            .arg(config)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("pebble (apt-get install pebble)")
    }

    fn wait_answering(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = Command::new("curl")
                .args(["-skf", "--max-time", "2", &self.directory])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pebble does not answer: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The root that signs the certificates Pebble issues (it changes at every start).
    pub fn issuing_root(&self) -> PathBuf {
        let path = self.dir.path().join("issuing-root.pem");
        let output = Command::new("curl")
            .args(["-skf", "--max-time", "5"])
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .output()
            .expect("curl");
        assert!(output.status.success(), "roots: {}", self.logs());
        std::fs::write(&path, output.stdout).unwrap();
        path
    }

    /// Stops Pebble (the CA goes away; its DNS stays).
    pub fn stop_ca(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn logs(&self) -> String {
        ["pebble.log", "pebble.err", "challtestsrv.err"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- {name}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop_ca();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}
