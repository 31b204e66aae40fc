// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::*;

fn doc(json: &str) -> Doc {
    serde_json::from_str(json).unwrap()
}

/// Compact JSON text of `doc`, in its order.
fn text(doc: &Doc) -> String {
    serde_json::to_string(doc).unwrap()
}

fn ours() -> Doc {
    entry(&PluginConf {
        kubeconfig: "/etc/cni/net.d/trellis-cni.d/kubeconfig".into(),
        log_level: "info".into(),
    })
}

const OURS: &str = r#"{"type":"trellis-cni","kubeconfig":"/etc/cni/net.d/trellis-cni.d/kubeconfig","logLevel":"info"}"#;
const BRIDGE: &str = r#"{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}}"#;
const PORTMAP: &str = r#"{"type":"portmap","capabilities":{"portMappings":true}}"#;

fn list(plugins: &[&str]) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{}]}}"#,
        plugins.join(",")
    )
}

#[test]
fn candidates_are_what_the_runtime_reads() {
    for (name, want) in [
        ("10-bridge.conflist", true),
        ("10-bridge.conf", true),
        ("99-loopback.json", true),
        (".conf", true),
        ("trellis-cni.d", false),
        (".trellis-cni-12-0.tmp", false),
        ("10-bridge.conflist.tmp", false),
        ("10-bridge.conf.bak", false),
        ("10-bridge.CONF", false),
        ("README", false),
    ] {
        assert_eq!(is_candidate(name), want, "{name}");
    }
}

#[test]
fn the_primary_is_the_first_name_bytewise() {
    let cases: [(&[&str], Option<&str>); 6] = [
        (&[], None),
        (&["trellis-cni.d", "README", ".trellis-cni-1-0.tmp"], None),
        (
            &["10-b.conflist", "05-a.conf", "99-z.json"],
            Some("05-a.conf"),
        ),
        // A `.conf` sorts before the `.conflist` of the same stem.
        (&["10-x.conflist", "10-x.conf"], Some("10-x.conf")),
        // Byte order: upper case before lower case, digits before both.
        (&["a.conf", "B.conf", "1.conf"], Some("1.conf")),
        (
            &["10-calico.conflist", "87-podman.conflist"],
            Some("10-calico.conflist"),
        ),
    ];
    for (names, want) in cases {
        assert_eq!(primary(names.iter().copied()), want, "{names:?}");
    }
}

#[test]
fn a_converted_file_is_named_as_a_list() {
    assert_eq!(list_name("10-bridge.conf"), "10-bridge.conflist");
    assert_eq!(list_name("10-bridge.json"), "10-bridge.conflist");
    assert_eq!(list_name("a.b.conf"), "a.b.conflist");
}

#[test]
fn parse_says_what_a_file_holds() {
    assert_eq!(parse(list(&[BRIDGE]).as_bytes()).unwrap().1, Kind::List);
    assert_eq!(parse(BRIDGE.as_bytes()).unwrap().1, Kind::Single);
    for (json, want) in [
        (
            r#"{"plugins": [{"type""#,
            "not valid JSON: EOF while parsing",
        ),
        ("[1, 2]", "not a JSON object"),
        (
            r#"{"plugins": {"type": "bridge"}}"#,
            "`plugins` is not a list",
        ),
        (
            r#"{"name": "x"}"#,
            "neither a `plugins` list nor a plugin `type`",
        ),
    ] {
        let e = parse(json.as_bytes()).unwrap_err().to_string();
        assert!(e.starts_with(want), "{json}: {e}");
    }
}

#[test]
fn chained_appends_replaces_or_leaves() {
    let old = OURS.replace("info", "debug");
    let cases = [
        (
            "appended last",
            list(&[BRIDGE, PORTMAP]),
            Some(list(&[BRIDGE, PORTMAP, OURS])),
        ),
        ("an empty list", list(&[]), Some(list(&[OURS]))),
        ("already there", list(&[BRIDGE, PORTMAP, OURS]), None),
        (
            "an old entry replaced where it stands",
            list(&[BRIDGE, &old, PORTMAP]),
            Some(list(&[BRIDGE, OURS, PORTMAP])),
        ),
        (
            "a second entry dropped",
            list(&[BRIDGE, OURS, PORTMAP, &old]),
            Some(list(&[BRIDGE, OURS, PORTMAP])),
        ),
    ];
    for (what, existing, want) in cases {
        let got = chained(&doc(&existing), &ours()).unwrap();
        assert_eq!(got.as_ref().map(text), want, "{what}");
    }
}

