//! A pod's volumes on disk, under `pods/<uid>/volumes/<name>`, kept current
//! as kubelet keeps them: ServiceAccount tokens (TokenRequest, bound to the
//! pod, with the spec's audience and expiry) are requested again once 80 %
//! of their lifetime has passed; ConfigMap, Secret and downward API files
//! are rewritten when their source changes. Files are replaced by rename,
//! so a reader never sees half of one.
//!
//! With `fsGroup`, files belong to that group and the group may read what
//! the owner may, as kubelet's volume ownership does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, KeyToPath, Pod,
    Secret, SecretProjection, ServiceAccount, Volume, VolumeProjection,
};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Client;
use trellis_mesh::sys;

/// The mode of files when the volume does not say (kubelet's 0644).
const DEFAULT_MODE: i32 = 0o644;
/// A projected token's lifetime when the spec does not say (1 hour).
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// Why a volume cannot be set up: the pod waits (`ContainerCreating`) and
/// the reason goes into an event.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct VolumeError {
    pub message: String,
}

fn fail<T>(message: impl Into<String>) -> Result<T, VolumeError> {
    Err(VolumeError {
        message: message.into(),
    })
}

/// The cluster's ConfigMaps and Secrets, as the agent's reflectors see them.
#[derive(Clone)]
pub struct Sources {
    pub config_maps: Store<ConfigMap>,
    pub secrets: Store<Secret>,
}

impl Sources {
    pub fn config_map(&self, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let cm = self.config_maps.get(&ObjectRef::new(name).within(ns))?;
        let mut data: BTreeMap<String, Vec<u8>> = cm
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        for (k, v) in cm.binary_data.clone().unwrap_or_default() {
            data.insert(k, v.0);
        }
        Some(data)
    }

    pub fn secret(&self, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let s = self.secrets.get(&ObjectRef::new(name).within(ns))?;
        Some(
            s.data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
        )
    }
}

/// One requested token, and when to request it again.
struct Token {
    path: PathBuf,
    service_account: String,
    audience: Option<String>,
    seconds: i64,
    mode: u32,
    refresh_at: Instant,
}

/// A pod's volumes: where each is, and what keeps them current.
pub struct Volumes {
    /// Volume name → its directory (or a host path).
    pub paths: BTreeMap<String, PathBuf>,
    tokens: Vec<Token>,
    fs_group: Option<u32>,
}

impl Volumes {
    /// Makes every volume of `pod` under `dir`.
    pub async fn make(
        client: &Client,
        sources: &Sources,
        pod: &Pod,
        dir: &Path,
        pod_ip: Option<&str>,
    ) -> Result<Volumes, VolumeError> {
        let spec = pod.spec.as_ref().ok_or_else(|| VolumeError {
            message: "the pod has no spec".into(),
        })?;
        let fs_group = spec
            .security_context
            .as_ref()
            .and_then(|s| s.fs_group)
            .and_then(|g| u32::try_from(g).ok());
        let mut volumes = Volumes {
            paths: BTreeMap::new(),
            tokens: Vec::new(),
            fs_group,
        };
        for v in spec.volumes.iter().flatten() {
            let path = volumes
                .make_one(client, sources, pod, dir, v, pod_ip)
                .await?;
            volumes.paths.insert(v.name.clone(), path);
        }
        Ok(volumes)
    }

    async fn make_one(
        &mut self,
        client: &Client,
        sources: &Sources,
        pod: &Pod,
        dir: &Path,
        v: &Volume,
        pod_ip: Option<&str>,
    ) -> Result<PathBuf, VolumeError> {
        if let Some(host) = &v.host_path {
            let path = PathBuf::from(&host.path);
            if matches!(host.type_.as_deref(), Some("DirectoryOrCreate")) && !path.exists() {
                std::fs::create_dir_all(&path)
                    .or_else(|e| fail(format!("hostPath {}: {e}", path.display())))?;
            }
            if !path.exists() {
                return fail(format!("hostPath {} does not exist", path.display()));
            }
            return Ok(path);
        }
        let path = dir.join(&v.name);
        let mode = if v.empty_dir.is_some() { 0o777 } else { 0o755 };
        sys::create_dir_mode(&path, mode).or_else(|e| fail(e.to_string()))?;
        if let Some(g) = self.fs_group {
            chown_group(&path, g)?;
        }
        let files = self.contents(client, sources, pod, v, pod_ip).await?;
        self.write(&path, files)?;
        Ok(path)
    }

