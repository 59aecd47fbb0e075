//! `lifeboat serve`: scheduled backups on control-plane nodes, one uploader per cluster.
//!
//! ```text
//!  cron job ──tick (bounded 1; skipped+counted while a backup runs)──▶ worker
//!  election (etcd lease) ──is_leader──▶ worker: jitter → take_backup → retention
//!  face: /healthz /readyz /metrics          shutdown token: stop ticks, give the running
//!                                           backup `shutdown_deadline`, then abort it cleanly;
//!                                           the copiers' last pass gets the rest of it
//!  drill cron (optional, own schedule) ──▶ drill worker: latest backup → sandbox restore → checks
//! ```
//!
//! With `schedule = "off"` the instance takes no backups and needs no etcd: a drill-only
//! instance off the control plane, the one place that holds the age identity. It may run the
//! shadow too (`[shadow] enabled`). Each worker that runs shows itself on the one HTTP face
//! (`face.rs`, `workers.rs`): its metrics, and when it makes the instance not ready.

mod continuous;
mod copy;
pub mod face;
pub mod leader;
mod maintenance;
pub mod metrics;
mod schedule;
pub mod shadow;
mod tick;
mod workers;

pub use copy::CopyPlan;
pub use maintenance::MaintenancePlan;
use schedule::start_scheduler;
pub use schedule::{normalize_schedule, ScheduleError};
use tick::run_tick;
pub use workers::every_metric;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backup::BackupSettings;
use crate::catalog::Catalog;
use crate::etcd::{EtcdSettings, EtcdSource};
use crate::progress::Silent;
use crate::retention::Policy;
use crate::store::Store;
use leader::Leadership;
use metrics::Metrics;

#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// A 6-field cron expression (seconds first), UTC.
    pub schedule: String,
    /// Time between two ticks of the schedule, for readiness.
    pub interval: Duration,
    pub jitter: Duration,
    pub listen: SocketAddr,
    pub shutdown_deadline: Duration,
    pub lease_ttl: Duration,
    pub etcd: EtcdSettings,
    pub store: crate::store::Spec,
    /// `None` with `schedule = "off"`: a drill-only instance.
    pub backup: Option<BackupSettings>,
    /// `None` with `[serve] prune = false`: a separate pruner deletes.
    pub retention: Option<Policy>,
    pub drill: Option<DrillPlan>,
    /// `Some` on a drill-only instance that runs the shadow (`[shadow] enabled`).
    pub shadow: Option<ShadowPlan>,
    /// `Some` when the journal (continuous backup) is on.
    pub continuous: Option<crate::continuous::CaptureSettings>,
    /// What retention and drills accept as a backup (`[trust]`).
    pub read_policy: Arc<crate::trust::ReadPolicy>,
    /// The members' metrics and, when enabled, maintenance (on instances that take backups).
    pub maintenance: Option<MaintenancePlan>,
    /// Second copies (`[[copy]]`, `--copy-to`), made by the elected instance.
    pub copies: Vec<CopyPlan>,
}

/// Restore drills on their own schedule.
#[derive(Debug, Clone)]
pub struct DrillPlan {
    /// 6-field cron expression, UTC.
    pub schedule: String,
    /// Read at every drill, so a rotated key file is picked up.
    pub identity_file: std::path::PathBuf,
    pub settings: crate::sandbox::SandboxSettings,
}

