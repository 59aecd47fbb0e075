//! One object from the source to the target, its digest checked as it streams: the target's
//! write completes only when every byte arrived and the size and sha256 equal what the signed
//! manifest records; otherwise the stream ends in an error and the store leaves nothing behind.

use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::CopyError;
use crate::catalog::ObjectRef;
use crate::store::{bytes_stream, get_small, Store, StoreError};

/// How an object reached the target.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Written(u64),
    /// The target held it already, with the expected digest.
    Present,
}

/// Why an object was not copied.
#[derive(Debug)]
pub(super) enum Fail {
    /// It is not what its manifest says on the source: tampered or damaged there.
    Mismatch(String),
    /// The manifest names an object the source does not have.
    Missing,
    Store(CopyError),
}

impl From<CopyError> for Fail {
    fn from(e: CopyError) -> Fail {
        Fail::Store(e)
    }
}

/// What the wrapper around the source stream saw.
#[derive(Default)]
struct Seen {
    mismatch: Option<String>,
    source_failed: Option<io::Error>,
}

/// Copies `want` from `from` to `to`, checked; `present` says the target lists the key.
pub(super) async fn copy_object(
    from: &dyn Store,
    to: &dyn Store,
    want: &ObjectRef,
    present: bool,
) -> Result<Outcome, Fail> {
    if present {
        if matches(to, want).await? {
            return Ok(Outcome::Present);
        }
        // Ours by name, not by content (an interrupted or tampered copy): the source's
        // checked bytes replace it.
        tracing::warn!(key = %want.key, target = %to.location(), "the copy holds other bytes under this name: replaced by the checked original");
        to.delete(&want.key).await.map_err(CopyError::Target)?;
    }
    let stream = match from.get(&want.key).await {
        Ok(s) => s,
        Err(StoreError::NotFound { .. }) => return Err(Fail::Missing),
        Err(e) => return Err(CopyError::Source(e).into()),
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    match to.put(&want.key, checked(stream, want, seen.clone())).await {
        Ok(n) => Ok(Outcome::Written(n)),
        Err(e) => {
            let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
            if let Some(why) = seen.mismatch {
                return Err(Fail::Mismatch(why));
            }
            if let Some(source) = seen.source_failed {
                return Err(CopyError::Source(StoreError::Read {
                    location: from.location(),
                    key: want.key.clone(),
                    source,
                })
                .into());
            }
            if matches!(e, StoreError::AlreadyExists { .. }) && matches(to, want).await? {
                return Ok(Outcome::Present);
            }
            Err(CopyError::Target(e).into())
        }
    }
}

/// The source's bytes, passed on while their size stays within `want` and, at the end, only
/// if size and sha256 equal it; an error item (which aborts the target's write) otherwise.
fn checked(
    stream: crate::store::ByteStream,
    want: &ObjectRef,
    seen: Arc<Mutex<Seen>>,
) -> crate::store::ByteStream {
    let hasher = Arc::new(Mutex::new((Sha256::new(), 0u64)));
    let (h, s, limit) = (hasher.clone(), seen.clone(), want.size);
    let key = want.key.clone();
    let body = stream.map(move |chunk| {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let msg = e.to_string();
                s.lock().unwrap_or_else(|p| p.into_inner()).source_failed = Some(e);
                return Err(io::Error::other(msg));
            }
        };
        let mut g = h.lock().unwrap_or_else(|p| p.into_inner());
        g.0.update(&chunk);
        g.1 += chunk.len() as u64;
        if g.1 > limit {
            let why = format!(
                "{key} is larger than the {limit} bytes its signed manifest records (tampered or damaged)"
            );
            s.lock().unwrap_or_else(|p| p.into_inner()).mismatch = Some(why.clone());
            return Err(io::Error::other(why));
        }
        Ok(chunk)
    });
    let (want_sha, want_size, key) = (want.sha256.clone(), want.size, want.key.clone());
    let end = futures::stream::once(async move {
        let (hasher, size) = std::mem::take(&mut *hasher.lock().unwrap_or_else(|p| p.into_inner()));
        let sha = hex::encode(hasher.finalize());
        if size == want_size && sha == want_sha {
            return None;
        }
        let why = format!(
            "{key} does not have the size and sha256 its signed manifest records ({size} bytes, sha256 {sha}; the manifest says {want_size}, {want_sha}): tampered or damaged"
        );
        seen.lock().unwrap_or_else(|p| p.into_inner()).mismatch = Some(why.clone());
        Some(Err(io::Error::other(why)))
    })
    .filter_map(|x| async move { x });
    Box::pin(body.chain(end))
}

