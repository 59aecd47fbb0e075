//! The one HTTP face of a long-running lifeboat (`serve`, `shadow --listen`): `/healthz`,
//! `/readyz` and `/metrics`, served from what each worker of the process registers through
//! `Worker` — its metrics in the one registry, its readiness as problems — so a new worker
//! adds itself, not another server or a spliced exposition.
//!
//! The endpoint is unauthenticated and, in deploy/, on a host-network pod: `/readyz` must not
//! become a way to make the node open etcd connections and list the bucket at will, nor tell
//! strangers the endpoints and the bucket. So the costly probes are cached for a few seconds,
//! run by one request at a time under a deadline, and answered with component names only (a
//! problem's public line, like a shadow's stop, excepted); the details go to the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// How long a probe verdict is reused: probes cost an mTLS handshake and a LIST.
const VERDICT_TTL: Duration = Duration::from_secs(5);
/// All probes together.
const PROBE_DEADLINE: Duration = Duration::from_secs(5);
/// Requests served at once; more wait (kubelet probes, a Prometheus scrape, a human).
const MAX_CONCURRENT: usize = 16;

/// Why the process is not ready, for one worker's sake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Named in `/readyz`'s body: `etcd`, `store`, `backups`, `journal`, `shadow`.
    pub component: &'static str,
    /// For the log only: it may name endpoints and the bucket.
    pub detail: String,
    /// Said in `/readyz`'s body as well (nothing secret), when the page an alert links to
    /// needs it.
    pub public: Option<String>,
}

impl Problem {
    pub fn new(component: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            component,
            detail: detail.into(),
            public: None,
        }
    }
}

/// One worker of a long-running process, as its HTTP face shows it.
#[async_trait::async_trait]
pub trait Worker: Send + Sync {
    /// Adds the worker's metrics to the process's one registry (once, at start).
    fn register(&self, _registry: &mut Registry) {}

    /// Problems known from the worker's own state: cheap, asked on every `/readyz`.
    fn problems(&self) -> Vec<Problem> {
        Vec::new()
    }

    /// Problems found by probing what the worker depends on (etcd, the store): costly, so run
    /// by one request at a time, under a deadline, and reused for a few seconds.
    async fn probe(&self) -> Vec<Problem> {
        Vec::new()
    }
}

/// The workers of one process and what `/readyz` last probed.
pub struct Face {
    registry: Registry,
    workers: Vec<Arc<dyn Worker>>,
    probed: tokio::sync::Mutex<Option<(Instant, Vec<Problem>)>>,
    /// When problems were last logged: at most once per `VERDICT_TTL`, however often asked.
    logged: std::sync::Mutex<Option<Instant>>,
}

impl Face {
    pub fn new(workers: Vec<Arc<dyn Worker>>) -> Face {
        let mut registry = Registry::default();
        for w in &workers {
            w.register(&mut registry);
        }
        Face {
            registry,
            workers,
            probed: tokio::sync::Mutex::new(None),
            logged: std::sync::Mutex::new(None),
        }
    }

    /// The metrics of every worker, one exposition.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Every problem now: the cheap ones fresh, the probed ones from a verdict at most
    /// `VERDICT_TTL` old.
    pub async fn problems(&self) -> Vec<Problem> {
        let mut problems = self.probed().await;
        let cheap: Vec<Problem> = self.workers.iter().flat_map(|w| w.problems()).collect();
        self.log(&cheap);
        problems.extend(cheap);
        problems
    }

    /// Writes the details of the cheap `problems` to the log, unless that was done within
    /// `VERDICT_TTL`: a `/readyz` hammered with requests must not flood the log (a probe's are
    /// logged when it runs).
    fn log(&self, problems: &[Problem]) {
        let Ok(mut last) = self.logged.lock() else {
            return;
        };
        if problems.is_empty() || last.is_some_and(|at| at.elapsed() < VERDICT_TTL) {
            return;
        }
        *last = Some(Instant::now());
        for p in problems {
            tracing::warn!(component = p.component, detail = %p.detail, "not ready");
        }
    }

