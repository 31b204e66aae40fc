//! The environment: order, overrides, `envFrom`, `valueFrom`, expansion.

use super::*;

/// The variables after the service links.
fn own_env(launch: &Launch) -> Vec<(&str, &str)> {
    launch
        .env
        .iter()
        .filter(|(name, _)| !name.starts_with("KUBERNETES_"))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

const PATH: (&str, &str) = (
    "PATH",
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
);

#[test]
fn env_order_and_overrides() {
    // (container fields, the variables after the service links)
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("", &[("HOSTNAME", "web-0"), PATH]),
        // The container's own PATH and HOSTNAME win, in their place.
        (
            "env: [{name: PATH, value: /app/bin}, {name: HOSTNAME, value: h}]",
            &[("HOSTNAME", "h"), ("PATH", "/app/bin")],
        ),
        // envFrom (keys in order; bad names skipped), then env replacing.
        (
            "envFrom: [{configMapRef: {name: app-config}}]\nenv: [{name: A, value: a}, {name: PORT, value: '9090'}]",
            &[("HOSTNAME", "web-0"), PATH, ("LOG_LEVEL", "debug"), ("PORT", "9090"), ("A", "a")],
        ),
        // A prefix; a secret; a later source replaces an earlier one.
        (
            "envFrom: [{configMapRef: {name: app-config}, prefix: CFG_}, {secretRef: {name: app-secret}}, {configMapRef: {name: app-config}, prefix: CFG_}]",
            // (The key "" is skipped unprefixed, kept with a prefix.)
            &[("HOSTNAME", "web-0"), PATH, ("CFG_", "y"), ("CFG_LOG_LEVEL", "debug"), ("CFG_PORT", "8080"), ("PASSWORD", "hunter2")],
        ),
        // Optional and missing: nothing, and an earlier value stays.
        (
            "envFrom: [{configMapRef: {name: nope, optional: true}}, {secretRef: {name: nope, optional: true}}]
env:
- {name: PORT, value: '1'}
- {name: PORT, valueFrom: {configMapKeyRef: {name: app-config, key: nope, optional: true}}}
- {name: PORT, valueFrom: {secretKeyRef: {name: nope, key: nope, optional: true}}}
- {name: E}",
            &[("HOSTNAME", "web-0"), PATH, ("PORT", "1"), ("E", "")],
        ),
        // Keys from ConfigMaps and Secrets.
        (
            "env:
- {name: LEVEL, valueFrom: {configMapKeyRef: {name: app-config, key: LOG_LEVEL}}}
- {name: PW, valueFrom: {secretKeyRef: {name: app-secret, key: PASSWORD}}}",
            &[("HOSTNAME", "web-0"), PATH, ("LEVEL", "debug"), ("PW", "hunter2")],
        ),
        // A value sees only variables before it, and service links.
        (
            "envFrom: [{configMapRef: {name: app-config}}]
env:
- {name: URL, value: 'http://$(HOST):$(PORT)/$(KUBERNETES_SERVICE_PORT)'}
- {name: HOST, value: web}
- {name: URL2, value: 'http://$(HOST):$(PORT) $$(HOST) $(HOSTNAME)'}
- {name: REF, value: '$(URL2)'}",
            &[
                ("HOSTNAME", "web-0"),
                PATH,
                ("LOG_LEVEL", "debug"),
                ("PORT", "8080"),
                ("URL", "http://$(HOST):8080/443"),
                ("HOST", "web"),
                ("URL2", "http://web:8080 $(HOST) $(HOSTNAME)"),
                ("REF", "http://web:8080 $(HOST) $(HOSTNAME)"),
            ],
        ),
    ];
    for (fields, want) in cases {
        let got = app(fields)
            .launch()
            .unwrap_or_else(|e| panic!("{fields}: {e}"));
        assert_eq!(own_env(&got), *want, "{fields}");
    }
}

