//! What a point-in-time restore needs: the newest trusted full backup at or before the target
//! revision, in a chain whose journal reaches the target, and the segments from that backup's
//! revision to the target — each manifest signature-checked and linked to the one before.
//! Targets nobody can reach are refused with every restorable range named.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::PitrError;
use crate::catalog::{cluster_of, Catalog, Manifest, Reason};
use crate::continuous::chain::check_link;
use crate::continuous::confirm::confirm_base;
use crate::continuous::status::chain_ends;
use crate::continuous::{
    list_chains, read_manifest, read_records, ChainListing, ContinuousError, Record,
    SegmentManifest,
};
use crate::stages::encrypt::Identities;
use crate::store::Store;
use crate::trust::ReadPolicy;

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

/// One restorable range: a chain from its base backup to its newest durable revision.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    pub chain: String,
    pub from_rev: i64,
    pub from_time: DateTime<Utc>,
    pub to_rev: i64,
    pub to_time: DateTime<Utc>,
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

/// The journal of one cluster: its chains with their base backups and newest segments.
struct Journal {
    cluster: u64,
    backups: Vec<Manifest>,
    chains: Vec<(ChainListing, Manifest, Coverage)>,
}

async fn journal(
    store: &Arc<dyn Store>,
    policy: &Arc<ReadPolicy>,
    cluster: Option<u64>,
) -> Result<Journal, PitrError> {
    let (backups, _) = Catalog::new(store.clone(), policy.clone()).list().await?;
    let listings = list_chains(store.as_ref()).await?;
    let cluster = match cluster {
        Some(c) => c,
        None => {
            let mut ids: Vec<u64> = listings.iter().map(|c| c.cluster_id).collect();
            ids.sort_unstable();
            ids.dedup();
            match ids.as_slice() {
                [one] => *one,
                [] => {
                    return Err(PitrError::NotCovered {
                        target: "a point in time".into(),
                        why: format!(
                            "{} holds no journal (continuous backup is off?)",
                            store.location()
                        ),
                        coverage: "only the full backups (`lifeboat snapshot list`)".into(),
                    })
                }
                many => {
                    let names: Vec<String> = many.iter().map(|c| format!("{c:x}")).collect();
                    return Err(PitrError::AmbiguousCluster(names.join(", ")));
                }
            }
        }
    };
    let backups: Vec<Manifest> = backups
        .into_iter()
        .filter(|m| cluster_of(m) == Some(cluster))
        .collect();
    let mut chains = Vec::new();
    for listing in listings.into_iter().filter(|c| c.cluster_id == cluster) {
        let own_base = backups.iter().find(|m| m.id == listing.chain);
        // A chain whose ends are not trusted (planted names, or damage) is skipped, warned:
        // one such chain must not make every restore of the cluster fail (#21).
        let ends = match chain_ends(
            store.as_ref(),
            policy,
            &listing,
            own_base.map(|m| m.revision),
        )
        .await
        {
            Ok(ends) => ends,
            Err(e @ (ContinuousError::Trust(_) | ContinuousError::Invalid { .. })) => {
                tracing::warn!(chain = %listing.chain, error = %e, "journal chain not used: not trusted");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let Some(to_time) = ends.caught_up_at else {
            continue;
        };
        let (first_rev, last_rev) = match (&ends.first, &ends.last) {
            (Some(first), Some(last)) => (first.first_rev, last.last_rev),
            // Only a head on the base so far: the chain reaches its base, up to the head's time.
            _ => match own_base {
                Some(b) => (b.revision + 1, b.revision),
                None => continue,
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
            continue;
        };
        let coverage = Coverage {
            chain: listing.chain.clone(),
            from_rev: base.revision,
            from_time: base.created_at,
            to_rev: last_rev,
            to_time,
        };
        chains.push((listing, base, coverage));
    }
    Ok(Journal {
        cluster,
        backups,
        chains,
    })
}

fn describe(coverage: &[Coverage]) -> String {
    if coverage.is_empty() {
        return "nothing (no journal chain with a trusted base backup)".into();
    }
    coverage
        .iter()
        .map(|c| {
            format!(
                "revisions {}–{} ({} – {})",
                c.from_rev,
                c.to_rev,
                c.from_time
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                c.to_time
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The newest chain of a cluster and its newest durable revision (what a follower follows).
#[derive(Debug, Clone)]
pub struct NewestChain {
    pub chain: String,
    pub cluster: u64,
    pub to_rev: i64,
}

/// The newest chain that has a trusted base backup.
///
/// # Errors
/// No chain with a trusted base; unreadable or untrusted manifests.
pub async fn newest_chain(
    store: &Arc<dyn Store>,
    policy: &Arc<ReadPolicy>,
    cluster: Option<u64>,
) -> Result<NewestChain, PitrError> {
    let j = journal(store, policy, cluster).await?;
    let coverage: Vec<Coverage> = j.chains.iter().map(|(_, _, c)| c.clone()).collect();
    j.chains
        .last()
        .map(|(_, _, c)| NewestChain {
            chain: c.chain.clone(),
            cluster: j.cluster,
            to_rev: c.to_rev,
        })
        .ok_or_else(|| PitrError::NotCovered {
            target: "the newest revision".into(),
            why: "no journal chain has a trusted base backup".into(),
            coverage: describe(&coverage),
        })
}

/// Plans a restore to revision `target`.
///
/// # Errors
/// No chain reaches it (the restorable ranges are named), or a manifest is untrusted or a link
/// broken.
pub async fn plan(
    store: &Arc<dyn Store>,
    policy: &Arc<ReadPolicy>,
    identities: Option<&Identities>,
    cluster: Option<u64>,
    target: i64,
) -> Result<PitrPlan, PitrError> {
    let j = journal(store, policy, cluster).await?;
    let coverage: Vec<Coverage> = j.chains.iter().map(|(_, _, c)| c.clone()).collect();
    let not_covered = |why: String| PitrError::NotCovered {
        target: format!("revision {target}"),
        why,
        coverage: describe(&coverage),
    };
    // The chain with the newest base at or before the target that reaches it.
    let Some((listing, chain_base, _)) = j
        .chains
        .iter()
        .rev()
        .find(|(_, _, c)| c.from_rev <= target && target <= c.to_rev)
    else {
        return Err(not_covered("no journal chain reaches it".into()));
    };
    // Any trusted backup inside the chain's range serves as the base: the newest one — a
    // shadow's only where a writer-signed checkpoint at its revision confirms it.
    let mut inside: Vec<&Manifest> = j
        .backups
        .iter()
        .filter(|m| m.revision >= chain_base.revision && m.revision <= target)
        .collect();
    inside.sort_by_key(|m| std::cmp::Reverse((m.revision, m.created_at)));
    let mut base = chain_base.clone();
    for m in inside {
        match confirm_base(store, policy, identities, m).await {
            Ok(()) => {
                base = m.clone();
                break;
            }
            Err(e) => tracing::warn!(error = %e, "not a base for this restore"),
        }
    }
    let segments = segments_between(store, policy, listing, base.revision, target).await?;
    Ok(PitrPlan {
        cluster_id: format!("{:x}", j.cluster),
        target_rev: target,
        replay_revisions: target - base.revision,
        chain: listing.chain.clone(),
        base,
        segments,
        coverage,
    })
}

/// The checked segments of `chain` holding revisions `after + 1 ..= to` (a replay that goes on
/// from its own state rather than from a backup).
///
/// # Errors
/// No such chain or segment; an untrusted manifest or a broken link.
pub async fn segments_after(
    store: &Arc<dyn Store>,
    policy: &ReadPolicy,
    chain: &str,
    after: i64,
    to: i64,
) -> Result<Vec<SegmentManifest>, PitrError> {
    let listings = list_chains(store.as_ref()).await?;
    let Some(listing) = listings.iter().find(|c| c.chain == chain) else {
        return Err(PitrError::NotCovered {
            target: format!("revision {}", after + 1),
            why: format!("chain {chain} is not in the store"),
            coverage: String::new(),
        });
    };
    segments_between(store, policy, listing, after, to).await
}

/// The checked segments holding revisions `after + 1 ..= to`, linked to the one before them.
async fn segments_between(
    store: &Arc<dyn Store>,
    policy: &ReadPolicy,
    listing: &ChainListing,
    after: i64,
    to: i64,
) -> Result<Vec<SegmentManifest>, PitrError> {
    if to <= after {
        return Ok(Vec::new());
    }
    let holding = |rev: i64| listing.segments.iter().rposition(|s| s.first_rev <= rev);
    let (Some(start), Some(end)) = (holding(after + 1), holding(to)) else {
        return Err(PitrError::NotCovered {
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
        n => Some(read_manifest(store.as_ref(), policy, &listing.segments[n - 1]).await?),
    };
    let mut out = Vec::new();
    for key in &listing.segments[start..=end] {
        let m = read_manifest(store.as_ref(), policy, key).await?;
        check_link(prev.as_ref(), &m)?;
        prev = Some(m.clone());
        out.push(m);
    }
    Ok(out)
}

/// The last revision received at or before `at`, by the receive times in the journal.
///
/// # Errors
/// No chain covers that time (the ranges are named); unreadable or untrusted segments.
pub async fn resolve_time(
    store: &Arc<dyn Store>,
    policy: &Arc<ReadPolicy>,
    identities: Option<&Identities>,
    cluster: Option<u64>,
    at: DateTime<Utc>,
) -> Result<i64, PitrError> {
    let j = journal(store, policy, cluster).await?;
    let coverage: Vec<Coverage> = j.chains.iter().map(|(_, _, c)| c.clone()).collect();
    let Some((listing, base, _)) = j
        .chains
        .iter()
        .rev()
        .find(|(_, _, c)| c.from_time <= at && at <= c.to_time)
    else {
        return Err(PitrError::NotCovered {
            target: at.to_rfc3339(),
            why: "no journal chain covers that time (after the newest durable revision and the journal's last heartbeat nothing proves every write was seen)".into(),
            coverage: describe(&coverage),
        });
    };
    // Binary search for the last segment whose first revision was received at or before `at`.
    let (mut lo, mut hi) = (0usize, listing.segments.len());
    let mut found: Option<(usize, SegmentManifest)> = None;
    while lo < hi {
        let mid = (lo + hi) / 2;
        let m = read_manifest(store.as_ref(), policy, &listing.segments[mid]).await?;
        if m.first_at <= at {
            found = Some((mid, m));
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let Some((index, segment)) = found else {
        return Ok(base.revision);
    };
    // The search sees only the segments that are there: with the ones received around `at`
    // deleted, it would land on an earlier one and restore an earlier revision without a
    // word. The next segment must exist, link to this one and start after `at`; the last one
    // is covered by the head (the coverage above).
    if let Some(next_key) = listing.segments.get(index + 1) {
        let next = read_manifest(store.as_ref(), policy, next_key).await?;
        check_link(Some(&segment), &next).map_err(|e| PitrError::NotCovered {
            target: at.to_rfc3339(),
            why: format!("the journal has a hole after segment {}: {e}", segment.seq),
            coverage: describe(&coverage),
        })?;
        if next.first_at <= at {
            return Err(PitrError::Journal(ContinuousError::Invalid {
                key: next_key.manifest_key(),
                what: format!(
                    "its times go backwards (it starts at {}, the segment before it at {}): the journal cannot map a time to a revision here",
                    next.first_at, segment.first_at
                ),
            }));
        }
    }
    let at_ms = at.timestamp_millis();
    let records = read_records(store.as_ref(), &segment, identities).await?;
    let rev = records
        .iter()
        .filter_map(|r| match r {
            Record::Rev { rev, at_ms: t, .. } if *t <= at_ms => Some(*rev),
            _ => None,
        })
        .max()
        .unwrap_or(segment.first_rev - 1);
    Ok(rev.max(base.revision))
}
