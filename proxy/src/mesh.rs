//! What the proxy knows of the mesh: its own credentials, which
//! destinations are meshed (and which identities they must prove), and this
//! pod's inbound policy. The destinations and policy come from files (the
//! local mesh writes them; issue 4's controller replaces them) and are
//! reloaded when they change, atomically, without touching open
//! connections.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::de::DeserializeOwned;
use trellis_core::contract::files::DestinationsFile;
use trellis_core::contract::proxy_env;
use trellis_core::spiffe::SpiffeId;
use trellis_core::tls::{self, Credentials, TlsError};

use crate::metrics::Label;
use crate::plaintext::PlaintextPolicy;
use crate::policy::{DefaultPolicy, Policy};

/// ALPN of HTTP between two proxies: HTTP/2 inside mutual TLS.
pub const ALPN_H2: &[u8] = b"trellis.h2";
/// ALPN of opaque TCP (and tunnels) between two proxies.
pub const ALPN_TCP: &[u8] = b"trellis.tcp";
/// Header carrying the application's HTTP version across the mesh.
pub const ORIG_PROTO: &str = "trellis-orig-proto";

/// A meshed destination: who it must be, and how to reach it.
pub struct Destination {
    pub identities: Vec<SpiffeId>,
    /// The `peer` metric label: the destination's identity.
    pub peer: Label,
    pub h2: Arc<rustls::ClientConfig>,
    pub tcp: Arc<rustls::ClientConfig>,
}

pub struct Mesh {
    /// `None` when the proxy runs without identity (plaintext only).
    pub creds: Option<Arc<Credentials>>,
    pub server: Option<Arc<rustls::ServerConfig>>,
    destinations: ArcSwap<HashMap<SocketAddr, Arc<Destination>>>,
    /// Client configurations per identity, for endpoints the controller
    /// names (made once, shared by every connection to that identity).
    by_identity: std::sync::Mutex<HashMap<SpiffeId, Arc<Destination>>>,
    policy: ArcSwap<Policy>,
    /// When outbound connections may go out in plaintext.
    pub outbound: PlaintextPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl Mesh {
    pub fn new(
        creds: Option<Arc<Credentials>>,
        default_policy: DefaultPolicy,
    ) -> Result<Self, TlsError> {
        let server = match &creds {
            Some(c) => Some(tls::server_config(c, &[ALPN_H2, ALPN_TCP])?),
            None => None,
        };
        Ok(Self {
            creds,
            server,
            destinations: ArcSwap::from_pointee(HashMap::new()),
            by_identity: std::sync::Mutex::new(HashMap::new()),
            policy: ArcSwap::from_pointee(Policy {
                default_policy,
                ..Policy::default()
            }),
            outbound: PlaintextPolicy::default(),
        })
    }

    /// The same mesh with `outbound` deciding plaintext.
    pub fn with_outbound(mut self, outbound: PlaintextPolicy) -> Self {
        self.outbound = outbound;
        self
    }

    /// The meshed destination at `addr`, if it is one.
    pub fn destination(&self, addr: SocketAddr) -> Option<Arc<Destination>> {
        self.destinations.load().get(&addr).cloned()
    }

    /// How to reach a meshed endpoint that must prove `id`. `None` when
    /// this proxy has no identity (and so cannot speak mutual TLS).
    pub fn destination_for(&self, id: &SpiffeId) -> Option<Arc<Destination>> {
        let creds = self.creds.as_ref()?;
        let mut cache = self.by_identity.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = cache.get(id) {
            return Some(d.clone());
        }
        let ids = vec![id.clone()];
        let d = Arc::new(Destination {
            peer: Label::new(&id.to_string()),
            h2: tls::client_config(creds, ids.clone(), &[ALPN_H2]).ok()?,
            tcp: tls::client_config(creds, ids.clone(), &[ALPN_TCP]).ok()?,
            identities: ids,
        });
        // Bounded by the mesh's identities, which the controller names.
        cache.insert(id.clone(), d.clone());
        Some(d)
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// Replaces the meshed destinations. Without credentials, a destinations
    /// list is refused: mTLS to them would be impossible, and plaintext would
    /// silently weaken what the mesh promises.
    pub fn set_destinations(&self, file: DestinationsFile) -> Result<usize, String> {
        let Some(creds) = &self.creds else {
            return Err(format!(
                "meshed destinations need an identity ({})",
                proxy_env::IDENTITY_ADDR
            ));
        };
        // One pair of client configs per set of identities.
        let mut configs: HashMap<Vec<SpiffeId>, Arc<Destination>> = HashMap::new();
        let mut map = HashMap::new();
        for (i, entry) in file.destinations.into_iter().enumerate() {
            let mut ids = entry
                .identities
                .iter()
                .map(|s| s.parse::<SpiffeId>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("destinations[{i}] ({}): {e}", entry.addr))?;
            if ids.is_empty() {
                return Err(format!("destinations[{i}] ({}): no identities", entry.addr));
            }
            ids.sort();
            ids.dedup();
            let dest = match configs.get(&ids) {
                Some(d) => d.clone(),
                None => {
                    let d = Arc::new(Destination {
                        peer: Label::new(
                            &ids.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(","),
                        ),
                        h2: tls::client_config(creds, ids.clone(), &[ALPN_H2])
                            .map_err(|e| e.to_string())?,
                        tcp: tls::client_config(creds, ids.clone(), &[ALPN_TCP])
                            .map_err(|e| e.to_string())?,
                        identities: ids.clone(),
                    });
                    configs.insert(ids, d.clone());
                    d
                }
            };
            map.insert(entry.addr, dest);
        }
        let n = map.len();
        self.destinations.store(Arc::new(map));
        Ok(n)
    }
}

/// Reads and parses a JSON file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<(T, Vec<u8>), MeshError> {
    let bytes = std::fs::read(path).map_err(|source| MeshError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let value = serde_json::from_slice(&bytes).map_err(|e| MeshError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok((value, bytes))
}

/// Polls `path` every `interval`; when its content changes, parses it and
/// hands it to `apply`. A file that is missing, unparsable or refused is
/// logged and the current state kept.
pub async fn watch_json<T, F>(
    path: PathBuf,
    mut last: Vec<u8>,
    interval: Duration,
    apply: F,
    stop: impl Future<Output = ()>,
) where
    T: DeserializeOwned,
    F: Fn(T) -> Result<(), String>,
{
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read; keeping the current state");
                continue;
            }
        };
        if bytes == last {
            continue;
        }
        let parsed = serde_json::from_slice::<T>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(&apply);
        match parsed {
            Ok(()) => tracing::info!(path = %path.display(), "reloaded"),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "refused; keeping the current state")
            }
        }
        last = bytes;
    }
}
