//! The checks of a snapshot computed while it streams by, with no copy on disk: etcdctl's
//! `snapshot status` and the member-equivalent `HashKV` from one pass over the bytes
//! (`bbolt::stream` summarises the pages; here they become etcd's numbers).
//!
//! HashKV needs, per entry at or below the member's compaction point, whether a compaction at
//! the hashed revision would keep it (the newest revision of its user key, when not a
//! deletion) — known only once every entry has passed. So those entries ("candidates") are
//! kept as (revision, user-key hash, CRC, length), 32 bytes each, one per key that survived the
//! last compaction; entries after the compaction point are always hashed, and only the oldest
//! and newest revision of each key written since are kept (they decide which candidates are
//! superseded at the snapshot's revision, which free pages written during the snapshot can
//! hold revisions past).
//! The compaction point must be known before the stream starts: the backup asks the member
//! for it, and records the check as skipped when the member compacts during the backup.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::hashkv::{hash_user_key, user_key};
use super::membership::{self, Membership, MEMBERS_BUCKET, REMOVED_BUCKET};
use super::status::{restored_revision, MetaFacts, Revision, KEY_BUCKET, META_BUCKET};
use super::{SnapshotInfo, SnapshotStatus};
use crate::bbolt::stream::{crc, EntryRef, EntrySink, Event, PageStream, INLINE_PAGES, VALUE_HEAD};
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
    pub hashkv: Option<Result<OfflineHashKv, Unhashable>>,
}

