//! Small filesystem helpers for the never-lose-data rules: durable renames and writes, private
//! folders, free space, lock-aware removal.

mod journal;

pub use journal::{JournalError, JournalFile, RunLock};

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Flushes a folder's entries (a rename or create inside it) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The folder holding `path` (`.` for a bare name).
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Renames and makes the rename durable in both folders.
pub fn durable_rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    sync_dir(&parent_of(to))?;
    let from_dir = parent_of(from);
    if from_dir != parent_of(to) {
        sync_dir(&from_dir)?;
    }
    Ok(())
}

/// Writes `bytes` to `path` as `.part`, fsynced, renamed, folder fsynced; mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut part = path.as_os_str().to_os_string();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut f = create_private_file(&part)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&part, path)?;
    sync_dir(&parent_of(path))
}

/// Creates a new file, mode 0600, that is really new: `O_CREAT|O_EXCL|O_NOFOLLOW`, so a
/// symlink planted at `path` (or another user's file there) is never followed, truncated or
/// reused with its owner and mode. A leftover regular file of ours (an interrupted run's
/// `.part`) is removed first; anything else at `path` is an error naming it.
///
/// # Errors
/// `AlreadyExists` when something not ours is there; other I/O errors.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::symlink_metadata(path)?;
            let ours =
                meta.file_type().is_file() && meta.uid() == rustix::process::geteuid().as_raw();
            if !ours {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a file of this user (a symlink or another user's file?): remove it or write elsewhere",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
            open()
        }
        other => other,
    }
}

/// Creates a folder (and its parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Bytes an unprivileged writer can still use on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Removes a file that writers flock while in use (`.part` objects) unless a
/// live writer holds its lock; true when removed (or already gone).
pub fn remove_if_unlocked(part: &Path) -> io::Result<bool> {
    let file = match File::open(part) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    match file.try_lock() {
        Ok(()) => {
            std::fs::remove_file(part)?;
            Ok(true)
        }
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `snapshot get -o FILE` opened an existing `FILE.part` with create+truncate,
    /// following a symlink planted there.
    #[test]
    fn a_private_file_never_follows_a_symlink_and_replaces_only_our_leftovers() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let part = dir.path().join("out.db.part");
        std::os::unix::fs::symlink(&victim, &part).unwrap();
        let err = create_private_file(&part).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert!(err.to_string().contains("out.db.part"), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

        std::fs::remove_file(&part).unwrap();
        std::fs::write(&part, b"leftover of an interrupted run").unwrap();
        std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut f = create_private_file(&part).unwrap();
        f.write_all(b"new").unwrap();
        assert_eq!(std::fs::read(&part).unwrap(), b"new");
        let mode = std::fs::metadata(&part).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
