//! Maintenance in `serve` (#27): on the elected instance, every member's sizes, role and alarms
//! as metrics; with `[maintenance] enabled`, at each tick of its window the same rules as
//! `lifeboat defrag` (one member at a time behind a proven backup; NOSPACE cleared or left
//! saying why — and then not tried again until something changed: never a loop).

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::face::{Problem, Worker};
use super::{ServeError, ServeSettings, Shared};
use crate::backup::BackupSettings;
use crate::maintenance::{self, Inputs, NospaceOutcome, Pick, Rules, Survey};

/// `[maintenance]` as `serve` runs it.
#[derive(Debug, Clone)]
pub struct MaintenancePlan {
    /// `false`: metrics only.
    pub enabled: bool,
    pub rules: Rules,
    /// Six-field cron of the times maintenance may start (and the members are surveyed).
    pub window: String,
    pub max_backup_age: Duration,
    pub ready_timeout: Duration,
    pub quota: u64,
}

/// Between two surveys for the metrics, whatever the window.
const SURVEY_EVERY: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabel {
    pub member: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlarmLabel {
    pub member: String,
    pub alarm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
    pub result: String,
}

/// The metrics of the cluster's members and of maintenance.
#[derive(Default)]
pub struct MaintenanceMetrics {
    pub db_size: Family<MemberLabel, Gauge>,
    pub db_size_in_use: Family<MemberLabel, Gauge>,
    pub quota: Gauge,
    pub alarms: Family<AlarmLabel, Gauge>,
    pub is_leader: Family<MemberLabel, Gauge>,
    pub actions: Family<ActionLabel, Counter>,
    pub nospace_left: Gauge<i64, AtomicI64>,
    pub fragmentation: Family<MemberLabel, Gauge<f64, AtomicU64>>,
}

impl MaintenanceMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "lifeboat_etcd_db_size_bytes",
            "Each member's database file size (from the elected instance)",
            self.db_size.clone(),
        );
        registry.register(
            "lifeboat_etcd_db_size_in_use_bytes",
            "Each member's database size holding data; the rest is free pages a defragmentation gives back",
            self.db_size_in_use.clone(),
        );
        registry.register(
            "lifeboat_etcd_fragmentation_ratio",
            "Each member's free pages over its file size",
            self.fragmentation.clone(),
        );
        registry.register(
            "lifeboat_etcd_quota_bytes",
            "The members' --quota-backend-bytes",
            self.quota.clone(),
        );
        registry.register(
            "lifeboat_etcd_alarms",
            "1 while an alarm (NOSPACE, CORRUPT) is raised on a member",
            self.alarms.clone(),
        );
        registry.register(
            "lifeboat_etcd_is_leader",
            "1 for the member that leads the cluster",
            self.is_leader.clone(),
        );
        registry.register(
            "lifeboat_maintenance_actions",
            "Maintenance actions (compact, move-leader, defragment, disarm, backup) by result",
            self.actions.clone(),
        );
        registry.register(
            "lifeboat_maintenance_nospace_left",
            "1 while NOSPACE stays raised because the data does not fit under the quota",
            self.nospace_left.clone(),
        );
    }

    /// Every metric with one member and one alarm (for `every_metric`: an empty family
    /// exports nothing).
    pub(super) fn sample() -> MaintenanceMetrics {
        let m = MaintenanceMetrics::default();
        let member = crate::maintenance::MemberState {
            id: 1,
            name: "m".into(),
            endpoint: String::new(),
            db_size: 0,
            db_size_in_use: 0,
            is_leader: true,
            learner: false,
            problem: None,
        };
        m.record(&Survey {
            cluster_id: 1,
            revision: 1,
            members: vec![member],
            alarms: vec![crate::etcd::maintenance::Alarm {
                member_id: 1,
                kind: "NOSPACE".into(),
            }],
            quota: 0,
        });
        m.count("defragment", "ok");
        m
    }

    fn record(&self, s: &Survey) {
        self.clear();
        for m in &s.members {
            let label = MemberLabel {
                member: m.name.clone(),
            };
            self.db_size
                .get_or_create(&label)
                .set(i64::try_from(m.db_size).unwrap_or(i64::MAX));
            self.db_size_in_use
                .get_or_create(&label)
                .set(i64::try_from(m.db_size_in_use).unwrap_or(i64::MAX));
            self.fragmentation
                .get_or_create(&label)
                .set(m.fragmentation());
            self.is_leader
                .get_or_create(&label)
                .set(i64::from(m.is_leader));
        }
        for a in &s.alarms {
            let member = s
                .member(a.member_id)
                .map_or(format!("{:x}", a.member_id), |m| m.name.clone());
            self.alarms
                .get_or_create(&AlarmLabel {
                    member,
                    alarm: a.kind.clone(),
                })
                .set(1);
        }
        self.quota.set(i64::try_from(s.quota).unwrap_or(i64::MAX));
    }

    /// An instance that is not (or no longer) elected exports no member metrics.
    fn clear(&self) {
        self.db_size.clear();
        self.db_size_in_use.clear();
        self.fragmentation.clear();
        self.is_leader.clear();
        self.alarms.clear();
    }

    fn count(&self, action: &str, result: &str) {
        self.actions
            .get_or_create(&ActionLabel {
                action: action.into(),
                result: result.into(),
            })
            .inc();
    }
}

/// What the worker remembers between ticks.
#[derive(Default)]
struct State {
    /// NOSPACE was left raised at this largest database size: not tried again until the alarm
    /// was cleared by someone else or the size changed.
    nospace_left_at: Option<u64>,
    last_error: Option<String>,
}

