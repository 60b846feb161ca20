//! The plane process (`bow edge-plane`): serves the agent's requests on its socket and the
//! edge and listeners they describe, until told to shut down or retire.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bow_edge::Sockets;
use bow_reconcile::EventKind;
use bow_store::Store;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::listeners::Listeners;
use super::{PlaneReport, PlaneState, Request, Response};

/// How the plane process was started.
pub struct PlaneConfig {
    pub state_dir: PathBuf,
    pub project: String,
    pub environment: String,
    /// The secrets file and key a route's `users_secret` comes from.
    pub secrets: Option<bow_secrets::Source>,
    /// Take the listening sockets over from the plane running now (an upgrade).
    pub take_over: bool,
}

/// How the plane ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ending {
    Serving,
    /// `bow down`: everything closes, the socket goes.
    Shutdown,
    /// A new plane serves: close gracefully, leave the socket path to it.
    Retire,
}

/// The plane's state.
pub(crate) struct Plane {
    pub(crate) state_dir: PathBuf,
    pub(crate) project: String,
    pub(crate) environment: String,
    store: Mutex<Store>,
    pub(crate) secrets: Option<bow_secrets::Source>,
    pub(crate) sockets: Sockets,
    pub(crate) edge: tokio::sync::Mutex<Option<super::edge::EdgeRuntime>>,
    pub(crate) edge_handle: Mutex<Option<Arc<bow_edge::Edge>>>,
    pub(crate) edge_error: Mutex<Option<String>>,
    pub(crate) route_policies: crate::edge_policy::Policies,
    pub(crate) outside_apis: crate::outside_api::OutsideApis,
    listeners: Mutex<Listeners>,
    errors: Mutex<BTreeMap<String, String>>,
    /// The state served, and its number once fully applied.
    state: Mutex<Arc<PlaneState>>,
    applied: watch::Sender<u64>,
    /// One state applied at a time.
    applying: tokio::sync::Mutex<()>,
    ending: watch::Sender<Ending>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Plane {
    pub(crate) fn listeners(&self) -> MutexGuard<'_, Listeners> {
        locked(&self.listeners)
    }

    pub(crate) fn errors(&self) -> MutexGuard<'_, BTreeMap<String, String>> {
        locked(&self.errors)
    }

    /// Records an event in the store (the agent's `bow events` shows it) and the plane's log.
    pub(crate) fn emit(&self, service: &str, instance: &str, kind: EventKind, message: &str) {
        let at_ms = crate::now_ms();
        if let Err(error) =
            locked(&self.store).record_event(at_ms, service, instance, kind.label(), message)
        {
            eprintln!("bow edge: cannot record event: {error}");
        }
        eprintln!(
            "{} {instance:<12} {:<13} {message}",
            crate::agent::clock(at_ms),
            kind.label()
        );
    }

    async fn apply(self: &Arc<Self>, state: PlaneState) -> PlaneReport {
        let _one_at_a_time = self.applying.lock().await;
        self.ensure_edge(state.spec.as_ref()).await;
        self.ensure_listeners(&state).await;
        if let Some(spec) = &state.spec {
            self.ensure_outside_apis(spec, state.outside_apis.clone())
                .await;
        }
        self.install_routes(&state);
        let mut used = self.listener_addresses();
        used.extend(state.outside_apis.values().flatten().copied());
        if let Some(edge) = self.edge() {
            used.extend([edge.https_addr(), edge.http_addr()]);
        }
        self.sockets.retain(|addr| used.contains(addr));
        let seq = state.seq;
        *locked(&self.state) = Arc::new(state);
        self.applied.send_replace(seq);
        self.report()
    }

    fn report(&self) -> PlaneReport {
        let edge = self.edge();
        PlaneReport {
            pid: std::process::id(),
            exe: bow_driver::running_binary().0,
            exe_id: super::own_exe_id(),
            seq: *self.applied.borrow(),
            https: edge.as_ref().map(|e| e.https_addr()),
            http: edge.as_ref().map(|e| e.http_addr()),
            edge_error: locked(&self.edge_error).clone(),
            listening: {
                let mut names = self.listening();
                names.extend(self.outside_api_names());
                names
            },
            listener_errors: self.errors().clone(),
        }
    }

    async fn drain(&self, id: &str, timeout: Duration, seq: u64) -> Option<super::Drained> {
        // The state without the instance first: a drain waits for requests already sent.
        let mut applied = self.applied.subscribe();
        let _ = tokio::time::timeout(timeout, applied.wait_for(|served| *served >= seq)).await;
        let edge = self.edge();
        let edge_drained = async {
            let edge = edge?;
            tokio::time::timeout(timeout, edge.drain(id)).await.ok()
        };
        let (edge, internal) = tokio::join!(edge_drained, self.drain_listeners(id, timeout));
        crate::discovery::both_drained(edge, internal).map(Into::into)
    }

    /// Closes the edge and every listener gracefully.
    async fn close(&self) {
        tokio::join!(
            self.stop_edge(),
            self.stop_listeners(),
            self.stop_outside_apis()
        );
    }
}

