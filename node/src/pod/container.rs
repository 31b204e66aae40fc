//! A container's state as the pod's task keeps it, and what the pod's
//! phase and readiness are from its containers' (pure).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use trellis_core::backoff::Backoff;

use super::RESTART;
use crate::probe::{Kind as ProbeKind, ProbeState};

#[derive(Clone, Debug)]
pub(super) enum State {
    Waiting { reason: String, message: String },
    Running { since: Timestamp },
    Terminated(Ended),
}

#[derive(Clone, Debug)]
pub(super) struct Ended {
    pub(super) code: i32,
    pub(super) signal: Option<i32>,
    pub(super) reason: String,
    pub(super) started: Timestamp,
    pub(super) finished: Timestamp,
    pub(super) pid: u32,
}

pub(super) struct Ctr {
    pub(super) spec: Container,
    pub(super) init: bool,
    pub(super) sidecar: bool,
    pub(super) state: State,
    pub(super) last: Option<Ended>,
    pub(super) pid: Option<u32>,
    pub(super) started_at: Option<Instant>,
    pub(super) generation: u64,
    pub(super) restarts: i32,
    /// The startup probe passed (or there is none) since the last start.
    pub(super) started: bool,
    pub(super) ready: bool,
    pub(super) probes: Vec<(ProbeKind, ProbeState)>,
    pub(super) probe_tasks: Vec<tokio::task::JoinHandle<()>>,
    pub(super) restart: Backoff,
    pub(super) not_before: Option<Instant>,
    /// Asked to stop (liveness, termination): its exit is not a crash.
    pub(super) stopping: bool,
}

impl Ctr {
    pub(super) fn new(spec: Container, init: bool) -> Ctr {
        let sidecar = init && spec.restart_policy.as_deref() == Some("Always");
        Ctr {
            spec,
            init,
            sidecar,
            state: State::Waiting {
                reason: "PodInitializing".into(),
                message: String::new(),
            },
            last: None,
            pid: None,
            started_at: None,
            generation: 0,
            restarts: 0,
            started: false,
            ready: false,
            probes: Vec::new(),
            probe_tasks: Vec::new(),
            restart: Backoff::without_jitter(RESTART),
            not_before: None,
            stopping: false,
        }
    }

    /// Holds the next start back by the restart backoff's next wait,
    /// and returns that wait.
    pub(super) fn wait_to_restart(&mut self) -> Duration {
        let wait = self.restart.next_wait();
        self.not_before = Some(Instant::now() + wait);
        wait
    }

    pub(super) fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    pub(super) fn succeeded(&self) -> bool {
        matches!(&self.state, State::Terminated(e) if e.code == 0)
    }

    pub(super) fn stop_probes(&mut self) {
        for t in self.probe_tasks.drain(..) {
            t.abort();
        }
    }
}

/// The pod's phase, as kubelet decides it from its containers.
pub(super) fn phase(containers: &[Ctr], policy: &str, initialized: bool) -> &'static str {
    let regular: Vec<&Ctr> = containers.iter().filter(|c| !c.init).collect();
    // A container that exited for good: it is not restarted.
    let all_done = regular.iter().all(|c| match &c.state {
        State::Terminated(e) => policy == "Never" || (policy == "OnFailure" && e.code == 0),
        _ => false,
    });
    let init_failed = containers.iter().any(|c| {
        c.init
            && !c.sidecar
            && policy == "Never"
            && matches!(&c.state, State::Terminated(e) if e.code != 0)
    });
    if init_failed {
        "Failed"
    } else if all_done && !regular.is_empty() {
        if regular.iter().all(|c| c.succeeded()) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if initialized && regular.iter().any(|c| c.running() || c.last.is_some()) {
        "Running"
    } else {
        "Pending"
    }
}

