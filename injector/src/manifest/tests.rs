//! The YAML 1.1 quoting predicate and writer, document splitting, key
//! order and per-document reports, from tables. The YAML 1.1 checks read
//! the output back with PyYAML (a YAML 1.1 reader, as Kubernetes' go-yaml
//! v2 is), through Debian's /usr/bin/python3; they fail, never skip, when
//! it is missing (`scripts/install-deps.sh` installs python3-yaml).

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Deserialize as _;
use serde_json::{json, Value as Json};
use serde_yaml_ng::{Mapping, Value as Yaml};

use super::yaml::{needs_quotes, to_yaml};
use super::*;
use crate::inject::SkipReason;

/// Every document of `text`, read by PyYAML's safe loader (YAML 1.1
/// typing), as JSON; what JSON cannot say (a float, a date, a non-string
/// key) is spelled out so it never compares equal to a string.
fn yaml11_read(text: &str) -> Vec<Json> {
    const SCRIPT: &str = r#"
import json, sys
try:
    import yaml
except ImportError:
    sys.exit("PyYAML is missing: install Debian's python3-yaml (scripts/install-deps.sh)")
def conv(o):
    if o is None or isinstance(o, (bool, str)):
        return o
    if isinstance(o, int):
        return o
    if isinstance(o, list):
        return [conv(x) for x in o]
    if isinstance(o, dict):
        return {(k if isinstance(k, str) else "<%s key %r>" % (type(k).__name__, k)): conv(v) for k, v in o.items()}
    return "<%s %r>" % (type(o).__name__, o)
docs = [conv(d) for d in yaml.safe_load_all(sys.stdin.read()) if d is not None]
json.dump(docs, sys.stdout)
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("the YAML 1.1 check needs /usr/bin/python3 with python3-yaml: {e}")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyYAML could not read the output ({}): {}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every document of `text` as serde_yaml_ng reads it.
fn yaml12_read(text: &str) -> Vec<Json> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Json::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect()
}

/// The YAML 1.1 traps of issue 16, and strings a plain scalar cannot hold.
const TRAPS: &[&str] = &[
    "yes",
    "Yes",
    "YES",
    "no",
    "No",
    "NO",
    "on",
    "On",
    "ON",
    "off",
    "Off",
    "OFF",
    "y",
    "Y",
    "n",
    "N",
    "true",
    "True",
    "TRUE",
    "false",
    "False",
    "FALSE",
    "1_000",
    "0x1F",
    "0x1f",
    "1e3",
    "1E3",
    "0o17",
    "012",
    "08",
    "0b101",
    "1:20",
    "190:20:30",
    "1:20.5",
    "~",
    "null",
    "Null",
    "NULL",
    ".inf",
    ".Inf",
    "-.inf",
    "+.INF",
    ".nan",
    ".NaN",
    "1.5",
    "1.",
    ".5",
    "+1",
    "-1",
    "-0",
    "0",
    "8080",
    "1.0e+3",
    "2001-12-14",
    "2001-12-14t21:59:43.10-05:00",
    "2001-12-14 21:59:43.10 -5",
    "<<",
    "=",
    "",
    " ",
    "x ",
    " x",
    "a: b",
    "a #b",
    "#x",
    "- x",
    "-",
    "?",
    ":",
    "? x",
    ": x",
    "x:",
    "@x",
    "`x",
    "%x",
    "!x",
    "&x",
    "*x",
    "|x",
    ">x",
    "'x",
    "\"x",
    "[x]",
    "{x}",
    ",x",
    "---",
    "--- x",
    "...",
    "a\tb",
    "a\u{2028}b",
    "a\u{85}b",
    "\u{feff}x",
    "a\u{7}b",
    "a\rb",
];

/// Unusual strings that a plain scalar holds as they are.
const PLAIN_ODDITIES: &[&str] = &["it's", "café ✓", "\u{1F600}", "a'b'", "x-1", "a:b", "a#b"];

/// Multi-line strings: literal blocks where exact, else double-quoted.
const MULTI_LINE: &[&str] = &[
    "a\nb",
    "a\nb\n",
    "a\nb\n\n",
    "a\n\nb",
    "set -e\necho 'on'\n  indented: yes\n",
    "a\n  ",
    "a\n \nb",
    " a\nb",
    "\na",
    "\n",
    "a\r\nb",
    "# not a comment\n---\n...\n",
    "a\tb\nc",
];

