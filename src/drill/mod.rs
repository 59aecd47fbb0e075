//! `lifeboat drill`: prove a backup restorable without touching any node — read it back and
//! verify it, restore it with etcd's own tool into a sandbox, start a throwaway etcd on
//! loopback (mutual TLS with throwaway certificates: see `pki.rs`), and compare what that etcd serves with the manifest and with our own reading of
//! the file (revision, number of keys, HashKV).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use etcd_client::GetOptions;
use serde::Serialize;

use crate::catalog::Manifest;
use crate::etcd::LiveHashKv;
use crate::progress::Observer;
use crate::readback::{self, ReadBackError};
use crate::restore::{RestoreError, RestoreTool};
use crate::sandbox::{Sandbox, SandboxError, SandboxSettings};
use crate::stages::encrypt::Identities;
use crate::store::Store;
use crate::verify;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(transparent)]
    ReadBack(#[from] ReadBackError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("drill of backup {id} FAILED: the restored etcd does not match the backup (see the checks); do not rely on this backup, and take a new one")]
    Mismatch { id: String },
    #[error("reading the restored snapshot {path}: {source}")]
    Offline {
        path: PathBuf,
        #[source]
        source: crate::bbolt::BoltError,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillCheck {
    pub name: String,
    pub expected: String,
    pub actual: String,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub id: String,
    pub ok: bool,
    pub checks: Vec<DrillCheck>,
    pub etcd_version: String,
    pub restore_tool: String,
    pub duration_ms: u64,
    /// The v3 store's membership in the backup and, where its manifest recorded the member
    /// list of its time, the zombie-member check's findings (#26). Informational: a restore
    /// writes a new membership, so a zombie matters only to the running cluster's upgrade.
    pub membership: MembershipNote,
}

/// The backup's v3-store membership, as the drill reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MembershipNote {
    pub summary: String,
    /// `None`: the manifest records no member list to compare with.
    pub findings: Option<Vec<String>>,
}

impl MembershipNote {
    fn of(v3: &verify::Membership, manifest: &Manifest) -> MembershipNote {
        MembershipNote {
            summary: v3.summary(),
            findings: manifest.membership.as_ref().map(|r| {
                v3.findings(&r.live)
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            }),
        }
    }
}

/// Runs one drill; mismatches are in the report (`ok == false`), errors are failures to even
/// get that far (unreadable backup, tool or etcd that will not run).
///
/// # Errors
/// See [`DrillError`].
pub async fn drill(
    store: Arc<dyn Store>,
    manifest: &Manifest,
    identities: Option<&Arc<Identities>>,
    settings: &SandboxSettings,
    progress: Arc<dyn Observer>,
) -> Result<DrillReport, DrillError> {
    let started = Instant::now();
    crate::fsutil::create_private_dir(&settings.work_dir).map_err(|source| SandboxError::Dir {
        path: settings.work_dir.clone(),
        source,
    })?;
    let sandbox = tempfile::Builder::new()
        .prefix("lifeboat-drill-")
        .tempdir_in(&settings.work_dir)
        .map_err(|source| SandboxError::Dir {
            path: settings.work_dir.clone(),
            source,
        })?;
    let snapshot = sandbox.path().join("snapshot.db");
    readback::get_backup(store, manifest, identities, &snapshot, true, progress).await?;
    let tool = RestoreTool::find(settings.tool.as_deref())?;
    let rev = manifest.revision;
    let offline = offline_facts(&snapshot, rev, manifest)?;
    let skip_hash_check = !crate::bbolt::has_sha256_trailer(manifest.plain_size);
    let mut etcd = Sandbox::start(
        sandbox.path(),
        &snapshot,
        skip_hash_check,
        &tool,
        settings,
        &[],
    )
    .await?;
    let result = check_member(&mut etcd, manifest, &offline).await;
    etcd.stop().await;
    let (checks, etcd_version) = result?;
    Ok(DrillReport {
        id: manifest.id.clone(),
        ok: checks.iter().all(|c| c.ok),
        checks,
        etcd_version,
        restore_tool: format!("{} {}", tool.path.display(), tool.version_string()),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        membership: offline.membership,
    })
}

struct OfflineFacts {
    live_keys: u64,
    hash: u32,
    compact_revision: i64,
    membership: MembershipNote,
}

fn offline_facts(
    snapshot: &Path,
    rev: i64,
    manifest: &Manifest,
) -> Result<OfflineFacts, DrillError> {
    let err = |source| DrillError::Offline {
        path: snapshot.to_path_buf(),
        source,
    };
    let info = verify::read_snapshot_info(snapshot).map_err(err)?;
    let compact_revision = manifest
        .hashkv
        .compact_revision
        .filter(|_| manifest.hashkv.checked)
        .unwrap_or(info.compact_revision);
    Ok(OfflineFacts {
        live_keys: verify::live_keys(snapshot, rev).map_err(err)?,
        hash: verify::hash_kv(snapshot, rev, info.compact_revision).map_err(err)?,
        compact_revision,
        membership: MembershipNote::of(&info.membership, manifest),
    })
}

async fn check_member(
    sandbox: &mut Sandbox,
    manifest: &Manifest,
    offline: &OfflineFacts,
) -> Result<(Vec<DrillCheck>, String), DrillError> {
    let rev = manifest.revision;
    let status = sandbox.status.clone();
    let source = &mut sandbox.source;
    let mut checks = vec![check(
        "revision",
        rev.to_string(),
        status.revision.to_string(),
    )];
    let count = source
        .client()
        .get(
            vec![0u8],
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_count_only()
                    .with_revision(rev),
            ),
        )
        .await
        .map(|r| r.count().to_string())
        .unwrap_or_else(|e| format!("error: {e}"));
    checks.push(check("keys", offline.live_keys.to_string(), count));
    let expected_hash = if manifest.hashkv.checked {
        manifest.hashkv.hash
    } else {
        offline.hash
    };
    let (actual, ok) = match source.hash_kv(rev).await {
        Ok(LiveHashKv::Hash {
            hash,
            compact_revision,
        }) => (
            format!("{hash} (compact revision {compact_revision})"),
            hash == expected_hash,
        ),
        Ok(LiveHashKv::Compacted) => ("revision compacted".into(), false),
        Err(e) => (format!("error: {e}"), false),
    };
    checks.push(DrillCheck {
        name: "hashkv".into(),
        ok,
        expected: format!(
            "{expected_hash} (compact revision {})",
            offline.compact_revision
        ),
        actual,
    });
    Ok((checks, status.version))
}

fn check(name: &str, expected: String, actual: String) -> DrillCheck {
    DrillCheck {
        name: name.into(),
        ok: expected == actual,
        expected,
        actual,
    }
}
