//! `trellis mesh up --kubernetes` and its `down`: a one-node Kubernetes
//! cluster on this host, with Trellis installed by its own chart.
//!
//! Everything runs in the mesh's node namespace (`trls-<mesh>-node`, whose
//! bridge holds the pod CIDR's first address): etcd, kube-apiserver
//! (advertising the bridge address, so the `kubernetes` Service reaches it
//! from pods), kube-controller-manager, and the node agent. The host gets
//! one process in its own namespace, [`crate::forward`], so the user's
//! `kubectl` reaches the API server on `127.0.0.1`.
//!
//! The Kubernetes programs are the ones `scripts/build-kube.sh` builds and
//! caches; helm is `scripts/install-chart-tools.sh`'s.

use std::fs::File;
use std::net::IpAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use trellis_mesh::interrupt::Interrupt;
use trellis_mesh::progress::Progress;
use trellis_mesh::{names, sys};

use crate::network::{self, PodCidr};
use crate::pki::Pki;
use crate::record::{self, Record, Started, API_CLUSTER_IP, API_PORT, ETCD_PORTS, SERVICE_CIDR};

/// The chart's namespace and release.
pub const CHART_NAMESPACE: &str = "trellis-system";
pub const RELEASE: &str = "trellis";
/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = names::CLUSTER_DOMAIN;

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const CHART_TIMEOUT: &str = "5m";
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What `up --kubernetes` is told.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub mesh: String,
    pub pod_cidr: PodCidr,
    /// `charts/trellis`.
    pub chart: PathBuf,
    /// Extra `helm --set` values.
    pub chart_sets: Vec<String>,
    /// More image mappings (see [`crate::images`]).
    pub images: Option<PathBuf>,
    /// The `trellis` binary: it runs the agent and the forwarder, and the
    /// other Trellis binaries are its siblings.
    pub trellis: PathBuf,
}

/// The Kubernetes programs.
#[derive(Clone, Debug)]
pub struct KubeBins {
    pub etcd: PathBuf,
    pub apiserver: PathBuf,
    pub controller_manager: PathBuf,
    pub kubectl: PathBuf,
    pub gateway_crds: PathBuf,
    pub helm: PathBuf,
}

impl KubeBins {
    /// From `$TRELLIS_CACHE/kube/env` (written by `scripts/build-kube.sh`)
    /// or the variables it honours, and helm from `$TRELLIS_CACHE/tools/bin`.
    pub fn locate() -> anyhow::Result<KubeBins> {
        let cache = std::env::var("TRELLIS_CACHE").unwrap_or_else(|_| "/var/cache/trellis".into());
        let recorded =
            std::fs::read_to_string(Path::new(&cache).join("kube/env")).unwrap_or_default();
        let get = |key: &str| -> anyhow::Result<PathBuf> {
            let value = std::env::var(key).ok().or_else(|| {
                recorded
                    .lines()
                    .find_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
            });
            let Some(v) = value else {
                bail!(
                    "the Kubernetes programs are not built: run `bash scripts/build-kube.sh` \
                     (about 15 minutes the first time; cached in {cache}/kube), or set {key}"
                );
            };
            let p = PathBuf::from(v);
            if !p.exists() {
                bail!(
                    "{} ({key}) is missing: run `bash scripts/build-kube.sh`",
                    p.display()
                );
            }
            Ok(p)
        };
        let helm = std::env::var("TRELLIS_HELM")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(&cache).join("tools/bin/helm"));
        if !helm.is_file() {
            bail!(
                "helm is missing at {}: run `bash scripts/install-chart-tools.sh`, or set TRELLIS_HELM",
                helm.display()
            );
        }
        Ok(KubeBins {
            etcd: get("TRELLIS_ETCD")?,
            apiserver: get("TRELLIS_KUBE_APISERVER")?,
            controller_manager: get("TRELLIS_KUBE_CONTROLLER_MANAGER")?,
            kubectl: get("TRELLIS_KUBECTL")?,
            gateway_crds: get("TRELLIS_GATEWAY_API_CRDS")?,
            helm,
        })
    }
}

