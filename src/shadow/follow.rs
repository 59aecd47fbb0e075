//! Following a chain as the capture commits it: the segments already there, then each new one
//! as it appears — every manifest signature-checked and linked to the one before, every object
//! checked against its manifest — handed to the replay in chain order.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

use super::SharedState;
use crate::continuous::chain::check_link;
use crate::continuous::segment::prefix;
use crate::continuous::{read_manifest, read_records, Record, SegmentKey, SegmentManifest};
use crate::pitr::PitrError;
use crate::stages::encrypt::Identities;
use crate::store::Store;
use crate::trust::ReadPolicy;

/// Where the follower reads, and how long it waits between looks.
pub(super) struct Follow {
    pub store: Arc<dyn Store>,
    pub policy: Arc<ReadPolicy>,
    pub identities: Option<Arc<Identities>>,
    pub chain: String,
    /// The checked segments to replay first (from the base on), oldest first.
    pub first: Vec<SegmentManifest>,
    /// The segment before `first`, if any, which the next one must link to.
    pub before: Option<SegmentManifest>,
    pub poll: Duration,
    /// Stop after the segment holding this revision.
    pub until: Option<i64>,
    /// The cluster, whose newer chains end this one.
    pub cluster: u64,
}

/// Idle looks between two checks for a newer chain (a listing of every chain).
const CHAIN_CHECK_EVERY: u32 = 10;

/// Sends each segment's records in turn; returns when the replay stops listening, when
/// `until` is sent, when cancelled, or after sending the first error — or, with its name, when
/// this chain has gone quiet and the cluster has a newer one (its capture started again from a
/// fresh full backup: this chain will get no more segments).
pub(super) async fn follow(
    mut f: Follow,
    tx: Sender<Result<Vec<Record>, PitrError>>,
    state: SharedState,
    cancel: CancellationToken,
) -> Option<String> {
    let mut prev = f.before.take();
    let mut queue: std::collections::VecDeque<SegmentManifest> =
        std::mem::take(&mut f.first).into();
    let mut idle = 0u32;
    loop {
        while let Some(m) = queue.pop_front() {
            let checked = match check_link(prev.as_ref(), &m) {
                Ok(()) => read_records(f.store.as_ref(), &m, f.identities.as_deref())
                    .await
                    .map_err(PitrError::from),
                Err(e) => Err(e.into()),
            };
            let failed = checked.is_err();
            state.update(|s| s.journal_revision = s.journal_revision.max(m.last_rev));
            let done = f.until.is_some_and(|u| m.last_rev >= u);
            if tx.send(checked).await.is_err() || failed || done {
                return None;
            }
            prev = Some(m);
        }
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tx.closed() => return None,
            () = tokio::time::sleep(f.poll) => {}
        }
        match next_segments(&f, prev.as_ref()).await {
            Ok(new) if new.is_empty() => {
                idle += 1;
                if idle.is_multiple_of(CHAIN_CHECK_EVERY) {
                    if let Some(newer) = newer_chain(&f).await {
                        return Some(newer);
                    }
                }
            }
            Ok(new) => {
                idle = 0;
                queue.extend(new);
            }
            Err(e) => {
                // A listing or a manifest that cannot be read now may be a passing store
                // outage; a manifest that is there but untrusted or unparsable is not.
                if matches!(e, PitrError::Store(_)) {
                    tracing::warn!(chain = %f.chain, error = %e, "cannot read the journal now; trying again");
                    continue;
                }
                let _ = tx.send(Err(e)).await;
                return None;
            }
        }
    }
}

/// A chain of the same cluster started after this one, if any (chains are named by their base
/// backup's id, which sorts by time).
async fn newer_chain(f: &Follow) -> Option<String> {
    let chains = match crate::continuous::list_chains(f.store.as_ref()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the journal's chains now");
            return None;
        }
    };
    let started = |name: &str| crate::catalog::BackupId::parse(name).map(|id| id.time);
    let ours = started(&f.chain);
    let newer = chains
        .into_iter()
        .filter(|c| c.cluster_id == f.cluster && c.chain != f.chain)
        .filter(|c| started(&c.chain) > ours);
    // Newest first; a chain no writer signed (planted names) is not one to move to.
    for c in newer.rev() {
        match crate::continuous::chain::check_chain(f.store.as_ref(), &f.policy, &c).await {
            Ok(()) => return Some(c.chain),
            Err(e) => {
                tracing::warn!(chain = %c.chain, error = %e, "a newer chain that is not trusted: not followed");
            }
        }
    }
    None
}

/// The manifests of the chain's segments after `prev`, in order (read and trust-checked; the
/// links are checked as they are sent).
async fn next_segments(
    f: &Follow,
    prev: Option<&SegmentManifest>,
) -> Result<Vec<SegmentManifest>, PitrError> {
    let after = prev.map_or(0, |p| p.seq);
    let mut keys: Vec<SegmentKey> = f
        .store
        .list(&prefix(Some(&f.chain)))
        .await?
        .into_iter()
        .filter_map(|o| SegmentKey::of_manifest_key(&o.key))
        .filter(|k| k.chain == f.chain && k.seq > after)
        .collect();
    keys.sort_by_key(|k| k.seq);
    let mut out = Vec::with_capacity(keys.len());
    for key in &keys {
        out.push(read_manifest(f.store.as_ref(), &f.policy, key).await?);
    }
    Ok(out)
}
