//! `trellis demo`: the mesh of `examples/demo.yaml` (built in), traffic
//! through it, and a live table of golden metrics.
//!
//! 1. `mesh up` in-process (root; real proxies, real capture rules, the
//!    real identity service and controller in the node namespace);
//! 2. bounded rounds of `trellis app load` (HTTP/1.1 and HTTP/2) and
//!    `trellis app banner-client` (opaque TCP) inside the `client` pod;
//! 3. every `--interval`, each proxy's `/metrics`, on the inbound side; per
//!    workload, what its replicas counted since the previous scrape (each
//!    proxy's increase on its own, so a restarted proxy's reset is seen):
//!    request rate, success rate, p50/p99, TCP connections opened, bytes/s of
//!    opaque TCP, and TLS — the share of that traffic that arrived over
//!    mutual TLS from another sidecar (the proxies' `tls="true"` label) —
//!    plus how many proxies hold a certificate from the mesh's identity
//!    service. The first screen shows counts since the start, no rates;
//! 4. on `--duration`, Ctrl-C, SIGTERM or an error: `mesh down`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{IsTerminal, Read as _};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use trellis_core::config::parse_duration;
use trellis_core::{errln, out};

use trellis_mesh::golden::{self, Counters};
use trellis_mesh::{check, Interrupt, Mesh, PodPlan, UpOptions};

/// The demo's mesh; `trellis mesh up -f examples/demo.yaml` makes the same.
const DEMO_MESH: &str = include_str!("../../examples/demo.yaml");
/// The longest load round; rounds repeat until the demo ends.
const ROUND: Duration = Duration::from_secs(10);
/// Where to see more than the certificate count.
const CERT_NOTE: &str = "`trellis mesh status --name demo` shows each proxy's certificate";

/// Start a built-in local mesh, send traffic through it, show golden metrics.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Stop (and remove the mesh) after this long, e.g. 30s or 5m; default:
    /// run until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// How often the table refreshes.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    interval: Duration,
    /// Requests per second each HTTP load generator sends.
    #[arg(long, default_value_t = 20)]
    rps: u32,
    /// How long to wait for the mesh to become ready.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.interval.is_zero() {
        bail!("--interval must be more than 0");
    }
    // Every pod of the demo runs `trellis app …`: refuse before making
    // anything if it could not.
    crate::app::app_bin()?;
    let interrupt = Interrupt::install(trellis_mesh::UNDO)?;
    let checked = check::parse(DEMO_MESH, "built-in demo mesh (examples/demo.yaml)")?;
    let opts = UpOptions {
        timeout: args.timeout,
        source: "trellis demo (examples/demo.yaml)".into(),
    };
    let mesh = Mesh::up(&checked, &opts, &interrupt)?;
    let shown = trellis_mesh::no_panic("the demo", || drive(&mesh, &args, &interrupt));
    let removed = mesh.down();
    match (shown, removed) {
        (Ok(()), Ok(())) => {
            errln!("demo over; everything it made is removed");
            Ok(())
        }
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Err(d)) => Err(d),
        (Err(e), Err(d)) => Err(e.context(format!("removing the mesh failed too: {d:#}"))),
    }
}

/// One kind of traffic the client pod sends, round after round.
struct Generator {
    /// Which workload it targets (for the client-side summary).
    target: &'static str,
    argv: Vec<String>,
    /// Whether the arguments take a `--duration`.
    timed: bool,
    running: Option<Child>,
    /// The last finished round: its JSON summary, or why there is none.
    last: Option<Result<String, String>>,
}

struct Traffic<'a> {
    mesh: &'a Mesh,
    client: &'a PodPlan,
    generators: Vec<Generator>,
    log: File,
}

