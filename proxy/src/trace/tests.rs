use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::header::HeaderValue;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use proptest::prelude::*;

use super::context::*;
use super::*;
use crate::metrics::Label;

const APP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(flags: &str) -> String {
    format!("00-{APP_TRACE}-{APP_SPAN}-{flags}")
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn traceparent_is_read() {
    let e = parse_traceparent(traceparent("01").as_bytes()).unwrap();
    let p = e.parent.unwrap();
    assert_eq!(p.trace_id.to_string(), APP_TRACE);
    assert_eq!(p.span_id.to_string(), APP_SPAN);
    assert_eq!(e.sampled, Some(true));
    assert_eq!(e.format, Some(Format::W3c));
    let e = parse_traceparent(traceparent("00").as_bytes()).unwrap();
    assert_eq!(e.sampled, Some(false));
    // Other flag bits are not "sampled".
    let e = parse_traceparent(traceparent("02").as_bytes()).unwrap();
    assert_eq!(e.sampled, Some(false));
}

#[test]
fn bad_traceparents_are_ignored() {
    let zeros_trace = format!("00-{}-{APP_SPAN}-01", "0".repeat(32));
    let zeros_span = format!("00-{APP_TRACE}-{}-01", "0".repeat(16));
    let upper = traceparent("01").to_uppercase();
    let ff = format!("ff-{APP_TRACE}-{APP_SPAN}-01");
    let v00_longer = format!("{}-extra", traceparent("01"));
    let short = &traceparent("01")[..54];
    let bad_dash = traceparent("01").replace('-', "_");
    for bad in [
        zeros_trace.as_str(),
        &zeros_span,
        &upper,
        &ff,
        &v00_longer,
        short,
        &bad_dash,
        "",
    ] {
        assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad:?}");
    }
    // A later version may add fields after a '-'.
    let v01 = format!("01-{APP_TRACE}-{APP_SPAN}-01-whatever");
    assert!(parse_traceparent(v01.as_bytes()).is_some());
    let v01_glued = format!("01-{APP_TRACE}-{APP_SPAN}-01x");
    assert!(parse_traceparent(v01_glued.as_bytes()).is_none());
}

#[test]
fn b3_single_is_read() {
    let e = parse_b3_single(format!("{APP_TRACE}-{APP_SPAN}-1").as_bytes()).unwrap();
    assert_eq!(e.parent.unwrap().trace_id.to_string(), APP_TRACE);
    assert_eq!(e.sampled, Some(true));
    // 64-bit trace ids are padded; the decision may be deferred.
    let e = parse_b3_single(format!("a3ce929d0e0e4736-{APP_SPAN}").as_bytes()).unwrap();
    assert_eq!(
        e.parent.unwrap().trace_id.to_string(),
        "0000000000000000a3ce929d0e0e4736"
    );
    assert_eq!(e.sampled, None);
    let e = parse_b3_single(format!("{APP_TRACE}-{APP_SPAN}-d-{APP_SPAN}").as_bytes()).unwrap();
    assert_eq!(e.sampled, Some(true));
    // A bare decision.
    let e = parse_b3_single(b"0").unwrap();
    assert_eq!((e.parent, e.sampled), (None, Some(false)));
    for bad in [
        format!("{APP_TRACE}-{APP_SPAN}-x"),
        format!("{APP_TRACE}-{APP_SPAN}-1-{APP_SPAN}-1"),
        APP_TRACE.to_string(),
        "abc-def".to_string(),
    ] {
        assert_eq!(parse_b3_single(bad.as_bytes()), None, "{bad:?}");
    }
}

#[test]
fn b3_multi_is_read() {
    let e = parse_b3_multi(
        Some(APP_TRACE.as_bytes()),
        Some(APP_SPAN.as_bytes()),
        Some(b"1"),
        None,
    )
    .unwrap();
    assert_eq!(e.parent.unwrap().span_id.to_string(), APP_SPAN);
    assert_eq!((e.sampled, e.format), (Some(true), Some(Format::B3Multi)));
    let debug = parse_b3_multi(None, None, None, Some(b"1")).unwrap();
    assert_eq!((debug.parent, debug.sampled), (None, Some(true)));
    let no = parse_b3_multi(None, None, Some(b"false"), None).unwrap();
    assert_eq!(no.sampled, Some(false));
    assert_eq!(parse_b3_multi(None, None, None, None), None);
    assert_eq!(
        parse_b3_multi(Some(b"xyz"), Some(APP_SPAN.as_bytes()), None, None),
        None
    );
}

