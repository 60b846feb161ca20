//! The plan as plain text, the form `bow plan` prints and snapshot tests compare.

use std::fmt;

use serde_json::Value;

use crate::{Action, FieldChange, Plan};

fn value(value: &Option<Value>) -> String {
    match value {
        None => "(unset)".to_string(),
        Some(value) => serde_json::to_string(value).unwrap_or_default(),
    }
}

fn field_line(f: &mut fmt::Formatter<'_>, change: &FieldChange) -> fmt::Result {
    // A secret's digest is shown as the fact that the value changed, never as data.
    if let Some(name) = crate::changed_secret(change) {
        let (sign, what) = match (&change.before, &change.after) {
            (None, _) => ("+", "added"),
            (_, None) => ("-", "removed"),
            _ => ("~", "changed"),
        };
        return writeln!(f, "    {sign} secret {name} ({what})  ({})", label(change));
    }
    let (sign, text) = match (&change.before, &change.after) {
        (None, _) => ("+", format!("{}: {}", change.path, value(&change.after))),
        (_, None) => ("-", format!("{}: {}", change.path, value(&change.before))),
        _ => (
            "~",
            format!(
                "{}: {} → {}",
                change.path,
                value(&change.before),
                value(&change.after)
            ),
        ),
    };
    writeln!(f, "    {sign} {text}  ({})", label(change))
}

/// The class, with how it is carried out where the class alone does not say it.
fn label(change: &FieldChange) -> String {
    match &change.how {
        Some(how) => format!("{}: {how}", change.class.label()),
        None => change.class.label().to_string(),
    }
}

fn plural(count: u32, word: &str) -> String {
    if count == 1 {
        format!("{count} {word}")
    } else {
        format!("{count} {word}s")
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.first_apply {
            " (nothing applied yet)"
        } else {
            ""
        };
        writeln!(
            f,
            "plan for {} in {}{state}",
            self.project, self.environment
        )?;
        if !self.has_changes() {
            return writeln!(f, "\nno changes: the running system matches the file");
        }
        writeln!(f)?;
        for add in &self.diff.to_add {
            let routes = if add.routes.is_empty() {
                String::new()
            } else {
                format!(", routes {}", add.routes.join(" "))
            };
            let sandbox = add
                .sandbox
                .as_ref()
                .map_or(String::new(), |s| format!(", sandbox {s}"));
            // A postgres service's instances are a primary and its streaming replicas.
            let instances = match add.kind.as_str() {
                "postgres" if add.replicas <= 1 => "primary".to_string(),
                "postgres" => format!(
                    "primary + {} (streaming, as {}{})",
                    plural(add.replicas - 1, "replica"),
                    add.service,
                    bow_spec::REPLICA_SUFFIX
                ),
                _ => plural(add.replicas, "replica"),
            };
            writeln!(
                f,
                "+ {}  ({}, {instances}{routes}{sandbox})",
                add.service, add.kind,
            )?;
        }
        for change in &self.diff.to_change {
            writeln!(f, "~ {}  ({})", change.service, change.class.label())?;
            for field in &change.fields {
                field_line(f, field)?;
            }
        }
        for remove in &self.diff.to_remove {
            writeln!(
                f,
                "- {}  (stop {})",
                remove.service,
                plural(remove.replicas, "instance")
            )?;
            if let Some(volume) = &remove.keeps_volume {
                writeln!(
                    f,
                    "    ! data kept: volume {volume} stays on this host; `bow volume rm {volume}` deletes it"
                )?;
            }
        }
        if !self.diff.edge.is_empty() {
            writeln!(f, "~ edge  (edge-only)")?;
            for field in &self.diff.edge {
                field_line(f, field)?;
            }
        }
        if !self.diff.hosts.is_empty() {
            writeln!(f, "~ hosts  (move)")?;
            for field in &self.diff.hosts {
                field_line(f, field)?;
            }
        }
        writeln!(f, "\nsteps:")?;
        for (position, action) in self.actions.iter().enumerate() {
            let text = match action {
                Action::Create { service, replicas } => {
                    format!("create {service} ({})", plural(*replicas, "instance"))
                }
                Action::Replace { service, strategy } => {
                    format!("deploy a new release of {service} ({strategy})")
                }
                Action::Update { service, fields } => {
                    format!("update {service} in place: {}", fields.join(", "))
                }
                Action::Scale { service, from, to } => {
                    format!("scale {service} from {from} to {to}")
                }
                Action::Move { service } => format!(
                    "move the instances of {service} that no longer fit its placement (the others keep running)"
                ),
                Action::Routes { service } => format!("update the edge routes of {service}"),
                Action::Remove { service } => format!("stop and remove {service}"),
                Action::Edge { fields } => format!("apply edge settings: {}", fields.join(", ")),
                Action::Hosts { fields } => format!(
                    "place instances again on the changed hosts ({}): only those that no longer fit move",
                    fields.join(", ")
                ),
            };
            writeln!(f, "  {}. {text}", position + 1)?;
        }
        writeln!(
            f,
            "\n{} to add, {} to change, {} to remove",
            self.diff.to_add.len(),
            self.diff.to_change.len()
                + usize::from(!self.diff.edge.is_empty())
                + usize::from(!self.diff.hosts.is_empty()),
            self.diff.to_remove.len()
        )
    }
}
