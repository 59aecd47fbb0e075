//! `lifeboat snapshot save|status|list|verify|get`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use lifeboat::backup::take_backup;
use lifeboat::catalog::{Catalog, Manifest, Reason};
use lifeboat::config::{
    resolve_backup, resolve_etcd, resolve_read_policy, resolve_store, ConfigError, FileConfig,
};
use lifeboat::continuous::Journal;
use lifeboat::etcd::EtcdSource;
use lifeboat::readback;
use lifeboat::stages::encrypt::Identities;
use lifeboat::store::Store;

use super::args::{
    GetArgs, ListArgs, Output, PickArgs, SaveArgs, SnapshotCommand, StatusArgs, VerifyArgs,
};
use super::{progress, render};

pub async fn run(cmd: SnapshotCommand, file: FileConfig) -> Result<()> {
    match cmd {
        SnapshotCommand::Save(a) => save(*a, file).await,
        SnapshotCommand::Status(a) => status(a),
        SnapshotCommand::List(a) => {
            let c = file.overlay(a.dest.flags());
            list(a, &c).await
        }
        SnapshotCommand::Verify(a) => {
            let c = file.overlay(a.flags());
            verify(a, &c).await
        }
        SnapshotCommand::Get(a) => {
            let c = file.overlay(a.flags());
            get(a, &c).await
        }
    }
}

/// The store a writer uses: --dest, and nothing else.
pub(super) async fn open_primary(c: &FileConfig) -> Result<Arc<dyn Store>> {
    let spec = resolve_store(&c.backup, &c.s3)?;
    Ok(lifeboat::store::open(&spec).await?)
}

/// How long a reader waits for the primary before it turns to the second copy.
const PRIMARY_PROBE: std::time::Duration = std::time::Duration::from_secs(30);

/// The store a reader uses: --dest, or — when it cannot be reached and a second copy is
/// configured (--fallback-dest, `[[copy]]`) — that copy, said on stderr. Everything read
/// from it is checked exactly as from the primary (signatures, digests).
pub(super) async fn open_store(c: &FileConfig) -> Result<Arc<dyn Store>> {
    let spec = resolve_store(&c.backup, &c.s3)?;
    let Some(fallback) = lifeboat::config::resolve_fallback(c)? else {
        return Ok(lifeboat::store::open(&spec).await?);
    };
    let why = match lifeboat::store::open(&spec).await {
        Ok(store) => {
            let probe =
                tokio::time::timeout(PRIMARY_PROBE, store.list("lifeboat-reachability-probe"));
            match probe.await {
                Ok(Ok(_)) => return Ok(store),
                Ok(Err(e)) => lifeboat::error_chain::one_line(&e),
                Err(_) => format!(
                    "{} did not answer in {} s",
                    store.location(),
                    PRIMARY_PROBE.as_secs()
                ),
            }
        }
        Err(e) => lifeboat::error_chain::one_line(&e),
    };
    let copy = lifeboat::store::open(&fallback).await.with_context(|| {
        format!("the primary store cannot be reached ({why}), and neither can the second copy")
    })?;
    tracing::warn!(primary_error = %why, copy = %copy.location(), "the primary store cannot be reached: reading the second copy");
    eprintln!(
        "lifeboat: the primary store cannot be reached ({why}); reading the second copy {} instead (everything read is checked as from the primary)",
        copy.location()
    );
    Ok(copy)
}

async fn save(a: SaveArgs, file: FileConfig) -> Result<()> {
    let config = file.overlay(a.writer.flags());
    let etcd = resolve_etcd(&config.etcd)?;
    let mut settings = resolve_backup(&config.backup, &config.trust, Reason::Manual)?;
    settings.kit = lifeboat::config::resolve_kit(&config.node, &etcd);
    if settings.recipients.is_none() {
        tracing::warn!("ENCRYPTION IS OFF (backup.encryption = \"none\"): this backup holds every Secret of the cluster in the clear");
    }
    let store = open_primary(&config).await?;
    if let Some(k) = &etcd.kubeadm {
        tracing::info!(manifest = %k.manifest.display(), "using the kubeadm etcd manifest for defaults");
    }
    let mut source = EtcdSource::connect_first(&etcd.settings)
        .await
        .context("connecting to etcd")?;
    // Ctrl-C / SIGTERM abort cleanly: the partial object or multipart upload is removed.
    let cancel = tokio_util::sync::CancellationToken::new();
    super::cancel_on_signals(cancel.clone());
    let manifest = take_backup(
        &mut source,
        store.clone(),
        &settings,
        progress::for_terminal(),
        &cancel,
        None,
    )
    .await
    .with_context(|| format!("backup to {}", store.location()))?;
    match a.output {
        Output::Json => println!("{}", manifest.to_json()),
        Output::Table => render::saved(&manifest, &store.location()),
    }
    Ok(())
}

fn status(a: StatusArgs) -> Result<()> {
    let info = readback::plain_file_info(&a.file)?;
    match a.output {
        // etcdctl's own fields, byte for byte.
        Output::Json => println!("{}", serde_json::to_string(&info.status)?),
        Output::Table => {
            render::status(&info.status);
            println!("v3 store members: {}", info.membership.summary());
        }
    }
    Ok(())
}

