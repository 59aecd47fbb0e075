//! Second copies in `serve` (#28): on the elected instance, one task per `[[copy]]` target
//! runs a copy pass after every committed backup or segment (and at least every
//! `POLL_EVERY`, for heads and proofs); a target that fails is retried with backoff and caught
//! up when it answers again. `lifeboat_copy_lag_seconds{target}` is how long ago the target was
//! last known to hold everything the primary had committed.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::face::Worker;
use super::Shared;
use crate::catalog::Catalog;
use crate::copy::{Copier, CopyOptions, CopyReport};
use crate::retention::Policy;
use crate::store::Spec;

/// One copy target as `serve` runs it.
#[derive(Debug, Clone)]
pub struct CopyPlan {
    /// The destination as configured: the `target` label.
    pub name: String,
    pub spec: Spec,
    /// The target's own retention: what it would delete at once is not copied, and (with
    /// `[serve] prune`) what the target holds is pruned by it after each pass that copied a
    /// backup.
    pub retention: Policy,
    pub prune: bool,
}

/// Between two passes when nothing woke the copier (heads and proofs change without a commit).
const POLL_EVERY: Duration = Duration::from_secs(30);
/// The first retry of a failing target, doubled up to `BACKOFF_MAX`.
const BACKOFF_MIN: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(120);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CopiedLabel {
    pub target: String,
    pub kind: String,
}

/// Per target: when it was last known complete (the start of its last complete pass).
#[derive(Default)]
struct Progress {
    caught_up_at: Option<SystemTime>,
    since: Option<SystemTime>,
}

#[derive(Default)]
pub(super) struct CopyMetrics {
    failures: Family<TargetLabel, Counter>,
    refused: Family<TargetLabel, Counter>,
    copied: Family<CopiedLabel, Counter>,
    bytes: Family<TargetLabel, Counter<u64, AtomicU64>>,
    progress: Mutex<Vec<(String, Progress)>>,
}

impl CopyMetrics {
    fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register(
            "lifeboat_copy_failures",
            "Copy passes to a target that failed (the target or the primary did not answer); retried with backoff",
            self.failures.clone(),
        );
        registry.register(
            "lifeboat_copy_refused",
            "Objects not copied because they fail a check on the primary (tampered, damaged, untrusted): each counted once",
            self.refused.clone(),
        );
        registry.register(
            "lifeboat_copy_objects",
            "Backups, kits, marks, segments, heads and proofs copied, by kind",
            self.copied.clone(),
        );
        registry.register(
            "lifeboat_copy_bytes",
            "Bytes written to a copy target",
            self.bytes.clone(),
        );
        registry.register_collector(Box::new(CopyLag(self.clone())));
    }

    fn progress(&self, target: &str, f: impl FnOnce(&mut Progress)) {
        if let Ok(mut all) = self.progress.lock() {
            match all.iter_mut().find(|(t, _)| t == target) {
                Some((_, p)) => f(p),
                None => {
                    let mut p = Progress::default();
                    f(&mut p);
                    all.push((target.to_string(), p));
                }
            }
        }
    }

    fn record(&self, target: &str, report: &CopyReport) {
        let label = TargetLabel {
            target: target.to_string(),
        };
        for c in &report.copied {
            self.copied
                .get_or_create(&CopiedLabel {
                    target: target.to_string(),
                    kind: c.kind.as_str().to_string(),
                })
                .inc();
        }
        self.bytes.get_or_create(&label).inc_by(report.bytes);
        let new_refusals = report.refused.iter().filter(|r| r.first_time).count();
        self.refused
            .get_or_create(&label)
            .inc_by(new_refusals as u64);
    }

    /// Every metric with one target (for `every_metric`).
    pub(super) fn sample() -> Arc<CopyMetrics> {
        let m = Arc::new(CopyMetrics::default());
        let label = TargetLabel {
            target: "s3://copy".into(),
        };
        m.failures.get_or_create(&label).inc();
        m.refused.get_or_create(&label).inc();
        m.bytes.get_or_create(&label).inc();
        m.copied
            .get_or_create(&CopiedLabel {
                target: "s3://copy".into(),
                kind: "backup".into(),
            })
            .inc();
        m.progress("s3://copy", |p| p.since = Some(SystemTime::now()));
        m
    }
}

