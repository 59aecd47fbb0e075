//! The checks of a snapshot computed while it streams by, with no copy on disk: etcdctl's
//! `snapshot status` and the member-equivalent `HashKV` from one pass over the bytes
//! (`bbolt::stream` summarises the pages; here they become etcd's numbers).
//!
//! HashKV needs, per entry at or below the member's compaction point, whether a compaction at
//! the hashed revision would keep it (the newest revision of its user key, when not a
//! deletion) — known only once every entry has passed. So those entries ("candidates") are
//! kept as (revision, user-key hash, CRC, length), 40 bytes each, one per key that survived the
//! last compaction; entries after the compaction point are always hashed and cost nothing.
//! The compaction point must be known before the stream starts: the backup asks the member
//! for it, and records the check as skipped when the member compacts during the backup.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

use super::hashkv::user_key;
use super::status::{restored_revision, MetaFacts, Revision, KEY_BUCKET, META_BUCKET};
use super::{SnapshotInfo, SnapshotStatus};
use crate::bbolt::stream::{crc, EntryRef, EntrySink, Event, PageStream, VALUE_HEAD};
use crate::bbolt::BoltError;

/// Feeds on a snapshot's bytes (the trailer may follow: it is past the last page).
pub struct StreamVerifier {
    pages: PageStream<EtcdEntries>,
}

