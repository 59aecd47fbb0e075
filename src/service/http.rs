//! `/healthz`, `/readyz` and `/metrics`. The endpoint is unauthenticated and, in deploy/, on a
//! host-network pod: `/readyz` must not become a way to make the node open etcd connections
//! and list the bucket at will, nor tell strangers the endpoints and the bucket. So the
//! readiness verdict is cached for a few seconds, computed by one request at a time under a
//! deadline, and answered with component names only; the details go to the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::etcd::EtcdSource;

/// How long a verdict is reused: probes cost an mTLS handshake and a LIST.
const VERDICT_TTL: Duration = Duration::from_secs(5);
/// The whole readiness check, etcd and store together.
const CHECK_DEADLINE: Duration = Duration::from_secs(5);
/// Requests served at once; more wait (kubelet probes, a Prometheus scrape, a human).
const MAX_CONCURRENT: usize = 16;

/// A readiness verdict: the problems found (empty: ready), each `component: detail`.
pub(super) struct Verdict {
    at: Instant,
    problems: Vec<(&'static str, String)>,
}

pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT,
        ))
        .with_state(shared);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the HTTP server failed");
    }
}

async fn metrics_text(
    State(shared): State<Arc<Shared>>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        {
            if let Some(lag) = shared.journal_lag() {
                shared.metrics.continuous_lag.set(lag);
            }
            let text = shared.metrics.render();
            match &shared.shadow {
                Some(shadow) => super::shadow::join_metrics(&text, &shadow.get()),
                None => text,
            }
        },
    )
}

/// Ready when etcd and the store answer and, on the uploader, the last success is younger than
/// twice the schedule's interval (or the service is younger than that). The body names the
/// failing components only.
async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    // One check at a time: concurrent requests wait here and then reuse its verdict.
    let mut cached = shared.readiness.lock().await;
    let fresh = cached
        .as_ref()
        .is_some_and(|v| v.at.elapsed() < VERDICT_TTL);
    if !fresh {
        let problems = match tokio::time::timeout(CHECK_DEADLINE, check(&shared)).await {
            Ok(p) => p,
            Err(_) => vec![(
                "deadline",
                format!("the readiness check took longer than {CHECK_DEADLINE:?}"),
            )],
        };
        for (component, detail) in &problems {
            tracing::warn!(component, detail = %detail, "not ready");
        }
        *cached = Some(Verdict {
            at: Instant::now(),
            problems,
        });
    }
    let verdict = cached.as_ref().map_or(&[][..], |v| &v.problems[..]);
    if verdict.is_empty() {
        return (StatusCode::OK, "ready\n".into());
    }
    let mut components: Vec<&str> = verdict.iter().map(|(c, _)| *c).collect();
    components.dedup();
    let mut body = format!(
        "not ready: {} (details in the log)\n",
        components.join(", ")
    );
    // A stopped shadow is named in full: the segment or checkpoint is what the page needs.
    if let Some(line) = shadow_readiness(&shared).and_then(|(_, public)| public) {
        body.push_str(&line);
        body.push('\n');
    }
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

fn shadow_readiness(shared: &Shared) -> Option<(String, Option<String>)> {
    super::shadow::readiness(&shared.shadow.as_ref()?.get())
}

async fn check(shared: &Shared) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if shared.backups {
        let mut probe = shared.etcd.clone();
        probe.connect_timeout = Duration::from_secs(2);
        probe.request_timeout = Duration::from_secs(2);
        if let Err(e) = EtcdSource::connect_first(&probe).await {
            problems.push(("etcd", e.to_string()));
        }
    }
    match shared.store.list("lifeboat-readyz-probe").await {
        Ok(_) => {}
        Err(e) => problems.push(("store", e.to_string())),
    }
    let window = shared.interval * 2;
    if shared.leadership.is_leader() && shared.started.elapsed() > window {
        let fresh = shared
            .last_success
            .lock()
            .ok()
            .and_then(|t| *t)
            .is_some_and(|t| t.elapsed() < window);
        if !fresh {
            problems.push((
                "backups",
                format!("no successful backup in the last {} s", window.as_secs()),
            ));
        }
    }
    if let Some((detail, _)) = shadow_readiness(shared) {
        problems.push(("shadow", detail));
    }
    if let Some(lag) = shared.journal_lag() {
        if lag > JOURNAL_STALL.as_secs_f64() {
            problems.push((
                "journal",
                format!("no revision has become durable in the journal for {lag:.0} s"),
            ));
        }
    }
    problems
}

/// A journal further behind than this is stalled (the PrometheusRule alerts at 60 s too).
const JOURNAL_STALL: Duration = Duration::from_secs(60);
