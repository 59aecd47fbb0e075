//! `lifeboat drill`: prove a backup restorable without touching any node — read it back and
//! verify it, restore it with etcd's own tool into a sandbox, start a throwaway etcd on
//! loopback (mutual TLS with throwaway certificates: see `pki.rs`), and compare what that etcd serves with the manifest and with our own reading of
//! the file (revision, number of keys, HashKV).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use serde::Serialize;

use crate::catalog::Manifest;
use crate::etcd::{EtcdSettings, EtcdSource, LiveHashKv};
use crate::progress::Observer;
use crate::readback::{self, ReadBackError};
use crate::restore::{MemberSpec, RestoreError, RestoreTool};
use crate::stages::encrypt::Identities;
use crate::store::Store;
use crate::verify;
pub use pki::SandboxPki;

mod pki;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(transparent)]
    ReadBack(#[from] ReadBackError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("the sandbox etcd ({etcd}) did not serve within {waited:?}: {detail}")]
    EtcdStart {
        etcd: PathBuf,
        waited: Duration,
        detail: String,
    },
    #[error("drill sandbox {path}: {source}")]
    Sandbox {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("drill of backup {id} FAILED: the restored etcd does not match the backup (see the checks); do not rely on this backup, and take a new one")]
    Mismatch { id: String },
    #[error("reading the restored snapshot {path}: {source}")]
    Offline {
        path: PathBuf,
        #[source]
        source: crate::bbolt::BoltError,
    },
}

