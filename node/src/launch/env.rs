//! A container's environment, as kubelet (`makeEnvironmentVariables`) and
//! containerd build it.
//!
//! kubelet's variables are the service links, then `envFrom`, then `env`,
//! each later one replacing an earlier one of the same name; an `env` value
//! sees (for `$(VAR)`) the variables before it. The process gets, before
//! them, containerd's `HOSTNAME` and the image's default `PATH`.
//!
//! Service links: only the `KUBERNETES_*` variables of `default/kubernetes`
//! (which kubelet gives every pod); `enableServiceLinks` is not honoured
//! beyond them: no pod gets the other Services' variables.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, EnvVarSource, ObjectFieldSelector, ResourceFieldSelector,
};

use super::expand::expand;
use super::quantity::Quantity;
use super::{LaunchError, PodEnv};
use crate::images::DEFAULT_PATH;

/// Linux's limit on a hostname.
const HOSTNAME_MAX: usize = 63;

/// Variables in order; setting a name again replaces its value in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Vars(Vec<(String, String)>);

impl Vars {
    fn set(&mut self, name: &str, value: String) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.0.push((name.to_owned(), value)),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn into_vec(self) -> Vec<(String, String)> {
        self.0
    }
}

/// kubelet's variables of a container: what `$(VAR)` in `command`, `args`
/// and `subPathExpr` sees.
#[derive(Clone, Debug, Default)]
pub(super) struct KubeletVars {
    services: Vars,
    container: Vars,
}

impl KubeletVars {
    /// A variable; the container's own before a service link.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.container.get(name).or_else(|| self.services.get(name))
    }
}

/// kubelet's variables: service links, `envFrom`, `env`.
pub(super) fn kubelet_vars(
    env: &PodEnv,
    container: &Container,
) -> Result<KubeletVars, LaunchError> {
    let mut vars = KubeletVars {
        services: service_links(env.kubernetes_service),
        container: Vars::default(),
    };
    for source in container.env_from.iter().flatten() {
        env_from(env, source, &mut vars.container)?;
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = env_value(env, container, var, &vars)? {
            vars.container.set(&var.name, value);
        }
    }
    Ok(vars)
}

/// The process's environment: service links, `HOSTNAME`, `PATH`, then the
/// container's variables (which may replace any of them).
pub(super) fn process_env(env: &PodEnv, vars: &KubeletVars) -> Vars {
    let mut out = vars.services.clone();
    out.set("HOSTNAME", hostname(env));
    out.set("PATH", DEFAULT_PATH.to_owned());
    for (name, value) in &vars.container.0 {
        out.set(name, value.clone());
    }
    out
}

/// The variables kubelet makes for the Service `default/kubernetes`, whose
/// one port is named `https` (as kube-apiserver makes it).
fn service_links(service: Option<SocketAddr>) -> Vars {
    let mut vars = Vars::default();
    let Some(service) = service else {
        return vars;
    };
    let (ip, port) = (service.ip().to_string(), service.port().to_string());
    let url = format!("tcp://{service}");
    let port_prefix = format!("KUBERNETES_PORT_{port}_TCP");
    vars.set("KUBERNETES_SERVICE_HOST", ip.clone());
    vars.set("KUBERNETES_SERVICE_PORT", port.clone());
    vars.set("KUBERNETES_SERVICE_PORT_HTTPS", port.clone());
    vars.set("KUBERNETES_PORT", url.clone());
    vars.set(&port_prefix, url);
    vars.set(&format!("{port_prefix}_PROTO"), "tcp".to_owned());
    vars.set(&format!("{port_prefix}_PORT"), port);
    vars.set(&format!("{port_prefix}_ADDR"), ip);
    vars
}

/// The pod's hostname, as kubelet gives it: `spec.hostname`, else the pod's
/// name, cut to 63 characters without a trailing `-` or `.`; a pod on the
/// host's network has the node's.
fn hostname(env: &PodEnv) -> String {
    let spec = env.pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return env.node_name.to_owned();
    }
    let name = spec
        .and_then(|s| s.hostname.as_deref())
        .filter(|h| !h.is_empty())
        .or(env.pod.metadata.name.as_deref())
        .unwrap_or_default();
    match name.get(..HOSTNAME_MAX) {
        Some(cut) if name.len() > HOSTNAME_MAX => cut.trim_end_matches(['-', '.']).to_owned(),
        _ => name.to_owned(),
    }
}

