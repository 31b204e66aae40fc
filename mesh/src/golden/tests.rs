use super::*;

const SCRAPE: &str = r#"# HELP trellis_http_requests Requests.
# TYPE trellis_http_requests counter
trellis_http_requests_total{direction="inbound",service="web.demo.svc.cluster.local:80",route="default",status_code="200",classification="success",tls="false",peer=""} 90
trellis_http_requests_total{direction="inbound",service="web.demo.svc.cluster.local:80",route="default",status_code="500",classification="failure",tls="false",peer=""} 10
trellis_http_requests_total{direction="outbound",service="api.demo.svc.cluster.local:80",route="default",status_code="200",classification="success",tls="false",peer=""} 7
trellis_http_requests_created{direction="inbound"} 1.7e9
# TYPE trellis_http_request_duration_seconds histogram
trellis_http_request_duration_seconds_bucket{direction="inbound",service="web",route="default",tls="false",peer="",le="0.0005"} 0
trellis_http_request_duration_seconds_bucket{direction="inbound",service="web",route="default",tls="false",peer="",le="0.001"} 50
trellis_http_request_duration_seconds_bucket{direction="inbound",service="web",route="default",tls="false",peer="",le="0.01"} 100
trellis_http_request_duration_seconds_bucket{direction="inbound",service="web",route="default",tls="false",peer="",le="+Inf"} 100
trellis_http_request_duration_seconds_sum{direction="inbound",service="web",route="default",tls="false",peer=""} 0.12
trellis_http_request_duration_seconds_count{direction="inbound",service="web",route="default",tls="false",peer=""} 100
trellis_tcp_connections_total{direction="inbound",peer="",tls="false"} 12 1700000000000
trellis_tcp_connections_total{direction="outbound",peer="",tls="false"} 3
trellis_tcp_bytes_total{direction="inbound",peer="spiffe://cluster.local/ns/demo/sa/client",tls="true"} 4096
process_open_fds 17
# EOF
"#;

#[test]
fn parses_prometheus_and_openmetrics_text() {
    let samples = parse(SCRAPE).unwrap();
    assert_eq!(samples.len(), 14);
    assert_eq!(samples[0].name, REQUESTS);
    assert_eq!(samples[0].label("status_code"), "200");
    assert_eq!(samples[0].label("peer"), "");
    assert_eq!(samples[0].label("missing"), "");
    assert_eq!(samples[0].value, 90.0);
    assert_eq!(samples[3].value, 1.7e9);
    assert_eq!(samples[7].label("le"), "+Inf");
    assert_eq!(samples[10].value, 12.0, "timestamp ignored");
    assert_eq!(samples[13].name, "process_open_fds");
    assert!(samples[13].labels.is_empty());
}

#[test]
fn parses_escapes_exemplars_and_specials() {
    let text = "m{a=\"x\\\"y\",b=\"back\\\\slash\",c=\"new\\nline\", d = \"}{,\" ,} +Inf\nn NaN\no{k=\"v\"} 3 # {trace_id=\"abc\"} 1.0 123\n";
    let s = parse(text).unwrap();
    assert_eq!(s[0].label("a"), "x\"y");
    assert_eq!(s[0].label("b"), "back\\slash");
    assert_eq!(s[0].label("c"), "new\nline");
    assert_eq!(s[0].label("d"), "}{,");
    assert!(s[0].value.is_infinite());
    assert!(s[1].value.is_nan());
    assert_eq!(s[2].value, 3.0);
}

#[test]
fn rejects_broken_lines_with_their_number() {
    let err = parse("ok 1\nbroken{a=\"x} 1\n").unwrap_err();
    assert_eq!(err.line, 2);
    assert!(err.reason.contains("unterminated"), "{err}");
    assert_eq!(parse("novalue\n").unwrap_err().line, 1);
    assert!(parse("m{a=x} 1").unwrap_err().reason.contains("not quoted"));
    assert!(parse("m 12abc").unwrap_err().reason.contains("bad value"));
}

#[test]
fn sums_one_direction() {
    let c = Counters::from_samples(&parse(SCRAPE).unwrap(), "inbound");
    assert_eq!(c.requests, 100.0);
    assert_eq!(c.successes, 90.0);
    assert_eq!(c.tls_requests, 0.0);
    assert_eq!(c.tcp_connections, 12.0);
    assert_eq!((c.tcp_bytes, c.tls_bytes), (4096.0, 4096.0));
    assert_eq!(
        c.buckets,
        vec![
            (0.0005, 0.0),
            (0.001, 50.0),
            (0.01, 100.0),
            (f64::INFINITY, 100.0)
        ]
    );
    let out = Counters::from_samples(&parse(SCRAPE).unwrap(), "outbound");
    assert_eq!(out.requests, 7.0);
    assert_eq!(out.tcp_connections, 3.0);
    assert!(out.buckets.is_empty());
}

