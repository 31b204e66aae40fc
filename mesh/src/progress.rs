//! What a long operation (`up`, `apply`, `down`) says as it goes: one
//! line per step on stderr, with the time since it began.

use std::time::{Duration, Instant};

use trellis_core::errln;

/// One line per step, to stderr, each with the time since the operation
/// (`up`, `apply`, `down`) began: `mesh demo: [  1.3s] …`.
#[derive(Debug, Clone)]
pub struct Progress {
    prefix: String,
    started: Instant,
}

impl Progress {
    pub fn new(mesh: &str) -> Self {
        Self {
            prefix: format!("mesh {mesh}: "),
            started: Instant::now(),
        }
    }

    pub fn step(&self, msg: &str) {
        errln!("{}", self.line(self.started.elapsed(), msg));
    }

    fn line(&self, elapsed: Duration, msg: &str) -> String {
        format!("{}[{:>5.1}s] {msg}", self.prefix, elapsed.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_carry_the_time_since_the_start() {
        let p = Progress::new("demo");
        assert_eq!(
            p.line(Duration::from_millis(2345), "pod demo/web-0 made"),
            "mesh demo: [  2.3s] pod demo/web-0 made"
        );
        assert_eq!(
            p.line(Duration::from_secs(125), "x"),
            "mesh demo: [125.0s] x"
        );
    }
}
