//! Property: validation never panics, whatever the input (arbitrary text, arbitrary YAML
//! trees built from the schema's own vocabulary, and random edits of a valid file).

use proptest::prelude::*;

const FULL: &str = include_str!("../../../tests/fixtures/good/full.yaml");

/// Names that are not keys of the schema but stand where names go (services, environments).
const NAMES: &[&str] = &["development", "production", "a", "b", "web", "db"];

/// The decoder's own key lists plus [`NAMES`]: every key the decoder reads is fuzzed.
fn vocabulary() -> Vec<&'static str> {
    let mut words: Vec<&'static str> = bow_spec::all_keys().into_iter().collect();
    words.extend(NAMES);
    words
}

const SCALARS: &[&str] = &[
    "2s",
    "500ms",
    "soon",
    "0",
    "-1",
    "70000",
    "5001",
    "true",
    "~",
    "",
    "256M",
    "1X",
    "${domain}",
    "${PORT}",
    "${secret:x}",
    "${",
    "$${x}",
    "a.localhost/api",
    "http://x",
    "0 3 * * *",
    "@daily",
    "blue-green",
    "self-signed",
    "acme",
    "x:/y:ro",
    "é",
    "1.5",
    "web",
    "db",
    "a",
    "b",
];

fn yaml_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        prop::sample::select(SCALARS).prop_map(|s| format!("{s:?}")),
        prop::sample::select(SCALARS).prop_map(|s| s.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5)
                .prop_map(|items| format!("[{}]", items.join(", "))),
            prop::collection::vec((prop::sample::select(vocabulary()), inner), 0..6).prop_map(
                |entries| {
                    let body: Vec<String> = entries
                        .into_iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect();
                    format!("{{{}}}", body.join(", "))
                }
            ),
        ]
    })
}

fn check(text: &str) {
    let _ = bow_spec::validate(text, false);
    for environment in ["development", "production", "staging", "nope"] {
        let options = bow_spec::LoadOptions {
            environment: environment.to_string(),
            privileged: true,
            ..Default::default()
        };
        if let Ok(spec) = bow_spec::load(text, &options) {
            let _ = bow_spec::dependency_order(&spec);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        check(&text);
    }

    #[test]
    fn arbitrary_yaml_trees_never_panic(value in yaml_value(), project in prop::sample::select(SCALARS)) {
        check(&format!("project: {project:?}\nservices: {value}\n"));
        check(&format!("project: p\nservices: {{web: {value}}}\nenvironments: {{production: {value}}}\n"));
        check(&value);
    }

    #[test]
    fn edits_of_a_valid_file_never_panic(position in 0..FULL.len(), insert in ".{0,3}", delete in 0usize..4) {
        let mut text = FULL.to_string();
        let start = (0..=position).rev().find(|p| text.is_char_boundary(*p)).unwrap_or(0);
        let mut end = (start + delete).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        text.replace_range(start..end, &insert);
        check(&text);
    }
}

#[test]
fn the_full_example_is_valid() {
    assert!(
        bow_spec::validate(FULL, false).is_empty(),
        "{:?}",
        bow_spec::validate(FULL, false)
    );
}

/// Keys the decoder reads by name (`get("key")`, `required(&fields, "key", …)`, …), found in
/// its source: each must be in a key list, or the property test would never fuzz it.
#[test]
fn every_key_the_decoder_reads_is_in_the_vocabulary() {
    let sources = [
        include_str!("../src/decode/mod.rs"),
        include_str!("../src/decode/edge.rs"),
        include_str!("../src/decode/service.rs"),
        include_str!("../src/decode/parts.rs"),
        include_str!("../src/decode/values.rs"),
        include_str!("../src/environ.rs"),
    ];
    let vocabulary = vocabulary();
    let mut read = Vec::new();
    for source in sources {
        let source = source.split("#[cfg(test)]").next().unwrap_or_default();
        for opener in [
            "get(\"",
            "sql_name(\"",
            "duration(\"",
            "key_span(\"",
            "&fields, \"",
            "&python, \"",
        ] {
            for (at, _) in source.match_indices(opener) {
                let rest = &source[at + opener.len()..];
                let key: String = rest.chars().take_while(|c| *c != '"').collect();
                read.push(key);
            }
        }
    }
    assert!(
        read.len() > 50,
        "found only {} keys read by name: {read:?}",
        read.len()
    );
    let missing: Vec<&String> = read
        .iter()
        .filter(|key| !vocabulary.contains(&key.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "keys the decoder reads but no key list names (add them to a list in decode/mod.rs): {missing:?}"
    );
}