#[test]
fn adds_replicas_bucket_by_bucket() {
    let a = Counters::from_samples(&parse(SCRAPE).unwrap(), "inbound");
    let mut sum = a.clone();
    sum.add(&a);
    assert_eq!(sum.requests, 200.0);
    assert_eq!(sum.buckets[1], (0.001, 100.0));
    assert_eq!(sum.buckets[3], (f64::INFINITY, 200.0));
    let mut empty = Counters::default();
    empty.add(&a);
    assert_eq!(empty, a);
}

#[test]
fn quantiles_interpolate_like_prometheus() {
    let b = vec![(0.001, 50.0), (0.01, 100.0), (f64::INFINITY, 100.0)];
    // rank 50 is exactly the top of the first bucket.
    assert!((quantile(&b, 0.5).unwrap() - 0.001).abs() < 1e-12);
    // rank 99: 49/50 of the way through (0.001, 0.01].
    assert!((quantile(&b, 0.99).unwrap() - (0.001 + 0.009 * 49.0 / 50.0)).abs() < 1e-12);
    // rank 25: halfway through the first bucket, from 0.
    assert!((quantile(&b, 0.25).unwrap() - 0.0005).abs() < 1e-12);
    // Observations beyond the last finite bound: its bound.
    let slow = vec![(0.001, 1.0), (0.01, 2.0), (f64::INFINITY, 10.0)];
    assert_eq!(quantile(&slow, 0.99), Some(0.01));
    // Empty buckets are skipped, not divided by.
    let gap = vec![
        (0.001, 0.0),
        (0.002, 0.0),
        (0.004, 4.0),
        (f64::INFINITY, 4.0),
    ];
    assert!((quantile(&gap, 0.5).unwrap() - 0.003).abs() < 1e-12);
    assert_eq!(quantile(&[], 0.5), None);
    assert_eq!(quantile(&[(f64::INFINITY, 0.0)], 0.5), None);
    assert_eq!(quantile(&b, 1.5), None);
}

fn web(requests: f64, successes: f64, fast: f64, connections: f64) -> Counters {
    Counters {
        requests,
        successes,
        tls_requests: requests,
        buckets: vec![(0.001, fast), (f64::INFINITY, requests)],
        tcp_connections: connections,
        tls_connections: connections,
        ..Default::default()
    }
}

fn mail(connections: f64, tls_connections: f64, bytes: f64) -> Counters {
    Counters {
        tcp_connections: connections,
        tls_connections,
        tcp_bytes: bytes,
        tls_bytes: bytes * tls_connections / connections.max(1.0),
        ..Default::default()
    }
}

#[test]
fn windows_subtract() {
    let then = web(100.0, 90.0, 50.0, 5.0);
    let now = web(150.0, 140.0, 60.0, 6.0);
    assert!(!now.reset_since(&then));
    let w = now.since(&then);
    assert_eq!(
        (w.requests, w.successes, w.tls_requests, w.tcp_connections),
        (50.0, 50.0, 50.0, 1.0)
    );
    assert_eq!(w.buckets, vec![(0.001, 10.0), (f64::INFINITY, 50.0)]);
    // Nothing happened: an empty window, not a negative one.
    assert_eq!(now.since(&now), web(0.0, 0.0, 0.0, 0.0));
    let w = mail(10.0, 10.0, 4096.0).since(&mail(4.0, 4.0, 1024.0));
    assert_eq!((w.tcp_connections, w.tcp_bytes), (6.0, 3072.0));
}

#[test]
fn a_reset_counts_from_zero() {
    let then = web(100.0, 90.0, 50.0, 5.0);
    // A restarted proxy: fewer requests than before.
    let restarted = web(4.0, 3.0, 4.0, 1.0);
    assert!(restarted.reset_since(&then));
    assert_eq!(restarted.since(&then), restarted);
    // Any one counter that fell is a reset, even when others grew.
    let mut bytes_fell = mail(10.0, 10.0, 100.0);
    let before = mail(5.0, 5.0, 5000.0);
    assert!(bytes_fell.reset_since(&before));
    assert_eq!(bytes_fell.since(&before).tcp_bytes, 100.0);
    // A histogram bucket that fell, too.
    bytes_fell = web(100.0, 90.0, 40.0, 5.0);
    assert!(bytes_fell.reset_since(&then));
}

