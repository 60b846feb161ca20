//! A bare edge for profiling: serves `https://bench.localhost:$EDGE_PORT/` (self-signed, CA
//! in `$EDGE_DIR/ca`) to `127.0.0.1:$BACKEND_PORT`, access log to `$EDGE_DIR/access.log`,
//! on the runtime shape the agent uses (`EDGE_RUNTIME=current`: a current-thread runtime).
//! Runs until stdin closes. Used by bench/edge_cost.sh.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bow_edge::{
    Backend, Edge, EdgeConfig, EdgeHooks, Endpoint, JsonLinesSink, Route, RouteTable, TlsSource,
};

/// As in the `bow` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let dir = PathBuf::from(var("EDGE_DIR"));
    let port: u16 = var("EDGE_PORT").parse().expect("EDGE_PORT is a port");
    let backend: u16 = var("BACKEND_PORT").parse().expect("BACKEND_PORT is a port");
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    // EDGE_RUNTIME=current: a current-thread runtime instead, to compare runtime shapes.
    let mut builder = if std::env::var("EDGE_RUNTIME").is_ok_and(|shape| shape == "current") {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    // EDGE_EVENT_INTERVAL=N: tasks polled between looks at the I/O driver (tokio: 61).
    if let Some(interval) = std::env::var("EDGE_EVENT_INTERVAL")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        builder.event_interval(interval);
    }
    let runtime = builder.enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let mut config = EdgeConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            SocketAddr::from(([127, 0, 0, 1], port)),
            TlsSource::SelfSigned {
                ca_dir: dir.join("ca"),
            },
        );
        // EDGE_ROUTE_METRICS=0: without per-route counters (bench/observability.sh AB=1).
        config.route_metrics = std::env::var("EDGE_ROUTE_METRICS").map_or(true, |v| v != "0");
        let log = std::fs::File::create(dir.join("access.log")).expect("access log");
        let hooks = EdgeHooks {
            access_log: Arc::new(JsonLinesSink::new(log)),
            ..EdgeHooks::default()
        };
        let edge = Edge::start_with(config, hooks).await.expect("edge starts");
        let endpoint = Endpoint::new("web.1", SocketAddr::from(([127, 0, 0, 1], backend)));
        let route = Route::new("bench.localhost", "/", Backend::new("web", vec![endpoint]));
        edge.set_routes(RouteTable::new(vec![route]).expect("route table"));
        println!("ready {}", edge.https_addr());
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await
        .expect("stdin watcher");
        edge.shutdown().await;
    });
}
