//! One scheduled tick: on the uploader jitter, a fenced backup, then retention of its cluster;
//! on the other control-plane nodes, each node's own kit (#25).

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::metrics::ReasonLabel;
use super::{leader, sleep_or_cancel, ServeSettings, Shared};
use crate::backup::{take_backup, BackupError, BackupSettings};
use crate::catalog::Catalog;
use crate::etcd::EtcdSource;
use crate::progress::Silent;
use crate::retention;

pub(super) async fn run_tick(
    settings: &ServeSettings,
    backup: &BackupSettings,
    source: &mut EtcdSource,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) {
    if !settings.jitter.is_zero() {
        let delay = settings.jitter.mul_f64(rand::random::<f64>());
        if sleep_or_cancel(delay, shutdown).await {
            return;
        }
    }
    if !shared.leadership.is_leader() {
        tracing::debug!("not the uploader: only this node's kit");
        crate::backup::store_node_kit(source, &shared.store, backup).await;
        return;
    }
    let started = Instant::now();
    let abort = CancellationToken::new();
    let deadline = settings.shutdown_deadline;
    let watchdog = {
        let (abort, shutdown) = (abort.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tracing::warn!(
                deadline_s = deadline.as_secs(),
                "shutdown: the running backup gets its deadline, then it is aborted"
            );
            tokio::time::sleep(deadline).await;
            abort.cancel();
        })
    };
    let fence = lease_fence(source, shared);
    let result = fenced_backup(source, backup, shared, &abort, &fence).await;
    watchdog.abort();
    let m = &shared.metrics;
    m.duration.set(started.elapsed().as_secs_f64());
    match result {
        Ok(manifest) => {
            m.last_success.set(Utc::now().timestamp() as f64);
            m.size
                .set(i64::try_from(manifest.object.size).unwrap_or(i64::MAX));
            m.revision.set(manifest.revision);
            m.backups.inc();
            if let Ok(mut t) = shared.last_success.lock() {
                *t = Some(Instant::now());
            }
            shared.wake_copiers();
            // The cluster of the backup just taken, not the one at start: after a restore
            // underneath a running serve the cluster id is new, and its backups must be pruned.
            if let Some(cluster) = crate::catalog::cluster_of(&manifest) {
                apply_retention(settings, shared, cluster, &fence).await;
            }
        }
        Err(e) => {
            m.failures
                .get_or_create(&ReasonLabel {
                    reason: failure_reason(&e).into(),
                })
                .inc();
            tracing::error!(error = %e, "scheduled backup failed");
        }
    }
}

/// Commits of this instance count only while it still holds the election.
pub(super) fn lease_fence(source: &EtcdSource, shared: &Shared) -> leader::LeaseFence {
    leader::LeaseFence {
        client: source.client(),
        leadership: shared.leadership.clone(),
    }
}

/// One backup by the uploader, its commit fenced.
pub(super) async fn fenced_backup(
    source: &mut EtcdSource,
    backup: &BackupSettings,
    shared: &Arc<Shared>,
    abort: &CancellationToken,
    fence: &leader::LeaseFence,
) -> Result<crate::catalog::Manifest, BackupError> {
    take_backup(
        source,
        shared.store.clone(),
        backup,
        Arc::new(Silent),
        abort,
        Some(fence),
    )
    .await
}

async fn apply_retention(
    settings: &ServeSettings,
    shared: &Arc<Shared>,
    cluster: u64,
    fence: &leader::LeaseFence,
) {
    let Some(policy) = &settings.retention else {
        return;
    };
    let catalog = Catalog::new(shared.store.clone(), shared.read_policy.clone());
    match retention::prune(
        &catalog,
        policy,
        Utc::now(),
        Some(cluster),
        false,
        Some(fence),
    )
    .await
    {
        Ok(report) => {
            shared
                .metrics
                .retention_deleted
                .inc_by(report.deleted as u64);
        }
        Err(e) => tracing::error!(error = %e, "retention failed; backups were kept"),
    }
}

fn failure_reason(e: &BackupError) -> &'static str {
    match e {
        BackupError::Source(_) => "etcd",
        BackupError::Verify(_) => "verify",
        BackupError::Store(_) | BackupError::Catalog(_) => "store",
        BackupError::Cancelled => "cancelled",
        BackupError::Fenced(_) => "fenced",
        BackupError::Stage(_) | BackupError::Internal(_) => "internal",
    }
}