/// What `up` made: the user's kubeconfig and the API server's address.
#[derive(Debug)]
pub struct Up {
    pub kubeconfig: PathBuf,
    pub server: String,
}

/// Starts the cluster, the agent and the chart. On failure, or on Ctrl-C
/// or SIGTERM (`interrupt`), everything made so far is removed again (the
/// logs are kept and named in the error).
pub fn up(opts: &UpOptions, progress: &Progress, interrupt: &Interrupt) -> anyhow::Result<Up> {
    preflight(opts)?;
    let bins = match KubeBins::locate() {
        Ok(bins) => bins,
        Err(missing) => {
            build_kube(opts, progress).map_err(|e| e.context(format!("{missing:#}")))?;
            KubeBins::locate()?
        }
    };
    let dir = Record::dir(&opts.mesh);
    if dir.exists() || Record::data_dir(&opts.mesh).exists() {
        bail!(
            "a mesh named {:?} exists already (`trellis mesh down --name {}` removes it)",
            opts.mesh,
            opts.mesh
        );
    }
    sys::create_dir_mode(&dir, 0o700)?;
    let cidr = opts.pod_cidr;
    let mut record = Record {
        mesh: opts.mesh.clone(),
        node: format!("{}-node", opts.mesh),
        node_netns: names::node_netns_name(&opts.mesh),
        pod_cidr: cidr.to_string(),
        gateway: cidr.gateway(),
        prefix_len: cidr.prefix_len,
        processes: Vec::new(),
        forward_port: None,
        created_etc_netns: !Path::new(sys::ETC_NETNS_DIR).exists(),
    };
    record.save()?;
    match bring_up(opts, &bins, &mut record, progress, interrupt) {
        Ok(up) => Ok(up),
        Err(e) => {
            let logs = record.logs_dir();
            let kept = std::env::temp_dir().join(format!("trellis-{}-failed-logs", opts.mesh));
            let _ = std::fs::remove_dir_all(&kept);
            let copied = copy_dir(&logs, &kept).is_ok();
            progress.step("up failed: removing what was made");
            if let Err(down) = down(&opts.mesh, progress) {
                progress.step(&format!("cleaning up also failed: {down:#}"));
            }
            if copied {
                Err(e.context(format!("the logs are in {}", kept.display())))
            } else {
                Err(e)
            }
        }
    }
}

/// Builds what is missing with the repository's own scripts (the chart's
/// repository: `<repo>/charts/trellis`): the Kubernetes programs, then helm.
/// Their output goes to the terminal; both cache what they build.
fn build_kube(opts: &UpOptions, progress: &Progress) -> anyhow::Result<()> {
    let chart = std::fs::canonicalize(&opts.chart)?;
    let repo = chart
        .parent()
        .and_then(Path::parent)
        .context("the chart is not in a Trellis checkout")?;
    for (script, what) in [
        (
            "scripts/build-kube.sh",
            "etcd, kube-apiserver, kube-controller-manager and kubectl (about 15 minutes on 2 cores the first time)",
        ),
        ("scripts/install-chart-tools.sh", "helm"),
    ] {
        let path = repo.join(script);
        if !path.is_file() {
            bail!("{} is missing, so the Kubernetes programs cannot be built", path.display());
        }
        progress.step(&format!("building {what} with {script}; cached for later runs"));
        let status = Command::new("bash")
            .arg(&path)
            .current_dir(repo)
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("running {script}"))?;
        if !status.success() {
            bail!("{script} failed ({status})");
        }
    }
    Ok(())
}

