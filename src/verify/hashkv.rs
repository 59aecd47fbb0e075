//! HashKV computed offline from a snapshot file, exactly as a member computes `HashKV(rev)`.
//!
//! The member hashes bucket `key`: CRC-32C over the bucket name, then every (k, v) with
//! `main ≤ rev`, skipping entries at or below its compaction point unless they are what a
//! compaction at `rev` would keep (the newest revision of a user key at `rev`, when that is not
//! a tombstone). Equal hashes prove the snapshot holds the same MVCC history as the member.
//!
//! Memory: when the compaction point is 0 nothing is skipped and the walk keeps no state. When
//! it is not, one 24-byte record per distinct user key (keyed by a 64-bit hash of the key) tells
//! which revisions are kept — a few MiB for a large Kubernetes cluster.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

use super::status::{Revision, KEY_BUCKET};
use crate::bbolt::{BoltError, Db, Entry};

/// The newest revision of one user key at the hashed revision.
#[derive(Clone, Copy)]
struct Newest {
    rev: Revision,
    tombstone: bool,
}

/// Computes the member-equivalent `HashKV(rev)` of a snapshot file, for a member whose
/// compaction point is `compact_rev`.
///
/// # Errors
/// Read or integrity errors; an entry whose value is not an `mvccpb.KeyValue`.
pub fn hash_kv(path: &Path, rev: i64, compact_rev: i64) -> Result<u32, BoltError> {
    let db = Db::open(path)?;
    let newest = if compact_rev > 0 {
        Some(newest_revisions(&db, rev)?)
    } else {
        None
    };
    // `len(keep) > 0` in etcd: with no live key at `rev`, nothing is skipped.
    let keep_is_empty = newest
        .as_ref()
        .is_none_or(|m| m.values().all(|n| n.tombstone));
    let mut crc = crc32c::crc32c(KEY_BUCKET);
    for_each_revision(&db, rev, |key, value, r| {
        if r.main <= compact_rev && !keep_is_empty {
            let user_key = user_key_hash(path, value)?;
            let kept = newest
                .as_ref()
                .and_then(|m| m.get(&user_key))
                .is_some_and(|n| n.rev == r && !n.tombstone);
            if !kept {
                return Ok(());
            }
        }
        crc = crc32c::crc32c_append(crc, key);
        crc = crc32c::crc32c_append(crc, value);
        Ok(())
    })?;
    Ok(crc)
}

/// How many keys exist at `rev` (what `etcdctl get "" --prefix --count-only --rev` counts):
/// user keys whose newest revision at `rev` is not a deletion. Drills compare it with a
/// restored etcd's own count.
///
/// # Errors
/// Read or integrity errors; an entry whose value is not an `mvccpb.KeyValue`.
pub fn live_keys(path: &Path, rev: i64) -> Result<u64, BoltError> {
    let db = Db::open(path)?;
    let newest = newest_revisions(&db, rev)?;
    Ok(newest.values().filter(|n| !n.tombstone).count() as u64)
}

fn newest_revisions(db: &Db, rev: i64) -> Result<HashMap<u64, Newest>, BoltError> {
    let mut newest = HashMap::new();
    for_each_revision(db, rev, |key, value, r| {
        let tombstone = Revision::is_tombstone(key);
        newest.insert(
            user_key_hash(db.path(), value)?,
            Newest { rev: r, tombstone },
        );
        Ok(())
    })?;
    Ok(newest)
}

/// Visits bucket `key` entries with `main ≤ rev`, in revision order.
fn for_each_revision(
    db: &Db,
    rev: i64,
    mut f: impl FnMut(&[u8], &[u8], Revision) -> Result<(), BoltError>,
) -> Result<(), BoltError> {
    let mut walker = db.rewalker();
    let Some(bucket) = walker.bucket(KEY_BUCKET)? else {
        return Ok(());
    };
    walker.for_each::<BoltError>(&bucket, |entry| {
        let Entry::KeyValue { key, value } = entry else {
            return Ok(());
        };
        let r = Revision::parse(key).ok_or_else(|| not_a_revision(db.path()))?;
        if r.main <= rev {
            f(key, value, r)?;
        }
        Ok(())
    })
}

fn not_a_revision(path: &Path) -> BoltError {
    BoltError::Corrupt {
        path: path.to_path_buf(),
        page: 0,
        reason: "bucket `key` holds a key that is not a revision".into(),
    }
}

fn user_key_hash(path: &Path, kv: &[u8]) -> Result<u64, BoltError> {
    let key = user_key(kv).ok_or_else(|| BoltError::Corrupt {
        path: path.to_path_buf(),
        page: 0,
        reason: "a value in bucket `key` is not an mvccpb.KeyValue".into(),
    })?;
    Ok(hash_user_key(key))
}

/// The 64-bit identity of a user key that both HashKV computations track newest revisions by.
pub(super) fn hash_user_key(key: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// Field 1 (`key`) of a protobuf `mvccpb.KeyValue`.
pub(super) fn user_key(mut msg: &[u8]) -> Option<&[u8]> {
    while !msg.is_empty() {
        let tag = read_varint(&mut msg)?;
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => {
                read_varint(&mut msg)?;
            }
            1 => msg = msg.get(8..)?,
            2 => {
                let len = usize::try_from(read_varint(&mut msg)?).ok()?;
                let (body, rest) = (msg.get(..len)?, msg.get(len..)?);
                if field == 1 {
                    return Some(body);
                }
                msg = rest;
            }
            5 => msg = msg.get(4..)?,
            _ => return None,
        }
    }
    None
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_key_is_read_from_a_keyvalue_message() {
        // key="/a", create_revision=2, mod_revision=3, version=1, value="xyz"
        let msg = [
            0x0a, 0x02, b'/', b'a', 0x10, 0x02, 0x18, 0x03, 0x20, 0x01, 0x2a, 0x03, b'x', b'y',
            b'z',
        ];
        assert_eq!(user_key(&msg), Some(&b"/a"[..]));
    }

    #[test]
    fn user_key_after_other_fields_and_garbage_is_handled() {
        assert_eq!(user_key(&[0x10, 0x05, 0x0a, 0x01, b'k']), Some(&b"k"[..]));
        assert_eq!(user_key(&[0x0a, 0x09, b'k']), None);
        assert_eq!(user_key(&[0xff]), None);
    }
}
