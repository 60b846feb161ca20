//! Compose files in (`bow import`) and Compose/Kubernetes out (`bow export`).

mod emit;
pub mod export;
pub mod import;
mod import_service;
mod values;