impl<'a> Traffic<'a> {
    fn new(mesh: &'a Mesh, client: &'a PodPlan, trellis: &str, rps: u32) -> anyhow::Result<Self> {
        let http = |target: &'static str, h2: bool| {
            let mut argv = vec![
                trellis.to_string(),
                "app".into(),
                "load".into(),
                "--url".into(),
                format!("http://{target}.demo.svc.cluster.local/"),
                "--rps".into(),
                rps.to_string(),
            ];
            if h2 {
                argv.push("--h2".into());
            }
            Generator {
                target,
                argv,
                timed: true,
                running: None,
                last: None,
            }
        };
        let banner = Generator {
            target: "mail",
            argv: vec![
                trellis.to_string(),
                "app".into(),
                "banner-client".into(),
                "--addr".into(),
                "mail.demo.svc.cluster.local:25".into(),
                "--lines".into(),
                "3".into(),
            ],
            timed: false,
            running: None,
            last: None,
        };
        let path = mesh.logs_dir().join("demo.traffic.log");
        let log = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            mesh,
            client,
            generators: vec![
                http("web", false),
                http("api", true),
                http("catalog", false),
                banner,
            ],
            log,
        })
    }

    /// Collects finished rounds and starts the next ones (each at most
    /// [`ROUND`], and never past `left`).
    fn tick(&mut self, left: Option<Duration>) -> anyhow::Result<()> {
        for g in &mut self.generators {
            if let Some(child) = &mut g.running {
                let Some(status) = child.try_wait()? else {
                    continue;
                };
                let mut out = String::new();
                if let Some(mut stdout) = child.stdout.take() {
                    let _ = stdout.read_to_string(&mut out);
                }
                let summary = out.lines().rev().find(|l| l.starts_with('{'));
                g.last = Some(
                    summary
                        .map(str::to_string)
                        .ok_or_else(|| status.to_string()),
                );
                g.running = None;
            }
            let round = left.map_or(ROUND, |l| l.min(ROUND));
            // A timed round under a second is not worth starting; an untimed
            // one (a banner exchange, milliseconds) still gives the last
            // window its connection.
            if g.timed && round < Duration::from_secs(1) {
                continue;
            }
            let mut argv = g.argv.clone();
            if g.timed {
                argv.extend(["--duration".to_string(), format!("{}ms", round.as_millis())]);
            }
            let child = self
                .mesh
                .command_in(self.client, &argv)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(self.log.try_clone()?)
                .process_group(0)
                .spawn()
                .with_context(|| format!("starting traffic to {} in the client pod", g.target))?;
            g.running = Some(child);
        }
        Ok(())
    }

    /// What the client saw in the last finished rounds.
    fn summary(&self) -> String {
        let parts: Vec<String> = self
            .generators
            .iter()
            .filter_map(|g| {
                let json = match g.last.as_ref()? {
                    Ok(json) => json,
                    Err(status) => return Some(format!("{} round FAILED ({status})", g.target)),
                };
                let v: serde_json::Value = serde_json::from_str(json).ok()?;
                Some(if g.timed {
                    let p99 = v["p99_ms"]
                        .as_f64()
                        .map(|ms| format!(", p99 {ms:.2}ms"))
                        .unwrap_or_default();
                    format!("{} {}/{} ok{p99}", g.target, v["ok"], v["sent"])
                } else {
                    let ok = if v["ok"].as_bool() == Some(true) {
                        "ok"
                    } else {
                        "FAILED"
                    };
                    format!("{} banner {ok}", g.target)
                })
            })
            .collect();
        if parts.is_empty() {
            "client view: first rounds still running".to_string()
        } else {
            format!("client view (last rounds): {}", parts.join("; "))
        }
    }

    fn stop(&mut self) {
        for g in &mut self.generators {
            if let Some(mut child) = g.running.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Traffic<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Per meshed pod (by name): its proxy's inbound counters, or why they
/// could not be read. Kept per pod so that a restarted proxy's reset is
/// seen on its own, not hidden in a sum over replicas.
type Scrape = BTreeMap<String, Result<Counters, String>>;

fn scrape(mesh: &Mesh) -> Scrape {
    mesh.pods()
        .iter()
        .filter(|p| p.meshed)
        .map(|pod| {
            let got = mesh
                .fetch_metrics(pod)
                .map_err(|e| format!("{e:#}"))
                .and_then(|text| golden::parse(&text).map_err(|e| e.to_string()))
                .map(|samples| Counters::from_samples(&samples, "inbound"));
            (pod.name.clone(), got)
        })
        .collect()
}

/// A workload's row: its replicas' counters now and, when there was an
/// earlier scrape `seconds` ago, what they counted since.
fn workload_row(workload: &Workload, now: &Scrape, earlier: Option<(&Scrape, f64)>) -> golden::Row {
    let mut replicas = Vec::new();
    for pod in &workload.pods {
        match now.get(pod) {
            Some(Ok(c)) => {
                let then = earlier.and_then(|(e, _)| e.get(pod)?.as_ref().ok());
                replicas.push((c, then));
            }
            // Unmeshed, or a failed scrape (reported under the table):
            // nothing to show for this workload.
            _ => {
                return golden::row(
                    &workload.key,
                    workload.meshed,
                    workload.pods.len(),
                    &Counters::default(),
                    None,
                )
            }
        }
    }
    let (total, increase) = golden::increase(replicas);
    golden::row(
        &workload.key,
        workload.meshed,
        workload.pods.len(),
        &total,
        earlier.map(|(_, secs)| (&increase, secs)),
    )
}

/// A workload (`namespace/name`) and its pods, in file order.
struct Workload {
    key: String,
    meshed: bool,
    pods: Vec<String>,
}

/// `mTLS: 6/6 proxies hold a certificate (…)`, naming those that do not.
fn certificates(mesh: &Mesh) -> String {
    let meshed: Vec<&PodPlan> = mesh.pods().iter().filter(|p| p.meshed).collect();
    let missing: Vec<String> = meshed
        .iter()
        .filter_map(|p| match mesh.certificate(p) {
            Ok(_) => None,
            Err(why) => Some(format!("{} ({why})", p.name)),
        })
        .collect();
    let mut line = format!(
        "mTLS: {}/{} proxies hold a certificate from the mesh's identity service (trust domain {})",
        meshed.len() - missing.len(),
        meshed.len(),
        mesh.trust_domain()
    );
    if !missing.is_empty() {
        line.push_str(&format!("; not: {}", missing.join(", ")));
    }
    line
}

fn drive(mesh: &Mesh, args: &DemoArgs, interrupt: &Interrupt) -> anyhow::Result<()> {
    let client = mesh
        .pods()
        .iter()
        .find(|p| p.workload == "client")
        .context("the demo mesh has no `client` workload")?;
    let trellis = std::env::current_exe().context("cannot find the trellis binary itself")?;
    let mut traffic = Traffic::new(mesh, client, &trellis.to_string_lossy(), args.rps)?;

    // Workloads in file order, with their pods.
    let mut workloads: Vec<Workload> = Vec::new();
    for p in mesh.pods() {
        let key = format!("{}/{}", p.namespace, p.workload);
        match workloads.iter_mut().find(|w| w.key == key) {
            Some(w) => w.pods.push(p.name.clone()),
            None => workloads.push(Workload {
                key,
                meshed: p.meshed,
                pods: vec![p.name.clone()],
            }),
        }
    }

    let tty = std::io::stdout().is_terminal();
    let start = Instant::now();
    let end = args.duration.map(|d| start + d);
    let mut previous: Option<(Scrape, Instant)> = None;
    errln!(
        "mesh {} is up; sending traffic from {} ({})",
        mesh.name(),
        client.qualified_name(),
        match args.duration {
            Some(d) => format!("for {d:?}, Ctrl-C stops earlier and removes everything"),
            None => "Ctrl-C stops and removes everything".into(),
        }
    );
    loop {
        let left = end.map(|e| e.saturating_duration_since(Instant::now()));
        traffic.tick(left)?;
        if interrupt.sleep(args.interval.min(left.unwrap_or(args.interval))) {
            break;
        }
        let now = Instant::now();
        let scraped = scrape(mesh);
        let earlier = previous
            .as_ref()
            .map(|(m, at)| (m, now.duration_since(*at).as_secs_f64()));
        let rows: Vec<golden::Row> = workloads
            .iter()
            .map(|w| workload_row(w, &scraped, earlier))
            .collect();
        let errors: Vec<String> = scraped
            .iter()
            .filter_map(|(k, r)| r.as_ref().err().map(|e| format!("{k}: {e}")))
            .collect();
        let mut screen = String::new();
        if tty {
            screen.push_str("\x1b[H\x1b[2J");
        }
        screen.push_str(&format!(
            "trellis demo: mesh {}, {} pods, {:.0}s{}; Ctrl-C stops and removes everything\n",
            mesh.name(),
            mesh.pods().len(),
            start.elapsed().as_secs_f64(),
            args.duration
                .map(|d| format!(" of {}s", d.as_secs()))
                .unwrap_or_default()
        ));
        let window = match &previous {
            Some((_, at)) => format!(
                "over the last {:.1}s",
                now.duration_since(*at).as_secs_f64()
            ),
            None => "since the start (rates from the next refresh)".to_string(),
        };
        screen.push_str(&format!(
            "inbound golden metrics per workload, summed over replicas, {window}:\n\n"
        ));
        screen.push_str(&golden::render(&rows));
        screen.push('\n');
        screen.push_str(&traffic.summary());
        screen.push('\n');
        screen.push_str(golden::LEGEND);
        screen.push('\n');
        screen.push_str(&certificates(mesh));
        screen.push('\n');
        screen.push_str(CERT_NOTE);
        screen.push('\n');
        for e in errors {
            screen.push_str(&format!("scrape error: {e}\n"));
        }
        if !tty {
            screen.push('\n');
        }
        out!("{screen}");
        previous = Some((scraped, now));
        if end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
    }
    traffic.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_mesh_is_valid() {
        let c = check::parse(DEMO_MESH, "demo").unwrap();
        let f = &c.file;
        assert_eq!(f.name, "demo");
        for w in ["web", "api", "catalog", "mail", "client"] {
            assert!(f.workloads.iter().any(|x| x.name == w && x.meshed), "{w}");
        }
        let client = f.workloads.iter().position(|w| w.name == "client").unwrap();
        assert_eq!(c.overrides[client].opaque_ports.as_deref(), Some("25"));
        for s in ["web", "api", "catalog", "mail"] {
            assert!(
                f.services
                    .iter()
                    .any(|x| x.name == s && x.namespace == "demo"),
                "{s}"
            );
        }
    }

    #[test]
    fn the_other_examples_are_valid() {
        check::parse(include_str!("../../examples/hello.yaml"), "hello").unwrap();
        let mtls = check::parse(include_str!("../../examples/mtls.yaml"), "mtls").unwrap();
        assert_eq!(mtls.file.policies.len(), 1);
        assert_eq!(
            mtls.overrides[0].port_inbound_policies[&9090],
            trellis_mesh::spec::InboundPolicy::AllUnauthenticated
        );
    }
}
