//! `bow trust`: where bow's local CA certificate is, and how to make clients trust it.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::StackArgs;
use crate::session;

pub fn run(args: &StackArgs) -> Result<ExitCode> {
    let state_dir = session::state_dir_only(args)?;
    let certificate = bow_agent::edge::ca_certificate(&state_dir);
    session::check_readable(&certificate)?;
    if !certificate.exists() {
        eprintln!(
            "no local CA yet in {}: it is made when the edge first starts (`bow up` with a service that has `routes:` and `edge.tls: self-signed`)",
            state_dir.display()
        );
        return Ok(ExitCode::from(1));
    }
    let path = certificate.display();
    println!("{path}");
    eprintln!(
        "\nbow's local CA signs the edge's certificates for this stack. To trust it:\n\
         \n  curl --cacert {path} https://HOST:PORT/\
         \n  Debian/Ubuntu: cp {path} /usr/local/share/ca-certificates/bow-local-ca.crt && update-ca-certificates\
         \n  Fedora/RHEL:   cp {path} /etc/pki/ca-trust/source/anchors/bow-local-ca.pem && update-ca-trust\
         \n  macOS:         security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {path}\
         \n  Firefox uses its own store: Settings → Certificates → Import.\n\
         \nIts key stays in the same directory (mode 0600); anyone who can read it can impersonate any host to clients that trust it."
    );
    Ok(ExitCode::SUCCESS)
}
