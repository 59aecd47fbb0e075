//! `lifeboat recover`: quorum is lost (two of three members gone). Every survivor's data is
//! read natively, side by side with the journal's newest durable revision and the newest
//! trusted full backup; the freshest source that reaches the target is the base; the journal's
//! revisions after it are replayed on top in the sandbox (every checkpoint checked), and the
//! result is restored on this node as a new one-member cluster through the one restore path
//! (journaled, `--resume`, `--rollback`). The others rejoin with `member replace`. A disaster
//! then costs at most the journal's lag.
//!
//! - `survivors.rs`: finding and walking a survivor's bbolt file.
//! - `choose.rs`: the base, the target, the replay, and the survivor-vs-journal HashKV check.

mod choose;
mod survivors;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use choose::{plan, Base, HashCheck, JournalRow, RecoverPlan, Recovery, Replay, SurvivorRow};
pub use survivors::{
    copy_settled, examine, Examined, Origin, Survivor, SurvivorFacts, WhenRunning,
};

use crate::bbolt::BoltError;
use crate::continuous::ContinuousError;
use crate::pitr::{self, LocalBase, PitrError, PitrPlan, ReplayReport};
use crate::restore::SnapshotSource;
use crate::sandbox::SandboxSettings;
use crate::stages::encrypt::Identities;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("survivor {label} and the cluster's record disagree at revision {rev}: its HashKV is {actual}, {against} says {expected} (compact revision {compact_rev}); nothing was changed — find out which is wrong (`lifeboat drill --to-revision {rev}` proves the journal) and leave that source out")]
    Disagree {
        label: String,
        against: String,
        rev: i64,
        compact_rev: i64,
        expected: u32,
        actual: u32,
    },
    #[error("no source to recover from: {0}")]
    NoSource(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: BoltError,
    },
    #[error(transparent)]
    Journal(#[from] ContinuousError),
    #[error(transparent)]
    Replay(#[from] PitrError),
}

/// The state to restore: the base as it is, or the base with the journal replayed on top,
/// written to `out`.
pub struct Prepared {
    pub source: SnapshotSource,
    pub replay: Option<ReplayReport>,
}

/// What `prepare` reads from.
pub struct Inputs<'a> {
    pub store: Arc<dyn Store>,
    pub identities: Option<&'a Arc<Identities>>,
    pub sandbox: &'a SandboxSettings,
    pub progress: Arc<dyn crate::progress::Observer>,
}

/// Builds the state `plan` decided: nothing on the node changes here (the replay runs in the
/// sandbox under the work dir; a survivor's file is only read).
///
/// # Errors
/// The replay fails a check (nothing is written then), or the store cannot be read.
pub async fn prepare(
    plan: &RecoverPlan,
    inputs: Inputs<'_>,
    out: &Path,
) -> Result<Prepared, RecoverError> {
    let survivor = plan.base_survivor();
    let (source, replay) = match (&plan.base, &plan.replay, survivor) {
        (Base::Survivor { .. }, None, Some((s, _))) => (SnapshotSource::File(s.db.clone()), None),
        (Base::Survivor { label, .. }, Some(replay), Some((s, facts))) => {
            let base = LocalBase {
                file: s.db.clone(),
                id: format!("survivor {label}"),
                revision: facts.revision,
                db_size: facts.db_size,
            };
            let report = pitr::replay_local_to_file(
                inputs.store,
                base,
                replay.segments.clone(),
                plan.target,
                inputs.identities,
                inputs.sandbox,
                out,
            )
            .await?;
            (SnapshotSource::File(out.to_path_buf()), Some(report))
        }
        (Base::Backup { manifest }, None, _) => (
            SnapshotSource::Backup {
                store: inputs.store,
                manifest: manifest.clone(),
                identities: inputs.identities.cloned(),
            },
            None,
        ),
        (Base::Backup { manifest }, Some(replay), _) => {
            let pitr_plan = PitrPlan {
                cluster_id: manifest.cluster_id.clone(),
                target_rev: plan.target,
                base: (**manifest).clone(),
                chain: replay.chain.clone(),
                segments: replay.segments.clone(),
                replay_revisions: plan.target - manifest.revision,
                coverage: Vec::new(),
            };
            let report = pitr::replay_to_file(
                inputs.store,
                &pitr_plan,
                inputs.identities,
                inputs.sandbox,
                out,
                inputs.progress,
            )
            .await?;
            (SnapshotSource::File(out.to_path_buf()), Some(report))
        }
        (Base::Survivor { label, .. }, _, None) => {
            return Err(RecoverError::NoSource(format!("{label} is not usable")))
        }
    };
    Ok(Prepared { source, replay })
}

/// The data-loss window, in one line: what was restored, what the journal holds, what is lost.
pub fn loss_window(plan: &RecoverPlan) -> String {
    let at = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or(
            "time unknown: after the journal's newest".to_string(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
    };
    let mut line = format!(
        "restored through revision {} (received at {})",
        plan.target,
        at(plan.target_at)
    );
    match &plan.journal {
        Some(j) if j.newest_rev > plan.target => line.push_str(&format!(
            "; the journal's newest durable revision is {} ({}): revisions after {} were left out as asked",
            j.newest_rev,
            at(Some(j.newest_at)),
            plan.target
        )),
        Some(j) => line.push_str(&format!(
            "; the journal's newest durable revision is {} ({}); writes after {} are lost (at most the journal's lag)",
            j.newest_rev,
            at(Some(j.newest_at)),
            at(plan.target_at.or(Some(j.newest_at)))
        )),
        None => line.push_str(
            "; there is no journal: writes after the base's revision are lost",
        ),
    }
    line
}