#[test]
fn service_links_are_the_kubernetes_service_only() {
    let mut fixture = app("");
    fixture.kubernetes_service = Some("[fd00:96::1]:6443".parse().unwrap());
    let got = fixture.launch().unwrap();
    let links: Vec<_> = got
        .env
        .iter()
        .filter(|(n, _)| n.starts_with("KUBERNETES_"))
        .cloned()
        .collect();
    let want: Vec<(String, String)> = [
        ("KUBERNETES_SERVICE_HOST", "fd00:96::1"),
        ("KUBERNETES_SERVICE_PORT", "6443"),
        ("KUBERNETES_SERVICE_PORT_HTTPS", "6443"),
        ("KUBERNETES_PORT", "tcp://[fd00:96::1]:6443"),
        ("KUBERNETES_PORT_6443_TCP", "tcp://[fd00:96::1]:6443"),
        ("KUBERNETES_PORT_6443_TCP_PROTO", "tcp"),
        ("KUBERNETES_PORT_6443_TCP_PORT", "6443"),
        ("KUBERNETES_PORT_6443_TCP_ADDR", "fd00:96::1"),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(links, want);

    fixture.kubernetes_service = None;
    let got = fixture.launch().unwrap();
    assert_eq!(got.env.first().map(|(n, _)| n.as_str()), Some("HOSTNAME"));
}

#[test]
fn hostname_is_the_pods() {
    let long = "a".repeat(60) + "-.-b";
    let cases: &[(&str, &str)] = &[
        ("", "web-0"),
        ("hostname: db", "db"),
        ("hostname: ''", "web-0"),
        ("hostNetwork: true", "node-1"),
        (&format!("hostname: {long}"), &"a".repeat(60)),
    ];
    for (spec, want) in cases {
        let fixture = Fixture::new(&format!(
            "{spec}\ncontainers: [{{name: app, image: example.com/app}}]"
        ));
        let got = fixture.launch().unwrap();
        let hostname = got
            .env
            .iter()
            .find(|(n, _)| n == "HOSTNAME")
            .map(|(_, v)| v.as_str());
        assert_eq!(hostname, Some(*want), "{spec}");
    }
}

#[test]
fn field_refs() {
    // (fieldPath, value)
    let cases: &[(&str, &str)] = &[
        ("metadata.name", "web-0"),
        ("metadata.namespace", "default"),
        ("metadata.uid", "0b6f-uid"),
        ("metadata.labels['app']", "web"),
        ("metadata.labels['nope']", ""),
        ("metadata.annotations['example.com/owner']", "team-a"),
        ("spec.nodeName", "node-1"),
        ("spec.serviceAccountName", "web-sa"),
        ("status.hostIP", "192.168.1.10"),
        ("status.hostIPs", "192.168.1.10"),
        ("status.podIP", "10.1.0.5"),
        ("status.podIPs", "10.1.0.5,fd00::5"),
    ];
    for (path, want) in cases {
        let fixture = Fixture::new(&format!(
            "serviceAccountName: web-sa
containers:
- name: app
  image: example.com/app
  env: [{{name: V, valueFrom: {{fieldRef: {{fieldPath: \"{path}\"}}}}}}]"
        ));
        let got = fixture.launch().unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            got.env.last(),
            Some(&("V".to_owned(), (*want).to_owned())),
            "{path}"
        );
    }
}

#[test]
fn pod_ips_put_the_nodes_family_first() {
    // (pod IPs, host IP, status.podIP, status.podIPs)
    let cases: &[(&[&str], &str, &str, &str)] = &[
        (
            &["fd00::5", "10.1.0.5"],
            "192.168.1.10",
            "10.1.0.5",
            "10.1.0.5,fd00::5",
        ),
        (
            &["10.1.0.5", "fd00::5"],
            "fd00::1",
            "fd00::5",
            "fd00::5,10.1.0.5",
        ),
        (
            &["fd00::5", "fd00::6"],
            "192.168.1.10",
            "fd00::5",
            "fd00::5",
        ),
        (&[], "192.168.1.10", "", ""),
    ];
    for (ips, host, ip, all) in cases {
        let mut fixture = app("env:
- {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
- {name: IPS, valueFrom: {fieldRef: {fieldPath: status.podIPs}}}");
        fixture.pod_ips = ips.iter().map(|s| s.parse().unwrap()).collect();
        fixture.host_ip = host.parse().unwrap();
        let got = fixture.launch().unwrap();
        let own = own_env(&got);
        assert_eq!(&own[2..], &[("IP", *ip), ("IPS", *all)], "{ips:?} {host}");
    }
}

#[test]
fn resource_field_refs() {
    let resources = "resources:
  limits: {cpu: 1500m, memory: 100Mi}
  requests: {cpu: 250m, memory: 64Mi, ephemeral-storage: 1Gi}";
    // (resources, resource, divisor, value)
    let cases: &[(&str, &str, &str, &str)] = &[
        (resources, "limits.cpu", "", "2"),
        (resources, "limits.cpu", "1m", "1500"),
        (resources, "requests.cpu", "", "1"),
        (resources, "requests.cpu", "100m", "3"),
        (resources, "limits.memory", "", "104857600"),
        (resources, "limits.memory", "1Mi", "100"),
        (resources, "limits.memory", "1M", "105"),
        (resources, "requests.memory", "1Gi", "1"),
        (resources, "requests.ephemeral-storage", "1Mi", "1024"),
        // Unset limits: the node's allocatable; unset requests: 0.
        ("", "limits.cpu", "1m", "2000"),
        ("", "limits.memory", "1Mi", "4096"),
        ("", "limits.ephemeral-storage", "", "0"),
        ("", "requests.cpu", "1m", "0"),
        ("", "requests.memory", "", "0"),
        (
            "resources: {limits: {hugepages-2Mi: 4Mi}}",
            "limits.hugepages-2Mi",
            "1Mi",
            "4",
        ),
    ];
    for (resources, resource, divisor, want) in cases {
        let divisor = match divisor {
            &"" => String::new(),
            d => format!(", divisor: {d}"),
        };
        let fields = format!("{resources}\nenv: [{{name: V, valueFrom: {{resourceFieldRef: {{resource: {resource}{divisor}}}}}}}]");
        let got = app(&fields)
            .launch()
            .unwrap_or_else(|e| panic!("{fields}: {e}"));
        assert_eq!(
            got.env.last(),
            Some(&("V".to_owned(), (*want).to_owned())),
            "{fields}"
        );
    }
}

#[test]
fn env_errors_are_config_errors_naming_what_is_missing() {
    // (container fields, message)
    let cases: &[(&str, &str)] = &[
        ("envFrom: [{configMapRef: {name: nope}}]", "configmap \"nope\" not found"),
        ("envFrom: [{secretRef: {name: nope, optional: false}}]", "secret \"nope\" not found"),
        (
            "env: [{name: V, valueFrom: {configMapKeyRef: {name: nope, key: k}}}]",
            "configmap \"nope\" not found",
        ),
        (
            "env: [{name: V, valueFrom: {configMapKeyRef: {name: app-config, key: nope}}}]",
            "couldn't find key nope in ConfigMap default/app-config",
        ),
        (
            "env: [{name: V, valueFrom: {secretKeyRef: {name: nope, key: k}}}]",
            "secret \"nope\" not found",
        ),
        (
            "env: [{name: V, valueFrom: {secretKeyRef: {name: app-secret, key: nope}}}]",
            "couldn't find key nope in Secret default/app-secret",
        ),
        (
            "env: [{name: V, valueFrom: {fieldRef: {fieldPath: status.phase}}}]",
            "env V: unsupported fieldPath: status.phase",
        ),
        (
            "env: [{name: V, valueFrom: {fieldRef: {fieldPath: \"spec.nodeName['x']\"}}}]",
            "env V: field label does not support subscript: spec.nodeName['x']",
        ),
        (
            "env: [{name: V, valueFrom: {fieldRef: {apiVersion: v2, fieldPath: metadata.name}}}]",
            "env V: unsupported pod version: v2",
        ),
        (
            "env: [{name: V, valueFrom: {resourceFieldRef: {resource: limits.gpu}}}]",
            "env V: unsupported container resource: limits.gpu",
        ),
        (
            "env: [{name: V, valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: '0'}}}]",
            "env V: invalid divisor \"0\"",
        ),
        (
            "resources: {limits: {cpu: lots}}\nenv: [{name: V, valueFrom: {resourceFieldRef: {resource: limits.cpu}}}]",
            "env V: invalid quantity \"lots\": no number",
        ),
        (
            "env: [{name: V, valueFrom: {fileKeyRef: {volumeName: data, path: env, key: k}}}]",
            "env V: fileKeyRef is not supported by this node",
        ),
    ];
    for (fields, want) in cases {
        let err = app(fields).launch().expect_err(fields);
        assert_eq!(err.reason(), "CreateContainerConfigError", "{fields}");
        assert_eq!(err.to_string(), *want, "{fields}");
    }
}
