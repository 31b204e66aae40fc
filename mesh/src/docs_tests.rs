//! `docs/mesh-file.md` and `examples/` against the parser: every example
//! validates; every documented key is accepted (the doc's complete example
//! uses each, and validates) and every key the parser accepts is
//! documented (probed by putting an unknown key in each mapping: serde's
//! and the route checker's refusals list the accepted keys); the annotation
//! tables list exactly what the code knows, and each example value there is
//! accepted.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use trellis_controller::index::annotations::{route_annotations, ROUTE_ANNOTATIONS};

use super::check::{self, SpecError};
use super::spec::CONFIG_ANNOTATIONS;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn doc() -> String {
    std::fs::read_to_string(repo().join("docs/mesh-file.md")).unwrap()
}

/// The part of `text` between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.
fn section<'t>(text: &'t str, name: &str) -> &'t str {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let start = text.find(&begin).unwrap_or_else(|| panic!("no {begin}")) + begin.len();
    let stop = text[start..]
        .find(&end)
        .unwrap_or_else(|| panic!("no {end}"))
        + start;
    &text[start..stop]
}

/// The table rows of a section, as cells with their backticks removed.
fn rows(section: &str) -> Vec<Vec<String>> {
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect()
}

fn documented_keys() -> BTreeSet<String> {
    let keys: BTreeSet<String> = rows(section(&doc(), "keys"))
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert!(keys.len() > 60, "only {} keys found in the doc", keys.len());
    keys
}

fn complete_example() -> String {
    let d = doc();
    let at = d
        .find("<!-- complete-example -->")
        .expect("no complete example");
    let rest = &d[at..];
    let start = rest.find("```yaml\n").expect("no yaml block") + "```yaml\n".len();
    let stop = rest[start..].find("```").expect("unterminated yaml block") + start;
    rest[start..stop].to_string()
}

/// Maps whose keys are the user's (env names, annotations), not fields.
const FREE_FORM: [&str; 3] = [
    "workloads[].env",
    "workloads[].annotations",
    "routes[].annotations",
];

/// Every key path in `v` (`workloads[].probes[].port`), and the paths of
/// the mappings that hold fields (`""` for the top level).
fn walk(v: &Value, path: &str, keys: &mut BTreeSet<String>, mappings: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            mappings.insert(path.to_string());
            for (k, child) in o {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                keys.insert(p.clone());
                if !FREE_FORM.contains(&p.as_str()) {
                    walk(child, &p, keys, mappings);
                }
            }
        }
        Value::Array(a) => {
            for child in a {
                walk(child, &format!("{path}[]"), keys, mappings);
            }
        }
        _ => {}
    }
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap()
}

#[test]
fn every_example_parses_and_validates() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        if let Err(e) = check::load(&path) {
            panic!("{e}");
        }
        seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    seen.sort();
    for wanted in ["demo.yaml", "hello.yaml", "mtls.yaml", "routes.yaml"] {
        assert!(
            seen.iter().any(|s| s == wanted),
            "{wanted} not among {seen:?}"
        );
    }
}

#[test]
fn the_routes_example_has_routes_and_policies_beside_a_service() {
    let c = check::load(&repo().join("examples/routes.yaml")).unwrap();
    assert!(!c.file.services.is_empty());
    assert!(!c.file.routes.is_empty());
    assert!(!c.file.policies.is_empty());
}

#[test]
fn the_complete_example_validates_and_uses_exactly_the_documented_keys() {
    let text = complete_example();
    if let Err(e) = check::parse(&text, "docs/mesh-file.md (complete example)") {
        panic!("{e}");
    }
    let (mut keys, mut mappings) = (BTreeSet::new(), BTreeSet::new());
    walk(&yaml(&text), "", &mut keys, &mut mappings);
    let documented = documented_keys();
    let undocumented: Vec<_> = keys.difference(&documented).collect();
    let unused: Vec<_> = documented.difference(&keys).collect();
    assert!(
        undocumented.is_empty() && unused.is_empty(),
        "used in the complete example but not in the table: {undocumented:?}\n\
         in the table but not used by the complete example: {unused:?}"
    );
}

