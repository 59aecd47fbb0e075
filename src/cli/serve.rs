//! `lifeboat serve` and `serve --check-config`.

use anyhow::{Context, Result};
use lifeboat::config::{resolve_serve, FileConfig};

use super::args::ServeArgs;

pub async fn run(a: ServeArgs, file: FileConfig) -> Result<()> {
    let settings = resolve_serve(&file.overlay(a.flags()))?;
    if settings
        .backup
        .as_ref()
        .is_some_and(|b| b.recipients.is_none())
    {
        tracing::warn!("ENCRYPTION IS OFF (backup.encryption = \"none\"): every backup holds every Secret of the cluster in the clear");
    }
    if a.check_config {
        // Debug output of the settings redacts the password (Secret) and shows only public keys.
        println!("configuration is valid:\n{settings:#?}");
        return Ok(());
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    super::cancel_on_signals(shutdown.clone());
    lifeboat::service::run(settings, shutdown)
        .await
        .context("lifeboat serve")?;
    Ok(())
}
