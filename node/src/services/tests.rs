// Tests: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;

fn service(ns: &str, name: &str, cluster_ip: &str, ports: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": ports},
    }))
    .unwrap()
}

fn slice(
    ns: &str,
    name: &str,
    service: &str,
    address_type: &str,
    ports: serde_json::Value,
    endpoints: serde_json::Value,
) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {
            "namespace": ns,
            "name": name,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }))
    .unwrap()
}

const READY: Conditions = Conditions {
    ready: true,
    serving: true,
    terminating: false,
};
const TERMINATING: Conditions = Conditions {
    ready: false,
    serving: true,
    terminating: true,
};
const GONE: Conditions = Conditions {
    ready: false,
    serving: false,
    terminating: true,
};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn backend(address: &str, port: u16, conditions: Conditions) -> Backend {
    Backend {
        address: ip(address),
        port,
        conditions,
    }
}

#[test]
fn collects_services_with_their_endpoints_by_port_name() {
    let services = [
        service(
            "demo",
            "web",
            "10.96.0.10",
            json!([
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "metrics", "port": 9090},
            ]),
        ),
        service("demo", "db", "None", json!([])),
        service("a", "first", "10.96.0.2", json!([{"port": 80}])),
        serde_json::from_value(json!({
            "metadata": {"namespace": "demo", "name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "example.com"},
        }))
        .unwrap(),
        service("demo", "v6only", "fd00::1", json!([{"port": 80}])),
    ];
    let slices = [
        // Two slices of `web`, the second repeating an endpoint.
        slice(
            "demo",
            "web-b",
            "web",
            "IPv4",
            json!([{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
            json!([
                {"addresses": ["10.244.0.6"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.244.0.5"], "conditions": {"ready": false}},
            ]),
        ),
        slice(
            "demo",
            "web-a",
            "web",
            "IPv4",
            json!([{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "TCP"}]),
            json!([{"addresses": ["10.244.0.5", "10.244.0.99"]}]),
        ),
        // Ignored: IPv6, another namespace, no label.
        slice(
            "demo",
            "web-v6",
            "web",
            "IPv6",
            json!([{"name": "http", "port": 8080}]),
            json!([{"addresses": ["fd00::5"]}]),
        ),
        slice(
            "other",
            "web-x",
            "web",
            "IPv4",
            json!([{"name": "http", "port": 8080}]),
            json!([{"addresses": ["10.244.9.9"]}]),
        ),
        slice(
            "demo",
            "db-1",
            "db",
            "IPv4",
            json!(null),
            json!([
                {"addresses": ["10.244.0.8"], "hostname": "db-0"},
                {"addresses": ["10.244.0.7"], "conditions": {"ready": false}},
            ]),
        ),
        slice(
            "a",
            "first-1",
            "first",
            "IPv4",
            json!([{"port": 8000}]),
            json!([{"addresses": ["10.244.0.2"]}]),
        ),
    ];
    let views = collect(&services, &slices);
    let names: Vec<(&str, &str)> = views
        .iter()
        .map(|v| (v.namespace.as_str(), v.name.as_str()))
        .collect();
    assert_eq!(names, [("a", "first"), ("demo", "db"), ("demo", "web")]);

    let first = &views[0];
    assert_eq!(first.address, ServiceAddress::ClusterIp(ip("10.96.0.2")));
    assert_eq!(
        first.ports,
        [PortView {
            name: String::new(),
            protocol: Protocol::Tcp,
            port: 80,
            backends: vec![backend("10.244.0.2", 8000, READY)],
        }]
    );

    let db = &views[1];
    assert_eq!(db.address, ServiceAddress::Headless);
    assert!(db.ports.is_empty());
    let not_ready = Conditions {
        ready: false,
        ..READY
    };
    assert_eq!(
        db.endpoints,
        [
            Endpoint {
                address: ip("10.244.0.7"),
                hostname: None,
                conditions: not_ready,
            },
            Endpoint {
                address: ip("10.244.0.8"),
                hostname: Some("db-0".into()),
                conditions: READY,
            },
        ]
    );

    let web = &views[2];
    assert_eq!(web.address, ServiceAddress::ClusterIp(ip("10.96.0.10")));
    // Slice `web-a` sorts first: its view of 10.244.0.5 (ready) wins.
    let http = &web.ports[0];
    assert_eq!(
        (http.name.as_str(), http.protocol, http.port),
        ("http", Protocol::Tcp, 80)
    );
    assert_eq!(
        http.backends,
        [
            backend("10.244.0.5", 8080, READY),
            backend("10.244.0.6", 8080, TERMINATING),
        ]
    );
    // Matched by name *and* protocol: only `web-b` has a UDP `dns`.
    let dns = &web.ports[1];
    assert_eq!((dns.protocol, dns.port), (Protocol::Udp, 53));
    assert_eq!(
        dns.backends,
        [
            backend("10.244.0.5", 5353, not_ready),
            backend("10.244.0.6", 5353, TERMINATING),
        ]
    );
    // No slice port of that name: no backends.
    assert!(web.ports[2].backends.is_empty());
    let addresses: Vec<Ipv4Addr> = web.endpoints.iter().map(|e| e.address).collect();
    assert_eq!(addresses, [ip("10.244.0.5"), ip("10.244.0.6")]);
}

#[test]
fn picks_ready_endpoints_else_serving_terminating_ones() {
    let ready = backend("10.0.0.1", 80, READY);
    let terminating = backend("10.0.0.2", 80, TERMINATING);
    let gone = backend("10.0.0.3", 80, GONE);
    let not_ready = backend(
        "10.0.0.4",
        80,
        Conditions {
            ready: false,
            serving: false,
            terminating: false,
        },
    );
    let cases: [(&[Backend], &[Backend]); 5] = [
        (&[ready, terminating, gone], &[ready]),
        (&[terminating, gone, not_ready], &[terminating]),
        (&[gone, not_ready], &[]),
        (&[], &[]),
        (&[ready, not_ready], &[ready]),
    ];
    for (given, expected) in cases {
        let got: Vec<Backend> = usable(given).into_iter().copied().collect();
        assert_eq!(got, expected, "from {given:?}");
    }
}

fn views() -> Vec<ServiceView> {
    let port = |name: &str, protocol, port, backends: Vec<Backend>| PortView {
        name: name.into(),
        protocol,
        port,
        backends,
    };
    vec![
        ServiceView {
            namespace: "demo".into(),
            name: "db".into(),
            address: ServiceAddress::Headless,
            ports: vec![port("", Protocol::Tcp, 5432, vec![])],
            endpoints: vec![
                Endpoint {
                    address: ip("10.244.0.7"),
                    hostname: Some("db-0".into()),
                    conditions: READY,
                },
                Endpoint {
                    address: ip("10.244.0.8"),
                    hostname: Some("db-1".into()),
                    conditions: TERMINATING,
                },
            ],
        },
        ServiceView {
            namespace: "demo".into(),
            name: "web".into(),
            address: ServiceAddress::ClusterIp(ip("10.96.0.10")),
            ports: vec![
                port(
                    "http",
                    Protocol::Tcp,
                    80,
                    vec![
                        backend("10.244.0.5", 8080, READY),
                        backend("10.244.0.6", 8080, READY),
                        backend("10.244.0.9", 8080, TERMINATING),
                    ],
                ),
                port(
                    "dns",
                    Protocol::Udp,
                    53,
                    vec![backend("10.244.0.9", 5353, TERMINATING)],
                ),
                port("sctp", Protocol::Sctp, 9000, vec![]),
                port(
                    "grpc",
                    Protocol::Tcp,
                    9090,
                    vec![backend("10.244.0.5", 9090, GONE)],
                ),
            ],
            endpoints: vec![],
        },
        ServiceView {
            namespace: "other".into(),
            name: "api".into(),
            address: ServiceAddress::ClusterIp(ip("10.96.0.11")),
            ports: vec![port(
                "",
                Protocol::Tcp,
                443,
                vec![backend("10.244.1.2", 8443, READY)],
            )],
            endpoints: vec![],
        },
    ]
}

#[test]
fn writes_dnat_chains_and_rejects_with_the_jumps_when_absent() {
    let web80 = service_chain("demo", "web", 80, "tcp");
    let web53 = service_chain("demo", "web", 53, "udp");
    let api = service_chain("other", "api", 443, "tcp");
    let expected = format!(
        "*nat
:TRELLIS_SERVICES - [0:0]
:{web80} - [0:0]
:{web53} - [0:0]
:{api} - [0:0]
-A OUTPUT -j TRELLIS_SERVICES
-A TRELLIS_SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -m comment --comment \"demo/web:http\" -j {web80}
-A {web80} -p tcp -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 10.244.0.5:8080
-A {web80} -p tcp -j DNAT --to-destination 10.244.0.6:8080
-A TRELLIS_SERVICES -d 10.96.0.10/32 -p udp -m udp --dport 53 -m comment --comment \"demo/web:dns\" -j {web53}
-A {web53} -p udp -j DNAT --to-destination 10.244.0.9:5353
-A TRELLIS_SERVICES -d 10.96.0.11/32 -p tcp -m tcp --dport 443 -m comment --comment \"other/api:443\" -j {api}
-A {api} -p tcp -j DNAT --to-destination 10.244.1.2:8443
COMMIT
*filter
:TRELLIS_SERVICES_REJECT - [0:0]
-A OUTPUT -j TRELLIS_SERVICES_REJECT
-A TRELLIS_SERVICES_REJECT -d 10.96.0.10/32 -p sctp -m sctp --dport 9000 -m comment --comment \"demo/web:sctp has no endpoints\" -j REJECT --reject-with icmp-port-unreachable
-A TRELLIS_SERVICES_REJECT -d 10.96.0.10/32 -p tcp -m tcp --dport 9090 -m comment --comment \"demo/web:grpc has no endpoints\" -j REJECT --reject-with tcp-reset
COMMIT
"
    );
    assert_eq!(iptables_restore(&views(), ""), expected);
}

#[test]
fn spreads_evenly_over_many_endpoints() {
    let backends = (1..=4)
        .map(|i| backend(&format!("10.244.0.{i}"), 80, READY))
        .collect();
    let view = ServiceView {
        namespace: "demo".into(),
        name: "web".into(),
        address: ServiceAddress::ClusterIp(ip("10.96.0.10")),
        ports: vec![PortView {
            name: String::new(),
            protocol: Protocol::Tcp,
            port: 80,
            backends,
        }],
        endpoints: vec![],
    };
    let rules = iptables_restore(&[view], "");
    let picks: Vec<&str> = rules
        .lines()
        .filter(|l| l.contains("DNAT"))
        .map(|l| {
            l.split("--probability ")
                .nth(1)
                .map_or("last", |r| &r[..12])
        })
        .collect();
    assert_eq!(
        picks,
        ["0.2500000000", "0.3333333333", "0.5000000000", "last"]
    );
}

#[test]
fn keeps_existing_jumps_and_deletes_chains_of_services_gone() {
    let web80 = service_chain("demo", "web", 80, "tcp");
    let old = service_chain("demo", "old", 80, "tcp");
    let current = format!(
        "# Generated by iptables-save
*filter
:OUTPUT ACCEPT [0:0]
:TRELLIS_SERVICES_REJECT - [0:0]
-A OUTPUT -j TRELLIS_SERVICES_REJECT
COMMIT
*nat
:OUTPUT ACCEPT [0:0]
:PROXY_OUTPUT - [0:0]
:TRELLIS_SERVICES - [0:0]
:{web80} - [0:0]
:{old} - [0:0]
-A OUTPUT -p tcp -j PROXY_OUTPUT
-A OUTPUT -j TRELLIS_SERVICES
-A TRELLIS_SERVICES -d 10.96.0.12/32 -p tcp -m tcp --dport 80 -j {old}
COMMIT
"
    );
    let rules = iptables_restore(&views(), &current);
    assert!(!rules.contains("-A OUTPUT"), "{rules}");
    assert!(rules.contains(&format!(":{old} - [0:0]\n")), "{rules}");
    assert!(rules.ends_with(&format!("-X {old}\nCOMMIT\n*filter\n:TRELLIS_SERVICES_REJECT - [0:0]\n-A TRELLIS_SERVICES_REJECT -d 10.96.0.10/32 -p sctp -m sctp --dport 9000 -m comment --comment \"demo/web:sctp has no endpoints\" -j REJECT --reject-with icmp-port-unreachable\n-A TRELLIS_SERVICES_REJECT -d 10.96.0.10/32 -p tcp -m tcp --dport 9090 -m comment --comment \"demo/web:grpc has no endpoints\" -j REJECT --reject-with tcp-reset\nCOMMIT\n")), "{rules}");
    assert!(!rules.contains(&format!("-X {web80}")), "{rules}");
    assert!(!rules.contains("PROXY_OUTPUT"), "{rules}");

    // A jump in the wrong table is not ours.
    let swapped =
        "*nat\n-A OUTPUT -j TRELLIS_SERVICES_REJECT\n*filter\n-A OUTPUT -j TRELLIS_SERVICES\n";
    let rules = iptables_restore(&[], swapped);
    assert!(rules.contains("-A OUTPUT -j TRELLIS_SERVICES\n"), "{rules}");
    assert!(
        rules.contains("-A OUTPUT -j TRELLIS_SERVICES_REJECT\n"),
        "{rules}"
    );
}

#[test]
fn writes_hosts_with_cluster_ips_and_ready_headless_endpoints() {
    let pod_ips = ["10.244.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
    let hosts = hosts_file(
        &views(),
        "demo",
        "web-0",
        "web-0",
        &pod_ips,
        "cluster.local",
    );
    assert_eq!(
        hosts,
        "# Written by trellis-node for pod demo/web-0.
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
10.244.0.5\tweb-0
fd00::5\tweb-0
10.244.0.7\tdb.demo.svc.cluster.local db.demo.svc db.demo db
10.244.0.7\tdb-0.db.demo.svc.cluster.local db-0.db.demo.svc db-0.db.demo db-0.db
10.96.0.10\tweb.demo.svc.cluster.local web.demo.svc web.demo web
10.96.0.11\tapi.other.svc.cluster.local api.other.svc api.other
"
    );
    let hosts = hosts_file(&[], "other", "x-7d9f", "x", &pod_ips[..1], "corp.example");
    assert!(hosts.ends_with("10.244.0.5\tx x-7d9f\n"), "{hosts}");
}

// ---- In a network namespace (root) ----

/// Fails the test, never skips it, when not root.
fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (a network namespace and iptables): run it as root"
    );
}

/// A throwaway network namespace `trls-t-<pid>-<n>` with `lo` up, deleted
/// on drop, even when the test fails.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        require_root();
        let name = format!(
            "trls-t-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name], None);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"], None);
        ns
    }

    fn exec(&self, argv: &[&str], stdin: Option<&str>) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend(argv);
        run(&full, stdin)
    }

    /// `iptables-save` without its `#` lines (which carry a timestamp).
    fn save(&self) -> String {
        self.exec(&["iptables-save"], None)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Makes the rules `views`' as the node agent does: save, then restore.
    fn apply(&self, views: &[ServiceView]) {
        let input = iptables_restore(views, &self.save());
        self.exec(&["iptables-restore", "--noflush"], Some(&input));
    }

    /// Runs `f` on a thread inside the namespace: its sockets stay there.
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = File::open(format!("/run/netns/{}", self.0)).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(argv: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let input = stdin.unwrap_or("").to_string();
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A view of one TCP port of `vip` with these ready backends.
fn tcp_service(name: &str, vip: &str, port: u16, backends: &[(&str, u16)]) -> ServiceView {
    ServiceView {
        namespace: "t".into(),
        name: name.into(),
        address: ServiceAddress::ClusterIp(ip(vip)),
        ports: vec![PortView {
            name: String::new(),
            protocol: Protocol::Tcp,
            port,
            backends: backends
                .iter()
                .map(|(a, p)| backend(a, *p, READY))
                .collect(),
        }],
        endpoints: vec![],
    }
}

#[test]
fn in_a_netns_rules_are_idempotent_spread_connections_and_refuse_fast() {
    let ns = Netns::new();
    for a in ["10.244.0.10/32", "10.244.0.11/32"] {
        ns.exec(&["ip", "addr", "add", a, "dev", "lo"], None);
    }
    // Pods route the service CIDR out of eth0; here it only needs a route.
    ns.exec(&["ip", "route", "add", "10.96.0.0/12", "dev", "lo"], None);
    // A sidecar's capture chain, inserted first, as its init container does.
    ns.exec(&["iptables", "-t", "nat", "-N", "PROXY_OUTPUT"], None);
    ns.exec(
        &[
            "iptables",
            "-t",
            "nat",
            "-I",
            "OUTPUT",
            "1",
            "-j",
            "PROXY_OUTPUT",
        ],
        None,
    );

    let web = tcp_service(
        "web",
        "10.96.0.10",
        80,
        &[("10.244.0.10", 8080), ("10.244.0.11", 8080)],
    );
    let empty = tcp_service("empty", "10.96.0.11", 80, &[]);
    let old = tcp_service("old", "10.96.0.12", 80, &[("10.244.0.10", 8080)]);
    ns.apply(&[web.clone(), empty.clone(), old]);
    let old_chain = service_chain("t", "old", 80, "tcp");
    assert!(ns.save().contains(&old_chain));

    let views = [web, empty];
    ns.apply(&views);
    let once = ns.save();
    ns.apply(&views);
    assert_eq!(ns.save(), once, "a second run changed the rules");
    assert!(!once.contains(&old_chain), "{once}");
    let output: Vec<&str> = once
        .lines()
        .filter(|l| l.starts_with("-A OUTPUT"))
        .collect();
    assert_eq!(
        output,
        [
            "-A OUTPUT -j TRELLIS_SERVICES_REJECT",
            "-A OUTPUT -j PROXY_OUTPUT",
            "-A OUTPUT -j TRELLIS_SERVICES",
        ],
        "{once}"
    );

    // Two endpoints, each answering with its own last octet.
    let listeners = ns
        .enter(|| ["10.244.0.10:8080", "10.244.0.11:8080"].map(|a| TcpListener::bind(a).unwrap()));
    let done = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let done = done.clone();
            std::thread::spawn(move || {
                for conn in l.incoming() {
                    if done.load(Ordering::SeqCst) {
                        return;
                    }
                    let mut conn = conn.unwrap();
                    let SocketAddr::V4(local) = conn.local_addr().unwrap() else {
                        unreachable!("an IPv4 listener")
                    };
                    conn.write_all(&[local.ip().octets()[3]]).unwrap();
                }
            })
        })
        .collect();
    let stop = done.clone();
    let (counts, refused) = ns.enter(move || {
        let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let mut counts = BTreeMap::new();
        for _ in 0..200 {
            let mut conn = TcpStream::connect_timeout(&vip, Duration::from_secs(5)).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut octet = [0u8];
            conn.read_exact(&mut octet).unwrap();
            *counts.entry(octet[0]).or_insert(0u32) += 1;
        }
        let empty: SocketAddr = "10.96.0.11:80".parse().unwrap();
        let refused = TcpStream::connect_timeout(&empty, Duration::from_secs(5)).map(|_| ());
        // Wake the servers to see they are done.
        stop.store(true, Ordering::SeqCst);
        for a in ["10.244.0.10:8080", "10.244.0.11:8080"] {
            let _ = TcpStream::connect(a);
        }
        (counts, refused)
    });
    for s in servers {
        s.join().unwrap();
    }
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        [10, 11],
        "{counts:?}"
    );
    assert_eq!(counts.values().sum::<u32>(), 200);
    let err = refused.expect_err("a service without endpoints accepted a connection");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}