#[test]
fn the_yaml_1_1_predicate_quotes_every_trap_and_nothing_plain_that_is_safe() {
    for s in TRAPS.iter().chain(MULTI_LINE) {
        assert!(needs_quotes(s), "{s:?} must be quoted");
    }
    // Plain stays plain: quantities, images, flags, paths, words.
    let plain = [
        "app",
        "web",
        "10m",
        "50Mi",
        "1Gi",
        "nginx:1.27",
        "example.com/app:1",
        "--proxy-uid",
        "-x",
        "/run",
        "$(POD_NAME)",
        "spiffe://cluster.local/ns/a/sa/b",
        "a b",
        "1 day",
        "yess",
        "nope",
        "onward",
        "Infinity",
        "NaN",
        "café",
        "trellis.dev/inject",
    ];
    for s in plain.iter().chain(PLAIN_ODDITIES) {
        assert!(!needs_quotes(s), "{s:?} can stay plain");
    }
}

fn strings_doc(strings: &[&str]) -> Yaml {
    let mut map = Mapping::new();
    let mut list = Vec::new();
    for s in strings {
        map.insert(Yaml::String((*s).into()), Yaml::String((*s).into()));
        list.push(Yaml::String((*s).into()));
    }
    let mut doc = Mapping::new();
    doc.insert("map".into(), Yaml::Mapping(map));
    doc.insert("list".into(), Yaml::Sequence(list.clone()));
    doc.insert("nested".into(), Yaml::Sequence(vec![Yaml::Sequence(list)]));
    Yaml::Mapping(doc)
}

fn strings_json(strings: &[&str]) -> Json {
    let map: serde_json::Map<String, Json> =
        strings.iter().map(|s| (s.to_string(), json!(s))).collect();
    json!({"map": map, "list": strings, "nested": [strings]})
}

#[test]
fn the_writer_round_trips_through_a_yaml_1_2_reader() {
    let all: Vec<&str> = TRAPS
        .iter()
        .chain(MULTI_LINE)
        .chain(PLAIN_ODDITIES)
        .copied()
        .collect();
    let doc = strings_doc(&all);
    let text = to_yaml(&doc).unwrap();
    let back: Yaml = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(back, doc, "{text}");
    // Numbers, booleans, null and empty collections keep their types.
    let other: Yaml = serde_yaml_ng::from_str(
        "{a: 1, b: -2, c: 1.5, d: 1.0e+300, e: 1.0e-7, f: true, g: null, h: {}, i: [], j: 18446744073709551615}",
    )
    .unwrap();
    let text = to_yaml(&other).unwrap();
    assert_eq!(
        serde_yaml_ng::from_str::<Yaml>(&text).unwrap(),
        other,
        "{text}"
    );
}

#[test]
fn the_writer_round_trips_through_a_yaml_1_1_reader() {
    let all: Vec<&str> = TRAPS
        .iter()
        .chain(MULTI_LINE)
        .chain(PLAIN_ODDITIES)
        .copied()
        .collect();
    let text = to_yaml(&strings_doc(&all)).unwrap();
    assert_eq!(yaml11_read(&text), vec![strings_json(&all)], "{text}");
    // Floats as YAML 1.1 writes them (a dot, a signed exponent).
    let text = to_yaml(&serde_yaml_ng::from_str("[1.5, 1.0e+300, 1.0e-7, 2.0]").unwrap()).unwrap();
    assert_eq!(
        yaml11_read(&text),
        vec![json!([
            "<float 1.5>",
            "<float 1e+300>",
            "<float 1e-07>",
            "<float 2.0>"
        ])],
        "{text}"
    );
}

#[test]
fn the_writer_refuses_tags() {
    let doc: Yaml = serde_yaml_ng::from_str("a: !Ref x\n").unwrap();
    assert_eq!(to_yaml(&doc), Err(yaml::EmitError::Tag("!Ref".into())));
}

fn manifest_cases() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/inject");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.yaml").exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 4, "manifest cases missing: {cases:?}");
    cases
}