    /// The files of volume `v` (path within the volume → bytes and mode);
    /// `None` for a volume with no files of its own (`emptyDir`).
    async fn contents(
        &mut self,
        client: &Client,
        sources: &Sources,
        pod: &Pod,
        v: &Volume,
        pod_ip: Option<&str>,
    ) -> Result<Option<BTreeMap<String, (Vec<u8>, u32)>>, VolumeError> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        if v.empty_dir.is_some() {
            return Ok(None);
        }
        let Some((mode, projections)) = projection(v) else {
            return fail(format!(
                "volume {}: only emptyDir, configMap, secret, downwardAPI, projected and hostPath volumes are supported by trellis-node",
                v.name
            ));
        };
        let mut files = BTreeMap::new();
        for source in &projections {
            if let Some(cm) = &source.config_map {
                let data = sources.config_map(ns, &cm.name);
                let keys = Keys {
                    kind: "ConfigMap",
                    name: &cm.name,
                    items: cm.items.as_deref(),
                    optional: cm.optional,
                };
                add_keys(&mut files, &keys, data, mode)?;
            }
            if let Some(s) = &source.secret {
                let data = sources.secret(ns, &s.name);
                let keys = Keys {
                    kind: "Secret",
                    name: &s.name,
                    items: s.items.as_deref(),
                    optional: s.optional,
                };
                add_keys(&mut files, &keys, data, mode)?;
            }
            if let Some(d) = &source.downward_api {
                let items = d.items.as_deref().unwrap_or_default();
                add_downward(&mut files, pod, items, mode, pod_ip)?;
            }
            if let Some(t) = &source.service_account_token {
                let sa = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".into());
                let seconds = t.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS);
                let token = request_token(client, pod, &sa, t.audience.as_deref(), seconds).await?;
                files.insert(t.path.clone(), (token.into_bytes(), mode as u32));
                // Kept for refresh (the path is relative to the volume
                // until `write` makes it absolute).
                self.tokens.push(Token {
                    path: PathBuf::from(&v.name).join(&t.path),
                    service_account: sa,
                    audience: t.audience.clone(),
                    seconds,
                    mode: mode as u32,
                    refresh_at: Instant::now() + refresh_after(seconds),
                });
            }
            if source.cluster_trust_bundle.is_some() || source.pod_certificate.is_some() {
                return fail(format!(
                    "volume {}: clusterTrustBundle and podCertificate sources are not supported by trellis-node",
                    v.name
                ));
            }
        }
        Ok(Some(files))
    }

    fn write(
        &mut self,
        dir: &Path,
        files: Option<BTreeMap<String, (Vec<u8>, u32)>>,
    ) -> Result<(), VolumeError> {
        for (rel, (bytes, mode)) in files.into_iter().flatten() {
            self.write_file(&dir.join(&rel), &bytes, mode)?;
        }
        Ok(())
    }

    fn write_file(&self, path: &Path, bytes: &[u8], mode: u32) -> Result<(), VolumeError> {
        if std::fs::read(path).ok().as_deref() == Some(bytes) {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .or_else(|e| fail(format!("{}: {e}", parent.display())))?;
        }
        let mode = match self.fs_group {
            Some(_) => mode | ((mode & 0o700) >> 3),
            None => mode,
        };
        sys::write_file_atomic(path, bytes, mode, None).or_else(|e| fail(e.to_string()))?;
        if let Some(g) = self.fs_group {
            chown_group(path, g)?;
        }
        Ok(())
    }

    /// Requests tokens that are due again and rewrites ConfigMap, Secret and
    /// downward API files whose source changed.
    pub async fn refresh(
        &mut self,
        client: &Client,
        sources: &Sources,
        pod: &Pod,
        dir: &Path,
        pod_ip: Option<&str>,
    ) -> Result<(), VolumeError> {
        let now = Instant::now();
        let due: Vec<usize> = (0..self.tokens.len())
            .filter(|i| self.tokens[*i].refresh_at <= now)
            .collect();
        for i in due {
            let t = &self.tokens[i];
            let token = request_token(
                client,
                pod,
                &t.service_account,
                t.audience.as_deref(),
                t.seconds,
            )
            .await?;
            let (path, mode, seconds) = (dir.join(&t.path), t.mode, t.seconds);
            self.write_file(&path, token.as_bytes(), mode)?;
            self.tokens[i].refresh_at = Instant::now() + refresh_after(seconds);
        }
        let Some(spec) = pod.spec.as_ref() else {
            return Ok(());
        };
        for v in spec.volumes.iter().flatten() {
            let projected_token = v.projected.as_ref().is_some_and(|p| {
                p.sources
                    .iter()
                    .flatten()
                    .any(|s| s.service_account_token.is_some())
            });
            if v.host_path.is_some() || v.empty_dir.is_some() || projected_token {
                // Tokens are refreshed above; a projected volume with a
                // token is not re-requested just to compare its other files.
                continue;
            }
            let mut scratch = Volumes {
                paths: BTreeMap::new(),
                tokens: Vec::new(),
                fs_group: self.fs_group,
            };
            // An optional source that is gone leaves its files as they were.
            if let Ok(files) = scratch.contents(client, sources, pod, v, pod_ip).await {
                scratch.write(&dir.join(&v.name), files)?;
            }
        }
        Ok(())
    }
}

