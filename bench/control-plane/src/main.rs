//! The control-plane benchmark of issue 18: a synthetic cluster (the file
//! source, or a real kube-apiserver), a `trellis-controller` binary started
//! on it, thousands of discovery streams held as proxies would hold them,
//! and steady churn. Measures the controller's memory and CPU, its time to
//! ready and to first answers, and per change the time until every
//! affected stream had its new answer. See `README.md`.

mod churn;
mod cluster;
mod file;
mod kube;
mod load;
mod proc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rand::SeedableRng as _;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::churn::Tally;
use crate::cluster::{Cluster, Scale};

#[derive(Parser, Debug)]
#[command(about = "Trellis control-plane benchmark (issue 18)")]
struct Args {
    /// `file` or `kubernetes`.
    #[arg(long)]
    source: String,
    /// Fraction of the full scale (50,000 pods, 5,000 services, 10,000
    /// streams, 20 changes/s).
    #[arg(long, default_value_t = 0.1)]
    scale: f64,
    /// The controller to measure.
    #[arg(long)]
    controller_bin: PathBuf,
    /// Where the results (`SOURCE-SCALE.json`), the controller's log and
    /// the objects file go.
    #[arg(long)]
    out: PathBuf,
    /// Length of the churn window.
    #[arg(long, default_value_t = 60)]
    churn_secs: u64,
    /// Only print the Markdown table of the results in `--out`.
    #[arg(long)]
    report: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.report {
        print!("{}", report(&args.out)?);
        return Ok(());
    }
    raise_fd_limit();
    std::fs::create_dir_all(&args.out)?;
    let scale = Scale::new(args.scale);
    let label = format!("{}-{}", args.source, args.scale);
    let t = Instant::now();
    let mut cluster = Cluster::generate(scale)?;
    eprintln!(
        "[bench] {label}: {} namespaces, {} services, {} pods, {} proxies ({} streams), {} changes/s; generated in {:.1} s",
        scale.namespaces,
        scale.services,
        scale.pods(),
        scale.frontends() * cluster::PROXIES_PER_FRONTEND,
        scale.frontends() * cluster::PROXIES_PER_FRONTEND * 2,
        scale.churn_per_sec,
        t.elapsed().as_secs_f64()
    );