fn preflight(opts: &UpOptions) -> anyhow::Result<()> {
    if !sys::is_root() {
        bail!("`mesh up --kubernetes` needs root (network namespaces, iptables, mounts)");
    }
    for tool in [
        "ip",
        "iptables-restore",
        "iptables-save",
        "setpriv",
        "mount",
        "sh",
    ] {
        if sys::which(tool).is_none() {
            bail!("{tool} is not on PATH (Debian: iproute2, iptables, util-linux, mount)");
        }
    }
    names::check_label(&opts.mesh, 20).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    network::check_cidr(opts.pod_cidr)?;
    if !opts.chart.join("Chart.yaml").is_file() {
        bail!(
            "no chart at {} (run from the repository's root, or pass --chart)",
            opts.chart.display()
        );
    }
    if let Some(images) = &opts.images {
        let text = std::fs::read_to_string(images)
            .with_context(|| format!("reading {}", images.display()))?;
        crate::images::ImageMap::builtin(Path::new("/"))
            .extend_from_yaml(&text)
            .with_context(|| format!("{}", images.display()))?;
    }
    Ok(())
}

fn bring_up(
    opts: &UpOptions,
    bins: &KubeBins,
    record: &mut Record,
    progress: &Progress,
    interrupt: &Interrupt,
) -> anyhow::Result<Up> {
    sys::create_dir_mode(&record.logs_dir(), 0o755)?;
    if let Some(images) = &opts.images {
        std::fs::copy(images, record.images_file())
            .with_context(|| format!("copying {}", images.display()))?;
    }
    if record.created_etc_netns {
        std::fs::create_dir_all(sys::ETC_NETNS_DIR)?;
    }
    interrupt.check()?;
    network::make_node(&record.node_netns, opts.pod_cidr)?;
    progress.step(&format!(
        "node namespace {}: bridge {} {}/{}",
        record.node_netns,
        names::BRIDGE,
        record.gateway,
        record.prefix_len
    ));

    let addresses: Vec<IpAddr> = vec![
        record.gateway.into(),
        API_CLUSTER_IP.into(),
        IpAddr::from([127, 0, 0, 1]),
    ];
    let pki = Pki::make(&record.pki_dir(), &addresses, CLUSTER_DOMAIN)?;
    let node_server = format!("https://127.0.0.1:{API_PORT}");
    sys::write_file_atomic(
        &record.node_kubeconfig(),
        pki.admin_kubeconfig(&node_server, &opts.mesh)?.as_bytes(),
        0o600,
        None,
    )?;

    start_in_node(record, "etcd", etcd_command(bins, record))?;

    start_in_node(
        record,
        "kube-apiserver",
        apiserver_command(bins, record, &pki),
    )?;

    start_forwarder(opts, record)?;
    let port = record.forward_port.context("the forwarder gave no port")?;
    let server = format!("https://127.0.0.1:{port}");
    sys::write_file_atomic(
        &record.kubeconfig(),
        pki.admin_kubeconfig(&server, &opts.mesh)?.as_bytes(),
        0o600,
        None,
    )?;
    let kubectl = Kubectl {
        bin: bins.kubectl.clone(),
        kubeconfig: record.kubeconfig(),
    };
    wait(
        record,
        interrupt,
        "the API server to be ready",
        READY_TIMEOUT,
        || kubectl.ok(&["get", "--raw", "/readyz"]),
    )?;
    progress.step(&format!(
        "etcd and kube-apiserver ready ({server} from the host)"
    ));

    start_in_node(
        record,
        "kube-controller-manager",
        controller_manager_command(bins, record, &pki),
    )?;
    wait(
        record,
        interrupt,
        "kube-controller-manager to make the default ServiceAccount",
        READY_TIMEOUT,
        || kubectl.ok(&["get", "serviceaccount", "default", "-n", "default"]),
    )?;
    progress.step("kube-controller-manager running");

    // Not through `ip netns exec`: the agent joins the node's network
    // namespace itself and stays in the host's mount namespace, so the pod
    // namespaces it names (`ip netns add` mounts them) are the host's too.
    let mut agent = Command::new(&opts.trellis);
    agent.args(["mesh", "kube-agent", "--name", &opts.mesh]);
    start(record, "node-agent", agent)?;
    let node = record.node.clone();
    wait(
        record,
        interrupt,
        "the node agent to register a Ready node",
        READY_TIMEOUT,
        || {
            kubectl
                .output(&[
                    "get",
                    "node",
                    &node,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ])
                .is_some_and(|s| s.trim() == "True")
        },
    )?;
    progress.step(&format!("node agent running: node {node} Ready"));

    kubectl.run(&[
        "apply",
        "--server-side",
        "-f",
        &bins.gateway_crds.display().to_string(),
    ])?;
    progress.step("Gateway API CRDs applied");

    interrupt.check()?;
    install_chart(opts, bins, record, &kubectl, progress)?;
    Ok(Up {
        kubeconfig: record.kubeconfig(),
        server,
    })
}

