//! Golden signals from proxies' `/metrics`: Prometheus text parsing,
//! aggregation over replicas, rates and quantiles over a window. Pure.
//!
//! Quantiles follow Prometheus' `histogram_quantile`: find the bucket the
//! rank falls in and interpolate linearly inside it.

use std::collections::BTreeMap;
use std::fmt;

pub const REQUESTS: &str = "trellis_http_requests_total";
pub const DURATION_BUCKETS: &str = "trellis_http_request_duration_seconds_bucket";
pub const TCP_CONNECTIONS: &str = "trellis_tcp_connections_total";
pub const TCP_BYTES: &str = "trellis_tcp_bytes_total";

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map(String::as_str).unwrap_or("")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// Parses the Prometheus text format (and OpenMetrics: `# EOF`, exemplars).
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: &str| ParseError {
            line: i + 1,
            reason: format!("{reason}: {line:?}"),
        };
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| err("no value"))?;
        let name = &line[..name_end];
        if name.is_empty() {
            return Err(err("no metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(body) = rest.strip_prefix('{') {
            let (parsed, after) = parse_labels(body).map_err(|r| err(&r))?;
            labels = parsed;
            rest = after;
        }
        // Drop an OpenMetrics exemplar (` # {…} v`), then take the value;
        // a timestamp may follow it.
        let rest = rest.split(" # ").next().unwrap_or_default();
        let value_text = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| err("no value"))?;
        let value = parse_value(value_text).ok_or_else(|| err("bad value"))?;
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Parses `a="x",b="y\"z"}` and returns the labels and what follows `}`.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.insert(key, value);
        s = s[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

/// Histogram buckets: `(le, cumulative count)`, sorted by `le`.
pub type Buckets = Vec<(f64, f64)>;

/// Cumulative golden counters of one direction, summed over series (routes,
/// peers) and, with [`Counters::add`], over replicas.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub requests: f64,
    pub successes: f64,
    /// Requests whose `tls` label was `true`.
    pub tls_requests: f64,
    pub buckets: Buckets,
    /// Connections accepted (every protocol: HTTP and opaque TCP).
    pub tcp_connections: f64,
    pub tls_connections: f64,
    /// Bytes both ways. The proxy adds a connection's bytes when it closes.
    pub tcp_bytes: f64,
    pub tls_bytes: f64,
}

impl Counters {
    /// The counters of `direction` (`inbound`/`outbound`) in one scrape.
    pub fn from_samples(samples: &[Sample], direction: &str) -> Self {
        let mut c = Counters::default();
        for s in samples.iter().filter(|s| s.label("direction") == direction) {
            if !s.value.is_finite() {
                continue;
            }
            let tls = s.label("tls") == "true";
            match s.name.as_str() {
                REQUESTS => {
                    c.requests += s.value;
                    if s.label("classification") == "success" {
                        c.successes += s.value;
                    }
                    if tls {
                        c.tls_requests += s.value;
                    }
                }
                DURATION_BUCKETS => {
                    if let Some(le) = parse_value(s.label("le")) {
                        add_bucket(&mut c.buckets, le, s.value);
                    }
                }
                TCP_CONNECTIONS => {
                    c.tcp_connections += s.value;
                    if tls {
                        c.tls_connections += s.value;
                    }
                }
                TCP_BYTES => {
                    c.tcp_bytes += s.value;
                    if tls {
                        c.tls_bytes += s.value;
                    }
                }
                _ => {}
            }
        }
        c
    }

    /// Adds another replica's counters (or another replica's increase).
    pub fn add(&mut self, other: &Counters) {
        self.requests += other.requests;
        self.successes += other.successes;
        self.tls_requests += other.tls_requests;
        self.tcp_connections += other.tcp_connections;
        self.tls_connections += other.tls_connections;
        self.tcp_bytes += other.tcp_bytes;
        self.tls_bytes += other.tls_bytes;
        for &(le, n) in &other.buckets {
            add_bucket(&mut self.buckets, le, n);
        }
    }

    /// Whether these counters, of one proxy, restarted from zero since
    /// `earlier`: any counter went down. A proxy's counters all restart
    /// together, so one that fell is enough to know.
    pub fn reset_since(&self, earlier: &Counters) -> bool {
        let fell = |now: f64, then: f64| now < then;
        fell(self.requests, earlier.requests)
            || fell(self.successes, earlier.successes)
            || fell(self.tls_requests, earlier.tls_requests)
            || fell(self.tcp_connections, earlier.tcp_connections)
            || fell(self.tls_connections, earlier.tls_connections)
            || fell(self.tcp_bytes, earlier.tcp_bytes)
            || fell(self.tls_bytes, earlier.tls_bytes)
            || earlier
                .buckets
                .iter()
                .any(|&(le, then)| fell(bucket_at(&self.buckets, le), then))
    }

    /// What one proxy counted between `earlier` and `self`. After a reset
    /// (a restarted proxy) the counters started again from zero, so their
    /// current values are the increase, as Prometheus' `increase()` takes
    /// them. Only meaningful for one proxy's counters: sum replicas'
    /// increases with [`increase`], not the increase of sums.
    pub fn since(&self, earlier: &Counters) -> Counters {
        if self.reset_since(earlier) {
            return self.clone();
        }
        Counters {
            requests: self.requests - earlier.requests,
            successes: self.successes - earlier.successes,
            tls_requests: self.tls_requests - earlier.tls_requests,
            buckets: self
                .buckets
                .iter()
                .map(|&(le, n)| (le, n - bucket_at(&earlier.buckets, le)))
                .collect(),
            tcp_connections: self.tcp_connections - earlier.tcp_connections,
            tls_connections: self.tls_connections - earlier.tls_connections,
            tcp_bytes: self.tcp_bytes - earlier.tcp_bytes,
            tls_bytes: self.tls_bytes - earlier.tls_bytes,
        }
    }
}

/// A workload's counters summed over its replicas, and what they counted
/// in the window: each replica's `(now, at the window's start)`. A replica
/// not scraped at the start (new in the window) counted all it has in it.
pub fn increase<'a>(
    replicas: impl IntoIterator<Item = (&'a Counters, Option<&'a Counters>)>,
) -> (Counters, Counters) {
    let mut total = Counters::default();
    let mut increase = Counters::default();
    for (now, then) in replicas {
        total.add(now);
        match then {
            Some(then) => increase.add(&now.since(then)),
            None => increase.add(now),
        }
    }
    (total, increase)
}

