//! The values of the proxy's tracing settings
//! ([`TRACE_COLLECTOR`](super::proxy_env::TRACE_COLLECTOR),
//! [`TRACE_SAMPLING`](super::proxy_env::TRACE_SAMPLING)), checked alike by
//! the proxy, the injector (pod annotations, chart values) and the local
//! mesh (its file), so a value one accepts the others accept.

/// The share of new traces sampled when nothing says otherwise: 1 %.
pub const DEFAULT_SAMPLING: f64 = 0.01;

/// `host:port` or `http://host:port` → `http://host:port`, the collector's
/// OTLP/gRPC endpoint. The proxy speaks plaintext gRPC to it (usually a
/// node-local agent): `https://` is refused rather than silently ignored.
pub fn parse_collector(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.starts_with("https://") {
        return Err("TLS to the collector is not supported: use http://host:port".into());
    }
    let rest = s.strip_prefix("http://").unwrap_or(s);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let bad = || "must be host:port (the collector's OTLP/gRPC port, usually 4317)".to_string();
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && !host.contains(['/', '@', '?', '#', ' '])
        && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(format!("http://{host}:{port}")),
        _ => Err(bad()),
    }
}

/// A sampling ratio: a number from 0 to 1.
pub fn parse_sampling(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("must be a number from 0 to 1 (e.g. 0.01 for 1 %)".into()),
    }
}