/// Why one pass over a stream cannot compute the offline HashKV (the check is then skipped,
/// saying why; the backup is still verified otherwise).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unhashable {
    #[error("a key longer than {limit} bytes at revision {rev}")]
    LongKey { limit: usize, rev: i64 },
    #[error("an entry of revision {rev} is beyond what one pass keeps (page {page}, {len} bytes)")]
    LargeEntry { rev: i64, page: u64, len: u64 },
    #[error("the member was written to during the snapshot (a free page holds revision {newest}, past the snapshot's {rev}) and no key is known to be live at {rev}")]
    WrittenDuring { newest: i64, rev: i64 },
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
            membership: Membership::default(),
        };
        tree.walk::<BoltError>(|sink, event| walk.event(sink, event))?;
        let total_size = tree.high_water_size();
        let mut sink = tree.into_sink();
        sink.decide_and_group_candidates(walk.revision);
        let hashkv = sink.compact.map(|compact| {
            if let Some(why) = &sink.unavailable {
                return Err(why.clone());
            }
            let hash = sink.hash_kv(&walk.key_leaves, walk.revision)?;
            Ok(OfflineHashKv {
                compact_revision: compact,
                hash,
            })
        });
        Ok(StreamChecked {
            info: SnapshotInfo {
                status: SnapshotStatus {
                    hash: walk.status_crc,
                    revision: walk.revision,
                    total_key: walk.total_key,
                    total_size,
                },
                consistent_index: walk.meta.consistent_index,
                compact_revision: walk.meta.compact_revision(),
                restored_revision: restored_revision(walk.revision, walk.meta.finished_compact),
                term: walk.meta.term,
                membership: walk.membership,
            },
            hashkv,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum InBucket {
    Key,
    Meta,
    Members,
    MembersRemoved,
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
    membership: Membership,
}

impl Walk {
    fn corrupt(&self, page: u64, reason: String) -> BoltError {
        BoltError::Corrupt {
            path: self.label.clone(),
            page,
            reason,
        }
    }

    fn event(&mut self, sink: &EtcdEntries, event: Event<'_>) -> Result<(), BoltError> {
        match event {
            Event::Bucket(name) => {
                self.status_crc = crc32c::crc32c_append(self.status_crc, name);
                self.in_bucket = match name {
                    KEY_BUCKET => InBucket::Key,
                    META_BUCKET => InBucket::Meta,
                    MEMBERS_BUCKET => InBucket::Members,
                    REMOVED_BUCKET => InBucket::MembersRemoved,
                    _ => InBucket::Other,
                };
            }
            Event::Leaf { page, leaf, nested } => {
                self.status_crc = crc::combine(self.status_crc, leaf.crc, u64::from(leaf.len));
                self.total_key += u64::from(leaf.count);
                match self.in_bucket {
                    InBucket::Key => {
                        if let Some(len) = sink.not_revision.get(&page) {
                            return Err(self.corrupt(
                                page,
                                format!(
                                    "bucket `key` holds a key that is not a revision ({len} bytes)"
                                ),
                            ));
                        }
                        if nested {
                            return Err(
                                self.corrupt(page, "bucket `key` holds a nested bucket".into())
                            );
                        }
                        if let Some(last) = &leaf.last {
                            self.revision =
                                Revision::parse(last.as_slice()).map_or(self.revision, |r| r.main);
                        }
                        if sink.compact.is_some_and(|c| c > 0) && sink.not_keyvalue.contains(&page)
                        {
                            return Err(self.corrupt(
                                page,
                                "a value in bucket `key` is not an mvccpb.KeyValue".into(),
                            ));
                        }
                        self.key_leaves.push((page, leaf.crc, u64::from(leaf.len)));
                    }
                    InBucket::Meta => {
                        for (k, v) in sink.meta.get(&page).map(|m| &m[..]).unwrap_or_default() {
                            self.meta.record(k, v);
                        }
                    }
                    InBucket::Members => {
                        for (k, v) in sink.ids.get(&page).map(|m| &m[..]).unwrap_or_default() {
                            self.membership.record_member(k, v);
                        }
                    }
                    InBucket::MembersRemoved => {
                        for (k, _) in sink.ids.get(&page).map(|m| &m[..]).unwrap_or_default() {
                            self.membership.record_removed(k);
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
/// 32 bytes; one per key that survived the last compaction.
struct Candidate {
    main: i64,
    user_key: u64,
    /// [`short_page`] of its page.
    page: u32,
    sub: u32,
    crc: u32,
    /// Length of key and value, with the [`TOMBSTONE`] and [`KEPT`] bits.
    len_flags: u32,
}

/// A deletion.
const TOMBSTONE: u32 = 1 << 31;
/// A compaction at the hashed revision keeps it (decided once every entry has passed).
const KEPT: u32 = 1 << 30;
const LEN: u32 = KEPT - 1;

/// A page id in 32 bits, for candidates: file pages below 2^31 (8 TiB of 4 KiB pages), inline
/// buckets' pages above; `None` beyond.
fn short_page(page: u64) -> Option<u32> {
    const HIGH: u32 = 1 << 31;
    if page >= INLINE_PAGES {
        u32::try_from(page - INLINE_PAGES)
            .ok()
            .filter(|n| *n < HIGH)
            .map(|n| n | HIGH)
    } else {
        u32::try_from(page).ok().filter(|p| *p < HIGH)
    }
}

impl Candidate {
    fn len(&self) -> u64 {
        u64::from(self.len_flags & LEN)
    }

    fn is_kept(&self) -> bool {
        self.len_flags & KEPT != 0
    }
}

/// A revision of one user key (16 bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct KeyRevision {
    main: i64,
    sub: u32,
    tombstone: bool,
}

/// The revisions past the compaction point seen of one user key, anywhere in the stream.
///
/// Free pages can hold revisions newer than the snapshot's own: etcd's snapshot copies the
/// file's pages while the member goes on writing, and a page freed before the snapshot began
/// can be reused by a later write before it streams by. So "this key was written since the
/// compaction" must mean "at or below the snapshot's revision", known only at the end: the
/// oldest such revision says whether there is one; the newest, whether the key is live then.
#[derive(Clone, Copy)]
struct Recent {
    oldest: i64,
    newest: KeyRevision,
}

#[derive(Default)]
struct EtcdEntries {
    compact: Option<i64>,
    /// Pages with a key that is not a revision (fine outside bucket `key`): its length.
    not_revision: HashMap<u64, usize>,
    /// Pages with a value in bucket `key` that is not an mvccpb.KeyValue.
    not_keyvalue: HashSet<u64>,
    /// `meta` bucket entries the snapshot's facts come from, by page.
    meta: HashMap<u64, Vec<MetaEntry>>,
    /// Entries keyed like a member id (buckets `members`, `members_removed`; the walk tells
    /// which pages are theirs), by page: at most [`MAX_ID_ENTRIES`] of a small value each.
    ids: HashMap<u64, Vec<MetaEntry>>,
    ids_kept: usize,
    /// In stream order; sorted by page and key before the walk.
    candidates: Vec<Candidate>,
    /// For each page with candidates: CRC and length of its entries after them.
    tails: HashMap<u64, (u32, u64)>,
    /// The revisions past the compaction point of each user key that has one: what was
    /// written since the last compaction, usually a small part of the keys.
    recent: HashMap<u64, Recent>,
    /// Why HashKV cannot be computed from this stream.
    unavailable: Option<Unhashable>,
}

/// A key and value of bucket `meta`.
type MetaEntry = (Vec<u8>, Vec<u8>);

const META_KEYS: [&[u8]; 4] = [
    b"consistent_index",
    b"term",
    b"scheduledCompactRev",
    b"finishedCompactRev",
];

impl EtcdEntries {
    /// Marks the candidates a compaction at the hashed revision `revision` keeps — the newest
    /// revision of a user key that has none between the compaction point and `revision`, when
    /// not a deletion (every copy of it: free pages can hold one too) — then puts each page's
    /// candidates together in key order. Sorts in place: no memory beyond the candidates.
    /// Call once, after the walk has found `revision`, before hashing.
    fn decide_and_group_candidates(&mut self, revision: i64) {
        let cs = &mut self.candidates;
        cs.sort_unstable_by_key(|c| (c.user_key, std::cmp::Reverse((c.main, c.sub))));
        let mut at = 0;
        while at < cs.len() {
            let (key, newest) = (cs[at].user_key, (cs[at].main, cs[at].sub));
            let superseded = self.recent.get(&key).is_some_and(|r| r.oldest <= revision);
            while at < cs.len() && cs[at].user_key == key {
                let c = &mut cs[at];
                if !superseded && (c.main, c.sub) == newest && c.len_flags & TOMBSTONE == 0 {
                    c.len_flags |= KEPT;
                }
                at += 1;
            }
        }
        cs.sort_unstable_by_key(|c| (c.page, c.main, c.sub));
    }

    fn candidates_of(&self, page: u64) -> &[Candidate] {
        let Some(page) = short_page(page) else {
            return &[];
        };
        let from = self.candidates.partition_point(|c| c.page < page);
        let to = self.candidates.partition_point(|c| c.page <= page);
        &self.candidates[from..to]
    }

    /// HashKV at `revision` over the leaves of bucket `key` (in key order): each leaf's
    /// candidates that a compaction would keep, then the rest of its entries.
    fn hash_kv(&self, key_leaves: &[(u64, u32, u64)], revision: i64) -> Result<u32, Unhashable> {
        let keep_is_empty = !self.keeps_any(key_leaves, revision)?;
        let mut crc = crc32c::crc32c(KEY_BUCKET);
        for (page, leaf_crc, leaf_len) in key_leaves {
            let candidates = self.candidates_of(*page);
            if candidates.is_empty() {
                crc = crc::combine(crc, *leaf_crc, *leaf_len);
                continue;
            }
            for c in candidates.iter().filter(|c| keep_is_empty || c.is_kept()) {
                crc = crc::combine(crc, c.crc, c.len());
            }
            let (tail_crc, tail_len) = self.tails.get(page).copied().unwrap_or((0, 0));
            crc = crc::combine(crc, tail_crc, tail_len);
        }
        Ok(crc)
    }

    /// etcd's `len(keep) > 0`: some user key's newest revision at `revision` is a live value.
    /// Counted from the tree only: a free page can still hold a value of a key whose deletion
    /// a compaction removed since. Past the compaction point nothing is ever removed, so a
    /// newest revision there is in the tree; at or below it, the tree's candidates say.
    ///
    /// A key also written after the snapshot began (a free page reused meanwhile) has its
    /// newest revision at `revision` unknown; that matters only when no other key is live.
    fn keeps_any(&self, key_leaves: &[(u64, u32, u64)], revision: i64) -> Result<bool, Unhashable> {
        let live_recent = || {
            self.recent
                .values()
                .any(|r| r.newest.main <= revision && !r.newest.tombstone)
        };
        let live_candidate = || {
            key_leaves
                .iter()
                .any(|(page, _, _)| self.candidates_of(*page).iter().any(Candidate::is_kept))
        };
        if live_recent() || live_candidate() {
            return Ok(true);
        }
        match self
            .recent
            .values()
            .find(|r| r.oldest <= revision && r.newest.main > revision)
        {
            Some(r) => Err(Unhashable::WrittenDuring {
                newest: r.newest.main,
                rev: revision,
            }),
            None => Ok(false),
        }
    }

    /// The entry as a candidate when it is one (at or below the compaction point); else the
    /// newest revision of its user key tracked.
    fn candidate_of(&mut self, e: &EntryRef<'_>, rev: Revision) -> Option<Candidate> {
        let compact = self.compact.filter(|c| *c > 0)?;
        let Some(key) = user_key(e.value_head) else {
            if e.value_len > e.value_head.len() as u64 && e.value_head.len() >= VALUE_HEAD {
                self.unavailable.get_or_insert(Unhashable::LongKey {
                    limit: VALUE_HEAD,
                    rev: rev.main,
                });
            } else {
                self.not_keyvalue.insert(e.page);
            }
            return None;
        };
        let user_key = hash_user_key(key);
        let this = KeyRevision {
            main: rev.main,
            sub: u32::try_from(rev.sub).unwrap_or(u32::MAX),
            tombstone: Revision::is_tombstone(e.key),
        };
        if rev.main > compact {
            let seen = self.recent.entry(user_key).or_insert(Recent {
                oldest: this.main,
                newest: this,
            });
            seen.oldest = seen.oldest.min(this.main);
            if (this.main, this.sub) > (seen.newest.main, seen.newest.sub) {
                seen.newest = this;
            }
            return None;
        }
        let (Some(page), Some(len)) = (
            short_page(e.page),
            u32::try_from(e.len).ok().filter(|l| l & !LEN == 0),
        ) else {
            self.unavailable.get_or_insert(Unhashable::LargeEntry {
                rev: rev.main,
                page: e.page,
                len: e.len,
            });
            return None;
        };
        Some(Candidate {
            page,
            main: this.main,
            sub: this.sub,
            user_key,
            crc: e.crc,
            len_flags: if this.tombstone { len | TOMBSTONE } else { len },
        })
    }
}

/// Entries keyed like a member id that one pass keeps: a cluster has a handful of members,
/// and a crafted stream must not make the pass hold the file in memory (#21).
const MAX_ID_ENTRIES: usize = 4096;
/// A member's JSON is a few hundred bytes.
const MAX_ID_VALUE: usize = 2048;

impl EntrySink for EtcdEntries {
    fn entry(&mut self, e: &EntryRef<'_>) {
        let Some(rev) = Revision::parse(e.key) else {
            self.not_revision.entry(e.page).or_insert(e.key.len());
            if META_KEYS.contains(&e.key) {
                self.meta
                    .entry(e.page)
                    .or_default()
                    .push((e.key.to_vec(), e.value_head.to_vec()));
            } else if membership::member_id(e.key).is_some()
                && e.value_len <= MAX_ID_VALUE as u64
                && self.ids_kept < MAX_ID_ENTRIES
            {
                self.ids_kept += 1;
                self.ids
                    .entry(e.page)
                    .or_default()
                    .push((e.key.to_vec(), e.value_head.to_vec()));
            }
            return;
        };
        match self.candidate_of(e, rev) {
            Some(candidate) => {
                self.tails.entry(e.page).or_insert((0, 0));
                self.candidates.push(candidate);
            }
            None => {
                if let Some((crc, len)) = self.tails.get_mut(&e.page) {
                    *crc = crc::combine(*crc, e.crc, e.len);
                    *len += e.len;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_kept_per_key_and_per_page_stays_small() {
        // Memory grows with these (docs/performance.md): one per surviving key, one per leaf.
        assert_eq!(std::mem::size_of::<Candidate>(), 32);
        assert!(std::mem::size_of::<(u64, crate::bbolt::stream::Summary)>() <= 72);
    }

    fn recent(oldest: i64, newest: i64, tombstone: bool) -> Recent {
        Recent {
            oldest,
            newest: KeyRevision {
                main: newest,
                sub: 0,
                tombstone,
            },
        }
    }

    #[test]
    fn a_key_rewritten_after_the_snapshot_is_live_only_if_known_to_be() {
        let mut e = EtcdEntries::default();
        // Written at 8 and (in a page reused after the snapshot at 10 began) at 12.
        e.recent.insert(1, recent(8, 12, false));
        let unknown = e.keeps_any(&[], 10).unwrap_err();
        assert_eq!(
            unknown,
            Unhashable::WrittenDuring {
                newest: 12,
                rev: 10
            }
        );
        // Another key live at 10 decides it.
        e.recent.insert(2, recent(9, 9, false));
        assert_eq!(e.keeps_any(&[], 10), Ok(true));
        // A key deleted at 9, and one written only after the snapshot: none live.
        let mut e = EtcdEntries::default();
        e.recent.insert(1, recent(7, 9, true));
        e.recent.insert(2, recent(11, 12, false));
        assert_eq!(e.keeps_any(&[], 10), Ok(false));
    }

    #[test]
    fn page_ids_fit_in_32_bits_without_colliding() {
        assert_eq!(short_page(7), Some(7));
        assert_eq!(short_page(INLINE_PAGES + 3), Some((1 << 31) | 3));
        assert_ne!(short_page(INLINE_PAGES), short_page(0));
        assert_eq!(short_page(1 << 31), None);
        assert_eq!(short_page(u64::MAX), None);
    }
}
