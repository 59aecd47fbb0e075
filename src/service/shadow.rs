//! The shadow's `/healthz`, `/readyz` and `/metrics` (`lifeboat shadow --listen`). The shadow
//! runs off the control plane, in the cluster's own network: `/readyz` names why it stopped,
//! so the page an alert links to says which segment or checkpoint failed.

use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::shadow::{ShadowState, SharedState};

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
