//! The field-level diff of two specs and the ordered actions that carry it out.

use std::collections::BTreeMap;

use serde_json::Value;

use bow_spec::{Spec, Strategy};

use crate::{Action, ChangeClass, Diff, FieldChange, ServiceAdd, ServiceChange, ServiceRemove};

/// What changing a top-level service field takes. Unknown fields are treated as `Replace`,
/// the safe choice; a test keeps every field of `bow_spec::Service` explicitly classed.
pub fn classify_service_field(field: &str) -> ChangeClass {
    explicit_service_class(field).unwrap_or(ChangeClass::Replace)
}

pub(crate) fn explicit_service_class(field: &str) -> Option<ChangeClass> {
    Some(match field {
        // What runs and how it is started: a new release.
        "command" | "image" | "build" | "postgres" | "dir" | "env" | "user" | "resources"
        | "python" | "secrets" | "volumes" | "code" | "sandbox" => ChangeClass::Replace,
        // A container's image, build and overrides (`container` is how they are recorded).
        "container" | "entrypoint" | "container_port" | "working_dir" => ChangeClass::Replace,
        // A secret's value changed (its digest is part of the release).
        SECRET_DIGESTS_FIELD => ChangeClass::Replace,
        // The edge's route table only; a TCP route is a listener of the agent, and so is
        // an outside API (`proxy:`: no instance runs).
        "routes" | "tcp" | "proxy" => ChangeClass::EdgeOnly,
        // The agent's own view: instance count, checks, ordering, schedules, timeouts, and
        // the stable service address (a listener of the agent, not of the instance).
        "replicas" | "health" | "depends_on" | "deploy" | "backup" | "stop_timeout" | "port" => {
            ChangeClass::InPlace
        }
        // A permission checked by validation: what runs (`user`) is classed by itself.
        "allow_root" => ChangeClass::InPlace,
        // Where it may run: instances that no longer fit their host move, the others stay.
        "placement" => ChangeClass::Move,
        _ => return None,
    })
}

/// The service field that carries the digests of its secrets' values.
pub const SECRET_DIGESTS_FIELD: &str = "secret_digests";

/// The secret a change is about, when it is a change of a secret's value
/// (`services.<service>.secret_digests.<name>`).
pub fn changed_secret(change: &FieldChange) -> Option<&str> {
    let mut parts = change.path.splitn(4, '.');
    let (_, _, field, name) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (field == SECRET_DIGESTS_FIELD).then_some(name)
}

/// Every `edge:` setting is applied by the edge alone.
pub fn classify_edge_field(_field: &str) -> ChangeClass {
    ChangeClass::EdgeOnly
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

pub fn diff(desired: &Spec, recorded: Option<&Spec>) -> Diff {
    let mut diff = Diff::default();
    let empty = BTreeMap::new();
    let recorded_services = recorded.map_or(&empty, |r| &r.services);
    for (name, service) in &desired.services {
        match recorded_services.get(name) {
            None => diff.to_add.push(ServiceAdd {
                service: name.clone(),
                kind: service.workload.kind().to_string(),
                replicas: service.replicas,
                routes: service.routes.iter().map(ToString::to_string).collect(),
                sandbox: (!service.sandbox.is_default()).then(|| service.sandbox.summary()),
            }),
            Some(before) => {
                let mut fields = Vec::new();
                let path = format!("services.{name}");
                compare(
                    &path,
                    Some(&to_value(before)),
                    Some(&to_value(service)),
                    &mut fields,
                    &|p| classify_service_path(p, service),
                );
                if let Some(class) = fields.iter().map(|f| f.class).max() {
                    diff.to_change.push(ServiceChange {
                        service: name.clone(),
                        class,
                        fields,
                    });
                }
            }
        }
    }
    for (name, service) in recorded_services {
        if !desired.services.contains_key(name) {
            diff.to_remove.push(ServiceRemove {
                service: name.clone(),
                replicas: service.replicas,
                keeps_volume: matches!(service.workload, bow_spec::Workload::Postgres(_))
                    .then(|| name.clone()),
            });
        }
    }
    if let Some(recorded) = recorded {
        compare(
            "edge",
            Some(&to_value(&recorded.edge)),
            Some(&to_value(&desired.edge)),
            &mut diff.edge,
            &|p| {
                (
                    classify_edge_field(p.split('.').nth(1).unwrap_or_default()),
                    None,
                )
            },
        );
    }
    let no_hosts = serde_json::json!({"members": {}});
    let hosts_of = |spec: Option<&Spec>| {
        spec.and_then(|s| s.hosts.as_ref())
            .map_or_else(|| no_hosts.clone(), to_value)
    };
    if recorded.is_some() {
        compare(
            "hosts",
            Some(&hosts_of(recorded)),
            Some(&hosts_of(Some(desired))),
            &mut diff.hosts,
            &|_| (ChangeClass::Move, None),
        );
    }
    diff
}

/// The changed fields of one service, at paths under `path`.
pub fn service_fields(
    path: &str,
    before: &bow_spec::Service,
    after: &bow_spec::Service,
) -> Vec<FieldChange> {
    let mut fields = Vec::new();
    compare(
        path,
        Some(&to_value(before)),
        Some(&to_value(after)),
        &mut fields,
        &|p| classify_service_path(p, after),
    );
    fields
}

/// The class of a change at `path` (`services.<name>.<field>...`) of `service` (the desired
/// definition), and how it is carried out when the class alone does not say it. A postgres
/// service takes a changed setting by a reload unless PostgreSQL reads it only at start
/// (`pg_settings.context = 'postmaster'`), and a changed password by `ALTER ROLE`.
fn classify_service_path(path: &str, service: &bow_spec::Service) -> (ChangeClass, Option<String>) {
    let mut parts = path.splitn(5, '.');
    let (field, sub, name) = (parts.nth(2).unwrap_or_default(), parts.next(), parts.next());
    // A secret only the edge or the agent reads (a route's users, an outside API's key):
    // never delivered to an instance, so a new value touches none.
    if let (SECRET_DIGESTS_FIELD, Some(secret), None) = (field, sub, name)
        && bow_spec::route_secrets(service).contains(&secret)
        && !bow_spec::service_secrets(service).contains(&secret)
    {
        return (
            ChangeClass::EdgeOnly,
            Some("read again by the edge; nothing restarts".to_string()),
        );
    }
    if let bow_spec::Workload::Postgres(postgres) = &service.workload {
        match (field, sub, name) {
            ("postgres", Some("settings"), Some(setting)) => {
                return if crate::postgres::needs_restart(setting) {
                    (ChangeClass::Replace, Some("restart".to_string()))
                } else {
                    (ChangeClass::InPlace, Some("reload".to_string()))
                };
            }
            (SECRET_DIGESTS_FIELD, Some(secret), None) if secret == postgres.password_secret => {
                return (ChangeClass::InPlace, Some("ALTER ROLE".to_string()));
            }
            ("postgres", Some("replicas"), None) => {
                return (
                    classify_service_field("replicas"),
                    Some(
                        "streaming replicas: a new one starts from a copy of the primary"
                            .to_string(),
                    ),
                );
            }
            ("postgres", Some("max_lag"), None) => {
                return (classify_service_field("health"), None);
            }
            ("postgres", Some("version"), None) => {
                return (
                    ChangeClass::Replace,
                    Some(
                        "refused: a major version change needs pg_upgrade or a dump and restore"
                            .to_string(),
                    ),
                );
            }
            _ => {}
        }
    }
    (classify_service_field(field), None)
}

/// Records every leaf that differs between `before` and `after`. Objects are compared key by
/// key; lists and scalars as a whole.
fn compare(
    path: &str,
    before: Option<&Value>,
    after: Option<&Value>,
    out: &mut Vec<FieldChange>,
    class: &dyn Fn(&str) -> (ChangeClass, Option<String>),
) {
    match (before, after) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                compare(&format!("{path}.{key}"), a.get(key), b.get(key), out, class);
            }
        }
        (a, b) if a == b => {}
        (a, b) => {
            let (class, how) = class(path);
            out.push(FieldChange {
                path: path.to_string(),
                before: a.cloned(),
                after: b.cloned(),
                class,
                how,
            })
        }
    }
}

