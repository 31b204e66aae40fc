// Tests: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::LOCATION;
use http::StatusCode;
use http_body_util::Full;
use hyper::service::service_fn;
use rustls::pki_types::PrivateKeyDer;
use serde_json::json;
use tokio::net::TcpListener;

use super::*;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn probe_of(v: serde_json::Value) -> Probe {
    serde_json::from_value(v).unwrap()
}

fn container(ports: serde_json::Value) -> Container {
    serde_json::from_value(json!({"name": "app", "ports": ports})).unwrap()
}

fn failure(o: Outcome) -> String {
    match o {
        Outcome::Failure(why) => why,
        Outcome::Success => panic!("expected a failure"),
    }
}

async fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `/status/<code>` answers `code` (302 with a `Location` elsewhere);
/// `/headers` answers 200 when kubelet's and the probe's headers came,
/// 400 when not.
async fn answer(
    req: Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let h = req.headers();
    let code = match req.uri().path() {
        "/headers" => {
            let custom: Vec<&HeaderValue> = h.get_all("x-custom").iter().collect();
            let ok = h[USER_AGENT] == PROBE_USER_AGENT
                && h[ACCEPT] == "*/*"
                && h[HOST] == "probe.example"
                && custom == ["a", "b"];
            if ok {
                200
            } else {
                400
            }
        }
        p => p
            .strip_prefix("/status/")
            .and_then(|c| c.parse().ok())
            .unwrap_or(404),
    };
    let mut response = http::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    if code == 302 {
        let elsewhere = HeaderValue::from_static("http://192.0.2.1/elsewhere");
        response.headers_mut().insert(LOCATION, elsewhere);
    }
    Ok(response)
}

async fn serve<IO>(io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service_fn(answer))
        .await;
}

/// An HTTP/1.1 server of [`answer`]s on 127.0.0.1; its port.
async fn http_server() -> u16 {
    let (l, port) = listener().await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(serve(tcp));
        }
    });
    port
}

/// The same over TLS, with a self-signed certificate.
async fn https_server() -> u16 {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![key.cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (l, port) = listener().await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    serve(tls).await;
                }
            });
        }
    });
    port
}

fn http_probe(port: serde_json::Value, path: &str) -> Probe {
    probe_of(json!({"httpGet": {"port": port, "path": path}}))
}

#[tokio::test]
async fn http_probes_succeed_below_400_and_fail_with_the_status_code() {
    let port = http_server().await;
    let app = container(json!([]));
    for (path, expected) in [
        ("/status/200", Outcome::Success),
        ("/status/204", Outcome::Success),
        // A redirect counts as success, and is not followed.
        ("/status/302", Outcome::Success),
        (
            "/status/503",
            Outcome::Failure("HTTP probe failed with statuscode: 503".into()),
        ),
        (
            "status/404",
            Outcome::Failure("HTTP probe failed with statuscode: 404".into()),
        ),
    ] {
        let got = probe(&http_probe(json!(port), path), LOCAL, &app).await;
        assert_eq!(got, expected, "{path}");
    }
}

#[tokio::test]
async fn http_probes_send_kubelets_headers_and_their_own() {
    let port = http_server().await;
    let p = probe_of(json!({"httpGet": {
        "port": port,
        "path": "/headers",
        "httpHeaders": [
            {"name": "Host", "value": "probe.example"},
            {"name": "X-Custom", "value": "a"},
            {"name": "x-custom", "value": "b"},
        ],
    }}));
    assert_eq!(
        probe(&p, LOCAL, &container(json!([]))).await,
        Outcome::Success
    );
}

#[tokio::test]
async fn ports_are_numbers_or_the_containers_port_names() {
    let port = http_server().await;
    let app = container(json!([
        {"name": "metrics", "containerPort": 1},
        {"name": "http", "containerPort": port},
    ]));
    let by_name = http_probe(json!("http"), "/status/200");
    assert_eq!(probe(&by_name, LOCAL, &app).await, Outcome::Success);
    let as_string = http_probe(json!(port.to_string()), "/status/200");
    assert_eq!(probe(&as_string, LOCAL, &app).await, Outcome::Success);

    let unknown = http_probe(json!("nope"), "/");
    let why = failure(probe(&unknown, LOCAL, &app).await);
    assert_eq!(why, "couldn't find port: nope in container \"app\"");
    let tcp_unknown = probe_of(json!({"tcpSocket": {"port": "nope"}}));
    assert!(failure(probe(&tcp_unknown, LOCAL, &app).await).starts_with("couldn't find port"));
    let zero = probe_of(json!({"tcpSocket": {"port": 0}}));
    assert_eq!(
        failure(probe(&zero, LOCAL, &app).await),
        "invalid port number: 0"
    );
}

