//! The service's metric handles. Each worker registers its own group in the process's one
//! registry (`face::Worker::register`): a worker that does not run exports nothing.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

pub struct Metrics {
    pub last_success: Gauge<f64, AtomicU64>,
    pub duration: Gauge<f64, AtomicU64>,
    pub size: Gauge,
    pub failures: Family<ReasonLabel, Counter>,
    pub revision: Gauge,
    pub is_leader: Gauge,
    pub retention_deleted: Counter,
    pub skipped: Counter,
    pub backups: Counter,
    pub drill_last_success: Gauge<f64, AtomicU64>,
    pub drill_failures: Counter,
    pub drill_duration: Gauge<f64, AtomicU64>,
    pub continuous_last_revision: Gauge,
    pub continuous_segments: Counter,
    pub continuous_bytes: Counter,
    pub continuous_gaps: Counter,
    pub continuous_checkpoints: Counter,
    pub continuous_checkpoint_hashkv: Gauge<f64, AtomicU64>,
    pub continuous_checkpoint_pace: Gauge<f64, AtomicU64>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            last_success: Gauge::default(),
            duration: Gauge::default(),
            size: Gauge::default(),
            failures: Family::default(),
            revision: Gauge::default(),
            is_leader: Gauge::default(),
            retention_deleted: Counter::default(),
            skipped: Counter::default(),
            backups: Counter::default(),
            drill_last_success: Gauge::default(),
            drill_failures: Counter::default(),
            drill_duration: Gauge::default(),
            continuous_last_revision: Gauge::default(),
            continuous_segments: Counter::default(),
            continuous_bytes: Counter::default(),
            continuous_gaps: Counter::default(),
            continuous_checkpoints: Counter::default(),
            continuous_checkpoint_hashkv: Gauge::default(),
            continuous_checkpoint_pace: Gauge::default(),
        };
        // Known failure reasons start at 0, so `increase()` in alerts sees the first failure.
        for reason in ["etcd", "verify", "store", "cancelled", "internal"] {
            let _ = m.failures.get_or_create(&ReasonLabel {
                reason: reason.into(),
            });
        }
        m
    }

    /// The scheduled backups' (and the uploader election's and retention's).
    pub fn register_backups(&self, registry: &mut Registry) {
        let m = self;
        registry.register(
            "lifeboat_last_success_timestamp_seconds",
            "Unix time of the last backup that was committed",
            m.last_success.clone(),
        );
        registry.register(
            "lifeboat_backup_duration_seconds",
            "Duration of the last backup attempt",
            m.duration.clone(),
        );
        registry.register(
            "lifeboat_backup_size_bytes",
            "Size of the last committed backup object",
            m.size.clone(),
        );
        registry.register(
            "lifeboat_backup_failures",
            "Backups that failed, by reason (etcd, verify, store, internal, cancelled)",
            m.failures.clone(),
        );
        registry.register(
            "lifeboat_snapshot_revision",
            "etcd revision of the last committed backup",
            m.revision.clone(),
        );
        registry.register(
            "lifeboat_is_leader",
            "1 when this instance holds the uploader election",
            m.is_leader.clone(),
        );
        registry.register(
            "lifeboat_retention_deleted",
            "Backups deleted by retention",
            m.retention_deleted.clone(),
        );
        registry.register(
            "lifeboat_backup_skipped",
            "Scheduled ticks skipped because a backup was still running",
            m.skipped.clone(),
        );
        registry.register(
            "lifeboat_backups",
            "Backups committed by this instance",
            m.backups.clone(),
        );
    }

    /// The restore drills'.
    pub fn register_drills(&self, registry: &mut Registry) {
        let m = self;
        registry.register(
            "lifeboat_drill_last_success_timestamp_seconds",
            "Unix time of the last restore drill that passed",
            m.drill_last_success.clone(),
        );
        registry.register(
            "lifeboat_drill_failures",
            "Restore drills that failed (mismatch, unreadable backup, etcd would not start)",
            m.drill_failures.clone(),
        );
        registry.register(
            "lifeboat_drill_duration_seconds",
            "Duration of the last restore drill",
            m.drill_duration.clone(),
        );
    }

    /// The journal capture's. Its lag is computed when scraped (`Capture`'s collector).
    pub fn register_journal(&self, registry: &mut Registry) {
        let m = self;
        registry.register(
            "lifeboat_continuous_last_revision",
            "Newest etcd revision durable in the journal (continuous backup)",
            m.continuous_last_revision.clone(),
        );
        registry.register(
            "lifeboat_continuous_segments",
            "Journal segments committed by this instance",
            m.continuous_segments.clone(),
        );
        registry.register(
            "lifeboat_continuous_bytes",
            "Bytes of journal segments stored by this instance",
            m.continuous_bytes.clone(),
        );
        registry.register(
            "lifeboat_continuous_gaps",
            "Times the journal had to start a new chain (history compacted, or no exact resume)",
            m.continuous_gaps.clone(),
        );
        registry.register(
            "lifeboat_continuous_checkpoints",
            "HashKV checkpoints recorded in committed journal segments (what the shadow and restores prove against)",
            m.continuous_checkpoints.clone(),
        );
        registry.register(
            "lifeboat_continuous_checkpoint_hashkv_seconds",
            "Duration of the member's last checkpoint HashKV: its writes waited as long",
            m.continuous_checkpoint_hashkv.clone(),
        );
        registry.register(
            "lifeboat_continuous_checkpoint_pace_seconds",
            "Wait between checkpoints now (continuous.checkpoint_interval; auto: 25x what a HashKV takes, 5 s to 5 min)",
            m.continuous_checkpoint_pace.clone(),
        );
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_names_are_exported() {
        let m = Metrics::new();
        m.is_leader.set(1);
        m.failures
            .get_or_create(&ReasonLabel {
                reason: "etcd".into(),
            })
            .inc();
        let mut registry = Registry::default();
        m.register_backups(&mut registry);
        m.register_drills(&mut registry);
        m.register_journal(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for name in [
            "lifeboat_last_success_timestamp_seconds",
            "lifeboat_backup_duration_seconds",
            "lifeboat_backup_size_bytes",
            "lifeboat_backup_failures_total{reason=\"etcd\"} 1",
            "lifeboat_snapshot_revision",
            "lifeboat_is_leader 1",
            "lifeboat_retention_deleted_total",
            "lifeboat_drill_last_success_timestamp_seconds",
            "lifeboat_drill_failures_total",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
