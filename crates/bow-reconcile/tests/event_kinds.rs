//! docs/agent.md lists every kind of event the agent records (`EventKind::ALL`).

use bow_reconcile::EventKind;

#[test]
fn docs_list_every_event_kind() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/agent.md");
    let docs = std::fs::read_to_string(path).expect("docs/agent.md");
    let missing: Vec<&str> = EventKind::ALL
        .iter()
        .map(EventKind::label)
        .filter(|label| !docs.contains(&format!("`{label}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/agent.md does not list: {missing:?}"
    );
}

#[test]
fn event_kinds_are_distinct_and_ordered() {
    let labels: Vec<&str> = EventKind::ALL.iter().map(EventKind::label).collect();
    let mut sorted = labels.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        labels, sorted,
        "EventKind::ALL: one of each, in label order"
    );
}
