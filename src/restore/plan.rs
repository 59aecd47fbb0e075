//! The restore plan: everything a restore will do, decided — and every refusal made — before
//! anything on the node changes. The plan is saved in the journal and drives every step.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::node::{local_cluster_id, EtcdProbe, CONTROL_PLANE_PODS};
use super::tool::{MemberSpec, RestoreTool, ToolKind, DEFAULT_BUMP_REVISION};
use super::{apiserver, JournalDir, RestoreError};
use crate::catalog::Manifest;
use crate::etcd::discovery::{self, KubeadmEtcd};
use crate::fsutil;
use crate::readback;
use crate::stages::encrypt::Identities;
use crate::store::Store;
use crate::verify::SnapshotStatus;

/// Room the restore needs beside the snapshot: etcd preallocates a 64 MB WAL segment.
const WAL_PREALLOCATION: u64 = 64 << 20;

/// Where the snapshot comes from.
pub enum SnapshotSource {
    Backup {
        store: Arc<dyn Store>,
        manifest: Box<Manifest>,
        identities: Option<Arc<Identities>>,
    },
    File(PathBuf),
}

/// The lowest revision the restored member may report. etcdutl's bump adds to the newest
/// revision in bucket `key` (the file's status revision), not to the revision the member
/// answered when the backup was taken: an empty key space, or a deletion at the head that
/// was compacted away, leaves the file's lower — expecting the header's would call a good
/// restore failed. Without a bump etcd starts at that revision, or at the finished
/// compaction point when higher, and never below 1.
fn expected_revision(status: &SnapshotStatus, bump: Option<u64>) -> i64 {
    match bump {
        Some(b) => status
            .revision
            .saturating_add(i64::try_from(b).unwrap_or(i64::MAX)),
        None => status.revision.max(1),
    }
}

/// What the plan says about the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFacts {
    /// Backup id, or `file` for a plain snapshot file.
    pub id: String,
    /// Store location or file path.
    pub source: String,
    pub created_at: Option<DateTime<Utc>>,
    pub revision: i64,
    pub member_name: Option<String>,
    pub cluster_id: Option<String>,
    pub plain_sha256: String,
    pub plain_size: u64,
    pub status: SnapshotStatus,
}

/// The etcd client settings for health checks on this node (no secrets: file paths only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalClient {
    pub endpoint: String,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Everything a restore will do, decided before anything changes; saved in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub run_id: String,
    pub backup: BackupFacts,
    /// The verified plain copy the tool restores from (removed when the run ends).
    pub snapshot_path: PathBuf,
    pub manifests_dir: PathBuf,
    pub holding_dir: PathBuf,
    /// Control-plane manifests present now, etcd first: stopped and brought back in order.
    pub static_pods: Vec<String>,
    pub data_dir: PathBuf,
    pub data_dir_existed: bool,
    pub aside_dir: PathBuf,
    pub restoring_dir: PathBuf,
    /// Owner the restored data dir gets (the old data dir's, or its parent's).
    pub owner: (u32, u32),
    pub tool: RestoreTool,
    pub member: MemberSpec,
    pub bump_revision: Option<u64>,
    pub restore_argv: Vec<String>,
    pub client: LocalClient,
    /// The lowest revision the restored member may report.
    pub expected_min_revision: i64,
    pub local_cluster_id: Option<String>,
    /// Where to ask the API server for readiness once its manifest is back.
    pub apiserver: Option<apiserver::ApiServerProbe>,
    pub warnings: Vec<String>,
    /// Part of a cluster restore (`--cluster`): the plan every node follows and who joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterRun>,
}

/// This node's part in a cluster restore, kept in its journal so `--resume` finishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRun {
    pub plan: super::cluster::ClusterPlan,
    pub joined: Vec<super::cluster::Joined>,
    pub node: String,
    pub peer_url: String,
}

impl Plan {
    /// Members in `--initial-cluster`: more than one means an HA restore.
    pub fn member_count(&self) -> usize {
        self.member
            .initial_cluster
            .split(',')
            .filter(|s| !s.is_empty())
            .count()
    }
}

/// Overrides for the restored member (HA restores pass the same cluster and token everywhere).
#[derive(Debug, Clone, Default)]
pub struct MemberOverrides {
    pub name: Option<String>,
    pub initial_advertise_peer_urls: Option<String>,
    pub initial_cluster: Option<String>,
    pub initial_cluster_token: Option<String>,
}