#[test]
fn replicas_increase_on_their_own() {
    // web-0 restarted in the window (12 -> 2), web-1 served 10 more. The
    // sum went from 112 to 112: a sum-level delta would say 0.
    let (w0_then, w1_then) = (web(12.0, 12.0, 12.0, 1.0), web(100.0, 100.0, 100.0, 1.0));
    let (w0, w1) = (web(2.0, 2.0, 2.0, 1.0), web(110.0, 110.0, 110.0, 1.0));
    let (total, inc) = increase([(&w0, Some(&w0_then)), (&w1, Some(&w1_then))]);
    assert_eq!(total.requests, 112.0);
    assert_eq!(inc.requests, 12.0);
    assert_eq!(inc.tcp_connections, 1.0);
    // A replica new in the window counted everything it has in it.
    let (_, new) = increase([(&w0, None)]);
    assert_eq!(new, w0);
}

#[test]
fn rows_cover_the_window() {
    let then = Counters::from_samples(&parse(SCRAPE).unwrap(), "inbound");
    let mut now = then.clone();
    now.add(&then); // another 100 requests, same shape, 12 connections
    let w = now.since(&then);
    let r = row("demo/web", true, 2, &now, Some((&w, 10.0)));
    assert_eq!(r.rps, Some(10.0));
    assert_eq!(r.success, Some(0.9));
    assert!((r.p50.unwrap() - 0.001).abs() < 1e-12);
    assert_eq!(r.tls, Tls::None);
    assert_eq!(r.connections, 12, "opened in the window, not 24 so far");
    assert_eq!(r.bytes_per_second, None, "an HTTP workload");

    // The first screen: counts since the start, no rates.
    let first = row("demo/web", true, 2, &then, None);
    assert_eq!(first.rps, None);
    assert_eq!(first.success, Some(0.9));
    assert_eq!(first.connections, 12);

    // A quiet HTTP window: a rate of 0, no success rate or latency.
    let quiet = row("demo/web", true, 2, &now, Some((&now.since(&now), 2.0)));
    assert_eq!(quiet.rps, Some(0.0));
    assert_eq!(
        (quiet.success, quiet.p50, quiet.tls),
        (None, None, Tls::Unknown)
    );
}

#[test]
fn opaque_rows_show_connections_bytes_and_tls() {
    let total = mail(20.0, 20.0, 8192.0);
    let w = mail(4.0, 3.0, 2048.0);
    let r = row("demo/mail", true, 1, &total, Some((&w, 2.0)));
    assert_eq!(r.rps, None, "no request rate for opaque TCP");
    assert_eq!(r.success, None);
    assert_eq!(r.connections, 4);
    assert_eq!(r.bytes_per_second, Some(1024.0));
    assert_eq!(r.tls, Tls::Some(0.75));
    let first = row("demo/mail", true, 1, &total, None);
    assert_eq!((first.connections, first.bytes_per_second), (20, None));
    assert_eq!(first.tls, Tls::All);
    let nothing = row("demo/client", true, 1, &Counters::default(), None);
    assert_eq!(nothing.tls, Tls::Unknown);
    // A zero-length window is no window.
    assert_eq!(row("demo/mail", true, 1, &total, Some((&w, 0.0))).rps, None);
}

#[test]
fn table() {
    let then = Counters::from_samples(&parse(SCRAPE).unwrap(), "inbound");
    let mut now = then.clone();
    now.add(&then);
    let web_row = row("demo/web", true, 2, &now, Some((&now.since(&then), 10.0)));
    let mail_row = row(
        "demo/mail",
        true,
        1,
        &mail(3.0, 0.0, 600.0),
        Some((&mail(3.0, 0.0, 600.0), 2.0)),
    );
    let table = render(&[web_row, mail_row]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("WORKLOAD"), "{table}");
    assert!(
        lines[0].contains("CONNS") && lines[0].contains("BYTES/S"),
        "{table}"
    );
    assert!(
        lines[1].contains("10.0") && lines[1].contains("90.00%") && lines[1].contains("1.00ms"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("demo/mail")
            && lines[2].contains("300B/s")
            && lines[2].ends_with("false"),
        "{table}"
    );
}

#[test]
fn tls_shares_and_latency_format() {
    assert_eq!(tls_of(5.0, 10.0).to_string(), "partly (50%)");
    assert_eq!(tls_of(10.0, 10.0).to_string(), "true");
    assert_eq!(format_latency(0.000_42), "0.42ms");
    assert_eq!(format_latency(0.0123), "12.3ms");
    assert_eq!(format_latency(1.5), "1.50s");
    assert_eq!(format_bytes(512.0), "512B");
    assert_eq!(format_bytes(12.3 * 1024.0), "12.3KiB");
    assert_eq!(format_bytes(4.5 * 1024.0 * 1024.0), "4.5MiB");
}
