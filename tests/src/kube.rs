//! The integration tier's real Kubernetes: etcd, kube-apiserver and
//! kube-controller-manager (built by `scripts/build-kube.sh`) on free
//! loopback ports, with TLS, RBAC, a service-account issuer and an admin
//! kubeconfig; `kubectl` and `helm` against it; kubeconfigs for
//! ServiceAccounts from TokenRequest; and [`Cluster::run_container`], a
//! stand-in kubelet that runs a stored Deployment's container as a local
//! process with the pod's own environment and volumes.
//!
//! Every process a cluster starts dies with the test process (they are
//! spawned with `PR_SET_PDEATHSIG` from one long-lived thread), so a
//! cluster shared by the tests of one binary ([`Cluster::shared`]) needs no
//! teardown, and a panicking test leaves nothing running.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair,
};
use serde_json::Value;

use crate::{eventually, repo, unique};

/// The programs the tier runs, from `scripts/build-kube.sh`.
#[derive(Clone, Debug)]
pub struct KubeBins {
    pub version: String,
    pub etcd: PathBuf,
    pub apiserver: PathBuf,
    pub controller_manager: PathBuf,
    pub kubectl: PathBuf,
    /// The Gateway API's standard CRDs (one file per CRD).
    pub gateway_crds: PathBuf,
    pub helm: PathBuf,
}

impl KubeBins {
    /// From the variables `scripts/build-kube.sh` honours, else from the
    /// paths it recorded in `$TRELLIS_CACHE/kube/env`. Fails the test,
    /// saying what to run, when they are missing.
    pub fn locate() -> KubeBins {
        let cache = std::env::var("TRELLIS_CACHE").unwrap_or_else(|_| "/var/cache/trellis".into());
        let recorded =
            std::fs::read_to_string(Path::new(&cache).join("kube/env")).unwrap_or_default();
        let get = |key: &str| -> String {
            if let Ok(v) = std::env::var(key) {
                return v;
            }
            recorded
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
                .unwrap_or_else(|| {
                    panic!(
                        "the Kubernetes tier needs {key}: run `bash scripts/build-kube.sh` \
                         (scripts/test.sh does), or set {key}"
                    )
                })
        };
        let tools =
            std::env::var("TRELLIS_TOOLS_BIN").unwrap_or_else(|_| format!("{cache}/tools/bin"));
        let bins = KubeBins {
            version: get("TRELLIS_KUBE_VERSION"),
            etcd: get("TRELLIS_ETCD").into(),
            apiserver: get("TRELLIS_KUBE_APISERVER").into(),
            controller_manager: get("TRELLIS_KUBE_CONTROLLER_MANAGER").into(),
            kubectl: get("TRELLIS_KUBECTL").into(),
            gateway_crds: get("TRELLIS_GATEWAY_API_CRDS").into(),
            helm: std::env::var("TRELLIS_HELM")
                .map(PathBuf::from)
                .unwrap_or_else(|_| Path::new(&tools).join("helm")),
        };
        for p in [
            &bins.etcd,
            &bins.apiserver,
            &bins.controller_manager,
            &bins.kubectl,
            &bins.helm,
        ] {
            assert!(
                p.exists(),
                "{} is missing: run `bash scripts/build-kube.sh` and `bash scripts/install-chart-tools.sh`",
                p.display()
            );
        }
        bins
    }
}

// --- processes tied to the test process -------------------------------------

/// What to start: `cmd`'s program, arguments and environment (the whole
/// environment when `clean_env`), its output into `log`.
struct Launch {
    cmd: Command,
    clean_env: bool,
    log: PathBuf,
}

type SpawnRequest = (Launch, mpsc::Sender<std::io::Result<Child>>);