pub fn actions(desired: &Spec, recorded: Option<&Spec>, diff: &Diff) -> Vec<Action> {
    let mut actions = Vec::new();
    for name in bow_spec::dependency_order(desired) {
        let service = &desired.services[&name];
        if diff.to_add.iter().any(|a| a.service == name) {
            actions.push(Action::Create {
                service: name.clone(),
                replicas: service.replicas,
            });
            continue;
        }
        let Some(change) = diff.to_change.iter().find(|c| c.service == name) else {
            continue;
        };
        let field_of = |f: &FieldChange| f.path.split('.').nth(2).unwrap_or_default().to_string();
        if change.class == ChangeClass::Replace {
            let strategy = match service.deploy.strategy {
                Strategy::Rolling => "rolling",
                Strategy::BlueGreen => "blue-green",
            };
            actions.push(Action::Replace {
                service: name.clone(),
                strategy: strategy.to_string(),
            });
        } else {
            let mut fields: Vec<String> = change
                .fields
                .iter()
                .filter(|f| f.class == ChangeClass::InPlace)
                .map(field_of)
                .filter(|f| f != "replicas")
                .collect();
            fields.dedup();
            if !fields.is_empty() {
                actions.push(Action::Update {
                    service: name.clone(),
                    fields,
                });
            }
            let from = recorded
                .and_then(|r| r.services.get(&name))
                .map_or(0, |s| s.replicas);
            if from != service.replicas {
                actions.push(Action::Scale {
                    service: name.clone(),
                    from,
                    to: service.replicas,
                });
            }
        }
        if change.class != ChangeClass::Replace
            && change.fields.iter().any(|f| f.class == ChangeClass::Move)
        {
            actions.push(Action::Move {
                service: name.clone(),
            });
        }
        if change
            .fields
            .iter()
            .any(|f| f.class == ChangeClass::EdgeOnly)
        {
            actions.push(Action::Routes {
                service: name.clone(),
            });
        }
    }
    if let Some(recorded) = recorded {
        let mut order = bow_spec::dependency_order(recorded);
        order.reverse();
        for name in order {
            if diff.to_remove.iter().any(|r| r.service == name) {
                actions.push(Action::Remove { service: name });
            }
        }
    }
    if !diff.edge.is_empty() {
        let mut fields: Vec<String> = diff
            .edge
            .iter()
            .map(|f| f.path.split('.').nth(1).unwrap_or_default().to_string())
            .collect();
        fields.dedup();
        actions.push(Action::Edge { fields });
    }
    if !diff.hosts.is_empty() {
        let mut fields: Vec<String> = diff
            .hosts
            .iter()
            .map(|f| f.path.splitn(4, '.').take(3).collect::<Vec<_>>().join("."))
            .collect();
        fields.dedup();
        actions.push(Action::Hosts { fields });
    }
    actions
}