/// One `envFrom` source's variables. kubelet skips keys that are not
/// variable names (printable ASCII without `=`).
fn env_from(env: &PodEnv, source: &EnvFromSource, vars: &mut Vars) -> Result<(), LaunchError> {
    let data = if let Some(cm) = &source.config_map_ref {
        match env.config_maps.get(&cm.name) {
            Some(data) => data,
            None if cm.optional == Some(true) => return Ok(()),
            None => {
                return Err(LaunchError::ConfigMapNotFound {
                    name: cm.name.clone(),
                })
            }
        }
    } else if let Some(secret) = &source.secret_ref {
        match env.secrets.get(&secret.name) {
            Some(data) => data,
            None if secret.optional == Some(true) => return Ok(()),
            None => {
                return Err(LaunchError::SecretNotFound {
                    name: secret.name.clone(),
                })
            }
        }
    } else {
        return Ok(());
    };
    let prefix = source.prefix.as_deref().unwrap_or_default();
    for (key, value) in data {
        let name = format!("{prefix}{key}");
        if is_var_name(&name) {
            vars.set(&name, value.clone());
        }
    }
    Ok(())
}

/// kubelet's (relaxed) rule for a variable name.
fn is_var_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'=')
}

/// One `env` entry's value; `None` when an optional source is missing (the
/// variable is then not set).
fn env_value(
    env: &PodEnv,
    container: &Container,
    var: &EnvVar,
    vars: &KubeletVars,
) -> Result<Option<String>, LaunchError> {
    if let Some(value) = var.value.as_deref().filter(|v| !v.is_empty()) {
        return Ok(Some(expand(value, |name| vars.get(name))));
    }
    let Some(source) = &var.value_from else {
        return Ok(Some(String::new()));
    };
    let fail = |why: String| LaunchError::Env {
        name: var.name.clone(),
        why,
    };
    match source {
        EnvVarSource {
            field_ref: Some(field),
            ..
        } => field_value(env, field).map(Some).map_err(fail),
        EnvVarSource {
            resource_field_ref: Some(resource),
            ..
        } => resource_value(env, container, resource)
            .map(Some)
            .map_err(fail),
        EnvVarSource {
            config_map_key_ref: Some(key),
            ..
        } => {
            let optional = key.optional == Some(true);
            match env.config_maps.get(&key.name) {
                None if optional => Ok(None),
                None => Err(LaunchError::ConfigMapNotFound {
                    name: key.name.clone(),
                }),
                Some(data) => match data.get(&key.key) {
                    Some(value) => Ok(Some(value.clone())),
                    None if optional => Ok(None),
                    None => Err(key_not_found(env, "ConfigMap", &key.name, &key.key)),
                },
            }
        }
        EnvVarSource {
            secret_key_ref: Some(key),
            ..
        } => {
            let optional = key.optional == Some(true);
            match env.secrets.get(&key.name) {
                None if optional => Ok(None),
                None => Err(LaunchError::SecretNotFound {
                    name: key.name.clone(),
                }),
                Some(data) => match data.get(&key.key) {
                    Some(value) => Ok(Some(value.clone())),
                    None if optional => Ok(None),
                    None => Err(key_not_found(env, "Secret", &key.name, &key.key)),
                },
            }
        }
        EnvVarSource {
            file_key_ref: Some(_),
            ..
        } => Err(fail("fileKeyRef is not supported by this node".into())),
        _ => Ok(Some(String::new())),
    }
}

fn key_not_found(env: &PodEnv, kind: &'static str, name: &str, key: &str) -> LaunchError {
    LaunchError::KeyNotFound {
        kind,
        namespace: env.pod.metadata.namespace.clone().unwrap_or_default(),
        name: name.to_owned(),
        key: key.to_owned(),
    }
}