#[test]
fn w3c_wins_over_b3() {
    let other = "11111111111111111111111111111111";
    let h = headers(&[
        ("traceparent", &traceparent("01")),
        ("b3", &format!("{other}-{APP_SPAN}-0")),
    ]);
    let e = extract(&h);
    assert_eq!(e.format, Some(Format::W3c));
    assert_eq!(e.parent.unwrap().trace_id.to_string(), APP_TRACE);
    // A broken traceparent falls back to B3.
    let h = headers(&[
        ("traceparent", "00-garbage"),
        ("x-b3-traceid", other),
        ("x-b3-spanid", APP_SPAN),
    ]);
    let e = extract(&h);
    assert_eq!(e.format, Some(Format::B3Multi));
    assert_eq!(e.parent.unwrap().trace_id.to_string(), other);
    assert_eq!(extract(&HeaderMap::new()), Extracted::default());
}

proptest! {
    #[test]
    fn traceparent_round_trips(trace in any::<[u8; 16]>(), span in any::<[u8; 8]>(), sampled in any::<bool>()) {
        prop_assume!(trace != [0; 16] && span != [0; 8]);
        let v = format_traceparent(TraceId(trace), SpanId(span), sampled);
        let e = parse_traceparent(v.as_bytes()).unwrap();
        prop_assert_eq!(e.parent, Some(Parent { trace_id: TraceId(trace), span_id: SpanId(span) }));
        prop_assert_eq!(e.sampled, Some(sampled));
        let b3 = format_b3(TraceId(trace), SpanId(span), sampled);
        let e = parse_b3_single(b3.as_bytes()).unwrap();
        prop_assert_eq!(e.parent, Some(Parent { trace_id: TraceId(trace), span_id: SpanId(span) }));
        prop_assert_eq!(e.sampled, Some(sampled));
    }

    /// Untrusted bytes never panic a parser.
    #[test]
    fn parsers_take_any_bytes(v in proptest::collection::vec(any::<u8>(), 0..80)) {
        let _ = parse_traceparent(&v);
        let _ = parse_b3_single(&v);
        let _ = parse_b3_multi(Some(&v), Some(&v), Some(&v), Some(&v));
    }

    #[test]
    fn ratio_is_about_right(seed in any::<u64>()) {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = 4000;
        let hits = (0..n).filter(|_| ratio_samples(TraceId(rng.random()), 0.25)).count();
        prop_assert!((800..1200).contains(&hits), "{hits} of {n}");
    }
}

#[test]
fn ratio_edges() {
    let id = TraceId([0xff; 16]);
    assert!(ratio_samples(id, 1.0));
    assert!(!ratio_samples(TraceId([1; 16]), 0.0));
    assert!(!ratio_samples(id, 0.999));
}

