//! Kubelet's probes, sent from the node: one attempt ([`probe`]: HTTP GET,
//! TCP connect or gRPC health check, within `timeoutSeconds`) and what a
//! run of attempts adds up to ([`ProbeState`], pure).
//!
//! Exec probes run a command in the container, which only the caller
//! knows how to do: [`action`] says which kind a probe is, so the caller
//! runs `Exec` itself (within [`timeout`]) and records its exit status in
//! the same [`ProbeState`].
//!
//! Failure reasons are worded as kubelet words them, so that events and
//! statuses read the same as on any cluster.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, ACCEPT, CONNECTION, HOST, USER_AGENT};
use http::{HeaderMap, Request};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, GRPCAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// What kubelet 1.37 sends as `User-Agent`.
pub const PROBE_USER_AGENT: &str = "kube-probe/1.37";

/// Defaults of the Probe fields left out.
const DEFAULT_TIMEOUT_SECONDS: i32 = 1;
const DEFAULT_PERIOD_SECONDS: i32 = 10;
const DEFAULT_SUCCESS_THRESHOLD: i32 = 1;
const DEFAULT_FAILURE_THRESHOLD: i32 = 3;

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Why, as kubelet says it: `HTTP probe failed with statuscode: 503`.
    Failure(String),
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }
}

/// Who runs a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// HTTP GET, TCP or gRPC: sent from the node by [`probe`].
    Network,
    /// A command run in the container, by the caller; exit status 0 is
    /// success.
    Exec(&'a [String]),
}

/// Which kind of probe `p` is (a probe without a handler counts as
/// `Network`, and [`probe`] fails it).
pub fn action(p: &Probe) -> Action<'_> {
    match p.exec.as_ref().and_then(|e| e.command.as_deref()) {
        Some(command) if p.http_get.is_none() && p.tcp_socket.is_none() && p.grpc.is_none() => {
            Action::Exec(command)
        }
        _ => Action::Network,
    }
}

/// How long one attempt may take: `timeoutSeconds`, 1 s when absent.
pub fn timeout(p: &Probe) -> Duration {
    seconds(p.timeout_seconds, DEFAULT_TIMEOUT_SECONDS, 1)
}

/// Sends one attempt of network probe `p` to the pod at `pod_ip`, whose
/// `container` names its ports. An exec probe ([`Action::Exec`]) is not
/// sent from here: it fails, saying so.
pub async fn probe(p: &Probe, pod_ip: IpAddr, container: &Container) -> Outcome {
    let deadline = Instant::now() + timeout(p);
    if let Some(h) = &p.http_get {
        http_get(h, pod_ip, container, deadline).await
    } else if let Some(t) = &p.tcp_socket {
        tcp_socket(t, pod_ip, container, deadline).await
    } else if let Some(g) = &p.grpc {
        grpc(g, pod_ip, deadline, timeout(p)).await
    } else if p.exec.is_some() {
        Outcome::Failure("exec probes run in the container: not sent from the node".into())
    } else {
        Outcome::Failure("missing probe handler".into())
    }
}

// ---- HTTP ----

async fn http_get(
    h: &HTTPGetAction,
    pod_ip: IpAddr,
    container: &Container,
    deadline: Instant,
) -> Outcome {
    let port = match resolve_port(&h.port, container) {
        Ok(p) => p,
        Err(e) => return Outcome::Failure(e),
    };
    let https = match h.scheme.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("HTTP") => false,
        Some("HTTPS") => true,
        Some(other) => return Outcome::Failure(format!("unsupported scheme {other:?}")),
    };
    let host = target_host(h.host.as_deref(), pod_ip);
    let authority = join_host_port(&host, port);
    let path = match h.path.as_deref().unwrap_or("") {
        p if p.starts_with('/') => p.to_string(),
        p => format!("/{p}"),
    };
    let url = format!(
        "{}://{authority}{path}",
        if https { "https" } else { "http" }
    );
    let request = match request(&path, &authority, h) {
        Ok(r) => r,
        Err(e) => return Outcome::Failure(format!("Get {url:?}: {e}")),
    };
    let attempt = async {
        let tcp = TcpStream::connect(&authority)
            .await
            .map_err(|e| dial_error(&authority, &e))?;
        if https {
            let tls = tls_handshake(&host, tcp).await?;
            exchange(tls, request).await
        } else {
            exchange(tcp, request).await
        }
    };
    match timeout_at(deadline, attempt).await {
        Err(_) => Outcome::Failure(format!(
            "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
        Ok(Err(e)) => Outcome::Failure(format!("Get {url:?}: {e}")),
        // 3xx counts, and is not followed: kubelet follows redirects only
        // to the same host, and calls one elsewhere a success.
        Ok(Ok(status)) if (200..400).contains(&status) => Outcome::Success,
        Ok(Ok(status)) => Outcome::Failure(format!("HTTP probe failed with statuscode: {status}")),
    }
}

/// The GET: kubelet's headers (`Host`, `User-Agent`, `Accept`, and
/// `Connection: close`), each replaced by `httpHeaders` of that name.
fn request(
    path: &str,
    authority: &str,
    h: &HTTPGetAction,
) -> Result<Request<Empty<Bytes>>, String> {
    let mut headers = HeaderMap::new();
    let value =
        |v: &str| HeaderValue::from_str(v).map_err(|_| format!("invalid header value {v:?}"));
    headers.insert(HOST, value(authority)?);
    headers.insert(USER_AGENT, HeaderValue::from_static(PROBE_USER_AGENT));
    headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    let mut custom = HeaderMap::new();
    for header in h.http_headers.iter().flatten() {
        let name = HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", header.name))?;
        custom.append(name, value(&header.value)?);
    }
    // `extend` replaces every value of a name `custom` has.
    headers.extend(custom);
    let mut request = Request::get(path)
        .body(Empty::new())
        .map_err(|e| format!("invalid path {path:?}: {e}"))?;
    *request.headers_mut() = headers;
    Ok(request)
}

/// One HTTP/1.1 exchange on `io`: the response's status code.
async fn exchange<IO>(io: IO, request: Request<Empty<Bytes>>) -> Result<u16, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        response = sender.send_request(request) => {
            response.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
        }
        // The connection's own error, when it fails before a response.
        Err(e) = &mut conn => Err(e.to_string()),
    }
}

