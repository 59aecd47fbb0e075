//! Replaying revisions several at a time without ever letting etcd apply them out of order.
//!
//! One txn per revision, sent with a window of txns in flight: etcd may start requests of one
//! connection in any order, so a txn is **guarded** by a compare that holds only once the
//! revision before it is applied — a key that revision put has exactly that mod revision (it
//! is lower before, and the txn is evaluated before anything after it). A txn whose guard fails
//! changes nothing and makes no revision; it is sent again once the one before is in. The guard
//! is evaluated atomically with the txn, so the order is etcd's own guarantee, and a guard never
//! changes what the txn writes. A revision whose predecessor put nothing (deletes only: "gone"
//! also holds before a key was created) or is not in the journal (the base backup's) has no
//! guard: it is sent only once every revision before it is in — a barrier.

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use futures::stream::{FuturesUnordered, StreamExt};

use crate::etcd::watch::Change;

/// Txns in flight at once. Two on 2 cores (docs/performance.md, same journal, replay on its
/// own single-threaded runtime): 1,720 revisions/s with one, 2,400–2,700/s with two (etcd
/// applies one while the next is on its way, and neither side sleeps between them), 2,000/s
/// with three and 1,940/s with eight (guarded txns sent too early fail and still cost etcd a
/// raft round). More cores may favour a wider window.
pub(super) const WINDOW: usize = 2;
/// A guard failing this often for one revision means something else writes to the sandbox.
const MAX_ATTEMPTS: u32 = 10_000;

/// One revision ready to send.
pub(super) struct Pending {
    pub rev: i64,
    pub txn: Txn,
    pub guarded: bool,
}

/// The txn of revision `rev`, guarded on the revision before (`prev`, whose changes are
/// known, if any) when that one put a key.
pub(super) fn pending(rev: i64, changes: &[Change], prev: Option<&[Change]>) -> Pending {
    let ops: Vec<TxnOp> = changes
        .iter()
        .map(|c| match c {
            Change::Put {
                key, value, lease, ..
            } => TxnOp::put(
                key.clone(),
                value.clone(),
                (*lease != 0).then(|| PutOptions::new().with_lease(*lease)),
            ),
            Change::Delete { key } => TxnOp::delete(key.clone(), None),
        })
        .collect();
    let guard = prev.into_iter().flatten().find_map(|c| match c {
        Change::Put { key, .. } => Some(Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            rev - 1,
        )),
        Change::Delete { .. } => None,
    });
    Pending {
        rev,
        guarded: guard.is_some(),
        txn: match guard {
            Some(g) => Txn::new().when([g]).and_then(ops),
            None => Txn::new().and_then(ops),
        },
    }
}

/// Applies `batch` (consecutive revisions, oldest first) with up to `window` in flight; an
/// unguarded one only once all before it are in. Checks that each got exactly its revision.
///
/// Why a batch did not apply.
#[derive(Debug)]
pub(super) enum Failure {
    /// The journal does not fit the sandbox: a revision came out at another number, or a
    /// guard never held.
    Journal(i64, String),
    /// The sandbox etcd itself failed (gone, out of space, over its quota): the environment,
    /// not the journal (#21).
    Sandbox(i64, String),
}

/// # Errors
/// The first revision that failed or came out at another revision, and why.
pub(super) async fn apply_in_order(
    client: &Client,
    batch: Vec<Pending>,
    window: usize,
) -> Result<(), Failure> {
    let mut queue: std::collections::BTreeSet<usize> = (0..batch.len()).collect();
    let mut attempts = vec![0u32; batch.len()];
    let mut applied = vec![false; batch.len()];
    let mut lowest_open = 0;
    let mut in_flight = FuturesUnordered::new();
    let mut done = 0;
    while done < batch.len() {
        while in_flight.len() < window.max(1) {
            let Some(&i) = queue.iter().next() else {
                break;
            };
            if !batch[i].guarded && lowest_open < i {
                break; // a barrier: everything before it first
            }
            queue.remove(&i);
            attempts[i] += 1;
            if attempts[i] > MAX_ATTEMPTS {
                return Err(Failure::Journal(
                    batch[i].rev,
                    "its guard never held: something else writes to the sandbox".into(),
                ));
            }
            let mut c = client.clone();
            let txn = batch[i].txn.clone();
            in_flight.push(async move { (i, c.txn(txn).await) });
        }
        let Some((i, result)) = in_flight.next().await else {
            break;
        };
        let rev = batch[i].rev;
        let resp = result.map_err(|e| Failure::Sandbox(rev, e.to_string()))?;
        if !resp.succeeded() {
            queue.insert(i); // the one before was not in yet
            continue;
        }
        let got = resp.header().map_or(0, |h| h.revision());
        if got != rev {
            return Err(Failure::Journal(
                rev,
                format!("the sandbox is at revision {got} after it (a change the cluster made is missing or extra)"),
            ));
        }
        done += 1;
        applied[i] = true;
        while lowest_open < batch.len() && applied[lowest_open] {
            lowest_open += 1;
        }
    }
    Ok(())
}
