//! `snapshot status`, computed natively: the same four numbers `etcdctl snapshot status` prints
//! for etcd 3.4 and 3.5, plus what the `meta` bucket says about the compaction point.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::membership::{MEMBERS_BUCKET, REMOVED_BUCKET};
use crate::bbolt::{BoltError, Db, Entry};

/// The fields and JSON names of `etcdctl snapshot status -w json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStatus {
    pub hash: u32,
    pub revision: i64,
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// Status plus the facts from the `meta` bucket that HashKV and the manifest need.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    pub status: SnapshotStatus,
    /// `consistent_index`: the raft index the database reflects.
    pub consistent_index: Option<u64>,
    /// The compaction point etcd would restore from this file: the scheduled compaction if one
    /// was recorded, else the finished one, else 0.
    pub compact_revision: i64,
    /// The revision a member started on this file reports: the last key's revision, not below
    /// the finished compaction (whose keys may all be gone) and not below 1 (an empty store
    /// starts there). This, not `status.revision`, is the snapshot's revision.
    pub restored_revision: i64,
    pub term: Option<u64>,
    /// The v3 store's membership (buckets `members` and `members_removed`).
    pub membership: super::Membership,
}

/// A 17-byte revision key (`main` BE, `_`, `sub` BE), plus a trailing `t` on tombstones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    /// etcd writes 17 bytes, or 18 ending in `t` for a deletion; any other length is damage
    /// (a key size bumped by a flipped bit would otherwise still parse, and its value be read
    /// from the wrong place).
    pub fn parse(key: &[u8]) -> Option<Revision> {
        let sized = key.len() == 17 || Revision::is_tombstone(key);
        if !sized || key[8] != b'_' {
            return None;
        }
        Some(Revision {
            main: i64::from_be_bytes(key[0..8].try_into().ok()?),
            sub: i64::from_be_bytes(key[9..17].try_into().ok()?),
        })
    }

    pub fn is_tombstone(key: &[u8]) -> bool {
        key.len() == 18 && key[17] == b't'
    }
}

pub const KEY_BUCKET: &[u8] = b"key";
pub(super) const META_BUCKET: &[u8] = b"meta";

/// Walks every bucket of the file once, as etcdctl does: CRC-32C (Castagnoli) over each
/// bucket name followed by each key and value of that bucket, in order.
///
/// # Errors
/// Any read or integrity error of the file, or a `key` bucket entry that is not a revision.
pub fn read_snapshot_info(path: &Path) -> Result<SnapshotInfo, BoltError> {
    let db = Db::open(path)?;
    let mut walker = db.walker();
    let mut crc = 0u32;
    let mut total_key = 0u64;
    let mut revision = 0i64;
    let mut meta = MetaFacts::default();
    let mut membership = super::Membership::default();
    walker.for_each_bucket::<BoltError>(|w, name, bucket| {
        crc = crc32c::crc32c_append(crc, name);
        let is_key_bucket = name == KEY_BUCKET;
        let is_meta_bucket = name == META_BUCKET;
        let (is_members, is_removed) = (name == MEMBERS_BUCKET, name == REMOVED_BUCKET);
        w.for_each::<BoltError>(&bucket, |entry| {
            // A nested bucket counts like a key with an empty value, as in bbolt's ForEach.
            let (k, v) = match entry {
                Entry::KeyValue { key, value } => (key, value),
                Entry::Bucket { name } => (name, &[][..]),
            };
            crc = crc32c::crc32c_append(crc, k);
            crc = crc32c::crc32c_append(crc, v);
            total_key += 1;
            if is_key_bucket {
                revision = Revision::parse(k)
                    .ok_or_else(|| BoltError::Corrupt {
                        path: path.to_path_buf(),
                        page: 0,
                        reason: format!(
                            "bucket `key` holds a key that is not a revision ({} bytes)",
                            k.len()
                        ),
                    })?
                    .main;
            } else if is_meta_bucket {
                meta.record(k, v);
            } else if is_members {
                membership.record_member(k, v);
            } else if is_removed {
                membership.record_removed(k);
            }
            Ok(())
        })
    })?;
    Ok(SnapshotInfo {
        status: SnapshotStatus {
            hash: crc,
            revision,
            total_key,
            total_size: db.high_water_size(),
        },
        consistent_index: meta.consistent_index,
        compact_revision: meta.compact_revision(),
        restored_revision: restored_revision(revision, meta.finished_compact),
        term: meta.term,
        membership,
    })
}

/// etcd's `restore`: the current revision starts at 1, follows the keys, and is raised to the
/// finished compaction point (a compaction at the head can leave bucket `key` without a key at
/// the current revision). A scheduled compaction is resumed, not counted.
pub(super) fn restored_revision(last_key: i64, finished_compact: Option<i64>) -> i64 {
    last_key.max(finished_compact.unwrap_or(0)).max(1)
}

#[derive(Default)]
pub(super) struct MetaFacts {
    pub(super) consistent_index: Option<u64>,
    pub(super) term: Option<u64>,
    scheduled_compact: Option<i64>,
    pub(super) finished_compact: Option<i64>,
}

impl MetaFacts {
    pub(super) fn record(&mut self, key: &[u8], value: &[u8]) {
        let be_u64 = |v: &[u8]| v.try_into().ok().map(u64::from_be_bytes);
        match key {
            b"consistent_index" => self.consistent_index = be_u64(value),
            b"term" => self.term = be_u64(value),
            b"scheduledCompactRev" => {
                self.scheduled_compact = Revision::parse(value).map(|r| r.main)
            }
            b"finishedCompactRev" => self.finished_compact = Revision::parse(value).map(|r| r.main),
            _ => {}
        }
    }

    /// etcd's restore sets the compaction point from the finished compaction, then resumes a
    /// scheduled one: the later of the two is what a member started on this file reports.
    pub(super) fn compact_revision(&self) -> i64 {
        self.scheduled_compact
            .unwrap_or(0)
            .max(self.finished_compact.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restored_revision_is_never_below_one_nor_the_finished_compaction() {
        assert_eq!(restored_revision(0, None), 1);
        assert_eq!(restored_revision(7, None), 7);
        assert_eq!(restored_revision(5, Some(9)), 9);
        assert_eq!(restored_revision(12, Some(9)), 12);
    }

    #[test]
    fn revision_keys_parse_and_tombstones_are_recognised() {
        let mut k = Vec::new();
        k.extend_from_slice(&5i64.to_be_bytes());
        k.push(b'_');
        k.extend_from_slice(&2i64.to_be_bytes());
        assert_eq!(Revision::parse(&k), Some(Revision { main: 5, sub: 2 }));
        assert!(!Revision::is_tombstone(&k));
        k.push(b't');
        assert!(Revision::is_tombstone(&k));
        assert_eq!(Revision::parse(&k), Some(Revision { main: 5, sub: 2 }));
        assert_eq!(Revision::parse(b"short"), None);
        // A key size damaged upwards: the revision bytes still read, the key is not etcd's.
        let mut long = k[..17].to_vec();
        long.extend_from_slice(&[0; 63]);
        assert_eq!(Revision::parse(&long), None);
        k[17] = b'x';
        assert_eq!(Revision::parse(&k), None);
    }
}
