//! One module per subcommand.

pub mod config;
pub mod plan;
pub mod validate;
