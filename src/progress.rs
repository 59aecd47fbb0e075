//! How the library reports what it is doing without printing: one observer for the long byte
//! phases (a progress bar on a terminal), the steps of journaled commands (restore, upgrade),
//! preflight checks and notes. The CLI implements it; [`Silent`] reports nothing.

use std::time::Duration;

/// How a preflight check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Warn,
    Fail,
}

pub trait Observer: Send + Sync {
    /// A long phase begins; `total` bytes when known.
    fn begin(&self, _phase: &str, _total: Option<u64>) {}
    fn advance(&self, _bytes: u64) {}
    fn end(&self) {}
    /// A journaled step starts; `lines` say what it does (commands are shown as `$ …`).
    fn step_started(&self, _step: &str, _lines: &[String]) {}
    fn step_done(&self, _step: &str, _took: Duration) {}
    /// A preflight check's result.
    fn check(&self, _severity: Severity, _name: &str, _detail: &str) {}
    /// Something the operator should read.
    fn note(&self, _message: &str) {}
}

/// Reports nothing.
pub struct Silent;

impl Observer for Silent {}

/// Notes as log lines (a service has no terminal): what maintenance did, with sizes.
pub struct Logged;

impl Observer for Logged {
    fn note(&self, message: &str) {
        tracing::info!("{message}");
    }
}
