//! `lifeboat shadow`: follow the journal in a private etcd, prove it, cut bases.

use anyhow::{Context, Result};
use lifeboat::config::{resolve_read_policy_as, resolve_shadow, FileConfig};
use lifeboat::shadow::{self, ShadowState, SharedState};

use super::args::{Output, ShadowArgs};
use super::snapshot;

pub async fn run(a: ShadowArgs, file: FileConfig) -> Result<()> {
    let config = &file.overlay(a.flags());
    let settings = resolve_shadow(config, a.until_revision)?;
    let policy = resolve_read_policy_as(&config.trust, lifeboat::trust::Role::Shadow)?;
    let identities = snapshot::load_identities(config.drill.identity_file.as_ref())?;
    let store = snapshot::open_primary(config).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    super::cancel_on_signals(shutdown.clone());
    let state = SharedState::default();
    let server = match a.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} (--listen)"))?;
            Some(tokio::spawn(lifeboat::service::shadow::serve_shadow(
                listener,
                state.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let result = shadow::run(
        store,
        policy,
        identities,
        settings,
        state.clone(),
        shutdown.clone(),
    )
    .await;
    if let Some(server) = server {
        if result.is_err() {
            // Stopped by a check: keep telling it (readyz, metrics) until told to go.
            eprintln!("lifeboat: the shadow stopped; /readyz and /metrics say why until SIGTERM");
            shutdown.cancelled().await;
        }
        shutdown.cancel();
        let _ = server.await;
    }
    let end = state.get();
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&end)?),
        Output::Table => print_state(&end),
    }
    result
        .map(|_| ())
        .with_context(|| match end.chain.as_str() {
            "" => "shadow".to_string(),
            chain => format!("shadow of chain {chain}"),
        })
}

fn print_state(s: &ShadowState) {
    println!("chain      {}", s.chain);
    println!("started    from base {}", s.started_from);
    println!(
        "revisions  applied {}, verified {} ({} checkpoint(s)), journal read to {}",
        s.applied_revision, s.verified_revision, s.checkpoints_verified, s.journal_revision
    );
    for b in &s.bases {
        println!("base       {} at revision {}", b.id, b.revision);
    }
    if s.base_failures > 0 {
        println!("bases      {} failed (see the log)", s.base_failures);
    }
    if let Some(why) = &s.stopped {
        println!("STOPPED    {why}");
    }
}