/// Spawns a process that is killed when the test process exits: it runs
/// under `setpriv --pdeathsig KILL` (util-linux), so it gets SIGKILL when
/// its parent *thread* dies, and every child is spawned from one thread
/// that lives as long as the process.
fn spawn_tied(launch: Launch) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("kube-spawner".into())
            .spawn(move || {
                for (launch, reply) in rx {
                    let _ = reply.send(spawn_here(launch));
                }
            })
            .unwrap();
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock().unwrap().send((launch, reply_tx)).unwrap();
    reply_rx.recv().unwrap()
}

fn spawn_here(launch: Launch) -> std::io::Result<Child> {
    let Launch {
        cmd,
        clean_env,
        log,
    } = launch;
    let mut tied = Command::new("setpriv");
    tied.args(["--pdeathsig", "KILL", "--"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if clean_env {
        tied.env_clear();
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => tied.env(k, v),
            None => tied.env_remove(k),
        };
    }
    let file = std::fs::File::create(&log)?;
    tied.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    tied.spawn()
}

/// A process a test started: its output goes to `log`; dropping it kills it.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
    /// Local addresses that replaced the pod's listen addresses, by the
    /// container port's name (see [`Cluster::run_container`]).
    pub ports: BTreeMap<String, SocketAddr>,
}

impl Proc {
    /// Starts `cmd` (program, arguments, environment) with stdout and
    /// stderr in `log`.
    pub fn start(name: &str, cmd: Command, log: PathBuf) -> Proc {
        Proc::launch(name, cmd, false, log)
    }

    /// As [`Proc::start`], with only the environment `cmd` sets.
    pub fn start_clean(name: &str, cmd: Command, log: PathBuf) -> Proc {
        Proc::launch(name, cmd, true, log)
    }

    fn launch(name: &str, cmd: Command, clean_env: bool, log: PathBuf) -> Proc {
        let child = spawn_tied(Launch {
            cmd,
            clean_env,
            log: log.clone(),
        })
        .unwrap_or_else(|e| panic!("cannot start {name} (needs setpriv from util-linux): {e}"));
        Proc {
            name: name.into(),
            log,
            child,
            ports: BTreeMap::new(),
        }
    }

    /// What it has written so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The local address of the container port `name`.
    pub fn port(&self, name: &str) -> SocketAddr {
        *self
            .ports
            .get(name)
            .unwrap_or_else(|| panic!("{} has no port {name:?} (has {:?})", self.name, self.ports))
    }

