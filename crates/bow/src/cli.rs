//! The command line: clap definitions only; each command runs from its own module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::cli_chaos::ChaosDrill;

/// Run a system of web services and databases from one bow.yaml.
#[derive(Debug, Parser)]
#[command(name = "bow", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the stack file and the state are. Accepted before or after the subcommand.
#[derive(Debug, Clone, Default, Args)]
pub struct StackArgs {
    /// The stack file [default: ./bow.yaml, searched upward from the current directory]
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The environment to use [env: BOW_ENV] [default: development]
    #[arg(short = 'e', long = "env", value_name = "ENV")]
    pub env: Option<String>,
    /// The agent's state directory [env: BOW_STATE_DIR] [default: /var/lib/bow/<project>-<env>
    /// as root, $XDG_STATE_HOME/bow/<project>-<env> otherwise]
    #[arg(long = "state-dir", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl StackArgs {
    /// `self` with gaps filled from `outer` (flags given before the subcommand).
    pub fn or(self, outer: &StackArgs) -> StackArgs {
        StackArgs {
            file: self.file.or_else(|| outer.file.clone()),
            env: self.env.or_else(|| outer.env.clone()),
            state_dir: self.state_dir.or_else(|| outer.state_dir.clone()),
        }
    }
}

/// What `bow alerts` does besides listing.
/// `bow up -d --follow …`: continuous deployment from a git branch.
#[derive(Debug, Clone, Args)]
pub struct FollowFlags {
    /// The agent follows BRANCH (default: the current one) of the file's git work tree,
    /// fast-forwarding and applying each new commit (`bow follow` shows, pauses, stops);
    /// `bow up` needs -d with it
    #[arg(long, value_name = "BRANCH", num_args = 0..=1, default_missing_value = "")]
    pub follow: Option<String>,
    /// How often --follow fetches
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "1m",
        requires = "follow"
    )]
    pub interval: String,
    /// The bow secret whose value signs push webhooks (POST /hooks/git on the admin
    /// listener: GitHub/Gitea HMAC-SHA256 or GitLab's token); a signed push fetches at once
    #[arg(long, value_name = "SECRET", requires = "follow")]
    pub webhook_secret: Option<String>,
    /// The bow secret holding the SSH private key (a deploy key) that fetches a private
    /// repository over SSH; it is on disk only in a tmpfs, for the fetch
    #[arg(
        long,
        value_name = "SECRET",
        requires = "follow",
        conflicts_with = "git_token"
    )]
    pub git_key: Option<String>,
    /// The bow secret holding an HTTPS access token (`TOKEN` or `USER:TOKEN`) that fetches a
    /// private repository over HTTPS
    #[arg(long, value_name = "SECRET", requires = "follow")]
    pub git_token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlertsAction {
    /// Send a test notification to the webhook.
    Test,
}