/// The lag, computed when scraped: now − the start of the target's last complete pass
/// (or of the service, before its first).
struct CopyLag(Arc<CopyMetrics>);

impl std::fmt::Debug for CopyLag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CopyLag")
    }
}

impl Collector for CopyLag {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(all) = self.0.progress.lock() else {
            return Ok(());
        };
        if all.is_empty() {
            return Ok(());
        }
        let now = SystemTime::now();
        let gauge = ConstGauge::new(0.0);
        let mut metric = encoder.encode_descriptor(
            "lifeboat_copy_lag_seconds",
            "Seconds since the copy target was last known to hold everything the primary had committed",
            None,
            gauge.metric_type(),
        )?;
        for (target, p) in all.iter() {
            let Some(from) = p.caught_up_at.or(p.since) else {
                continue;
            };
            let lag = now.duration_since(from).unwrap_or_default().as_secs_f64();
            let label = TargetLabel {
                target: target.clone(),
            };
            ConstGauge::new(lag).encode(metric.encode_family(&label)?)?;
        }
        Ok(())
    }
}

/// The face's view of the copies: metrics only (a target that is down is an alert, not an
/// unready instance).
#[derive(Clone, Default)]
pub(super) struct Copies(pub(super) Arc<CopyMetrics>);

impl Worker for Copies {
    fn register(&self, registry: &mut Registry) {
        self.0.register(registry);
    }
}

/// How the copiers end. They go on through shutdown (the journal's last segment is committed
/// then) until `finish` says whether this instance was the uploader: then one last pass,
/// within what is left of `deadline` since SIGTERM (at least `FINAL_PASS_MIN`), or none.
#[derive(Clone)]
pub(super) struct Stopping {
    pub shutdown: CancellationToken,
    pub finish: watch::Receiver<Option<bool>>,
    pub deadline: Duration,
}

/// The last pass's budget when the shutdown deadline is spent: the service manager's stop
/// timeout (150 s in deploy/) leaves this much room past the 120 s default.
const FINAL_PASS_MIN: Duration = Duration::from_secs(10);

/// One task per target.
pub(super) fn start(
    plans: Vec<CopyPlan>,
    copies: &Copies,
    shared: Arc<Shared>,
    stopping: Stopping,
) -> Vec<tokio::task::JoinHandle<()>> {
    plans
        .into_iter()
        .map(|plan| {
            tokio::spawn(follow(
                plan,
                copies.0.clone(),
                shared.clone(),
                stopping.clone(),
            ))
        })
        .collect()
}

