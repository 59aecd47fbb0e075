//! Following a chain as the capture commits it: the segments already there, then each new one
//! as it appears — every manifest signature-checked and linked to the one before, every object
//! checked against its manifest — handed to the replay in chain order.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

use super::SharedState;
use crate::continuous::{check_link, ContinuousError, Journal, Record, SegmentManifest};
use crate::pitr::PitrError;
use crate::stages::encrypt::Identities;

/// Where the follower reads, and how long it waits between looks.
pub(super) struct Follow {
    pub journal: Arc<Journal>,
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
                Ok(()) => f
                    .journal
                    .records(&m, f.identities.as_deref())
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
        let after = prev.as_ref().map_or(0, |p| p.seq);
        match f.journal.segments_since(&f.chain, after).await {
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
                if matches!(e, ContinuousError::Store(_)) {
                    tracing::warn!(chain = %f.chain, error = %e, "cannot read the journal now; trying again");
                    continue;
                }
                let _ = tx.send(Err(e.into())).await;
                return None;
            }
        }
    }
}

/// A trusted chain of the same cluster started after this one, if any (chains are named by
/// their base backup's id, which sorts by time).
async fn newer_chain(f: &Follow) -> Option<String> {
    match f.journal.newest_trusted(f.cluster, Some(&f.chain)).await {
        Ok(newer) => newer.map(|c| c.chain),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the journal's chains now");
            None
        }
    }
}