/// TLS as kubelet speaks it to probes: any certificate is accepted
/// (`InsecureSkipVerify`), though the handshake's signatures are checked.
async fn tls_handshake(
    host: &str,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("tls: {e}"))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))
}

#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ---- TCP ----

async fn tcp_socket(
    t: &TCPSocketAction,
    pod_ip: IpAddr,
    container: &Container,
    deadline: Instant,
) -> Outcome {
    let port = match resolve_port(&t.port, container) {
        Ok(p) => p,
        Err(e) => return Outcome::Failure(e),
    };
    let addr = join_host_port(&target_host(t.host.as_deref(), pod_ip), port);
    match timeout_at(deadline, TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => Outcome::Success,
        Ok(Err(e)) => Outcome::Failure(dial_error(&addr, &e)),
        Err(_) => Outcome::Failure(format!("dial tcp {addr}: i/o timeout")),
    }
}

// ---- gRPC ----

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(enumeration = "ServingStatus", tag = "1")]
    status: i32,
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
enum ServingStatus {
    Unknown = 0,
    Serving = 1,
    NotServing = 2,
    ServiceUnknown = 3,
}

impl ServingStatus {
    /// As the proto names it.
    fn name(status: i32) -> String {
        match ServingStatus::try_from(status) {
            Ok(ServingStatus::Unknown) => "UNKNOWN".into(),
            Ok(ServingStatus::Serving) => "SERVING".into(),
            Ok(ServingStatus::NotServing) => "NOT_SERVING".into(),
            Ok(ServingStatus::ServiceUnknown) => "SERVICE_UNKNOWN".into(),
            Err(_) => status.to_string(),
        }
    }
}

const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// `grpc.health.v1.Health/Check` over plaintext HTTP/2 to the pod IP.
async fn grpc(g: &GRPCAction, pod_ip: IpAddr, deadline: Instant, timeout: Duration) -> Outcome {
    let within = go_duration(timeout);
    let Some(port) = valid_port(g.port) else {
        return Outcome::Failure(format!("invalid port number: {}", g.port));
    };
    let addr = SocketAddr::new(pod_ip, port);
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e,
        Err(e) => return Outcome::Failure(format!("failed to connect service {addr}: {e}")),
    };
    let channel = match timeout_at(deadline, endpoint.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Outcome::Failure(format!(
                "failed to connect service \"{addr}\": {}",
                with_sources(&e)
            ))
        }
        Err(_) => {
            return Outcome::Failure(format!(
                "timeout: failed to connect service \"{addr}\" within {within}: context deadline exceeded"
            ))
        }
    };
    let mut client = tonic::client::Grpc::new(channel);
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: g.service.clone().unwrap_or_default(),
    });
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    let call = async {
        client
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(with_sources(&e)))?;
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
        let path = http::uri::PathAndQuery::from_static(HEALTH_CHECK);
        client.unary(request, path, codec).await
    };
    let timed_out = || {
        Outcome::Failure(format!(
            "timeout: health rpc did not complete within {within}"
        ))
    };
    match timeout_at(deadline, call).await {
        Err(_) => timed_out(),
        Ok(Err(s)) if is_timeout(&s) => timed_out(),
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => Outcome::Failure(format!(
            "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
            s.message()
        )),
        Ok(Err(s)) => Outcome::Failure(format!(
            "error: health rpc probe failed: rpc error: code = {:?} desc = {}",
            s.code(),
            s.message()
        )),
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32 => Outcome::Success,
        Ok(Ok(r)) => Outcome::Failure(format!(
            "service unhealthy (responded with {:?})",
            ServingStatus::name(r.get_ref().status)
        )),
    }
}

/// The server's `DEADLINE_EXCEEDED`, or tonic's own enforcement of the
/// request's timeout (`CANCELLED`, "Timeout expired").
fn is_timeout(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::DeadlineExceeded
        || (s.code() == tonic::Code::Cancelled
            && s.message() == tonic::TimeoutExpired(()).to_string())
}