    let listen = SocketAddr::from(([127, 0, 0, 1], trellis_e2e::kube::free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], trellis_e2e::kube::free_port()));
    let mut env: Vec<(String, String)> = vec![
        ("TRELLIS_CONTROLLER_LISTEN".into(), listen.to_string()),
        ("TRELLIS_CONTROLLER_ADMIN_LISTEN".into(), admin.to_string()),
        ("TRELLIS_CONTROLLER_LOG".into(), "info".into()),
    ];
    let mut setup = json!({});
    let mut file_sink = None;
    let mut kube_client = None;
    // Kept alive (its processes stop on drop) for the whole run.
    let mut _kube_cluster = None;
    match args.source.as_str() {
        "file" => {
            let path = args.out.join(format!("{label}-objects.json"));
            let sink = Arc::new(file::FileSink::new(&path, &cluster));
            let t = Instant::now();
            let bytes = sink.write()?;
            eprintln!(
                "[file] {} ({:.0} MB) written in {:.1} s",
                path.display(),
                bytes as f64 / 1e6,
                t.elapsed().as_secs_f64()
            );
            setup = json!({"file_bytes": bytes});
            env.push(("TRELLIS_CONTROLLER_SOURCE".into(), "file".into()));
            env.push(("TRELLIS_CONTROLLER_FILE".into(), path.display().to_string()));
            file_sink = Some(sink);
        }
        "kubernetes" => {
            let c = tokio::task::spawn_blocking(trellis_e2e::kube::Cluster::start).await?;
            c.install_gateway_api();
            c.apply_ok(kube::AUTHZ_CRD);
            c.kubectl_ok(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/authorizationpolicies.policy.trellis.dev",
            ]);
            let client = kube::client(&c.admin).await?;
            eprintln!("[kube] creating {} pods and their services …", scale.pods());
            let populated = kube::populate(&client, &cluster).await?;
            setup = serde_json::to_value(&populated)?;
            env.push(("TRELLIS_CONTROLLER_SOURCE".into(), "kubernetes".into()));
            env.push(("KUBECONFIG".into(), c.admin.display().to_string()));
            env.push((
                "TRELLIS_CONTROLLER_DISTRIBUTE_TRUST_ROOTS".into(),
                "false".into(),
            ));
            kube_client = Some(client);
            _kube_cluster = Some(c);
        }
        other => anyhow::bail!("--source {other}: use file or kubernetes"),
    }

    // Start → /ready → first answers on every stream.
    let log = args.out.join(format!("{label}-controller.log"));
    let spawned = Instant::now();
    let mut child = spawn(&args.controller_bin, &env, &log)?;
    let pid = child.id();
    let sampler = proc::Sampler::start(pid);
    let ready_s = wait_ready(admin, &mut child, Duration::from_secs(900)).await?;
    eprintln!("[bench] /ready after {ready_s:.2} s");
    let load = Arc::new(load::open(listen, &cluster, scale.services).await?);
    let streams = load.streams.len();
    let first_deadline = Instant::now() + Duration::from_secs(600);
    while load.answered.load(Ordering::Relaxed) < streams && Instant::now() < first_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answered = load.answered.load(Ordering::Relaxed);
    let first_answers_s = spawned.elapsed().as_secs_f64();
    eprintln!("[bench] {answered}/{streams} streams answered after {first_answers_s:.2} s");
    let cpu_startup_s = proc::cpu_seconds(pid)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_before_churn_mb = proc::rss_mb(pid)?;

    // Churn for a fixed time.
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(Notify::new());
    if let Some(sink) = &file_sink {
        tokio::spawn(sink.clone().run(load.clone(), tally.clone(), stop.clone()));
    }
    let messages_before = load.messages.load(Ordering::Relaxed);
    load.counting.store(true, Ordering::Relaxed);
    sampler.mark_churn(true);
    let cpu0 = proc::cpu_seconds(pid)?;
    let churn_started = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1818);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / scale.churn_per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut changes = 0usize;
    let mut progress = Instant::now();
    while churn_started.elapsed() < Duration::from_secs(args.churn_secs) {
        tick.tick().await;
        let Some(change) = churn::next(&mut cluster, &load, &tally, &mut rng) else {
            continue;
        };
        changes += 1;
        tally.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(sink) = &file_sink {
            sink.change(&cluster, change);
        } else if let Some(client) = &kube_client {
            tokio::spawn(kube::apply(
                client.clone(),
                change,
                load.clone(),
                tally.clone(),
            ));
        }
        if progress.elapsed() > Duration::from_secs(10) {
            progress = Instant::now();
            eprintln!(
                "[churn] {:.0} s: {changes} changes, {} in flight, controller RSS {:.0} MB",
                churn_started.elapsed().as_secs_f64(),
                tally.in_flight.load(Ordering::Relaxed),
                proc::rss_mb(pid).unwrap_or(0.0)
            );
        }
    }
    let churn_s = churn_started.elapsed().as_secs_f64();
    let cpu1 = proc::cpu_seconds(pid)?;
    sampler.mark_churn(false);
    // The last changes' waiters, bounded by their own limit.
    let drain_deadline = Instant::now() + churn::WAIT_LIMIT + Duration::from_secs(30);
    while tally.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.notify_one();
    load.counting.store(false, Ordering::Relaxed);
    let messages = load.messages.load(Ordering::Relaxed) - messages_before;

    let outcomes = tally
        .outcomes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut over = 0u64;
    let mut over_streams = 0usize;
    for s in &load.streams {
        let got = s.received_in_churn.load(Ordering::Relaxed);
        let want = s.expected_in_churn.load(Ordering::Relaxed);
        if got > want {
            over += got - want;
            over_streams += 1;
        }
    }
    let rss = sampler.finish();
    let peak_rss_mb = proc::peak_rss_mb(pid).unwrap_or(rss.peak_mb);
    let _ = child.kill();
    let _ = child.wait();

    let result = json!({
        "source": args.source,
        "scale": args.scale,
        "controller_bin": args.controller_bin.display().to_string(),
        "namespaces": scale.namespaces,
        "services": scale.services,
        "pods": scale.pods(),
        "streams": streams,
        "streams_answered": answered,
        "stream_errors": load.errors.load(Ordering::Relaxed),
        "setup": setup,
        "ready_s": ready_s,
        "first_answers_s": first_answers_s,
        "cpu_startup_s": cpu_startup_s,
        "rss_before_churn_mb": rss_before_churn_mb,
        "rss_peak_mb": peak_rss_mb,
        "rss_churn_median_mb": rss.churn_median_mb,
        "churn_s": churn_s,
        "churn_rate_target": scale.churn_per_sec,
        "changes": changes,
        "cpu_cores_churn": (cpu1 - cpu0) / churn_s,
        "updates_received": messages,
        "affected_total": outcomes.iter().map(|o| o.affected).sum::<usize>(),
        "updates_to_unaffected": over,
        "streams_updated_unaffected": over_streams,
        "summary": summary(&outcomes),
        "outcomes": outcomes,
    });
    let path = args.out.join(format!("{label}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&result)?)?;
    eprintln!("[bench] results in {}", path.display());
    print!("{}", report(&args.out)?);
    Ok(())
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn spawn(bin: &Path, env: &[(String, String)], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    Ok(Command::new(bin)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()?)
}

async fn wait_ready(admin: SocketAddr, child: &mut Child, limit: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the controller exited before /ready: {status}");
        }
        let got = tokio::task::spawn_blocking(move || trellis_e2e::kube::http_get(admin, "/ready"))
            .await?;
        if matches!(got, Some((200, _))) {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > limit {
            anyhow::bail!("the controller was not ready in {limit:?}: {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i])
}

/// p50/p99 per change (until every affected stream had it) and per stream.
fn summary(outcomes: &[churn::Outcome]) -> Value {
    let mut all: Vec<f64> = outcomes.iter().filter_map(|o| o.all_ms).collect();
    all.sort_by(f64::total_cmp);
    let mut each: Vec<f64> = outcomes
        .iter()
        .flat_map(|o| o.stream_ms.iter().copied())
        .collect();
    each.sort_by(f64::total_cmp);
    let mut by_kind = serde_json::Map::new();
    for kind in [
        churn::Kind::RollingUpdate,
        churn::Kind::EndpointUnready,
        churn::Kind::EndpointReady,
        churn::Kind::RouteEdit,
        churn::Kind::PolicyEdit,
    ] {
        let mut v: Vec<f64> = outcomes
            .iter()
            .filter(|o| o.kind == kind)
            .filter_map(|o| o.all_ms)
            .collect();
        v.sort_by(f64::total_cmp);
        by_kind.insert(
            serde_json::to_value(kind)
                .ok()
                .and_then(|k| k.as_str().map(String::from))
                .unwrap_or_default(),
            json!({"n": v.len(), "p50_ms": percentile(&v, 0.5), "p99_ms": percentile(&v, 0.99)}),
        );
    }
    let affected: Vec<usize> = outcomes.iter().map(|o| o.affected).collect();
    json!({
        "changes_measured": outcomes.len(),
        "changes_incomplete": outcomes.iter().filter(|o| o.all_ms.is_none()).count(),
        "change_p50_ms": percentile(&all, 0.5),
        "change_p99_ms": percentile(&all, 0.99),
        "change_max_ms": all.last(),
        "stream_p50_ms": percentile(&each, 0.5),
        "stream_p99_ms": percentile(&each, 0.99),
        "affected_mean": affected.iter().sum::<usize>() as f64 / affected.len().max(1) as f64,
        "affected_max": affected.iter().max(),
        "by_kind": by_kind,
    })
}

/// The Markdown table of every `*.json` result in `dir`.
fn report(dir: &Path) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.to_string_lossy().ends_with("-objects.json")
        })
        .collect();
    paths.sort();
    let f = |v: &Value| v.as_f64().map_or("—".to_string(), |x| format!("{x:.0}"));
    let f1 = |v: &Value| v.as_f64().map_or("—".to_string(), |x| format!("{x:.1}"));
    let f2 = |v: &Value| v.as_f64().map_or("—".to_string(), |x| format!("{x:.2}"));
    for p in paths {
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&p)?)?;
        let s = &r["summary"];
        let changes = r["changes"].as_f64().unwrap_or(0.0).max(1.0);
        let per_change = format!(
            "{:.1} / {:.1}",
            r["updates_received"].as_f64().unwrap_or(0.0) / changes,
            r["affected_total"].as_f64().unwrap_or(0.0) / changes
        );
        let incomplete = format!("{} of {}", s["changes_incomplete"], s["changes_measured"]);
        rows.push(format!(
            "| {} | {} | {} / {} | {} / {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} | {} | {} |",
            r["source"].as_str().unwrap_or_default(),
            r["scale"],
            r["pods"], r["services"],
            r["streams_answered"], r["streams"],
            f2(&r["ready_s"]),
            f2(&r["first_answers_s"]),
            f(&r["rss_before_churn_mb"]),
            f(&r["rss_churn_median_mb"]),
            f(&r["rss_peak_mb"]),
            f2(&r["cpu_cores_churn"]),
            f1(&r["churn_rate_target"]),
            f(&s["change_p50_ms"]), f(&s["change_p99_ms"]),
            f(&s["stream_p50_ms"]), f(&s["stream_p99_ms"]),
            per_change,
            incomplete,
        ));
    }
    Ok(format!(
        "| source | scale | pods / services | streams answered | ready (s) | first answers (s) | RSS settled (MB) | RSS churn median (MB) | RSS peak (MB) | CPU cores in churn / changes/s | change p50 / p99 (ms) | stream p50 / p99 (ms) | updates received / affected, per change | changes not seen by all |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    ))
}