/// etcd on the node namespace's loopback, its data in the state directory.
fn etcd_command(bins: &KubeBins, record: &Record) -> Command {
    let dir = Record::dir(&record.mesh);
    let (etcd_client, etcd_peer) = ETCD_PORTS;
    let mut etcd = Command::new(&bins.etcd);
    etcd.args(["--name", "trellis", "--log-level", "warn"])
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!(
            "--listen-client-urls=http://127.0.0.1:{etcd_client}"
        ))
        .arg(format!(
            "--advertise-client-urls=http://127.0.0.1:{etcd_client}"
        ))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"
        ))
        .arg(format!(
            "--initial-cluster=trellis=http://127.0.0.1:{etcd_peer}"
        ))
        .arg("--listen-metrics-urls=");
    etcd
}

/// kube-apiserver on every address of the node namespace, advertising the
/// bridge address (the `kubernetes` Service's endpoint).
fn apiserver_command(bins: &KubeBins, record: &Record, pki: &Pki) -> Command {
    let dir = Record::dir(&record.mesh);
    let (etcd_client, _) = ETCD_PORTS;
    let issuer = format!("https://kubernetes.default.svc.{CLUSTER_DOMAIN}");
    let mut api = Command::new(&bins.apiserver);
    api.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_client}"))
        .arg("--bind-address=0.0.0.0")
        .arg(format!("--secure-port={API_PORT}"))
        .arg(format!("--advertise-address={}", record.gateway))
        .arg(format!("--cert-dir={}", dir.join("apiserver-certs").display()))
        .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
        .arg(format!("--tls-private-key-file={}", pki.serving_key.display()))
        .arg(format!("--client-ca-file={}", pki.ca.display()))
        .arg(format!("--service-account-key-file={}", pki.sa_public.display()))
        .arg(format!(
            "--service-account-signing-key-file={}",
            pki.sa_private.display()
        ))
        .arg(format!("--service-account-issuer={issuer}"))
        .arg(format!("--api-audiences={issuer}"))
        .arg("--authorization-mode=RBAC")
        .arg("--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook,PodSecurity")
        // Webhooks are called at their Service's endpoints: the API server
        // runs in the node namespace, which reaches pods over the bridge.
        .arg("--enable-aggregator-routing=true")
        .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
        .arg("--allow-privileged=true")
        .arg("--profiling=false")
        .arg("--v=1");
    api
}

/// kube-controller-manager, as the admin, with the ServiceAccount key.
fn controller_manager_command(bins: &KubeBins, record: &Record, pki: &Pki) -> Command {
    let node_kubeconfig = record.node_kubeconfig();
    let mut kcm = Command::new(&bins.controller_manager);
    kcm.arg(format!("--kubeconfig={}", node_kubeconfig.display()))
        .arg(format!(
            "--authentication-kubeconfig={}",
            node_kubeconfig.display()
        ))
        .arg(format!(
            "--authorization-kubeconfig={}",
            node_kubeconfig.display()
        ))
        .arg("--bind-address=127.0.0.1")
        .arg("--secure-port=10257")
        .arg("--leader-elect=false")
        .arg(format!("--root-ca-file={}", pki.ca.display()))
        .arg(format!(
            "--service-account-private-key-file={}",
            pki.sa_private.display()
        ))
        .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
        .arg("--use-service-account-credentials=true")
        .arg("--v=1");
    kcm
}

