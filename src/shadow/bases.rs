//! The shadow's side of the replay: the hook that records what was applied and proven and,
//! every base interval, asks for a base at the checkpoint just proven; and the bases themselves,
//! taken on the caller's runtime from a client of the sandbox while the replay goes on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::local::{Proven, ShadowDir};
use super::{BaseTaken, SharedState};
use crate::backup::{take_backup, BackupError, BackupSettings};
use crate::catalog::Manifest;
use crate::etcd::{
    EtcdSettings, EtcdSource, LiveHashKv, MemberFacts, PieceStream, Source, SourceError,
};
use crate::pitr::{PitrError, Proof, ReplayHook};
use crate::store::Store;

/// The least lag [`base_too_old`] allows.
const BASE_LAG_FLOOR: Duration = Duration::from_secs(5 * 60);

/// What the replay asks of the caller's runtime (the store's).
pub(super) enum Ask {
    /// Take a base.
    Base(BaseRequest),
    /// Publish a proof (`continuous status` shows it).
    Proven(crate::continuous::proven::Proven),
}

/// A base asked for: the sandbox waits at `rev` until its snapshot has begun (`started`: etcd
/// reads the snapshot in one read transaction, opened before the first byte, so it stays at
/// `rev` while the replay goes on); `done` is dropped once it has ended and been recorded.
pub(super) struct BaseRequest {
    /// The checkpoint just proven at the base's revision.
    proof: Proof,
    sandbox: EtcdSettings,
    started: oneshot::Sender<()>,
    done: oneshot::Sender<()>,
}

pub(super) struct ShadowHook {
    pub(super) state: SharedState,
    pub(super) base_interval: Duration,
    pub(super) last_base: Instant,
    pub(super) bases: mpsc::Sender<Ask>,
    pub(super) sandbox: Option<EtcdSettings>,
    pub(super) dir: ShadowDir,
    /// The chain and base of the data dir; each proof fills in the rest.
    pub(super) proven: Proven,
    /// The base being written, if one is: closed once it has ended.
    pub(super) in_flight: Option<oneshot::Receiver<()>>,
}

#[async_trait::async_trait]
impl ReplayHook for ShadowHook {
    fn applied(&mut self, rev: i64) {
        self.state.update(|s| s.applied_revision = rev);
    }

    async fn verified(&mut self, proof: Proof) -> Result<(), PitrError> {
        self.state.update(|s| {
            if proof.rev > s.verified_revision {
                s.verified_revision = proof.rev;
                s.verified_at_ms = proof.at_ms.or(s.verified_at_ms);
            }
            s.checkpoints_verified += u64::from(proof.exact);
        });
        if !proof.exact {
            return Ok(());
        }
        self.remember(proof);
        let published = crate::continuous::proven::Proven::new(
            &self.proven.chain,
            proof.rev,
            proof.hash,
            proof.compact_rev,
        );
        let _ = self.bases.send(Ask::Proven(published)).await;
        // A base still streaming when the next is due: the next proof after it ends takes
        // one, so the replay never waits for a base.
        if !self.base_in_flight() && self.last_base.elapsed() >= self.base_interval {
            if base_too_old(proof.at_ms, self.base_interval, Utc::now()) {
                tracing::warn!(
                    rev = proof.rev,
                    "no shadow base: the shadow lags (the revision it just proved is older than twice the base interval); a base that old is no use, and it would sort above newer production backups by time"
                );
            } else {
                self.take_base(proof).await;
            }
        }
        Ok(())
    }

    /// The sandbox stops next: a base still streaming from it finishes first.
    async fn finished(&mut self) {
        self.settle_base().await;
    }
}

impl ShadowHook {
    /// Records the proof in the data dir's folder, for a restart. A failure only costs a
    /// restart from the newest base.
    fn remember(&mut self, proof: Proof) {
        self.proven.rev = proof.rev;
        self.proven.compact_rev = proof.compact_rev;
        self.proven.hash = proof.hash;
        if let Err(e) = self.dir.record(&self.proven) {
            tracing::warn!(error = %e, dir = %self.dir.path.display(), "cannot record the shadow's proof; a restart will start from the newest base");
        }
    }

