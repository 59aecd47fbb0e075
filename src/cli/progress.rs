//! The one observer of the CLI: steps, checks and notes on stderr, and a progress bar for the
//! long byte phases — only when stdout and stderr are a terminal.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lifeboat::progress::{Observer, Severity};

pub struct Printer {
    /// `None` off a terminal: no bar at all.
    bar: Option<Mutex<Option<ProgressBar>>>,
    /// `-w json`: stdout is for the machine; steps and checks go only to the log.
    quiet: bool,
}

impl Printer {
    pub fn new(quiet: bool) -> Arc<Printer> {
        let terminal = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        Arc::new(Printer {
            bar: terminal.then(|| Mutex::new(None)),
            quiet,
        })
    }

    fn with_bar(&self, f: impl FnOnce(&mut Option<ProgressBar>)) {
        if let Some(slot) = &self.bar {
            if let Ok(mut slot) = slot.lock() {
                f(&mut slot);
            }
        }
    }
}

/// A printer for a command whose stdout is a table (or a file): steps and a bar on stderr.
pub fn for_terminal() -> Arc<Printer> {
    Printer::new(false)
}

impl Observer for Printer {
    fn begin(&self, phase: &str, total: Option<u64>) {
        self.with_bar(|slot| {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(phase.to_string());
            *slot = Some(bar);
        });
    }

    fn advance(&self, bytes: u64) {
        self.with_bar(|slot| {
            if let Some(bar) = slot.as_ref() {
                bar.inc(bytes);
            }
        });
    }

    fn end(&self) {
        self.with_bar(|slot| {
            if let Some(bar) = slot.take() {
                bar.finish_and_clear();
            }
        });
    }

    fn step_started(&self, step: &str, lines: &[String]) {
        tracing::info!(step, "step started");
        if !self.quiet {
            eprintln!("==> {step}");
            for line in lines {
                eprintln!("    {line}");
            }
        }
    }

    fn step_done(&self, step: &str, took: Duration) {
        if !self.quiet {
            eprintln!("    {step} done in {:.1}s", took.as_secs_f64());
        }
    }

    fn check(&self, severity: Severity, name: &str, detail: &str) {
        if !self.quiet {
            let mark = match severity {
                Severity::Ok => "ok  ",
                Severity::Warn => "WARN",
                Severity::Fail => "FAIL",
            };
            eprintln!("[{mark}] {name:<16} {detail}");
        }
    }

    fn note(&self, message: &str) {
        if !self.quiet {
            eprintln!("    {message}");
        }
    }
}