/// The shadow in a drill-only `serve`.
#[derive(Debug, Clone)]
pub struct ShadowPlan {
    /// Read at every start of the shadow, so a rotated key file is picked up; `None` for a
    /// journal written unencrypted.
    pub identity_file: Option<std::path::PathBuf>,
    pub settings: crate::shadow::ShadowSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}; pick another --listen address")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the scheduler failed: {0}")]
    Scheduler(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

struct Shared {
    metrics: Metrics,
    leadership: Leadership,
    running: AtomicBool,
    last_success: Mutex<Option<Instant>>,
    started: Instant,
    interval: Duration,
    etcd: EtcdSettings,
    store: Arc<dyn Store>,
    backups: bool,
    drill_running: AtomicBool,
    read_policy: Arc<crate::trust::ReadPolicy>,
    /// Journal on: when every revision of the member was last known durable.
    continuous: bool,
    durable_at: Mutex<Option<std::time::SystemTime>>,
    /// What the shadow has proved, when this instance runs it.
    shadow: Option<crate::shadow::SharedState>,
    /// Bumped after every committed backup or segment: the copiers run a pass.
    copy_wake: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    /// Something new is committed: the copiers look.
    fn wake_copiers(&self) {
        self.copy_wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn note_durable(&self, at: std::time::SystemTime) {
        if let Ok(mut d) = self.durable_at.lock() {
            if d.is_none_or(|prev| prev < at) {
                *d = Some(at);
            }
        }
    }

    /// Seconds since every revision was last durable; `None` when this instance does not
    /// capture (journal off, or not the uploader).
    fn journal_lag(&self) -> Option<f64> {
        if !self.continuous || !self.leadership.is_leader() {
            return None;
        }
        // Nothing durable yet: behind since the service started.
        let Some(at) = *self.durable_at.lock().ok()? else {
            return Some(self.started.elapsed().as_secs_f64());
        };
        Some(
            std::time::SystemTime::now()
                .duration_since(at)
                .unwrap_or_default()
                .as_secs_f64(),
        )
    }
}

/// Runs until `shutdown` is cancelled; returns once the running backup has finished or been
/// aborted cleanly.
///
/// # Errors
/// The listen address cannot be bound, the store cannot be configured, the scheduler fails.
pub async fn run(settings: ServeSettings, shutdown: CancellationToken) -> Result<(), ServeError> {
    let store = crate::store::open(&settings.store).await?;
    let shared = Arc::new(Shared {
        metrics: Metrics::new(),
        leadership: Leadership::default(),
        running: AtomicBool::new(false),
        last_success: Mutex::new(None),
        started: Instant::now(),
        interval: settings.interval,
        etcd: settings.etcd.clone(),
        store: store.clone(),
        backups: settings.backup.is_some(),
        drill_running: AtomicBool::new(false),
        read_policy: settings.read_policy.clone(),
        continuous: settings.continuous.is_some(),
        durable_at: Mutex::new(None),
        shadow: settings.shadow.as_ref().map(|_| Default::default()),
        copy_wake: tokio::sync::watch::channel(0).0,
    });
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: settings.listen,
            source,
        })?;
    tracing::info!(listen = %settings.listen, schedule = %settings.schedule, store = %store.location(), "serving");
    let upkeep = maintenance::Maintenance::default();
    let mut face_workers = workers::of(&shared, settings.drill.is_some());
    if settings.maintenance.is_some() && settings.backup.is_some() {
        face_workers.push(Arc::new(upkeep.clone()));
    }
    let copies = copy::Copies::default();
    if !settings.copies.is_empty() && settings.backup.is_some() {
        face_workers.push(Arc::new(copies.clone()));
    }
    let face = face::Face::new(face_workers);
    let http = tokio::spawn(face::serve(listener, Arc::new(face), shutdown.clone()));
    let drills = match &settings.drill {
        Some(plan) => Some(start_drills(plan.clone(), shared.clone(), shutdown.clone()).await?),
        None => None,
    };
    let shadow = match (&settings.shadow, &shared.shadow) {
        (Some(plan), Some(state)) => Some(tokio::spawn(shadow::follow_in_serve(
            plan.clone(),
            store.clone(),
            settings.read_policy.clone(),
            state.clone(),
            shutdown.clone(),
        ))),
        _ => None,
    };
    let result = match &settings.backup {
        Some(backup) => {
            let (finish, finishing) = watch::channel(None);
            let copiers = copy::start(
                settings.copies.clone(),
                &copies,
                shared.clone(),
                copy::Stopping {
                    shutdown: shutdown.clone(),
                    finish: finishing,
                    deadline: settings.shutdown_deadline,
                },
            );
            let result = run_backups(&settings, backup, &shared, &upkeep, &shutdown).await;
            if result.is_err() {
                // A worker that could not start: everything else stops too.
                shutdown.cancel();
            }
            // The journal's last segment and a backup finished during shutdown are committed
            // by now: the uploader's copiers take them in one last pass.
            let _ = finish.send(Some(matches!(result, Ok(Led::Yes))));
            for c in copiers {
                let _ = c.await;
            }
            result.map(|_| ())
        }
        None => {
            shutdown.cancelled().await;
            Ok(())
        }
    };
    if let Some(shadow) = shadow {
        let _ = shadow.await;
    }
    if let Some((mut scheduler, worker)) = drills {
        let _ = scheduler.shutdown().await;
        let _ = worker.await;
    }
    let _ = http.await;
    tracing::info!("stopped");
    result
}

