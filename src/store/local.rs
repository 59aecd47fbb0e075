//! A local folder (or a mounted NFS share) as a store.
//!
//! Writes go to `<key>.part` (0600, created exclusively and flock'ed while written), are
//! fsynced, hard-linked to `<key>` (which fails if it exists: no overwrite, no race), the
//! `.part` name removed, and the folder fsynced. A `.part` file nobody holds a lock on is a
//! leftover of a killed writer and is removed by `clean_incomplete`.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{valid_key, ByteStream, ObjectInfo, Store, StoreError};

const PART_SUFFIX: &str = ".part";
const READ_CHUNK: usize = 256 * 1024;
/// How long a writer waits for another that holds the same object's `.part`.
const WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Opens (and creates, mode 0700) the folder.
    ///
    /// # Errors
    /// The folder cannot be created.
    pub fn open(root: &Path) -> Result<LocalStore, StoreError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|source| StoreError::Other {
                location: root.display().to_string(),
                what: "creating the backup folder".into(),
                source,
            })?;
        Ok(LocalStore {
            root: root.to_path_buf(),
        })
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        if !valid_key(key) {
            return Err(StoreError::BadKey {
                location: self.location(),
                key: key.to_string(),
            });
        }
        Ok(self.root.join(key))
    }

    fn write_err(&self, key: &str) -> impl Fn(io::Error) -> StoreError + '_ {
        let key = key.to_string();
        move |source| StoreError::Write {
            location: self.location(),
            key: key.clone(),
            source,
        }
    }

    /// Creates `<key>.part` exclusively, replacing a leftover that no writer holds. While
    /// another writer holds it, waits for that writer to finish (up to [`WRITER_WAIT`]): two
    /// nodes creating the same object at once is normal (a cluster restore's completion), and
    /// the one that comes second must then see the object there, as a conditional put on S3
    /// does, not fail.
    async fn create_part(&self, part: &Path, key: &str) -> Result<File, StoreError> {
        let deadline = std::time::Instant::now() + WRITER_WAIT;
        loop {
            match self.try_create_part(part, key)? {
                Some(file) => return Ok(file),
                None if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                None => {
                    return Err(self.write_err(key)(io::Error::other(
                        "another lifeboat process has been writing this object for 30 s: is one stuck? remove its .part file once it is gone",
                    )))
                }
            }
        }
    }

    /// `None`: another writer holds the `.part` now.
    fn try_create_part(&self, part: &Path, key: &str) -> Result<Option<File>, StoreError> {
        for _ in 0..2 {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(part)
            {
                Ok(file) => {
                    file.try_lock().map_err(|e| {
                        self.write_err(key)(io::Error::other(format!("cannot lock: {e}")))
                    })?;
                    return Ok(Some(file));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !crate::fsutil::remove_if_unlocked(part).map_err(self.write_err(key))? {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(self.write_err(key)(e)),
            }
        }
        Err(self.write_err(key)(io::Error::other(
            "could not replace a leftover .part file",
        )))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.root)?.sync_all()
    }
}

