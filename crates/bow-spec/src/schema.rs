//! The typed stack: what a resolved `bow.yaml` means for one environment.
//!
//! Everything here is already validated and has its defaults filled in; vars are substituted
//! and `${secret:NAME}` references are kept as references. Serialises back to the YAML/JSON
//! shape of the file (this is what `bow config` prints and what the agent records).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sandbox::Sandbox;
use crate::units::{Duration, Size};

pub use crate::schema_ops::{Admin, AlertRule, Alerts, Otlp};
pub use crate::schema_routes::{ForwardAuth, OidcAuth, Rate, Route, RouteAuth, RouteLimits};

/// One project in one environment, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub project: String,
    pub environment: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    pub edge: Edge,
    pub services: BTreeMap<String, Service>,
    /// Whether `bow chaos` drills may run in this environment.
    #[serde(default)]
    pub chaos: Chaos,
    /// Credentials for pulling images, by registry host (`ghcr.io`, `registry.example.com:5000`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registries: BTreeMap<String, RegistryAuth>,
    /// The agent's admin listener (`/metrics`), when `admin:` is in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
    /// Where the agent's built-in alert rules post (docs/alerts.md), when `alerts:` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Alerts>,
}

/// How bow logs in to a registry to pull images: a user and the bow secret holding the
/// password or token (the value is never in bow.yaml, the plan or the state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    pub username: String,
    pub password_secret: String,
}

/// The registry an image reference names: its first part when that looks like a host
/// (`ghcr.io/team/app`, `localhost:5000/app`), else Docker Hub (`docker.io`).
pub fn image_registry(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// `chaos: allow | deny`: chaos drills (`bow chaos`) run only where they are allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Chaos {
    Allow,
    #[default]
    Deny,
}

/// The HTTPS edge that fronts every service with `routes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    pub http_port: u16,
    pub https_port: u16,
    pub tls: Tls,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<Acme>,
    /// `Strict-Transport-Security` max-age; `0s` turns the header off.
    pub hsts_max_age: Duration,
    /// Changes to the security headers the edge adds to answers that lack them (header name,
    /// lower case → value; an empty value removes one of the defaults).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub security_headers: BTreeMap<String, String>,
    pub max_body_size: Size,
    pub max_header_size: Size,
    /// How long a client may take to send its request headers (slowloris guard).
    pub header_timeout: Duration,
    /// How long a client may keep a request waiting: between two reads of its request body
    /// (then 408), and between two writes of a response it does not take.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: Duration,
    /// How long an instance may keep a request waiting: to take it, to answer it, and
    /// between two reads of its response body (then 504, or the connection closes).
    #[serde(default = "default_upstream_timeout")]
    pub upstream_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: u32,
    /// Export the edge's spans to an OpenTelemetry collector (OTLP over HTTP, JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<Otlp>,
}

fn default_body_timeout() -> Duration {
    crate::decode::defaults::BODY_TIMEOUT
}

fn default_upstream_timeout() -> Duration {
    crate::decode::defaults::UPSTREAM_TIMEOUT
}

/// Where the edge's certificates come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tls {
    /// Leaf certificates issued on demand by bow's local CA.
    SelfSigned,
    /// Certificates from an ACME directory (HTTP-01).
    Acme,
    /// Certificate and key files, reloaded when they change.
    Files { cert: String, key: String },
}

/// ACME account settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acme {
    pub email: String,
    pub directory: String,
    /// A CA certificate (PEM) the directory's own HTTPS is verified with, for a private CA
    /// (else the system's roots, or `SSL_CERT_FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_ca: Option<String>,
    /// How the CA validates a host: `http-01` on the HTTP port (default) or `tls-alpn-01` on
    /// the HTTPS port.
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// Renew when less than this is left (default: a third of the certificate's lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<Duration>,
}