/// Kubelet requests a token again once 80 % of its lifetime has passed.
fn refresh_after(seconds: i64) -> Duration {
    Duration::from_secs(u64::try_from(seconds).unwrap_or(600) * 8 / 10)
}

async fn request_token(
    client: &Client,
    pod: &Pod,
    service_account: &str,
    audience: Option<&str>,
    seconds: i64,
) -> Result<String, VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(audience.map(|a| vec![a.to_string()]).unwrap_or_default()),
            expiration_seconds: Some(seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..TokenRequest::default()
    };
    let answer: TokenRequest = match api
        .create_subresource("token", service_account, &PostParams::default(), &request)
        .await
    {
        Ok(a) => a,
        Err(e) => {
            return fail(format!(
                "requesting a token for ServiceAccount {ns}/{service_account}: {e}"
            ))
        }
    };
    match answer.status {
        Some(s) if s.token.as_deref().is_some_and(|t| !t.is_empty()) => {
            Ok(s.token.unwrap_or_default())
        }
        _ => fail(format!(
            "the API server gave no token for ServiceAccount {ns}/{service_account}"
        )),
    }
}

/// Which keys of a ConfigMap or Secret a volume takes.
struct Keys<'a> {
    kind: &'static str,
    name: &'a str,
    items: Option<&'a [KeyToPath]>,
    optional: Option<bool>,
}

fn add_keys(
    files: &mut BTreeMap<String, (Vec<u8>, u32)>,
    keys: &Keys<'_>,
    data: Option<BTreeMap<String, Vec<u8>>>,
    default_mode: i32,
) -> Result<(), VolumeError> {
    let Keys {
        kind,
        name,
        items,
        optional,
    } = *keys;
    let Some(data) = data else {
        if optional == Some(true) {
            return Ok(());
        }
        return fail(format!("{kind} {name:?} not found"));
    };
    match items {
        None => {
            for (k, v) in data {
                files.insert(k, (v, default_mode as u32));
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => {
                        let mode = item.mode.unwrap_or(default_mode) as u32;
                        files.insert(item.path.clone(), (v.clone(), mode));
                    }
                    None if optional == Some(true) => {}
                    None => return fail(format!("{kind} {name:?} has no key {:?}", item.key)),
                }
            }
        }
    }
    Ok(())
}

