//! The upgrade journal: `<state-dir>/upgrade/journal.json` while a run is unfinished, written
//! through `fsutil::JournalFile` (atomic rewrite around every step, run lock, archived on
//! close).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::version::KubeVersion;
use super::{GateResult, Role, Step, UpgradeError};
use crate::fsutil::{JournalFile, RunLock};

/// The upgrade journal: `<state-dir>/upgrade/journal.json` while a run is unfinished.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    pub to: KubeVersion,
    pub role: Role,
    pub node: String,
    pub started_at: DateTime<Utc>,
    pub done: Vec<Step>,
    pub failed: Option<Step>,
    pub gate: Option<GateResult>,
    /// The etcd the upgrade brings (#26), where kubeadm runs etcd on the node: the gate
    /// refuses a 3.6+ target on a backup whose v3 store has zombie members.
    #[serde(default)]
    pub etcd_target: Option<super::etcd_path::EtcdVersion>,
}

fn journal_file(state_dir: &Path) -> JournalFile {
    JournalFile::new(state_dir.join("upgrade"), "upgrade")
}

pub(super) fn journal_path(state_dir: &Path) -> PathBuf {
    journal_file(state_dir).path()
}

/// # Errors
/// An unreadable journal.
pub fn load_journal(state_dir: &Path) -> Result<Option<Journal>, UpgradeError> {
    Ok(journal_file(state_dir).load()?)
}

pub(super) fn save_journal(state_dir: &Path, j: &Journal) -> Result<(), UpgradeError> {
    Ok(journal_file(state_dir).save(j)?)
}

/// Archives the journal of a finished run beside it, so the next upgrade may start.
pub(super) fn close_journal(state_dir: &Path, j: &Journal) -> Result<(), UpgradeError> {
    let file = journal_file(state_dir);
    let to = file.dir().join(format!(
        "journal-{}-{}.json",
        j.to,
        Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    Ok(file.archive(j, &to)?)
}

/// Drops the journal of a run that changed nothing (its gate failed).
pub(super) fn discard_journal(state_dir: &Path) {
    journal_file(state_dir).discard();
}

/// Two upgrades of one node at once must not interleave: held for the whole run.
pub(super) fn lock(state_dir: &Path) -> Result<RunLock, UpgradeError> {
    Ok(journal_file(state_dir).lock()?)
}