/// The ACME challenge type bow answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AcmeChallenge {
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// The Let's Encrypt production directory, the default ACME directory.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// One service: a command, a container image or a managed PostgreSQL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    #[serde(flatten)]
    pub workload: Workload,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub replicas: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Lets `user` be root (uid 0): without it, validation refuses a service that would run
    /// with every privilege of the host.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_root: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<Python>,
    pub deploy: Deploy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Backup>,
    pub stop_timeout: Duration,
    /// The version of the code in `dir` (`git:<commit>[+<digest of uncommitted changes>]` or
    /// `files:<content digest>`). Not written in bow.yaml: the CLI reads it from `dir` before
    /// plan and apply, so that new code is a new release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The digest of each secret the service uses (name → keyed digest, never a value), filled
    /// in by the binary from the secrets store before plan and apply; never read from the
    /// file. Part of the release: a changed value is a changed service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_digests: BTreeMap<String, String>,
    /// How the service is confined (docs/sandbox.md); left out of the recorded spec when
    /// it is the default, so specs recorded before the key plan no change.
    #[serde(default, skip_serializing_if = "Sandbox::is_default")]
    pub sandbox: Sandbox,
    /// A raw TCP port the edge host passes to the service's healthy instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpRoute>,
}

/// `tcp: {port}`: connections to this port of the host (every address) go to the service's
/// healthy instances (a postgres service's primary), drained before an instance stops.
/// With `sni: [names]`, TLS passthrough: the port may be shared by services that all list
/// names, and each connection goes, still encrypted, to the service whose name the
/// ClientHello asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRoute {
    pub port: u16,
    /// Server names (lower case, exact), empty for a plain TCP route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<String>,
}

/// What runs: exactly one of `command`, `image` or `postgres`; or, for `proxy`, nothing: the
/// agent forwards the service's calls to an outside API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Command(CommandLine),
    Container(Container),
    Postgres(Postgres),
    Proxy(OutsideApi),
}

/// `proxy: {to, inject_headers}`: an outside HTTP(S) API the stack's services call at this
/// service's own name (`http://geo-api`), without holding its key: the agent adds the
/// headers on the way (docs/outside-apis.md). No instance runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutsideApi {
    /// `https://host[:port][/base]` (`http://` only for a trusted network).
    pub to: String,
    /// Header name (lower case) → value; values may hold `${secret:NAME}` references, kept
    /// as references here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inject_headers: BTreeMap<String, String>,
}

impl Workload {
    /// `process`, `container` or `postgres`: which driver runs it.
    pub fn kind(&self) -> &'static str {
        match self {
            Workload::Command(_) => "process",
            Workload::Container(_) => "container",
            Workload::Postgres(_) => "postgres",
            Workload::Proxy(_) => "proxy",
        }
    }
}

/// A command as a shell-like string or as an explicit argv list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CommandLine {
    Shell(String),
    Argv(Vec<String>),
}

/// A container: an image from the engine (`image:`) or one bow builds (`build:`), with the
/// overrides a Compose file would give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    /// The image reference; with `build:`, the name the built image is tagged with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// Replaces the image's CMD: a list as it is, a string split into words like a process's
    /// command (as Compose does), under `/bin/sh -c` when it uses shell syntax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandLine>,
    /// Replaces the image's ENTRYPOINT (same forms as `command`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<CommandLine>,
    /// The port the image listens on inside the container (`None`: it reads `$PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<u16>,
    /// The working directory inside the container (`None`: the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

/// How bow builds a service's image: a Dockerfile in a context directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    /// The context directory (relative paths are anchored at bow.yaml's directory).
    pub context: String,
    /// The Dockerfile, relative to the context (`Dockerfile` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// The stage to build, for a multi-stage Dockerfile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A PostgreSQL server that bow runs from the host's binaries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postgres {
    pub version: u32,
    pub database: String,
    pub user: String,
    pub password_secret: String,
    /// SQL run once, right after the database is created: a file, or a directory whose
    /// `*.sql` files run in name order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// Server settings (`shared_buffers: 256MB`), written to a conf include bow owns.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
    /// Streaming read replicas beside the primary (`<service>-ro`); the service runs
    /// `1 + replicas` instances.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replicas: u32,
    /// How far behind the primary a replica may be and still serve `<service>-ro`.
    #[serde(default = "default_max_lag")]
    pub max_lag: Duration,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn default_max_lag() -> Duration {
    crate::defaults::POSTGRES_MAX_LAG
}

impl Spec {
    /// The postgres service a database name means: `db` is the primary of `db`, `db-ro` (when
    /// `db` has read replicas) its replicas. Returns the service's name, its section and
    /// whether the name is the replicas'.
    pub fn database<'s>(&'s self, name: &'s str) -> Option<(&'s str, &'s Postgres, bool)> {
        let postgres = |service: &str| match &self.services.get(service)?.workload {
            Workload::Postgres(postgres) => Some(postgres),
            _ => None,
        };
        if let Some(found) = postgres(name) {
            return Some((name, found, false));
        }
        let base = name.strip_suffix(REPLICA_SUFFIX)?;
        postgres(base)
            .filter(|p| p.replicas > 0)
            .map(|found| (base, found, true))
    }
}

