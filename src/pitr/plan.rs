//! What a point-in-time restore needs: the newest trusted full backup at or before the target
//! revision, in a chain whose journal reaches the target, and the segments from that backup's
//! revision to the target — each manifest signature-checked and linked to the one before.
//! Targets nobody can reach are refused with every restorable range named.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::PitrError;
use crate::catalog::Manifest;
use crate::continuous::{Coverage, Journal, SegmentManifest};
use crate::stages::encrypt::Identities;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Revision(i64),
    Time(DateTime<Utc>),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Revision(r) => write!(f, "revision {r}"),
            Target::Time(t) => write!(f, "{}", t.to_rfc3339()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PitrPlan {
    pub cluster_id: String,
    pub target_rev: i64,
    pub base: Manifest,
    pub chain: String,
    /// From the one holding `base.revision + 1` to the one holding the target.
    pub segments: Vec<SegmentManifest>,
    /// Revisions the replay applies.
    pub replay_revisions: i64,
    pub coverage: Vec<Coverage>,
}

/// Plans a restore to revision `target`.
///
/// # Errors
/// No chain reaches it (the restorable ranges are named), or a manifest is untrusted or a link
/// broken.
pub async fn plan(
    journal: &Journal,
    identities: Option<&Identities>,
    cluster: Option<u64>,
    target: i64,
) -> Result<PitrPlan, PitrError> {
    let reach = journal.reach(cluster).await?;
    let Some(chain) = reach.reaching(target) else {
        return Err(reach
            .not_covered(format!("revision {target}"), "no journal chain reaches it")
            .into());
    };
    // Any trusted backup inside the chain's range serves as the base: the newest one — a
    // shadow's only where a writer-signed checkpoint at its revision confirms it.
    let mut inside: Vec<&Manifest> = reach
        .backups
        .iter()
        .filter(|m| m.revision >= chain.base.revision && m.revision <= target)
        .collect();
    inside.sort_by_key(|m| std::cmp::Reverse((m.revision, m.created_at)));
    let mut base = chain.base.clone();
    for m in inside {
        match journal.confirm_base(identities, m).await {
            Ok(()) => {
                base = m.clone();
                break;
            }
            Err(e) => tracing::warn!(error = %e, "not a base for this restore"),
        }
    }
    let segments = journal
        .segments_between(&chain.listing, base.revision, target)
        .await?;
    Ok(PitrPlan {
        cluster_id: format!("{:x}", reach.cluster),
        target_rev: target,
        replay_revisions: target - base.revision,
        chain: chain.listing.chain.clone(),
        base,
        segments,
        coverage: reach.coverage(),
    })
}