async fn run_backups(
    settings: &ServeSettings,
    backup: &BackupSettings,
    shared: &Arc<Shared>,
    upkeep: &maintenance::Maintenance,
    shutdown: &CancellationToken,
) -> Result<Led, ServeError> {
    let shutdown = shutdown.clone();
    let Some(mut source) = connect_until(&settings.etcd, &shutdown).await else {
        return Ok(Led::No);
    };
    let member = loop {
        match source.member_facts().await {
            Ok(m) => break m,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the member's status; retrying");
                if sleep_or_cancel(Duration::from_secs(5), &shutdown).await {
                    return Ok(Led::No);
                }
            }
        }
    };
    let me = format!("{} {}", member.member_name, hostname());
    let upkeep = match &settings.maintenance {
        Some(plan) => Some(
            maintenance::start(
                upkeep,
                plan.clone(),
                settings.clone(),
                backup.clone(),
                shared.clone(),
                shutdown.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let (tick_tx, mut ticks) = mpsc::channel::<()>(1);
    let mut scheduler = start_scheduler(&settings.schedule, tick_tx, shared.clone()).await?;
    // Last, after what can fail: a campaign is ended only by `stop` (below).
    let mut campaign = Campaign::start(&source, member.cluster_id, &me, settings, shared);
    let journal = settings.continuous.clone().map(|capture| {
        tokio::spawn(continuous::run(
            settings.clone(),
            backup.clone(),
            capture,
            shared.clone(),
            shutdown.clone(),
        ))
    });
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            tick = ticks.recv() => {
                if tick.is_none() { break; }
                campaign.follow_cluster(&mut source, &me, settings, shared).await;
                run_tick(settings, backup, &mut source, shared, &shutdown).await;
                shared.running.store(false, Ordering::SeqCst);
            }
        }
    }
    let _ = scheduler.shutdown().await;
    if let Some(upkeep) = upkeep {
        let _ = upkeep.await;
    }
    if let Some(journal) = journal {
        // The capture commits what it received before it stops; then the election ends.
        let _ = journal.await;
    }
    let led = if shared.leadership.is_leader() {
        Led::Yes
    } else {
        Led::No
    };
    campaign.stop().await;
    Ok(led)
}

/// Whether this instance was the cluster's uploader when it stopped.
enum Led {
    Yes,
    No,
}

/// The uploader election of one cluster. Its key names the cluster; when the cluster id the
/// member reports changes (a restore underneath a running serve makes a new cluster), every
/// instance moves to the new cluster's election at its next tick — else instances started
/// before and after the restore would campaign under different keys and both upload.
struct Campaign {
    cluster: u64,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Campaign {
    fn start(
        source: &EtcdSource,
        cluster: u64,
        me: &str,
        settings: &ServeSettings,
        shared: &Arc<Shared>,
    ) -> Campaign {
        // Not a child of the shutdown token: the instance stays the uploader until the running
        // backup and the journal's last segment are committed (and the copies' last pass is
        // decided), so no other instance starts a second journal meanwhile.
        let stop = CancellationToken::new();
        let metrics_shared = shared.clone();
        let task = tokio::spawn(leader::campaign_forever(
            source.client(),
            format!("/lifeboat/uploader/{cluster:x}"),
            me.to_string(),
            settings.lease_ttl,
            shared.leadership.clone(),
            move |leader| {
                metrics_shared.metrics.is_leader.set(i64::from(leader));
            },
            stop.clone(),
        ));
        Campaign {
            cluster,
            stop,
            task,
        }
    }

    async fn follow_cluster(
        &mut self,
        source: &mut EtcdSource,
        me: &str,
        settings: &ServeSettings,
        shared: &Arc<Shared>,
    ) {
        let Ok(status) = source.status().await else {
            return; // unreachable now: the tick's backup reports it
        };
        if status.cluster_id == self.cluster || status.cluster_id == 0 {
            return;
        }
        tracing::warn!(
            old = %format!("{:x}", self.cluster),
            new = %format!("{:x}", status.cluster_id),
            "the member now belongs to another cluster (restored?): moving to that cluster's uploader election"
        );
        // The old campaign resigns and clears the shared leadership first, so it cannot
        // clobber what the new one sets.
        self.stop.cancel();
        let _ = (&mut self.task).await;
        *self = Campaign::start(source, status.cluster_id, me, settings, shared);
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

type DrillWorker = (
    tokio_cron_scheduler::JobScheduler,
    tokio::task::JoinHandle<()>,
);

/// Drills run on every instance that has them configured (no election: typically one
/// instance off the control plane holds the identity).
async fn start_drills(
    plan: DrillPlan,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<DrillWorker, ServeError> {
    let err = |e: tokio_cron_scheduler::JobSchedulerError| ServeError::Scheduler(e.to_string());
    let (tx, mut ticks) = mpsc::channel::<()>(1);
    let scheduler = tokio_cron_scheduler::JobScheduler::new()
        .await
        .map_err(err)?;
    let job_shared = shared.clone();
    let job = tokio_cron_scheduler::Job::new_async(plan.schedule.as_str(), move |_, _| {
        let (tx, shared) = (tx.clone(), job_shared.clone());
        Box::pin(async move {
            if shared.drill_running.load(Ordering::SeqCst) || tx.try_send(()).is_err() {
                tracing::warn!("drill tick skipped: the previous drill is still running");
            }
        })
    })
    .map_err(err)?;
    scheduler.add(job).await.map_err(err)?;
    scheduler.start().await.map_err(err)?;
    tracing::info!(schedule = %plan.schedule, "restore drills scheduled");
    let worker = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                tick = ticks.recv() => {
                    if tick.is_none() { break; }
                    shared.drill_running.store(true, Ordering::SeqCst);
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            tracing::warn!("shutdown: the running drill is stopped (its sandbox etcd is killed)");
                        }
                        () = run_drill(&plan, &shared) => {}
                    }
                    shared.drill_running.store(false, Ordering::SeqCst);
                }
            }
        }
    });
    Ok((scheduler, worker))
}

