//! The synthetic cluster: namespaces, Services (no selector: their
//! EndpointSlices are the bench's, not kube-controller-manager's), one
//! EndpointSlice of 10 endpoints per Service, the 10 Pods behind it
//! (injected by the injector's own logic), HTTPRoutes and GRPCRoutes with
//! a Service as parent (GAMMA) and AuthorizationPolicies.
//!
//! Every object is a `serde_json::Value`, the same for both sources: the
//! file source writes them into one `List`, the Kubernetes source creates
//! them in the API server.
//!
//! Services `0..S/2` are "frontends": their pods host the proxies whose
//! streams the bench holds (slots 0 and 1, two per service), and they are
//! never rolled. Services `S/2..S` are "backends": rolling updates replace
//! their pods.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use trellis_injector::{inject, InjectorConfig, NamespaceInfo, Outcome};

/// Endpoints (pods) per service.
pub const PODS_PER_SERVICE: usize = 10;
/// Proxies (pods holding streams) per frontend service.
pub const PROXIES_PER_FRONTEND: usize = 2;
/// The bench's EndpointSlices say so, so that no endpointslice controller
/// takes them for its own.
pub const MANAGED_BY: &str = "bench.trellis.dev";
pub const TARGET_PORT: u16 = 8080;

/// How big the cluster is: `fraction` of the full scale (50,000
/// pods, 5,000 services, 10,000 streams, 20 changes/s).
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub services: usize,
    pub namespaces: usize,
    pub churn_per_sec: f64,
}

impl Scale {
    pub fn new(fraction: f64) -> Scale {
        let services = ((5000.0 * fraction).round() as usize).max(20);
        Scale {
            services,
            namespaces: (services / 100).max(1),
            churn_per_sec: (20.0 * fraction).max(0.5),
        }
    }

    pub fn pods(&self) -> usize {
        self.services * PODS_PER_SERVICE
    }

    pub fn frontends(&self) -> usize {
        self.services / 2
    }
}

/// What kind of route a service is the parent of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Http,
    Grpc,
}

/// One service, its endpoints' current pods and its route and policy.
#[derive(Debug, Clone)]
pub struct Service {
    pub idx: usize,
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// Rolling updates done: the pods are `NAME-gGEN-SLOT`.
    pub generation: u32,
    pub pod_ips: Vec<Ipv4Addr>,
    /// Slots whose endpoint is not ready.
    pub unready: BTreeSet<usize>,
    pub route: Option<RouteKind>,
    /// The HTTPRoute's `timeouts.request` is `1000 + route_edits` ms.
    pub route_edits: u32,
    pub policy: bool,
    /// The policy lets in namespace `bench-edit-N` besides its own.
    pub policy_edits: u32,
}

impl Service {
    pub fn pod_name(&self, generation: u32, slot: usize) -> String {
        format!("{}-g{generation}-{slot}", self.name)
    }

    pub fn target(&self) -> String {
        format!("{}:{}", self.cluster_ip, self.port)
    }

    pub fn route_name(&self) -> String {
        format!("{}-route", self.name)
    }

    pub fn policy_name(&self) -> String {
        format!("{}-policy", self.name)
    }

    pub fn slice_name(&self) -> String {
        format!("{}-bench", self.name)
    }

    pub fn request_timeout_ms(&self) -> u64 {
        1000 + u64::from(self.route_edits)
    }

    pub fn policy_marker(&self) -> String {
        format!("bench-edit-{}", self.policy_edits)
    }
}

/// The whole synthetic cluster.
pub struct Cluster {
    pub scale: Scale,
    pub services: Vec<Service>,
    next_pod_ip: u32,
    /// One injected pod per namespace: every pod is this with its own
    /// name, labels and IP.
    templates: Vec<Value>,
}

