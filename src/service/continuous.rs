//! Continuous backup in `serve`: while this instance holds the uploader election, capture the
//! cluster's revisions into the journal. A session resumes the newest chain exactly at its
//! last durable revision + 1; when that history is gone (compacted) or the store has no chain
//! and no usable full backup, it takes a full backup at once and starts a new chain from it —
//! a gap is never papered over, it is counted and visible in `continuous status`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{sleep_or_cancel, ServeSettings, Shared};
use crate::backup::BackupSettings;
use crate::catalog::{cluster_of, Catalog, Fence};
use crate::continuous::chain::root_hash;
use crate::continuous::{
    capture, CaptureObserver, CaptureSettings, ContinuousError, Journal, Resume, SegmentManifest,
    SegmentWriter,
};
use crate::etcd::{EtcdSource, SourceError};

/// Turns capture progress into metrics and the readiness facts.
struct Observer(Arc<Shared>);

impl CaptureObserver for Observer {
    fn committed(&self, m: &SegmentManifest) {
        let metrics = &self.0.metrics;
        metrics.continuous_last_revision.set(m.last_rev);
        metrics.continuous_segments.inc();
        metrics.continuous_checkpoints.inc_by(m.checkpoints);
        metrics.continuous_bytes.inc_by(m.object.size);
        // Every revision up to last_rev is durable; it was received at last_at.
        let received = SystemTime::from(m.last_at);
        self.0.note_durable(received);
        self.0.wake_copiers();
    }

    fn caught_up(&self, at: SystemTime) {
        self.0.note_durable(at);
    }

    fn commit_failed(&self, _: &ContinuousError) {}

    fn checkpoint_hashed(&self, took: Duration, next: Duration) {
        let metrics = &self.0.metrics;
        metrics.continuous_checkpoint_hashkv.set(took.as_secs_f64());
        metrics.continuous_checkpoint_pace.set(next.as_secs_f64());
    }
}

/// Runs capture sessions while leader, until `shutdown`.
pub(super) async fn run(
    settings: ServeSettings,
    backup: BackupSettings,
    capture_settings: CaptureSettings,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut new_chain_from: Option<crate::catalog::Manifest> = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if !shared.leadership.is_leader() {
            if sleep_or_cancel(Duration::from_millis(500), &shutdown).await {
                return;
            }
            continue;
        }
        let Some(mut source) = super::connect_until(&settings.etcd, &shutdown).await else {
            return;
        };
        let session = session(
            &mut source,
            &backup,
            &capture_settings,
            &shared,
            &shutdown,
            new_chain_from.take(),
        )
        .await;
        match session {
            Ok(()) => {}
            Err(SessionEnd::NeedFullBackup(why)) => {
                shared.metrics.continuous_gaps.inc();
                tracing::warn!(why = %why, "journal: the chain cannot continue exactly; taking a full backup now to start a new chain");
                match fresh_backup(&mut source, &backup, &shared).await {
                    Ok(m) => new_chain_from = Some(m),
                    Err(e) => {
                        tracing::error!(error = %e, "journal: the full backup for a new chain failed; retrying in 10 s");
                        if sleep_or_cancel(Duration::from_secs(10), &shutdown).await {
                            return;
                        }
                    }
                }
            }
            Err(SessionEnd::Failed(e)) => {
                tracing::error!(error = %e, "journal: capture stopped; resuming in 2 s");
                if sleep_or_cancel(Duration::from_secs(2), &shutdown).await {
                    return;
                }
            }
        }
    }
}

enum SessionEnd {
    NeedFullBackup(String),
    Failed(ContinuousError),
}

