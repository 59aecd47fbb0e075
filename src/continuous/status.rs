//! What a store's journal holds: per chain, its base backup and the revisions and times its
//! segments reach; the gaps between chains (a restore target there is refused); the newest
//! durable revision and its age.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::chain::{list_chains, read_manifest, ChainListing};
use super::head::trusted_head;
use super::proven::trusted_proven;
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
    /// When the chain was last known to hold every revision the member had (its head, while
    /// the cluster is idle): a time target up to here is restorable.
    pub caught_up_at: Option<DateTime<Utc>>,
    /// The newest revision a shadow proved this chain restores exactly (trusted signature).
    pub proven_rev: Option<i64>,
    pub proven_at: Option<DateTime<Utc>>,
    /// Segments missing inside the chain (by their sequence numbers): nothing at or after a
    /// hole is restorable from this chain's earlier base.
    pub holes: Vec<Hole>,
}

/// Segments missing between two that are there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hole {
    /// The last segment before the hole, and the first after it.
    pub after_seq: u64,
    pub resumes_at_seq: u64,
    /// The first revision of the segment after the hole (from its name).
    pub resumes_at_rev: i64,
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
    /// The newest chain's head: when it last held every revision the member had.
    pub caught_up_at: Option<DateTime<Utc>>,
    /// The verified window: the newest revision of the newest chain a shadow proved.
    pub proven_rev: Option<i64>,
    pub proven_at: Option<DateTime<Utc>>,
    /// Chains whose segments or head are not trusted: not restorable, named here (#21).
    pub untrusted_chains: Vec<UntrustedChain>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UntrustedChain {
    pub chain: String,
    pub why: String,
}

/// The ends of one chain: its first and last segment (none while only its base backup
/// exists) and when it was last known caught up.
pub struct ChainEnds {
    pub first: Option<SegmentManifest>,
    pub last: Option<SegmentManifest>,
    /// The later of the last segment's receive time and a head that names that segment.
    pub caught_up_at: Option<DateTime<Utc>>,
}

/// Reads a chain's first and last manifest and its head.
///
/// # Errors
/// A first or last manifest is unreadable or untrusted (an untrusted head is only ignored).
pub async fn chain_ends(
    store: &dyn Store,
    policy: &ReadPolicy,
    listing: &ChainListing,
    base_rev: Option<i64>,
) -> Result<ChainEnds, ContinuousError> {
    let first = match listing.segments.first() {
        Some(k) => Some(read_manifest(store, policy, k).await?),
        None => None,
    };
    let last = match listing.segments.last() {
        Some(k) => Some(read_manifest(store, policy, k).await?),
        None => None,
    };
    let head = match listing.has_head {
        true => trusted_head(store, policy, &listing.chain).await,
        false => None,
    };
    let head_at = head
        .filter(|h| match (&last, base_rev) {
            (Some(_), _) => h.covers(&listing.chain, last.as_ref(), 0),
            (None, Some(base)) => h.covers(&listing.chain, None, base),
            (None, None) => false,
        })
        .map(|h| h.caught_up_at);
    let last_at = last.as_ref().map(|m| m.last_at);
    Ok(ChainEnds {
        caught_up_at: last_at.max(head_at),
        first,
        last,
    })
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
    let mut untrusted = Vec::new();
    for listing in list_chains(store.as_ref()).await? {
        if cluster.is_some_and(|c| c != listing.cluster_id) {
            continue;
        }
        let base = backups.iter().find(|m| m.id == listing.chain);
        let ends =
            match chain_ends(store.as_ref(), policy, &listing, base.map(|m| m.revision)).await {
                Ok(ends) => ends,
                Err(e @ (ContinuousError::Trust(_) | ContinuousError::Invalid { .. })) => {
                    untrusted.push(UntrustedChain {
                        chain: listing.chain.clone(),
                        why: e.to_string(),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
        if let Some(mut c) = chain_status(&listing, base, &ends) {
            if let Some(p) = trusted_proven(store.as_ref(), policy, &listing.chain).await {
                c.proven_rev = Some(p.revision);
                c.proven_at = Some(p.proven_at);
            }
            chains.push(c);
        }
    }
    let gaps = gaps(&chains);
    let newest = chains.iter().max_by_key(|c| (c.last_rev, c.last_at));
    Ok(JournalStatus {
        newest_rev: newest.map(|c| c.last_rev),
        newest_at: newest.map(|c| c.last_at),
        newest_age_secs: newest
            .map(|c| (Utc::now() - c.last_at).num_milliseconds().max(0) as f64 / 1000.0),
        caught_up_at: newest.and_then(|c| c.caught_up_at),
        proven_rev: newest.and_then(|c| c.proven_rev),
        proven_at: newest.and_then(|c| c.proven_at),
        chains,
        gaps,
        untrusted_chains: untrusted,
    })
}

/// `None` for a chain with neither segments nor a head that speaks of its base.
fn chain_status(
    listing: &ChainListing,
    base: Option<&Manifest>,
    ends: &ChainEnds,
) -> Option<ChainStatus> {
    let (first_rev, last_rev, first_at, last_at) = match (&ends.first, &ends.last) {
        (Some(first), Some(last)) => (first.first_rev, last.last_rev, first.first_at, last.last_at),
        _ => {
            let base = base.filter(|_| ends.caught_up_at.is_some())?;
            (
                base.revision + 1,
                base.revision,
                base.created_at,
                base.created_at,
            )
        }
    };
    Some(ChainStatus {
        chain: listing.chain.clone(),
        cluster_id: format!("{:x}", listing.cluster_id),
        base_revision: base.map(|m| m.revision),
        segments: listing.segments.len(),
        first_rev,
        last_rev,
        first_at,
        last_at,
        caught_up_at: ends.caught_up_at,
        proven_rev: None,
        proven_at: None,
        holes: holes(listing),
    })
}

/// Missing sequence numbers between the segments listed (names only: a deleted segment leaves
/// no manifest to read). The head of a chain removed by retention is not a hole.
pub fn holes(listing: &ChainListing) -> Vec<Hole> {
    listing
        .segments
        .windows(2)
        .filter(|w| w[1].seq > w[0].seq + 1)
        .map(|w| Hole {
            after_seq: w[0].seq,
            resumes_at_seq: w[1].seq,
            resumes_at_rev: w[1].first_rev,
        })
        .collect()
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
        if let Err(e) = super::chain::check_chain(store.as_ref(), policy, &listing).await {
            tracing::warn!(chain = %listing.chain, error = %e, "a journal chain that is not trusted: not listed");
            continue;
        }
        for key in &listing.segments {
            out.push(read_manifest(store.as_ref(), policy, key).await?);
        }
    }
    Ok(out)
}