#[test]
fn a_yaml_1_1_reader_reads_what_inject_prints_as_a_yaml_1_2_reader_does() {
    for dir in manifest_cases() {
        let input = std::fs::read_to_string(dir.join("input.yaml")).unwrap();
        let out = inject_manifest(&input, &InjectorConfig::default(), "default").unwrap();
        assert_eq!(
            yaml11_read(&out.text),
            yaml12_read(&out.text),
            "{}: a YAML 1.1 reader reads another manifest",
            dir.display()
        );
    }
}

#[test]
fn every_trap_stays_a_string_in_labels_annotations_env_and_args() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/inject/yaml11-traps");
    let input = std::fs::read_to_string(dir.join("input.yaml")).unwrap();
    let out = inject_manifest(&input, &InjectorConfig::default(), "default").unwrap();
    let before = &yaml12_read(&input)[1];
    let after = &yaml11_read(&out.text)[1];
    let template = |d: &Json, path: &str| d["spec"]["template"].pointer(path).cloned();
    for path in [
        "/metadata/labels",
        "/spec/containers/0/args",
        "/spec/containers/0/env",
    ] {
        assert_eq!(template(after, path), template(before, path), "{path}");
    }
    let annotations = template(after, "/metadata/annotations").unwrap();
    for (k, v) in template(before, "/metadata/annotations")
        .unwrap()
        .as_object()
        .unwrap()
    {
        assert_eq!(&annotations[k], v, "annotation {k}");
    }
    assert_eq!(after["metadata"]["labels"], json!({"on": "yes"}));
    // The traps are there (the input is not silently simpler than it says).
    let args = template(before, "/spec/containers/0/args").unwrap();
    for trap in [
        "yes", "on", "1_000", "0x1F", "1e3", "0o17", "012", "1:20", "~", "null", ".inf",
    ] {
        assert!(args.as_array().unwrap().contains(&json!(trap)), "{trap}");
    }
}

#[test]
fn objects_are_classified_from_api_version_kind_and_shape() {
    let unknown = |a: &str, k: &str| {
        Class::Unchanged(Unchanged::UnknownKind {
            api_version: a.into(),
            kind: k.into(),
        })
    };
    let wrong = |a: Option<&str>, e: &'static str| {
        Class::Unchanged(Unchanged::WrongApiVersion {
            api_version: a.map(str::to_string),
            expected: e,
        })
    };
    let cases = [
        (
            json!({"apiVersion": "v1", "kind": "Pod"}),
            Class::Workload(&[]),
        ),
        (
            json!({"apiVersion": "apps/v1", "kind": "Deployment"}),
            Class::Workload(&["spec", "template"]),
        ),
        (
            json!({"apiVersion": "batch/v1", "kind": "CronJob"}),
            Class::Workload(&["spec", "jobTemplate", "spec", "template"]),
        ),
        (json!({"apiVersion": "v1", "kind": "List"}), Class::List),
        (json!({"kind": "Pod", "spec": {}}), wrong(None, "v1")),
        (
            json!({"apiVersion": "extensions/v1beta1", "kind": "Deployment"}),
            wrong(Some("extensions/v1beta1"), "apps/v1"),
        ),
        (
            json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "spec": {"template": {}}}),
            unknown("argoproj.io/v1alpha1", "Rollout"),
        ),
        (
            json!({"apiVersion": "v1", "kind": "ReplicationController", "spec": {"template": {}}}),
            unknown("v1", "ReplicationController"),
        ),
        (
            json!({"kind": "Thing", "spec": {"containers": []}}),
            unknown("(no apiVersion)", "Thing"),
        ),
        (
            json!({"apiVersion": "v1", "kind": "Service", "spec": {"ports": []}}),
            Class::Unchanged(Unchanged::NoPodTemplate),
        ),
        (
            json!({"metadata": {}}),
            Class::Unchanged(Unchanged::NotAnObject),
        ),
        (json!([1, 2]), Class::Unchanged(Unchanged::NotAnObject)),
        (json!("text"), Class::Unchanged(Unchanged::NotAnObject)),
    ];
    for (obj, class) in cases {
        assert_eq!(classify(&obj), class, "{obj}");
    }
}