#[tokio::test]
async fn https_probes_accept_a_self_signed_certificate() {
    let port = https_server().await;
    let app = container(json!([]));
    for (path, expected) in [
        ("/status/200", Outcome::Success),
        (
            "/status/500",
            Outcome::Failure("HTTP probe failed with statuscode: 500".into()),
        ),
    ] {
        let p = probe_of(json!({"httpGet": {"port": port, "path": path, "scheme": "HTTPS"}}));
        assert_eq!(probe(&p, LOCAL, &app).await, expected, "{path}");
    }
    // Plain HTTP to the TLS port fails; it does not hang.
    let plain = http_probe(json!(port), "/status/200");
    assert!(failure(probe(&plain, LOCAL, &app).await)
        .starts_with(&format!("Get \"http://127.0.0.1:{port}/status/200\": ")));
}

#[tokio::test]
async fn tcp_probes_succeed_when_a_connection_is_accepted() {
    let (_l, open) = listener().await;
    let closed = closed_port();
    let app = container(json!([]));
    let tcp = |port| probe_of(json!({"tcpSocket": {"port": port}}));
    assert_eq!(probe(&tcp(open), LOCAL, &app).await, Outcome::Success);
    assert_eq!(
        failure(probe(&tcp(closed), LOCAL, &app).await),
        format!("dial tcp 127.0.0.1:{closed}: connect: connection refused")
    );
    let http = http_probe(json!(closed), "/healthz");
    assert_eq!(
        failure(probe(&http, LOCAL, &app).await),
        format!("Get \"http://127.0.0.1:{closed}/healthz\": dial tcp 127.0.0.1:{closed}: connect: connection refused")
    );
}

#[tokio::test]
async fn probes_give_up_after_their_timeout() {
    // Connections complete in the kernel's backlog, and nobody answers.
    let (_l, silent) = listener().await;
    let app = container(json!([]));
    let http = probe_of(json!({"httpGet": {"port": silent}, "timeoutSeconds": 1}));
    let grpc = probe_of(json!({"grpc": {"port": silent}}));
    let started = Instant::now();
    let (http, grpc) = tokio::join!(probe(&http, LOCAL, &app), probe(&grpc, LOCAL, &app));
    let took = started.elapsed();
    assert_eq!(
        failure(http),
        format!("Get \"http://127.0.0.1:{silent}/\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)")
    );
    assert_eq!(
        failure(grpc),
        "timeout: health rpc did not complete within 1s"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

// ---- gRPC ----

/// `grpc.health.v1.Health`: `""` is SERVING, `"sick"` NOT_SERVING, any
/// other service unknown.
#[derive(Clone)]
struct Health;

impl tonic::server::NamedService for Health {
    const NAME: &'static str = "grpc.health.v1.Health";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Health {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let codec =
                tonic_prost::ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default();
            Ok(tonic::server::Grpc::new(codec).unary(Check, req).await)
        })
    }
}

struct Check;

impl tonic::codegen::Service<tonic::Request<HealthCheckRequest>> for Check {
    type Response = tonic::Response<HealthCheckResponse>;
    type Error = tonic::Status;
    type Future = std::future::Ready<Result<Self::Response, tonic::Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<HealthCheckRequest>) -> Self::Future {
        let status = match req.get_ref().service.as_str() {
            "" => ServingStatus::Serving,
            "sick" => ServingStatus::NotServing,
            _ => return std::future::ready(Err(tonic::Status::not_found("unknown service"))),
        };
        std::future::ready(Ok(tonic::Response::new(HealthCheckResponse {
            status: status as i32,
        })))
    }
}

async fn grpc_server() -> u16 {
    let (l, port) = listener().await;
    let incoming = tonic::transport::server::TcpIncoming::from(l);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Health)
            .serve_with_incoming(incoming),
    );
    port
}

#[tokio::test]
async fn grpc_probes_succeed_only_when_serving() {
    let port = grpc_server().await;
    let app = container(json!([]));
    let grpc =
        |service: Option<&str>| probe_of(json!({"grpc": {"port": port, "service": service}}));
    assert_eq!(probe(&grpc(None), LOCAL, &app).await, Outcome::Success);
    assert_eq!(
        failure(probe(&grpc(Some("sick")), LOCAL, &app).await),
        "service unhealthy (responded with \"NOT_SERVING\")"
    );
    assert_eq!(
        failure(probe(&grpc(Some("other")), LOCAL, &app).await),
        "error: health rpc probe failed: rpc error: code = NotFound desc = unknown service"
    );
    // A gRPC server without the health service.
    let http = http_server().await;
    let not_grpc = probe_of(json!({"grpc": {"port": http}}));
    assert!(!probe(&not_grpc, LOCAL, &app).await.is_success());

    let closed = closed_port();
    let nobody = probe_of(json!({"grpc": {"port": closed}}));
    let why = failure(probe(&nobody, LOCAL, &app).await);
    assert!(
        why.starts_with(&format!(
            "failed to connect service \"127.0.0.1:{closed}\": "
        )),
        "{why}"
    );
}