    /// SIGTERM, then SIGKILL after 10 s; returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on `addr` (HTTP/1.1, plaintext, 5 s timeout): the status
/// and body, or `None` when nothing answered.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A port that was free on 127.0.0.1 a moment ago (the OS's choice, never
/// a fixed one), and never one this process was given before: the OS may
/// hand a just-released port out again, and two listeners of one process
/// (a proxy's inbound and outbound) must not get the same. A process that
/// then fails to bind it is retried by [`Cluster::start`].
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

// --- certificates ---------------------------------------------------------------

/// The cluster's CA: it signs the API server's serving certificate and the
/// admin's client certificate, and tests may sign more with it.
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = dn("trellis-test-kubernetes-ca", None);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A certificate and key (PEM) for `cn` in `org`, valid for `sans`.
    pub fn issue(
        &self,
        cn: &str,
        org: Option<&str>,
        sans: &[&str],
        server: bool,
    ) -> (String, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name = dn(cn, org);
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

// --- the cluster -------------------------------------------------------------------

/// A running API server (and its etcd and controller manager).
pub struct Cluster {
    pub bins: KubeBins,
    pub dir: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// The admin's kubeconfig (`system:masters`).
    pub admin: PathBuf,
    pub ca: Ca,
    procs: Mutex<Vec<Proc>>,
}

/// The audience the identity service expects of workload tokens (SPEC).
pub const IDENTITY_AUDIENCE: &str = "identity.trellis.dev";

impl Cluster {
    /// One cluster for all the tests of this test binary, started by the
    /// first that asks. Tests sharing it work in namespaces of their own.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(Cluster::start)
    }

    /// Starts etcd, kube-apiserver and kube-controller-manager and waits
    /// until the API server is ready and has its default ServiceAccount.
    pub fn start() -> Cluster {
        let bins = KubeBins::locate();
        let root = std::env::temp_dir().join("trellis-kube");
        remove_stale(&root);
        let started = Instant::now();
        let mut last = String::new();
        // Ports are the OS's choice; another process may take one between
        // the choice and the bind, so a failed start is retried (in a
        // directory of its own: a failed attempt's logs are kept).
        for _attempt in 0..3 {
            let dir = root.join(format!("{}-{}", std::process::id(), unique("c")));
            std::fs::create_dir_all(&dir).unwrap();
            match Cluster::try_start(bins.clone(), dir) {
                Ok(c) => {
                    eprintln!(
                        "[kube] cluster {} ({}) ready in {:.1} s",
                        c.server,
                        c.bins.version,
                        started.elapsed().as_secs_f64()
                    );
                    return c;
                }
                Err(e) => last = e,
            }
        }
        panic!("the test cluster did not start:\n{last}");
    }

    fn try_start(bins: KubeBins, dir: PathBuf) -> Result<Cluster, String> {
        let ca = Ca::new();
        let write = |name: &str, content: &str| {
            let p = dir.join(name);
            std::fs::write(&p, content).unwrap();
            p
        };
        let ca_file = write("ca.crt", &ca.cert_pem);
        let (serving, serving_key) = ca.issue(
            "kube-apiserver",
            None,
            &["127.0.0.1", "localhost", "kubernetes.default.svc"],
            true,
        );
        let serving = write("apiserver.crt", &serving);
        let serving_key = write("apiserver.key", &serving_key);
        let (admin_crt, admin_key) =
            ca.issue("trellis-test-admin", Some("system:masters"), &[], false);
        let admin_crt = write("admin.crt", &admin_crt);
        let admin_key = write("admin.key", &admin_key);
        let sa_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let sa_private = write("sa.key", &sa_key.serialize_pem());
        let sa_public = write("sa.pub", &sa_key.public_key_pem());

        let etcd_client = free_port();
        let etcd_peer = free_port();
        let api_port = free_port();
        let server = format!("https://127.0.0.1:{api_port}");

        let mut procs = Vec::new();
        let mut etcd = Command::new(&bins.etcd);
        etcd.args([
            "--name",
            "trellis-test",
            "--log-level",
            "warn",
            "--unsafe-no-fsync",
        ])
        .arg("--data-dir")
        .arg(dir.join("etcd"))
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
            "--initial-cluster=trellis-test=http://127.0.0.1:{etcd_peer}"
        ));
        procs.push(Proc::start("etcd", etcd, dir.join("etcd.log")));

