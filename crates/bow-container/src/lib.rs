//! The container driver: one instance of a service as a container of a Docker Engine (or
//! Podman's Docker-compatible API), reached through bollard; nothing shells out to a CLI.
//! See docs/containers.md for the model (network, ports, secrets, logs, adoption).

pub mod build;
mod create;
mod driver;
pub mod engine;
pub mod exec;
mod inspect;
mod logs;
pub mod network;
mod passwd;
mod restart;
mod usage;
pub mod volumes;

pub use driver::{ContainerDriver, ContainerScope, SECRETS_TARGET};
pub use engine::Engine;
pub use exec::exec_attached;
pub use network::NetworkInfo;