// ---- Shared by the three ----

/// A port given by number or by the name of one of `container`'s ports
/// (or a number in a string), as kubelet resolves it.
fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            let named = container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port);
            match named.or_else(|| name.parse().ok()) {
                Some(n) => n,
                None => {
                    return Err(format!(
                        "couldn't find port: {name} in container {:?}",
                        container.name
                    ))
                }
            }
        }
    };
    valid_port(number).ok_or_else(|| format!("invalid port number: {number}"))
}

fn valid_port(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// `host`, or the pod's IP when it is absent or empty.
fn target_host(host: Option<&str>, pod_ip: IpAddr) -> String {
    match host {
        Some(h) if !h.is_empty() => h.to_string(),
        _ => pod_ip.to_string(),
    }
}

/// `host:port`, with an IPv6 address in brackets.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Go's words for a failed connect: `dial tcp 10.0.0.5:8080: connect:
/// connection refused`.
fn dial_error(addr: &str, e: &io::Error) -> String {
    let reason = match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::ConnectionReset => "connection reset by peer".to_string(),
        io::ErrorKind::NetworkUnreachable => "network is unreachable".to_string(),
        io::ErrorKind::HostUnreachable => "no route to host".to_string(),
        _ => e.to_string(),
    };
    format!("dial tcp {addr}: connect: {reason}")
}

/// An error and its causes: `transport error: Connection refused (os error 111)`.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// As Go prints a whole number of seconds: `1s`, `1m30s`.
fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{}h{}m{}s", s / 3600, s % 3600 / 60, s % 60)
    }
}

/// `field` seconds, `default` when absent, at least `min`.
fn seconds(field: Option<i32>, default: i32, min: i32) -> Duration {
    let s = field.unwrap_or(default).max(min);
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

// ---- The verdict of a run of attempts ----

/// What a probe decides about its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has the container started? Until it has, the others do not run;
    /// when it fails, the container is restarted.
    Startup,
    /// Is the container ready for traffic (its pod's endpoints)?
    Readiness,
    /// Is the container still alive? When it fails, it is restarted.
    Liveness,
}

/// One probe of one container, as kubelet's probe worker keeps it: a
/// verdict changes after `successThreshold` successes or
/// `failureThreshold` failures in a row. Pure: the caller waits
/// [`ProbeState::initial_delay`] after the container starts, then sends an
/// attempt every [`ProbeState::period`] while [`ProbeState::is_running`],
/// and records each.
///
/// The verdict (`Some(true)` passing, `Some(false)` failing, `None`
/// unknown) starts as: `Some(false)` for readiness (not ready), `Some(true)`
/// for liveness (not failed), `None` for startup (not started). What the
/// caller does on a change:
///
/// | kind      | `Some(true)`           | `Some(false)`         |
/// |-----------|------------------------|-----------------------|
/// | startup   | started: run the rest  | restart the container |
/// | readiness | ready                  | not ready             |
/// | liveness  | —                      | restart the container |
///
/// After a startup verdict, and after a liveness failure, the probe stops
/// ([`ProbeState::is_running`] turns false; `record` ignores results): a
/// restarted container gets a new `ProbeState`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeState {
    kind: Kind,
    initial_delay: Duration,
    period: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    verdict: Option<bool>,
    /// The last result and how many times in a row it came.
    last: Option<bool>,
    run: u32,
    running: bool,
}

impl ProbeState {
    /// The state of probe `p` of kind `kind`, for a container just started.
    pub fn new(kind: Kind, p: &Probe) -> Self {
        let threshold = |field: Option<i32>, default| {
            u32::try_from(field.unwrap_or(default).max(1)).unwrap_or(1)
        };
        ProbeState {
            kind,
            initial_delay: seconds(p.initial_delay_seconds, 0, 0),
            period: seconds(p.period_seconds, DEFAULT_PERIOD_SECONDS, 1),
            success_threshold: threshold(p.success_threshold, DEFAULT_SUCCESS_THRESHOLD),
            failure_threshold: threshold(p.failure_threshold, DEFAULT_FAILURE_THRESHOLD),
            verdict: match kind {
                Kind::Startup => None,
                Kind::Readiness => Some(false),
                Kind::Liveness => Some(true),
            },
            last: None,
            run: 0,
            running: true,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// `initialDelaySeconds` (0 when absent).
    pub fn initial_delay(&self) -> Duration {
        self.initial_delay
    }

    /// `periodSeconds` (10 s when absent).
    pub fn period(&self) -> Duration {
        self.period
    }

    pub fn verdict(&self) -> Option<bool> {
        self.verdict
    }

    /// Whether the caller should keep sending attempts.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Records one attempt; returns the new verdict when it changes.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if !self.running {
            return None;
        }
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let threshold = if ok {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run < threshold || self.verdict == Some(ok) {
            return None;
        }
        self.verdict = Some(ok);
        if self.kind == Kind::Startup || (self.kind == Kind::Liveness && !ok) {
            self.running = false;
        }
        Some(ok)
    }
}

#[cfg(test)]
mod tests;