/// What one pass established.
#[derive(Debug, Clone)]
pub struct StreamChecked {
    pub info: SnapshotInfo,
    /// The offline `HashKV(info.restored_revision)` for the compaction point it was asked
    /// for, or why it could not be computed.
    pub hashkv: Option<Result<OfflineHashKv, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineHashKv {
    pub compact_revision: i64,
    pub hash: u32,
}

impl StreamVerifier {
    /// `label` names the stream in errors. `hashkv_compact`: also compute HashKV, for a member
    /// whose compaction point is this (0 or less: never compacted).
    pub fn new(label: &Path, hashkv_compact: Option<i64>) -> StreamVerifier {
        StreamVerifier {
            pages: PageStream::new(
                label,
                EtcdEntries {
                    compact: hashkv_compact,
                    ..EtcdEntries::default()
                },
            ),
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.pages.feed(bytes);
    }

    /// Walks the summaries: the status, the revision, and HashKV when asked.
    ///
    /// # Errors
    /// The file is not bbolt, is truncated or damaged (naming the page), or bucket `key`
    /// holds something that is not an etcd revision.
    pub fn finish(self) -> Result<StreamChecked, BoltError> {
        let mut tree = self.pages.finish()?;
        let label = tree.label().to_path_buf();
        let mut walk = Walk {
            label,
            key_leaves: Vec::new(),
            status_crc: 0,
            total_key: 0,
            revision: 0,
            in_bucket: InBucket::Other,
            meta: MetaFacts::default(),
        };
        tree.walk::<BoltError>(|sink, event| walk.event(sink, event))?;
        let sink = tree.sink();
        let hashkv = sink.compact.map(|compact| match &sink.unavailable {
            Some(why) => Err(why.clone()),
            None => Ok(OfflineHashKv {
                compact_revision: compact,
                hash: sink.hash_kv(&walk.key_leaves),
            }),
        });
        Ok(StreamChecked {
            info: SnapshotInfo {
                status: SnapshotStatus {
                    hash: walk.status_crc,
                    revision: walk.revision,
                    total_key: walk.total_key,
                    total_size: tree.high_water_size(),
                },
                consistent_index: walk.meta.consistent_index,
                compact_revision: walk.meta.compact_revision(),
                restored_revision: restored_revision(walk.revision, walk.meta.finished_compact),
                term: walk.meta.term,
            },
            hashkv,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum InBucket {
    Key,
    Meta,
    Other,
}

/// The running totals of the walk.
struct Walk {
    label: std::path::PathBuf,
    /// The leaves of bucket `key` in key order: page, CRC and length of all their entries.
    key_leaves: Vec<(u64, u32, u64)>,
    status_crc: u32,
    total_key: u64,
    revision: i64,
    in_bucket: InBucket,
    meta: MetaFacts,
}

impl Walk {
    fn corrupt(&self, page: u64, reason: String) -> BoltError {
        BoltError::Corrupt {
            path: self.label.clone(),
            page,
            reason,
        }
    }

    fn event(&mut self, sink: &mut EtcdEntries, event: Event<'_>) -> Result<(), BoltError> {
        match event {
            Event::Bucket(name) => {
                self.status_crc = crc32c::crc32c_append(self.status_crc, name);
                self.in_bucket = match name {
                    KEY_BUCKET => InBucket::Key,
                    META_BUCKET => InBucket::Meta,
                    _ => InBucket::Other,
                };
            }
            Event::Leaf { page, leaf } => {
                self.status_crc = crc::combine(self.status_crc, leaf.crc, leaf.len);
                self.total_key += leaf.count;
                let facts = sink.pages.get(&page);
                match self.in_bucket {
                    InBucket::Key => {
                        if let Some(len) = facts.and_then(|f| f.not_revision) {
                            return Err(self.corrupt(
                                page,
                                format!(
                                    "bucket `key` holds a key that is not a revision ({len} bytes)"
                                ),
                            ));
                        }
                        if !leaf.buckets.is_empty() {
                            return Err(
                                self.corrupt(page, "bucket `key` holds a nested bucket".into())
                            );
                        }
                        if let Some(last) = &leaf.last {
                            self.revision =
                                Revision::parse(last.as_slice()).map_or(self.revision, |r| r.main);
                        }
                        if sink.compact.is_some_and(|c| c > 0)
                            && facts.is_some_and(|f| f.not_keyvalue)
                        {
                            return Err(self.corrupt(
                                page,
                                "a value in bucket `key` is not an mvccpb.KeyValue".into(),
                            ));
                        }
                        self.key_leaves.push((page, leaf.crc, leaf.len));
                    }
                    InBucket::Meta => {
                        for (k, v) in facts.map(|f| &f.meta[..]).unwrap_or_default() {
                            self.meta.record(k, v);
                        }
                    }
                    InBucket::Other => {}
                }
            }
        }
        Ok(())
    }
}

/// An entry at or below the compaction point: hashed only if a compaction would keep it.
struct Candidate {
    rev: Revision,
    tombstone: bool,
    user_key: u64,
    crc: u32,
    len: u32,
}

#[derive(Clone, Copy)]
struct Newest {
    rev: Revision,
    tombstone: bool,
}

/// What the walk needs to know of one page beyond its summary; most pages have none.
#[derive(Default)]
struct PageFacts {
    /// The length of the first key that is not a revision (fine outside bucket `key`).
    not_revision: Option<usize>,
    not_keyvalue: bool,
    /// `meta` bucket entries the snapshot's facts come from.
    meta: Vec<(Vec<u8>, Vec<u8>)>,
    candidates: Vec<Candidate>,
    /// CRC and length of the entries after the candidates.
    tail: (u32, u64),
}

#[derive(Default)]
struct EtcdEntries {
    compact: Option<i64>,
    pages: HashMap<u64, PageFacts>,
    newest: HashMap<u64, Newest>,
    /// Why HashKV cannot be computed from this stream.
    unavailable: Option<String>,
}

const META_KEYS: [&[u8]; 4] = [
    b"consistent_index",
    b"term",
    b"scheduledCompactRev",
    b"finishedCompactRev",
];

impl EtcdEntries {
    /// HashKV over the leaves of bucket `key` (in key order): each leaf's candidates that a
    /// compaction would keep, then the rest of its entries.
    fn hash_kv(&self, key_leaves: &[(u64, u32, u64)]) -> u32 {
        let keep_is_empty = !self.keeps_any(key_leaves);
        let mut crc = crc32c::crc32c(KEY_BUCKET);
        for (page, leaf_crc, leaf_len) in key_leaves {
            let Some(facts) = self.pages.get(page).filter(|f| !f.candidates.is_empty()) else {
                crc = crc::combine(crc, *leaf_crc, *leaf_len);
                continue;
            };
            for c in facts
                .candidates
                .iter()
                .filter(|c| keep_is_empty || self.is_kept(c))
            {
                crc = crc::combine(crc, c.crc, u64::from(c.len));
            }
            let (tail_crc, tail_len) = facts.tail;
            crc = crc::combine(crc, tail_crc, tail_len);
        }
        crc
    }

    /// What a compaction at the hashed revision keeps of a key: its newest revision, unless
    /// that is a deletion.
    fn is_kept(&self, c: &Candidate) -> bool {
        !c.tombstone && self.newest.get(&c.user_key).is_some_and(|n| n.rev == c.rev)
    }

    /// etcd's `len(keep) > 0`: some user key's newest revision is a live value. Counted from
    /// the tree only: a free page can still hold a value of a key whose deletion a compaction
    /// removed since. Past the compaction point nothing is ever removed, so a newest revision
    /// there is in the tree; at or below it, the tree's candidates say.
    fn keeps_any(&self, key_leaves: &[(u64, u32, u64)]) -> bool {
        let compact = self.compact.unwrap_or(0);
        self.newest
            .values()
            .any(|n| n.rev.main > compact && !n.tombstone)
            || key_leaves.iter().any(|(page, _, _)| {
                self.pages
                    .get(page)
                    .is_some_and(|f| f.candidates.iter().any(|c| self.is_kept(c)))
            })
    }

    fn candidate_of(&mut self, e: &EntryRef<'_>, rev: Revision) -> Option<u64> {
        let compact = self.compact.filter(|c| *c > 0)?;
        let Some(key) = user_key(e.value_head) else {
            if e.value_len > e.value_head.len() as u64 && e.value_head.len() >= VALUE_HEAD {
                self.unavailable.get_or_insert_with(|| {
                    format!(
                        "a key longer than {VALUE_HEAD} bytes at revision {}",
                        rev.main
                    )
                });
            } else {
                self.pages.entry(e.page).or_default().not_keyvalue = true;
            }
            return None;
        };
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let user = h.finish();
        let tombstone = Revision::is_tombstone(e.key);
        let newest = self.newest.entry(user).or_insert(Newest { rev, tombstone });
        if rev > newest.rev {
            *newest = Newest { rev, tombstone };
        }
        (rev.main <= compact).then_some(user)
    }
}

impl EntrySink for EtcdEntries {
    fn entry(&mut self, e: &EntryRef<'_>) {
        let Some(rev) = Revision::parse(e.key) else {
            let facts = self.pages.entry(e.page).or_default();
            facts.not_revision.get_or_insert(e.key.len());
            if META_KEYS.contains(&e.key) {
                facts.meta.push((e.key.to_vec(), e.value_head.to_vec()));
            }
            return;
        };
        match self.candidate_of(e, rev) {
            Some(user_key) => self
                .pages
                .entry(e.page)
                .or_default()
                .candidates
                .push(Candidate {
                    rev,
                    tombstone: Revision::is_tombstone(e.key),
                    user_key,
                    crc: e.crc,
                    len: u32::try_from(e.len).unwrap_or(u32::MAX),
                }),
            None => {
                if let Some(facts) = self
                    .pages
                    .get_mut(&e.page)
                    .filter(|f| !f.candidates.is_empty())
                {
                    let (crc, len) = facts.tail;
                    facts.tail = (crc::combine(crc, e.crc, e.len), len + e.len);
                }
            }
        }
    }
}