async fn session(
    source: &mut EtcdSource,
    backup: &BackupSettings,
    capture_settings: &CaptureSettings,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    new_chain_from: Option<crate::catalog::Manifest>,
) -> Result<(), SessionEnd> {
    let status = source
        .status()
        .await
        .map_err(|e| SessionEnd::Failed(e.into()))?;
    let cluster = status.cluster_id;
    let resume = match new_chain_from {
        Some(base) => chain_from(&base, cluster),
        None => find_resume(shared, cluster).await?,
    };
    tracing::info!(chain = %resume.chain, seq = resume.next_seq, from_rev = resume.next_rev, "journal: capturing");
    // Everything before the first revision to capture is durable already (in the chain, or in
    // the base backup of a new one): a chain whose base holds the newest writes has no segment
    // to say so.
    let durable = resume.next_rev - 1;
    if shared.metrics.continuous_last_revision.get() < durable {
        shared.metrics.continuous_last_revision.set(durable);
    }
    // The session ends when leadership is lost (the fence stops commits at once as well).
    let stop = shutdown.child_token();
    let watcher = {
        let (stop, shared) = (stop.clone(), shared.clone());
        tokio::spawn(async move {
            while shared.leadership.is_leader() {
                if sleep_or_cancel(Duration::from_millis(500), &stop).await {
                    return;
                }
            }
            stop.cancel();
        })
    };
    let fence: Arc<dyn Fence> = Arc::new(super::tick::lease_fence(source, shared));
    let writer = SegmentWriter {
        store: shared.store.clone(),
        recipients: backup.recipients.clone(),
        compression_level: backup.compression_level,
        signer: backup.signer.clone(),
    };
    let result = capture(
        source,
        writer,
        capture_settings,
        resume,
        &stop,
        Some(fence),
        Arc::new(Observer(shared.clone())),
    )
    .await;
    stop.cancel();
    let _ = watcher.await;
    match result {
        Ok(()) => Ok(()),
        Err(ContinuousError::Source(SourceError::Compacted {
            compact_revision, ..
        })) => Err(SessionEnd::NeedFullBackup(format!(
            "etcd compacted its history to revision {compact_revision}, past where the chain stopped"
        ))),
        Err(e) => Err(SessionEnd::Failed(e)),
    }
}

fn chain_from(base: &crate::catalog::Manifest, cluster: u64) -> Resume {
    Resume {
        chain: base.id.clone(),
        cluster_id: cluster,
        next_seq: 1,
        prev_hash: root_hash(&base.id),
        next_rev: base.revision + 1,
        last_at: Some(base.created_at),
    }
}

/// Where this cluster's journal continues: its newest chain after its last durable segment;
/// with no chain yet, a new one from the newest trusted full backup (or from a fresh one).
async fn find_resume(shared: &Arc<Shared>, cluster: u64) -> Result<Resume, SessionEnd> {
    let failed = |e: ContinuousError| SessionEnd::Failed(e);
    let journal = Journal::new(shared.store.clone(), shared.read_policy.clone());
    // The newest chain a writer wrote: one planted under a newer name must not stop the
    // capture (#21); a real chain whose newest segment is then untrusted does (loudly).
    let newest = journal
        .newest_trusted(cluster, None)
        .await
        .map_err(failed)?;
    if let Some(last) = newest.as_ref().and_then(|c| c.segments.last()) {
        let m = journal.manifest(last).await.map_err(failed)?;
        return Ok(Resume {
            chain: m.chain.clone(),
            cluster_id: cluster,
            next_seq: m.seq + 1,
            prev_hash: m.hash.clone(),
            next_rev: m.last_rev + 1,
            last_at: Some(m.last_at),
        });
    }
    // A chain starts only from a writer's own backup (never a shadow's base: its key may not
    // sign what the capture builds on), the newest by revision.
    let backups = Catalog::new(shared.store.clone(), shared.read_policy.clone())
        .writer_signed()
        .await
        .map_err(|e| failed(e.into()))?;
    let newest = backups
        .into_iter()
        .filter(|m| cluster_of(m) == Some(cluster))
        .max_by_key(|m| (m.revision, m.created_at));
    match newest {
        Some(base) => Ok(chain_from(&base, cluster)),
        None => Err(SessionEnd::NeedFullBackup(
            "the store has no full backup of this cluster to start a chain from".into(),
        )),
    }
}

async fn fresh_backup(
    source: &mut EtcdSource,
    backup: &BackupSettings,
    shared: &Arc<Shared>,
) -> Result<crate::catalog::Manifest, crate::backup::BackupError> {
    let fence = super::tick::lease_fence(source, shared);
    let m = super::tick::fenced_backup(source, backup, shared, &CancellationToken::new(), &fence)
        .await?;
    shared.metrics.backups.inc();
    Ok(m)
}
