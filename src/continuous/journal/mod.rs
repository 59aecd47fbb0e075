//! `Journal`: the one reader of the journal, as `catalog::Catalog` is for full backups. Every
//! reader — a point-in-time plan, the shadow's follower, the capture's resume, `continuous
//! status` — lists chains, decides which to trust, links segments and maps times through it, so
//! a rule about what the journal proves is written once.
//!
//! What a store holds is read lazily: names first (`listings`), then only the manifests a
//! question needs. Manifests are never overwritten (their write is the commit point), so one
//! read per `Journal` is enough; the cache is bounded for a long-lived follower.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

mod lookup;
mod reach;

pub use lookup::Checkpoint;
pub use reach::{Coverage, NewestChain, Reach, RestorableChain};

use super::chain::{check_link, list_chains, read_manifest, read_records, ChainListing};
use super::head::trusted_head;
use super::segment::{prefix, Record, SegmentKey, SegmentManifest};
use super::ContinuousError;
use crate::catalog::{cluster_of, BackupId, Catalog, Manifest, Reason};
use crate::stages::encrypt::Identities;
use crate::store::Store;
use crate::trust::ReadPolicy;

/// Manifests kept per `Journal` before the cache starts over (about 1 KiB each).
const CACHE_LIMIT: usize = 4096;

/// The journal in one store, read through one trust policy.
pub struct Journal {
    store: Arc<dyn Store>,
    policy: Arc<ReadPolicy>,
    manifests: Mutex<HashMap<String, SegmentManifest>>,
}

/// The ends of one chain: its first and last segment (none while only its base backup
/// exists) and when it was last known caught up.
pub struct ChainEnds {
    pub first: Option<SegmentManifest>,
    pub last: Option<SegmentManifest>,
    /// The later of the last segment's receive time and a head that names that segment.
    pub caught_up_at: Option<DateTime<Utc>>,
}

/// Whether an error says a chain is not to be believed (rather than that the store is down).
pub(super) fn is_distrust(e: &ContinuousError) -> bool {
    matches!(
        e,
        ContinuousError::Trust(_) | ContinuousError::Invalid { .. }
    )
}

