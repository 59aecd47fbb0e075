//! The gate: on a control-plane node, nothing that changes the node runs before a pre-upgrade
//! backup is committed off the node (a fresh one, or a recent one whose object still matches
//! its manifest) together with the encrypted node bundle.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::bundle;
use super::tools::Tools;
use super::{GateInputs, GateResult, UpgradeError, UpgradeOptions};
use crate::backup::{take_backup, BackupSettings};
use crate::catalog::{Catalog, Manifest, Reason};
use crate::etcd::EtcdSource;
use crate::progress::Observer;
use crate::store::Store;

pub(super) async fn run_gate(
    opts: &UpgradeOptions,
    tools: &Tools,
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
    if g.backup.recipients.is_none() {
        observer.note("WARNING: encryption is off (backup.encryption = \"none\"): the node bundle — /etc/kubernetes/pki with the cluster's CA keys — is stored IN THE CLEAR; anyone who can read the store can impersonate the cluster");
        tracing::warn!("the node bundle is stored unencrypted (backup.encryption = \"none\")");
    }
    let bundle_key = bundle::save(
        &g.store,
        &manifest,
        &opts.node,
        &opts.kubernetes_dir,
        tools,
        g.backup.recipients.as_ref(),
    )
    .await
    .map_err(|e| gate_err(format!("the node bundle: {e}")))?;
    observer.note(&format!(
        "backup {} and node bundle {} are in {}",
        manifest.id,
        bundle_key,
        g.store.location()
    ));
    Ok(GateResult {
        backup_id: manifest.id.clone(),
        reused,
        created_at: manifest.created_at,
        bundle_key,
        store: g.store.location(),
    })
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