#[test]
fn collector_and_sampling_settings() {
    assert_eq!(
        parse_collector("jaeger:4317").unwrap(),
        "http://jaeger:4317"
    );
    assert_eq!(
        parse_collector("http://10.0.0.1:4317/").unwrap(),
        "http://10.0.0.1:4317"
    );
    for bad in [
        "jaeger",
        "https://jaeger:4317",
        "http://j:4317/v1/traces",
        ":4317",
    ] {
        assert!(parse_collector(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse_collector("[fd77::1]:4317").unwrap(),
        "http://[fd77::1]:4317"
    );
    assert_eq!(parse_sampling("0.5"), Ok(0.5));
    for bad in ["-0.1", "1.5", "1%", "NaN"] {
        assert!(parse_sampling(bad).is_err(), "{bad}");
    }
}

/// Spans an exporter was given; fails every export when `fail`.
#[derive(Debug, Clone, Default)]
struct Collected {
    spans: Arc<Mutex<Vec<SpanData>>>,
    fail: bool,
}

impl SpanExporter for Collected {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if self.fail {
            return Err(OTelSdkError::InternalFailure("collector down".into()));
        }
        self.spans.lock().unwrap().extend(batch);
        Ok(())
    }
}

fn dst() -> OrigDstAddr {
    OrigDstAddr::from("10.96.0.10:80".parse::<SocketAddr>().unwrap())
}

fn labels(direction: Direction, peer: &str) -> RouteLabels {
    RouteLabels {
        direction,
        service: Label::new("web.demo.svc.cluster.local:80"),
        route: Label::new("web-route"),
        tls: true,
        peer: Label::new(peer),
    }
}

fn request(pairs: &[(&str, &str)]) -> http::Request<()> {
    let mut req = http::Request::get("/items?id=1").body(()).unwrap();
    *req.headers_mut() = headers(pairs);
    req
}

const OK: Outcome = Outcome {
    status: 200,
    grpc_status: None,
    failed: false,
    error: None,
};

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

async fn wait_for(spans: &Collected, n: usize) -> Vec<SpanData> {
    for _ in 0..200 {
        if spans.spans.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    spans.spans.lock().unwrap().clone()
}

#[test]
fn off_touches_nothing() {
    let tracing = Tracing::off();
    let req = request(&[("traceparent", &traceparent("01"))]);
    let span = tracing.request(Direction::Outbound, dst(), &req);
    assert!(span.trace_id().is_none());
    let mut h = req.headers().clone();
    span.inject(&mut h);
    assert_eq!(&h, req.headers());
    span.end(&labels(Direction::Outbound, ""), OK);
    // The empty variant is what the request path carries when off.
    assert!(std::mem::size_of::<RequestSpan>() <= 32);
}

/// The application's span → the outbound proxy's CLIENT span → the
/// inbound proxy's SERVER span, in one trace.
#[tokio::test(start_paused = false)]
async fn client_and_server_spans_continue_the_callers_trace() {
    let shutdown = Shutdown::new();
    let spans = Collected::default();
    let metrics = TraceMetrics::default();
    let tracing = Tracing::with_exporter(spans.clone(), 0.0, metrics.clone(), &shutdown);

    let app = request(&[("traceparent", &traceparent("01")), ("tracestate", "k=v")]);
    let client = CONN
        .scope(
            ConnFacts {
                id: 7,
                client: ClientAddr("10.77.0.5:40000".parse().unwrap()),
            },
            async { tracing.request(Direction::Outbound, dst(), &app) },
        )
        .await;
    assert!(client.is_recording());
    let mut upstream = app.headers().clone();
    client.inject(&mut upstream);
    assert_eq!(upstream["tracestate"], "k=v");
    let forwarded = extract(&upstream);
    assert_eq!(forwarded.parent.unwrap().trace_id.to_string(), APP_TRACE);
    assert_ne!(forwarded.parent.unwrap().span_id.to_string(), APP_SPAN);

    let mut inbound_req = request(&[]);
    *inbound_req.headers_mut() = upstream;
    let server = tracing.request(Direction::Inbound, dst(), &inbound_req);
    let mut to_app = inbound_req.headers().clone();
    server.inject(&mut to_app);

    client.end(
        &labels(Direction::Outbound, "spiffe://cluster.local/ns/demo/sa/web"),
        OK,
    );
    server.end(
        &labels(
            Direction::Inbound,
            "spiffe://cluster.local/ns/demo/sa/client",
        ),
        Outcome {
            status: 503,
            grpc_status: None,
            failed: true,
            error: Some(("no_endpoints", "upstream")),
        },
    );
    let got = wait_for(&spans, 2).await;
    assert_eq!(got.len(), 2);
    let (c, s) = (&got[0], &got[1]);
    assert_eq!(c.span_kind, SpanKind::Client);
    assert_eq!(s.span_kind, SpanKind::Server);
    assert_eq!(c.span_context.trace_id().to_string(), APP_TRACE);
    assert_eq!(s.span_context.trace_id().to_string(), APP_TRACE);
    assert_eq!(c.parent_span_id.to_string(), APP_SPAN);
    assert_eq!(s.parent_span_id, c.span_context.span_id());
    assert_eq!(
        extract(&to_app).parent.unwrap().span_id.0,
        s.span_context.span_id().to_bytes()
    );
    assert_eq!(c.name, "GET web-route");
    assert_eq!(attr(c, "trellis.route").as_deref(), Some("web-route"));
    assert_eq!(
        attr(c, "trellis.peer.identity").as_deref(),
        Some("spiffe://cluster.local/ns/demo/sa/web")
    );
    assert_eq!(attr(c, "client.address").as_deref(), Some("10.77.0.5"));
    assert_eq!(attr(c, "trellis.connection.id").as_deref(), Some("7"));
    assert_eq!(attr(c, "url.path").as_deref(), Some("/items"));
    // A failure the proxy answered names its reason and whose fault it was.
    assert_eq!(attr(s, "error.type").as_deref(), Some("no_endpoints"));
    assert_eq!(attr(s, "trellis.error.fault").as_deref(), Some("upstream"));
    assert_eq!(attr(c, "error.type"), None);
    assert!(matches!(s.status, Status::Error { .. }));
    assert_eq!(metrics.exported.get(), 2);
}

#[tokio::test]
async fn unsampled_requests_record_nothing_and_say_so() {
    let shutdown = Shutdown::new();
    let spans = Collected::default();
    let tracing = Tracing::with_exporter(spans.clone(), 0.0, TraceMetrics::default(), &shutdown);
    // The caller said no: its traceparent passes as it is.
    let req = request(&[("traceparent", &traceparent("00"))]);
    let span = tracing.request(Direction::Outbound, dst(), &req);
    assert!(!span.is_recording());
    let mut h = req.headers().clone();
    span.inject(&mut h);
    assert_eq!(&h, req.headers());
    // No context, ratio 0: a new trace, not sampled, said downstream.
    let req = request(&[]);
    let span = tracing.request(Direction::Outbound, dst(), &req);
    let mut h = HeaderMap::new();
    span.inject(&mut h);
    let e = extract(&h);
    assert_eq!(e.sampled, Some(false));
    assert_eq!(e.parent.map(|p| p.trace_id), span.trace_id());
    span.end(&labels(Direction::Outbound, ""), OK);
    // B3 "sampled" is honoured even at ratio 0, and answered in B3.
    let req = request(&[
        ("x-b3-traceid", APP_TRACE),
        ("x-b3-spanid", APP_SPAN),
        ("x-b3-sampled", "1"),
    ]);
    let span = tracing.request(Direction::Outbound, dst(), &req);
    assert!(span.is_recording());
    let mut h = req.headers().clone();
    span.inject(&mut h);
    assert!(h.get("x-b3-spanid").is_none());
    let b3 = parse_b3_single(h["b3"].as_bytes()).unwrap();
    assert_eq!(b3.parent, extract(&h).parent);
    assert_eq!(b3.parent.unwrap().trace_id.to_string(), APP_TRACE);
}

#[tokio::test]
async fn a_collector_that_fails_costs_counted_drops() {
    let shutdown = Shutdown::new();
    let spans = Collected {
        fail: true,
        ..Default::default()
    };
    let metrics = TraceMetrics::default();
    let tracing = Tracing::with_exporter(spans, 1.0, metrics.clone(), &shutdown);
    for _ in 0..3 {
        let span = tracing.request(Direction::Inbound, dst(), &request(&[]));
        span.end(&labels(Direction::Inbound, ""), OK);
    }
    let dropped = || {
        metrics
            .dropped
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: "export_failed",
            })
            .get()
    };
    for _ in 0..200 {
        if dropped() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dropped(), 3);
    assert_eq!(metrics.exported.get(), 0);
}

/// An exporter that never answers: the queue fills, and pushing into it
/// still returns at once.
#[derive(Debug)]
struct Stuck;

impl SpanExporter for Stuck {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_full_queue_drops_without_waiting() {
    let shutdown = Shutdown::new();
    let metrics = TraceMetrics::default();
    let queue = export::start(Stuck, 4, metrics.clone(), &shutdown);
    let tracing = Tracing::with_exporter(Collected::default(), 1.0, metrics.clone(), &shutdown);
    let span = || {
        let Span::Recording(r) = tracing.request(Direction::Inbound, dst(), &request(&[])).0 else {
            panic!("sampled at ratio 1");
        };
        r.span_data(&labels(Direction::Inbound, ""), OK, SystemTime::now())
    };
    // The exporter takes the first batch and hangs; 4 more fill the queue.
    queue.push(span());
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..10 {
        queue.push(span());
    }
    let full = metrics
        .dropped
        .get_or_create(&crate::metrics::ReasonLabels {
            reason: "queue_full",
        })
        .get();
    assert_eq!(full, 6);
}
