//! The shadow's own folder, `<work_dir>/shadow`: its private etcd's data and what it last
//! proved there, so a restart goes on from where it was — when the data still hashes as it
//! did at that proof — instead of replaying from the newest base.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::etcd::LiveHashKv;
use crate::sandbox::{Sandbox, SandboxSettings};

/// The last checkpoint the shadow proved in its data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Proven {
    pub chain: String,
    /// The backup the data dir was restored from, and its revision (compactions at or below
    /// it are in it already).
    pub base_id: String,
    pub base_rev: i64,
    pub rev: i64,
    pub compact_rev: i64,
    pub hash: u32,
}

#[derive(Clone)]
pub(super) struct ShadowDir {
    pub path: PathBuf,
}

const PROVEN: &str = "proven.json";

impl ShadowDir {
    /// `<work_dir>/shadow`, created private.
    pub fn open(work_dir: &Path) -> std::io::Result<ShadowDir> {
        crate::fsutil::create_private_dir(work_dir)?;
        let path = work_dir.join("shadow");
        crate::fsutil::create_private_dir(&path)?;
        Ok(ShadowDir { path })
    }

    pub fn base_file(&self) -> PathBuf {
        self.path.join("base.db")
    }

    /// The size of the database its etcd left (0 when none).
    pub fn db_size(&self) -> u64 {
        let db = self
            .path
            .join("data")
            .join("member")
            .join("snap")
            .join("db");
        std::fs::metadata(db).map_or(0, |m| m.len())
    }

    /// What was last proven here, if anything readable.
    pub fn proven(&self) -> Option<Proven> {
        let bytes = std::fs::read(self.path.join(PROVEN)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Records a proof (atomically: a crash leaves the previous one).
    pub fn record(&self, p: &Proven) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(p).unwrap_or_default();
        crate::fsutil::write_atomic(&self.path.join(PROVEN), &text)
    }

    /// Drops the data dir and its proof: the next start is from a base.
    pub fn forget(&self) -> std::io::Result<()> {
        for name in [PROVEN, "base.db"] {
            match std::fs::remove_file(self.path.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        match std::fs::remove_dir_all(self.path.join("data")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Why the shadow's own data cannot be resumed from (it starts again from a base).
#[derive(Debug, thiserror::Error)]
pub(super) enum NotResumable {
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("its etcd is at revision {current}, before the proven {proven}")]
    Behind { current: i64, proven: i64 },
    #[error("its HashKV at revision {rev} is {got}, {proven} was proven")]
    OtherHash { rev: i64, got: u32, proven: u32 },
    #[error("it has compacted past the proven revision {0}")]
    Compacted(i64),
    #[error("hashing its etcd: {0}")]
    Etcd(#[from] crate::etcd::SourceError),
}

/// Starts the private etcd left in `dir` and checks that it still holds what was proven: at or
/// past that revision, hashing there as recorded. Its revision when it does; why not, else.
pub(super) async fn check_resumable(
    dir: &ShadowDir,
    p: &Proven,
    settings: &SandboxSettings,
    extra_args: &[String],
) -> Result<i64, NotResumable> {
    let mut sandbox = Sandbox::resume(&dir.path, settings, extra_args).await?;
    let current = sandbox.status.revision;
    let hashed = sandbox.source.hash_kv(p.rev).await;
    sandbox.stop().await;
    if current < p.rev {
        return Err(NotResumable::Behind {
            current,
            proven: p.rev,
        });
    }
    match hashed? {
        LiveHashKv::Hash {
            hash,
            compact_revision,
        } if hash == p.hash && compact_revision == p.compact_rev => Ok(current),
        LiveHashKv::Hash { hash, .. } => Err(NotResumable::OtherHash {
            rev: p.rev,
            got: hash,
            proven: p.hash,
        }),
        LiveHashKv::Compacted => Err(NotResumable::Compacted(p.rev)),
    }
}
