//! Storage backends behind one small, object-safe trait.
//!
//! Objects are written whole or not at all: `put` consumes a stream and only makes the object
//! visible once every byte arrived and the producer ended the stream cleanly; an `Err` item
//! aborts the write and leaves nothing behind. Objects are never overwritten: a second `put`
//! to the same key fails with `AlreadyExists` (the manifest relies on it, as S3's
//! `If-None-Match: *` does later).

mod local;
mod s3;

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::Stream;

pub use local::LocalStore;
pub use s3::{LockMode, ObjectLock, S3Settings, S3Store, Sse, MIN_PART_SIZE};

/// A stream of object bytes. An `Err` item means "the producer failed: abort".
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{location}: {key} already exists; objects are never overwritten")]
    AlreadyExists { location: String, key: String },
    #[error("{location}: {key} does not exist")]
    NotFound { location: String, key: String },
    #[error("{location}: writing {key} failed: {source}")]
    Write {
        location: String,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("{location}: reading {key} failed: {source}")]
    Read {
        location: String,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("{location}: {what} failed: {source}")]
    Other {
        location: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{location}: {key} is not a valid object name (letters, digits, `.`, `-`, `_` only)")]
    BadKey { location: String, key: String },
}

#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// An S3 Object Lock on an object: until it ends, nobody (compliance) or nobody without the
/// bypass permission (governance) can delete or overwrite it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// `governance`, `compliance`, or `legal hold`.
    pub mode: String,
    /// When the retention ends; `None` for a legal hold, which ends only when lifted.
    pub until: Option<SystemTime>,
}

impl Lock {
    /// Whether the lock still holds at `now`.
    pub fn holds_at(&self, now: SystemTime) -> bool {
        self.until.is_none_or(|until| until > now)
    }
}

#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Where this store writes, for messages (`/var/backups/etcd`, `s3://bucket/prefix`).
    fn location(&self) -> String;

    /// Writes `body` to a new object `key`; returns its size.
    async fn put(&self, key: &str, body: ByteStream) -> Result<u64, StoreError>;

    /// Writes a small object, replacing any earlier one: only for the few objects that are
    /// state rather than history (a journal chain's head), never for a backup or a segment.
    async fn replace(&self, key: &str, body: Bytes) -> Result<(), StoreError>;

    /// Opens an object for reading.
    async fn get(&self, key: &str) -> Result<ByteStream, StoreError>;

    /// Every complete object whose key starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Removes an object (every version of it, where the store keeps versions); removing a
    /// missing one is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// The Object Lock on an object, if it has one (expired or not); `None` for a missing
    /// object and for stores without locks.
    async fn lock_of(&self, key: &str) -> Result<Option<Lock>, StoreError> {
        let _ = key;
        Ok(None)
    }

    /// Keys under `prefix` hidden behind a delete marker while an older version of them is
    /// still locked (#21): someone hid what the pruner would never have deleted. Empty for
    /// stores without versions, and where versions cannot be listed (said in the log).
    async fn hidden_locked(&self, prefix: &str) -> Vec<String> {
        let _ = prefix;
        Vec::new()
    }

    /// Removes what interrupted writes left behind (`.part` files, stale multipart uploads)
    /// that no live writer owns; returns what it removed.
    async fn clean_incomplete(&self) -> Result<Vec<String>, StoreError>;
}

/// Where backups are, as the user wrote it: a folder, or `s3://BUCKET/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

/// Why a destination is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DestError {
    #[error("`{0}` names no bucket (s3://BUCKET/PREFIX)")]
    NoBucket(String),
    #[error("`{0}`: use a folder path or s3://BUCKET/PREFIX")]
    Scheme(String),
    #[error("is empty")]
    Empty,
}

/// Parses a destination: a path (or `file://path`), or `s3://BUCKET[/PREFIX]`.
///
/// # Errors
/// Empty, no bucket, or a scheme this build does not support (the message says which).
pub fn parse_dest(raw: &str) -> Result<Dest, DestError> {
    if let Some(rest) = raw.strip_prefix("file://") {
        return Ok(Dest::Local(PathBuf::from(rest)));
    }
    if let Some(rest) = raw.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(DestError::NoBucket(raw.into()));
        }
        return Ok(Dest::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        });
    }
    if raw.contains("://") {
        return Err(DestError::Scheme(raw.into()));
    }
    if raw.is_empty() {
        return Err(DestError::Empty);
    }
    Ok(Dest::Local(PathBuf::from(raw)))
}

/// A destination with everything needed to open its store.
#[derive(Debug, Clone)]
pub enum Spec {
    Local(PathBuf),
    S3(Box<S3Settings>),
}

impl Spec {
    /// A folder on this node (it dies with the node: the upgrade gate refuses it by default).
    pub fn is_local(&self) -> bool {
        matches!(self, Spec::Local(_))
    }
}

/// Opens the store a destination names.
///
/// # Errors
/// The folder cannot be created, or the S3 client cannot be configured.
pub async fn open(spec: &Spec) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match spec {
        Spec::Local(path) => Arc::new(LocalStore::open(path)?),
        Spec::S3(settings) => Arc::new(S3Store::open((**settings).clone()).await?),
    })
}

/// A `ByteStream` holding one buffer: for small objects such as manifests.
pub fn bytes_stream(data: Bytes) -> ByteStream {
    Box::pin(futures::stream::once(async move { Ok(data) }))
}

/// Reads a whole (small) object into memory; refuses more than `limit` bytes.
///
/// # Errors
/// Store errors, or `Read` when the object is larger than `limit`.
pub async fn get_small(store: &dyn Store, key: &str, limit: usize) -> Result<Vec<u8>, StoreError> {
    use futures::StreamExt;
    let mut stream = store.get(key).await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| StoreError::Read {
            location: store.location(),
            key: key.to_string(),
            source,
        })?;
        if out.len() + chunk.len() > limit {
            return Err(StoreError::Read {
                location: store.location(),
                key: key.to_string(),
                source: io::Error::other(format!("larger than {limit} bytes")),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Keys are plain names: no path separators or traversal, so a key can never escape the store.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_holds_until_its_end_and_a_legal_hold_until_lifted() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        let until = |secs| Lock {
            mode: "compliance".into(),
            until: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)),
        };
        assert!(until(1001).holds_at(t));
        assert!(!until(1000).holds_at(t), "ends at its date");
        let hold = Lock {
            mode: "legal hold".into(),
            until: None,
        };
        assert!(hold.holds_at(t + std::time::Duration::from_secs(1 << 30)));
    }

    #[test]
    fn destinations_parse() {
        assert_eq!(
            parse_dest("s3://bucket/some/prefix/").unwrap(),
            Dest::S3 {
                bucket: "bucket".into(),
                prefix: "some/prefix".into()
            }
        );
        assert_eq!(
            parse_dest("s3://bucket").unwrap(),
            Dest::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            }
        );
        assert!(parse_dest("s3:///x").is_err());
        assert!(parse_dest("gs://x").is_err());
        assert!(parse_dest("").is_err());
        assert_eq!(
            parse_dest("/backups").unwrap(),
            Dest::Local("/backups".into())
        );
        assert_eq!(
            parse_dest("file:///backups").unwrap(),
            Dest::Local("/backups".into())
        );
    }
}
