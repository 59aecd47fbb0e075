//! What a store's journal holds: per chain, its base backup and the revisions and times its
//! segments reach; the gaps between chains (a restore target there is refused); the newest
//! durable revision and its age.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::chain::ChainListing;
use super::journal::{is_distrust, ChainEnds, Journal};
use super::proven::trusted_proven;
use super::{ContinuousError, SegmentManifest};
use crate::catalog::Manifest;

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

impl Journal {
    /// What the journal holds, per chain of `cluster` (or all): reads the first and last
    /// manifest and the head of each.
    ///
    /// # Errors
    /// Listing fails; a first or last manifest is unreadable (an untrusted chain is named in
    /// `untrusted_chains`, not an error).
    pub async fn status(&self, cluster: Option<u64>) -> Result<JournalStatus, ContinuousError> {
        let backups = self.backups().await?;
        let mut chains = Vec::new();
        let mut untrusted = Vec::new();
        for listing in self.listings(cluster).await? {
            let base = backups.iter().find(|m| m.id == listing.chain);
            let ends = match self.ends(&listing, base.map(|m| m.revision)).await {
                Ok(ends) => ends,
                Err(e) if is_distrust(&e) => {
                    untrusted.push(UntrustedChain {
                        chain: listing.chain.clone(),
                        why: e.to_string(),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(mut c) = chain_status(&listing, base, &ends) {
                if let Some(p) =
                    trusted_proven(self.store().as_ref(), self.policy(), &listing.chain).await
                {
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

    /// Every segment manifest of every trusted chain (of `cluster`, or all), in chain order.
    ///
    /// # Errors
    /// Listing fails; a manifest is unreadable or untrusted.
    pub async fn segments(
        &self,
        cluster: Option<u64>,
    ) -> Result<Vec<SegmentManifest>, ContinuousError> {
        let mut out = Vec::new();
        for listing in self.listings(cluster).await? {
            if let Err(e) = self.check_chain(&listing).await {
                tracing::warn!(chain = %listing.chain, error = %e, "a journal chain that is not trusted: not listed");
                continue;
            }
            for key in &listing.segments {
                out.push(self.manifest(key).await?);
            }
        }
        Ok(out)
    }
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
