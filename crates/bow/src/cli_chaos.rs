//! `bow chaos`'s drills (clap definitions; the drills run in `commands/chaos.rs`).

use clap::Subcommand;

use crate::cli::StackArgs;

/// The drills of `bow chaos`.
#[derive(Debug, Subcommand)]
pub enum ChaosDrill {
    /// SIGKILL a random running instance (of SERVICE, or of any service) at every interval
    Kill {
        #[command(flatten)]
        stack: StackArgs,
        service: Option<String>,
        /// Time between two kills
        #[arg(long, default_value = "2s")]
        every: bow_spec::units::Duration,
        /// How long the drill lasts (at most 1h)
        #[arg(long = "for", default_value = "30s")]
        duration: bow_spec::units::Duration,
        /// Seed of the random choice of victims (printed; the same seed picks the same way)
        #[arg(long)]
        seed: Option<u64>,
    },
    /// SIGKILL the agent at random moments (about every --every) and start it again at once
    /// (as a systemd unit would), deploys under way included
    Agent {
        #[command(flatten)]
        stack: StackArgs,
        /// About this long between two kills (each is at a random moment of 0.5–1.5 times it)
        #[arg(long, default_value = "5s")]
        every: bow_spec::units::Duration,
        #[arg(long = "for", default_value = "30s")]
        duration: bow_spec::units::Duration,
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Add latency to SERVICE's traffic at the edge for a while
    Latency {
        #[command(flatten)]
        stack: StackArgs,
        service: String,
        /// How much each request waits before it goes to an instance
        #[arg(long, default_value = "200ms")]
        add: bow_spec::units::Duration,
        #[arg(long = "for", default_value = "30s")]
        duration: bow_spec::units::Duration,
    },
    /// Lose a share of SERVICE's upstream attempts at the edge (as refused connections) for a while
    Loss {
        #[command(flatten)]
        stack: StackArgs,
        service: String,
        /// The share lost, in percent (0–100)
        #[arg(long, default_value_t = 20.0)]
        percent: f64,
        #[arg(long = "for", default_value = "30s")]
        duration: bow_spec::units::Duration,
    },
    /// SIGSTOP one random running instance of SERVICE, SIGCONT it after the given time
    Pause {
        #[command(flatten)]
        stack: StackArgs,
        service: String,
        /// How long it stays stopped (at most 1h)
        #[arg(long = "for", default_value = "10s")]
        duration: bow_spec::units::Duration,
        #[arg(long)]
        seed: Option<u64>,
    },
}
