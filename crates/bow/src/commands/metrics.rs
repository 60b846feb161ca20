//! `bow metrics scrape-config`: a Prometheus scrape job for the stack's admin listener,
//! from the file (no agent needed). The token is referenced as a file Prometheus reads; its
//! value is never printed.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::cli::{MetricsCommand, StackArgs};
use crate::stack;

pub fn run(command: MetricsCommand, outer: &StackArgs) -> Result<ExitCode> {
    match command {
        MetricsCommand::ScrapeConfig {
            stack,
            token_file,
            ca_file,
        } => scrape_config(&stack.or(outer), &token_file, &ca_file),
    }
}

fn scrape_config(args: &StackArgs, token_file: &str, ca_file: &str) -> Result<ExitCode> {
    let (_, spec) = stack::load(args)?;
    let Some(admin) = &spec.admin else {
        bail!(
            "{} ({}) has no admin listener: add `admin: {{ listen: 127.0.0.1:9100 }}` to bow.yaml (docs/metrics.md)",
            spec.project,
            spec.environment
        );
    };
    // An unspecified address listens everywhere: Prometheus reaches it by this host's name.
    let target = if admin.listen.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_string())
            .unwrap_or_else(|_| "localhost".to_string());
        format!("{host}:{}", admin.listen.port())
    } else {
        admin.listen.to_string()
    };
    let job = format!("bow-{}-{}", spec.project, spec.environment);
    println!("# {job}: add under `scrape_configs:` in prometheus.yml (docs/metrics.md)");
    println!("- job_name: {job}");
    println!("  scrape_interval: 15s");
    println!("  metrics_path: /metrics");
    // Off loopback the listener speaks HTTPS only, with a certificate of bow's local CA.
    if !admin.listen.ip().is_loopback() {
        println!("  scheme: https");
        println!(
            "  # {ca_file}: a copy of the agent's CA certificate, <state-dir>/ca/ca.pem (not secret)"
        );
        println!("  tls_config: {{ ca_file: {ca_file} }}");
    }
    if let Some(secret) = &admin.token_secret {
        println!(
            "  # {token_file} holds the value of the bow secret `{secret}`, readable by prometheus only"
        );
        println!("  authorization: {{ type: Bearer, credentials_file: {token_file} }}");
    }
    println!("  static_configs:");
    println!("    - targets: ['{target}']");
    println!(
        "      labels: {{ project: {}, environment: {} }}",
        spec.project, spec.environment
    );
    Ok(ExitCode::SUCCESS)
}