impl Journal {
    pub fn new(store: Arc<dyn Store>, policy: Arc<ReadPolicy>) -> Journal {
        Journal {
            store,
            policy,
            manifests: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn policy(&self) -> &Arc<ReadPolicy> {
        &self.policy
    }

    /// The chains of `cluster` (or all), by their names alone, oldest first.
    ///
    /// # Errors
    /// The listing fails.
    pub async fn listings(
        &self,
        cluster: Option<u64>,
    ) -> Result<Vec<ChainListing>, ContinuousError> {
        let all = list_chains(self.store.as_ref()).await?;
        Ok(all
            .into_iter()
            .filter(|c| cluster.is_none_or(|id| id == c.cluster_id))
            .collect())
    }

    /// One segment manifest, signature-checked and consistent with its name.
    ///
    /// # Errors
    /// Unreadable, untrusted, unparsable, or not what its name says.
    pub async fn manifest(&self, key: &SegmentKey) -> Result<SegmentManifest, ContinuousError> {
        let name = key.manifest_key();
        if let Some(m) = self.cached(&name) {
            return Ok(m);
        }
        let m = read_manifest(self.store.as_ref(), &self.policy, key).await?;
        let mut cache = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(name, m.clone());
        Ok(m)
    }

    fn cached(&self, name: &str) -> Option<SegmentManifest> {
        let cache = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(name).cloned()
    }

    /// A segment's records, checked against its manifest.
    ///
    /// # Errors
    /// Unreadable, tampered, or undecryptable.
    pub async fn records(
        &self,
        m: &SegmentManifest,
        identities: Option<&Identities>,
    ) -> Result<Vec<Record>, ContinuousError> {
        read_records(self.store.as_ref(), m, identities).await
    }

    /// Whether a chain listed by its names alone is one a writer wrote (#21): its first
    /// segment's manifest (or, with none yet, its head) is trusted. Anyone who can write the
    /// bucket can put objects under any chain name; such a chain is skipped, warned, by every
    /// reader, rather than failing restores, the capture's resume or the shadow.
    ///
    /// # Errors
    /// Why the chain is not believed (untrusted, unreadable, no segment and no head).
    pub async fn check_chain(&self, listing: &ChainListing) -> Result<(), ContinuousError> {
        match listing.segments.first() {
            Some(first) => self.manifest(first).await.map(|_| ()),
            None => match super::head::read_head(self.store.as_ref(), &self.policy, &listing.chain)
                .await?
            {
                Some(_) => Ok(()),
                None => Err(ContinuousError::Invalid {
                    key: listing.chain.clone(),
                    what: "a chain with neither a segment nor a head".into(),
                }),
            },
        }
    }

    /// The newest trusted chain of `cluster`, started after `newer_than` when given. Chains
    /// no writer signed (planted names) are skipped, warned.
    ///
    /// # Errors
    /// The listing fails.
    pub async fn newest_trusted(
        &self,
        cluster: u64,
        newer_than: Option<&str>,
    ) -> Result<Option<ChainListing>, ContinuousError> {
        let started = |name: &str| BackupId::parse(name).map(|id| id.time);
        let floor = newer_than.and_then(started);
        for listing in self.listings(Some(cluster)).await?.into_iter().rev() {
            if newer_than.is_some()
                && (Some(listing.chain.as_str()) == newer_than || started(&listing.chain) <= floor)
            {
                continue;
            }
            match self.check_chain(&listing).await {
                Ok(()) => return Ok(Some(listing)),
                Err(e) => {
                    tracing::warn!(chain = %listing.chain, error = %e, "a journal chain that is not trusted: not used");
                }
            }
        }
        Ok(None)
    }

    /// A chain's first and last manifest and its head.
    ///
    /// # Errors
    /// A first or last manifest is unreadable or untrusted (an untrusted head is only ignored).
    pub async fn ends(
        &self,
        listing: &ChainListing,
        base_rev: Option<i64>,
    ) -> Result<ChainEnds, ContinuousError> {
        let first = match listing.segments.first() {
            Some(k) => Some(self.manifest(k).await?),
            None => None,
        };
        let last = match listing.segments.last() {
            Some(k) => Some(self.manifest(k).await?),
            None => None,
        };
        let head = match listing.has_head {
            true => trusted_head(self.store.as_ref(), &self.policy, &listing.chain).await,
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

    /// The trusted full backups, through the catalog.
    ///
    /// # Errors
    /// The catalog cannot be listed.
    pub async fn backups(&self) -> Result<Vec<Manifest>, ContinuousError> {
        let (backups, _) = Catalog::new(self.store.clone(), self.policy.clone())
            .list()
            .await?;
        Ok(backups)
    }

    /// What one cluster's journal can restore (with `None`: the store's only cluster).
    ///
    /// # Errors
    /// No journal, or several clusters and none named; the store cannot be read.
    pub async fn reach(&self, cluster: Option<u64>) -> Result<Reach, ContinuousError> {
        let backups = self.backups().await?;
        let listings = self.listings(cluster).await?;
        let cluster = match cluster {
            Some(c) => c,
            None => self.only_cluster(&listings)?,
        };
        let backups: Vec<Manifest> = backups
            .into_iter()
            .filter(|m| cluster_of(m) == Some(cluster))
            .collect();
        let mut chains = Vec::new();
        for listing in listings.into_iter().filter(|c| c.cluster_id == cluster) {
            if let Some(c) = self.restorable(listing, &backups).await? {
                chains.push(c);
            }
        }
        Ok(Reach {
            cluster,
            backups,
            chains,
        })
    }

    fn only_cluster(&self, listings: &[ChainListing]) -> Result<u64, ContinuousError> {
        let mut ids: Vec<u64> = listings.iter().map(|c| c.cluster_id).collect();
        ids.sort_unstable();
        ids.dedup();
        match ids.as_slice() {
            [one] => Ok(*one),
            [] => Err(ContinuousError::NotCovered {
                target: "a point in time".into(),
                why: format!(
                    "{} holds no journal (continuous backup is off?)",
                    self.store.location()
                ),
                coverage: "only the full backups (`lifeboat snapshot list`)".into(),
            }),
            many => {
                let names: Vec<String> = many.iter().map(|c| format!("{c:x}")).collect();
                Err(ContinuousError::AmbiguousCluster(names.join(", ")))
            }
        }
    }

    /// The chain as a restore sees it, or `None` when it cannot start one: its ends are not
    /// trusted (planted names, or damage: skipped, warned — one such chain must not make every
    /// restore of the cluster fail, #21), it was never caught up, or no trusted full backup
    /// starts it.
    async fn restorable(
        &self,
        listing: ChainListing,
        backups: &[Manifest],
    ) -> Result<Option<RestorableChain>, ContinuousError> {
        let own_base = backups.iter().find(|m| m.id == listing.chain);
        let ends = match self.ends(&listing, own_base.map(|m| m.revision)).await {
            Ok(ends) => ends,
            Err(e) if is_distrust(&e) => {
                tracing::warn!(chain = %listing.chain, error = %e, "journal chain not used: not trusted");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let Some(to_time) = ends.caught_up_at else {
            return Ok(None);
        };
        let (first_rev, last_rev) = match (&ends.first, &ends.last) {
            (Some(first), Some(last)) => (first.first_rev, last.last_rev),
            // Only a head on the base so far: the chain reaches its base, up to the head's time.
            _ => match own_base {
                Some(b) => (b.revision + 1, b.revision),
                None => return Ok(None),
            },
        };
        // A chain counts from the oldest trusted full backup it can continue: one whose next
        // revision is in a segment still there (its own base, or a later backup once
        // retention has removed the head of the chain).
        let Some(base) = backups
            .iter()
            .filter(|m| m.reason != Reason::Shadow)
            .filter(|m| m.revision + 1 >= first_rev && m.revision <= last_rev)
            .min_by_key(|m| (m.revision, m.created_at))
            .cloned()
        else {
            tracing::warn!(chain = %listing.chain, "journal chain without a trusted full backup to start from: not used");
            return Ok(None);
        };
        let coverage = Coverage {
            chain: listing.chain.clone(),
            from_rev: base.revision,
            from_time: base.created_at,
            to_rev: last_rev,
            to_time,
        };
        Ok(Some(RestorableChain {
            listing,
            base,
            coverage,
        }))
    }

    /// The newest chain that has a trusted base backup.
    ///
    /// # Errors
    /// No chain with a trusted base; unreadable or untrusted manifests.
    pub async fn newest_chain(&self, cluster: Option<u64>) -> Result<NewestChain, ContinuousError> {
        self.reach(cluster).await?.newest()
    }

    /// The checked segments of `chain` holding revisions `after + 1 ..= to` (a replay that
    /// goes on from its own state rather than from a backup).
    ///
    /// # Errors
    /// No such chain or segment; an untrusted manifest or a broken link.
    pub async fn segments_after(
        &self,
        chain: &str,
        after: i64,
        to: i64,
    ) -> Result<Vec<SegmentManifest>, ContinuousError> {
        let listings = self.listings(None).await?;
        let Some(listing) = listings.iter().find(|c| c.chain == chain) else {
            return Err(ContinuousError::NotCovered {
                target: format!("revision {}", after + 1),
                why: format!("chain {chain} is not in the store"),
                coverage: String::new(),
            });
        };
        self.segments_between(listing, after, to).await
    }

    /// The checked segments holding revisions `after + 1 ..= to`, each linked to the one
    /// before it.
    ///
    /// # Errors
    /// No segment holds `after + 1`; an untrusted manifest or a broken link.
    pub async fn segments_between(
        &self,
        listing: &ChainListing,
        after: i64,
        to: i64,
    ) -> Result<Vec<SegmentManifest>, ContinuousError> {
        if to <= after {
            return Ok(Vec::new());
        }
        let holding = |rev: i64| listing.segments.iter().rposition(|s| s.first_rev <= rev);
        let (Some(start), Some(end)) = (holding(after + 1), holding(to)) else {
            return Err(ContinuousError::NotCovered {
                target: format!("revision {to}"),
                why: format!(
                    "chain {} has no segment from revision {}",
                    listing.chain,
                    after + 1
                ),
                coverage: String::new(),
            });
        };
        let mut prev = match start {
            0 => None,
            n => Some(self.manifest(&listing.segments[n - 1]).await?),
        };
        let mut out = Vec::new();
        for key in &listing.segments[start..=end] {
            let m = self.manifest(key).await?;
            check_link(prev.as_ref(), &m)?;
            prev = Some(m.clone());
            out.push(m);
        }
        match out.last() {
            Some(last) if last.last_rev < to => Err(ContinuousError::NotCovered {
                target: format!("revision {to}"),
                why: format!(
                    "chain {} ends at revision {} so far",
                    listing.chain, last.last_rev
                ),
                coverage: String::new(),
            }),
            _ => Ok(out),
        }
    }

    /// The trusted manifests of `chain`'s segments after sequence number `after_seq`, in
    /// order, listed afresh (what a follower polls; the links are its to check, as it sends).
    ///
    /// # Errors
    /// The listing fails; a manifest is unreadable or untrusted.
    pub async fn segments_since(
        &self,
        chain: &str,
        after_seq: u64,
    ) -> Result<Vec<SegmentManifest>, ContinuousError> {
        let mut keys: Vec<SegmentKey> = self
            .store
            .list(&prefix(Some(chain)))
            .await?
            .into_iter()
            .filter_map(|o| SegmentKey::of_manifest_key(&o.key))
            .filter(|k| k.chain == chain && k.seq > after_seq)
            .collect();
        keys.sort_by_key(|k| k.seq);
        let mut out = Vec::with_capacity(keys.len());
        for key in &keys {
            out.push(self.manifest(key).await?);
        }
        Ok(out)
    }

    /// The last revision received at or before `at`, by the receive times in the journal.
    ///
    /// # Errors
    /// No chain covers that time (the ranges are named), a hole where it would be, unreadable
    /// or untrusted segments.
    pub async fn resolve_time(
        &self,
        identities: Option<&Identities>,
        cluster: Option<u64>,
        at: DateTime<Utc>,
    ) -> Result<i64, ContinuousError> {
        let reach = self.reach(cluster).await?;
        let Some(chain) = reach.covering(at) else {
            return Err(reach.not_covered(
                at.to_rfc3339(),
                "no journal chain covers that time (after the newest durable revision and the journal's last heartbeat nothing proves every write was seen)",
            ));
        };
        let listing = &chain.listing;
        let Some((index, segment)) = self.last_started_by(listing, at).await? else {
            return Ok(chain.base.revision);
        };
        // The search sees only the segments that are there: with the ones received around
        // `at` deleted, it would land on an earlier one and restore an earlier revision
        // without a word. The next segment must exist, link to this one and start after
        // `at`; the last one is covered by the head (the coverage above).
        if let Some(next_key) = listing.segments.get(index + 1) {
            let next = self.manifest(next_key).await?;
            check_link(Some(&segment), &next).map_err(|e| {
                reach.not_covered(
                    at.to_rfc3339(),
                    format!("the journal has a hole after segment {}: {e}", segment.seq),
                )
            })?;
            if next.first_at <= at {
                return Err(ContinuousError::Invalid {
                    key: next_key.manifest_key(),
                    what: format!(
                        "its times go backwards (it starts at {}, the segment before it at {}): the journal cannot map a time to a revision here",
                        next.first_at, segment.first_at
                    ),
                });
            }
        }
        let at_ms = at.timestamp_millis();
        let records = self.records(&segment, identities).await?;
        let rev = records
            .iter()
            .filter_map(|r| match r {
                Record::Rev { rev, at_ms: t, .. } if *t <= at_ms => Some(*rev),
                _ => None,
            })
            .max()
            .unwrap_or(segment.first_rev - 1);
        Ok(rev.max(chain.base.revision))
    }

    /// The last segment of `listing` whose first revision was received at or before `at`
    /// (binary search: a chain can hold many thousands).
    async fn last_started_by(
        &self,
        listing: &ChainListing,
        at: DateTime<Utc>,
    ) -> Result<Option<(usize, SegmentManifest)>, ContinuousError> {
        let (mut lo, mut hi) = (0usize, listing.segments.len());
        let mut found = None;
        while lo < hi {
            let mid = (lo + hi) / 2;
            let m = self.manifest(&listing.segments[mid]).await?;
            if m.first_at <= at {
                found = Some((mid, m));
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests;