impl Cluster {
    pub fn generate(scale: Scale) -> anyhow::Result<Cluster> {
        let mut templates = Vec::new();
        for n in 0..scale.namespaces {
            templates.push(injected_template(&namespace_name(n))?);
        }
        let mut c = Cluster {
            scale,
            services: Vec::new(),
            next_pod_ip: 0,
            templates,
        };
        for idx in 0..scale.services {
            let pod_ips = (0..PODS_PER_SERVICE).map(|_| c.pod_ip()).collect();
            let route = match idx % 50 {
                5 => Some(RouteKind::Grpc),
                _ if idx % 10 == 0 => Some(RouteKind::Http),
                _ => None,
            };
            c.services.push(Service {
                idx,
                namespace: namespace_name(idx % scale.namespaces),
                name: format!("svc-{idx:05}"),
                // 10.96.0.0/16 is the test API server's service range;
                // 10.96.0.1 is `kubernetes`.
                cluster_ip: Ipv4Addr::new(10, 96, 1 + (idx / 250) as u8, 1 + (idx % 250) as u8),
                port: if route == Some(RouteKind::Grpc) {
                    9090
                } else {
                    80
                },
                generation: 0,
                pod_ips,
                unready: BTreeSet::new(),
                route,
                route_edits: 0,
                // A policy on every fifth frontend.
                policy: idx < scale.frontends() && idx % 5 == 1,
                policy_edits: 0,
            });
        }
        Ok(c)
    }

    /// A fresh pod IP from 10.64.0.0/10.
    pub fn pod_ip(&mut self) -> Ipv4Addr {
        let n = self.next_pod_ip;
        self.next_pod_ip += 1;
        Ipv4Addr::new(10, 64 + (n >> 16) as u8, (n >> 8) as u8, n as u8)
    }

    pub fn namespaces(&self) -> Vec<Value> {
        (0..self.scale.namespaces)
            .map(|n| {
                json!({
                    "apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": namespace_name(n), "annotations": {"trellis.dev/inject": "enabled"}}
                })
            })
            .collect()
    }

    pub fn service(&self, s: &Service) -> Value {
        let (port_name, app_protocol) = match s.route {
            Some(RouteKind::Grpc) => ("grpc", "kubernetes.io/h2c"),
            _ => ("http", "http"),
        };
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": s.name, "namespace": s.namespace, "labels": {"app": s.name}},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": s.cluster_ip.to_string(),
                "clusterIPs": [s.cluster_ip.to_string()],
                "ports": [{"name": port_name, "port": s.port, "targetPort": TARGET_PORT, "protocol": "TCP", "appProtocol": app_protocol}]
            }
        })
    }

    /// Pod `slot` of `s`'s current generation, without its status (what a
    /// create sends).
    pub fn pod(&self, s: &Service, slot: usize) -> Value {
        let mut pod = self.templates[s.idx % self.scale.namespaces].clone();
        pod["metadata"]["name"] = json!(s.pod_name(s.generation, slot));
        pod["metadata"]["labels"] =
            json!({"app": s.name, "bench.trellis.dev/generation": s.generation.to_string()});
        pod
    }

    /// The status a kubelet would write: running, ready, its IP.
    pub fn pod_status(&self, s: &Service, slot: usize) -> Value {
        let ip = s.pod_ips[slot].to_string();
        json!({
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "hostIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}]
        })
    }

    pub fn pod_with_status(&self, s: &Service, slot: usize) -> Value {
        let mut pod = self.pod(s, slot);
        pod["status"] = self.pod_status(s, slot);
        pod
    }

    pub fn slice_endpoints(&self, s: &Service) -> Value {
        let eps: Vec<Value> = (0..PODS_PER_SERVICE)
            .map(|slot| {
                let ready = !s.unready.contains(&slot);
                json!({
                    "addresses": [s.pod_ips[slot].to_string()],
                    "conditions": {"ready": ready, "serving": ready, "terminating": false},
                    "targetRef": {"kind": "Pod", "namespace": s.namespace, "name": s.pod_name(s.generation, slot)}
                })
            })
            .collect();
        Value::Array(eps)
    }

    pub fn slice(&self, s: &Service) -> Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": s.slice_name(), "namespace": s.namespace,
                "labels": {
                    "kubernetes.io/service-name": s.name,
                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY
                }
            },
            "addressType": "IPv4",
            "ports": [{"name": if s.route == Some(RouteKind::Grpc) { "grpc" } else { "http" }, "port": TARGET_PORT, "protocol": "TCP"}],
            "endpoints": self.slice_endpoints(s)
        })
    }

    pub fn route_spec(&self, s: &Service) -> Value {
        let parent = json!([{"group": "", "kind": "Service", "name": s.name, "port": s.port}]);
        let backend = json!([{"name": s.name, "port": s.port}]);
        match s.route {
            Some(RouteKind::Http) => json!({
                "parentRefs": parent,
                "rules": [
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET"}],
                        "backendRefs": backend,
                        "timeouts": {"request": format!("{}ms", s.request_timeout_ms())}
                    },
                    {"backendRefs": backend}
                ]
            }),
            _ => json!({
                "parentRefs": parent,
                "rules": [{
                    "matches": [{"method": {"type": "Exact", "service": "bench.v1.Items", "method": "Get"}}],
                    "backendRefs": backend
                }]
            }),
        }
    }

    pub fn route(&self, s: &Service) -> Option<Value> {
        let kind = match s.route? {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        };
        Some(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
            "metadata": {"name": s.route_name(), "namespace": s.namespace},
            "spec": self.route_spec(s)
        }))
    }

    pub fn policy_spec(&self, s: &Service) -> Value {
        json!({
            "podSelector": {"matchLabels": {"app": s.name}},
            "ports": [TARGET_PORT],
            "from": {
                "namespaces": [s.namespace, s.policy_marker()],
                "serviceAccounts": [{"name": "default"}]
            },
            "http": {"methods": ["GET", "POST"], "pathPrefixes": ["/api"]}
        })
    }

    pub fn policy(&self, s: &Service) -> Option<Value> {
        s.policy.then(|| {
            json!({
                "apiVersion": "policy.trellis.dev/v1alpha1", "kind": "AuthorizationPolicy",
                "metadata": {"name": s.policy_name(), "namespace": s.namespace},
                "spec": self.policy_spec(s)
            })
        })
    }
}