/// Adds `key: 1` to every mapping at `path` in `v`.
fn insert_everywhere(v: &mut Value, path: &str, at: &str, key: &str) {
    match v {
        Value::Object(o) => {
            if at == path {
                o.insert(key.to_string(), Value::from(1));
            }
            for (k, child) in o.iter_mut() {
                let p = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                if k != key && !FREE_FORM.contains(&p.as_str()) {
                    insert_everywhere(child, path, &p, key);
                }
            }
        }
        Value::Array(a) => {
            for child in a {
                insert_everywhere(child, path, &format!("{at}[]"), key);
            }
        }
        _ => {}
    }
}

/// The backticked names after `` `marker` `` in `message`.
fn listed_after(message: &str, marker: &str) -> Vec<String> {
    let Some(at) = message.find(&format!("`{marker}`")) else {
        return Vec::new();
    };
    let rest = &message[at + marker.len() + 2..];
    rest.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn every_key_the_parser_accepts_is_documented() {
    const PROBE: &str = "zzProbe";
    let documented = documented_keys();
    let base = yaml(&complete_example());
    let (mut keys, mut mappings) = (BTreeSet::new(), BTreeSet::new());
    walk(&base, "", &mut keys, &mut mappings);
    let mut accepted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for mapping in &mappings {
        let mut v = base.clone();
        insert_everywhere(&mut v, mapping, "", PROBE);
        let text = serde_yaml_ng::to_string(&v).unwrap();
        let message = match check::parse(&text, "probe") {
            Ok(_) => panic!("an unknown key in {mapping:?} was accepted"),
            Err(SpecError::Invalid(e)) => e.errors.join("\n"),
            Err(other) => other.to_string(),
        };
        let names: Vec<String> = message
            .lines()
            .flat_map(|l| listed_after(l, PROBE))
            .collect();
        assert!(
            !names.is_empty(),
            "no accepted keys listed when refusing an unknown key in {mapping:?}: {message}"
        );
        accepted.insert(mapping.clone(), names);
    }
    let mut missing = BTreeSet::new();
    for (mapping, names) in &accepted {
        for n in names {
            let key = if mapping.is_empty() {
                n.clone()
            } else {
                format!("{mapping}.{n}")
            };
            if !documented.contains(&key) {
                missing.insert(key);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "accepted but not documented: {missing:?}"
    );
}

#[test]
fn the_config_annotation_table_is_what_the_parser_knows() {
    let table = rows(section(&doc(), "config-annotations"));
    let documented: BTreeSet<&str> = table.iter().map(|r| r[0].as_str()).collect();
    let known: BTreeSet<&str> = CONFIG_ANNOTATIONS.into_iter().collect();
    assert_eq!(documented, known);
    // Each example value is accepted on a meshed workload.
    for r in &table {
        let text = format!(
            "workloads:\n  - name: a\n    ports: [8080, 9090]\n    command: [x]\n    annotations: {{{}: {:?}}}\n",
            r[0], r[1]
        );
        if let Err(e) = check::parse(&text, &r[0]) {
            panic!("{e}");
        }
    }
}

#[test]
fn the_route_annotation_table_is_the_controllers() {
    let table = rows(section(&doc(), "route-annotations"));
    assert_eq!(table.len(), ROUTE_ANNOTATIONS.len());
    for (r, a) in table.iter().zip(ROUTE_ANNOTATIONS.iter()) {
        assert_eq!(
            (r[0].as_str(), r[2].as_str(), r[3].as_str()),
            (a.key, a.default, a.syntax),
            "docs/mesh-file.md and ROUTE_ANNOTATIONS differ"
        );
        let one = BTreeMap::from([(r[0].clone(), r[1].clone())]);
        let (_, errors) = route_annotations(&one);
        assert!(errors.is_empty(), "{}={}: {errors:?}", r[0], r[1]);
    }
}