/// Whether the target's object has the digest and size `want` records.
async fn matches(to: &dyn Store, want: &ObjectRef) -> Result<bool, CopyError> {
    let mut stream = match to.get(&want.key).await {
        Ok(s) => s,
        Err(StoreError::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(CopyError::Target(e)),
    };
    let (mut h, mut size) = (Sha256::new(), 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| {
            CopyError::Target(StoreError::Read {
                location: to.location(),
                key: want.key.clone(),
                source,
            })
        })?;
        h.update(&chunk);
        size += chunk.len() as u64;
        if size > want.size {
            return Ok(false);
        }
    }
    Ok(size == want.size && hex::encode(h.finalize()) == want.sha256)
}

/// Writes a small object (a manifest, a signature, a mark) already checked, unless the
/// target has exactly these bytes; returns the bytes written (0: present).
pub(super) async fn put_small(
    to: &dyn Store,
    key: &str,
    bytes: &[u8],
    present: bool,
) -> Result<u64, CopyError> {
    if present {
        match get_small(to, key, bytes.len() + 1).await {
            Ok(there) if there == bytes => return Ok(0),
            Ok(_) | Err(StoreError::Read { .. }) => {
                tracing::warn!(key, target = %to.location(), "the copy holds other bytes under this name: replaced by the checked original");
                to.delete(key).await.map_err(CopyError::Target)?;
            }
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(CopyError::Target(e)),
        }
    }
    match to
        .put(key, bytes_stream(Bytes::copy_from_slice(bytes)))
        .await
    {
        Ok(n) => Ok(n),
        // Another copier wrote it just now: the same checked bytes, or the next pass sees.
        Err(StoreError::AlreadyExists { .. }) => Ok(0),
        Err(e) => Err(CopyError::Target(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    fn object(key: &str, bytes: &[u8]) -> ObjectRef {
        ObjectRef {
            key: key.into(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    #[tokio::test]
    async fn a_checked_copy_writes_only_what_matches_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let from = LocalStore::open(&dir.path().join("a")).unwrap();
        let to = LocalStore::open(&dir.path().join("b")).unwrap();
        from.put("good.db", bytes_stream(Bytes::from_static(b"hello")))
            .await
            .unwrap();
        from.put("bad.db", bytes_stream(Bytes::from_static(b"HELLO")))
            .await
            .unwrap();
        let good = object("good.db", b"hello");
        assert_eq!(
            copy_object(&from, &to, &good, false).await.unwrap(),
            Outcome::Written(5)
        );
        assert_eq!(
            copy_object(&from, &to, &good, true).await.unwrap(),
            Outcome::Present
        );
        let bad = object("bad.db", b"hello");
        match copy_object(&from, &to, &bad, false).await {
            Err(Fail::Mismatch(why)) => assert!(why.contains("bad.db"), "{why}"),
            other => panic!("expected a mismatch, got {other:?}"),
        }
        let longer = object("bad.db", b"HELL");
        assert!(matches!(
            copy_object(&from, &to, &longer, false).await,
            Err(Fail::Mismatch(_))
        ));
        let keys: Vec<String> = to
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(
            keys,
            ["good.db"],
            "nothing of a mismatch is left on the target"
        );
        assert!(matches!(
            copy_object(&from, &to, &object("gone.db", b"x"), false).await,
            Err(Fail::Missing)
        ));
    }
}