/// How to restore on this node.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub manifests_dir: PathBuf,
    pub state_dir: PathBuf,
    pub tool: Option<PathBuf>,
    pub member: MemberOverrides,
    /// `None`: the default bump when the tool supports it; `Some(0)`: no bump.
    pub bump_revision: Option<u64>,
    /// Restore although etcd is running on this node (it is stopped first).
    pub force: bool,
    pub stop_timeout: Duration,
    pub start_timeout: Duration,
    /// Wait for etcd to answer after its manifest goes back.
    pub wait: bool,
    /// Connect/request timeouts for the health checks.
    pub connect_timeout: Duration,
    /// How long to wait for the API server's `/readyz` (informational, never fails).
    pub apiserver_timeout: Duration,
    /// Control-plane manifests held in this folder rather than in `manifests_dir`: `rebuild`
    /// writes the kit's there, so the kubelet starts nothing before the restore puts them in
    /// place (an etcd started early would run on an empty data dir). The plan holds them here.
    pub held_manifests: Option<PathBuf>,
}

impl RestoreOptions {
    /// Where the control-plane manifest `name` is: held for this restore, or where the kubelet
    /// runs it.
    pub fn manifest(&self, name: &str) -> PathBuf {
        let held = self.held_manifests.as_ref().map(|d| d.join(name));
        held.filter(|p| p.exists())
            .unwrap_or_else(|| self.manifests_dir.join(name))
    }
}

/// Decides the plan and runs every check that can refuse before anything changes.
///
/// # Errors
/// A refusal (unfinished journal, etcd running without `force`, not enough disk), an
/// unreadable etcd manifest, no restore tool, a plain file that does not check out.
pub async fn plan(source: &SnapshotSource, opts: &RestoreOptions) -> Result<Plan, RestoreError> {
    let journals = JournalDir::new(&opts.state_dir);
    journals.refuse_unfinished("restore")?;
    let find = |name: &str| opts.manifest(name);
    let etcd_manifest = find("etcd.yaml");
    let local = discovery::discover(&etcd_manifest)?.ok_or_else(|| {
        RestoreError::node(
            &etcd_manifest,
            "no etcd static pod manifest here: is this a kubeadm control-plane node? pass --manifests-dir",
        )
    })?;
    if let Some(wal) = local.flags.get("wal-dir") {
        return Err(RestoreError::node(
            &etcd_manifest,
            format!("etcd uses a separate --wal-dir ({wal}), which lifeboat does not restore yet: restore by hand with etcdutl (docs/restore.md)"),
        ));
    }
    let backup = backup_facts(source)?;
    let tool = RestoreTool::find(opts.tool.as_deref())?;
    let run_id = Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let run_dir = journals.run_dir(&run_id);
    let data_dir = local.data_dir.clone();
    let data_dir_existed = data_dir.exists();
    let mut warnings = Vec::new();

    let probe = EtcdProbe::new(local.endpoints.first().map(String::as_str), &data_dir);
    let client = local_client(&local);
    let running = probe.running();
    let local_cluster_id = match &running {
        Some(_) => local_cluster_id(&client, opts.connect_timeout).await,
        None => None,
    };
    if let Some(why) = &running {
        if !opts.force {
            return Err(RestoreError::refused(format!(
                "etcd is running on this node ({why}); a restore replaces its data with the backup's — if that is what you want, add --force (lifeboat stops it by moving the static pod manifests first)"
            )));
        }
    }
    if let (Some(local_id), Some(backup_id)) = (&local_cluster_id, &backup.cluster_id) {
        if local_id != backup_id {
            warnings.push(format!(
                "the backup is from cluster {backup_id} but this member belongs to cluster {local_id}: make sure this is the right backup"
            ));
        }
    }
    let member = member_spec(&local, &opts.member, &backup, &mut warnings)?;
    let bump_revision = match opts.bump_revision {
        Some(0) => None,
        Some(n) if tool.can_bump_revision() => Some(n),
        None if tool.can_bump_revision() => Some(DEFAULT_BUMP_REVISION),
        _ => {
            warnings.push(format!(
                "{} {} cannot bump the revision (etcdutl 3.5.10+ can): Kubernetes clients that saw newer resourceVersions may need a restart (kube-controller-manager, kube-scheduler, operators)",
                match tool.kind { ToolKind::Etcdutl => "etcdutl", ToolKind::Etcdctl => "etcdctl" },
                tool.version_string()
            ));
            None
        }
    };
    let snapshot_path = run_dir.join("snapshot.db");
    let restoring_dir = sibling(&data_dir, &format!("lifeboat-restoring-{run_id}"));
    // The fetch checks the staged file completely (etcd's trailer included) as it writes it,
    // and a resumed run checks it again before this step: etcd's tool need not hash it a
    // third time (1.7 s of a 1.6 GB restore).
    let restore_argv =
        tool.restore_argv(&snapshot_path, &restoring_dir, &member, true, bump_revision);
    check_disk(&opts.state_dir, &data_dir, backup.plain_size)?;
    let static_pods = CONTROL_PLANE_PODS
        .iter()
        .filter(|p| find(p).exists())
        .map(|p| (*p).to_string())
        .collect();
    let owner = owner_of(&data_dir);
    Ok(Plan {
        expected_min_revision: expected_revision(&backup.status, bump_revision),
        holding_dir: opts
            .held_manifests
            .clone()
            .unwrap_or_else(|| sibling(&opts.manifests_dir, &format!("lifeboat-held-{run_id}"))),
        aside_dir: sibling(&data_dir, &format!("lifeboat-{run_id}")),
        manifests_dir: opts.manifests_dir.clone(),
        run_id,
        backup,
        snapshot_path,
        static_pods,
        data_dir,
        data_dir_existed,
        restoring_dir,
        owner,
        tool,
        member,
        bump_revision,
        restore_argv,
        client,
        local_cluster_id,
        apiserver: apiserver::ApiServerProbe::from_manifest(&find("kube-apiserver.yaml")),
        warnings,
        cluster: None,
    })
}

