//! Fixtures shared by the edge's integration tests: upstream servers that can be killed and
//! restarted, an edge on ephemeral ports with its own CA, and TLS/HTTP clients.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bow_edge::{
    AccessLogEntry, AccessLogSink, Backend, Edge, EdgeConfig, EdgeHooks, Endpoint,
    NoAcmeChallenges, Route, RouteTable, TlsSource, crypto_provider,
};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The host every test routes.
pub const HOST: &str = "app.localhost";

/// Counts requests to `/slow` so a test knows one is in flight.
#[derive(Default)]
pub struct SlowRequests {
    pub started: AtomicUsize,
    pub notify: Notify,
}

/// A small HTTP/1.1 server standing in for a service instance. It answers with its id on
/// the first line and the request headers it saw after; `/slow?ms=N` waits N ms first;
/// `/body` answers the length of the request body.
pub struct Upstream {
    pub id: String,
    pub addr: SocketAddr,
    pub slow: Arc<SlowRequests>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Upstream {
    pub async fn start(id: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let slow = Arc::new(SlowRequests::default());
        let task = tokio::spawn(serve_upstream(listener, id.to_string(), slow.clone()));
        Upstream {
            id: id.to_string(),
            addr,
            slow,
            task: Mutex::new(Some(task)),
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.id.clone(), self.addr)
    }

    /// Drops the listener and every open connection at once, like a killed process.
    pub fn kill(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listens again on the same address.
    pub async fn restart(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("cannot listen on {} again: {error}", self.addr),
            }
        };
        let task = tokio::spawn(serve_upstream(listener, self.id.clone(), self.slow.clone()));
        *self.task.lock().unwrap() = Some(task);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn serve_upstream(listener: TcpListener, id: String, slow: Arc<SlowRequests>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let id = id.clone();
        let slow = slow.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| answer(id.clone(), slow.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    id: String,
    slow: Arc<SlowRequests>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    if path == "/slow" {
        let millis: u64 = request
            .uri()
            .query()
            .and_then(|query| query.strip_prefix("ms="))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(1000);
        slow.started.fetch_add(1, Ordering::SeqCst);
        slow.notify.notify_waiters();
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }
    let mut text = format!("{id}\n");
    for (name, value) in request.headers() {
        text.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
    }
    if path == "/body" {
        let body = request.into_body().collect().await;
        text = match body {
            Ok(body) => format!("{id}\nlength {}\n", body.to_bytes().len()),
            Err(error) => format!("{id}\nbody error {error}\n"),
        };
    }
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response
        .headers_mut()
        .insert("x-upstream", id.parse().unwrap());
    Ok(response)
}

/// Access-log entries kept in memory.
#[derive(Default)]
pub struct MemoryLog(pub Mutex<Vec<AccessLogEntry>>);

impl AccessLogSink for MemoryLog {
    fn record(&self, entry: AccessLogEntry) {
        self.0.lock().unwrap().push(entry);
    }
}

impl MemoryLog {
    /// Waits (at most 5 s) until `count` entries arrived.
    pub async fn wait_for(&self, count: usize) -> Vec<AccessLogEntry> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let entries = self.0.lock().unwrap().clone();
            if entries.len() >= count || Instant::now() > deadline {
                return entries;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// An edge on ephemeral loopback ports with a fresh local CA.
pub struct TestEdge {
    pub edge: Edge,
    pub log: Arc<MemoryLog>,
    pub dir: tempfile::TempDir,
}

impl TestEdge {
    pub async fn start(adjust: impl FnOnce(&mut EdgeConfig)) -> TestEdge {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EdgeConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            TlsSource::SelfSigned {
                ca_dir: dir.path().join("ca"),
            },
        );
        adjust(&mut config);
        let log = Arc::new(MemoryLog::default());
        let hooks = EdgeHooks {
            access_log: log.clone(),
            acme_challenges: Arc::new(NoAcmeChallenges),
        };
        let edge = Edge::start_with(config, hooks).await.unwrap();
        TestEdge { edge, log, dir }
    }

    pub fn ca_pem(&self) -> String {
        self.edge.ca_certificate_pem().unwrap()
    }

    /// Writes the CA certificate for curl and openssl.
    pub fn ca_file(&self) -> String {
        let path = self.dir.path().join("ca-for-clients.pem");
        std::fs::write(&path, self.ca_pem()).unwrap();
        path.to_string_lossy().into_owned()
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://{HOST}:{}{path}", self.edge.https_addr().port())
    }

    /// `--resolve` for curl so that HOST reaches the edge.
    pub fn curl_resolve(&self) -> String {
        format!("{HOST}:{}:127.0.0.1", self.edge.https_addr().port())
    }

    pub async fn tls(&self, alpn: &[&[u8]]) -> std::io::Result<TlsStream<TcpStream>> {
        tls_connect(self.edge.https_addr(), &self.ca_pem(), HOST, alpn).await
    }

    /// curl (`-sS`, 10 s at most, trusting the edge's CA, HOST resolved to the edge) with
    /// `flags`, fetching `path`.
    pub async fn curl(&self, flags: &[&str], path: &str) -> Output {
        let mut args: Vec<String> = vec!["-sS".into(), "--max-time".into(), "10".into()];
        args.extend(flags.iter().map(|flag| flag.to_string()));
        args.extend([
            "--cacert".into(),
            self.ca_file(),
            "--resolve".into(),
            self.curl_resolve(),
            self.https_url(path),
        ]);
        run("curl", args).await
    }

    /// An HTTP/1.1 connection over TLS to the edge.
    pub async fn h1(&self) -> std::io::Result<SendRequest<Full<Bytes>>> {
        let tls = self.tls(&[b"http/1.1"]).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection.with_upgrades());
        Ok(sender)
    }

    /// GET over a fresh connection.
    pub async fn get(&self, path: &str) -> Reply {
        let mut sender = self.h1().await.unwrap();
        send(&mut sender, "GET", path, Bytes::new()).await.unwrap()
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

pub async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<Reply, String> {
    sender.ready().await.map_err(|error| error.to_string())?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", HOST)
        .body(Full::new(body))
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| error.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|error| error.to_string())?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub fn root_store(ca_pems: &[&str]) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    roots
}

pub fn tls_client_config(ca_pems: &[&str], alpn: &[&[u8]]) -> rustls::ClientConfig {
    let roots = root_store(ca_pems);
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    config
}

pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    host: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(Arc::new(tls_client_config(&[ca_pem], alpn)));
    let stream = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(host.to_string()).unwrap();
    connector.connect(name, stream).await
}

/// A route table sending HOST to `service` on the given upstreams.
pub fn table(service: &str, upstreams: &[&Upstream]) -> RouteTable {
    let endpoints = upstreams
        .iter()
        .map(|upstream| upstream.endpoint())
        .collect();
    RouteTable::new(vec![Route::new(
        HOST,
        "/",
        Backend::new(service, endpoints),
    )])
    .unwrap()
}

/// Runs a command off the async threads.
pub async fn run(program: &str, args: Vec<String>) -> Output {
    let program = program.to_string();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(&program)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("cannot run {program}: {error}"))
    })
    .await
    .unwrap()
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: usize,
    pub failures: Vec<String>,
}