#[test]
fn documents_split_where_yaml_says_and_concatenate_back() {
    let cases: &[(&str, &[bool])] = &[
        ("a: 1\n", &[true]),
        ("a: 1\n---\nb: 2\n", &[true, true]),
        ("---\na: 1\n---\n", &[true, false]),
        ("# only a comment\n---\na: 1\n", &[false, true]),
        ("a: 1\n...\n---\nb: 2", &[true, true]),
        ("%YAML 1.1\n---\na: 1\n", &[false, true]),
        ("--- {a: 1}\n--- # c\nb: 2\n", &[true, true]),
        // Not markers: indented, or followed by other text.
        ("a: |\n  ---\n  text\nb: ---x\n", &[true]),
    ];
    for (text, content) in cases {
        let chunks = split::yaml_chunks(text);
        assert_eq!(
            chunks.iter().map(|c| c.text).collect::<String>(),
            *text,
            "{text:?}"
        );
        assert_eq!(
            chunks.iter().map(|c| c.has_content()).collect::<Vec<_>>(),
            *content,
            "{text:?}"
        );
    }
    let starts: Vec<usize> = split::yaml_chunks("a: 1\n---\nb: 2\nc: 3\n...\nd: 4\n")
        .iter()
        .map(|c| c.first_line)
        .collect();
    assert_eq!(starts, [1, 2, 6]);
    let c = &split::yaml_chunks("---\n# head\n\na: 1\n  # inner\nb: 2\n# tail\n\n")[0];
    assert_eq!(c.leading_comments(), "# head\n\n");
    assert_eq!(c.trailing_comments(), "# tail\n\n");
}

const BROKEN_IN_THE_MIDDLE: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: first}
spec:
  containers: [{name: app, image: app:1}]
---
# no template: reported, printed as written
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken}
spec:
  replicas: 2
---
apiVersion: v1
kind: Pod
metadata: {name: last}
spec:
  containers: [{name: app, image: app:1}]
";

#[test]
fn a_broken_document_is_reported_and_the_others_still_injected() {
    let out = inject_manifest(BROKEN_IN_THE_MIDDLE, &InjectorConfig::default(), "default").unwrap();
    let lines: Vec<String> = out.reports.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "document 1: pod/first (namespace default): injected",
            "document 2: deployment/broken: error: has no spec.template; printed unchanged",
            "document 3: pod/last (namespace default): injected",
        ]
    );
    assert_eq!((out.failed(), out.left_alone()), (1, 0));
    let chunks = split::yaml_chunks(BROKEN_IN_THE_MIDDLE);
    assert!(out.text.contains(chunks[1].text), "{}", out.text);
    let docs = yaml12_read(&out.text);
    assert_eq!(docs.len(), 3);
    for i in [0, 2] {
        assert_eq!(
            docs[i]["spec"]["initContainers"][1]["name"],
            "trellis-proxy"
        );
    }
}

#[test]
fn unknown_kinds_pass_through_unchanged_and_are_reported() {
    let text = "\
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: canary}   # kept as written
spec:
  template:
    spec:
      containers: [{name: app, image: app:1}]
---
apiVersion: v1
kind: ReplicationController
metadata: {name: old}
spec:
  template:
    spec:
      containers: [{name: app, image: app:1}]
---
kind: Pod
metadata: {name: no-api}
spec:
  containers: [{name: app, image: app:1}]
";
    let out = inject_manifest(text, &InjectorConfig::default(), "default").unwrap();
    assert_eq!(out.text, text, "printed unchanged");
    let lines: Vec<String> = out.reports.iter().map(ToString::to_string).collect();
    assert!(lines[0].starts_with("document 1: rollout/canary: not injected: argoproj.io/v1alpha1 Rollout is not a kind trellis inject knows"), "{lines:?}");
    assert!(
        lines[1].starts_with(
            "document 2: replicationcontroller/old: not injected: v1 ReplicationController"
        ),
        "{lines:?}"
    );
    assert_eq!(
        lines[2],
        "document 3: pod/no-api: not injected: no apiVersion (expected v1); printed unchanged"
    );
    assert_eq!((out.failed(), out.left_alone()), (0, 3));
}