/// `helm upgrade --install` of the chart, waiting for its pods.
fn install_chart(
    opts: &UpOptions,
    bins: &KubeBins,
    record: &Record,
    kubectl: &Kubectl,
    progress: &Progress,
) -> anyhow::Result<()> {
    let mut helm = Command::new(&bins.helm);
    helm.arg(format!("--kubeconfig={}", record.kubeconfig().display()))
        .args(["upgrade", "--install", RELEASE])
        .arg(&opts.chart)
        .args(["--namespace", CHART_NAMESPACE, "--create-namespace"])
        .args(["--wait", "--timeout", CHART_TIMEOUT]);
    for s in &opts.chart_sets {
        helm.args(["--set", s]);
    }
    progress.step(&format!(
        "installing {} with helm (its pods run on the node agent; up to {CHART_TIMEOUT})",
        opts.chart.display()
    ));
    let log = record.logs_dir().join("helm.log");
    let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let status = helm
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .context("running helm")?;
    if !status.success() {
        bail!(
            "helm install failed ({status}):\n{}\npods:\n{}",
            sys::tail(&log, 20),
            kubectl
                .output(&["get", "pods", "-A", "-o", "wide"])
                .unwrap_or_default()
        );
    }
    progress.step(&format!(
        "chart installed in {CHART_NAMESPACE}; every pod Ready"
    ));
    Ok(())
}

/// Starts `cmd` in the node namespace, in a process group and session of
/// its own, its output in `logs/<role>.log`; recorded before `up` waits on
/// anything.
fn start_in_node(record: &mut Record, role: &str, cmd: Command) -> anyhow::Result<()> {
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", &record.node_netns])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    start(record, role, wrapped)
}

fn start(record: &mut Record, role: &str, mut cmd: Command) -> anyhow::Result<()> {
    let log = record.logs_dir().join(format!("{role}.log"));
    let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {role}"))?;
    let pid = child.id();
    // Reaped by whoever outlives it (init): `up` returns while it runs.
    drop(child);
    record.processes.push(Started {
        role: role.into(),
        pid,
        start_time: sys::start_time(pid),
        log,
    });
    record.save()
}

fn start_forwarder(opts: &UpOptions, record: &mut Record) -> anyhow::Result<()> {
    let mut fwd = Command::new(&opts.trellis);
    fwd.args(["mesh", "kube-forward", "--name", &opts.mesh]);
    start(record, "forward", fwd)?;
    let file = Record::dir(&opts.mesh).join("forward.port");
    let port = sys::poll_until(
        Instant::now() + Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            std::fs::read_to_string(&file)
                .ok()?
                .trim()
                .parse::<u16>()
                .ok()
        },
    )
    .context("the host-side forwarder did not start (see logs/forward.log)")?;
    record.forward_port = Some(port);
    record.save()
}

