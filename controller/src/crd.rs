//! The `policy.trellis.dev/v1alpha1` `AuthorizationPolicy` resource: which
//! identities may reach which pods and ports of a namespace.
//!
//! ```yaml
//! apiVersion: policy.trellis.dev/v1alpha1
//! kind: AuthorizationPolicy
//! metadata: {name: web-from-client, namespace: demo}
//! spec:
//!   podSelector: {matchLabels: {app: web}}   # empty: every meshed pod of the namespace
//!   ports: [8080]                            # pod ports; empty: every port
//!   from:                                    # any of these
//!     identities: ["spiffe://cluster.local/ns/demo/sa/client"]
//!     serviceAccounts: [{name: client, namespace: demo}]   # namespace: the policy's by default
//!     namespaces: [demo]                     # every meshed workload of these namespaces
//!   http:                                    # optional: HTTP requests only (never opaque TCP)
//!     methods: [GET, HEAD]
//!     pathPrefixes: [/api]                   # whole segments: /api matches /api and /api/x
//! ```
//!
//! The semantics are the proxy's (`proxy/src/policy.rs`): once a policy
//! selects a port of a pod, only peers matching one of the policies that
//! select it get in (under the `audit` default the rest is let in and
//! counted); ports no policy selects follow the default inbound policy.
//! The index compiles each policy into an `Authorization` of the pod's
//! `InboundPolicy` (service accounts become SPIFFE IDs of the trust domain).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which identities may reach which pods and ports of this namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "policy.trellis.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    shortname = "authzpolicy",
    namespaced,
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// The pods of this namespace the policy applies to; empty: all of its
    /// meshed pods.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// Pod (container) ports it applies to; empty: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "port_list")]
    pub ports: Vec<u16>,
    /// Who may connect: any of these.
    pub from: Sources,
    /// When given, the policy admits HTTP requests only, and only these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpConstraints>,
}

/// A list of TCP ports, 1-65535, in the schema's standard formats (the API
/// server validates them).
fn port_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "description": "Pod (container) ports it applies to; empty: every port.",
        "items": {"type": "integer", "format": "int32", "minimum": 1, "maximum": 65535}
    })
}

/// Peers a policy lets in.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sources {
    /// Exact SPIFFE IDs (`spiffe://TRUST-DOMAIN/ns/NS/sa/SA`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// ServiceAccounts, as SPIFFE IDs of the mesh's trust domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountRef>,
    /// Every meshed workload of these namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    pub name: String,
    /// Default: the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// HTTP constraints: a request must match one method (if any are listed)
/// and one path prefix (if any are listed).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpConstraints {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_prefixes: Vec<String>,
}

/// The CustomResourceDefinition, as YAML (what `trellis-controller crd`
/// prints and the Helm chart ships).
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    use kube::CustomResourceExt;
    serde_yaml_ng::to_string(&AuthorizationPolicy::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_names_and_schema() {
        let yaml = crd_yaml().unwrap();
        let crd: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(crd["kind"], "CustomResourceDefinition");
        assert_eq!(
            crd["metadata"]["name"],
            "authorizationpolicies.policy.trellis.dev"
        );
        assert_eq!(crd["spec"]["group"], "policy.trellis.dev");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["kind"], "AuthorizationPolicy");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        for field in ["podSelector", "ports", "from", "http"] {
            assert!(spec["properties"][field].is_object(), "{field}: {spec}");
        }
        assert_eq!(spec["required"], serde_json::json!(["from"]));
        let port = &spec["properties"]["ports"]["items"];
        // JSONSchemaProps keeps bounds as numbers (f64).
        assert_eq!(port["maximum"].as_f64(), Some(65535.0), "{port}");
        assert_eq!(port["minimum"].as_f64(), Some(1.0), "{port}");
        assert_eq!(port["format"], "int32", "{port}");
    }

    #[test]
    fn reads_the_documented_shape() {
        let p: AuthorizationPolicy = serde_yaml_ng::from_str(
            r#"
apiVersion: policy.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-from-client, namespace: demo}
spec:
  podSelector: {matchLabels: {app: web}}
  ports: [8080]
  from:
    identities: ["spiffe://cluster.local/ns/demo/sa/client"]
    serviceAccounts: [{name: client}]
    namespaces: [demo]
  http: {methods: [GET], pathPrefixes: [/api]}
"#,
        )
        .unwrap();
        assert_eq!(p.spec.ports, [8080]);
        assert_eq!(p.spec.from.service_accounts[0].name, "client");
        assert_eq!(p.spec.http.unwrap().path_prefixes, ["/api"]);
    }
}
