//! The controller process's memory and CPU, from `/proc/<pid>`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `USER_HZ`: 100 on every Linux this runs on.
const TICKS_PER_SEC: f64 = 100.0;

fn status_kb(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

pub fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    Ok(status_kb(pid, "VmRSS:")? / 1024.0)
}

pub fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    Ok(status_kb(pid, "VmHWM:")? / 1024.0)
}

/// utime + stime, seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis: state is field 3,
    // utime 14 and stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("odd /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok((ticks(11) + ticks(12)) / TICKS_PER_SEC)
}

pub struct Rss {
    pub peak_mb: f64,
    pub churn_median_mb: Option<f64>,
}

/// Samples RSS every 250 ms until finished.
pub struct Sampler {
    in_churn: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    samples: Arc<Mutex<(f64, Vec<f64>)>>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let s = Sampler {
            in_churn: Arc::new(AtomicBool::new(false)),
            done: Arc::new(AtomicBool::new(false)),
            samples: Arc::new(Mutex::new((0.0, Vec::new()))),
        };
        let (in_churn, done, samples) = (s.in_churn.clone(), s.done.clone(), s.samples.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Ok(mb) = rss_mb(pid) {
                    let mut g = samples.lock().unwrap_or_else(|p| p.into_inner());
                    g.0 = g.0.max(mb);
                    if in_churn.load(Ordering::Relaxed) {
                        g.1.push(mb);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        s
    }

    pub fn mark_churn(&self, on: bool) {
        self.in_churn.store(on, Ordering::Relaxed);
    }

    pub fn finish(&self) -> Rss {
        self.done.store(true, Ordering::Relaxed);
        let g = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let mut v = g.1.clone();
        v.sort_by(f64::total_cmp);
        Rss {
            peak_mb: g.0,
            churn_median_mb: v.get(v.len() / 2).copied(),
        }
    }
}
