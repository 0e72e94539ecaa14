//! Progress display: a bar on a terminal, a few plain lines otherwise (logs, CI, pipes).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Reports progress of an iterative job.
pub struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    every: usize,
    label: String,
}

impl Progress {
    /// Progress over `total` steps called `label`.
    pub fn new(label: &str, total: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        // Without a terminal, print about 20 lines per run, plus the first and the last step.
        Progress { bar, total, every: total.div_ceil(20).max(1), label: label.to_string() }
    }

    /// Marks step `i` (0-based) done, with a short status such as the loss.
    pub fn step(&self, i: usize, status: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(i as u64 + 1);
                bar.set_message(status.to_string());
            }
            None => {
                if i == 0 || (i + 1).is_multiple_of(self.every) || i + 1 == self.total {
                    eprintln!("{} {}/{} {status}", self.label, i + 1, self.total);
                }
            }
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