/// The face's view: the metrics, and the last failure as a public problem.
#[derive(Clone, Default)]
pub(super) struct Maintenance(Arc<MaintenanceMetrics>, Arc<Mutex<State>>);

#[async_trait::async_trait]
impl Worker for Maintenance {
    fn register(&self, registry: &mut Registry) {
        self.0.register(registry);
    }

    fn problems(&self) -> Vec<Problem> {
        let state = self.1.lock().ok();
        match state.as_ref().and_then(|s| s.last_error.clone()) {
            Some(e) => vec![Problem::new("maintenance", e)],
            None => Vec::new(),
        }
    }
}

/// The task: surveys every `SURVEY_EVERY` and at each window tick while this instance is
/// elected; acts at window ticks when enabled.
pub(super) async fn start(
    worker: &Maintenance,
    plan: MaintenancePlan,
    settings: ServeSettings,
    backup: BackupSettings,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let (metrics, state) = (worker.0.clone(), worker.1.clone());
    let (tx, mut window) = mpsc::channel::<()>(1);
    let err = |e: tokio_cron_scheduler::JobSchedulerError| ServeError::Scheduler(e.to_string());
    let mut scheduler = tokio_cron_scheduler::JobScheduler::new()
        .await
        .map_err(err)?;
    let job = tokio_cron_scheduler::Job::new_async(plan.window.as_str(), move |_, _| {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.try_send(());
        })
    })
    .map_err(err)?;
    scheduler.add(job).await.map_err(err)?;
    scheduler.start().await.map_err(err)?;
    let task = tokio::spawn(async move {
        let mut every = tokio::time::interval(SURVEY_EVERY);
        loop {
            let act = tokio::select! {
                () = shutdown.cancelled() => break,
                _ = every.tick() => false,
                w = window.recv() => w.is_some(),
            };
            if !shared.leadership.is_leader() && !nospace_on_raft_leader(&settings).await {
                metrics.clear();
                continue;
            }
            tick(
                &plan,
                &settings,
                &backup,
                &shared,
                &metrics,
                &state,
                act && plan.enabled,
            )
            .await;
        }
        let _ = scheduler.shutdown().await;
    });
    Ok(task)
}

/// Under NOSPACE nobody can be elected (a lease grant is a write etcd refuses): the instance
/// beside the raft leader acts instead — one instance, as the election would give.
async fn nospace_on_raft_leader(settings: &ServeSettings) -> bool {
    let Ok(mut own) = crate::etcd::EtcdSource::connect_first(&settings.etcd).await else {
        return false;
    };
    let Ok(status) = own.status().await else {
        return false;
    };
    status.leader != 0
        && status.leader == status.member_id
        && own
            .alarms()
            .await
            .is_ok_and(|a| a.iter().any(crate::etcd::maintenance::Alarm::is_nospace))
}

async fn tick(
    plan: &MaintenancePlan,
    settings: &ServeSettings,
    backup: &BackupSettings,
    shared: &Arc<Shared>,
    metrics: &MaintenanceMetrics,
    state: &Mutex<State>,
    act: bool,
) {
    let survey = match maintenance::survey(&settings.etcd, plan.quota).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "maintenance: cannot survey the members");
            return;
        }
    };
    metrics.record(&survey);
    if !act {
        return;
    }
    let largest = survey.members.iter().map(|m| m.db_size).max().unwrap_or(0);
    if let Ok(mut s) = state.lock() {
        if !survey.nospace() {
            s.nospace_left_at = None;
            metrics.nospace_left.set(0);
        } else if s.nospace_left_at == Some(largest) {
            tracing::warn!(
                largest_mib = largest >> 20,
                "maintenance: NOSPACE stays raised and nothing changed since it was left: not trying again"
            );
            return;
        }
    }
    let p = maintenance::plan(&survey, &plan.rules, &Pick::OverThresholds);
    if let Some(why) = &p.blocked {
        tracing::info!(why = %why, "maintenance: not now");
        return;
    }
    if p.is_empty() {
        return;
    }
    let observer = crate::progress::Logged;
    let inputs = Inputs {
        etcd: &settings.etcd,
        store: shared.store.clone(),
        backup,
        read_policy: shared.read_policy.clone(),
        max_backup_age: plan.max_backup_age,
        ready_timeout: plan.ready_timeout,
        quota: plan.quota,
        observer: &observer,
    };
    let outcome = match maintenance::ensure_backup(&inputs, survey.cluster_id).await {
        Ok(proof) => {
            if matches!(proof, maintenance::BackupProof::Taken { .. }) {
                metrics.count("backup", "ok");
            }
            maintenance::execute(&p, &survey, &plan.rules, &inputs, proof).await
        }
        Err(e) => {
            metrics.count("backup", "failed");
            Err(e)
        }
    };
    let mut s = match state.lock() {
        Ok(s) => s,
        Err(_) => return,
    };
    match outcome {
        Ok(report) => {
            for a in &report.actions {
                metrics.count(a.action, "ok");
            }
            s.last_error = None;
            if let Some(NospaceOutcome::Left { largest, why, .. }) = &report.nospace {
                s.nospace_left_at = Some(*largest);
                metrics.nospace_left.set(1);
                tracing::error!(why = %why, "maintenance: NOSPACE left raised");
            }
        }
        Err(e) => {
            metrics.count("defragment", "failed");
            tracing::error!(error = %e, "maintenance failed");
            s.last_error = Some(e.to_string());
        }
    }
}