async fn list(a: ListArgs, config: &FileConfig) -> Result<()> {
    let store = open_store(config).await?;
    let policy = resolve_read_policy(&config.trust)?;
    let (manifests, skipped) = Catalog::new(store.clone(), policy).list().await?;
    for s in &skipped {
        tracing::warn!(key = %s.key, reason = %s.reason, "skipping an unreadable manifest");
    }
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&manifests)?),
        Output::Table => render::list(&manifests),
    }
    Ok(())
}

/// The store the config names and the backup `selector` picks in it, checked against the
/// identities the reader holds (no encryption downgrade).
pub(super) async fn find(
    selector: &str,
    pick: &PickArgs,
    identities: Option<&Arc<Identities>>,
    config: &FileConfig,
) -> Result<(Arc<dyn Store>, Manifest)> {
    let store = open_store(config).await?;
    let cluster = cluster_flag(pick.cluster_id.as_deref())?;
    let policy = resolve_read_policy(&config.trust)?;
    let catalog = Catalog::new(store.clone(), policy.clone());
    let journal = Journal::new(store.clone(), policy);
    let ids = identities.map(Arc::as_ref);
    let manifest = if selector == "latest" {
        pick_latest(&catalog, &journal, ids, cluster, pick.accept_older).await?
    } else {
        let m = catalog.find(selector, cluster).await?;
        journal.confirm_base(ids, &m).await?;
        m
    };
    readback::check_encryption(&manifest, identities.is_some(), pick.allow_unencrypted)?;
    Ok((store, manifest))
}

/// `latest`: the best candidate the journal does not refuse (a shadow base needs a
/// writer-signed checkpoint at its revision), and only if no newer manifest was hidden.
async fn pick_latest(
    catalog: &Catalog,
    journal: &Journal,
    identities: Option<&Identities>,
    cluster: Option<u64>,
    accept_older: bool,
) -> Result<Manifest> {
    let latest = catalog.latest(cluster).await?;
    let mut refused = Vec::new();
    for m in &latest.candidates {
        match journal.confirm_base(identities, m).await {
            Ok(()) => {
                latest.settle(m, accept_older)?;
                return Ok(m.clone());
            }
            Err(e) => {
                tracing::warn!(id = %m.id, error = %e, "a shadow base is not `latest`: the journal does not confirm it");
                refused.push(format!("{e:#}"));
            }
        }
    }
    anyhow::bail!(
        "no backup in {} can be `latest`: {}",
        catalog.store().location(),
        refused.join("; ")
    )
}

pub(super) fn load_identities(path: Option<&PathBuf>) -> Result<Option<Arc<Identities>>> {
    let Some(path) = path else {
        return Ok(None);
    };
    Ok(Some(Arc::new(Identities::from_file(path)?)))
}

/// `--cluster-id` as the user wrote it (hex, padded or not).
///
/// # Errors
/// Not a hex cluster id.
pub(super) fn cluster_flag(raw: Option<&str>) -> Result<Option<u64>> {
    let Some(raw) = raw else { return Ok(None) };
    let id = lifeboat::catalog::parse_cluster_id(raw).ok_or_else(|| ConfigError::Invalid {
        key: "--cluster-id",
        message: format!("`{raw}` is not a hex cluster id (as `snapshot list` shows it)"),
    })?;
    Ok(Some(id))
}

async fn verify(a: VerifyArgs, config: &FileConfig) -> Result<()> {
    let identities = load_identities(a.read.identity.as_ref())?;
    let (store, manifest) = find(&a.read.backup, &a.read.pick, identities.as_ref(), config).await?;
    let checked = readback::verify_backup(
        store,
        &manifest,
        identities.as_ref(),
        progress::for_terminal(),
    )
    .await
    .with_context(|| format!("verifying backup {}", manifest.id))?;
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "id": manifest.id,
                "ok": true,
                "object_sha256": checked.object_sha256,
                "plain_sha256": checked.plain_sha256,
                "status": checked.status,
            })
        ),
        Output::Table => render::verified(&manifest, &checked),
    }
    Ok(())
}

async fn get(a: GetArgs, config: &FileConfig) -> Result<()> {
    let identities = load_identities(a.drill.identity_file.as_ref())?;
    if let Some(target) = super::pitr::target(&a.point)? {
        let cluster = cluster_flag(a.pick.cluster_id.as_deref())?;
        if a.out.exists() && !a.force {
            anyhow::bail!(
                "{} exists: pass --force to overwrite it, or another -o FILE",
                a.out.display()
            );
        }
        let report = super::pitr::to_file(
            target,
            cluster,
            identities.as_ref(),
            a.pick.allow_unencrypted,
            config,
            &a.out,
        )
        .await?;
        super::pitr::print_report(&report, &a.out);
        return Ok(());
    }
    let selector = a.backup.clone().unwrap_or_default();
    let (store, manifest) = find(&selector, &a.pick, identities.as_ref(), config).await?;
    let checked = readback::get_backup(
        store,
        &manifest,
        identities.as_ref(),
        &a.out,
        a.force,
        progress::for_terminal(),
    )
    .await
    .with_context(|| format!("reading backup {} into {}", manifest.id, a.out.display()))?;
    render::got(&manifest, &checked, &a.out);
    Ok(())
}
