//! `trellis-cni`: capture without a privileged init container.
//!
//! One binary, two jobs:
//!
//! - [`plugin`]: a chained CNI plugin. The container runtime runs it after
//!   the cluster's primary plugin (CNI_COMMAND set, configuration on stdin).
//!   On `ADD` for a pod the injector prepared for CNI capture it writes the
//!   pod's capture rules into the pod's network namespace, with the same code
//!   as `trellis-proxy init` ([`trellis_core::capture`]); every other pod
//!   passes through untouched, and the primary plugin's result is handed on
//!   unchanged.
//! - [`install`]: `trellis-cni install`, the chart's DaemonSet (`cni.enabled`):
//!   copies the binary into the node's CNI binary directory, writes the
//!   plugin's kubeconfig, and keeps `trellis-cni` chained in the node's
//!   network configuration list; `trellis-cni uninstall` undoes it.

// `println!`/`eprintln!` panic on a closed pipe: print through
// trellis_core::{out, outln, errln}.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod install;
pub mod plugin;
