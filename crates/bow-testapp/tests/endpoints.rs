//! Runs the real `bow-testapp` binary and talks HTTP/1.1 to it over keep-alive connections.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TESTAPP: &str = env!("CARGO_BIN_EXE_bow-testapp");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running testapp whose stdout lines arrive on a channel; killed on drop.
struct Running {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(env: &[(&str, &str)]) -> Running {
        let port = free_port();
        let mut child = Command::new(TESTAPP)
            .env_clear()
            .env("PORT", port.to_string())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, port, lines }
    }

    fn wait_for_line(&self, wanted: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(wanted) => return line,
                Ok(_) => {}
                Err(_) => panic!("no stdout line containing {wanted:?} within 10s"),
            }
        }
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "testapp did not exit within 10s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one request on an open connection and reads the response (status, headers, body).
fn exchange(stream: &mut BufReader<TcpStream>, request: &str) -> (u16, String, String) {
    stream.get_mut().write_all(request.as_bytes()).unwrap();
    let mut status_line = String::new();
    stream.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut headers = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
        headers.push_str(&line);
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    (status, headers, String::from_utf8(body).unwrap())
}

fn connect(port: u16) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    BufReader::new(stream)
}

#[test]
fn serves_health_and_identity_over_keep_alive() {
    let app = Running::start(&[
        ("APP_VERSION", "v7"),
        ("BOW_INSTANCE", "web.0"),
        ("BOW_SERVICE", "web"),
    ]);
    let listening = app.wait_for_line("listening on");
    assert_eq!(
        listening,
        format!("listening on 127.0.0.1:{} version=v7", app.port)
    );
    let mut connection = connect(app.port);
    let (status, headers, body) =
        exchange(&mut connection, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(headers.contains("keep-alive"), "{headers}");
    let (status, _, body) = exchange(&mut connection, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    let pid = app.child.id();
    assert_eq!(
        body,
        format!(
            "{{\"version\":\"v7\",\"instance\":\"web.0\",\"service\":\"web\",\"pid\":{pid}}}\n"
        )
    );
    let (status, _, _) = exchange(
        &mut connection,
        "POST /missing HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(status, 404);
    let (status, headers, _) = exchange(
        &mut connection,
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(headers.contains("Connection: close"), "{headers}");
    app.wait_for_line("GET /healthz 200");
    app.wait_for_line("POST /missing 404");
}

#[test]
fn answers_concurrent_connections() {
    let app = Running::start(&[]);
    app.wait_for_line("listening on");
    let port = app.port;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut connection = connect(port);
                (0..20)
                    .map(|_| exchange(&mut connection, "GET /healthz HTTP/1.1\r\n\r\n").0)
                    .filter(|status| *status == 200)
                    .count()
            })
        })
        .collect();
    let answered: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(answered, 160);
}

#[test]
fn sigterm_prints_terminating_and_exits_zero() {
    let mut app = Running::start(&[]);
    app.wait_for_line("listening on");
    app.signal(libc::SIGTERM);
    app.wait_for_line("terminating");
    assert_eq!(app.wait_exit().code(), Some(0));
}

#[test]
fn ignore_sigterm_needs_sigkill() {
    let mut app = Running::start(&[("TESTAPP_IGNORE_SIGTERM", "1")]);
    app.wait_for_line("listening on");
    app.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    if let Some(status) = app.child.try_wait().unwrap() {
        let mut stderr = String::new();
        app.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let stdout: Vec<String> = app.lines.try_iter().collect();
        panic!(
            "exited despite TESTAPP_IGNORE_SIGTERM: {status:?}, stdout {stdout:?}, stderr {stderr:?}"
        );
    }
    let (status, _, _) = exchange(&mut connect(app.port), "GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200);
    app.signal(libc::SIGKILL);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(app.wait_exit().signal(), Some(libc::SIGKILL));
}

#[test]
fn crash_after_exits_with_the_configured_code() {
    let mut app = Running::start(&[("TESTAPP_CRASH_AFTER", "200ms")]);
    assert_eq!(app.wait_exit().code(), Some(3));
    let mut app = Running::start(&[
        ("TESTAPP_CRASH_AFTER", "100ms"),
        ("TESTAPP_EXIT_CODE", "42"),
    ]);
    assert_eq!(app.wait_exit().code(), Some(42));
}

#[test]
fn crash_at_start_exits_one_with_a_message() {
    let mut app = Running::start(&[("TESTAPP_CRASH_AT_START", "1")]);
    assert_eq!(app.wait_exit().code(), Some(1));
    let mut stderr = String::new();
    app.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("crashing at start"), "{stderr}");
}

#[test]
fn health_fails_after_the_configured_time() {
    let app = Running::start(&[("TESTAPP_FAIL_HEALTH_AFTER", "300ms")]);
    app.wait_for_line("listening on");
    let mut connection = connect(app.port);
    assert_eq!(
        exchange(&mut connection, "GET /healthz HTTP/1.1\r\n\r\n").0,
        200
    );
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        exchange(&mut connection, "GET /healthz HTTP/1.1\r\n\r\n").0,
        503
    );
    let failing = Running::start(&[("TESTAPP_FAIL_HEALTH", "1")]);
    failing.wait_for_line("listening on");
    assert_eq!(
        exchange(&mut connect(failing.port), "GET /healthz HTTP/1.1\r\n\r\n").0,
        503
    );
}

#[test]
fn start_delay_postpones_listening() {
    let started = Instant::now();
    let app = Running::start(&[("TESTAPP_START_DELAY", "300ms")]);
    assert!(TcpStream::connect(("127.0.0.1", app.port)).is_err());
    app.wait_for_line("listening on");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn echo_env_prints_the_named_variables() {
    let app = Running::start(&[
        ("TESTAPP_ECHO_ENV", "GREETING,ABSENT"),
        ("GREETING", "hi there"),
    ]);
    assert_eq!(app.wait_for_line("GREETING"), "env GREETING=hi there");
    assert_eq!(app.wait_for_line("ABSENT"), "env ABSENT (unset)");
}

#[test]
fn grow_memory_reports_its_growth() {
    let app = Running::start(&[("TESTAPP_GROW_MEMORY", "1M")]);
    app.wait_for_line("grew memory to 1048576 bytes");
    app.wait_for_line("grew memory to 2097152 bytes");
}