        let mut api = Command::new(&bins.apiserver);
        api.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_client}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={api_port}"))
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--cert-dir={}", dir.join("certs").display()))
            .arg(format!("--tls-cert-file={}", serving.display()))
            .arg(format!("--tls-private-key-file={}", serving_key.display()))
            .arg(format!("--client-ca-file={}", ca_file.display()))
            .arg(format!("--service-account-key-file={}", sa_public.display()))
            .arg(format!("--service-account-signing-key-file={}", sa_private.display()))
            .arg(format!("--service-account-issuer={server}"))
            .arg(format!("--api-audiences={server}"))
            .arg("--authorization-mode=RBAC")
            .arg("--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook,PodSecurity")
            // Webhooks and aggregated APIs are called at the endpoints of
            // their Service (or by URL), not through a cluster IP.
            .arg("--enable-aggregator-routing=true")
            // Nothing is ever sent to this range: it only makes ClusterIPs.
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            // The default reconciler refuses a loopback advertise address.
            .arg("--endpoint-reconciler-type=none")
            .arg("--allow-privileged=true")
            .arg("--profiling=false")
            .arg("--v=1");
        procs.push(Proc::start(
            "kube-apiserver",
            api,
            dir.join("kube-apiserver.log"),
        ));

        let admin = dir.join("admin.kubeconfig");
        std::fs::write(
            &admin,
            kubeconfig(
                &server,
                &ca_file,
                &format!(
                    "client-certificate: {}\n    client-key: {}",
                    admin_crt.display(),
                    admin_key.display()
                ),
            ),
        )
        .unwrap();

        let cluster = Cluster {
            bins,
            dir,
            server,
            admin,
            ca,
            procs: Mutex::new(procs),
        };
        let ready = eventually(Duration::from_secs(90), || {
            if !cluster.all_running() {
                return true;
            }
            let out = cluster.kubectl(&["get", "--raw", "/readyz"]);
            out.status.success()
        });
        if !ready || !cluster.all_running() {
            return Err(cluster.failure("the API server did not become ready"));
        }

        let mut kcm = Command::new(&cluster.bins.controller_manager);
        kcm.arg(format!("--kubeconfig={}", cluster.admin.display()))
            .arg(format!(
                "--authentication-kubeconfig={}",
                cluster.admin.display()
            ))
            .arg(format!(
                "--authorization-kubeconfig={}",
                cluster.admin.display()
            ))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()))
            .arg("--leader-elect=false")
            .arg(format!("--root-ca-file={}", ca_file.display()))
            .arg(format!(
                "--service-account-private-key-file={}",
                sa_private.display()
            ))
            .arg("--use-service-account-credentials=false")
            .arg("--concurrent-gc-syncs=5")
            .arg("--v=1");
        let kcm = Proc::start(
            "kube-controller-manager",
            kcm,
            cluster.dir.join("kube-controller-manager.log"),
        );
        cluster.procs.lock().unwrap().push(kcm);
        // The controller manager is up when it made `default`'s ServiceAccount.
        let up = eventually(Duration::from_secs(60), || {
            !cluster.all_running()
                || cluster
                    .kubectl(&["get", "serviceaccount", "default", "-n", "default"])
                    .status
                    .success()
        });
        if !up || !cluster.all_running() {
            return Err(
                cluster.failure("kube-controller-manager did not make the default ServiceAccount")
            );
        }
        Ok(cluster)
    }

    fn all_running(&self) -> bool {
        self.procs.lock().unwrap().iter_mut().all(Proc::running)
    }

    /// A failure message with the tail of every process's log.
    pub fn failure(&self, what: &str) -> String {
        let mut msg = format!("{what}\n");
        for p in self.procs.lock().unwrap().iter_mut() {
            let running = p.running();
            let out = p.output();
            let tail: Vec<&str> = out.lines().rev().take(25).collect();
            msg += &format!(
                "--- {} ({}), last lines of {}:\n{}\n",
                p.name,
                if running { "running" } else { "exited" },
                p.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        msg
    }

    /// `kubectl` as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.admin, args, None)
    }

    /// `kubectl` with `kubeconfig`, `stdin` fed to it.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(&self.bins.kubectl);
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--request-timeout=30s")
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// `kubectl` as the admin; fails the test if it fails; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply` of `yaml` as the admin; its output (stdout, stderr).
    pub fn apply(&self, yaml: &str) -> Output {
        self.kubectl_as(&self.admin, &["apply", "-f", "-"], Some(yaml))
    }

    /// `kubectl apply` that must succeed.
    pub fn apply_ok(&self, yaml: &str) {
        let out = self.apply(yaml);
        assert!(
            out.status.success(),
            "kubectl apply failed:\n{}{}\n--- of:\n{yaml}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl get … -o json`, parsed; `None` if it is not found.
    pub fn get(&self, args: &[&str]) -> Option<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl(&all);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("NotFound") || err.contains("not found"),
                "kubectl {}: {err}",
                all.join(" ")
            );
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).unwrap())
    }

    /// A new namespace (unique name from `prefix`) with these labels and
    /// annotations, once the controller manager gave it its ServiceAccount.
    pub fn namespace(
        &self,
        prefix: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> String {
        let name = unique(prefix);
        let mut yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
        for (key, map) in [("labels", labels), ("annotations", annotations)] {
            if !map.is_empty() {
                yaml += &format!("  {key}:\n");
                for (k, v) in map {
                    yaml += &format!("    {k}: {}\n", serde_json::to_string(v).unwrap());
                }
            }
        }
        self.apply_ok(&yaml);
        assert!(
            eventually(Duration::from_secs(30), || self
                .kubectl(&["get", "serviceaccount", "default", "-n", &name])
                .status
                .success()),
            "{}",
            self.failure(&format!("namespace {name} got no default ServiceAccount"))
        );
        name
    }

    /// A token of ServiceAccount `ns/sa` from TokenRequest, for `audience`
    /// (the API server's own when `None`), valid `secs` seconds, bound to
    /// `bound` (`Pod/<name>`, `Secret/<name>`) when given.
    pub fn token(
        &self,
        ns: &str,
        sa: &str,
        audience: Option<&str>,
        secs: u64,
        bound: Option<&str>,
    ) -> String {
        let mut args: Vec<String> = ["create", "token", sa, "-n", ns].map(String::from).to_vec();
        args.push(format!("--duration={secs}s"));
        if let Some(a) = audience {
            args.push(format!("--audience={a}"));
        }
        if let Some((kind, name)) = bound.and_then(|b| b.split_once('/')) {
            args.push(format!("--bound-object-kind={kind}"));
            args.push(format!("--bound-object-name={name}"));
            // The UID, as a kubelet's tokens carry it.
            let resource = kind.to_lowercase();
            let uid = self.kubectl_ok(&[
                "get",
                &resource,
                name,
                "-n",
                ns,
                "-o",
                "jsonpath={.metadata.uid}",
            ]);
            args.push(format!("--bound-object-uid={uid}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.kubectl_ok(&args).trim().to_string()
    }

    /// A kubeconfig that authenticates as ServiceAccount `ns/sa` with a
    /// TokenRequest token (one hour), as a pod of that account would.
    pub fn kubeconfig_for(&self, ns: &str, sa: &str) -> PathBuf {
        let token = self.token(ns, sa, None, 3600, None);
        let path = self
            .dir
            .join(format!("{}-{ns}-{sa}.kubeconfig", unique("sa")));
        std::fs::write(
            &path,
            kubeconfig(
                &self.server,
                &self.dir.join("ca.crt"),
                &format!("token: {token}"),
            ),
        )
        .unwrap();
        path
    }

    /// `kubectl auth can-i VERB RESOURCE` as ServiceAccount `ns/sa`
    /// (asked by the admin, answered by the API server's authorizer).
    pub fn can_i(
        &self,
        ns: &str,
        sa: &str,
        verb: &str,
        resource: &str,
        in_ns: Option<&str>,
    ) -> bool {
        let who = format!("--as=system:serviceaccount:{ns}:{sa}");
        let mut args = vec!["auth", "can-i", verb, resource, &who];
        match in_ns {
            Some(n) => args.extend_from_slice(&["-n", n]),
            None => args.push("--all-namespaces"),
        }
        let out = self.kubectl(&args);
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            answer == "yes" || answer == "no",
            "kubectl {} answered {answer:?}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        answer == "yes"
    }

    /// `helm` with the admin's kubeconfig.
    pub fn helm(&self, args: &[&str]) -> Output {
        Command::new(&self.bins.helm)
            .env("KUBECONFIG", &self.admin)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"))
            .args(args)
            .output()
            .unwrap()
    }

    /// `helm` that must succeed; its stdout.
    pub fn helm_ok(&self, args: &[&str]) -> String {
        let out = self.helm(args);
        assert!(
            out.status.success(),
            "helm {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Installs the Gateway API's standard CRDs and waits until they serve.
    pub fn install_gateway_api(&self) {
        let dir = self.bins.gateway_crds.to_str().unwrap().to_string();
        self.kubectl_ok(&["apply", "--server-side", "-f", &dir]);
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/httproutes.gateway.networking.k8s.io",
            "crd/grpcroutes.gateway.networking.k8s.io",
        ]);
    }

    /// `helm install` (or upgrade) of the repository's chart as release
    /// `trellis` in `trellis-system`, with `values` files and `--set`s.
    pub fn install_chart(&self, values: &[&str], sets: &[&str]) -> String {
        let chart = repo().join("charts/trellis");
        let mut args = vec![
            "upgrade",
            "--install",
            "trellis",
            chart.to_str().unwrap(),
            "--namespace",
            "trellis-system",
            "--create-namespace",
            "--wait=false",
        ];
        let values: Vec<String> = values
            .iter()
            .map(|v| repo().join("charts/trellis").join(v).display().to_string())
            .collect();
        for v in &values {
            args.extend_from_slice(&["-f", v]);
        }
        for s in sets {
            args.extend_from_slice(&["--set", s]);
        }
        self.helm_ok(&args)
    }

    /// Runs container `container` of Deployment `ns/deployment` as a local
    /// process, as a kubelet would run its pod: the container's `env`
    /// (values, `fieldRef`s, ConfigMap and Secret keys, `$(VAR)`), its
    /// volumes (Secrets, ConfigMaps, projected ServiceAccount tokens from
    /// TokenRequest, `emptyDir`) written under a directory of its own and
    /// the paths in its environment pointed there, a kubeconfig for the
    /// pod's ServiceAccount, and every listen address (a `*_LISTEN`
    /// variable of `0.0.0.0:N` or `127.0.0.1:N`) moved to a free loopback
    /// port, found in [`Proc::ports`] under the name of container port `N`
    /// (or the variable's name). `program` is the binary (the image's
    /// entrypoint); `env` overrides the pod's variables.
    pub fn run_container(
        &self,
        ns: &str,
        deployment: &str,
        container: &str,
        program: &Path,
        env: &[(&str, &str)],
    ) -> Proc {
        let d = self
            .get(&["deployment", deployment, "-n", ns])
            .unwrap_or_else(|| panic!("no Deployment {ns}/{deployment}"));
        let spec = &d["spec"]["template"]["spec"];
        let pod = format!("{deployment}-local");
        self.run_spec(ns, &pod, None, spec, container, program, env)
    }

    /// As [`Cluster::run_container`], for container (or init container)
    /// `container` of the stored Pod `ns/pod`; its ServiceAccount tokens
    /// are bound to the pod, as kubelet's are.
    pub fn run_pod_container(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        program: &Path,
        env: &[(&str, &str)],
    ) -> Proc {
        let p = self
            .get(&["pod", pod, "-n", ns])
            .unwrap_or_else(|| panic!("no Pod {ns}/{pod}"));
        self.run_spec(ns, pod, Some(pod), &p["spec"], container, program, env)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_spec(
        &self,
        ns: &str,
        pod_name: &str,
        bound_pod: Option<&str>,
        spec: &Value,
        container: &str,
        program: &Path,
        env: &[(&str, &str)],
    ) -> Proc {
        let deployment = pod_name;
        let sa = spec["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let c = spec["containers"]
            .as_array()
            .into_iter()
            .chain(spec["initContainers"].as_array())
            .flatten()
            .find(|c| c["name"] == container)
            .unwrap_or_else(|| panic!("{ns}/{pod_name} has no container {container}"))
            .clone();
        let root = self.dir.join(unique(&format!("{deployment}-")));
        std::fs::create_dir_all(&root).unwrap();

        // Volumes, mounted under root.
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().unwrap();
            let vol = spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("volume {name} of {deployment} is not defined"));
            let local = root.join("volumes").join(name);
            std::fs::create_dir_all(&local).unwrap();
            self.materialise(ns, &sa, bound_pod, vol, &local);
            mounts.push((m["mountPath"].as_str().unwrap().to_string(), local));
        }
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let remap = |v: &str| -> String {
            for (path, local) in &mounts {
                if let Some(rest) = v.strip_prefix(path.as_str()) {
                    return format!("{}{rest}", local.display());
                }
            }
            v.to_string()
        };

        // Ports: every listen address on a container port moves to loopback.
        let mut port_names: BTreeMap<u64, String> = BTreeMap::new();
        for p in c["ports"].as_array().into_iter().flatten() {
            port_names.insert(
                p["containerPort"].as_u64().unwrap(),
                p["name"].as_str().unwrap_or("").to_string(),
            );
        }
        let mut ports = BTreeMap::new();
        let mut vars: Vec<(String, String)> = Vec::new();
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap().to_string();
            let value = if let Some(v) = e["value"].as_str() {
                expand(v, &vars)
            } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match path {
                    "metadata.namespace" => ns.to_string(),
                    "metadata.name" => pod_name.to_string(),
                    "spec.serviceAccountName" => sa.clone(),
                    "spec.nodeName" => "local".to_string(),
                    "status.podIP" | "status.hostIP" => "127.0.0.1".to_string(),
                    other => panic!("fieldRef {other} is not supported by run_container"),
                }
            } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
                self.key_of("secret", ns, r)
            } else if let Some(r) = e["valueFrom"].get("configMapKeyRef") {
                self.key_of("configmap", ns, r)
            } else {
                panic!("env {name} of {deployment}: unsupported {e}");
            };
            // A listen address of the pod (any or loopback address) moves
            // to a free loopback port, named after the container port.
            let listen = name
                .ends_with("_LISTEN")
                .then(|| {
                    value
                        .strip_prefix("0.0.0.0:")
                        .or_else(|| value.strip_prefix("127.0.0.1:"))
                })
                .flatten()
                .and_then(|p| p.parse::<u64>().ok());
            let value = match listen {
                Some(port) => {
                    let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
                    let key = port_names
                        .get(&port)
                        .filter(|n| !n.is_empty())
                        .cloned()
                        .unwrap_or_else(|| name.clone());
                    ports.insert(key, local);
                    local.to_string()
                }
                None => remap(&value),
            };
            vars.push((name, value));
        }
        let kubeconfig = self.kubeconfig_for(ns, &sa);
        let mut cmd = Command::new(program);
        cmd.env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", &kubeconfig);
        for (k, v) in &vars {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut args: Vec<String> = Vec::new();
        for a in c["args"].as_array().into_iter().flatten() {
            args.push(remap(&expand(a.as_str().unwrap(), &vars)));
        }
        cmd.args(&args);
        let mut p = Proc::start_clean(
            &format!("{ns}/{deployment}/{container}"),
            cmd,
            root.join(format!("{container}.log")),
        );
        p.ports = ports;
        p
    }

    fn key_of(&self, kind: &str, ns: &str, r: &Value) -> String {
        let name = r["name"].as_str().unwrap();
        let key = r["key"].as_str().unwrap();
        let obj = self
            .get(&[kind, name, "-n", ns])
            .unwrap_or_else(|| panic!("no {kind} {ns}/{name}"));
        data_of(&obj)
            .remove(key)
            .map(|b| String::from_utf8(b).unwrap())
            .unwrap_or_else(|| panic!("{kind} {ns}/{name} has no key {key}"))
    }

    /// Writes the files of volume `vol` into `dir`.
    fn materialise(&self, ns: &str, sa: &str, bound_pod: Option<&str>, vol: &Value, dir: &Path) {
        let write_items = |obj: &Value, items: &Value| {
            let mut data = data_of(obj);
            match items.as_array() {
                Some(items) => {
                    for i in items {
                        let bytes = data.remove(i["key"].as_str().unwrap()).unwrap();
                        std::fs::write(dir.join(i["path"].as_str().unwrap()), bytes).unwrap();
                    }
                }
                None => {
                    for (k, bytes) in data {
                        std::fs::write(dir.join(k), bytes).unwrap();
                    }
                }
            }
        };
        if let Some(s) = vol.get("secret") {
            let name = s["secretName"].as_str().unwrap();
            let obj = self
                .get(&["secret", name, "-n", ns])
                .unwrap_or_else(|| panic!("no Secret {ns}/{name}"));
            write_items(&obj, &s["items"]);
        } else if let Some(m) = vol.get("configMap") {
            let name = m["name"].as_str().unwrap();
            let obj = self
                .get(&["configmap", name, "-n", ns])
                .unwrap_or_else(|| panic!("no ConfigMap {ns}/{name}"));
            write_items(&obj, &m["items"]);
        } else if vol.get("emptyDir").is_some() {
        } else if let Some(p) = vol.get("projected") {
            for src in p["sources"].as_array().unwrap() {
                if let Some(t) = src.get("serviceAccountToken") {
                    let token = self.token(
                        ns,
                        sa,
                        t["audience"].as_str(),
                        t["expirationSeconds"].as_u64().unwrap_or(3600),
                        bound_pod.map(|p| format!("Pod/{p}")).as_deref(),
                    );
                    std::fs::write(dir.join(t["path"].as_str().unwrap()), token).unwrap();
                } else if let Some(m) = src.get("configMap") {
                    let name = m["name"].as_str().unwrap();
                    let obj = self.get(&["configmap", name, "-n", ns]).unwrap();
                    write_items(&obj, &m["items"]);
                } else if let Some(d) = src.get("downwardAPI") {
                    for item in d["items"].as_array().into_iter().flatten() {
                        let value = match item["fieldRef"]["fieldPath"].as_str() {
                            Some("metadata.namespace") => ns,
                            Some("metadata.name") => bound_pod.unwrap_or("local"),
                            _ => {
                                panic!("downwardAPI item {item} is not supported by run_container")
                            }
                        };
                        std::fs::write(dir.join(item["path"].as_str().unwrap()), value).unwrap();
                    }
                } else {
                    panic!("projected source {src} is not supported by run_container");
                }
            }
        } else {
            panic!("volume {vol} is not supported by run_container");
        }
    }
}

impl Drop for Cluster {
    /// Stops its processes; removes its files unless the test failed (then
    /// they stay for reading, until the next run's clean-up).
    fn drop(&mut self) {
        self.procs.lock().unwrap().clear();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A Secret's (base64) or ConfigMap's data, decoded.
fn data_of(obj: &Value) -> BTreeMap<String, Vec<u8>> {
    let secret = obj["kind"] == "Secret";
    obj["data"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let s = v.as_str().unwrap();
            let bytes = if secret {
                base64::engine::general_purpose::STANDARD.decode(s).unwrap()
            } else {
                s.as_bytes().to_vec()
            };
            (k.clone(), bytes)
        })
        .collect()
}

/// `$(VAR)` expansion as kubelet does it: defined variables are replaced,
/// `$$` escapes, anything else is left as written.
fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$$") {
            out.push('$');
            rest = r;
        } else if let Some(end) = rest.strip_prefix("$(").and_then(|r| r.find(')')) {
            let name = &rest[2..2 + end];
            match vars.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[..3 + end]),
            }
            rest = &rest[3 + end..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out + rest
}

fn kubeconfig(server: &str, ca: &Path, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    \
         certificate-authority: {}\nusers:\n- name: test\n  user:\n    {user}\ncontexts:\n- name: test\n  \
         context:\n    cluster: test\n    user: test\ncurrent-context: test\n",
        ca.display()
    )
}

/// Removes the directories of clusters whose test process is gone.
fn remove_stale(root: &Path) {
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let alive = name
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_kubelet() {
        let vars = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "x$(A)".to_string()),
        ];
        assert_eq!(
            expand("$(A)-$(B)-$(C)-$$(A)-$", &vars),
            "1-x$(A)-$(C)-$(A)-$"
        );
        assert_eq!(expand("plain", &vars), "plain");
    }
}
