//! One module per subcommand.

pub mod agent;
pub mod alerts;
pub mod apply;
pub mod chaos;
pub mod chaos_agent;
pub mod config;
pub mod down;
pub mod events;
pub mod exec;
pub mod history;
pub mod import;
pub mod logs;
pub mod metrics;
pub mod plan;
pub mod psql;
pub mod restart;
pub mod rollback;
pub mod secret;
pub mod security;
pub mod status;
pub mod trust;
pub mod up;
pub mod validate;
pub mod volume;