async fn run_drill(plan: &DrillPlan, shared: &Arc<Shared>) {
    let started = Instant::now();
    let outcome = drill_latest(plan, shared).await;
    let m = &shared.metrics;
    m.drill_duration.set(started.elapsed().as_secs_f64());
    match outcome {
        Ok(report) if report.ok => {
            m.drill_last_success.set(Utc::now().timestamp() as f64);
            tracing::info!(id = %report.id, ms = report.duration_ms, "restore drill passed");
        }
        Ok(report) => {
            m.drill_failures.inc();
            let failed: Vec<String> = report
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: expected {}, got {}", c.name, c.expected, c.actual))
                .collect();
            tracing::error!(id = %report.id, checks = %failed.join("; "), "restore drill FAILED: do not rely on this backup");
        }
        Err(e) => {
            m.drill_failures.inc();
            let e = crate::error_chain::one_line(&e);
            tracing::error!(error = %e, "restore drill failed");
        }
    }
}

/// Why a scheduled drill could not run (a drill that ran and failed a check is a report).
#[derive(Debug, thiserror::Error)]
enum DrillRunError {
    #[error(transparent)]
    Identity(#[from] crate::stages::encrypt::KeyError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("no backup in {0} to drill")]
    NoBackup(String),
    #[error(transparent)]
    ReadBack(#[from] crate::readback::ReadBackError),
    #[error(transparent)]
    Drill(#[from] crate::drill::DrillError),
}

async fn drill_latest(
    plan: &DrillPlan,
    shared: &Arc<Shared>,
) -> Result<crate::drill::DrillReport, DrillRunError> {
    let identities = crate::stages::encrypt::Identities::from_file(&plan.identity_file)?;
    // A drill-only instance may watch a bucket shared by several clusters: it drills the
    // newest backup in it, whichever cluster's.
    let (all, _) = Catalog::new(shared.store.clone(), shared.read_policy.clone())
        .list()
        .await?;
    let manifest = all
        .into_iter()
        .next()
        .ok_or_else(|| DrillRunError::NoBackup(shared.store.location()))?;
    crate::readback::check_encryption(&manifest, true, false)?;
    let report = crate::drill::drill(
        shared.store.clone(),
        &manifest,
        Some(&Arc::new(identities)),
        &plan.settings,
        Arc::new(Silent),
    )
    .await?;
    Ok(report)
}

async fn connect_until(
    settings: &EtcdSettings,
    shutdown: &CancellationToken,
) -> Option<EtcdSource> {
    loop {
        match EtcdSource::connect_first(settings).await {
            Ok(s) => return Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot connect to etcd; retrying in 5 s");
                if sleep_or_cancel(Duration::from_secs(5), shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// Sleeps; true when cancelled first.
async fn sleep_or_cancel(d: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        () = token.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

/// This machine's host name (kubeadm's default node name, lowercased there).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