#[async_trait::async_trait]
impl Store for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn put(&self, key: &str, mut body: ByteStream) -> Result<u64, StoreError> {
        let target = self.path_of(key)?;
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            return Err(StoreError::AlreadyExists {
                location: self.location(),
                key: key.to_string(),
            });
        }
        let part = self.root.join(format!("{key}{PART_SUFFIX}"));
        let std_file = self.create_part(&part, key).await?;
        let mut file = tokio::fs::File::from_std(std_file);
        let mut written = 0u64;
        let result: io::Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                file.write_all(&chunk).await?;
                written += chunk.len() as u64;
            }
            file.flush().await?;
            file.sync_all().await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            drop(file);
            let _ = std::fs::remove_file(&part);
            return Err(self.write_err(key)(e));
        }
        let linked = std::fs::hard_link(&part, &target);
        drop(file);
        let _ = std::fs::remove_file(&part);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StoreError::AlreadyExists {
                    location: self.location(),
                    key: key.to_string(),
                })
            }
            Err(e) => return Err(self.write_err(key)(e)),
        }
        self.sync_dir().map_err(self.write_err(key))?;
        Ok(written)
    }

    async fn replace(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let target = self.path_of(key)?;
        let part = self.root.join(format!("{key}{PART_SUFFIX}"));
        let mut file = self.create_part(&part, key).await?;
        let written = io::Write::write_all(&mut file, &body)
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&part, &target));
        drop(file);
        if let Err(e) = written {
            let _ = std::fs::remove_file(&part);
            return Err(self.write_err(key)(e));
        }
        self.sync_dir().map_err(self.write_err(key))
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StoreError> {
        let path = self.path_of(key)?;
        let file = tokio::fs::File::open(&path).await.map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                StoreError::NotFound {
                    location: self.location(),
                    key: key.to_string(),
                }
            } else {
                StoreError::Read {
                    location: self.location(),
                    key: key.to_string(),
                    source,
                }
            }
        })?;
        Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
            file, READ_CHUNK,
        )))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let other = |source| StoreError::Other {
            location: self.location(),
            what: "listing the backup folder".into(),
            source,
        };
        let mut out = Vec::new();
        let mut dir = tokio::fs::read_dir(&self.root).await.map_err(other)?;
        while let Some(entry) = dir.next_entry().await.map_err(other)? {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !name.starts_with(prefix) || name.ends_with(PART_SUFFIX) || !valid_key(&name) {
                continue;
            }
            let meta = match entry.metadata().await {
                Ok(m) if m.is_file() => m,
                _ => continue,
            };
            out.push(ObjectInfo {
                key: name,
                size: meta.len(),
                modified: meta.modified().ok(),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(StoreError::Other {
                    location: self.location(),
                    what: format!("deleting {key}"),
                    source,
                })
            }
        }
        self.sync_dir().map_err(|source| StoreError::Other {
            location: self.location(),
            what: format!("syncing the folder after deleting {key}"),
            source,
        })
    }

    async fn clean_incomplete(&self) -> Result<Vec<String>, StoreError> {
        let other = |source| StoreError::Other {
            location: self.location(),
            what: "cleaning leftover .part files".into(),
            source,
        };
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(other)? {
            let entry = entry.map_err(other)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(PART_SUFFIX)
                && crate::fsutil::remove_if_unlocked(&entry.path()).map_err(other)?
            {
                removed.push(name);
            }
        }
        if !removed.is_empty() {
            self.sync_dir().map_err(other)?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::bytes_stream;
    use bytes::Bytes;
    use std::os::unix::fs::PermissionsExt;

    fn failing_stream() -> ByteStream {
        Box::pin(futures::stream::iter(vec![
            Ok(Bytes::from_static(b"half")),
            Err(io::Error::other("producer died")),
        ]))
    }

    /// Two nodes creating the same object at once (a cluster restore's completion): the one
    /// that comes second waits for the first and sees the object there.
    #[tokio::test]
    async fn a_put_while_another_writer_holds_the_object_waits_and_sees_it_there() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let part = dir.path().join("c.json.part");
        let other = File::create(&part).unwrap();
        other.lock().unwrap();
        let root = dir.path().to_path_buf();
        let finisher = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            std::fs::write(root.join("c.json"), b"first").unwrap();
            std::fs::remove_file(root.join("c.json.part")).unwrap();
            drop(other);
        });
        let second = store
            .put("c.json", bytes_stream(Bytes::from_static(b"second")))
            .await;
        finisher.await.unwrap();
        assert!(
            matches!(second, Err(StoreError::AlreadyExists { .. })),
            "{second:?}"
        );
        assert_eq!(std::fs::read(dir.path().join("c.json")).unwrap(), b"first");
    }

    #[tokio::test]
    async fn put_is_private_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("backups");
        let store = LocalStore::open(&root).unwrap();
        assert_eq!(
            std::fs::metadata(&root).unwrap().permissions().mode() & 0o777,
            0o700
        );
        store
            .put("a.obj", bytes_stream(Bytes::from_static(b"one")))
            .await
            .unwrap();
        let mode = std::fs::metadata(root.join("a.obj"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = store
            .put("a.obj", bytes_stream(Bytes::from_static(b"two")))
            .await;
        assert!(matches!(again, Err(StoreError::AlreadyExists { .. })));
        assert_eq!(std::fs::read(root.join("a.obj")).unwrap(), b"one");
    }

    #[tokio::test]
    async fn an_aborted_stream_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let err = store.put("b.obj", failing_stream()).await.unwrap_err();
        assert!(err.to_string().contains("producer died"), "{err}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[tokio::test]
    async fn leftover_parts_are_cleaned_but_locked_ones_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("dead.obj.part"), b"x").unwrap();
        std::fs::write(dir.path().join("live.obj.part"), b"y").unwrap();
        let live = File::open(dir.path().join("live.obj.part")).unwrap();
        live.try_lock().unwrap();
        let removed = store.clean_incomplete().await.unwrap();
        assert_eq!(removed, vec!["dead.obj.part".to_string()]);
        assert!(dir.path().join("live.obj.part").exists());
        assert!(
            store.list("").await.unwrap().is_empty(),
            ".part files are never listed"
        );
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        for key in ["../x", "a/b", ".hidden", ""] {
            let r = store.put(key, bytes_stream(Bytes::new())).await;
            assert!(matches!(r, Err(StoreError::BadKey { .. })), "{key}");
        }
    }
}
