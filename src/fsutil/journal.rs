//! A journal file for a command that changes a node step by step (restore, upgrade): the state
//! is rewritten atomically around every step, so a crash or `kill -9` anywhere leaves a file
//! that says exactly what to resume or undo; a run lock (flock, released by the kernel when the
//! process dies) keeps two runs of the same command on one node from interleaving; an ended
//! run's journal is archived, so a new run may start.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {path} is not a journal lifeboat can read: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("another lifeboat {command} is running on this node (it holds {lock}): wait for it, or check `ps`")]
    Locked {
        command: &'static str,
        lock: PathBuf,
    },
}

/// `<dir>/journal.json` while a run is unfinished, `<dir>/.lock` while one runs.
#[derive(Debug, Clone)]
pub struct JournalFile {
    dir: PathBuf,
    command: &'static str,
}

/// Held for the whole run; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl JournalFile {
    /// The journal of `command` (for messages: `restore`, `upgrade`) in `dir`.
    pub fn new(dir: PathBuf, command: &'static str) -> JournalFile {
        JournalFile { dir, command }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("journal.json")
    }

    /// The unfinished run's state, if there is one.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed (never silently ignored: it guards a node).
    pub fn load<T: DeserializeOwned>(&self) -> Result<Option<T>, JournalError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(JournalError::Io {
                    path,
                    what: "cannot read it",
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| JournalError::Unreadable { path, source })
    }

    /// Writes the state durably (`.part`, fsync, rename, folder fsync; 0600 in a 0700 folder).
    ///
    /// # Errors
    /// The folder cannot be written.
    pub fn save<T: Serialize>(&self, state: &T) -> Result<(), JournalError> {
        let path = self.path();
        let io = |what| {
            let path = path.clone();
            move |source| JournalError::Io { path, what, source }
        };
        super::create_private_dir(&self.dir).map_err(io("cannot create its folder"))?;
        let json = serde_json::to_vec_pretty(state)
            .map_err(|e| io("cannot serialise it")(std::io::Error::other(e)))?;
        super::write_atomic(&path, &json).map_err(io("cannot write it"))
    }

    /// Writes the final state and moves the journal to `to`, so a new run may start.
    ///
    /// # Errors
    /// The folder cannot be written.
    pub fn archive<T: Serialize>(&self, state: &T, to: &Path) -> Result<(), JournalError> {
        self.save(state)?;
        let io = |what| {
            move |source| JournalError::Io {
                path: to.to_path_buf(),
                what,
                source,
            }
        };
        super::create_private_dir(&super::parent_of(to)).map_err(io("cannot create its folder"))?;
        super::durable_rename(&self.path(), to).map_err(io("cannot archive the journal there"))
    }

    /// Removes the journal of a run that changed nothing.
    pub fn discard(&self) {
        let _ = std::fs::remove_file(self.path());
    }

    /// The run lock: refused while another run holds it.
    ///
    /// # Errors
    /// Another run holds it, or the folder cannot be created.
    pub fn lock(&self) -> Result<RunLock, JournalError> {
        let lock = self.dir.join(".lock");
        let io = |what| {
            let path = lock.clone();
            move |source| JournalError::Io { path, what, source }
        };
        super::create_private_dir(&self.dir).map_err(io("cannot create its folder"))?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(io("cannot open it"))?;
        file.try_lock().map_err(|_| JournalError::Locked {
            command: self.command,
            lock: lock.clone(),
        })?;
        Ok(RunLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct State {
        done: Vec<String>,
    }

    #[test]
    fn state_round_trips_and_is_archived() {
        let dir = tempfile::tempdir().unwrap();
        let j = JournalFile::new(dir.path().join("restore"), "restore");
        assert_eq!(j.load::<State>().unwrap(), None);
        let s = State {
            done: vec!["fetch".into()],
        };
        j.save(&s).unwrap();
        assert_eq!(j.load::<State>().unwrap(), Some(s));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(j.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let to = dir.path().join("restore/run-1/journal.json");
        j.archive(&State { done: vec![] }, &to).unwrap();
        assert!(to.exists() && !j.path().exists());
    }

    #[test]
    fn a_second_run_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let j = JournalFile::new(dir.path().to_path_buf(), "upgrade");
        let held = j.lock().unwrap();
        let err = j.lock().unwrap_err();
        assert!(matches!(err, JournalError::Locked { .. }));
        assert!(
            err.to_string().contains("another lifeboat upgrade"),
            "{err}"
        );
        drop(held);
        j.lock().unwrap();
    }

    #[test]
    fn an_unreadable_journal_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let j = JournalFile::new(dir.path().to_path_buf(), "restore");
        std::fs::write(j.path(), b"{not json").unwrap();
        assert!(matches!(
            j.load::<State>(),
            Err(JournalError::Unreadable { .. })
        ));
    }
}