/// A volume's files as projected sources and their default mode: a
/// `configMap`, `secret` or `downwardAPI` volume is the projection of its
/// one source, as in Kubernetes. `None` for other kinds.
fn projection(v: &Volume) -> Option<(i32, Vec<VolumeProjection>)> {
    let one =
        |p: VolumeProjection, mode: Option<i32>| Some((mode.unwrap_or(DEFAULT_MODE), vec![p]));
    if let Some(cm) = &v.config_map {
        let source = ConfigMapProjection {
            name: cm.name.clone(),
            items: cm.items.clone(),
            optional: cm.optional,
        };
        return one(
            VolumeProjection {
                config_map: Some(source),
                ..VolumeProjection::default()
            },
            cm.default_mode,
        );
    }
    if let Some(s) = &v.secret {
        let source = SecretProjection {
            name: s.secret_name.clone().unwrap_or_default(),
            items: s.items.clone(),
            optional: s.optional,
        };
        return one(
            VolumeProjection {
                secret: Some(source),
                ..VolumeProjection::default()
            },
            s.default_mode,
        );
    }
    if let Some(d) = &v.downward_api {
        let source = DownwardAPIProjection {
            items: d.items.clone(),
        };
        return one(
            VolumeProjection {
                downward_api: Some(source),
                ..VolumeProjection::default()
            },
            d.default_mode,
        );
    }
    let p = v.projected.as_ref()?;
    Some((
        p.default_mode.unwrap_or(DEFAULT_MODE),
        p.sources.clone().unwrap_or_default(),
    ))
}

fn add_downward(
    files: &mut BTreeMap<String, (Vec<u8>, u32)>,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: i32,
    pod_ip: Option<&str>,
) -> Result<(), VolumeError> {
    for item in items {
        let mode = item.mode.unwrap_or(default_mode) as u32;
        let value = match &item.field_ref {
            Some(f) => field_value(pod, &f.field_path, pod_ip).ok_or_else(|| VolumeError {
                message: format!("downward API field {:?} is not supported", f.field_path),
            })?,
            None => {
                return fail(format!(
                    "downward API item {:?}: only fieldRef is supported by trellis-node",
                    item.path
                ))
            }
        };
        files.insert(item.path.clone(), (value.into_bytes(), mode));
    }
    Ok(())
}

/// A downward API field of the pod (the volume's fields: labels and
/// annotations as `key="value"` lines).
fn field_value(pod: &Pod, path: &str, pod_ip: Option<&str>) -> Option<String> {
    let meta = &pod.metadata;
    let lines = |m: &Option<BTreeMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect::<String>()
    };
    Some(match path {
        "metadata.name" => meta.name.clone()?,
        "metadata.namespace" => meta.namespace.clone()?,
        "metadata.uid" => meta.uid.clone()?,
        "metadata.labels" => lines(&meta.labels),
        "metadata.annotations" => lines(&meta.annotations),
        "spec.nodeName" => pod.spec.as_ref()?.node_name.clone()?,
        "spec.serviceAccountName" => pod.spec.as_ref()?.service_account_name.clone()?,
        "status.podIP" => pod_ip?.to_string(),
        _ => {
            let (map, key) = if let Some(k) = path.strip_prefix("metadata.labels['") {
                (&meta.labels, k)
            } else if let Some(k) = path.strip_prefix("metadata.annotations['") {
                (&meta.annotations, k)
            } else {
                return None;
            };
            let key = key.strip_suffix("']")?;
            map.as_ref()?.get(key).cloned().unwrap_or_default()
        }
    })
}

fn chown_group(path: &Path, gid: u32) -> Result<(), VolumeError> {
    std::os::unix::fs::chown(path, None, Some(gid))
        .or_else(|e| fail(format!("giving {} to group {gid}: {e}", path.display())))
}

/// Secrets' values as text for environment variables (invalid UTF-8 is
/// replaced, as a container runtime passes bytes kubelet decoded).
pub fn as_text(data: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    data.into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}
