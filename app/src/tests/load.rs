//! `trellis app load`: exact counts, rate, bounds, failures, the plan.

use std::time::{Duration, Instant};

use http::header;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use trellis_core::shutdown::Shutdown;

use super::{free_addr, within, Server};
use crate::load::{self, LoadArgs, LoadPlan, PlanError};

fn load_args(url: String) -> LoadArgs {
    LoadArgs {
        url,
        rps: 0,
        duration: None,
        requests: None,
        h2: false,
        concurrency: 1,
        host: None,
        timeout: Duration::from_secs(10),
    }
}

async fn run_load(args: LoadArgs) -> load::LoadSummary {
    let plan = LoadPlan::from_args(&args).unwrap();
    within("the load run", load::run(plan, Shutdown::new()))
        .await
        .unwrap()
}

#[tokio::test]
async fn load_sends_exact_counts_over_h1_and_h2() {
    let server = Server::http("l", 0.0).await;
    for h2 in [false, true] {
        let summary = run_load(LoadArgs {
            requests: Some(30),
            concurrency: 3,
            h2,
            ..load_args(format!("http://{}/", server.addr))
        })
        .await;
        assert_eq!(
            (summary.sent, summary.ok, summary.failed, summary.errors),
            (30, 30, 0, 0),
            "h2={h2}"
        );
        assert_eq!(summary.status.get(&200), Some(&30));
        let (p50, p99) = (summary.p50_ms.unwrap(), summary.p99_ms.unwrap());
        assert!(p50 > 0.0 && p50 <= p99, "{summary:?}");
        assert!(summary.first_error.is_none());
    }
    server.stop().await;
}