/// Every container ready, and every native sidecar.
pub(super) fn containers_ready(containers: &[Ctr]) -> bool {
    let regular: Vec<&Ctr> = containers.iter().filter(|c| !c.init).collect();
    !regular.is_empty()
        && regular.iter().all(|c| c.ready)
        && containers.iter().filter(|c| c.sidecar).all(|c| c.ready)
}

pub(super) fn state_json(s: &State) -> Value {
    match s {
        State::Waiting { reason, message } => {
            json!({ "waiting": { "reason": reason, "message": message } })
        }
        State::Running { since } => json!({ "running": { "startedAt": Time(*since) } }),
        State::Terminated(e) => json!({ "terminated": ended_json(e) }),
    }
}

pub(super) fn ended_json(e: &Ended) -> Value {
    let mut v = json!({
        "exitCode": e.code,
        "reason": e.reason,
        "startedAt": Time(e.started),
        "finishedAt": Time(e.finished),
        "containerID": format!("trellis://{}", e.pid),
    });
    if let Some(sig) = e.signal {
        v["signal"] = json!(sig);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr(name: &str, init: bool, sidecar: bool) -> Ctr {
        let spec = Container {
            name: name.into(),
            restart_policy: sidecar.then(|| "Always".to_string()),
            ..Container::default()
        };
        Ctr::new(spec, init)
    }

    fn ended(code: i32) -> State {
        State::Terminated(Ended {
            code,
            signal: None,
            reason: String::new(),
            started: Timestamp::UNIX_EPOCH,
            finished: Timestamp::UNIX_EPOCH,
            pid: 1,
        })
    }

    fn running() -> State {
        State::Running {
            since: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn phases_follow_the_containers_and_the_restart_policy() {
        let with = |init: State, main: State| {
            let mut i = ctr("init", true, false);
            i.state = init;
            let mut m = ctr("main", false, false);
            m.state = main;
            vec![i, m]
        };
        let waiting = || State::Waiting {
            reason: "PodInitializing".into(),
            message: String::new(),
        };
        let cases = [
            // (init, main, policy, initialized) → phase
            (waiting(), waiting(), "Always", false, "Pending"),
            (running(), waiting(), "Always", false, "Pending"),
            (ended(0), running(), "Always", true, "Running"),
            (ended(0), ended(0), "Never", true, "Succeeded"),
            (ended(0), ended(2), "Never", true, "Failed"),
            (ended(0), ended(0), "OnFailure", true, "Succeeded"),
            // Restarted (in backoff, it waits): not done.
            (ended(0), waiting(), "OnFailure", true, "Pending"),
            (ended(1), waiting(), "Never", false, "Failed"),
            (ended(1), waiting(), "Always", false, "Pending"),
        ];
        for (init, main, policy, initialized, want) in cases {
            let cs = with(init.clone(), main.clone());
            assert_eq!(
                phase(&cs, policy, initialized),
                want,
                "{init:?} / {main:?} / {policy}"
            );
        }
    }

    #[test]
    fn a_pod_is_ready_when_its_containers_and_sidecars_are() {
        let mut sidecar = ctr("proxy", true, true);
        let mut main = ctr("app", false, false);
        let plain_init = ctr("init", true, false);
        main.ready = true;
        assert!(!containers_ready(&[
            plain_init.clone_state(),
            sidecar.clone_state(),
            main.clone_state()
        ]));
        sidecar.ready = true;
        assert!(containers_ready(&[
            plain_init.clone_state(),
            sidecar.clone_state(),
            main.clone_state()
        ]));
        main.ready = false;
        assert!(!containers_ready(&[
            sidecar.clone_state(),
            main.clone_state()
        ]));
        assert!(!containers_ready(&[sidecar]), "no container: not ready");
    }

    impl Ctr {
        fn clone_state(&self) -> Ctr {
            let mut c = Ctr::new(self.spec.clone(), self.init);
            c.state = self.state.clone();
            c.ready = self.ready;
            c
        }
    }
}
