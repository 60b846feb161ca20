//! One module per subcommand.

pub mod agent;
pub mod apply;
pub mod chaos;
pub mod config;
pub mod down;
pub mod events;
pub mod history;
pub mod logs;
pub mod plan;
pub mod restart;
pub mod rollback;
pub mod secret;
pub mod security;
pub mod status;
pub mod trust;
pub mod up;
pub mod validate;
