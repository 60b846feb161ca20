//! What an apply would change: desired [`Spec`] × recorded [`Spec`] → [`Plan`].
//!
//! Pure: no file system, no clock. The first apply is a plan against no recorded state. Each
//! changed field is classed by what it takes to carry it out ([`ChangeClass`]), and the plan
//! orders its actions so that dependencies come before dependants.

mod diff;
pub mod postgres;
mod render;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use bow_spec::Spec;

pub use diff::{
    SECRET_DIGESTS_FIELD, changed_secret, classify_edge_field, classify_service_field,
    service_fields,
};

/// What carrying out a change takes. Ordered: a service's class is its largest field class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeClass {
    /// Only the edge's route table or settings change; no instance is touched.
    EdgeOnly,
    /// The agent updates its own view (scale, health checks, deploy settings); running
    /// instances keep running.
    InPlace,
    /// Where instances may run changed (`placement:`, `hosts:`): the ones on a host that
    /// no longer fits start on one that does, then stop where they ran; the others keep
    /// running. Nothing restarts on one host.
    Move,
    /// New instances with the new release replace the old ones (rolling or blue-green).
    Replace,
}

impl ChangeClass {
    pub fn label(&self) -> &'static str {
        match self {
            ChangeClass::EdgeOnly => "edge-only",
            ChangeClass::InPlace => "in-place",
            ChangeClass::Move => "move",
            ChangeClass::Replace => "replace",
        }
    }
}

/// One changed field, at its config path (`services.back.replicas`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub path: String,
    /// `None`: the field was not set before.
    pub before: Option<Value>,
    /// `None`: the field is no longer set.
    pub after: Option<Value>,
    pub class: ChangeClass,
    /// How the change is carried out when the class alone does not say it (a postgres
    /// setting: `reload` or `restart`; a postgres password: `ALTER ROLE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub how: Option<String>,
}

/// A service the recorded state does not have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceAdd {
    pub service: String,
    /// `process`, `container` or `postgres`.
    pub kind: String,
    pub replicas: u32,
    pub routes: Vec<String>,
    /// Its sandbox when not the default (`off`, `strict +caps net_bind_service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// A service whose fields differ from the recorded ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceChange {
    pub service: String,
    pub class: ChangeClass,
    pub fields: Vec<FieldChange>,
}

/// A recorded service the file no longer has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRemove {
    pub service: String,
    pub replicas: u32,
    /// The volume whose data stays on the host (a postgres service's data directory):
    /// removing a service never deletes data, `bow volume rm` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keeps_volume: Option<String>,
}

/// Desired against recorded, service by service and field by field.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Diff {
    pub to_add: Vec<ServiceAdd>,
    pub to_change: Vec<ServiceChange>,
    pub to_remove: Vec<ServiceRemove>,
    /// Changes to `edge:` settings.
    pub edge: Vec<FieldChange>,
    /// Changes to `hosts:` (members, roles, capacity, etcd): placement runs again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<FieldChange>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.to_add.is_empty()
            && self.to_change.is_empty()
            && self.to_remove.is_empty()
            && self.edge.is_empty()
            && self.hosts.is_empty()
    }
}

/// One step of carrying the plan out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Start a new service's instances.
    Create { service: String, replicas: u32 },
    /// Deploy a new release of a service with its deploy strategy.
    Replace { service: String, strategy: String },
    /// Change the agent's view of a service without touching its instances.
    Update {
        service: String,
        fields: Vec<String>,
    },
    /// Add or remove instances without replacing the others.
    Scale { service: String, from: u32, to: u32 },
    /// Run the instances that no longer fit the service's placement on hosts that do (start
    /// there, then stop where they ran); the others keep running.
    Move { service: String },
    /// Update the edge's route table for a service.
    Routes { service: String },
    /// Stop a service's instances and forget it.
    Remove { service: String },
    /// Apply new edge settings.
    Edge { fields: Vec<String> },
    /// Place the instances again on the changed hosts (`hosts.members.db1.roles`).
    Hosts { fields: Vec<String> },
}

/// Everything `apply` would do, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub project: String,
    pub environment: String,
    /// True when there is no recorded state: everything is new.
    pub first_apply: bool,
    pub diff: Diff,
    pub actions: Vec<Action>,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        !self.diff.is_empty()
    }
}

/// The largest class among the fields that differ between two versions of a service;
/// `None` when they are the same.
pub fn classify_service_change(
    before: &bow_spec::Service,
    after: &bow_spec::Service,
) -> Option<ChangeClass> {
    diff::service_fields("services.s", before, after)
        .iter()
        .map(|f| f.class)
        .max()
}

