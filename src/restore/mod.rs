//! `lifeboat restore`: bring a control-plane node back from a backup, one journaled step at a
//! time, so that a crash anywhere can be resumed or rolled back.
//!
//! Order (docs/restore.md): fetch and verify the backup into the state dir (nothing on the
//! node changes before it fully checks out) → move the control-plane manifests into a holding
//! folder and wait until etcd is really down → move the data dir aside (never deleted) →
//! restore with etcdutl/etcdctl into a fresh folder beside it, then rename that into place →
//! etcd's manifest back, wait for it → the other manifests back → close the journal.

pub(crate) mod crash;
mod plan;
mod run;
mod steps;

pub mod apiserver;
pub mod cluster;
pub mod journal;
pub mod node;
pub mod tool;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::etcd::discovery;
use crate::readback::ReadBackError;
use crate::verify::VerifyError;

pub use crash::CRASH_ENV;
pub use journal::{Journal, JournalDir, RunState};
pub use node::{EtcdProbe, CONTROL_PLANE_PODS};
pub use plan::{
    plan, BackupFacts, ClusterRun, LocalClient, MemberOverrides, Plan, RestoreOptions,
    SnapshotSource,
};
pub use run::{execute, next_steps, resume, rollback, unfinished};
pub use tool::{MemberSpec, RestoreTool, ToolKind, DEFAULT_BUMP_REVISION};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("restore refused: {reason}")]
    Refused { reason: String },
    #[error(transparent)]
    ReadBack(#[from] ReadBackError),
    #[error("{path}: {detail}")]
    Node { path: PathBuf, detail: String },
    #[error(transparent)]
    Journal(#[from] crate::fsutil::JournalError),
    #[error("restore tool: {detail}")]
    Tool { detail: String },
    #[error("the restore tool failed: {0}")]
    ToolRun(#[from] crate::process::ProcessError),
    #[error("etcd did not stop within {waited:?} after its manifest left the manifests folder: {why}; is the kubelet running? `lifeboat restore --rollback` puts everything back")]
    StillRunning { waited: Duration, why: String },
    #[error("etcd did not come back within {waited:?}: {detail}; check its logs (crictl logs, journalctl -u kubelet), then `lifeboat restore --resume` retries, `lifeboat restore --rollback` returns to the old data")]
    NotHealthy { waited: Duration, detail: String },
    #[error("the plain snapshot {path} does not check out: {source}")]
    BadFile {
        path: PathBuf,
        #[source]
        source: VerifyError,
    },
    #[error("{0}")]
    Discovery(#[from] discovery::DiscoveryError),
    #[error("cluster restore: {0}")]
    Coordination(#[source] Box<crate::trust::envelope::EnvelopeError>),
    #[error("cluster restore: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl RestoreError {
    pub(crate) fn node(path: &Path, detail: impl Into<String>) -> RestoreError {
        RestoreError::Node {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }

    pub fn refused(reason: impl Into<String>) -> RestoreError {
        RestoreError::Refused {
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Fetch,
    StopControlPlane,
    MoveDataDir,
    Restore,
    StartEtcd,
    StartControlPlane,
    Finish,
}

impl Step {
    pub const ALL: [Step; 7] = [
        Step::Fetch,
        Step::StopControlPlane,
        Step::MoveDataDir,
        Step::Restore,
        Step::StartEtcd,
        Step::StartControlPlane,
        Step::Finish,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Fetch => "fetch",
            Step::StopControlPlane => "stop-control-plane",
            Step::MoveDataDir => "move-data-dir",
            Step::Restore => "restore",
            Step::StartEtcd => "start-etcd",
            Step::StartControlPlane => "start-control-plane",
            Step::Finish => "finish",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
