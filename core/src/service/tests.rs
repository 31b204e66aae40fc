use std::future::pending;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::config::MapSource;

/// A signal that never comes.
fn no_signal() -> impl Future<Output = io::Result<&'static str>> {
    pending()
}

const GRACE: Duration = Duration::from_secs(3);

#[tokio::test(start_paused = true)]
async fn an_early_end_gives_the_exit_code() {
    let ok = supervise(
        "trellis-t",
        GRACE,
        |_| async { Ok::<_, String>(()) },
        no_signal(),
    );
    assert_eq!(ok.await, ExitCode::SUCCESS);
    let failed = supervise("trellis-t", GRACE, |_| async { Err("boom") }, no_signal());
    assert_eq!(failed.await, ExitCode::FAILURE);
    let panicked = supervise(
        "trellis-t",
        GRACE,
        |_| async {
            if true {
                panic!("a bug");
            }
            Ok::<_, String>(())
        },
        no_signal(),
    );
    assert_eq!(panicked.await, ExitCode::FAILURE);
}

#[tokio::test(start_paused = true)]
async fn a_signal_begins_the_shutdown_and_the_drain_is_bounded() {
    let started = Instant::now();
    let code = supervise(
        "trellis-t",
        GRACE,
        |shutdown: Shutdown| async move {
            // A tracked task that ignores the shutdown: only the grace
            // period ends the wait for it.
            shutdown.spawn(pending::<()>());
            shutdown.signaled().await;
            Ok::<_, String>(())
        },
        async { Ok("SIGTERM") },
    )
    .await;
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(started.elapsed(), GRACE);
}

#[tokio::test(start_paused = true)]
async fn without_signal_handlers_it_shuts_down_at_once() {
    let started = Instant::now();
    let code = supervise(
        "trellis-t",
        GRACE,
        |shutdown: Shutdown| async move {
            shutdown.signaled().await;
            Err("stopped by the shutdown")
        },
        async { Err(io::Error::other("no signals here")) },
    )
    .await;
    assert_eq!(code, ExitCode::FAILURE);
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[test]
fn settings_are_read_under_the_prefix() {
    let src = MapSource::new([("T_SHUTDOWN_GRACE", "30s"), ("T_LOG_FORMAT", "json")]);
    let mut r = Reader::new(&src);
    let s = Settings::read(&mut r, "T_", Duration::from_secs(10));
    r.finish().unwrap();
    assert_eq!(
        s,
        Settings {
            shutdown_grace: Duration::from_secs(30),
            log: "info".into(),
            log_format: LogFormat::Json,
        }
    );
    assert_eq!(
        serde_json::to_string(&s).unwrap(),
        r#"{"shutdown_grace":"30s","log":"info","log_format":"json"}"#
    );

    let src = MapSource::new([
        ("T_SHUTDOWN_GRACE", "30"),
        ("T_LOG", "info,[x"),
        ("T_LOG_FORMAT", "xml"),
    ]);
    let mut r = Reader::new(&src);
    let s = Settings::read(&mut r, "T_", Duration::from_secs(10));
    assert_eq!(s.shutdown_grace, Duration::from_secs(10));
    let errs = r.finish().unwrap_err();
    let keys = errs.keys();
    assert_eq!(
        keys,
        ["T_SHUTDOWN_GRACE", "T_LOG", "T_LOG_FORMAT"],
        "{errs}"
    );
}

#[test]
fn flattened_settings_are_fields_of_the_config() {
    #[derive(Serialize)]
    struct Config {
        listen: &'static str,
        #[serde(flatten)]
        service: Settings,
    }
    let c = Config {
        listen: "0.0.0.0:1",
        service: Settings {
            shutdown_grace: Duration::from_millis(1500),
            log: "warn".into(),
            log_format: LogFormat::Plain,
        },
    };
    assert_eq!(
        serde_json::to_string(&c).unwrap(),
        r#"{"listen":"0.0.0.0:1","shutdown_grace":"1500ms","log":"warn","log_format":"plain"}"#
    );
}

#[tokio::test]
async fn bind_reports_the_real_port_and_the_address_it_could_not_bind() {
    let (_listener, addr) = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    assert_ne!(addr.port(), 0);
    let err = bind(addr).await.unwrap_err();
    assert_eq!(err.addr, addr);
    assert!(
        err.to_string().starts_with(&format!("binding {addr}: ")),
        "{err}"
    );
}

#[test]
fn a_subcommand_exits_0_or_1() {
    assert_eq!(
        exit_code("trellis-t", Ok::<(), String>(())),
        ExitCode::SUCCESS
    );
    assert_eq!(exit_code("trellis-t", Err("no key")), ExitCode::FAILURE);
}