#[tokio::test]
async fn exec_probes_are_the_callers() {
    let exec = probe_of(json!({"exec": {"command": ["cat", "/tmp/healthy"]}}));
    let command = ["cat".to_string(), "/tmp/healthy".to_string()];
    assert_eq!(action(&exec), Action::Exec(&command));
    assert!(!probe(&exec, LOCAL, &container(json!([])))
        .await
        .is_success());
    assert_eq!(action(&http_probe(json!(80), "/")), Action::Network);
    let none = probe_of(json!({}));
    assert_eq!(
        probe(&none, LOCAL, &container(json!([]))).await,
        Outcome::Failure("missing probe handler".into())
    );
}

// ---- ProbeState ----

#[test]
fn defaults_and_durations() {
    let defaults = ProbeState::new(Kind::Readiness, &probe_of(json!({})));
    assert_eq!(defaults.initial_delay(), Duration::ZERO);
    assert_eq!(defaults.period(), Duration::from_secs(10));
    assert_eq!(timeout(&probe_of(json!({}))), Duration::from_secs(1));
    let given =
        probe_of(json!({"initialDelaySeconds": 5, "periodSeconds": 2, "timeoutSeconds": 3}));
    let state = ProbeState::new(Kind::Liveness, &given);
    assert_eq!(state.initial_delay(), Duration::from_secs(5));
    assert_eq!(state.period(), Duration::from_secs(2));
    assert_eq!(timeout(&given), Duration::from_secs(3));
    // Nonsense is raised to the least that makes sense.
    let zero =
        probe_of(json!({"periodSeconds": 0, "timeoutSeconds": -1, "initialDelaySeconds": -4}));
    let state = ProbeState::new(Kind::Readiness, &zero);
    assert_eq!(
        (state.period(), timeout(&zero)),
        (Duration::from_secs(1), Duration::from_secs(1))
    );
    assert_eq!(state.initial_delay(), Duration::ZERO);
}

#[test]
fn thresholds_decide_when_the_verdict_changes() {
    // Attempts (`+` success, `-` failure) and, after each, the change
    // `record` reports: `T` Some(true), `F` Some(false), `.` None.
    let cases = [
        (Kind::Readiness, json!({}), "+--+---+", "T.....FT"),
        (Kind::Readiness, json!({}), "---", "..."),
        (
            Kind::Readiness,
            json!({"successThreshold": 2, "failureThreshold": 1}),
            "+-++-",
            "...TF",
        ),
        (Kind::Liveness, json!({}), "--+---+-", ".....F.."),
        (Kind::Liveness, json!({"failureThreshold": 1}), "+-", ".F"),
        (Kind::Startup, json!({}), "--+-", "..T."),
        (Kind::Startup, json!({}), "---+", "..F."),
        (Kind::Startup, json!({"failureThreshold": 0}), "-", "F"),
    ];
    for (kind, fields, attempts, expected) in cases {
        let mut state = ProbeState::new(kind, &probe_of(fields.clone()));
        let got: String = attempts
            .chars()
            .map(|a| match state.record(a == '+') {
                Some(true) => 'T',
                Some(false) => 'F',
                None => '.',
            })
            .collect();
        assert_eq!(got, expected, "{kind:?} {fields} {attempts}");
    }
}

#[test]
fn verdicts_start_by_kind_and_stop_when_acted_on() {
    let p = probe_of(json!({"failureThreshold": 1}));
    let readiness = ProbeState::new(Kind::Readiness, &p);
    let liveness = ProbeState::new(Kind::Liveness, &p);
    let startup = ProbeState::new(Kind::Startup, &p);
    assert_eq!(readiness.verdict(), Some(false));
    assert_eq!(liveness.verdict(), Some(true));
    assert_eq!(startup.verdict(), None);

    // Readiness runs as long as the container does.
    let mut r = readiness;
    for ok in [true, false, true, false] {
        assert!(r.record(ok).is_some());
        assert!(r.is_running());
    }
    // Liveness stops at its failure; startup at either verdict.
    let mut l = liveness;
    assert_eq!(l.record(true), None);
    assert!(l.is_running());
    assert_eq!(l.record(false), Some(false));
    assert!(!l.is_running());
    assert_eq!(l.verdict(), Some(false));
    let mut s = startup.clone();
    assert_eq!(s.record(true), Some(true));
    assert!(!s.is_running());
    let mut s = startup;
    assert_eq!(s.record(false), Some(false));
    assert!(!s.is_running());
    assert_eq!(s.record(true), None);
    assert_eq!(s.verdict(), Some(false));
}
