//! Point-in-time restore: from the newest trusted full backup at or before the target, replay
//! the journal (continuous backup) into a sandbox etcd, one txn per revision, checking every
//! recorded HashKV on the way, and write the sandbox's snapshot at exactly the target
//! revision. That snapshot then goes through the one restore path (`restore`), or is handed to
//! the user (`snapshot get`).
//!
//! - `plan.rs`: which base backup and which segments a target needs, asked of the journal's
//!   one reader (`continuous::Journal`), which refuses with the restorable ranges named.
//! - `replay/`: the sandbox replay and the final snapshot; `replay/leases.rs` its leases.
//! - `pipeline.rs`: several txns in flight, each guarded so etcd applies them in order.

mod pipeline;
mod plan;
mod replay;

pub use plan::{plan, PitrPlan, Target};
pub(crate) use replay::{apply_journal, on_own_thread, sandbox_flags, ReplayStart};
pub use replay::{
    replay_local_to_file, replay_to_file, LocalBase, NoHook, Proof, ReplayHook, ReplayReport,
};

use crate::continuous::ContinuousError;
use crate::etcd::SourceError;
use crate::readback::ReadBackError;
use crate::restore::RestoreError;
use crate::sandbox::SandboxError;

#[derive(Debug, thiserror::Error)]
pub enum PitrError {
    #[error(transparent)]
    Journal(#[from] ContinuousError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    ReadBack(#[from] ReadBackError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Tool(#[from] RestoreError),
    #[error("replay sandbox: {0}")]
    Etcd(#[from] SourceError),
    #[error("replay of revision {rev} failed: {detail}; the journal does not reproduce the cluster, nothing was restored")]
    Replay { rev: i64, detail: String },
    #[error("the replay sandbox's etcd failed at revision {rev}: {detail} — the machine (killed, out of memory or disk, over the sandbox's quota), not the journal; free room or memory and run it again")]
    SandboxFailed { rev: i64, detail: String },
    #[error("checkpoint at revision {rev} FAILED: the replayed store hashes to {actual}, the cluster hashed to {expected} (compact revision {compact_rev}); the journal does not reproduce the cluster, nothing was restored")]
    CheckpointMismatch {
        rev: i64,
        compact_rev: i64,
        expected: u32,
        actual: String,
    },
    #[error("writing {path}: {source}")]
    Output {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