#[derive(Debug, Clone)]
pub struct DrillSettings {
    /// The etcd binary the sandbox member runs.
    pub etcd: PathBuf,
    /// etcdutl (or etcdctl 3.4); `None` finds one on PATH.
    pub tool: Option<PathBuf>,
    /// The sandbox is a temp folder in here (needs about twice the database).
    pub work_dir: PathBuf,
    pub start_timeout: Duration,
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
    settings: &DrillSettings,
    progress: Arc<dyn Observer>,
) -> Result<DrillReport, DrillError> {
    let started = Instant::now();
    crate::fsutil::create_private_dir(&settings.work_dir).map_err(|e| DrillError::Sandbox {
        path: settings.work_dir.clone(),
        source: e,
    })?;
    let sandbox = tempfile::Builder::new()
        .prefix("lifeboat-drill-")
        .tempdir_in(&settings.work_dir)
        .map_err(|e| DrillError::Sandbox {
            path: settings.work_dir.clone(),
            source: e,
        })?;
    let snapshot = sandbox.path().join("snapshot.db");
    readback::get_backup(store, manifest, identities, &snapshot, true, progress).await?;
    let tool = RestoreTool::find(settings.tool.as_deref())?;
    let rev = manifest.revision;
    let offline = offline_facts(&snapshot, rev, manifest)?;
    let data_dir = sandbox.path().join("data");
    let pki = SandboxPki::generate(sandbox.path()).map_err(|detail| DrillError::Sandbox {
        path: sandbox.path().to_path_buf(),
        source: std::io::Error::other(detail),
    })?;
    let (client_port, peer_port) = (free_port()?, free_port()?);
    let peer = format!("https://127.0.0.1:{peer_port}");
    let member = MemberSpec {
        name: "drill".into(),
        initial_advertise_peer_urls: peer.clone(),
        initial_cluster: format!("drill={peer}"),
        initial_cluster_token: "lifeboat-drill".into(),
    };
    // No revision bump: the drill compares revisions with the manifest.
    let argv = tool.restore_argv(
        &snapshot,
        &data_dir,
        &member,
        !crate::bbolt::has_sha256_trailer(manifest.plain_size),
        None,
    );
    crate::restore::tool::run_restore(&argv)?;
    let client_url = format!("https://127.0.0.1:{client_port}");
    let mut etcd = SandboxEtcd::start(
        settings,
        sandbox.path(),
        &data_dir,
        &member,
        &client_url,
        &pki,
    )?;
    let result = check_member(&mut etcd, settings, &client_url, &pki, manifest, &offline).await;
    etcd.stop().await;
    let (checks, etcd_version) = result?;
    Ok(DrillReport {
        id: manifest.id.clone(),
        ok: checks.iter().all(|c| c.ok),
        checks,
        etcd_version,
        restore_tool: format!("{} {}", tool.path.display(), tool.version_string()),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

struct OfflineFacts {
    live_keys: u64,
    hash: u32,
    compact_revision: i64,
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
    })
}

async fn check_member(
    etcd: &mut SandboxEtcd,
    settings: &DrillSettings,
    client_url: &str,
    pki: &SandboxPki,
    manifest: &Manifest,
    offline: &OfflineFacts,
) -> Result<(Vec<DrillCheck>, String), DrillError> {
    let rev = manifest.revision;
    let etcd_settings = EtcdSettings {
        endpoints: vec![client_url.to_string()],
        cacert: Some(pki.ca.clone()),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
        user: None,
        password: None,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(30),
        stall_timeout: Duration::from_secs(60),
    };
    let (mut source, status) = etcd.wait_ready(&etcd_settings, settings).await?;
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

/// A throwaway etcd on loopback, killed when dropped.
struct SandboxEtcd {
    child: tokio::process::Child,
    log: PathBuf,
    etcd: PathBuf,
}

impl SandboxEtcd {
    fn start(
        settings: &DrillSettings,
        sandbox: &Path,
        data_dir: &Path,
        member: &MemberSpec,
        client_url: &str,
        pki: &SandboxPki,
    ) -> Result<SandboxEtcd, DrillError> {
        let log = sandbox.join("etcd.log");
        let sandbox_err = |source| DrillError::Sandbox {
            path: sandbox.to_path_buf(),
            source,
        };
        let out = std::fs::File::create(&log).map_err(sandbox_err)?;
        let err = out.try_clone().map_err(sandbox_err)?;
        let child = tokio::process::Command::new(&settings.etcd)
            .arg(format!("--name={}", member.name))
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!(
                "--listen-peer-urls={}",
                member.initial_advertise_peer_urls
            ))
            .arg(format!(
                "--initial-advertise-peer-urls={}",
                member.initial_advertise_peer_urls
            ))
            .arg(format!("--initial-cluster={}", member.initial_cluster))
            .arg("--client-cert-auth")
            .arg(format!("--trusted-ca-file={}", pki.ca.display()))
            .arg(format!("--cert-file={}", pki.server_cert.display()))
            .arg(format!("--key-file={}", pki.server_key.display()))
            .arg("--peer-client-cert-auth")
            .arg(format!("--peer-trusted-ca-file={}", pki.ca.display()))
            .arg(format!("--peer-cert-file={}", pki.server_cert.display()))
            .arg(format!("--peer-key-file={}", pki.server_key.display()))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| DrillError::EtcdStart {
                etcd: settings.etcd.clone(),
                waited: Duration::ZERO,
                detail: format!("cannot run it: {e}; pass --etcd PATH"),
            })?;
        Ok(SandboxEtcd {
            child,
            log,
            etcd: settings.etcd.clone(),
        })
    }

    async fn wait_ready(
        &mut self,
        etcd_settings: &EtcdSettings,
        settings: &DrillSettings,
    ) -> Result<(EtcdSource, crate::etcd::MemberStatus), DrillError> {
        let deadline = Instant::now() + settings.start_timeout;
        let endpoint = etcd_settings.endpoints[0].clone();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.start_error(settings, format!("it exited ({status})")));
            }
            if let Ok(mut source) = EtcdSource::connect(etcd_settings, &endpoint).await {
                if let Ok(s) = source.status().await {
                    if s.leader != 0 {
                        return Ok((source, s));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(self.start_error(settings, "no answer with a leader".into()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn start_error(&self, settings: &DrillSettings, what: String) -> DrillError {
        let tail = std::fs::read_to_string(&self.log)
            .ok()
            .and_then(|l| l.lines().last().map(str::to_string))
            .unwrap_or_default();
        DrillError::EtcdStart {
            etcd: self.etcd.clone(),
            waited: settings.start_timeout,
            detail: format!("{what}; last log line: {tail}"),
        }
    }

    async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn free_port() -> Result<u16, DrillError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| DrillError::Sandbox {
            path: PathBuf::from("127.0.0.1 (no free port)"),
            source,
        })
}
