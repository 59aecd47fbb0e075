//! `lifeboat serve` and `serve --check-config`.

use anyhow::{Context, Result};
use lifeboat::config::{resolve_serve, FileConfig, ServeOverrides};

use super::args::ServeArgs;
use super::snapshot::{backup_overrides, etcd_overrides, s3_overrides};

pub async fn run(a: ServeArgs, config: &FileConfig) -> Result<()> {
    let settings = resolve_serve(
        config,
        &etcd_overrides(&a.etcd),
        &backup_overrides(&a.backup),
        a.dest.dest.as_ref(),
        &s3_overrides(&a.dest),
        &ServeOverrides {
            schedule: a.schedule.clone(),
            listen: a.listen.clone(),
        },
    )?;
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
