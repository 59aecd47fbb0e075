//! `serve`'s workers as its HTTP face shows them: what each exports and when each makes the
//! instance not ready. Only the workers that run are on the face.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::face::{Problem, Worker};
use super::Shared;
use crate::etcd::EtcdSource;

/// A journal further behind than this is stalled (the PrometheusRule alerts at 60 s too).
const JOURNAL_STALL: Duration = Duration::from_secs(60);

/// The workers of one `serve` instance.
pub(super) fn of(shared: &Arc<Shared>, drills: bool) -> Vec<Arc<dyn Worker>> {
    let mut out: Vec<Arc<dyn Worker>> = vec![Arc::new(Bucket(shared.clone()))];
    if shared.backups {
        out.push(Arc::new(Backups(shared.clone())));
    }
    if drills {
        out.push(Arc::new(Drills(shared.clone())));
    }
    if shared.continuous {
        out.push(Arc::new(Capture(shared.clone())));
    }
    if let Some(state) = &shared.shadow {
        out.push(Arc::new(super::shadow::Shadow(state.clone())));
    }
    out
}

/// Every instance reads or writes the store: it must answer.
struct Bucket(Arc<Shared>);

#[async_trait::async_trait]
impl Worker for Bucket {
    async fn probe(&self) -> Vec<Problem> {
        match self.0.store.list("lifeboat-readyz-probe").await {
            Ok(_) => Vec::new(),
            Err(e) => vec![Problem::new("store", e.to_string())],
        }
    }
}

/// Scheduled backups: etcd must answer and, on the uploader, the last success be younger than
/// twice the schedule's interval (or the service younger than that).
struct Backups(Arc<Shared>);

#[async_trait::async_trait]
impl Worker for Backups {
    fn register(&self, registry: &mut Registry) {
        self.0.metrics.register_backups(registry);
    }

    fn problems(&self) -> Vec<Problem> {
        let s = &self.0;
        let window = s.interval * 2;
        if !s.leadership.is_leader() || s.started.elapsed() <= window {
            return Vec::new();
        }
        let fresh = s
            .last_success
            .lock()
            .ok()
            .and_then(|t| *t)
            .is_some_and(|t| t.elapsed() < window);
        match fresh {
            true => Vec::new(),
            false => vec![Problem::new(
                "backups",
                format!("no successful backup in the last {} s", window.as_secs()),
            )],
        }
    }

    async fn probe(&self) -> Vec<Problem> {
        let mut probe = self.0.etcd.clone();
        probe.connect_timeout = Duration::from_secs(2);
        probe.request_timeout = Duration::from_secs(2);
        match EtcdSource::connect_first(&probe).await {
            Ok(_) => Vec::new(),
            Err(e) => vec![Problem::new("etcd", e.to_string())],
        }
    }
}

/// Restore drills: metrics only (a failed drill is an alert, not an unready instance).
struct Drills(Arc<Shared>);

impl Worker for Drills {
    fn register(&self, registry: &mut Registry) {
        self.0.metrics.register_drills(registry);
    }
}

/// The journal capture: stalled when nothing has become durable for a minute.
struct Capture(Arc<Shared>);

impl Worker for Capture {
    fn register(&self, registry: &mut Registry) {
        self.0.metrics.register_journal(registry);
        let shared = self.0.clone();
        registry.register_collector(Box::new(Lag(Arc::new(move || shared.journal_lag()))));
    }

    fn problems(&self) -> Vec<Problem> {
        match self.0.journal_lag() {
            Some(lag) if lag > JOURNAL_STALL.as_secs_f64() => vec![Problem::new(
                "journal",
                format!("no revision has become durable in the journal for {lag:.0} s"),
            )],
            _ => Vec::new(),
        }
    }
}

/// The live RPO, computed when scraped: now − when every revision of the member was last
/// durable; absent while this instance does not capture.
struct Lag(Arc<dyn Fn() -> Option<f64> + Send + Sync>);

impl std::fmt::Debug for Lag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lag")
    }
}

impl Collector for Lag {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(lag) = (self.0)() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(lag);
        let metric = encoder.encode_descriptor(
            "lifeboat_continuous_lag_seconds",
            "Seconds since every revision of the member was last durable in the journal: the live RPO",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// Every metric any worker can export, as one exposition (what the alerts in deploy/ may use).
pub fn every_metric() -> String {
    let metrics = super::metrics::Metrics::new();
    let mut registry = Registry::default();
    metrics.register_backups(&mut registry);
    metrics.register_drills(&mut registry);
    metrics.register_journal(&mut registry);
    registry.register_collector(Box::new(Lag(Arc::new(|| Some(0.0)))));
    super::shadow::Shadow(Default::default()).register(&mut registry);
    super::maintenance::MaintenanceMetrics::sample().register(&mut registry);
    super::copy::Copies(super::copy::CopyMetrics::sample()).register(&mut registry);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}
