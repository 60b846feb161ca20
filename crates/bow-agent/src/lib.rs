//! The agent: owns every instance of one project + environment.
//!
//! It carries applied specs out (start order by `depends_on`, replicas), supervises each
//! instance (health checks, restarts with backoff, crash-loop detection), adopts instances
//! that outlived a previous agent, records instances and events in the state store, and
//! answers the CLI on a unix socket. See docs/agent.md for the contract.

pub mod acme;
mod admin;
mod adopt;
mod agent;
mod alert_rules;
mod alerts;
pub mod api;
pub mod backup_state;
mod certificates;
pub mod client;
mod container_net;
mod dashboard;
mod dashboard_history;
mod deploy;
pub mod discovery;
mod drivers;
pub mod edge;
mod edge_policy;
mod error;
#[cfg(test)]
mod fake_world;
pub mod health;
mod health_watch;
pub mod hooks;
mod image_build;
mod instance_spec;
mod metrics;
mod metrics_backup;
mod metrics_edge;
mod otlp;
mod outside_api;
mod passthrough;
mod ports;
pub mod postgres;
mod postgres_admin;
pub mod postgres_archive;
mod postgres_replica;
mod postgres_switchover;
mod releases;
mod rollout;
pub mod secrets;
mod server;
mod state_dir;
mod status;
mod stopping;
mod supervisor;
mod venv;
mod webhook;

pub use agent::{Agent, AgentConfig, EDGE_FAILED_NOTE, EventSink, now_ms};
pub use dashboard_history::histogram_quantile;
pub use drivers::Drivers;
pub use error::{AgentError, Result};
pub use state_dir::wait_released;

/// The directories the agent keeps inside its state dir.
pub mod layout {
    use std::path::{Path, PathBuf};

    pub fn run_dir(state_dir: &Path) -> PathBuf {
        state_dir.join("run")
    }

    pub fn log_dir(state_dir: &Path) -> PathBuf {
        state_dir.join("logs")
    }

    pub const LOCK_FILE: &str = "agent.lock";
    pub const AGENT_LOG: &str = "agent.log";
}