fn local_client(local: &KubeadmEtcd) -> LocalClient {
    let endpoint = local.endpoints.first().cloned().unwrap_or_default();
    let tls = endpoint.starts_with("https://");
    LocalClient {
        endpoint,
        cacert: local.cacert.clone().filter(|_| tls),
        cert: local.cert.clone().filter(|_| tls),
        key: local.key.clone().filter(|_| tls),
    }
}

fn backup_facts(source: &SnapshotSource) -> Result<BackupFacts, RestoreError> {
    match source {
        SnapshotSource::Backup {
            store, manifest, ..
        } => Ok(BackupFacts {
            id: manifest.id.clone(),
            source: store.location(),
            created_at: Some(manifest.created_at),
            revision: manifest.revision,
            member_name: Some(manifest.member_name.clone()).filter(|n| !n.is_empty()),
            cluster_id: Some(manifest.cluster_id.clone()),
            plain_sha256: manifest.plain_sha256.clone(),
            plain_size: manifest.plain_size,
            status: manifest.status,
        }),
        SnapshotSource::File(path) => {
            let bad = |source| RestoreError::BadFile {
                path: path.clone(),
                source,
            };
            let file = readback::plain_file_facts(path).map_err(bad)?;
            Ok(BackupFacts {
                id: "file".into(),
                source: path.display().to_string(),
                created_at: None,
                revision: file.info.restored_revision,
                member_name: None,
                cluster_id: None,
                plain_sha256: file.sha256,
                plain_size: file.size,
                status: file.info.status,
            })
        }
    }
}