/// How read commands print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// For programs.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and check the stack file in every environment; exit 1 with all problems
    Validate {
        #[command(flatten)]
        stack: StackArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Print the fully resolved stack file for an environment
    Config {
        #[command(flatten)]
        stack: StackArgs,
        /// yaml (default) or json
        #[arg(long, value_enum, default_value_t)]
        output: ConfigOutput,
    },
    /// Show what apply would change; exit 0 nothing to do, 2 changes, 1 error
    Plan {
        #[command(flatten)]
        stack: StackArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Start the agent (or use the running one) and apply the file
    Up {
        #[command(flatten)]
        stack: StackArgs,
        /// Run the agent in the background; return once every service is healthy
        #[arg(short = 'd', long = "detach")]
        detach: bool,
        #[command(flatten)]
        following: FollowFlags,
        /// With -d on a fresh host: once every service is up, restore every service with
        /// `backup:` from its newest good backup (`latest`; disaster recovery, docs/backups.md)
        #[arg(long, value_name = "latest", requires = "detach")]
        restore: Option<String>,
    },
    /// Deploy to --to what is live in --from (same code and image, --to's own settings)
    Promote {
        #[command(flatten)]
        stack: StackArgs,
        /// The environment whose live releases are promoted
        #[arg(long, value_name = "ENV", required_unless_present = "from_file")]
        from: Option<String>,
        /// The environment that gets them (its state dir: --state-dir or the default)
        #[arg(long, value_name = "ENV", required_unless_present = "export")]
        to: Option<String>,
        /// The source environment's state dir (default: its usual place)
        #[arg(long, value_name = "DIR")]
        from_state_dir: Option<PathBuf>,
        /// Write what is live in --from to FILE (`-`: stdout) for `--from-file` on another host,
        /// instead of deploying it
        #[arg(long, value_name = "FILE", requires = "from", conflicts_with_all = ["to", "from_file", "dry_run"])]
        export: Option<PathBuf>,
        /// Promote what FILE (written by `--export` on another host) names
        #[arg(long, value_name = "FILE", conflicts_with_all = ["from", "from_state_dir"])]
        from_file: Option<PathBuf>,
        /// Only these services (default: every service live in --from)
        services: Vec<String>,
        /// Print what promotion would change and stop (exit 2 when it would change something)
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation on a terminal
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// Continuous deployment (`bow up -d --follow`): its state, pause, resume, stop
    Follow {
        #[command(subcommand)]
        command: FollowCommand,
    },
    /// Apply the file to the running agent: a zero-downtime deploy of each changed service
    Apply {
        #[command(flatten)]
        stack: StackArgs,
        /// Do not ask for confirmation on a terminal
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// What a service's sandbox lets it do, with an exposure score (like systemd-analyze security)
    Security {
        #[command(flatten)]
        stack: StackArgs,
        service: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Deploy an earlier release of a service again (the last good one by default)
    Rollback {
        #[command(flatten)]
        stack: StackArgs,
        service: String,
        /// The release to go back to (see `bow history`)
        #[arg(long, value_name = "RELEASE")]
        to: Option<i64>,
    },
    /// Releases (newest first): status, strategy, what changed
    History {
        #[command(flatten)]
        stack: StackArgs,
        /// Only this service
        service: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Services and instances: pid, port, health, restarts, uptime
    Status {
        #[command(flatten)]
        stack: StackArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Merged output of the instances, prefixed `service.N |`
    Logs {
        #[command(flatten)]
        stack: LogsStackArgs,
        /// Only this service (`web`) or instance (`web.2`)
        service: Option<String>,
        /// Keep printing new lines
        #[arg(short = 'f', long = "follow")]
        follow: bool,
        /// Only lines newer than this: a duration (10m) or a time (2026-11-22T10:00:00Z)
        #[arg(long)]
        since: Option<String>,
        /// Only the last N lines
        #[arg(short = 'n', long)]
        tail: Option<usize>,
        /// Show each line's timestamp
        #[arg(short = 't', long)]
        timestamps: bool,
    },
    /// What the agent did and why
    Events {
        #[command(flatten)]
        stack: StackArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
        /// The last N events
        #[arg(short = 'n', long, default_value_t = 100)]
        tail: usize,
        /// Only events newer than this: a duration (10m) or a time
        #[arg(long)]
        since: Option<String>,
        /// Keep printing new events
        #[arg(long)]
        follow: bool,
    },
    /// The alerts firing now (docs/alerts.md); `bow alerts test` sends a test notification
    /// to the webhook
    Alerts {
        #[command(flatten)]
        stack: StackArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
        /// `test`: send one test notification to `alerts.webhook` and report its answer
        #[arg(value_enum)]
        action: Option<AlertsAction>,
    },
    /// A live view: each service and instance with its health, cpu, memory, and its
    /// requests per second, p99 and share of 5xx at the edge (Ctrl-C ends it)
    Top {
        #[command(flatten)]
        stack: StackArgs,
        /// How often the view refreshes (the rates are over this span)
        #[arg(long, default_value = "2s")]
        interval: bow_spec::units::Duration,
        /// Print one view (over one interval) and exit
        #[arg(long)]
        once: bool,
    },
    /// Restart a service's instances one at a time
    Restart {
        #[command(flatten)]
        stack: StackArgs,
        service: String,
    },
    /// A chaos drill: kill or pause instances for a bounded time, then report what the edge
    /// served and whether the system came back to where it was (needs `chaos: allow`)
    Chaos {
        #[command(subcommand)]
        drill: ChaosDrill,
    },
    /// Stop every instance and the agent
    Down {
        #[command(flatten)]
        stack: StackArgs,
    },
    /// The edge's ACME certificates: host, issuer, expiry, next renewal, last result
    Certs {
        #[command(flatten)]
        stack: StackArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Where the local CA certificate is and how to trust it
    Trust {
        #[command(flatten)]
        stack: StackArgs,
    },
    /// Manage the environment's encrypted secrets (values from stdin, never from arguments)
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// psql on a postgres service as its role, no password typed; ARGS go to psql
    Psql {
        #[command(flatten)]
        stack: StackArgs,
        service: String,
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// PostgreSQL services: `db switchover` moves the primary to a caught-up replica
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Run a command as a running instance of SERVICE runs: its user, dir, env and secrets,
    /// confined like it (a container: inside it, through the engine)
    Exec {
        #[command(flatten)]
        stack: StackArgs,
        service: String,
        /// Which instance (`2` for SERVICE.2); the lowest-numbered running one by default
        #[arg(long)]
        instance: Option<u32>,
        /// The command and its arguments (after `--`)
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Backups of postgres services: run, list, restore, verify (docs/backups.md)
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Disaster recovery: restore every service with `backup:` from its newest good backup
    /// (after `bow up` on a fresh host; docs/backups.md has the runbook)
    RestoreAll {
        #[command(flatten)]
        stack: StackArgs,
        /// Do not ask (needed when stdin is not a terminal)
        #[arg(long)]
        yes: bool,
    },
    /// The admin listener's metrics (docs/metrics.md)
    Metrics {
        #[command(subcommand)]
        command: MetricsCommand,
    },
    /// Named volumes (container data) and postgres data volumes; data is deleted only by `volume rm`
    Volume {
        #[command(subcommand)]
        command: VolumeCommand,
    },
    /// Translate a Compose file into a bow.yaml (what has no equivalent is listed, with its line)
    Import {
        /// The Compose file (docker-compose.yml, compose.yaml, a Swarm stack file)
        compose_file: PathBuf,
        /// Write the bow.yaml here instead of to stdout (an existing file is kept unless --force)
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replace the output file when it exists
        #[arg(long)]
        force: bool,
        /// The project name (default: the file's `name:`, else its directory's name)
        #[arg(long)]
        project: Option<String>,
    },
    /// The resolved stack of an environment as a Compose file or Kubernetes objects (no secret values)
    Export {
        #[arg(value_enum)]
        format: ExportFormat,
        #[command(flatten)]
        stack: StackArgs,
        /// Write here instead of to stdout
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Run the agent alone in the foreground (what a systemd unit runs)
    Agent {
        #[command(flatten)]
        stack: StackArgs,
        /// Print a systemd unit that runs this agent (with the --follow flags given), and exit
        #[arg(long)]
        print_systemd_unit: bool,
        #[command(flatten)]
        following: FollowFlags,
    },
    /// The edge's own process, started and adopted by the agent (docs/agent.md)
    #[command(hide = true)]
    EdgePlane {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        project: String,
        #[arg(long)]
        environment: String,
        #[arg(long)]
        secrets_file: Option<PathBuf>,
        /// Take the listening sockets over from the running edge process (an upgrade)
        #[arg(long)]
        take_over: bool,
    },
}

/// What `bow export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// A Compose file (docker compose / docker stack)
    Compose,
    /// Kubernetes Deployments, Services, Ingresses, PersistentVolumeClaims and Secrets
    Kubernetes,
}

/// `bow follow …`: the agent following a git branch.
#[derive(Debug, Subcommand)]
pub enum FollowCommand {
    /// What is followed, the last commit applied, a failed one, and whether it is paused
    Status {
        #[command(flatten)]
        stack: StackArgs,
    },
    /// Stop applying new commits until `bow follow resume`
    Pause {
        #[command(flatten)]
        stack: StackArgs,
    },
    /// Apply new commits again (after a pause or a `bow rollback`)
    Resume {
        #[command(flatten)]
        stack: StackArgs,
    },
    /// Stop following for good (`bow up -d --follow` starts again)
    Stop {
        #[command(flatten)]
        stack: StackArgs,
    },
}

/// `bow db …`: what is done to a postgres service's cluster.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Promote a caught-up replica to primary (the service's name follows it; writes wait a
    /// moment, none acknowledged is lost) and make the old primary its replica
    Switchover {
        #[command(flatten)]
        stack: StackArgs,
        service: String,
        /// The replica to promote (`1` for SERVICE.1); the least lagging one by default
        #[arg(long)]
        to: Option<u32>,
    },
}

/// `bow backup …`: backups of the services with `backup:`.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up a service (every service with `backup:` when none is named), then verify the
    /// backup by restoring it into a scratch cluster and apply retention
    Run {
        #[command(flatten)]
        stack: StackArgs,
        service: Option<String>,
        /// Skip the restore drill (and so retention, which runs only after a verified backup)
        #[arg(long)]
        no_verify: bool,
    },
    /// The backups of a service (or of all): id, age, size, rows, verified
    List {
        #[command(flatten)]
        stack: StackArgs,
        service: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Restore a backup (the newest complete one by default) into the running service
    Restore {
        #[command(flatten)]
        stack: StackArgs,
        service: String,
        /// The backup's id (see `bow backup list`)
        id: Option<String>,
        /// A point in time to recover to, UTC (`2026-12-05 10:31:00`): needs `pitr: true`
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// Do not ask (needed when stdin is not a terminal)
        #[arg(long)]
        yes: bool,
    },
    /// Restore a backup into a scratch cluster, check it (pg_amcheck, row counts) and record
    /// the result beside the backup
    Verify {
        #[command(flatten)]
        stack: StackArgs,
        service: Option<String>,
        /// The backup's id; the newest complete one by default
        id: Option<String>,
    },
    /// Store the WAL segments waiting in the spool of services with `pitr: true` (the agent
    /// does it every few seconds)
    WalPush {
        #[command(flatten)]
        stack: StackArgs,
        service: Option<String>,
    },
    /// archive_command's half of WAL archiving: copy a finished segment into the spool
    #[command(hide = true)]
    WalSpool {
        source: std::path::PathBuf,
        destination: std::path::PathBuf,
    },
}

/// `bow volume …`: the named volumes of an environment.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Every named volume and postgres data volume: its name, who uses it, where its data is
    Ls {
        #[command(flatten)]
        stack: StackArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Delete a volume and all its data (refused while a container or a postgres server uses it)
    Rm {
        #[command(flatten)]
        stack: StackArgs,
        name: String,
        /// Do not ask (needed when stdin is not a terminal)
        #[arg(long)]
        yes: bool,
    },
}

/// `bow metrics …`.
#[derive(Debug, Subcommand)]
pub enum MetricsCommand {
    /// Print a Prometheus scrape job for this stack's admin listener (`admin:` in bow.yaml)
    ScrapeConfig {
        #[command(flatten)]
        stack: StackArgs,
        /// Where Prometheus reads the bearer token (the value of `admin.token_secret`)
        #[arg(long, default_value = "/etc/prometheus/bow-admin.token")]
        token_file: String,
        /// Where Prometheus reads bow's CA certificate (a listener off loopback is HTTPS)
        #[arg(long, default_value = "/etc/prometheus/bow-ca.pem")]
        ca_file: String,
    },
}

/// `bow secret …`: the age-encrypted `secrets/<env>.yaml` beside the stack file.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create your key (if missing) and the environment's secrets file encrypted to it
    Init {
        #[command(flatten)]
        stack: StackArgs,
    },
    /// Set a secret from stdin (typed without echo on a terminal) or --from-file
    Set {
        #[command(flatten)]
        stack: StackArgs,
        name: String,
        /// Read the value from this file (exact bytes) instead of stdin
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
    },
    /// Print a secret's value (only to a terminal, unless --reveal)
    Get {
        #[command(flatten)]
        stack: StackArgs,
        name: String,
        /// Also print it to a pipe or file
        #[arg(long)]
        reveal: bool,
    },
    /// Names, when each last changed, and which services use it (never values)
    List {
        #[command(flatten)]
        stack: StackArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Remove a secret
    Rm {
        #[command(flatten)]
        stack: StackArgs,
        name: String,
    },
    /// Who can decrypt: add or remove age public keys (re-encrypts every secret)
    Recipients {
        #[command(subcommand)]
        command: RecipientsCommand,
    },
    /// Replace your key with a new one and re-encrypt every secret to it
    Rotate {
        #[command(flatten)]
        stack: StackArgs,
    },
}

/// `bow secret recipients …`
#[derive(Debug, Subcommand)]
pub enum RecipientsCommand {
    /// Encrypt every secret to one more age public key (age1…)
    Add {
        #[command(flatten)]
        stack: StackArgs,
        recipient: String,
    },
    /// Stop encrypting to an age public key
    Rm {
        #[command(flatten)]
        stack: StackArgs,
        recipient: String,
    },
    /// The public keys the secrets are encrypted to
    List {
        #[command(flatten)]
        stack: StackArgs,
    },
}

/// Stack flags for `bow logs`, where `-f` means follow: the file is `--file` only.
#[derive(Debug, Clone, Default, Args)]
pub struct LogsStackArgs {
    /// The stack file [default: ./bow.yaml, searched upward]
    #[arg(long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The environment to use [env: BOW_ENV] [default: development]
    #[arg(short = 'e', long = "env", value_name = "ENV")]
    pub env: Option<String>,
    /// The agent's state directory [env: BOW_STATE_DIR]
    #[arg(long = "state-dir", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl From<LogsStackArgs> for StackArgs {
    fn from(args: LogsStackArgs) -> StackArgs {
        StackArgs {
            file: args.file,
            env: args.env,
            state_dir: args.state_dir,
        }
    }
}

/// How `bow config` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ConfigOutput {
    #[default]
    Yaml,
    Json,
}