fn add_bucket(buckets: &mut Buckets, le: f64, n: f64) {
    match buckets.iter_mut().find(|(l, _)| *l == le) {
        Some((_, count)) => *count += n,
        None => {
            buckets.push((le, n));
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }
}

fn bucket_at(buckets: &Buckets, le: f64) -> f64 {
    buckets
        .iter()
        .find(|(l, _)| *l == le)
        .map(|(_, n)| *n)
        .unwrap_or(0.0)
}

/// The `q` quantile (0..=1) of a histogram, in the buckets' unit; `None`
/// when it holds no observations. Like Prometheus, a rank in the `+Inf`
/// bucket gives the highest finite bound, and the first bucket's lower bound
/// is 0.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total.is_nan() || total <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for &(le, count) in buckets {
        if count >= rank && count > below {
            if le.is_infinite() {
                return Some(lower);
            }
            return Some(lower + (le - lower) * (rank - below) / (count - below));
        }
        lower = le;
        below = count;
    }
    Some(lower)
}

/// Whether traffic was mutually authenticated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tls {
    /// No traffic to judge by.
    Unknown,
    /// All of it.
    All,
    /// None of it.
    None,
    /// This share of it.
    Some(f64),
}

impl fmt::Display for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tls::Unknown => f.write_str("-"),
            Tls::All => f.write_str("true"),
            Tls::None => f.write_str("false"),
            Tls::Some(share) => write!(f, "partly ({:.0}%)", share * 100.0),
        }
    }
}

fn tls_of(tls: f64, total: f64) -> Tls {
    if total.is_nan() || total <= 0.0 {
        Tls::Unknown
    } else if tls >= total {
        Tls::All
    } else if tls <= 0.0 {
        Tls::None
    } else {
        Tls::Some(tls / total)
    }
}