async fn follow(
    plan: CopyPlan,
    metrics: Arc<CopyMetrics>,
    shared: Arc<Shared>,
    stopping: Stopping,
) {
    let Stopping {
        shutdown,
        mut finish,
        deadline,
    } = stopping;
    let mut wake = shared.copy_wake.subscribe();
    let started = SystemTime::now();
    let mut backoff = BACKOFF_MIN;
    let mut wait = Duration::ZERO;
    let mut copier: Option<Copier> = None;
    let mut name = plan.name.clone();
    let mut stopping_since: Option<Instant> = None;
    metrics.progress(&name, |p| p.since = Some(started));
    loop {
        tokio::select! {
            () = shutdown.cancelled(), if stopping_since.is_none() => {
                stopping_since = Some(Instant::now());
                continue;
            }
            changed = finish.changed() => {
                // A dropped sender is a stop without a last pass.
                let told = if changed.is_ok() { *finish.borrow() } else { Some(false) };
                let Some(led) = told else { continue };
                if let (true, Some(copier)) = (led, copier.as_mut()) {
                    let spent = stopping_since.map_or(Duration::ZERO, |s| s.elapsed());
                    let budget = deadline.saturating_sub(spent).max(FINAL_PASS_MIN);
                    final_pass(copier, &plan, &metrics, budget).await;
                }
                return;
            }
            _ = wake.changed() => {}
            () = tokio::time::sleep(wait) => {}
        }
        if !shared.leadership.is_leader() {
            wait = POLL_EVERY;
            continue;
        }
        let copier = match &mut copier {
            Some(c) => c,
            None => match crate::store::open(&plan.spec).await {
                Ok(store) => {
                    name = store.location();
                    copier.insert(Copier::new(
                        Catalog::new(shared.store.clone(), shared.read_policy.clone()),
                        store,
                        CopyOptions {
                            retention: Some(plan.retention.clone()),
                            ..CopyOptions::default()
                        },
                    ))
                }
                Err(e) => {
                    tracing::error!(target = %plan.name, error = %e, "cannot open the copy target; retrying");
                    metrics
                        .failures
                        .get_or_create(&TargetLabel {
                            target: plan.name.clone(),
                        })
                        .inc();
                    (wait, backoff) = (backoff, (backoff * 2).min(BACKOFF_MAX));
                    continue;
                }
            },
        };
        let pass_started = SystemTime::now();
        let clock = Instant::now();
        match copier.pass().await {
            Ok(report) => {
                metrics.record(&plan.name, &report);
                metrics.progress(&plan.name, |p| p.caught_up_at = Some(pass_started));
                if !report.copied.is_empty() {
                    tracing::info!(target = %name, objects = report.copied.len(), bytes = report.bytes, ms = clock.elapsed().as_millis() as u64, "copied to the second store");
                }
                let new_backup = report
                    .copied
                    .iter()
                    .any(|c| c.kind == crate::copy::Kind::Backup);
                if plan.prune && new_backup {
                    prune_target(copier, &plan, &shared).await;
                }
                (wait, backoff) = (POLL_EVERY, BACKOFF_MIN);
            }
            Err(e) => {
                metrics
                    .failures
                    .get_or_create(&TargetLabel {
                        target: plan.name.clone(),
                    })
                    .inc();
                tracing::error!(target = %name, error = %e, retry_in_s = backoff.as_secs(), "copy to the second store failed");
                (wait, backoff) = (backoff, (backoff * 2).min(BACKOFF_MAX));
            }
        }
    }
}

/// What was committed while the service stopped reaches the target now, not at the next start.
async fn final_pass(copier: &mut Copier, plan: &CopyPlan, metrics: &CopyMetrics, budget: Duration) {
    let pass_started = SystemTime::now();
    match tokio::time::timeout(budget, copier.pass()).await {
        Ok(Ok(report)) => {
            metrics.record(&plan.name, &report);
            metrics.progress(&plan.name, |p| p.caught_up_at = Some(pass_started));
            tracing::info!(target = %plan.name, objects = report.copied.len(), bytes = report.bytes, "last copy pass before stopping: the copy holds everything committed");
        }
        Ok(Err(e)) => {
            tracing::warn!(target = %plan.name, error = %e, "the last copy pass before stopping failed; the next start (or `lifeboat copy`) copies what the target lacks");
        }
        Err(_) => {
            tracing::warn!(target = %plan.name, budget_s = budget.as_secs(), "the last copy pass before stopping ran out of time; the next start (or `lifeboat copy`) copies what the target lacks");
        }
    }
}

/// The target's own retention, applied to what it holds (Object Lock respected, as on the
/// primary).
async fn prune_target(copier: &Copier, plan: &CopyPlan, shared: &Shared) {
    let catalog = Catalog::new(copier.target().clone(), shared.read_policy.clone());
    match crate::retention::prune(
        &catalog,
        &plan.retention,
        chrono::Utc::now(),
        None,
        false,
        None,
    )
    .await
    {
        Ok(r) if r.deleted + r.journal_deleted > 0 => {
            tracing::info!(target = %plan.name, backups = r.deleted, segments = r.journal_deleted, "retention on the copy deleted what its policy does not keep");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(target = %plan.name, error = %e, "retention on the copy failed; the next pass tries again")
        }
    }
}