    /// A base at `rev`: the sandbox waits there until the base's snapshot has begun, then the
    /// replay goes on while it streams. A failed base is counted and logged; the shadow goes
    /// on (the next interval tries again).
    async fn take_base(&mut self, proof: Proof) {
        let rev = proof.rev;
        let Some(sandbox) = self.sandbox.clone() else {
            return;
        };
        let (started, begun) = oneshot::channel();
        let (done, answer) = oneshot::channel();
        let asked = BaseRequest {
            proof,
            sandbox,
            started,
            done,
        };
        if self.bases.send(Ask::Base(asked)).await.is_err() {
            return;
        }
        self.last_base = Instant::now();
        // Dropped unsent when the base fails before its stream (its error is logged).
        if begun.await.is_ok() {
            tracing::info!(
                rev,
                "shadow base streaming from the sandbox; the replay goes on beside it"
            );
        }
        self.in_flight = Some(answer);
    }

    /// Whether a base is still being written.
    fn base_in_flight(&mut self) -> bool {
        let Some(done) = self.in_flight.as_mut() else {
            return false;
        };
        if let Err(oneshot::error::TryRecvError::Empty) = done.try_recv() {
            return true;
        }
        self.in_flight = None;
        false
    }

    /// Waits for the base in flight, if any, to end.
    async fn settle_base(&mut self) {
        if let Some(done) = self.in_flight.take() {
            let _ = done.await;
        }
    }
}

/// A lagging shadow cuts no base (#21): one whose proof (received at `at_ms`) is older than
/// twice the base interval, and at least [`BASE_LAG_FLOOR`] (a short interval must not refuse
/// the bases of a shadow that keeps up). An unknown time (a checkpoint with no revision after
/// a compaction) does not hold a base back.
fn base_too_old(at_ms: Option<i64>, base_interval: Duration, now: DateTime<Utc>) -> bool {
    let bound = chrono::Duration::from_std(base_interval.saturating_mul(2).max(BASE_LAG_FLOOR))
        .unwrap_or(chrono::Duration::MAX);
    at_ms
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .is_some_and(|at| now - at > bound)
}

/// Logs and counts how a base ended.
pub(super) fn note_base(state: &SharedState, rev: i64, outcome: Result<Manifest, BackupError>) {
    match outcome {
        Ok(m) => {
            tracing::info!(id = %m.id, rev, "shadow base committed");
            state.update(|s| {
                s.bases.push(BaseTaken {
                    id: m.id.clone(),
                    revision: m.revision,
                });
            });
        }
        Err(e) => {
            tracing::error!(rev, error = %e, "shadow base failed; the next checkpoint after the interval tries again");
            state.update(|s| s.base_failures += 1);
        }
    }
}

/// Takes the bases the replay asks for, on this runtime (the store's), from a client of the
/// sandbox of its own.
pub(super) async fn serve_bases(
    store: Arc<dyn Store>,
    settings: &BackupSettings,
    cluster_id: u64,
    mut asked: mpsc::Receiver<Ask>,
    state: &SharedState,
    cancel: &CancellationToken,
) {
    // At most one base at a time (the replay asks for one only when none is in flight);
    // proofs are published while it streams, so the replay never waits for a base.
    let mut base: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> =
        None;
    loop {
        tokio::select! {
            ask = asked.recv() => match ask {
                None => break,
                Some(Ask::Base(req)) => {
                    let store = &store;
                    base = Some(Box::pin(async move {
                        let rev = req.proof.rev;
                        let result = take_base(store, settings, cluster_id, req.proof, &req.sandbox, req.started, cancel).await;
                        note_base(state, rev, result);
                        drop(req.done);
                    }));
                }
                Some(Ask::Proven(p)) => publish_proof(store.as_ref(), settings, &p).await,
            },
            () = async { base.as_mut().expect("guarded by the condition").await }, if base.is_some() => base = None,
        }
    }
    if let Some(base) = base {
        base.await;
    }
}

/// Replaces the chain's proof in the store; a failure waits for the next proof.
pub(super) async fn publish_proof(
    store: &dyn Store,
    settings: &BackupSettings,
    p: &crate::continuous::proven::Proven,
) {
    let signer = settings.signer.as_deref();
    if let Err(e) = crate::continuous::proven::write_proven(store, signer, p).await {
        tracing::warn!(error = %e, rev = p.revision, "cannot publish what the shadow proved; the next proof tries again");
    }
}