/// One line of the golden table. Every number covers the same span: the
/// window between two scrapes, or, on the first screen, everything since
/// the proxies started (then there are counts but no rates yet).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub workload: String,
    pub meshed: bool,
    pub replicas: usize,
    /// Requests per second; `None` without a window, or for a workload that
    /// never served HTTP (opaque TCP only has no request rate, not 0).
    pub rps: Option<f64>,
    /// Share of successful requests.
    pub success: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// Connections opened.
    pub connections: u64,
    /// Bytes per second (both ways) of opaque TCP connections; `None`
    /// without a window or for an HTTP workload (whose connections are
    /// long-lived and count their bytes only when they close).
    pub bytes_per_second: Option<f64>,
    /// Share of the traffic that came over mutual TLS: requests for HTTP,
    /// connections for opaque TCP.
    pub tls: Tls,
}

/// A row from a workload's counters: `total` (since its proxies started)
/// and, when a window exists, what they counted in it over `seconds`.
pub fn row(
    workload: &str,
    meshed: bool,
    replicas: usize,
    total: &Counters,
    window: Option<(&Counters, f64)>,
) -> Row {
    let (seen, seconds) = match window {
        Some((w, secs)) if secs > 0.0 => (w, Some(secs)),
        _ => (total, None),
    };
    let http = total.requests > 0.0;
    let rate = |n: f64| seconds.map(|secs| n / secs);
    let has = seen.requests > 0.0;
    let tls = if has {
        tls_of(seen.tls_requests, seen.requests)
    } else {
        tls_of(seen.tls_connections, seen.tcp_connections)
    };
    Row {
        workload: workload.to_string(),
        meshed,
        replicas,
        rps: if http { rate(seen.requests) } else { None },
        success: has.then(|| seen.successes / seen.requests),
        p50: quantile(&seen.buckets, 0.5),
        p99: quantile(&seen.buckets, 0.99),
        connections: seen.tcp_connections.max(0.0).round() as u64,
        bytes_per_second: if http { None } else { rate(seen.tcp_bytes) },
        tls,
    }
}

/// `0.42ms`, `12.3ms`, `1.50s`.
pub fn format_latency(seconds: f64) -> String {
    let ms = seconds * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}ms")
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{seconds:.2}s")
    }
}

/// `512B`, `12.3KiB`, `4.5MiB` (a rate adds its own `/s`).
pub fn format_bytes(bytes: f64) -> String {
    const KIB: f64 = 1024.0;
    if bytes < KIB {
        format!("{bytes:.0}B")
    } else if bytes < KIB * KIB {
        format!("{:.1}KiB", bytes / KIB)
    } else {
        format!("{:.1}MiB", bytes / (KIB * KIB))
    }
}

/// What the columns mean, for under the table.
pub const LEGEND: &str = "RPS, SUCCESS, P50, P99: HTTP requests; CONNS: TCP connections opened; BYTES/S: bytes both ways of opaque TCP connections, counted when a connection closes; TLS: share of the requests (HTTP) or connections (opaque TCP) that came over mutual TLS from a sidecar (true = all, false = none)";

pub fn render(rows: &[Row]) -> String {
    let dash = || "-".to_string();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.workload.clone(),
                if r.meshed { "yes" } else { "no" }.to_string(),
                r.replicas.to_string(),
                r.rps.map(|v| format!("{v:.1}")).unwrap_or_else(dash),
                r.success
                    .map(|v| format!("{:.2}%", v * 100.0))
                    .unwrap_or_else(dash),
                r.p50.map(format_latency).unwrap_or_else(dash),
                r.p99.map(format_latency).unwrap_or_else(dash),
                r.connections.to_string(),
                r.bytes_per_second
                    .map(|v| format!("{}/s", format_bytes(v)))
                    .unwrap_or_else(dash),
                r.tls.to_string(),
            ]
        })
        .collect();
    super::table::render(
        &[
            "WORKLOAD", "MESHED", "PODS", "RPS", "SUCCESS", "P50", "P99", "CONNS", "BYTES/S", "TLS",
        ],
        &cells,
    )
}

#[cfg(test)]
mod tests;
