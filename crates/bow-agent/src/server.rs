//! The API socket: `agent.sock` (0600), one JSON request per line, one JSON response per line.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::agent::Agent;
use crate::api::{Request, Response, SOCKET_FILE};
use crate::error::{AgentError, Result};

/// Binds `agent.sock` (0600), replacing a stale one (the caller holds the state dir's lock);
/// clients may connect at once, but nothing is answered until [`serve`].
pub fn bind(agent: &Agent) -> Result<UnixListener> {
    let path = agent.state_dir.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|source| AgentError::Io {
        what: format!("cannot listen on {}", path.display()),
        source,
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        AgentError::Io {
            what: format!("cannot restrict {}", path.display()),
            source,
        }
    })?;
    Ok(listener)
}

/// Answers requests on `listener` from now on.
pub fn serve(agent: Arc<Agent>, listener: UnixListener) {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(agent.clone(), stream));
                }
                Err(error) => {
                    eprintln!("bow agent: accept failed: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
}

async fn connection(agent: Arc<Agent>, stream: UnixStream) {
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let request: Result<Request, _> = serde_json::from_str(&line);
        let is_down = matches!(request, Ok(Request::Down));
        let response = match request {
            Ok(request) => handle(&agent, request).await,
            Err(error) => Response::Error {
                message: format!("bad request: {error}"),
            },
        };
        let mut text = serde_json::to_string(&response)
            .unwrap_or_else(|e| format!("{{\"response\":\"error\",\"message\":\"{e}\"}}"));
        text.push('\n');
        let _ = writer.write_all(text.as_bytes()).await;
        let _ = writer.flush().await;
        if is_down {
            agent.detach();
            return;
        }
    }
}

async fn handle(agent: &Arc<Agent>, request: Request) -> Response {
    match request {
        Request::Ping => Response::Pong {
            pid: std::process::id(),
            project: agent.project.clone(),
            environment: agent.environment.clone(),
        },
        Request::Apply { spec } => {
            if spec.project != agent.project || spec.environment != agent.environment {
                return Response::Error {
                    message: format!(
                        "this agent runs {}-{}, not {}-{}; use another --state-dir",
                        agent.project, agent.environment, spec.project, spec.environment
                    ),
                };
            }
            match agent.apply(*spec) {
                Ok((revision, services)) => Response::Applied { revision, services },
                Err(error) => Response::Error {
                    message: error.to_string(),
                },
            }
        }
        Request::Status => {
            let mut report = agent.status();
            report.edge = agent.edge_status().await;
            Response::Status(Box::new(report))
        }
        Request::Events {
            after_id,
            limit,
            last,
        } => match agent.events(after_id, limit.min(10_000), last) {
            Ok(events) => Response::Events { events },
            Err(error) => Response::Error {
                message: error.to_string(),
            },
        },
        Request::Restart { service } => match agent.restart_service(&service).await {
            Ok(instances) => Response::Restarted { service, instances },
            Err(error) => Response::Error {
                message: error.to_string(),
            },
        },
        Request::Hold { services } => match agent.hold(&services).await {
            Ok(instances) => Response::Held { instances },
            Err(error) => Response::Error {
                message: error.to_string(),
            },
        },
        Request::Resume { services } => match agent.resume(&services).await {
            Ok(instances) => Response::Held { instances },
            Err(error) => Response::Error {
                message: error.to_string(),
            },
        },
        Request::BackupEvent { service, message } => {
            agent.emit(&service, "", bow_reconcile::EventKind::Backup, &message);
            Response::Recorded
        }
        Request::Progress { revision } => Response::Progress(agent.progress(revision)),
        Request::Rollback { service, to } => match agent.rollback(&service, to) {
            Ok((revision, _)) => Response::Applied {
                revision,
                services: vec![service],
            },
            Err(error) => Response::Error {
                message: error.to_string(),
            },
        },
        Request::Down => Response::Down {
            stopped: agent.down_instances().await,
        },
        Request::Alerts => {
            let configured = agent.alerts.lock().await.is_some();
            Response::Alerts {
                configured,
                alerts: agent.firing_alerts().await,
            }
        }
        Request::AlertTest => match agent.send_test_alert().await {
            Ok((receiver, status)) => Response::AlertSent { receiver, status },
            Err(message) => Response::Error { message },
        },
        Request::Fault {
            service,
            delay_ms,
            loss_per_million,
            for_ms,
        } => match agent.inject_fault(&service, delay_ms, loss_per_million, for_ms) {
            Ok(()) => Response::FaultOn { service },
            Err(message) => Response::Error { message },
        },
        Request::Switchover { service, to } => match agent.switchover(&service, to).await {
            Ok(message) => Response::SwitchedOver { message },
            Err(message) => Response::Error { message },
        },
        Request::Usage => Response::Usage(Box::new(crate::metrics::usage(agent).await)),
    }
}
