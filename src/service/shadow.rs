//! The shadow as a worker of the one HTTP face: alone (`lifeboat shadow --listen`), or inside a
//! drill-only `serve` (`[shadow] enabled`) beside its drills. The shadow runs off the control plane, in the cluster's own network: `/readyz`
//! names why it stopped, so the page an alert links to says which segment or checkpoint failed.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::face::{Face, Problem, Worker};
use super::{sleep_or_cancel, ShadowPlan};
use crate::shadow::{ShadowError, ShadowState, SharedState};
use crate::stages::encrypt::Identities;
use crate::store::Store;
use crate::trust::ReadPolicy;

/// The shadow inside `serve`, until `shutdown`. One that cannot start (no journal yet, the
/// store or its etcd failing) is started again after a pause, the cause in `/readyz`; one that
/// a check stopped stays stopped — metrics and `/readyz` say where — until the service is
/// restarted, after the journal is looked at (docs/shadow.md).
pub(super) async fn follow_in_serve(
    plan: ShadowPlan,
    store: Arc<dyn Store>,
    policy: Arc<ReadPolicy>,
    state: SharedState,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let pause = retry_pause(plan.settings.poll_interval);
    while !shutdown.is_cancelled() {
        let outcome = match read_identities(&plan) {
            Ok(identities) => crate::shadow::run(
                store.clone(),
                policy.clone(),
                identities,
                plan.settings.clone(),
                state.clone(),
                shutdown.clone(),
            )
            .await
            .map(|_| ())
            .map_err(|e| match e {
                ShadowError::Mismatch { .. } => None,
                other => Some(other.to_string()),
            }),
            Err(e) => Err(Some(e.to_string())),
        };
        if shutdown.is_cancelled() {
            return;
        }
        let why = match outcome {
            Err(None) => return,
            // It follows until cancelled: ending otherwise is a failure to follow.
            Ok(()) => "the shadow stopped following the journal".to_string(),
            Err(Some(why)) => why,
        };
        tracing::error!(error = %why, retry_in = ?pause, "the shadow cannot follow the journal; it tries again");
        state.note_retrying(why);
        if sleep_or_cancel(pause, &shutdown).await {
            return;
        }
    }
}

/// Thirty polls, between 1 s and 1 min: long enough not to hammer a store that is down,
/// short enough to pick up a journal that has just started.
fn retry_pause(poll: Duration) -> Duration {
    (poll * 30).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

fn read_identities(
    plan: &ShadowPlan,
) -> Result<Option<Arc<Identities>>, crate::stages::encrypt::KeyError> {
    plan.identity_file
        .as_ref()
        .map(|path| Identities::from_file(path).map(Arc::new))
        .transpose()
}

/// The shadow as a worker of the one HTTP face: its metrics read from its state at each scrape,
/// not ready once a check stopped it (the stop named publicly: the segment or checkpoint is
/// what the page needs) or while it cannot start (only the component: its error may name
/// endpoints, the log has it).
#[derive(Clone)]
pub struct Shadow(pub SharedState);

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shadow")
    }
}

impl Worker for Shadow {
    fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.clone()));
    }

    fn problems(&self) -> Vec<Problem> {
        problems(&self.0.get())
    }
}

fn problems(s: &ShadowState) -> Vec<Problem> {
    if let Some(why) = &s.stopped {
        let line = format!(
            "shadow: STOPPED at verified revision {}: {why}",
            s.verified_revision
        );
        return vec![Problem {
            public: Some(line.clone()),
            ..Problem::new("shadow", line)
        }];
    }
    s.retrying
        .iter()
        .map(|why| Problem::new("shadow", format!("not following the journal: {why}")))
        .collect()
}

/// `lifeboat shadow --listen`: the shadow alone on the face, until `shutdown`.
pub async fn serve_shadow(
    listener: tokio::net::TcpListener,
    state: SharedState,
    shutdown: CancellationToken,
) {
    let face = Face::new(vec![Arc::new(Shadow(state))]);
    super::face::serve(listener, Arc::new(face), shutdown).await;
}

impl Collector for Shadow {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.get();
        let gauges = [
            (
                "lifeboat_shadow_verified_revision",
                "Newest revision whose HashKV the shadow reproduced (proven restorable)",
                s.verified_revision,
            ),
            (
                "lifeboat_shadow_applied_revision",
                "Newest revision the shadow applied",
                s.applied_revision,
            ),
            (
                "lifeboat_shadow_journal_revision",
                "Newest revision in the journal segments the shadow has read",
                s.journal_revision,
            ),
            (
                "lifeboat_shadow_up",
                "1 while the shadow follows the journal, 0 once a check stopped it",
                i64::from(s.stopped.is_none()),
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let lag = ConstGauge::new(s.lag_seconds());
        lag.encode(encoder.encode_descriptor(
            "lifeboat_shadow_lag_seconds",
            "Seconds since the capture received the oldest revision not yet proven (0 when all are)",
            None,
            lag.metric_type(),
        )?)?;
        let counters = [
            (
                "lifeboat_shadow_mismatches",
                "Checks that failed (the shadow stops at the first)",
                s.mismatches_total,
            ),
            (
                "lifeboat_shadow_bases",
                "Full backups written from the shadow",
                s.bases.len() as u64,
            ),
            (
                "lifeboat_shadow_base_failures",
                "Bases that failed (the next proven checkpoint after the interval tries again)",
                s.base_failures,
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_a_stop_publicly_and_a_failing_start_only_in_the_log() {
        assert_eq!(problems(&ShadowState::default()), vec![]);
        let retrying = ShadowState {
            retrying: Some("http://10.0.0.1:8333 unreachable".into()),
            ..ShadowState::default()
        };
        let p = problems(&retrying);
        assert!(
            p[0].detail.contains("10.0.0.1") && p[0].public.is_none(),
            "{p:?}"
        );
        let stopped = ShadowState {
            stopped: Some("segment seg.x tampered".into()),
            verified_revision: 9,
            ..retrying
        };
        assert_eq!(
            problems(&stopped)[0].public.as_deref(),
            Some("shadow: STOPPED at verified revision 9: segment seg.x tampered")
        );
    }

    #[test]
    fn a_failing_start_is_retried_after_thirty_polls_within_a_minute() {
        assert_eq!(retry_pause(Duration::from_secs(1)), Duration::from_secs(30));
        assert_eq!(
            retry_pause(Duration::from_millis(10)),
            Duration::from_secs(1)
        );
        assert_eq!(
            retry_pause(Duration::from_secs(10)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn the_documented_names_are_exported_with_the_state() {
        let s = ShadowState {
            verified_revision: 42,
            mismatches_total: 1,
            stopped: Some("x".into()),
            ..ShadowState::default()
        };
        let state = SharedState::default();
        state.update(|now| *now = s.clone());
        let text = Face::new(vec![Arc::new(Shadow(state))]).metrics();
        for line in [
            "lifeboat_shadow_verified_revision 42",
            "lifeboat_shadow_mismatches_total 1",
            "lifeboat_shadow_lag_seconds 0",
            "lifeboat_shadow_up 0",
            "lifeboat_shadow_bases_total 0",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "{line} in {text}"
            );
        }
    }
}