/// Plans `desired` against what was last applied (`None`: nothing yet).
pub fn plan(desired: &Spec, recorded: Option<&Spec>) -> Plan {
    let diff = diff::diff(desired, recorded);
    let actions = diff::actions(desired, recorded, &diff);
    Plan {
        project: desired.project.clone(),
        environment: desired.environment.clone(),
        first_apply: recorded.is_none(),
        diff,
        actions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_key_has_an_explicit_class() {
        for key in bow_spec::SERVICE_KEYS {
            assert!(
                diff::explicit_service_class(key).is_some(),
                "classify `{key}` in bow-plan's diff.rs"
            );
        }
    }

    #[test]
    fn a_changed_secret_replaces_the_services_using_it_without_showing_digests() {
        let text =
            "project: p\nservices:\n  a: {command: run, secrets: [db]}\n  b: {command: run}\n";
        let with = |digest: &str| {
            let mut spec = bow_spec::load(text, &Default::default()).unwrap();
            let a = spec.services.get_mut("a").unwrap();
            a.secret_digests.insert("db".into(), digest.into());
            spec
        };
        let (before, after) = (with("0011"), with("2233"));
        let plan = plan(&after, Some(&before));
        assert_eq!(plan.diff.to_change.len(), 1);
        assert_eq!(plan.diff.to_change[0].service, "a");
        assert_eq!(plan.diff.to_change[0].class, ChangeClass::Replace);
        assert_eq!(
            changed_secret(&plan.diff.to_change[0].fields[0]),
            Some("db")
        );
        assert!(matches!(&plan.actions[..], [Action::Replace { service, .. }] if service == "a"));
        let text = plan.to_string();
        assert!(
            text.contains("    ~ secret db (changed)  (replace)"),
            "{text}"
        );
        assert!(!text.contains("2233") && !text.contains("0011"), "{text}");
        assert!(!super::plan(&after, Some(&after)).has_changes());
    }

    #[test]
    fn a_secret_only_the_edge_reads_is_an_edge_only_change() {
        // A route's users file and an outside API's key are never delivered to an instance:
        // a new value is taken by the edge (and the agent's outside-API listener) alone.
        let text = "project: p\nservices:\n  a:\n    command: run\n    secrets: [both]\n    routes: [{host: a.example.com, auth: {basic: {users_secret: users}}}, {host: b.example.com, auth: {basic: {users_secret: both}}}]\n  api: {proxy: {to: 'https://api.example.com', inject_headers: {X-Key: '${secret:key}'}}}\n";
        let with = |digest: &str| {
            let mut spec = bow_spec::load(text, &Default::default()).unwrap();
            let a = spec.services.get_mut("a").unwrap();
            a.secret_digests.insert("users".into(), digest.into());
            a.secret_digests.insert("both".into(), "same".into());
            let api = spec.services.get_mut("api").unwrap();
            api.secret_digests.insert("key".into(), digest.into());
            spec
        };
        let (before, after) = (with("0011"), with("2233"));
        let plan = plan(&after, Some(&before));
        assert_eq!(plan.diff.to_change.len(), 2, "{plan}");
        for change in &plan.diff.to_change {
            assert_eq!(change.class, ChangeClass::EdgeOnly, "{plan}");
        }
        assert!(
            plan.actions
                .iter()
                .all(|action| matches!(action, Action::Routes { .. })),
            "{:?}",
            plan.actions
        );
        // A secret the service also gets as a file is still a new release.
        let mut changed = with("0011");
        changed
            .services
            .get_mut("a")
            .unwrap()
            .secret_digests
            .insert("both".into(), "new".into());
        let plan = super::plan(&changed, Some(&before));
        assert_eq!(plan.diff.to_change[0].class, ChangeClass::Replace, "{plan}");
    }

    #[test]
    fn a_placement_change_is_a_move_unless_the_release_is_replaced() {
        let load = |fields: &str| {
            bow_spec::load(
                &format!("project: p\nservices:\n  a:\n    command: run\n{fields}"),
                &Default::default(),
            )
            .unwrap()
        };
        let before = load("");
        let moved = load("    placement: { spread: true }\n");
        let plan = plan(&moved, Some(&before));
        assert_eq!(plan.diff.to_change[0].class, ChangeClass::Move);
        assert_eq!(
            plan.actions,
            vec![Action::Move {
                service: "a".into()
            }]
        );
        let replaced = load("    placement: { spread: true }\n    env: { A: '1' }\n");
        let plan = super::plan(&replaced, Some(&before));
        assert_eq!(plan.diff.to_change[0].class, ChangeClass::Replace);
        assert!(matches!(&plan.actions[..], [Action::Replace { .. }]));
        assert!(
            ChangeClass::InPlace < ChangeClass::Move && ChangeClass::Move < ChangeClass::Replace
        );
    }

    #[test]
    fn identical_specs_plan_nothing() {
        let spec = bow_spec::load(
            "project: p\nservices:\n  a: {command: run}\n",
            &Default::default(),
        )
        .unwrap();
        let plan = plan(&spec, Some(&spec));
        assert!(!plan.has_changes());
        assert!(plan.actions.is_empty());
        let first = super::plan(&spec, None);
        assert!(first.first_apply);
        assert_eq!(
            first.actions,
            vec![Action::Create {
                service: "a".into(),
                replicas: 1
            }]
        );
    }
}
