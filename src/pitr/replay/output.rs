//! The replay's result: the sandbox's snapshot at the target, written durably and checked by
//! our own reading (the revision etcd restores it to, its HashKV).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::PitrError;
use crate::etcd::{EtcdSource, SnapshotPiece};

pub(super) async fn write_snapshot(source: &mut EtcdSource, out: &Path) -> Result<(), PitrError> {
    let part = PathBuf::from(format!("{}.part", out.display()));
    let output = |source| PitrError::Output {
        path: part.clone(),
        source,
    };
    let mut file = crate::fsutil::create_private_file(&part).map_err(output)?;
    let mut stream = source.open_snapshot().await?;
    while let Some(piece) = stream.next().await? {
        let bytes = match piece {
            SnapshotPiece::Data(b) | SnapshotPiece::Trailer(b) => b,
        };
        file.write_all(&bytes).map_err(output)?;
    }
    file.sync_all().map_err(output)?;
    drop(file);
    crate::fsutil::durable_rename(&part, out).map_err(|source| PitrError::Output {
        path: out.to_path_buf(),
        source,
    })
}

/// Our own reading of the written file agrees with the sandbox: the revision etcd restores it
/// to is the target, and its HashKV at the target is the sandbox's.
pub(super) fn check_written(out: &Path, target: i64, hash: u32) -> Result<(), PitrError> {
    let bad = |detail: String| PitrError::Replay {
        rev: target,
        detail,
    };
    let info = crate::verify::read_snapshot_info(out)
        .map_err(|e| bad(format!("reading the written snapshot: {e}")))?;
    let restored = info.restored_revision;
    if restored != target {
        return Err(bad(format!(
            "the written snapshot restores to revision {restored}"
        )));
    }
    let offline = crate::verify::hash_kv(out, target, info.compact_revision)
        .map_err(|e| bad(format!("hashing the written snapshot: {e}")))?;
    if offline != hash {
        return Err(bad(format!(
            "the written snapshot hashes to {offline}, the sandbox to {hash}"
        )));
    }
    Ok(())
}