impl Postgres {
    /// The name other services use for the replicas (`db-ro`), if it has any.
    pub fn replica_name(&self, service: &str) -> Option<String> {
        (self.replicas > 0).then(|| format!("{service}{REPLICA_SUFFIX}"))
    }
}

/// What follows a postgres service's name in the name of its read replicas.
pub const REPLICA_SUFFIX: &str = "-ro";

/// How bow decides an instance is healthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    #[serde(flatten)]
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    /// Failed checks in a row before the instance counts as unhealthy.
    pub retries: u32,
    /// Failures during this time after start do not count.
    pub start_period: Duration,
}

/// The probe of a health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// GET this path on the instance's `PORT`; 2xx and 3xx are healthy.
    Http(String),
    /// Connect to this port, or the instance's `PORT` when `true`.
    Tcp(TcpTarget),
    /// Run this command; exit 0 is healthy.
    Exec(String),
}

/// The port a tcp check connects to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TcpTarget {
    InstancePort(bool),
    Port(u16),
}

/// Limits on what an instance may use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    /// CPU cores, fractions allowed (`0.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpu.is_none()
    }
}

/// A virtualenv that bow builds for a command service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Python {
    /// Relative to the service's `dir`.
    pub requirements: String,
    /// The interpreter to build with, like `3.11`; default: the host's `python3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// How a new release replaces the running one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    pub strategy: Strategy,
    /// New instances started at once during a rolling deploy.
    pub max_surge: u32,
    /// How long a new instance has to become healthy before the deploy is rolled back.
    pub timeout: Duration,
    /// How long in-flight requests get to finish on an instance taken out of service.
    pub drain_timeout: Duration,
}

/// The deploy strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    Rolling,
    BlueGreen,
}

/// Persistent storage for a service: `name:/path` (a volume bow manages) or
/// `./host/dir:/path` (a directory of the project), optionally `:ro`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub source: VolumeSource,
    pub target: String,
    pub read_only: bool,
}

/// Where a volume's data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    Named(String),
    Path(String),
}

impl std::fmt::Display for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            VolumeSource::Named(name) => write!(f, "{name}:{}", self.target)?,
            VolumeSource::Path(path) => write!(f, "{path}:{}", self.target)?,
        }
        if self.read_only {
            write!(f, ":ro")?;
        }
        Ok(())
    }
}

impl Serialize for Volume {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Volume {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        crate::decode::parse_volume(&text).map_err(serde::de::Error::custom)
    }
}

/// Backups of a service's database or volumes (docs/backups.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// Five-field cron expression, in UTC: the agent runs `bow backup run` then.
    #[serde(default)]
    pub schedule: Option<String>,
    /// How many complete backups to keep.
    pub keep: u32,
    /// `s3://bucket/prefix`, `file:///dir` or a directory path.
    pub to: String,
    /// What a postgres backup is: `logical` (pg_dump) or `base` (refused in this version).
    #[serde(default)]
    pub kind: BackupKind,
    /// Continuous WAL archiving for point-in-time recovery (refused in this version).
    #[serde(default)]
    pub pitr: bool,
    /// An S3-compatible endpoint (`https://s3.example.net`); AWS when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The S3 region; `us-east-1` when absent.
    #[serde(default)]
    pub region: Option<String>,
    /// The secret holding the S3 access key id (needed with `s3://`).
    #[serde(default)]
    pub access_key_secret: Option<String>,
    /// The secret holding the S3 secret access key (needed with `s3://`).
    #[serde(default)]
    pub secret_key_secret: Option<String>,
    /// SQL a restore drill runs in the restored database; the drill fails unless it returns
    /// true.
    #[serde(default)]
    pub check: Option<String>,
    /// When restore drills of the newest backup run (`bow backup verify`): a cron expression
    /// (`daily` and `weekly` are `@daily`, `@weekly`), UTC.
    #[serde(default)]
    pub verify: Option<String>,
}

/// What a postgres backup is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// `pg_dump --format=custom` of the service's database.
    #[default]
    Logical,
    /// `pg_basebackup` of the whole cluster.
    Base,
}
