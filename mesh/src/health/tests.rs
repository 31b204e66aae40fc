// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const S: u64 = 1000;

fn running_since(ms: u64) -> PodHealth {
    PodHealth {
        started_unix_ms: ms,
        ..PodHealth::default()
    }
}

#[test]
fn the_backoff_doubles_from_one_second_to_thirty() {
    let table: [(u32, u64); 8] = [
        (0, 1),
        (1, 1),
        (2, 2),
        (3, 4),
        (4, 8),
        (5, 16),
        (6, 30),
        (u32::MAX, 30),
    ];
    for (crashes, secs) in table {
        assert_eq!(backoff(crashes), Duration::from_secs(secs), "{crashes}");
    }
}

#[test]
fn exits_in_a_row_back_off_then_fail_past_the_limit() {
    let mut h = running_since(0);
    let mut now = 1_000_000 * S;
    // (state after the exit, crashes, wait before the restart)
    let want: [(PodRun, u32, Option<u64>); 6] = [
        (PodRun::Restarting, 1, Some(S)),
        (PodRun::Restarting, 2, Some(2 * S)),
        (PodRun::Restarting, 3, Some(4 * S)),
        (PodRun::Restarting, 4, Some(8 * S)),
        (PodRun::Restarting, 5, Some(16 * S)),
        (PodRun::Failed, 6, None),
    ];
    for (i, (state, crashes, wait)) in want.into_iter().enumerate() {
        h = on_exit(&h, Role::Workload, "exit status 1".into(), now);
        assert_eq!(h.state, state, "exit {i}");
        assert_eq!(h.crashes, crashes, "exit {i}");
        assert_eq!(h.restart_at_unix_ms.map(|at| at - now), wait, "exit {i}");
        assert_eq!(h.last_exit.as_ref().unwrap().status, "exit status 1");
        if let Some(at) = h.restart_at_unix_ms {
            h = on_restarted(&h, at);
            // Exits again before it was ready: still restarting.
            assert_eq!(h.state, PodRun::Restarting);
            assert_eq!(h.restarts, crashes);
            now = at + S;
        }
    }
    assert_eq!(h.restarts, RESTART_LIMIT);
}

#[test]
fn a_pod_that_ran_long_enough_starts_a_new_count() {
    let mut h = running_since(10 * S);
    h.crashes = 4;
    h.restarts = 4;
    // Ran less than STABLE_AFTER: the count goes on.
    let short = on_exit(&h, Role::Proxy, "signal 9 (SIGKILL)".into(), 20 * S);
    assert_eq!((short.crashes, short.state), (5, PodRun::Restarting));
    // Ran longer: a first exit again.
    let later = 10 * S + millis(STABLE_AFTER);
    let long = on_exit(&h, Role::Proxy, "signal 9 (SIGKILL)".into(), later);
    assert_eq!(long.crashes, 1);
    assert_eq!(long.restart_at_unix_ms, Some(later + S));
    assert_eq!(long.restarts, 4, "restarts count everything");
    let e = long.last_exit.unwrap();
    assert_eq!((e.role, e.at_unix_ms), (Role::Proxy, later));
}

#[test]
fn pods_not_running_are_out_of_service_and_the_phase_says_so() {
    let health = |states: &[PodRun]| -> BTreeMap<String, PodHealth> {
        states
            .iter()
            .enumerate()
            .map(|(i, &state)| {
                (
                    format!("ns-{i}"),
                    PodHealth {
                        state,
                        ..PodHealth::default()
                    },
                )
            })
            .collect()
    };
    use PodRun::*;
    let table: [(Phase, &[PodRun], &str, &[&str]); 7] = [
        (Phase::Ready, &[], "ready", &[]),
        (Phase::Ready, &[Running, Running], "ready", &[]),
        (Phase::Ready, &[Running, Restarting], "degraded", &["ns-1"]),
        (
            Phase::Ready,
            &[Failed, Restarting],
            "failed",
            &["ns-0", "ns-1"],
        ),
        (Phase::Applying, &[Running], "applying", &[]),
        (Phase::Creating, &[], "creating", &[]),
        (Phase::Deleting, &[Restarting], "deleting", &["ns-0"]),
    ];
    for (phase, states, shown, out) in table {
        let h = health(states);
        assert_eq!(shown_phase(phase, &h), shown, "{phase:?} {states:?}");
        let want: BTreeSet<String> = out.iter().map(|s| s.to_string()).collect();
        assert_eq!(not_ready(&h), want, "{states:?}");
    }
}

#[test]
fn exits_are_described_as_a_shell_would() {
    let table = [
        (Some(0), None, "exit status 0"),
        (Some(3), None, "exit status 3"),
        (None, Some(9), "signal 9 (SIGKILL)"),
        (None, Some(15), "signal 15 (SIGTERM)"),
        (None, Some(99), "signal 99"),
        (None, None, "exited (status unknown)"),
    ];
    for (code, signal, want) in table {
        assert_eq!(describe_exit(code, signal), want);
    }
}