/// A `fieldRef`'s value, with kubelet's messages for what it refuses.
fn field_value(env: &PodEnv, field: &ObjectFieldSelector) -> Result<String, String> {
    let version = field.api_version.as_deref().unwrap_or("v1");
    if !version.is_empty() && version != "v1" {
        return Err(format!("unsupported pod version: {version}"));
    }
    let meta = &env.pod.metadata;
    let spec = env.pod.spec.as_ref();
    let path = field.field_path.as_str();
    if let Some((map, key)) = subscripted(path) {
        let map = match map {
            "metadata.labels" => &meta.labels,
            "metadata.annotations" => &meta.annotations,
            _ => return Err(format!("field label does not support subscript: {path}")),
        };
        return Ok(map
            .as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default());
    }
    let (primary, secondary) = pod_ips(env.pod_ips, env.host_ip);
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    Ok(match path {
        "metadata.name" => text(&meta.name),
        "metadata.namespace" => text(&meta.namespace),
        "metadata.uid" => text(&meta.uid),
        // The pod runs here: its spec.nodeName is this node.
        "spec.nodeName" | "spec.host" => env.node_name.to_owned(),
        "spec.serviceAccountName" => spec
            .map(|s| text(&s.service_account_name))
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => env.host_ip.to_string(),
        "status.podIP" => primary.map(|ip| ip.to_string()).unwrap_or_default(),
        "status.podIPs" => [primary, secondary]
            .into_iter()
            .flatten()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(","),
        _ => return Err(format!("unsupported fieldPath: {path}")),
    })
}

/// `metadata.labels['key']` → (`metadata.labels`, `key`).
fn subscripted(path: &str) -> Option<(&str, &str)> {
    let (map, key) = path.strip_suffix("']")?.split_once("['")?;
    (!map.is_empty()).then_some((map, key))
}

/// kubelet's order of a pod's IPs: the first of the node's family, then
/// the first of the other.
fn pod_ips(ips: &[IpAddr], host: IpAddr) -> (Option<IpAddr>, Option<IpAddr>) {
    let primary = ips
        .iter()
        .find(|ip| ip.is_ipv4() == host.is_ipv4())
        .copied();
    let secondary = ips
        .iter()
        .find(|ip| ip.is_ipv4() != host.is_ipv4())
        .copied();
    match primary {
        Some(_) => (primary, secondary),
        None => (secondary, None),
    }
}

/// A `resourceFieldRef`'s value: the container's limit or request divided
/// by the divisor (default 1), rounded up; an unset CPU or memory limit is
/// the node's allocatable.
fn resource_value(
    env: &PodEnv,
    container: &Container,
    field: &ResourceFieldSelector,
) -> Result<String, String> {
    let quantity = |text: &str| {
        Quantity::parse(text).map_err(|why| format!("invalid quantity {text:?}: {why}"))
    };
    let divisor = match &field.divisor {
        Some(d) if !d.0.is_empty() => quantity(&d.0)?,
        _ => quantity("1")?,
    };
    let (kind, resource) = field
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported container resource: {}", field.resource))?;
    let resources = container.resources.as_ref();
    let list = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => {
            return Err(format!(
                "unsupported container resource: {}",
                field.resource
            ))
        }
    };
    let set = list
        .and_then(|l| l.get(resource))
        .map(|q| quantity(&q.0))
        .transpose()?;
    let too_large = || format!("{} is too large", field.resource);
    // CPU in thousandths, the others in units.
    let (value, divisor) = match resource {
        "cpu" => {
            let value = match set {
                Some(q) => q.milli_value().ok_or_else(too_large)?,
                None if kind == "limits" => u128::from(env.allocatable.cpu_millicores),
                None => 0,
            };
            (value, divisor.milli_value())
        }
        "memory" | "ephemeral-storage" => {
            let value = match set {
                Some(q) => q.value().ok_or_else(too_large)?,
                None if kind == "limits" && resource == "memory" => {
                    u128::from(env.allocatable.memory_bytes)
                }
                None => 0,
            };
            (value, divisor.value())
        }
        r if r.starts_with("hugepages-") => (
            set.map_or(Some(0), |q| q.value()).ok_or_else(too_large)?,
            divisor.value(),
        ),
        _ => {
            return Err(format!(
                "unsupported container resource: {}",
                field.resource
            ))
        }
    };
    match divisor {
        Some(d) if d > 0 => Ok(value.div_ceil(d).to_string()),
        _ => Err(format!(
            "invalid divisor {:?}",
            field.divisor.as_ref().map(|d| d.0.as_str()).unwrap_or("1")
        )),
    }
}
