//! What a store's journal holds: per chain, its base backup and the revisions and times its
//! segments reach; the gaps between chains (a restore target there is refused); the newest
//! durable revision and its age.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::chain::{list_chains, read_manifest};
use super::{ContinuousError, SegmentManifest};
use crate::catalog::{Catalog, Manifest};
use crate::store::Store;
use crate::trust::ReadPolicy;

#[derive(Debug, Clone, Serialize)]
pub struct ChainStatus {
    pub chain: String,
    pub cluster_id: String,
    /// The base backup's revision; `None` when that backup is gone or untrusted (then the
    /// chain cannot be restored from).
    pub base_revision: Option<i64>,
    pub segments: usize,
    pub first_rev: i64,
    pub last_rev: i64,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

/// Revisions no chain covers: between the end of one chain and the base of the next.
#[derive(Debug, Clone, Serialize)]
pub struct Gap {
    pub cluster_id: String,
    /// The last revision restorable before the gap.
    pub after_rev: i64,
    /// The first revision restorable after it.
    pub resumes_at_rev: i64,
    pub after_chain: String,
    pub next_chain: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct JournalStatus {
    pub chains: Vec<ChainStatus>,
    pub gaps: Vec<Gap>,
    pub newest_rev: Option<i64>,
    pub newest_at: Option<DateTime<Utc>>,
    /// Seconds between the newest durable revision's receive time and now.
    pub newest_age_secs: Option<f64>,
}

/// Reads the first and last manifest of every chain (of `cluster`, or all).
///
/// # Errors
/// Listing fails; a first or last manifest is unreadable or untrusted.
pub async fn status(
    store: &Arc<dyn Store>,
    policy: &Arc<ReadPolicy>,
    cluster: Option<u64>,
) -> Result<JournalStatus, ContinuousError> {
    let (backups, _) = Catalog::new(store.clone(), policy.clone())
        .list()
        .await
        .map_err(|e| ContinuousError::Invalid {
            key: store.location(),
            what: e.to_string(),
        })?;
    let mut chains = Vec::new();
    for listing in list_chains(store.as_ref()).await? {
        if cluster.is_some_and(|c| c != listing.cluster_id) {
            continue;
        }
        let (Some(first), Some(last)) = (listing.segments.first(), listing.segments.last()) else {
            continue;
        };
        let first = read_manifest(store.as_ref(), policy, first).await?;
        let last = read_manifest(store.as_ref(), policy, last).await?;
        chains.push(chain_status(
            &listing.chain,
            &backups,
            &first,
            &last,
            listing.segments.len(),
        ));
    }
    let gaps = gaps(&chains);
    let newest = chains.iter().max_by_key(|c| c.last_at);
    Ok(JournalStatus {
        newest_rev: newest.map(|c| c.last_rev),
        newest_at: newest.map(|c| c.last_at),
        newest_age_secs: newest
            .map(|c| (Utc::now() - c.last_at).num_milliseconds().max(0) as f64 / 1000.0),
        chains,
        gaps,
    })
}

fn chain_status(
    chain: &str,
    backups: &[Manifest],
    first: &SegmentManifest,
    last: &SegmentManifest,
    segments: usize,
) -> ChainStatus {
    ChainStatus {
        chain: chain.to_string(),
        cluster_id: first.cluster_id.clone(),
        base_revision: backups.iter().find(|m| m.id == chain).map(|m| m.revision),
        segments,
        first_rev: first.first_rev,
        last_rev: last.last_rev,
        first_at: first.first_at,
        last_at: last.last_at,
    }
}

/// Between consecutive chains of a cluster, ordered by base, where the next one starts above
/// the end of the one before.
fn gaps(chains: &[ChainStatus]) -> Vec<Gap> {
    let mut out = Vec::new();
    for pair in chains.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.cluster_id != b.cluster_id {
            continue;
        }
        let resumes = b.base_revision.unwrap_or(b.first_rev - 1);
        if resumes > a.last_rev + 1 {
            out.push(Gap {
                cluster_id: a.cluster_id.clone(),
                after_rev: a.last_rev,
                resumes_at_rev: resumes,
                after_chain: a.chain.clone(),
                next_chain: b.chain.clone(),
            });
        }
    }
    out
}

/// Every segment manifest of every chain (of `cluster`, or all), in chain order.
///
/// # Errors
/// Listing fails; a manifest is unreadable or untrusted.
pub async fn segments(
    store: &Arc<dyn Store>,
    policy: &ReadPolicy,
    cluster: Option<u64>,
) -> Result<Vec<SegmentManifest>, ContinuousError> {
    let mut out = Vec::new();
    for listing in list_chains(store.as_ref()).await? {
        if cluster.is_some_and(|c| c != listing.cluster_id) {
            continue;
        }
        for key in &listing.segments {
            out.push(read_manifest(store.as_ref(), policy, key).await?);
        }
    }
    Ok(out)
}
