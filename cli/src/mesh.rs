//! `trellis mesh …`: the command line of the local mesh. What each
//! subcommand does is the `trellis_mesh` library's; this module parses the
//! arguments and prints.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use trellis_core::{errln, out, outln};
use trellis_mesh::{
    check, state, status, table, ApplyOptions, Down, Interrupt, Interrupted, Mesh, PolicyChange,
    Progress, UpOptions, UNDO,
};

/// Run a local mesh on this host: network namespaces as pods (root).
#[derive(clap::Args, Debug)]
pub struct MeshArgs {
    #[command(subcommand)]
    command: MeshCommand,
}

#[derive(clap::Subcommand, Debug)]
enum MeshCommand {
    /// Create the mesh a file describes; returns once every pod is ready.
    ///
    /// The file is checked first, and refused with every mistake listed
    /// (field path and accepted values). Every key: docs/mesh-file.md;
    /// examples: examples/.
    Up {
        /// The mesh file: every key in docs/mesh-file.md; see examples/.
        #[arg(short = 'f', long = "file", required_unless_present = "kubernetes")]
        file: Option<PathBuf>,
        /// How long to wait for proxies and workloads to become ready.
        #[arg(long, default_value = "30s", value_parser = trellis_core::config::parse_duration)]
        timeout: Duration,
        /// Instead of a mesh file: a one-node Kubernetes cluster (etcd,
        /// kube-apiserver, kube-controller-manager from
        /// `scripts/build-kube.sh`, and Trellis's node agent running pods as
        /// processes), with charts/trellis installed; prints a kubeconfig.
        /// See docs/node-agent.md.
        #[arg(long, conflicts_with = "file")]
        kubernetes: bool,
        /// The mesh's name (with --kubernetes).
        #[arg(long, default_value = "kube", requires = "kubernetes")]
        name: String,
        /// The node's pod CIDR (with --kubernetes).
        #[arg(long, default_value = "10.244.0.0/24", requires = "kubernetes")]
        pod_cidr: trellis_node::network::PodCidr,
        /// The chart to install (with --kubernetes).
        #[arg(long, default_value = "charts/trellis", requires = "kubernetes")]
        chart: PathBuf,
        /// A `helm --set` value for the chart (repeatable).
        #[arg(long = "set", requires = "kubernetes")]
        chart_sets: Vec<String>,
        /// More image → program mappings for the node agent (YAML; see
        /// docs/node-agent.md, "Images").
        #[arg(long, requires = "kubernetes")]
        images: Option<PathBuf>,
    },
    /// Bring a running mesh to a changed file (replicas, services, routes,
    /// policies), as `kubectl apply` would; the file's `name` says which.
    ///
    /// The file is checked first, as by `up`. Every key: docs/mesh-file.md.
    Apply {
        /// The changed mesh file: every key in docs/mesh-file.md.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// How long to wait for new proxies and workloads to become ready.
        #[arg(long, default_value = "30s", value_parser = trellis_core::config::parse_duration)]
        timeout: Duration,
    },
    /// Workloads, replicas, addresses, identities, admin URLs, liveness.
    Status {
        /// Which mesh (default: the only one).
        #[arg(long)]
        name: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Run a command inside a pod's network namespace, like `kubectl exec`.
    Exec {
        /// Which mesh (default: the only one).
        #[arg(long)]
        name: Option<String>,
        /// `web` (replica 0), `web-1`, or `NAMESPACE/web-1`.
        pod: String,
        /// The command, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Show a meshed pod's inbound policy file, or change it: the proxy
    /// reloads it, no restart.
    Policy {
        /// Which mesh (default: the only one).
        #[arg(long)]
        name: Option<String>,
        /// `web` (replica 0), `web-1`, or `NAMESPACE/web-1`.
        pod: String,
        /// New default: all-unauthenticated, all-authenticated, deny or audit.
        #[arg(long = "default", value_name = "POLICY")]
        default_policy: Option<String>,
        /// Per-port default, `PORT=POLICY` (e.g. 8080=deny); repeatable.
        #[arg(long = "port", value_name = "PORT=POLICY")]
        ports: Vec<String>,
        /// Drop the per-port defaults before applying `--port`.
        #[arg(long)]
        clear_ports: bool,
        /// Start from what `up` wrote (the mesh file's policy).
        #[arg(long)]
        reset: bool,
    },
    /// Keeps pods' tokens fresh (started by `up` in the node namespace).
    #[command(hide = true)]
    NodeAgent {
        #[arg(long)]
        name: String,
    },
    /// The node agent of a Kubernetes-mode mesh (started by `up
    /// --kubernetes` in the node namespace).
    #[command(hide = true)]
    KubeAgent {
        #[arg(long)]
        name: String,
    },
    /// The host's way in to a Kubernetes-mode mesh's API server (started by
    /// `up --kubernetes`).
    #[command(hide = true)]
    KubeForward {
        #[arg(long)]
        name: String,
    },
    /// Restarts pods' processes and takes pods out of their services while
    /// they are down (started by `up` in the node namespace).
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        name: String,
    },
    /// Remove everything `up` made, and nothing else (the logs stay, in
    /// the place it prints, until the next `up` of the same name).
    Down {
        /// Which mesh (default: the only one).
        #[arg(long)]
        name: Option<String>,
    },
    /// The meshes that are up.
    List,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

pub fn run(args: MeshArgs) -> anyhow::Result<()> {
    match args.command {
        MeshCommand::Up {
            kubernetes: true,
            name,
            pod_cidr,
            chart,
            chart_sets,
            images,
            ..
        } => {
            let trellis = std::env::current_exe().context("finding the trellis binary")?;
            let opts = trellis_node::control_plane::UpOptions {
                mesh: name.clone(),
                pod_cidr,
                chart,
                chart_sets,
                images,
                trellis,
            };
            let interrupt = Interrupt::install(UNDO)?;
            let progress = Progress::new(&name);
            let up = trellis_node::control_plane::up(&opts, &progress, &interrupt)?;
            if !interrupt.finish() {
                progress.step("interrupted after the chart was installed; removing the mesh");
                trellis_node::control_plane::down(&name, &progress)?;
                return Err(Interrupted.into());
            }
            outln!(
                "mesh {name} is up: a one-node Kubernetes cluster at {}",
                up.server
            );
            outln!("  export KUBECONFIG={}", up.kubeconfig.display());
            outln!("  kubectl get pods -A");
            outln!("remove it with `trellis mesh down --name {name}`");
            Ok(())
        }
        MeshCommand::Up { file, timeout, .. } => {
            let file = file.context("--file is required")?;
            let checked = check::load(&file)?;
            let interrupt = Interrupt::install(UNDO)?;
            let opts = UpOptions {
                timeout,
                source: file.display().to_string(),
            };
            let mesh = Mesh::up(&checked, &opts, &interrupt)?;
            let name = mesh.name().to_string();
            let table = status::render(&mesh.status());
            // Ctrl-C while the status was read is still Ctrl-C during `up`.
            if !interrupt.finish() {
                mesh.progress()
                    .step("interrupted after every pod was ready; removing the mesh");
                mesh.down()?;
                return Err(Interrupted.into());
            }
            outln!("{table}");
            outln!("mesh {name} is up. Next: `trellis mesh status`, `trellis mesh exec POD -- CMD`, `trellis mesh down`");
            Ok(())
        }
        MeshCommand::Apply { file, timeout } => {
            let checked = check::load(&file)?;
            let interrupt = Interrupt::install(UNDO)?;
            let opts = ApplyOptions {
                timeout,
                source: file.display().to_string(),
            };
            let mesh = Mesh::apply(&checked, &opts, &interrupt)?;
            outln!("{}", status::render(&mesh.status()));
            outln!("mesh {} is at {}.", mesh.name(), file.display());
            Ok(())
        }
        MeshCommand::Status { name, output } => {
            if let Some(kube) = name
                .as_deref()
                .filter(|n| trellis_node::control_plane::exists(n))
            {
                bail!(
                    "mesh {kube} runs Kubernetes: its status is the API server's, e.g. `KUBECONFIG={} kubectl get pods -A`",
                    trellis_node::record::Record::kubeconfig_of(kube).display()
                );
            }
            let st = Mesh::open(name)?.status();
            match output {
                Output::Table => out!("{}", status::render(&st)),
                Output::Json => outln!("{}", serde_json::to_string_pretty(&st)?),
            }
            Ok(())
        }
        MeshCommand::Exec { name, pod, command } => {
            if let Some(kube) = name
                .as_deref()
                .filter(|n| trellis_node::control_plane::exists(n))
            {
                let err = trellis_node::control_plane::exec_command(kube, &pod, &command)?.exec();
                return Err(err).context("cannot run `ip netns exec …`");
            }
            let mesh = Mesh::open(name)?;
            let pod = mesh.find_pod(&pod)?;
            // Replace this process: stdio, signals and the exit code are the
            // command's own.
            let err = mesh.exec_command(pod, &command)?.exec();
            Err(err).with_context(|| format!("cannot run `ip netns exec {} …`", pod.netns))
        }
        MeshCommand::Policy {
            name,
            pod,
            default_policy,
            ports,
            clear_ports,
            reset,
        } => {
            let mut mesh = Mesh::open(name)?;
            let change = PolicyChange {
                default_policy,
                ports,
                clear_ports,
                reset,
            };
            let changed = mesh.change_policy(&pod, &change)?;
            if let Some(path) = &changed.written {
                errln!(
                    "wrote {}; the controller streams {}'s proxy its new policy",
                    path.display(),
                    changed.pod
                );
            }
            outln!("{}", serde_json::to_string_pretty(&changed.policy)?);
            Ok(())
        }
        MeshCommand::NodeAgent { name } => trellis_mesh::agent::run(&name),
        MeshCommand::KubeAgent { name } => trellis_node::agent::run(&name),
        MeshCommand::KubeForward { name } => trellis_node::forward::run(&name),
        MeshCommand::Supervise { name } => trellis_mesh::supervise::run(&name),
        MeshCommand::Down { name } => {
            let name = match name {
                Some(n) => n,
                None => match state::list_meshes()?.as_slice() {
                    [] => {
                        errln!("no local mesh is up; nothing to do");
                        return Ok(());
                    }
                    [one] => one.clone(),
                    many => bail!(
                        "several meshes are up: {}; say which with `trellis mesh down --name NAME`",
                        many.join(", ")
                    ),
                },
            };
            // A signal does not stop `down`: it finishes the teardown (its
            // commands and the mesh's processes are in process groups of
            // their own, out of the terminal's reach). A third signal
            // abandons it; the next `down` then finishes it.
            let _interrupt = Interrupt::install("finishing the teardown first")?;
            if trellis_node::control_plane::exists(&name) {
                return trellis_node::control_plane::down(&name, &Progress::new(&name));
            }
            match trellis_mesh::down_by_name(&name, &Progress::new(&name))? {
                Down::Removed => {}
                Down::NotUp { strays } => {
                    errln!("mesh {name:?} is not up; nothing to do");
                    if !strays.is_empty() {
                        errln!(
                            "note: these network namespaces match its prefix but no state records them, so they were left alone: {}",
                            strays.join(", ")
                        );
                    }
                }
            }
            Ok(())
        }
        MeshCommand::List => {
            let meshes = trellis_mesh::list()?;
            if meshes.is_empty() {
                errln!("no local mesh is up");
            }
            let rows: Vec<Vec<String>> = meshes
                .into_iter()
                .map(|m| match m.summary {
                    _ if trellis_node::control_plane::exists(&m.name) => vec![
                        m.name.clone(),
                        "up".into(),
                        "-".into(),
                        format!(
                            "--kubernetes (KUBECONFIG={})",
                            trellis_node::record::Record::kubeconfig_of(&m.name).display()
                        ),
                    ],
                    Ok(s) => vec![m.name, s.phase.to_string(), s.pods.to_string(), s.source],
                    Err(e) => vec![m.name, format!("unreadable: {e}"), "-".into(), "-".into()],
                })
                .collect();
            if !rows.is_empty() {
                out!(
                    "{}",
                    table::render(&["MESH", "PHASE", "PODS", "SOURCE"], &rows)
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    // Test code: a panic is how a test fails.
    #![allow(clippy::unwrap_used)]

    /// README names every `trellis mesh` subcommand clap knows (hidden ones,
    /// such as the node agent `up` starts, aside).
    #[test]
    fn readme_names_every_mesh_subcommand() {
        use clap::Subcommand as _;
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
        )
        .unwrap();
        // README wraps lines: compare with runs of whitespace as one space.
        let readme = readme.split_whitespace().collect::<Vec<_>>().join(" ");
        let mesh = super::MeshCommand::augment_subcommands(clap::Command::new("mesh"));
        let names: Vec<&str> = mesh
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| c.get_name())
            .collect();
        assert!(names.len() >= 7, "{names:?}");
        for name in names {
            assert!(
                readme.contains(&format!("`trellis mesh {name}")),
                "README does not name `trellis mesh {name}`"
            );
        }
    }
}
