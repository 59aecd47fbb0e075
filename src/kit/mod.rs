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
//! - `install.rs`: writing the files back on a node (`rebuild`).

mod collect;
pub mod install;
mod stored;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use collect::{collect, read_files, KitDirs};
pub use stored::{id_of_manifest_key, list, load, manifest_from_bytes, manifest_key, save, Saved};

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
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} file(s) of the kit are there with other content: {}; nothing was written (with --force they are moved aside under a hidden name beside them, never deleted)", .0.len(), .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Occupied(Vec<PathBuf>),
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
    /// The folders it was taken from (`rebuild` moves what is under them to the node's).
    pub dirs: Option<KitDirs>,
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
    /// kubeadm's folder on the node it was taken from (absent in kits before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_dir: Option<PathBuf>,
    /// The kubelet's folder there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet_dir: Option<PathBuf>,
    /// The encrypted tar of the files, in this order.
    pub object: ObjectRef,
    /// The age recipients it is encrypted to.
    pub recipients: Vec<String>,
}

impl KitManifest {
    /// Which of its folders go where on a node with `to`'s folders (`install::destination`).
    pub fn moves(&self, to: &KitDirs) -> Vec<(PathBuf, PathBuf)> {
        [
            (&self.kubernetes_dir, &to.kubernetes_dir),
            (&self.kubelet_dir, &to.kubelet_dir),
        ]
        .into_iter()
        .filter_map(|(from, to)| Some((from.clone()?, to.clone())))
        .collect()
    }

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

/// Where to take a kit from, on a kubeadm node (`config::resolve_kit`).
#[derive(Debug, Clone)]
pub struct KitPlan {
    pub dirs: KitDirs,
    /// etcd's image, from etcd.yaml.
    pub etcd_image: Option<String>,
    /// The command printing kubeadm's ClusterConfiguration from the `kubeadm-config`
    /// ConfigMap (kubectl with the node's admin kubeconfig), used when the node has no
    /// `kubeadm-config.yaml` of its own.
    pub cluster_configuration: Option<Vec<String>>,
}

/// Where a rebuilt node finds kubeadm's ClusterConfiguration, under the kubernetes folder:
/// the node's own file when it has one, else the cluster's ConfigMap written there.
pub const CLUSTER_CONFIGURATION_FILE: &str = "kubeadm-config.yaml";

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
    let mut files = tokio::task::spawn_blocking(move || read_files(&collect(&dirs)?))
        .await
        .map_err(|e| KitError::Pack(std::io::Error::other(e)))??;
    let own = plan.dirs.kubernetes_dir.join(CLUSTER_CONFIGURATION_FILE);
    let own = own.display().to_string();
    if !files.iter().any(|(f, _)| f.path == own) {
        if let Some(file) = cluster_configuration(plan, own).await {
            files.push(file);
        }
    }
    let versions = Versions {
        etcd_image: plan.etcd_image.clone(),
        kubeadm: tool_version("kubeadm", &["version", "-o", "short"]).await,
        kubelet: tool_version("kubelet", &["--version"]).await,
    };
    let kit = Kit {
        cluster_id: cluster_id.to_string(),
        node: node.to_string(),
        versions,
        dirs: Some(plan.dirs.clone()),
        files,
    };
    save(store, signer, recipients, &kit).await
}

/// `kubectl` printing kubeadm's ClusterConfiguration from its ConfigMap.
pub fn cluster_configuration_command(
    kubectl: &std::path::Path,
    kubeconfig: Option<&std::path::Path>,
) -> Vec<String> {
    let mut v = vec![kubectl.display().to_string()];
    if let Some(k) = kubeconfig {
        v.push(format!("--kubeconfig={}", k.display()));
    }
    v.extend(
        [
            "-n",
            "kube-system",
            "get",
            "configmap",
            "kubeadm-config",
            "-o",
            "jsonpath={.data.ClusterConfiguration}",
        ]
        .map(str::to_string),
    );
    v
}

/// The cluster's ClusterConfiguration as a file of the kit (mode 0600, owned like the
/// kubernetes folder), when the cluster answers.
async fn cluster_configuration(plan: &KitPlan, path: String) -> Option<(KitFile, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let argv = plan.cluster_configuration.as_ref()?;
    let (tool, args) = argv.split_first()?;
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        tokio::process::Command::new(tool)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    if !out.status.success() || out.stdout.trim_ascii().is_empty() {
        tracing::info!(
            "the kit holds no ClusterConfiguration: the cluster did not answer `kubectl get configmap kubeadm-config`"
        );
        return None;
    }
    let owner = std::fs::metadata(&plan.dirs.kubernetes_dir).ok()?;
    let bytes = out.stdout;
    Some((
        KitFile {
            path,
            mode: 0o600,
            uid: owner.uid(),
            gid: owner.gid(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        },
        bytes,
    ))
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
