use super::*;

fn ports(s: &str) -> Vec<PortRange> {
    parse_ports(s).unwrap()
}

fn ns(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn inbound_policies_are_ordered_as_the_spec_says() {
    use DefaultPolicy::*;
    let order = [AllUnauthenticated, Audit, AllAuthenticated, Deny];
    for (i, a) in order.iter().enumerate() {
        for (j, b) in order.iter().enumerate() {
            let floor = Some(Bound {
                value: *b,
                source: FloorSource::Cluster,
            });
            assert_eq!(check_policy(*a, &floor), i < j, "{a} under floor {b}");
            assert_eq!(stricter_policy(*a, *b), order[i.max(j)]);
        }
    }
    assert!(!check_policy(AllUnauthenticated, &None));
}

#[test]
fn outbound_mtls_required_cannot_be_lowered() {
    let floor = Some(Bound {
        value: OutboundMtls::Required,
        source: FloorSource::Cluster,
    });
    assert!(check_mtls(OutboundMtls::Opportunistic, &floor));
    assert!(!check_mtls(OutboundMtls::Required, &floor));
    assert!("sometimes".parse::<OutboundMtls>().is_err());
}

#[test]
fn port_allowances_split_what_is_asked() {
    for (allowance, asked, allowed, refused) in [
        ("any", "1-65535", "1-65535", ""),
        ("none", "9100", "", "9100"),
        ("9100,9200-9210", "9100,9205", "9100,9205", ""),
        ("9100,9200-9210", "9100,9205-9300", "9100", "9205-9300"),
        ("9100,9200-9210", "1-65535", "", "1-65535"),
    ] {
        let a: PortAllowance = allowance.parse().unwrap();
        let (ok, no) = a.check(&ports(asked));
        let text = |r: &[PortRange]| {
            r.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(
            (text(&ok), text(&no)),
            (allowed.to_string(), refused.to_string()),
            "{allowance} / {asked}"
        );
    }
    for bad in ["", "some", "0", "10-5"] {
        assert!(bad.parse::<PortAllowance>().is_err(), "{bad:?}");
    }
}

#[test]
fn the_stricter_allowance_wins() {
    let p = |s: &str| s.parse::<PortAllowance>().unwrap();
    for (a, b, want) in [
        ("any", "none", "none"),
        ("none", "any", "none"),
        ("any", "9100", "9100"),
        ("9100", "none", "none"),
        ("9100-9200", "9150-9300", "9150-9200"),
        ("9100", "9200", "none"),
    ] {
        assert_eq!(p(a).stricter(&p(b)), p(want), "{a} + {b}");
    }
}

#[test]
fn a_namespace_raises_the_cluster_floor_never_lowers_it() {
    let cluster = FloorConfig {
        enforcement: Some(Enforcement::Deny),
        default_inbound_policy: Some(DefaultPolicy::AllAuthenticated),
        outbound_mtls: Some(OutboundMtls::Required),
        skip_inbound_ports: PortAllowance::None,
        skip_outbound_ports: PortAllowance::Any,
        allow_opt_out: Some(false),
    };
    let f = Floor::resolve(
        &cluster,
        &ns(&[
            (FLOOR_ENFORCEMENT, "warn"),
            (FLOOR_DEFAULT_INBOUND_POLICY, "all-unauthenticated"),
            (FLOOR_OUTBOUND_MTLS, "opportunistic"),
            (FLOOR_SKIP_INBOUND_PORTS, "any"),
            (FLOOR_SKIP_OUTBOUND_PORTS, "5432"),
            (FLOOR_ALLOW_OPT_OUT, "true"),
        ]),
    )
    .unwrap();
    assert_eq!(f.enforcement, Enforcement::Deny);
    let policy = f.default_inbound_policy.unwrap();
    assert_eq!(
        (policy.value, policy.source),
        (DefaultPolicy::AllAuthenticated, FloorSource::Cluster)
    );
    assert_eq!(f.outbound_mtls.unwrap().value, OutboundMtls::Required);
    assert_eq!(f.skip_inbound_ports.unwrap().value, PortAllowance::None);
    let out = f.skip_outbound_ports.unwrap();
    assert_eq!(out.value.to_string(), "5432");
    assert_eq!(
        out.source,
        FloorSource::Namespace(FLOOR_SKIP_OUTBOUND_PORTS)
    );
    assert_eq!(f.no_opt_out, Some(FloorSource::Cluster));

    let raised = Floor::resolve(
        &FloorConfig::default(),
        &ns(&[(FLOOR_DEFAULT_INBOUND_POLICY, "deny")]),
    )
    .unwrap();
    assert!(raised.is_set());
    let own = Floor::resolve(
        &FloorConfig::default(),
        &ns(&[
            (FLOOR_ENFORCEMENT, "warn"),
            (FLOOR_OUTBOUND_MTLS, "required"),
        ]),
    )
    .unwrap();
    assert_eq!(own.enforcement, Enforcement::Warn, "no cluster floor");
    assert_eq!(raised.enforcement, Enforcement::Deny, "deny by default");
    assert!(!Floor::resolve(&FloorConfig::default(), &ns(&[]))
        .unwrap()
        .is_set());
}

#[test]
fn bad_namespace_floor_annotations_are_each_named() {
    let err = Floor::resolve(
        &FloorConfig::default(),
        &ns(&[
            (FLOOR_ENFORCEMENT, "loud"),
            (FLOOR_DEFAULT_INBOUND_POLICY, "strict"),
            (FLOOR_OUTBOUND_MTLS, "yes"),
            (FLOOR_SKIP_INBOUND_PORTS, "some"),
            (FLOOR_ALLOW_OPT_OUT, "no"),
        ]),
    )
    .unwrap_err();
    assert_eq!(err.len(), 5, "{err:?}");
    for key in [
        FLOOR_ENFORCEMENT,
        FLOOR_DEFAULT_INBOUND_POLICY,
        FLOOR_OUTBOUND_MTLS,
        FLOOR_SKIP_INBOUND_PORTS,
        FLOOR_ALLOW_OPT_OUT,
    ] {
        assert!(err.iter().any(|e| e.contains(key)), "{key}: {err:?}");
    }
}

#[test]
fn refusal_reasons_are_distinct_labels() {
    let kinds = [
        FloorKind::InvalidFloor,
        FloorKind::OptOut,
        FloorKind::DefaultInboundPolicy,
        FloorKind::OutboundMtls,
        FloorKind::SkipPorts,
        FloorKind::InvalidOverride,
    ];
    let labels: std::collections::BTreeSet<&str> = kinds.iter().map(|k| k.label()).collect();
    assert_eq!(labels.len(), kinds.len());
    let r = Refusal {
        violations: vec![
            Violation {
                kind: FloorKind::SkipPorts,
                message: "b".into(),
            },
            Violation {
                kind: FloorKind::DefaultInboundPolicy,
                message: "a".into(),
            },
        ],
    };
    assert_eq!(r.label(), "floor_default_inbound_policy");
    assert_eq!(r.to_string(), "refused by the Trellis floor: b; a");
}
