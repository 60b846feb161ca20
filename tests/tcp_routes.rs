//! TCP routes (`tcp: {port}`): a raw port of the host passed to a service's healthy
//! instances — a PostgreSQL primary reached with psql, an HTTP service behind a plain TCP
//! port with an instance killed under load — and the ports validation refuses.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::pg::{psql_at, stack as pg_stack};
use support::procs::free_port;
use support::stack::{Stack, WAIT, all_healthy};

const LIMIT: Duration = Duration::from_secs(120);

/// GET /healthz through 127.0.0.1:`port`; whether it answered 200.
fn get(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

#[test]
fn a_postgres_primary_is_reached_through_its_tcp_route() {
    let port = free_port();
    let yaml = format!(
        "services:\n  db:\n    postgres: {{ version: 15, database: shop, user: shopper, password_secret: db_password, init: ./init.sql }}\n    tcp: {{ port: {port} }}\n"
    );
    let stack = pg_stack("tcppg", &yaml, "pw-1");
    stack.up_ok();
    let (ok, out, err) = psql_at(
        "127.0.0.1",
        port,
        "shopper",
        "pw-1",
        "SELECT count(*) FROM items",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "2");
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
    let (ok, _, _) = psql_at("127.0.0.1", port, "shopper", "pw-1", "SELECT 1");
    assert!(!ok, "the route closes with the service");
}

#[test]
fn a_killed_instance_is_taken_out_of_the_tcp_route() {
    let port = free_port();
    let yaml = format!(
        "services:\n  web:\n    command: {{testapp}}\n    replicas: 2\n    tcp: {{ port: {port} }}\n    health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n"
    );
    let stack = Stack::new("tcpweb", &yaml);
    stack.up_ok();
    assert!(get(port));
    let pid = stack.pid("web.1");
    support::procs::kill(pid, libc::SIGKILL);
    // Connections go on being answered while web.1 is gone and back.
    let (mut answered, mut refused) = (0, 0);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if get(port) {
            answered += 1;
        } else {
            refused += 1;
        }
    }
    eprintln!("during the kill: {answered} answered, {refused} not");
    assert!(answered > 10, "{answered}");
    stack.wait_status("web.1 back", WAIT, all_healthy);
    assert!(get(port));
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
}

#[test]
fn a_tcp_route_on_a_taken_port_is_refused() {
    let yaml = "edge: { http_port: 8080, https_port: 8443 }\nservices:\n  a:\n    command: {testapp}\n    tcp: { port: 8443 }\n  b:\n    command: {testapp}\n    tcp: { port: 2222 }\n  c:\n    command: {testapp}\n    tcp: { port: 2222 }\n";
    let stack = Stack::new("tcpclash", yaml);
    let ran = stack.run(&["validate"], LIMIT);
    assert_eq!(ran.code, 1, "{}", ran.describe());
    assert!(
        ran.stderr
            .contains("port 8443 is already used by edge.https_port")
            && ran
                .stderr
                .contains("port 2222 is already used by the TCP route of `b`"),
        "{}",
        ran.stderr
    );
}
