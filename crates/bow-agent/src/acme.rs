//! `edge.tls: acme`: the edge's certificates from an ACME CA (`bow-acme`), issued and renewed
//! in the background while bow's local CA serves the hosts that have none yet.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bow_acme::{Acme, AcmeSettings, Challenge, Report};
use bow_reconcile::EventKind;
use bow_spec::Spec;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::plane::Plane;

/// `<state-dir>/acme`: the account, certificates and their records (`bow certs`).
pub fn acme_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("acme")
}

/// The ACME side of a running edge: who issues, and the hosts it issues for.
pub(crate) struct AcmeRuntime {
    pub acme: Arc<Acme>,
    hosts: watch::Sender<Vec<String>>,
    task: JoinHandle<()>,
}

impl Drop for AcmeRuntime {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AcmeRuntime {
    /// The routed hosts of `spec` (the ones a CA can validate are ordered).
    pub(crate) fn set_hosts(&self, spec: &Spec) {
        let hosts = route_hosts(spec);
        self.hosts.send_if_modified(|current| {
            let changed = *current != hosts;
            if changed {
                *current = hosts;
            }
            changed
        });
    }
}

fn route_hosts(spec: &Spec) -> Vec<String> {
    let mut hosts: Vec<String> = spec
        .services
        .values()
        .flat_map(|s| s.routes.iter().map(|r| r.host.clone()))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

impl Plane {
    /// The certificate source of an ACME edge, issuing for `spec`'s hosts from now on.
    pub(crate) fn start_acme(
        self: &Arc<Self>,
        spec: &Spec,
        fallback: Arc<bow_edge::LocalCa>,
    ) -> Result<AcmeRuntime, String> {
        let settings = spec
            .edge
            .acme
            .as_ref()
            .ok_or("tls: acme needs an `acme:` section")?;
        let agent = Arc::downgrade(self);
        let report = Box::new(move |report: Report| {
            let Some(agent) = agent.upgrade() else { return };
            let (host, message) = match report {
                Report::Issued { host, message } => (host, message),
                Report::Failed { host, message } => (host, format!("failed: {message}")),
            };
            agent.emit("", &host, EventKind::Certificate, &message);
        });
        let acme = Arc::new(Acme::open(
            AcmeSettings {
                email: settings.email.clone(),
                directory: settings.directory.clone(),
                directory_ca: settings.directory_ca.as_ref().map(PathBuf::from),
                challenge: match settings.challenge {
                    bow_spec::AcmeChallenge::Http01 => Challenge::Http01,
                    bow_spec::AcmeChallenge::TlsAlpn01 => Challenge::TlsAlpn01,
                },
                renew_before: settings.renew_before.map(|d| d.as_std()),
                dir: acme_dir(&self.state_dir),
            },
            fallback,
            report,
        )?);
        let (hosts, receiver) = watch::channel(route_hosts(spec));
        let task = tokio::spawn(acme.clone().run(receiver));
        Ok(AcmeRuntime { acme, hosts, task })
    }
}
