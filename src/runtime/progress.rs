//! Training progress: a live bar (indicatif) when stdout is a terminal, plain periodic lines when
//! it is not (CI logs, files), with the same text either way.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// Where progress goes.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar over `total` steps starting at `start`, or plain lines when stdout is not a terminal.
    pub fn new(total: u64, start: u64) -> Self {
        if !std::io::stdout().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_position(start);
        Progress { bar: Some(bar) }
    }

    /// No output at all: the progress of a rank other than 0, whose rank 0 reports for the job.
    pub fn silent() -> Self {
        Progress { bar: None }
    }

    /// A step finished; `line` is the latest metrics summary, printed as a line without a bar.
    pub fn step(&self, step: u64, line: Option<&str>) {
        match (&self.bar, line) {
            (Some(bar), Some(line)) => {
                bar.set_position(step);
                bar.set_message(line.to_string());
            }
            (Some(bar), None) => bar.set_position(step),
            (None, Some(line)) => println!("{line}"),
            (None, None) => {}
        }
    }

    /// A message that stays (evaluations, checkpoints).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
