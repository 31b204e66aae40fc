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
process_open_fds 17
# EOF
"#;

#[test]
fn parses_prometheus_and_openmetrics_text() {
    let samples = parse(SCRAPE).unwrap();
    assert_eq!(samples.len(), 13);
    assert_eq!(samples[0].name, REQUESTS);
    assert_eq!(samples[0].label("status_code"), "200");
    assert_eq!(samples[0].label("peer"), "");
    assert_eq!(samples[0].label("missing"), "");
    assert_eq!(samples[0].value, 90.0);
    assert_eq!(samples[3].value, 1.7e9);
    assert_eq!(samples[7].label("le"), "+Inf");
    assert_eq!(samples[10].value, 12.0, "timestamp ignored");
    assert_eq!(samples[12].name, "process_open_fds");
    assert!(samples[12].labels.is_empty());
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

#[test]
fn windows_subtract_and_survive_resets() {
    let then = Counters {
        requests: 100.0,
        successes: 90.0,
        buckets: vec![(0.001, 50.0), (f64::INFINITY, 100.0)],
        tcp_connections: 5.0,
        ..Default::default()
    };
    let now = Counters {
        requests: 150.0,
        successes: 140.0,
        buckets: vec![(0.001, 60.0), (f64::INFINITY, 150.0)],
        tcp_connections: 6.0,
        ..Default::default()
    };
    let w = now.since(&then);
    assert_eq!(
        (w.requests, w.successes, w.tcp_connections),
        (50.0, 50.0, 1.0)
    );
    assert_eq!(w.buckets, vec![(0.001, 10.0), (f64::INFINITY, 50.0)]);
    let restarted = Counters {
        requests: 4.0,
        successes: 3.0,
        buckets: vec![(0.001, 4.0), (f64::INFINITY, 4.0)],
        ..Default::default()
    };
    let w = restarted.since(&then);
    assert_eq!((w.requests, w.successes), (4.0, 3.0));
    assert_eq!(w.buckets, vec![(0.001, 4.0), (f64::INFINITY, 4.0)]);
}

#[test]
fn rows_and_table() {
    let then = Counters::from_samples(&parse(SCRAPE).unwrap(), "inbound");
    let mut now = then.clone();
    now.add(&then); // another 100 requests, same shape
    let r = row("demo/web", true, 2, &now, Some((&then, 10.0)));
    assert_eq!(r.rps, Some(10.0));
    assert_eq!(r.success, Some(0.9));
    assert!((r.p50.unwrap() - 0.001).abs() < 1e-12);
    assert_eq!(r.tls, Tls::None);
    assert_eq!(r.tcp_connections, 24.0);

    let first = row("demo/web", true, 2, &then, None);
    assert_eq!(first.rps, None);
    assert_eq!(first.success, Some(0.9));

    let idle = row(
        "demo/mail",
        true,
        1,
        &Counters {
            tcp_connections: 3.0,
            ..Default::default()
        },
        None,
    );
    assert_eq!((idle.success, idle.p99), (None, None));
    assert_eq!(idle.tls, Tls::None);
    let nothing = row("demo/client", true, 1, &Counters::default(), None);
    assert_eq!(nothing.tls, Tls::Unknown);

    let table = render(&[r, idle]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("WORKLOAD"), "{table}");
    assert!(
        lines[1].contains("10.0") && lines[1].contains("90.00%") && lines[1].contains("1.00ms"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("demo/mail") && lines[2].ends_with("false"),
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
}
