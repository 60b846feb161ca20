//! `bow-testapp`: the fixture web service bow's integration tests run, steered by environment variables.
//!
//! It listens on 127.0.0.1:$PORT ($TESTAPP_HOST:$PORT when set) and answers `GET /healthz` and `GET /`; see [`config::Config`]
//! for the `TESTAPP_*` switches that make it crash, start slowly, fail health checks, ignore
//! SIGTERM or grow its memory.

mod config;
mod http;
mod signals;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use config::Config;
use http::App;

fn main() {
    // `bow-testapp fetch URL`: one GET, the body on stdout; exit 0 on a 2xx answer (a client
    // for tests that call a service by name, from a container or a process).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("fetch") {
        std::process::exit(fetch(args.get(2).map_or("", String::as_str)));
    }
    let started = Instant::now();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    if config::env_flag(&env, "TESTAPP_CRASH_AT_START") {
        eprintln!("testapp: crashing at start because TESTAPP_CRASH_AT_START is set");
        std::process::exit(1);
    }
    let config = match Config::from_env(&env) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("testapp: {error}");
            std::process::exit(2);
        }
    };
    // Block SIGTERM/SIGINT before any thread starts so that only the signal thread sees them.
    signals::install(config.ignore_sigterm);
    for name in &config.echo_env {
        match env.get(name) {
            Some(value) => println!("env {name}={value}"),
            None => println!("env {name} (unset)"),
        }
    }
    if let Some(after) = config.crash_after {
        let code = config.exit_code;
        std::thread::spawn(move || {
            std::thread::sleep(after.saturating_sub(started.elapsed()));
            println!("crashing with exit code {code} (TESTAPP_CRASH_AFTER)");
            std::process::exit(code);
        });
    }
    if let Some(step) = config.grow_memory {
        std::thread::spawn(move || grow_memory_forever(step));
    }
    if let Some(delay) = config.start_delay {
        std::thread::sleep(delay);
    }
    // 127.0.0.1 unless TESTAPP_HOST says otherwise (0.0.0.0 in the test image: a container
    // is reached on its own network's address).
    let host = env
        .get("TESTAPP_HOST")
        .map_or("127.0.0.1", String::as_str)
        .to_string();
    let listener = match TcpListener::bind((host.as_str(), config.port)) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("testapp: cannot listen on {host}:{}: {error}", config.port);
            std::process::exit(1);
        }
    };
    println!(
        "listening on {host}:{} version={}",
        config.port, config.version
    );
    let app = Arc::new(App {
        config,
        started,
        in_flight: AtomicUsize::new(0),
    });
    signals::spawn_waiter(Arc::clone(&app));
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let app = Arc::clone(&app);
                std::thread::spawn(move || http::serve_connection(app, stream));
            }
            Err(error) => {
                eprintln!("testapp: accept failed: {error}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Allocates `step` bytes every 100 ms and writes to every page so the memory is really used.
fn grow_memory_forever(step: u64) -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut total: u64 = 0;
    loop {
        let mut block = vec![0u8; step as usize];
        for byte in block.iter_mut().step_by(4096) {
            *byte = 1;
        }
        total += step;
        kept.push(block);
        println!("grew memory to {total} bytes");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One HTTP/1.0 GET of `url` (`http://host:port/path`), the name resolved like any program
/// would (`/etc/hosts`, then DNS); prints the body, returns the exit code.
fn fetch(url: &str) -> i32 {
    use std::io::{Read, Write};
    let Some(rest) = url.strip_prefix("http://") else {
        eprintln!("fetch: expected http://host:port/path, found {url:?}");
        return 2;
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let mut stream = match std::net::TcpStream::connect(authority) {
        Ok(stream) => stream,
        Err(error) => {
            eprintln!("fetch: cannot connect to {authority}: {error}");
            return 1;
        }
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
    let mut answer = Vec::new();
    if let Err(error) = stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.read_to_end(&mut answer))
    {
        eprintln!("fetch: {url}: {error}");
        return 1;
    }
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    print!("{body}");
    let ok = head
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2'));
    if ok { 0 } else { 1 }
}
