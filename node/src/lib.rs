//! The node agent of `trellis mesh up --kubernetes`, and the control plane
//! it runs beside.
//!
//! There is no container engine: a pod is processes in a network namespace,
//! as in the local mesh. For one node, the agent does what kubelet, a CNI
//! plugin and kube-proxy do:
//!
//! - registers its Node (with a pod CIDR), renews its Lease, and binds the
//!   pods nobody scheduled (it is the scheduler of a one-node cluster);
//! - gives each pod bound to it a network namespace, a veth into the node's
//!   bridge and an address from the pod CIDR; runs its init containers in
//!   order (native sidecars: started, and ready by their startup probe,
//!   before the next), then its containers, as the users and with the
//!   capabilities their security contexts give, with their volumes
//!   (projected ServiceAccount tokens from TokenRequest, ConfigMaps,
//!   Secrets, downward API, `emptyDir`) bind-mounted where they ask;
//! - probes them from the node (HTTP, TCP, gRPC), restarts them by their
//!   `restartPolicy`, and reports their status, so that
//!   kube-controller-manager publishes their endpoints;
//! - stops them with their grace period, sidecars last, and leaves nothing;
//! - gives every pod the cluster's Service IPs (DNAT rules in the pod, after
//!   any capture rules) and names (its `/etc/hosts`).
//!
//! Images are not pulled: [`images`] maps an image to a local program.
//!
//! ## Modules, lowest layer first
//!
//! - [`images`]: which local program an image's entrypoint is (pure);
//! - [`launch`]: a container's command line, environment, user,
//!   capabilities and mounts, from the pod's spec (pure);
//! - [`services`]: Services and EndpointSlices as a pod's DNAT rules and
//!   `/etc/hosts` (pure);
//! - [`probe`]: HTTP, TCP and gRPC probes, sent from the node;
//! - [`record`]: what a Kubernetes-mode mesh is and made, on disk;
//! - [`network`]: the node's and each pod's network namespace;
//! - [`pki`]: the cluster's certificates and keys;
//! - [`volumes`]: a pod's volumes on disk, kept current;
//! - [`node`]: the Node, its Lease, and binding pods to it;
//! - [`pod`]: one pod's life: start, probe, restart, report, stop;
//! - [`agent`]: the agent: watches, and a task per pod;
//! - [`forward`]: the host's way in to the API server;
//! - [`control_plane`]: `mesh up --kubernetes`, `exec` and `down`.

pub mod agent;
pub mod control_plane;
pub mod forward;
pub mod images;
pub mod launch;
pub mod network;
pub mod node;
pub mod pki;
pub mod pod;
pub mod probe;
pub mod record;
pub mod services;
pub mod volumes;