pub(super) async fn take_base(
    store: &Arc<dyn Store>,
    settings: &BackupSettings,
    cluster_id: u64,
    proof: Proof,
    sandbox: &EtcdSettings,
    started: oneshot::Sender<()>,
    cancel: &CancellationToken,
) -> Result<Manifest, BackupError> {
    let rev = proof.rev;
    let endpoint = sandbox.endpoints.first().cloned().unwrap_or_default();
    let inner = EtcdSource::connect(sandbox, &endpoint).await?;
    let mut source = ShadowSource {
        inner,
        cluster_id,
        started: Some(started),
        proof,
    };
    let m = take_backup(
        &mut source,
        store.clone(),
        settings,
        Arc::new(crate::progress::Silent),
        cancel,
        None,
    )
    .await?;
    if m.revision != rev {
        // The sandbox moved before the snapshot began: the replay waits for that, so a bug.
        return Err(BackupError::Internal(format!(
            "the shadow's base is at revision {} where {rev} was asked for",
            m.revision
        )));
    }
    Ok(m)
}

/// The sandbox, reporting the production cluster's id: a base belongs to the cluster whose
/// journal it was replayed from (restores and retention group backups by cluster). It tells
/// the replay when the snapshot has begun.
pub(super) struct ShadowSource {
    inner: EtcdSource,
    cluster_id: u64,
    started: Option<oneshot::Sender<()>>,
    /// The base's revision as the production member hashed it, which the sandbox reproduced.
    proof: Proof,
}

#[async_trait::async_trait]
impl Source for ShadowSource {
    async fn member_facts(&mut self) -> Result<MemberFacts, SourceError> {
        let mut facts = Source::member_facts(&mut self.inner).await?;
        facts.cluster_id = self.cluster_id;
        facts.member_name = "shadow".into();
        // The sandbox is one member; production's membership is not known here (nor is the
        // v3 store's membership the cluster's: the sandbox's restore rewrote it).
        facts.voting_members = Vec::new();
        facts.members = Vec::new();
        facts.data_at = self
            .proof
            .at_ms
            .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis);
        Ok(facts)
    }

    /// The stream, which says "begun" once its first piece is in: etcd opened the snapshot's
    /// read transaction before sending it, so the sandbox may move on.
    async fn snapshot(&mut self) -> Result<PieceStream, SourceError> {
        let mut stream = Source::snapshot(&mut self.inner).await?;
        let first = stream.next().await;
        if let Some(begun) = self.started.take() {
            let _ = begun.send(());
        }
        Ok(Box::pin(futures::stream::iter(first).chain(stream)))
    }

    /// At the base's revision, the production member's HashKV from the capture's checkpoint
    /// (the sandbox reproduced it): the base is checked against production itself. The
    /// sandbox, which has moved on while the base streamed and may have compacted since, could
    /// only answer with its compaction point of now (a skipped check).
    async fn hash_kv(&mut self, revision: i64) -> Result<LiveHashKv, SourceError> {
        if revision == self.proof.rev {
            return Ok(LiveHashKv::Hash {
                hash: self.proof.hash,
                compact_revision: self.proof.compact_rev,
            });
        }
        Source::hash_kv(&mut self.inner, revision).await
    }

    async fn compaction_point(&mut self, current: i64) -> Result<i64, SourceError> {
        Source::compaction_point(&mut self.inner, current).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lagging_shadow_cuts_no_base() {
        let now = Utc::now();
        let interval = Duration::from_secs(15 * 60);
        let ago = |mins: i64| Some((now - chrono::Duration::minutes(mins)).timestamp_millis());
        assert!(!base_too_old(ago(1), interval, now));
        assert!(!base_too_old(ago(29), interval, now));
        assert!(base_too_old(ago(31), interval, now));
        assert!(
            !base_too_old(None, interval, now),
            "an unknown time holds nothing back"
        );
        let short = Duration::from_millis(1);
        assert!(!base_too_old(ago(4), short, now), "the floor");
        assert!(base_too_old(ago(6), short, now));
    }
}
