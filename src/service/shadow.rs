//! The shadow as a service: its own `/healthz`, `/readyz` and `/metrics` (`lifeboat shadow
//! --listen`), or inside a drill-only `serve` (`[shadow] enabled`), its metrics joined to the
//! service's. The shadow runs off the control plane, in the cluster's own network: `/readyz`
//! names why it stopped, so the page an alert links to says which segment or checkpoint failed.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

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
            Err(why) => Err(Some(why)),
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

fn read_identities(plan: &ShadowPlan) -> Result<Option<Arc<Identities>>, String> {
    plan.identity_file
        .as_ref()
        .map(|path| Identities::from_file(path).map(Arc::new))
        .transpose()
        .map_err(|e| e.to_string())
}

/// The service's metrics text with the shadow's joined to it (one exposition, one `# EOF`).
pub(super) fn join_metrics(service: &str, s: &ShadowState) -> String {
    let head = service.strip_suffix("# EOF\n").unwrap_or(service);
    format!("{head}{}", render(s))
}

/// What `serve`'s `/readyz` says of the shadow: a stop names its cause (segment names and
/// revisions, nothing secret); a failing start only the component (its error may name
/// endpoints: the log has it).
pub(super) fn readiness(s: &ShadowState) -> Option<(String, Option<String>)> {
    if let Some(why) = &s.stopped {
        let line = format!(
            "shadow: STOPPED at verified revision {}: {why}",
            s.verified_revision
        );
        return Some((line.clone(), Some(line)));
    }
    s.retrying
        .as_ref()
        .map(|why| (format!("not following the journal: {why}"), None))
}

/// Serves until `shutdown`.
pub async fn serve_shadow(
    listener: tokio::net::TcpListener,
    state: SharedState,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(16))
        .with_state(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the shadow's HTTP server failed");
    }
}

/// Ready while no check has failed.
async fn readyz(State(state): State<SharedState>) -> (StatusCode, String) {
    let s = state.get();
    match &s.stopped {
        None => (
            StatusCode::OK,
            format!("ok: verified revision {}\n", s.verified_revision),
        ),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "shadow: STOPPED at verified revision {}: {why}\n",
                s.verified_revision
            ),
        ),
    }
}

async fn metrics(
    State(state): State<SharedState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&state.get()),
    )
}

/// The shadow's metrics, from its state now.
pub fn render(s: &ShadowState) -> String {
    let mut registry = Registry::default();
    let gauge = |v: i64| {
        let g: Gauge = Gauge::default();
        g.set(v);
        g
    };
    let gauge_f = |v: f64| {
        let g: Gauge<f64, AtomicU64> = Gauge::default();
        g.set(v);
        g
    };
    let counter = |v: u64| {
        let c: Counter = Counter::default();
        c.inc_by(v);
        c
    };
    registry.register(
        "lifeboat_shadow_verified_revision",
        "Newest revision whose HashKV the shadow reproduced (proven restorable)",
        gauge(s.verified_revision),
    );
    registry.register(
        "lifeboat_shadow_applied_revision",
        "Newest revision the shadow applied",
        gauge(s.applied_revision),
    );
    registry.register(
        "lifeboat_shadow_journal_revision",
        "Newest revision in the journal segments the shadow has read",
        gauge(s.journal_revision),
    );
    registry.register(
        "lifeboat_shadow_lag_seconds",
        "Seconds since the capture received the oldest revision not yet proven (0 when all are)",
        gauge_f(s.lag_seconds()),
    );
    registry.register(
        "lifeboat_shadow_mismatches",
        "Checks that failed (the shadow stops at the first)",
        counter(s.mismatches_total),
    );
    registry.register(
        "lifeboat_shadow_bases",
        "Full backups written from the shadow",
        counter(s.bases.len() as u64),
    );
    registry.register(
        "lifeboat_shadow_base_failures",
        "Bases that failed (the next proven checkpoint after the interval tries again)",
        counter(s.base_failures),
    );
    registry.register(
        "lifeboat_shadow_up",
        "1 while the shadow follows the journal, 0 once a check stopped it",
        gauge(i64::from(s.stopped.is_none())),
    );
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_metrics_are_one_exposition() {
        let service = "# HELP a x\n# TYPE a gauge\na 1\n# EOF\n";
        let text = join_metrics(service, &ShadowState::default());
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(
            text.starts_with("# HELP a x\n") && text.ends_with("# EOF\n"),
            "{text}"
        );
        assert!(text.contains("lifeboat_shadow_up 1"), "{text}");
    }

    #[test]
    fn readiness_names_a_stop_publicly_and_a_failing_start_only_in_the_log() {
        assert_eq!(readiness(&ShadowState::default()), None);
        let retrying = ShadowState {
            retrying: Some("http://10.0.0.1:8333 unreachable".into()),
            ..ShadowState::default()
        };
        let (detail, public) = readiness(&retrying).unwrap();
        assert!(detail.contains("10.0.0.1") && public.is_none(), "{detail}");
        let stopped = ShadowState {
            stopped: Some("segment seg.x tampered".into()),
            verified_revision: 9,
            ..retrying
        };
        let (_, public) = readiness(&stopped).unwrap();
        assert_eq!(
            public.as_deref(),
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
        let text = render(&s);
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