#[test]
fn already_injected_counts_as_done_not_as_left_alone() {
    let first =
        inject_manifest(BROKEN_IN_THE_MIDDLE, &InjectorConfig::default(), "default").unwrap();
    let again = inject_manifest(&first.text, &InjectorConfig::default(), "default").unwrap();
    assert_eq!(again.text, first.text, "injecting twice changes nothing");
    let outcomes: Vec<&Outcome> = again.reports.iter().map(|r| &r.outcome).collect();
    assert_eq!(outcomes[0], &Outcome::Skipped(SkipReason::AlreadyInjected));
    assert_eq!(again.left_alone(), 0);
    assert!(!Outcome::Skipped(SkipReason::AlreadyInjected).left_alone());
    assert!(Outcome::Skipped(SkipReason::OptedOut).left_alone());
    assert!(Outcome::Skipped(SkipReason::HostNetwork).left_alone());
    assert!(!Outcome::Unchanged(Unchanged::NoPodTemplate).left_alone());
}

#[test]
fn injected_documents_keep_their_key_order_and_outer_comments() {
    let text = "\
# about the pod
kind: Pod
metadata:
  name: ordered   # lost: a comment inside a rewritten document
  namespace: shop
  labels: {zeta: '1', alpha: '2'}
apiVersion: v1
spec:
  containers:
  - name: app
    image: app:1
    env: [{value: 'on', name: Z}]
# after the pod
";
    let out = inject_manifest(text, &InjectorConfig::default(), "default").unwrap();
    assert!(out.text.starts_with("# about the pod\nkind: Pod\nmetadata:\n  name: ordered\n  namespace: shop\n  labels:\n    zeta: '1'\n    alpha: '2'\n"), "{}", out.text);
    assert!(
        out.text.contains("\napiVersion: v1\nspec:\n"),
        "{}",
        out.text
    );
    assert!(
        out.text
            .contains("    env:\n    - value: 'on'\n      name: Z\n"),
        "{}",
        out.text
    );
    assert!(out.text.ends_with("# after the pod\n"), "{}", out.text);
    assert!(!out.text.contains("# lost"), "{}", out.text);
}

#[test]
fn json_in_gives_json_out_in_the_input_key_order() {
    let text = r#"{"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "j", "labels": {"z": "on", "a": "1_000"}},
 "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
{"kind": "Service", "apiVersion": "v1", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}"#;
    let out = inject_manifest(text, &InjectorConfig::default(), "default").unwrap();
    assert_eq!(out.format, Format::Json);
    let docs: Vec<Json> = serde_json::Deserializer::from_str(&out.text)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(
        docs[0]["metadata"]["labels"],
        json!({"z": "on", "a": "1_000"})
    );
    assert_eq!(
        docs[0]["spec"]["initContainers"][1]["name"],
        "trellis-proxy"
    );
    assert_eq!(
        docs[1],
        serde_json::from_str::<Json>(text.lines().last().unwrap()).unwrap()
    );
    assert!(
        out.text
            .starts_with("{\n  \"kind\": \"Pod\",\n  \"apiVersion\": \"v1\",\n"),
        "{}",
        out.text
    );
    assert!(
        out.text.contains("\"z\": \"on\",\n      \"a\": \"1_000\""),
        "{}",
        out.text
    );
    // A flow-style YAML document that is not JSON stays YAML.
    let yaml_flow = inject_manifest(
        "{kind: Service, apiVersion: v1, metadata: {name: s}}",
        &InjectorConfig::default(),
        "default",
    )
    .unwrap();
    assert_eq!(yaml_flow.format, Format::Yaml);
}

#[test]
fn a_document_that_cannot_be_written_back_is_printed_unchanged() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: t}\nextra: !Custom x\nspec: {containers: [{name: a, image: a}]}\n";
    let out = inject_manifest(text, &InjectorConfig::default(), "default").unwrap();
    assert_eq!(out.text, text);
    assert_eq!(
        out.reports.iter().map(|r| &r.outcome).collect::<Vec<_>>(),
        [&Outcome::Failed(DocError::Emit(yaml::EmitError::Tag(
            "!Custom".into()
        )))]
    );
}
