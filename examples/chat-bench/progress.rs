//! A one-line progress display on stderr.

use std::{
    io::{IsTerminal, Write as _},
    time::Duration,
};

use tokio::time::Instant;

use crate::{contender::Contender, rounds::RoundId};

/// A one-line progress display on stderr (a line per step when stderr is not a terminal).
pub struct Progress {
    start: Instant,
    estimate: Duration,
    terminal: bool,
    last: String,
}

impl Progress {
    /// A display for a run expected to take about `estimate`.
    pub fn new(estimate: Duration) -> Self {
        Self {
            start: Instant::now(),
            estimate,
            terminal: std::io::stderr().is_terminal(),
            last: String::new(),
        }
    }

    /// Shows that `contender` runs `step` of `id`.
    pub fn show(&mut self, id: &RoundId, step: &str, contender: Contender) {
        let elapsed = self.start.elapsed().as_secs();
        let head = format!(
            "[{elapsed:>3}s of ~{}s] {} c={}",
            self.estimate.as_secs(),
            id.scenario.name(),
            id.concurrency
        );
        let mut stderr = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(stderr, "\r\x1b[K{head}: {step} {}", contender.name());
            let _ = stderr.flush();
        } else {
            // One line per scenario and concurrency level is enough in a log.
            let cell = format!("{} c={}", id.scenario.name(), id.concurrency);
            if cell != self.last {
                let _ = writeln!(stderr, "{head}");
                self.last = cell;
            }
        }
    }

    /// Clears the display and says how long the run took.
    pub fn finish(&self) {
        if self.terminal {
            eprint!("\r\x1b[K");
        }
        eprintln!(
            "chat-bench: done in {:.0}s",
            self.start.elapsed().as_secs_f64()
        );
    }
}