/// Waits for `ready`, failing early when a recorded process exited.
fn wait(
    record: &Record,
    interrupt: &Interrupt,
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        interrupt.check()?;
        if ready() {
            return Ok(());
        }
        if let Some(dead) = record
            .processes
            .iter()
            .find(|p| !sys::is_alive(p.pid, p.start_time))
        {
            bail!(
                "{} exited while waiting for {what}; its log ({}):\n{}",
                dead.role,
                dead.log.display(),
                sys::tail(&dead.log, 25)
            );
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        interrupt.sleep(Duration::from_millis(250));
    }
}

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--request-timeout=10s")
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn ok(&self, args: &[&str]) -> bool {
        self.command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn output(&self, args: &[&str]) -> Option<String> {
        let out = self.command(args).stderr(Stdio::null()).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = self.command(args).output().context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// Is `mesh` a Kubernetes-mode mesh?
pub fn exists(mesh: &str) -> bool {
    Record::exists(mesh)
}

/// Removes everything `up` and the agent made: the agent first (so it
/// starts nothing more), then every process in the mesh's namespaces, then
/// the control plane and the forwarder, the namespaces, their `/etc/netns`
/// directories, the mount points the agent created, and the state
/// directory. Idempotent; what it cannot remove is reported, not hidden.
pub fn down(mesh: &str, progress: &Progress) -> anyhow::Result<()> {
    let record = Record::load(mesh)?;
    let mut problems: Vec<String> = Vec::new();
    for p in record.processes.iter().filter(|p| p.role == "node-agent") {
        stop(p);
    }
    let prefix = names::netns_prefix(mesh);
    let pods: Vec<String> = sys::netns_with_prefix(&prefix)
        .into_iter()
        .filter(|n| *n != record.node_netns)
        .collect();
    let mut pids: Vec<u32> = pods.iter().flat_map(|n| sys::pids_in_netns(n)).collect();
    for pid in &pids {
        sys::signal(*pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while !pids.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        pids.retain(|p| sys::is_alive(*p, None));
    }
    for pid in &pids {
        sys::signal(*pid, Signal::SIGKILL);
    }
    progress.step(&format!("stopped the processes of {} pod(s)", pods.len()));
    for p in record.processes.iter().rev() {
        stop(p);
    }
    let node_pids = sys::pids_in_netns(&record.node_netns);
    for pid in node_pids {
        sys::signal(pid, Signal::SIGKILL);
    }
    progress.step("stopped the control plane, the agent and the forwarder");
    for netns in pods.iter().chain(std::iter::once(&record.node_netns)) {
        if let Err(e) = network::remove_pod(netns) {
            problems.push(format!("{e:#}"));
        }
    }
    // `/etc/netns` directories of pods whose namespace is already gone.
    if let Ok(entries) = std::fs::read_dir(sys::ETC_NETNS_DIR) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    problems.push(format!("removing {}: {err}", e.path().display()));
                }
            }
        }
    }
    let mut mountpoints = record::mountpoints(mesh);
    mountpoints.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mountpoints.dedup();
    for dir in mountpoints {
        // Only if empty: it was made empty, as a mount point.
        let _ = std::fs::remove_dir(&dir);
    }
    if record.created_etc_netns {
        let _ = std::fs::remove_dir(sys::ETC_NETNS_DIR);
    }
    progress.step(&format!("removed {} namespace(s)", pods.len() + 1));
    for dir in [Record::data_dir(mesh), Record::dir(mesh)] {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                problems.push(format!("removing {}: {e}", dir.display()));
            }
        }
    }
    // Their parents, if this was the last mesh.
    for dir in [record::DATA_ROOT, "/var/lib/trellis"] {
        let _ = std::fs::remove_dir(dir);
    }
    if !problems.is_empty() {
        bail!("down left things behind:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

/// SIGTERM to its group, SIGKILL after [`STOP_GRACE`].
fn stop(p: &Started) {
    if !sys::is_alive(p.pid, p.start_time) {
        return;
    }
    sys::signal_group(p.pid, Signal::SIGTERM);
    let gone = sys::poll_until(
        Instant::now() + STOP_GRACE,
        Duration::from_millis(20),
        || (!sys::is_alive(p.pid, p.start_time)).then_some(()),
    );
    if gone.is_none() {
        sys::signal_group(p.pid, Signal::SIGKILL);
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// `trellis mesh exec --name MESH NAMESPACE/POD -- CMD…` in a Kubernetes-mode
/// mesh: the command in the pod's network namespace (and its `/etc/hosts`),
/// as root, where `kubectl exec` would run it in the pod's container. Its
/// traffic is captured by the pod's proxy like the application's.
pub fn exec_command(mesh: &str, pod: &str, command: &[String]) -> anyhow::Result<Command> {
    let record = Record::load(mesh)?;
    let (ns, name) = pod.split_once('/').unwrap_or(("default", pod));
    let bins = KubeBins::locate()?;
    let kubectl = Kubectl {
        bin: bins.kubectl,
        kubeconfig: record.kubeconfig(),
    };
    let uid = kubectl
        .output(&[
            "get",
            "pod",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .filter(|u| !u.trim().is_empty())
        .with_context(|| format!("no pod {ns}/{name} in mesh {mesh}"))?;
    let netns = network::pod_netns(mesh, uid.trim());
    if !sys::netns_exists(&netns) {
        bail!("pod {ns}/{name} has no network namespace on this node yet");
    }
    let Some((program, args)) = command.split_first() else {
        bail!("no command given");
    };
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &netns]).arg(program).args(args);
    Ok(cmd)
}