pub fn namespace_name(n: usize) -> String {
    format!("bench-{n:03}")
}

/// A Deployment's pod of realistic size, injected as `trellis inject`
/// would inject it.
fn injected_template(namespace: &str) -> anyhow::Result<Value> {
    let app = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "template", "namespace": namespace, "labels": {"app": "template"}},
        "spec": {
            "serviceAccountName": "default",
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "app",
                "image": "registry.example.com/shop/app:1.42.0",
                "args": ["--listen=:8080", "--log-format=json"],
                "ports": [{"name": "http", "containerPort": TARGET_PORT, "protocol": "TCP"}, {"name": "metrics", "containerPort": 9102, "protocol": "TCP"}],
                "env": [
                    {"name": "APP_ENV", "value": "production"},
                    {"name": "APP_REGION", "value": "eu-west-1"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                ],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": TARGET_PORT}, "periodSeconds": 5},
                "livenessProbe": {"httpGet": {"path": "/live", "port": TARGET_PORT}, "periodSeconds": 10},
                "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}]
            }],
            "volumes": [{"name": "config", "emptyDir": {}}]
        }
    });
    let pod: Pod = serde_json::from_value(app)?;
    let ns = NamespaceInfo {
        name: namespace.to_string(),
        annotations: [("trellis.dev/inject".to_string(), "enabled".to_string())].into(),
        ..NamespaceInfo::default()
    };
    match inject(&pod, &ns, &InjectorConfig::default()) {
        Outcome::Injected { pod, .. } => {
            let mut v = serde_json::to_value(&*pod)?;
            v["apiVersion"] = json!("v1");
            v["kind"] = json!("Pod");
            if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("creationTimestamp");
            }
            if let Some(o) = v.as_object_mut() {
                o.remove("status");
            }
            Ok(v)
        }
        other => anyhow::bail!("the injector did not inject the template pod: {other:?}"),
    }
}