/// `workers` clients, each on its own keep-alive connection, GET `/` until `stop` is set
/// or 20 s passed; every non-200 answer or error is a failure.
pub async fn load(
    edge: &Arc<TestEdge>,
    workers: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> LoadReport {
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let edge = edge.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut report = LoadReport::default();
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut sender = edge.h1().await.unwrap();
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match send(&mut sender, "GET", "/", Bytes::new()).await {
                    Ok(reply) if reply.status == StatusCode::OK => report.ok += 1,
                    Ok(reply) => {
                        report
                            .failures
                            .push(format!("{} {}", reply.status, reply.body.trim()))
                    }
                    Err(error) => {
                        report.failures.push(error);
                        sender = edge.h1().await.unwrap();
                    }
                }
            }
            report
        });
    }
    let mut total = LoadReport::default();
    while let Some(report) = tasks.join_next().await {
        let report = report.unwrap();
        total.ok += report.ok;
        total.failures.extend(report.failures);
    }
    total
}

pub mod reference;

/// What a [`RecordingUpstream`] saw on one connection.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    /// Every byte the edge sent on it, in order.
    pub bytes: Vec<u8>,
    /// The whole requests the reference read from them (each was answered 200).
    pub requests: Vec<reference::Request>,
    /// Why the reference stopped reading, when the bytes were not a valid request.
    pub invalid: Option<String>,
    /// The edge closed the connection.
    pub closed: bool,
}

/// An upstream on a raw socket that records exactly the bytes it gets, reads them with the
/// [`reference`] reader and answers each whole request `200` with `ok` (`keep-alive`).
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    pub connections: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>>,
    task: JoinHandle<()>,
}

impl RecordingUpstream {
    pub async fn start() -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>> = Arc::default();
        let all = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let recorded = Arc::new(Mutex::new(Recorded::default()));
                all.lock().unwrap().push(recorded.clone());
                tokio::spawn(record_connection(stream, recorded));
            }
        });
        RecordingUpstream {
            addr,
            connections,
            task,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new("raw.1", self.addr)
    }

    /// A copy of what every connection got so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.connections
            .lock()
            .unwrap()
            .iter()
            .map(|recorded| recorded.lock().unwrap().clone())
            .collect()
    }

    /// Forgets the requests recorded so far (connections stay known: the edge reuses them).
    pub fn clear(&self) {
        for recorded in self.connections.lock().unwrap().iter() {
            recorded.lock().unwrap().requests.clear();
        }
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record_connection(mut stream: TcpStream, recorded: Arc<Mutex<Recorded>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut unread: Vec<u8> = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let count = stream.read(&mut buffer).await.unwrap_or(0);
        if count == 0 {
            recorded.lock().unwrap().closed = true;
            return;
        }
        unread.extend_from_slice(&buffer[..count]);
        recorded
            .lock()
            .unwrap()
            .bytes
            .extend_from_slice(&buffer[..count]);
        loop {
            match reference::read(&unread) {
                reference::Read::Request(request) => {
                    unread.drain(..request.consumed);
                    recorded.lock().unwrap().requests.push(request);
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
                reference::Read::Partial => break,
                reference::Read::Invalid(why) => {
                    recorded.lock().unwrap().invalid = Some(why);
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                }
            }
        }
    }
}
