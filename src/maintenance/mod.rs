//! Maintenance (#27): defragmentation, quota and NOSPACE, one member at a time and only behind
//! a backup proven at (nearly) the current state.
//!
//! - `survey.rs`: every member's sizes, role and health, and the alarms.
//! - `plan.rs`: which members, in which order (followers first, the leader last), or why not.
//! - `run.rs`: the backup it needs first, then each defragmentation, waiting for the member to
//!   answer again; NOSPACE: compact, defragment, disarm once under the quota with headroom.

mod plan;
mod run;
mod survey;

pub use plan::{plan, Pick, Plan, Planned};
pub use run::{
    ensure_backup, execute, existing_proof, Action, BackupProof, Inputs, NospaceOutcome, Report,
};
pub use survey::{survey, MemberState, Survey};

use std::time::Duration;

/// When a member is worth defragmenting, and how.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Free pages over the file's size at or above which a member is defragmented.
    pub fragmentation_ratio: f64,
    /// Files smaller than this are left alone (bytes).
    pub min_db_size: u64,
    /// Hand leadership to a follower before defragmenting the leader.
    pub move_leader: bool,
    /// Under NOSPACE, compact to the current revision first (off when etcd's own
    /// `--auto-compaction-*` or the API server's compactor is left to do it).
    pub compact_on_nospace: bool,
}

/// The share of the quota a database must be under before NOSPACE is disarmed: disarming at
/// 99 % would see the alarm raised again by the next writes.
pub const NOSPACE_HEADROOM: f64 = 0.8;

#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("maintenance refused, nothing was done: {why}")]
    Blocked { why: String },
    #[error("the backup maintenance needs first failed, so nothing was defragmented: {0}")]
    Backup(#[source] crate::backup::BackupError),
    #[error("{what} on {member}: {source}")]
    Etcd {
        what: &'static str,
        member: String,
        #[source]
        source: crate::etcd::SourceError,
    },
    #[error("NOSPACE is still raised: {why}")]
    NospaceLeft { why: String },
    #[error("{member} did not answer with a leader within {}s after its defragmentation: {last}; the next member was not started — look at its log", .waited.as_secs())]
    NotBack {
        member: String,
        waited: Duration,
        last: String,
    },
}