#[tokio::test]
async fn load_counts_injected_failures() {
    let server = Server::http("l", 0.2).await;
    let summary = run_load(LoadArgs {
        requests: Some(50),
        concurrency: 2,
        ..load_args(format!("http://{}/", server.addr))
    })
    .await;
    assert_eq!(
        (summary.sent, summary.ok, summary.failed, summary.errors),
        (50, 40, 10, 0)
    );
    assert_eq!(summary.status.get(&503), Some(&10));
    let json = serde_json::to_string(&summary).unwrap();
    assert!(
        json.starts_with(r#"{"sent":50,"ok":40,"failed":10,"p50_ms":"#),
        "{json}"
    );
    server.stop().await;
}

#[tokio::test]
async fn load_holds_the_rate_within_the_duration() {
    let server = Server::http("l", 0.0).await;
    let began = Instant::now();
    let summary = run_load(LoadArgs {
        rps: 100,
        duration: Some(Duration::from_millis(300)),
        concurrency: 2,
        ..load_args(format!("http://{}/delay/5", server.addr))
    })
    .await;
    // Requests are due at 0, 10, …, 290 ms: at most 30, and only a slow
    // machine sends fewer.
    assert!((10..=30).contains(&summary.sent), "{summary:?}");
    assert_eq!(summary.ok, summary.sent);
    assert!(began.elapsed() >= Duration::from_millis(290));
    assert!(summary.p50_ms.unwrap() >= 5.0);
    server.stop().await;
}

#[tokio::test]
async fn load_counts_connection_errors() {
    let addr = free_addr().await;
    let summary = run_load(LoadArgs {
        requests: Some(3),
        ..load_args(format!("http://{addr}/"))
    })
    .await;
    assert_eq!(
        (summary.sent, summary.ok, summary.failed, summary.errors),
        (3, 0, 3, 3)
    );
    assert!(summary.p50_ms.is_none());
    assert!(summary.first_error.unwrap().contains("connecting to"));
}

#[tokio::test]
async fn load_counts_timeouts() {
    let server = Server::http("l", 0.0).await;
    let summary = run_load(LoadArgs {
        requests: Some(2),
        timeout: Duration::from_millis(100),
        ..load_args(format!("http://{}/delay/2000", server.addr))
    })
    .await;
    assert_eq!((summary.sent, summary.failed, summary.errors), (2, 2, 2));
    assert!(summary.first_error.unwrap().contains("within"));
    server.stop().await;
}

#[tokio::test]
async fn load_stops_when_shutdown_begins() {
    let server = Server::http("l", 0.0).await;
    let plan = LoadPlan::from_args(&LoadArgs {
        rps: 20,
        duration: Some(Duration::from_secs(3600)),
        ..load_args(format!("http://{}/", server.addr))
    })
    .unwrap();
    let stop = Shutdown::new();
    let run = tokio::spawn(load::run(plan, stop.clone()));
    stop.begin();
    let summary = within("the stopped run", run).await.unwrap().unwrap();
    assert!(summary.sent <= 1, "{summary:?}");
    server.stop().await;
}

#[test]
fn load_plan_checks_its_input() {
    let base = || load_args("http://web.demo.svc.cluster.local/path?q=1".into());
    let err = |args: LoadArgs| LoadPlan::from_args(&args).unwrap_err();
    assert_eq!(err(base()), PlanError::Unbounded);
    let bounded = || LoadArgs {
        requests: Some(5),
        ..base()
    };
    assert!(matches!(
        err(LoadArgs {
            url: "https://x/".into(),
            ..bounded()
        }),
        PlanError::Scheme(_)
    ));
    assert!(matches!(
        err(LoadArgs {
            url: "/just/a/path".into(),
            ..bounded()
        }),
        PlanError::Scheme(_)
    ));
    assert!(matches!(
        err(LoadArgs {
            url: "http://a b/".into(),
            ..bounded()
        }),
        PlanError::Url(..)
    ));
    assert!(matches!(
        err(LoadArgs {
            host: Some("a b".into()),
            ..bounded()
        }),
        PlanError::Host(_)
    ));
    assert_eq!(
        err(LoadArgs {
            requests: Some(0),
            ..base()
        }),
        PlanError::Requests
    );
    assert_eq!(
        err(LoadArgs {
            duration: Some(Duration::from_secs(3601)),
            ..base()
        }),
        PlanError::Duration
    );
    assert_eq!(
        err(LoadArgs {
            duration: Some(Duration::ZERO),
            ..base()
        }),
        PlanError::Duration
    );
    assert_eq!(
        err(LoadArgs {
            concurrency: 0,
            ..bounded()
        }),
        PlanError::Concurrency
    );
    assert_eq!(
        err(LoadArgs {
            timeout: Duration::ZERO,
            ..bounded()
        }),
        PlanError::Timeout
    );

    let plan = LoadPlan::from_args(&bounded()).unwrap();
    assert_eq!(plan.connect, "web.demo.svc.cluster.local:80");
    assert_eq!(plan.authority, "web.demo.svc.cluster.local");
    assert_eq!(plan.path, "/path?q=1");
    assert_eq!(
        plan.duration,
        load::MAX_DURATION,
        "requests alone are still time-bounded"
    );

    let plan = LoadPlan::from_args(&LoadArgs {
        url: "http://127.0.0.1:8080".into(),
        host: Some("web.demo:80".into()),
        duration: Some(Duration::from_secs(10)),
        rps: 4,
        ..base()
    })
    .unwrap();
    assert_eq!(
        (
            plan.connect.as_str(),
            plan.authority.as_str(),
            plan.path.as_str()
        ),
        ("127.0.0.1:8080", "web.demo:80", "/")
    );
    assert_eq!(plan.due(0), Duration::ZERO);
    assert_eq!(plan.due(6), Duration::from_millis(1500));
}

#[test]
fn load_request_carries_the_host() {
    let args = LoadArgs {
        requests: Some(1),
        host: Some("web.demo.svc.cluster.local".into()),
        ..load_args("http://127.0.0.1:8080/a?b".into())
    };
    let req = LoadPlan::from_args(&args).unwrap().request().unwrap();
    assert_eq!(req.uri(), "/a?b");
    assert_eq!(req.headers()[header::HOST], "web.demo.svc.cluster.local");

    let req = LoadPlan::from_args(&LoadArgs { h2: true, ..args })
        .unwrap()
        .request()
        .unwrap();
    assert_eq!(req.uri().authority().unwrap(), "web.demo.svc.cluster.local");
    assert_eq!(req.uri().path_and_query().unwrap(), "/a?b");
    assert!(req.headers().get(header::HOST).is_none());
}

#[tokio::test]
async fn load_host_override_reaches_the_server() {
    // The load generator discards bodies, so check the wire with a one-shot
    // server that records the request head.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let head = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            head.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        w.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        head
    });
    let summary = run_load(LoadArgs {
        requests: Some(1),
        host: Some("web.demo.svc.cluster.local".into()),
        ..load_args(format!("http://{addr}/x"))
    })
    .await;
    assert_eq!(summary.ok, 1);
    let head = within("the request head", head)
        .await
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.starts_with("get /x http/1.1\r\n"), "{head}");
    assert!(
        head.contains("host: web.demo.svc.cluster.local\r\n"),
        "{head}"
    );
}

#[test]
fn percentiles_use_the_nearest_rank() {
    let samples: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
    assert_eq!(load::percentile_ms(&samples, 0.50), Some(50.0));
    assert_eq!(load::percentile_ms(&samples, 0.99), Some(99.0));
    assert_eq!(load::percentile_ms(&samples, 1.0), Some(100.0));
    assert_eq!(load::percentile_ms(&[1500], 0.5), Some(1.5));
    assert_eq!(load::percentile_ms(&[], 0.5), None);
}