/// Runs the plane until `bow down` or a newer plane retires it.
pub async fn serve(config: PlaneConfig) -> Result<(), String> {
    let dir = super::plane_dir(&config.state_dir);
    create_private_dir(&dir)?;
    let store = Store::open(&config.state_dir).map_err(|e| format!("the store: {e}"))?;
    let sockets = Sockets::default();
    if config.take_over {
        take_sockets_over(&config.state_dir, &sockets).await?;
    }
    let path = if config.take_over {
        super::next_socket_path(&config.state_dir)
    } else {
        let path = super::socket_path(&config.state_dir);
        if UnixStream::connect(&path).await.is_ok() {
            return Err(format!("an edge process already serves {}", path.display()));
        }
        path
    };
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let plane = Arc::new(Plane {
        state_dir: config.state_dir.clone(),
        project: config.project,
        environment: config.environment,
        store: Mutex::new(store),
        secrets: config.secrets,
        sockets,
        edge: tokio::sync::Mutex::new(None),
        edge_handle: Mutex::new(None),
        edge_error: Mutex::new(None),
        route_policies: Default::default(),
        outside_apis: Default::default(),
        listeners: Mutex::new(BTreeMap::new()),
        errors: Mutex::new(BTreeMap::new()),
        state: Mutex::new(Arc::new(PlaneState::default())),
        applied: watch::channel(0).0,
        applying: tokio::sync::Mutex::new(()),
        ending: watch::channel(Ending::Serving).0,
    });
    eprintln!(
        "bow edge: serving {}-{} (pid {}) on {}",
        plane.project,
        plane.environment,
        std::process::id(),
        path.display()
    );
    let mut ending = plane.ending.subscribe();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(connection(plane.clone(), stream));
                }
            }
            _ = ending.changed() => break,
            _ = terminate.recv() => { plane.ending.send_replace(Ending::Shutdown); break; }
        }
    }
    let how = *plane.ending.borrow();
    drop(listener);
    if how == Ending::Shutdown {
        let _ = std::fs::remove_file(super::socket_path(&plane.state_dir));
    }
    plane.close().await;
    plane.sockets.retain(|_| false);
    eprintln!("bow edge: {how:?}: done");
    Ok(())
}

/// Serves one connection's requests, one line each.
async fn connection(plane: Arc<Plane>, stream: UnixStream) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let request: Request = match serde_json::from_str(&line) {
            Ok(request) => request,
            Err(error) => {
                let _ = write(
                    &mut reader,
                    &Response::Error(format!("bad request: {error}")),
                )
                .await;
                return;
            }
        };
        let response = match request {
            Request::Report => Response::Report(plane.report()),
            Request::Sync(state) => Response::Report(plane.apply(*state).await),
            Request::Drain {
                id,
                timeout_ms,
                seq,
            } => Response::Drained(
                plane
                    .drain(&id, Duration::from_millis(timeout_ms), seq)
                    .await,
            ),
            Request::Metrics => Response::Metrics(plane.edge().map(|edge| edge.metrics())),
            Request::Shutdown => {
                let _ = write(&mut reader, &Response::Done).await;
                plane.ending.send_replace(Ending::Shutdown);
                return;
            }
            Request::Retire => {
                let _ = write(&mut reader, &Response::Done).await;
                plane.ending.send_replace(Ending::Retire);
                return;
            }
            Request::Promote => {
                let from = super::next_socket_path(&plane.state_dir);
                let to = super::socket_path(&plane.state_dir);
                match std::fs::rename(&from, &to) {
                    Ok(()) => Response::Done,
                    Err(error) => Response::Error(format!("{}: {error}", from.display())),
                }
            }
            Request::HandOver => {
                hand_over(&plane, reader.into_inner()).await;
                return;
            }
        };
        if write(&mut reader, &response).await.is_err() {
            return;
        }
    }
}

async fn write(reader: &mut BufReader<UnixStream>, response: &Response) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    reader.get_mut().write_all(&bytes).await
}

/// Sends every kept listening socket to the new plane on `stream`.
async fn hand_over(plane: &Plane, stream: UnixStream) {
    let all = plane.sockets.all();
    let (addrs, fds): (Vec<_>, Vec<_>) = all.into_iter().unzip();
    let Ok(stream) = stream.into_std() else {
        return;
    };
    let mut line = serde_json::to_vec(&Response::Sockets(addrs)).unwrap_or_default();
    line.push(b'\n');
    // The descriptors stay open here until this plane retires: the new one gets copies.
    let sent = tokio::task::spawn_blocking(move || {
        stream.set_nonblocking(false)?;
        super::fds::send_with_fds(&stream, &line, &fds)
    })
    .await;
    match sent {
        Ok(Ok(())) => eprintln!("bow edge: listening sockets handed over"),
        Ok(Err(error)) => eprintln!("bow edge: hand-over failed: {error}"),
        Err(error) => eprintln!("bow edge: hand-over failed: {error}"),
    }
}

/// Asks the running plane for its listening sockets and keeps them.
async fn take_sockets_over(state_dir: &std::path::Path, sockets: &Sockets) -> Result<(), String> {
    let path = super::socket_path(state_dir);
    let sockets = sockets.clone();
    tokio::task::spawn_blocking(move || {
        let stream = std::os::unix::net::UnixStream::connect(&path)
            .map_err(|e| format!("the running edge process ({}): {e}", path.display()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut request = serde_json::to_vec(&Request::HandOver).map_err(|e| e.to_string())?;
        request.push(b'\n');
        use std::io::Write;
        (&stream).write_all(&request).map_err(|e| e.to_string())?;
        let (bytes, fds) = super::fds::recv_with_fds(&stream, 64 * 1024)
            .map_err(|e| format!("the running edge process's sockets: {e}"))?;
        let Ok(Response::Sockets(addrs)) = serde_json::from_slice::<Response>(&bytes) else {
            return Err("the running edge process did not hand its sockets over".to_string());
        };
        if addrs.len() != fds.len() {
            return Err(format!(
                "{} sockets announced, {} received",
                addrs.len(),
                fds.len()
            ));
        }
        for fd in fds {
            let listener = std::net::TcpListener::from(fd);
            sockets.adopt(listener).map_err(|e| e.to_string())?;
        }
        eprintln!("bow edge: took {} listening sockets over", addrs.len());
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}

fn create_private_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", dir.display()))
}