fn member_spec(
    local: &KubeadmEtcd,
    o: &MemberOverrides,
    backup: &BackupFacts,
    warnings: &mut Vec<String>,
) -> Result<MemberSpec, RestoreError> {
    let name = o
        .name
        .clone()
        .or_else(|| local.name.clone())
        .ok_or_else(|| {
            RestoreError::node(
                &local.manifest,
                "the etcd manifest has no --name: pass --name",
            )
        })?;
    let peer_urls = o
        .initial_advertise_peer_urls
        .clone()
        .or_else(|| local.initial_advertise_peer_urls.clone())
        .ok_or_else(|| {
            RestoreError::node(
                &local.manifest,
                "the etcd manifest has no --initial-advertise-peer-urls: pass --initial-advertise-peer-urls",
            )
        })?;
    let initial_cluster = match &o.initial_cluster {
        Some(c) => {
            if !c
                .split(',')
                .any(|m| m.split_once('=').is_some_and(|(n, _)| n == name))
            {
                return Err(RestoreError::refused(format!(
                    "--initial-cluster {c} does not name this member ({name}): list every member as name=peer-url"
                )));
            }
            c.clone()
        }
        None => {
            let manifest_members = local
                .flags
                .get("initial-cluster")
                .map_or(1, |c| c.split(',').count());
            if manifest_members > 1
                || local.flags.get("initial-cluster-state").map(String::as_str) == Some("existing")
            {
                warnings.push(format!(
                    "this node's etcd was part of a multi-member cluster: restoring it alone makes a new single-member cluster; for an HA restore pass the same --initial-cluster and --initial-cluster-token on every control-plane node ({})",
                    "docs/restore.md"
                ));
            }
            format!("{name}={peer_urls}")
        }
    };
    // Same default on every node restoring the same backup, and different from the old
    // cluster's, so a restored member can never rejoin a member of the old cluster.
    let token = o.initial_cluster_token.clone().unwrap_or_else(|| {
        format!(
            "lifeboat-{}",
            &backup.plain_sha256[..16.min(backup.plain_sha256.len())]
        )
    });
    Ok(MemberSpec {
        name,
        initial_advertise_peer_urls: peer_urls,
        initial_cluster,
        initial_cluster_token: token,
    })
}

fn check_disk(state_dir: &Path, data_dir: &Path, plain_size: u64) -> Result<(), RestoreError> {
    use std::os::unix::fs::MetadataExt;
    let existing = |p: &Path| -> PathBuf {
        let mut cur = p.to_path_buf();
        while !cur.exists() {
            match cur.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => cur = parent.to_path_buf(),
                _ => return PathBuf::from("."),
            }
        }
        cur
    };
    let state = existing(state_dir);
    let data_parent = existing(&fsutil::parent_of(data_dir));
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let restore_needs = plain_size + WAL_PREALLOCATION + plain_size / 10;
    let copy_needs = plain_size + (1 << 20);
    let mut needs = vec![(data_parent.clone(), restore_needs)];
    if dev(&state) == dev(&data_parent) {
        needs[0].1 += copy_needs;
    } else {
        needs.push((state, copy_needs));
    }
    for (dir, needed) in needs {
        let free = fsutil::free_bytes(&dir)
            .map_err(|e| RestoreError::node(&dir, format!("cannot stat it: {e}")))?;
        if free < needed {
            return Err(RestoreError::refused(format!(
                "not enough disk on {}: {} MiB free, the restore needs {} MiB (snapshot copy, restored data dir and WAL); free space or use --state-dir on another disk",
                dir.display(),
                free >> 20,
                needed.div_ceil(1 << 20)
            )));
        }
    }
    Ok(())
}

fn owner_of(data_dir: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(data_dir)
        .or_else(|_| std::fs::metadata(fsutil::parent_of(data_dir)))
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or((0, 0))
}

/// `/var/lib/etcd` + `x` → `/var/lib/etcd.x` (beside it: same filesystem, atomic renames).
pub(super) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_stay_in_the_same_folder() {
        assert_eq!(
            sibling(Path::new("/var/lib/etcd"), "lifeboat-1"),
            PathBuf::from("/var/lib/etcd.lifeboat-1")
        );
        assert_eq!(
            sibling(Path::new("/etc/kubernetes/manifests"), "lifeboat-held-1"),
            PathBuf::from("/etc/kubernetes/manifests.lifeboat-held-1")
        );
    }

    #[test]
    fn the_expected_revision_follows_the_files_newest_key_as_etcdutl_does() {
        let status = |revision| SnapshotStatus {
            hash: 0,
            revision,
            total_key: 0,
            total_size: 0,
        };
        // An empty key space: the member answered revision 1, etcdutl bumps from 0.
        assert_eq!(expected_revision(&status(0), Some(1_000)), 1_000);
        assert_eq!(expected_revision(&status(0), None), 1);
        assert_eq!(expected_revision(&status(41), Some(1_000)), 1_041);
        assert_eq!(expected_revision(&status(41), None), 41);
        assert_eq!(expected_revision(&status(41), Some(u64::MAX)), i64::MAX);
    }
}
