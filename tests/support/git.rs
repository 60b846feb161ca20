//! Git for the continuous-deployment tests: a stack whose directory is a work tree of `main`
//! tracking a bare origin, a developer's clone that pushes, and git servers that need
//! credentials — Debian's sshd (a deploy key, git-shell) and nginx with fcgiwrap running
//! git-http-backend behind TLS and basic auth (a token) — on free loopback ports, stopped by
//! PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::procs::free_port;
use super::stack::Stack;

pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=dev", "-c", "user.email=dev@example.com"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The stack (its directory a work tree of `main` tracking a bare origin), a developer's
/// clone, and the edge's HTTPS port.
pub fn repo(label: &str, host: &str) -> (Stack, tempfile::TempDir, u16) {
    let (http, https) = (free_port(), free_port());
    let yaml = format!(
        "edge: {{ http_port: {http}, https_port: {https} }}\n\
         services:\n  web:\n    command: {{testapp}}\n    replicas: 2\n    routes: [\"{host}\"]\n    \
         env: {{ APP_VERSION: v1 }}\n    \
         health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n    \
         deploy: {{ timeout: 5s, drain_timeout: 3s }}\n"
    );
    let stack = Stack::new(label, &yaml);
    let work = stack.dir.path();
    std::fs::write(work.join(".gitignore"), "state/\n").unwrap();
    let others = tempfile::tempdir().unwrap();
    let bare = others.path().join("origin.git");
    git(
        others.path(),
        &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
    );
    git(work, &["init", "-q", "-b", "main"]);
    git(work, &["add", "bow.yaml", ".gitignore"]);
    git(work, &["commit", "-q", "-m", "v1"]);
    git(work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    git(work, &["push", "-q", "-u", "origin", "main"]);
    git(
        others.path(),
        &["clone", "-q", bare.to_str().unwrap(), "dev"],
    );
    (stack, others, https)
}

/// The developer changes `from` into `to` in bow.yaml, commits and pushes.
pub fn push(dev: &Path, from: &str, to: &str, message: &str) {
    let file = dev.join("bow.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(from), "{text}");
    std::fs::write(&file, text.replace(from, to)).unwrap();
    git(dev, &["commit", "-q", "-am", message]);
    git(dev, &["push", "-q", "origin", "main"]);
}

/// `program args…` in `dir`, which must succeed; its stdout.
fn run_ok(dir: &Path, program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn wait_listening(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} ended before listening: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} is not listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A git server on loopback: the URL of its repository `origin.git` (a copy of `bare`).
pub struct GitServer {
    pub dir: tempfile::TempDir,
    pub url: String,
    /// What a client must hold: the private key's text (SSH) or the token (HTTPS).
    pub credential: String,
    /// The server's CA certificate (HTTPS).
    pub ca: Option<PathBuf>,
    children: Vec<Child>,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An SSH key pair made here: (private key path, public key text).
pub fn ssh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    run_ok(
        dir,
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            name,
            "-f",
            path.to_str().unwrap(),
        ],
    );
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public.trim().to_string())
}

impl GitServer {
    /// Debian's sshd on a free loopback port, allowing only a deploy key made here, which
    /// gets git-shell (fetch and push, nothing else). Serves `bare` in place.
    pub fn ssh(bare: &Path) -> GitServer {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (host_key, _) = ssh_key(d, "host_key");
        let (deploy, public) = ssh_key(d, "deploy");
        std::fs::write(
            d.join("authorized_keys"),
            format!("restrict,command=\"/usr/bin/git-shell -c \\\"$SSH_ORIGINAL_COMMAND\\\"\" {public}\n"),
        )
        .unwrap();
        let port = free_port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\n\
                 AuthorizedKeysFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
                host_key.display(),
                d.join("sshd.pid").display(),
                d.join("authorized_keys").display(),
            ),
        )
        .unwrap();
        // Privilege separation needs its empty directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let mut child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
            .spawn()
            .expect("/usr/sbin/sshd (Debian's openssh-server) runs");
        wait_listening(port, "sshd", &mut child);
        GitServer {
            url: format!("ssh://root@127.0.0.1:{port}{}", bare.display()),
            credential: std::fs::read_to_string(deploy).unwrap(),
            ca: None,
            children: vec![child],
            dir,
        }
    }

    /// nginx (TLS with a certificate made here, basic auth for `x-access-token` with a
    /// token made here) in front of fcgiwrap running git-http-backend over `bare`'s parent.
    pub fn https(bare: &Path) -> GitServer {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let token = format!(
            "tok-{}",
            std::process::id() as u64 * 7919 + free_port() as u64
        );
        let htpasswd = run_ok(d, "htpasswd", &["-nbB", "x-access-token", &token]);
        std::fs::write(d.join("htpasswd"), htpasswd).unwrap();
        run_ok(
            d,
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ],
        );
        std::fs::create_dir_all(d.join("tmp")).unwrap();
        let socket = d.join("fcgi.sock");
        let mut fcgi = Command::new("/usr/sbin/fcgiwrap")
            .arg("-s")
            .arg(format!("unix:{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("fcgiwrap.log")).unwrap())
            .spawn()
            .expect("/usr/sbin/fcgiwrap (Debian's fcgiwrap) runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(fcgi.try_wait().unwrap().is_none(), "fcgiwrap ended");
            assert!(Instant::now() < deadline, "fcgiwrap made no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        let port = free_port();
        let root = bare.parent().unwrap();
        let p = |name: &str| d.join(name).display().to_string();
        std::fs::write(
            d.join("nginx.conf"),
            format!(
                "daemon off; user root; worker_processes 1; pid {pid}; error_log {err};\n\
                 events {{}}\n\
                 http {{\n access_log {access};\n client_body_temp_path {tmp}; fastcgi_temp_path {tmp};\n\
                 proxy_temp_path {tmp}; scgi_temp_path {tmp}; uwsgi_temp_path {tmp};\n\
                 server {{\n  listen 127.0.0.1:{port} ssl;\n  ssl_certificate {cert};\n  ssl_certificate_key {key};\n\
                 location / {{\n   auth_basic git; auth_basic_user_file {htpasswd};\n\
                 include /etc/nginx/fastcgi_params;\n\
                 fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;\n\
                 fastcgi_param GIT_PROJECT_ROOT {root};\n   fastcgi_param GIT_HTTP_EXPORT_ALL \"\";\n\
                 fastcgi_param PATH_INFO $uri;\n   fastcgi_param REMOTE_USER $remote_user;\n\
                 fastcgi_pass unix:{socket};\n  }}\n }}\n}}\n",
                pid = p("nginx.pid"),
                err = p("error.log"),
                access = p("access.log"),
                tmp = p("tmp"),
                cert = p("cert.pem"),
                key = p("key.pem"),
                htpasswd = p("htpasswd"),
                root = root.display(),
                socket = socket.display(),
            ),
        )
        .unwrap();
        let mut nginx = Command::new("/usr/sbin/nginx")
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/sbin/nginx (Debian's nginx) runs");
        wait_listening(port, "nginx", &mut nginx);
        GitServer {
            url: format!(
                "https://127.0.0.1:{port}/{}",
                bare.file_name().unwrap().to_str().unwrap()
            ),
            credential: token,
            ca: Some(d.join("cert.pem")),
            children: vec![nginx, fcgi],
            dir,
        }
    }
}

/// The bare repository behind the stack's origin (set up by [`repo`]).
pub fn origin_of(stack: &Stack) -> PathBuf {
    PathBuf::from(git(stack.dir.path(), &["remote", "get-url", "origin"]))
}