#[test]
fn chained_keeps_every_other_field_in_its_order() {
    // Keys deliberately out of alphabetical order, and fields the CNI spec
    // does not know.
    let existing = r#"{"name":"net","cniVersion":"0.4.0","disableCheck":true,"plugins":[{"type":"bridge","mtu":1450,"ipam":{"type":"host-local","subnet":"10.1.0.0/16"},"x-vendor":{"z":1,"a":[1.5,null,"s"]}}],"zz":"last"}"#;
    let got = chained(&doc(existing), &ours()).unwrap().unwrap();
    let want = existing.replace(r#"}}],"zz""#, &format!(r#"}}}},{OURS}],"zz""#));
    assert_eq!(text(&got), want);
}

#[test]
fn render_is_pretty_json_in_order_ending_in_a_newline() {
    let rendered = render(&doc(r#"{"name":"n","cniVersion":"1.0.0","plugins":[]}"#)).unwrap();
    let rendered = String::from_utf8(rendered).unwrap();
    assert_eq!(
        rendered,
        "{\n  \"name\": \"n\",\n  \"cniVersion\": \"1.0.0\",\n  \"plugins\": []\n}\n"
    );
}

#[test]
fn unchained_removes_only_ours() {
    let cases = [
        (
            "ours removed",
            list(&[BRIDGE, PORTMAP, OURS]),
            Some(list(&[BRIDGE, PORTMAP])),
        ),
        (
            "every one of ours",
            list(&[OURS, BRIDGE, OURS]),
            Some(list(&[BRIDGE])),
        ),
        ("none of ours", list(&[BRIDGE, PORTMAP]), None),
        ("only ours", list(&[OURS]), Some(list(&[]))),
    ];
    for (what, existing, want) in cases {
        let got = unchained(&doc(&existing)).unwrap();
        assert_eq!(got.as_ref().map(text), want, "{what}");
    }
}

#[test]
fn converted_moves_version_and_name_to_the_list() {
    let single = r#"{"cniVersion":"0.3.1","name":"mynet","type":"bridge","bridge":"cni0","ipam":{"type":"host-local"}}"#;
    let want = r#"{"cniVersion":"0.3.1","name":"mynet","plugins":[{"type":"bridge","bridge":"cni0","ipam":{"type":"host-local"}}]}"#;
    assert_eq!(text(&converted(&doc(single)).unwrap()), want);
    // Nothing invented.
    let bare = r#"{"type":"bridge"}"#;
    assert_eq!(
        text(&converted(&doc(bare)).unwrap()),
        r#"{"plugins":[{"type":"bridge"}]}"#
    );
}

#[test]
fn the_entry_reads_back_as_the_plugins_configuration() {
    let conf = PluginConf {
        kubeconfig: "/k".into(),
        log_level: "debug".into(),
    };
    let rendered = render(&entry(&conf)).unwrap();
    let back: serde_json::Value = serde_json::from_slice(&rendered).unwrap();
    assert_eq!(back["type"], PLUGIN_TYPE);
    assert_eq!(serde_json::from_value::<PluginConf>(back).unwrap(), conf);
}

/// A plugin: one of a few types (ours among them, with one of two
/// kubeconfigs), and maybe a field of its own.
fn plugin() -> impl Strategy<Value = Doc> {
    let ty = prop::sample::select(vec!["bridge", "portmap", "bandwidth", "trellis-cni"]);
    (ty, any::<bool>(), prop::option::of(0u32..1000)).prop_map(|(ty, new, mtu)| {
        let mut map = Mapping::new();
        map.insert("type".into(), ty.into());
        if ty == PLUGIN_TYPE {
            let path = if new {
                "/etc/cni/net.d/trellis-cni.d/kubeconfig"
            } else {
                "/old"
            };
            map.insert("kubeconfig".into(), path.into());
            map.insert("logLevel".into(), "info".into());
        }
        if let Some(mtu) = mtu {
            map.insert("mtu".into(), mtu.into());
        }
        Value::Mapping(map)
    })
}

fn not_ours(list: &Doc) -> Vec<Doc> {
    plugins(list)
        .unwrap()
        .iter()
        .filter(|p| !is_ours(p))
        .cloned()
        .collect()
}

proptest! {
    /// After `chained`: exactly one entry of ours, the current one; the
    /// others as they were, in their order; chaining again changes
    /// nothing; `unchained` gives back the others alone.
    #[test]
    fn chaining_is_idempotent_and_undone(list in prop::collection::vec(plugin(), 0..6)) {
        let mut map = Mapping::new();
        map.insert("cniVersion".into(), "1.0.0".into());
        map.insert("plugins".into(), Value::Sequence(list));
        let before = Value::Mapping(map);
        let after = chained(&before, &ours()).unwrap().unwrap_or_else(|| before.clone());
        let mine: Vec<_> = plugins_of(&after).into_iter().filter(is_ours).collect();
        prop_assert_eq!(mine, vec![ours()]);
        prop_assert_eq!(not_ours(&after), not_ours(&before));
        prop_assert_eq!(after.get("cniVersion"), before.get("cniVersion"));
        prop_assert!(chained(&after, &ours()).unwrap().is_none());
        let undone = unchained(&after).unwrap().unwrap();
        prop_assert_eq!(plugins(&undone).unwrap(), &not_ours(&before));
        prop_assert!(unchained(&undone).unwrap().is_none());
    }
}

fn plugins_of(list: &Doc) -> Vec<Doc> {
    plugins(list).unwrap().clone()
}