    async fn probed(&self) -> Vec<Problem> {
        // One probe at a time: concurrent requests wait here and then reuse its verdict.
        let mut cached = self.probed.lock().await;
        if let Some((at, problems)) = cached.as_ref() {
            if at.elapsed() < VERDICT_TTL {
                return problems.clone();
            }
        }
        let all = futures::future::join_all(self.workers.iter().map(|w| w.probe()));
        let problems = match tokio::time::timeout(PROBE_DEADLINE, all).await {
            Ok(found) => found.into_iter().flatten().collect(),
            Err(_) => vec![Problem::new(
                "deadline",
                format!("the readiness probes took longer than {PROBE_DEADLINE:?}"),
            )],
        };
        for p in &problems {
            tracing::warn!(component = p.component, detail = %p.detail, "not ready");
        }
        *cached = Some((Instant::now(), problems.clone()));
        problems
    }
}

/// Serves `face` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    face: Arc<Face>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT,
        ))
        .with_state(face);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the HTTP server failed");
    }
}

async fn metrics(
    State(face): State<Arc<Face>>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        face.metrics(),
    )
}

async fn readyz(State(face): State<Arc<Face>>) -> (StatusCode, String) {
    let problems = face.problems().await;
    match verdict(&problems) {
        None => (StatusCode::OK, "ready\n".into()),
        Some(body) => (StatusCode::SERVICE_UNAVAILABLE, body),
    }
}

/// `/readyz`'s body for `problems`: `None` when ready; else the failing components, then each
/// public line.
fn verdict(problems: &[Problem]) -> Option<String> {
    if problems.is_empty() {
        return None;
    }
    let mut components: Vec<&str> = problems.iter().map(|p| p.component).collect();
    components.dedup();
    let mut body = format!(
        "not ready: {} (details in the log)\n",
        components.join(", ")
    );
    for line in problems.iter().filter_map(|p| p.public.as_deref()) {
        body.push_str(line);
        body.push('\n');
    }
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::gauge::Gauge;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A worker with one gauge, a fixed problem and a probe that counts its calls.
    struct Fake {
        gauge: Gauge,
        problem: Option<Problem>,
        probes: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Worker for Fake {
        fn register(&self, registry: &mut Registry) {
            registry.register("fake_value", "A value", self.gauge.clone());
        }
        fn problems(&self) -> Vec<Problem> {
            self.problem.clone().into_iter().collect()
        }
        async fn probe(&self) -> Vec<Problem> {
            self.probes.fetch_add(1, Ordering::SeqCst);
            vec![Problem::new("store", "http://10.0.0.1:8333 refused")]
        }
    }

    fn fake(problem: Option<Problem>) -> Arc<Fake> {
        Arc::new(Fake {
            gauge: Gauge::default(),
            problem,
            probes: AtomicUsize::new(0),
        })
    }

    #[tokio::test]
    async fn every_worker_is_in_one_exposition_and_probes_are_reused() {
        let a = fake(None);
        let stop = Problem {
            public: Some("shadow: STOPPED at verified revision 9".into()),
            ..Problem::new("shadow", "segment x tampered")
        };
        let b = fake(Some(stop));
        a.gauge.set(7);
        let face = Face::new(vec![a.clone(), b.clone()]);
        let text = face.metrics();
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert_eq!(text.matches("fake_value 7").count(), 1, "{text}");

        let body = verdict(&face.problems().await).unwrap();
        assert_eq!(
            body,
            "not ready: store, shadow (details in the log)\nshadow: STOPPED at verified revision 9\n"
        );
        assert!(!body.contains("10.0.0.1"), "a detail leaked: {body}");
        face.problems().await;
        assert_eq!(
            a.probes.load(Ordering::SeqCst),
            1,
            "probed again within the TTL"
        );
        assert_eq!(verdict(&[]), None);
    }
}
