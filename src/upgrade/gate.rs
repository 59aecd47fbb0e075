//! The gate: on a control-plane node, nothing that changes the node runs before a pre-upgrade
//! backup is committed off the node (a fresh one, or a recent one whose object still matches
//! its manifest) together with the node's control-plane kit (#25: the same kit every backup on
//! the node carries), and a mark tying the two so retention keeps them for the upgrade.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::{GateInputs, GateResult, UpgradeError, UpgradeOptions};
use crate::backup::{take_backup, BackupSettings};
use crate::catalog::{Catalog, Manifest, Reason};
use crate::etcd::EtcdSource;
use crate::progress::Observer;
use crate::store::Store;

pub(super) async fn run_gate(
    opts: &UpgradeOptions,
    g: &GateInputs,
    observer: &dyn Observer,
) -> Result<GateResult, UpgradeError> {
    let gate_err = |reason: String| UpgradeError::Gate { reason };
    let mut source = EtcdSource::connect_first(&g.etcd)
        .await
        .map_err(|e| gate_err(format!("cannot reach etcd for the pre-upgrade backup: {e}")))?;
    let facts = source
        .member_facts()
        .await
        .map_err(|e| gate_err(format!("etcd: {e}")))?;
    let cluster = format!("{:x}", facts.cluster_id);
    let catalog = Catalog::new(g.store.clone(), g.read_policy.clone());
    let recent = recent_verified_backup(&catalog, &cluster, opts.max_snapshot_age).await;
    let (manifest, reused) = match recent {
        Some(m) => {
            observer.note(&format!(
                "using backup {} ({}s old, its object matches its manifest)",
                m.id,
                (Utc::now() - m.created_at).num_seconds()
            ));
            (m, true)
        }
        None => {
            observer.note("taking a fresh pre-upgrade backup");
            let settings = BackupSettings {
                reason: Reason::PreUpgrade,
                ..g.backup.clone()
            };
            let cancel = tokio_util::sync::CancellationToken::new();
            let m = take_backup(
                &mut source,
                g.store.clone(),
                &settings,
                Arc::new(crate::progress::Silent),
                &cancel,
                None,
            )
            .await
            .map_err(|e| gate_err(format!("the pre-upgrade backup failed: {e}")))?;
            (m, false)
        }
    };
    let kit = node_kit(g, &cluster, &opts.node, observer)
        .await
        .map_err(|e| gate_err(format!("the node's control-plane kit: {e}")))?;
    if let Some(kit) = &kit {
        let mark = crate::catalog::upgrade_mark_key(&manifest.id, &opts.node, Utc::now(), kit);
        g.store
            .put(&mark, crate::store::bytes_stream(bytes::Bytes::new()))
            .await
            .map_err(|e| {
                gate_err(format!(
                    "marking backup {} for the upgrade: {e}",
                    manifest.id
                ))
            })?;
    }
    observer.note(&format!(
        "backup {} and kit {} are in {}",
        manifest.id,
        kit.as_deref().unwrap_or("(none)"),
        g.store.location()
    ));
    Ok(GateResult {
        backup_id: manifest.id.clone(),
        reused,
        created_at: manifest.created_at,
        kit,
        store: g.store.location(),
    })
}

/// The node's kit, stored unless its content is there. Never in the clear: with encryption
/// off the upgrade goes on without one, loudly (the backup itself still gates it).
async fn node_kit(
    g: &GateInputs,
    cluster: &str,
    node: &str,
    observer: &dyn Observer,
) -> Result<Option<String>, crate::kit::KitError> {
    let Some(plan) = &g.backup.kit else {
        return Ok(None);
    };
    if g.backup.recipients.is_none() {
        observer.note("WARNING: encryption is off (backup.encryption = \"none\"): NO control-plane kit is stored — it holds the cluster's CA keys and is never stored in the clear; set backup.recipients to keep /etc/kubernetes/pki and the files the manifests name with every backup");
        tracing::warn!("no control-plane kit: encryption is off");
        return Ok(None);
    }
    let saved = crate::kit::take(
        plan,
        cluster,
        node,
        &g.store,
        g.backup.signer.as_deref(),
        g.backup.recipients.as_ref(),
    )
    .await?;
    Ok(Some(saved.id))
}

/// The newest backup of `cluster` younger than `max_age` whose object still has the size and
/// sha256 its manifest records.
async fn recent_verified_backup(
    catalog: &Catalog,
    cluster: &str,
    max_age: Duration,
) -> Option<Manifest> {
    // Only a writer's own backup stands for the cluster's state here: a shadow's base is
    // dated when cut, whatever revision it proved, and is confirmed only through the journal.
    let manifests = catalog.writer_signed().await.ok()?;
    let now = Utc::now();
    let m = manifests.into_iter().find(|m| {
        m.cluster_id == cluster
            && (now - m.created_at)
                .to_std()
                .is_ok_and(|age| age <= max_age)
    })?;
    object_matches(catalog.store().as_ref(), &m)
        .await
        .then_some(m)
}

async fn object_matches(store: &dyn Store, m: &Manifest) -> bool {
    use futures::StreamExt;
    use sha2::{Digest, Sha256};
    let Ok(mut stream) = store.get(&m.object.key).await else {
        return false;
    };
    let mut h = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { return false };
        h.update(&chunk);
        size += chunk.len() as u64;
    }
    size == m.object.size && hex::encode(h.finalize()) == m.object.sha256
}
