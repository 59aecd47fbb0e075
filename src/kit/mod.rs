//! The control-plane kit (#25): what a rebuilt control-plane node needs besides etcd — the
//! cluster's CA and keys, the service-account key, kubeconfigs, static pod manifests, every file
//! their flags name (the encryption-at-rest config, audit policy, webhook configs, …), the
//! kubelet's config — stored beside the backups as one age-encrypted object with a signed
//! manifest listing each file's path, mode, owner and sha256.
//!
//! A kit is **content-addressed**: its id is the sha256 of what it holds (files, versions, the
//! cluster and node it is of), so an unchanged kit is stored once however many backups refer to
//! it. It holds the CA's private key, so it is never stored without encryption.
//!
//! - `collect.rs`: which files, from the node's folders and its manifests' flags.
//! - `stored.rs`: saving (once per content) and loading back with every check.

mod collect;
mod stored;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use collect::{collect, read_files, KitDirs};
pub use stored::{list, load, manifest_key, save, Saved};

use crate::catalog::ObjectRef;
use crate::store::StoreError;
use crate::trust::envelope::EnvelopeError;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a static pod manifest lifeboat can read: {why}")]
    Manifest { path: PathBuf, why: String },
    #[error("a control-plane kit holds the cluster's CA key and is never stored without encryption: give the backup's age recipients (backup.recipients)")]
    Plaintext,
    #[error("packing the kit: {0}")]
    Pack(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("kit {id}: {why}; no file of it is used")]
    Damaged { id: String, why: String },
    #[error("{0} is not empty: give a new or empty folder (a kit holds private keys; nothing is overwritten)")]
    OutputNotEmpty(PathBuf),
    #[error(
        "there is no trusted kit {id} in {location}: `lifeboat kit list` shows the kits there"
    )]
    NotFound { id: String, location: String },
}

/// One file of a kit, as it was on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KitFile {
    /// Absolute, where it goes back.
    pub path: String,
    /// Permission bits (`0o600`…).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub sha256: String,
}

/// The versions a rebuilt node must install.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    /// etcd's image (its tag is the version), from etcd.yaml.
    pub etcd_image: Option<String>,
    pub kubeadm: Option<String>,
    pub kubelet: Option<String>,
}

/// A kit on this node: its files with their content.
#[derive(Debug, Clone)]
pub struct Kit {
    pub cluster_id: String,
    pub node: String,
    pub versions: Versions,
    pub files: Vec<(KitFile, Vec<u8>)>,
}

impl Kit {
    /// The content address: sha256 over the cluster, the node, the versions and every file's
    /// path, mode, owner and digest, in order.
    pub fn id(&self) -> String {
        let files: Vec<&KitFile> = self.files.iter().map(|(f, _)| f).collect();
        content_id(&self.cluster_id, &self.node, &self.versions, &files)
    }
}

fn content_id(cluster: &str, node: &str, versions: &Versions, files: &[&KitFile]) -> String {
    let canonical = serde_json::json!({
        "cluster_id": cluster,
        "node": node,
        "versions": versions,
        "files": files,
    });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// The signed description of a stored kit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KitManifest {
    pub schema_version: u32,
    /// The content address ([`Kit::id`]).
    pub id: String,
    /// When this content was first stored.
    pub created_at: DateTime<Utc>,
    /// Hex, as backups name it.
    pub cluster_id: String,
    pub node: String,
    pub versions: Versions,
    pub files: Vec<KitFile>,
    /// The encrypted tar of the files, in this order.
    pub object: ObjectRef,
    /// The age recipients it is encrypted to.
    pub recipients: Vec<String>,
}

impl KitManifest {
    /// The id its content gives (must equal `id`).
    pub fn content_id(&self) -> String {
        let files: Vec<&KitFile> = self.files.iter().collect();
        content_id(&self.cluster_id, &self.node, &self.versions, &files)
    }
}

impl crate::trust::envelope::Envelope for KitManifest {
    const KIND: crate::trust::Kind = crate::trust::Kind::Kit;
    /// Hundreds of files of a few hundred bytes each.
    const LIMIT: usize = 4 << 20;
    fn cluster(&self) -> Option<u64> {
        u64::from_str_radix(&self.cluster_id, 16).ok()
    }
    fn dated(&self) -> DateTime<Utc> {
        self.created_at
    }
}

/// Where to take a kit from, on a kubeadm node (decided from its `etcd.yaml`).
#[derive(Debug, Clone)]
pub struct KitPlan {
    pub dirs: KitDirs,
    /// etcd's image, from etcd.yaml.
    pub etcd_image: Option<String>,
}

impl KitPlan {
    /// On a kubeadm node: `/etc/kubernetes` from where its `etcd.yaml` is, the kubelet's
    /// folder at its default.
    pub fn of(etcd: &crate::etcd::discovery::KubeadmEtcd) -> Option<KitPlan> {
        let kubernetes_dir = etcd.manifest.parent()?.parent()?.to_path_buf();
        Some(KitPlan {
            dirs: KitDirs {
                kubernetes_dir,
                kubelet_dir: PathBuf::from(DEFAULT_KUBELET_DIR),
            },
            etcd_image: etcd.image.clone(),
        })
    }
}

pub const DEFAULT_KUBELET_DIR: &str = "/var/lib/kubelet";

/// Collects this node's kit and stores it unless its content is there already.
///
/// # Errors
/// A file or manifest that cannot be read; no recipients; the store fails.
pub async fn take(
    plan: &KitPlan,
    cluster_id: &str,
    node: &str,
    store: &std::sync::Arc<dyn crate::store::Store>,
    signer: Option<&crate::trust::SigningKey>,
    recipients: Option<&crate::stages::encrypt::Recipients>,
) -> Result<Saved, KitError> {
    if recipients.is_none_or(|r| r.is_empty()) {
        return Err(KitError::Plaintext);
    }
    let dirs = plan.dirs.clone();
    let files = tokio::task::spawn_blocking(move || read_files(&collect(&dirs)?))
        .await
        .map_err(|e| KitError::Pack(std::io::Error::other(e)))??;
    let versions = Versions {
        etcd_image: plan.etcd_image.clone(),
        kubeadm: tool_version("kubeadm", &["version", "-o", "short"]).await,
        kubelet: tool_version("kubelet", &["--version"]).await,
    };
    let kit = Kit {
        cluster_id: cluster_id.to_string(),
        node: node.to_string(),
        versions,
        files,
    };
    save(store, signer, recipients, &kit).await
}

/// What `tool args` prints (its last word: `v1.33.1`), when it is installed.
async fn tool_version(tool: &str, args: &[&str]) -> Option<String> {
    let path = crate::process::on_path(tool)?;
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::process::Command::new(path).args(args).output(),
    )
    .await
    .ok()?
    .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .map(str::to_string)
}
