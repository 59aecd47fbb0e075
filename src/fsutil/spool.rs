//! The spool: a private plain copy of a snapshot in the work dir, for the checks that need
//! random access (the bbolt walk, the offline HashKV). 0600, flock'ed while in use so a
//! killed run's copy is recognised and removed by the next run, removed on drop.

use std::fs::File;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

const SPOOL_PREFIX: &str = "lifeboat-spool-";
const ENOSPC: i32 = 28;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("work dir {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("work dir {path} ran out of space while writing the spool copy: free space or move `backup.work_dir` (--work-dir)")]
    Full { path: PathBuf },
    #[error("the work dir {path} has {free} bytes free but the database is {needed} bytes: free space or point `backup.work_dir` (--work-dir) elsewhere")]
    TooSmall {
        path: PathBuf,
        free: u64,
        needed: u64,
    },
}

pub struct Spool {
    file: File,
    temp: tempfile::TempPath,
}

impl Spool {
    /// Creates the spool after checking the work dir has room for `expected` bytes, and
    /// removes spool files that killed runs left behind.
    ///
    /// # Errors
    /// The work dir cannot be created or is too small; the file cannot be created or locked.
    pub fn create(work_dir: &Path, expected: u64) -> Result<Spool, SpoolError> {
        let io_err = |what: &'static str| {
            move |source| SpoolError::Io {
                path: work_dir.to_path_buf(),
                what,
                source,
            }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(work_dir)
            .map_err(io_err("cannot create it"))?;
        remove_stale_spools(work_dir);
        let free = super::free_bytes(work_dir).map_err(io_err("cannot stat it"))?;
        // The snapshot is the database plus its trailer; leave 1 MiB of slack.
        let needed = expected + (1 << 20);
        if free < needed {
            return Err(SpoolError::TooSmall {
                path: work_dir.to_path_buf(),
                free,
                needed,
            });
        }
        let named = tempfile::Builder::new()
            .prefix(SPOOL_PREFIX)
            .tempfile_in(work_dir)
            .map_err(io_err("cannot create a spool file"))?;
        let (file, temp) = named.into_parts();
        file.try_lock()
            .map_err(|e| io_err("cannot lock the spool file")(io::Error::other(e)))?;
        Ok(Spool { file, temp })
    }

    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// Another handle on the spool file, for the thread that writes it.
    ///
    /// # Errors
    /// The handle cannot be duplicated.
    pub fn file(&self) -> Result<File, SpoolError> {
        self.file.try_clone().map_err(|e| self.error(e))
    }

    /// A write error on the spool, named: a full disk says so.
    pub fn error(&self, source: io::Error) -> SpoolError {
        let path = super::parent_of(&self.temp);
        if source.raw_os_error() == Some(ENOSPC) {
            SpoolError::Full { path }
        } else {
            SpoolError::Io {
                path,
                what: "writing the spool copy failed",
                source,
            }
        }
    }
}

fn remove_stale_spools(work_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(SPOOL_PREFIX)
        {
            let _ = super::remove_if_unlocked(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_is_private_locked_and_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(dir.path(), 10).unwrap();
        let path = spool.path().to_path_buf();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            !super::super::remove_if_unlocked(&path).unwrap(),
            "locked while in use"
        );
        drop(spool);
        assert!(!path.exists());
    }

    #[test]
    fn a_work_dir_without_room_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = Spool::create(dir.path(), u64::MAX / 2).err().unwrap();
        assert!(matches!(err, SpoolError::TooSmall { .. }), "{err}");
        assert!(err.to_string().contains("backup.work_dir"), "{err}");
    }
}
