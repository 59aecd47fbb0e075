//! The node bundle saved next to the pre-upgrade backup: `/etc/kubernetes/pki`,
//! `/etc/kubernetes/manifests` and the kubeadm ClusterConfiguration, as a tar, zstd-compressed
//! and age-encrypted like the snapshot (it holds the cluster's CA keys).
//!
//! Object key `<backup-id>.node-<node>.tar.zst.age`: retention deletes it with its backup.
//! A few hundred KiB, so it is built in memory.

use std::path::Path;

use chrono::{DateTime, Utc};
use std::sync::Arc;

use crate::catalog::Manifest;
use crate::stages::encrypt::Recipients;
use crate::store::{bytes_stream, Store};

use super::tools::{self, Tools};

/// The bundle's key for a backup, node and time: several upgrades of one node may reuse one
/// backup (within `--max-snapshot-age`), and each keeps its own bundle (kubeadm renews
/// certificates on upgrade, so the pki differs).
pub fn key(backup_id: &str, node: &str, at: DateTime<Utc>, encrypted: bool) -> String {
    let safe: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let at = at.format("%Y%m%dT%H%M%S%.3fZ");
    if encrypted {
        format!("{backup_id}.node-{safe}.{at}.tar.zst.age")
    } else {
        format!("{backup_id}.node-{safe}.{at}.tar.zst")
    }
}

/// Why the node bundle could not be made or stored.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("reading the cluster's kubeadm configuration: {0}")]
    ClusterConfig(#[source] super::UpgradeError),
    #[error("packing {path}: {source}")]
    Pack {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("storing it: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("the packing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Builds and stores the bundle; returns its key.
///
/// # Errors
/// A folder that cannot be read, or the store refusing the object.
pub async fn save(
    store: &Arc<dyn Store>,
    backup: &Manifest,
    node: &str,
    kubernetes_dir: &Path,
    tools: &Tools,
    recipients: Option<&Recipients>,
) -> Result<String, BundleError> {
    let cluster_config = {
        let argv = tools.cluster_configuration();
        tokio::task::spawn_blocking(move || tools::run(&argv, std::time::Duration::from_secs(60)))
            .await?
            .map_err(BundleError::ClusterConfig)?
    };
    let dir = kubernetes_dir.to_path_buf();
    let encrypted = recipients.is_some();
    let recipients = recipients.cloned();
    let bytes =
        tokio::task::spawn_blocking(move || build(&dir, &cluster_config, recipients.as_ref()))
            .await??;
    let key = key(&backup.id, node, Utc::now(), encrypted);
    store.put(&key, bytes_stream(bytes.into())).await?;
    Ok(key)
}

fn build(
    kubernetes_dir: &Path,
    cluster_config: &str,
    recipients: Option<&Recipients>,
) -> Result<Vec<u8>, BundleError> {
    let pack = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Pack { path, source }
    };
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    for sub in ["pki", "manifests"] {
        let path = kubernetes_dir.join(sub);
        if path.is_dir() {
            tar.append_dir_all(sub, &path).map_err(pack(&path))?;
        }
    }
    let mut header = tar::Header::new_gnu();
    header.set_size(cluster_config.len() as u64);
    header.set_mode(0o600);
    header.set_cksum();
    tar.append_data(
        &mut header,
        "kubeadm-config.yaml",
        cluster_config.as_bytes(),
    )
    .map_err(pack(Path::new("kubeadm-config.yaml")))?;
    let tarball = tar.into_inner().map_err(pack(kubernetes_dir))?;
    crate::stages::encode::encode_all(&tarball, BUNDLE_LEVEL, recipients)
        .map_err(pack(kubernetes_dir))
}

/// A few hundred KiB of certificates and YAML: the level hardly matters.
const BUNDLE_LEVEL: i32 = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{id_of_bundle_key, BackupId};

    #[test]
    fn bundle_keys_name_their_encryption_and_parse_back_to_their_backup() {
        let id = BackupId::new(chrono::Utc::now(), 0xab).to_string();
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-29T02:03:04.5Z")
            .unwrap()
            .with_timezone(&Utc);
        let plain = key(&id, "cp 1/x", at, false);
        assert_eq!(
            plain,
            format!("{id}.node-cp_1_x.20261129T020304.500Z.tar.zst")
        );
        assert_eq!(
            key(&id, "cp1", at, true),
            format!("{id}.node-cp1.20261129T020304.500Z.tar.zst.age")
        );
        assert_eq!(
            id_of_bundle_key(&plain).map(|b| b.to_string()),
            Some(id.clone())
        );
        let later = at + chrono::Duration::seconds(1);
        assert_ne!(key(&id, "cp1", at, true), key(&id, "cp1", later, true));
    }
}
