//! The sealing rules against a scripted member: what goes in a segment, in which order, and
//! what waits — without etcd.

use std::collections::HashMap;
use std::time::SystemTime;

use super::*;
use crate::continuous::segment::SegmentManifest;

/// A member whose answers the test sets.
#[derive(Default)]
struct Scripted {
    leases: Vec<i64>,
    listed_at: i64,
    ttls: HashMap<i64, i64>,
    hashes: HashMap<i64, LiveHashKv>,
    compactions: HashMap<i64, CompactionState>,
}

#[async_trait::async_trait]
impl Member for Scripted {
    async fn lease_ids(&mut self) -> Result<(Vec<i64>, i64), SourceError> {
        Ok((self.leases.clone(), self.listed_at))
    }
    async fn lease_granted_ttl(&mut self, id: i64) -> Result<Option<i64>, SourceError> {
        Ok(self.ttls.get(&id).copied())
    }
    async fn hash_kv(&mut self, rev: i64) -> Result<LiveHashKv, SourceError> {
        Ok(self
            .hashes
            .get(&rev)
            .copied()
            .unwrap_or(LiveHashKv::Compacted))
    }
    async fn compaction_state(&mut self, rev: i64) -> Result<CompactionState, SourceError> {
        Ok(self
            .compactions
            .get(&rev)
            .copied()
            .unwrap_or(CompactionState::Before))
    }
}

struct Quiet;
impl CaptureObserver for Quiet {
    fn committed(&self, _: &SegmentManifest) {}
    fn caught_up(&self, _: SystemTime) {}
    fn commit_failed(&self, _: &ContinuousError) {}
}

/// A builder resuming chain "c" at revision 10, with checkpoints every `every`.
fn builder(every: Duration) -> Builder {
    let resume = Resume {
        chain: "c".into(),
        cluster_id: 1,
        next_seq: 1,
        prev_hash: "root".into(),
        next_rev: 10,
        last_at: None,
    };
    let settings = CaptureSettings {
        checkpoint: CheckpointPace::Every(every),
        ..CaptureSettings::default()
    };
    Builder::new(resume, &settings, Arc::new(Quiet))
}

const NEVER: Duration = Duration::from_secs(3600);

fn put(key: &[u8], value: &[u8], lease: i64) -> Change {
    Change::Put {
        key: key.to_vec(),
        value: value.to_vec(),
        create: 1,
        version: 1,
        lease,
    }
}

fn revision(rev: i64, changes: Vec<Change>) -> Revision {
    Revision { rev, changes }
}

/// The records of a sealed segment, its header line left out.
fn records(sealed: &Sealed) -> Vec<Record> {
    sealed
        .body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .skip(1)
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

fn kinds(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| match r {
            Record::Header(_) => "header".to_string(),
            Record::Lease { id, .. } => format!("lease {id}"),
            Record::Rev { rev, .. } => format!("rev {rev}"),
            Record::Revoke { id, .. } => format!("revoke {id}"),
            Record::Checkpoint { rev, .. } => format!("checkpoint {rev}"),
            Record::Compaction { rev, .. } => format!("compaction {rev}"),
        })
        .collect()
}

#[tokio::test]
async fn leases_come_before_the_revisions_and_revocations_after_and_seals_link() {
    let mut member = Scripted {
        leases: vec![7],
        listed_at: 9,
        ttls: HashMap::from([(7, 30), (8, 5)]),
        ..Scripted::default()
    };
    let mut b = builder(NEVER);
    b.record_all_leases(&mut member).await.unwrap();
    let at = Utc::now();
    for r in [
        revision(10, vec![put(b"/a", b"1", 7)]),
        revision(11, vec![put(b"/b", b"2", 8)]),
    ] {
        b.record_new_leases(&mut member, &r).await.unwrap();
        b.push(r, at).unwrap();
    }
    // At the seal, lease 7 is gone and 8 is alive.
    member.leases = vec![8];
    member.listed_at = 11;
    let first = b.seal(&mut member).await.unwrap();
    let got = records(&first);
    assert_eq!(
        kinds(&got),
        ["lease 7", "lease 8", "rev 10", "rev 11", "revoke 7"]
    );
    assert_eq!(
        got[0],
        Record::Lease {
            id: 7,
            ttl: 30,
            from_rev: Some(9)
        }
    );
    assert_eq!(
        got[1],
        Record::Lease {
            id: 8,
            ttl: 5,
            from_rev: Some(11)
        },
        "a lease is from the revision that first used it"
    );
    assert_eq!(
        got[4],
        Record::Revoke {
            id: 7,
            after_rev: 11
        }
    );
    let h = &first.header;
    assert_eq!((h.seq, h.first_rev, h.last_rev), (1, 10, 11));
    assert_eq!(h.prev_hash, "root");
    assert_eq!((first.revisions, first.checkpoints), (2, 0));

    b.push(revision(12, vec![]), at).unwrap();
    let second = b.seal(&mut member).await.unwrap();
    assert_eq!(kinds(&records(&second)), ["rev 12"]);
    let h = &second.header;
    assert_eq!((h.seq, h.first_rev, h.last_rev), (2, 12, 12));
    assert_eq!(
        h.prev_hash, first.hash,
        "the next segment links to the last"
    );
}

#[test]
fn a_revision_the_watch_skipped_is_a_hole() {
    let mut b = builder(NEVER);
    b.push(revision(10, vec![]), Utc::now()).unwrap();
    let err = b.push(revision(12, vec![]), Utc::now()).unwrap_err();
    assert!(
        matches!(
            err,
            ContinuousError::Hole {
                expected: 11,
                got: 12
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_compaction_hint_becomes_a_checked_record_and_the_checkpoint_follows_it() {
    let mut member = Scripted {
        compactions: HashMap::from([(8, CompactionState::At)]),
        hashes: HashMap::from([
            // etcd 3.5.5+: the hash kept from the compaction itself (before it, at 5).
            (
                8,
                LiveHashKv::Hash {
                    hash: 111,
                    compact_revision: 5,
                },
            ),
            (
                10,
                LiveHashKv::Hash {
                    hash: 222,
                    compact_revision: 8,
                },
            ),
        ]),
        ..Scripted::default()
    };
    let mut b = builder(Duration::ZERO);
    b.push(
        revision(10, vec![put(COMPACT_REV_KEY, b"8", 0)]),
        Utc::now(),
    )
    .unwrap();
    let sealed = b.seal(&mut member).await.unwrap();
    let got = records(&sealed);
    assert_eq!(kinds(&got), ["rev 10", "compaction 8", "checkpoint 10"]);
    assert_eq!(
        got[1],
        Record::Compaction {
            rev: 8,
            compact_rev: 5,
            hash: Some(111)
        }
    );
    assert_eq!(
        got[2],
        Record::Checkpoint {
            rev: 10,
            compact_rev: 8,
            hash: 222
        }
    );
    assert_eq!(sealed.checkpoints, 1);
}

#[tokio::test]
async fn a_checkpoint_waits_for_the_record_of_the_compaction_it_was_taken_with() {
    // The checkpoint's HashKV shows a compaction at 8 no hint announced; the member is still
    // compacting (not at 8 yet): the checkpoint is left out, and the next seal takes both.
    let mut member = Scripted {
        hashes: HashMap::from([(
            10,
            LiveHashKv::Hash {
                hash: 1,
                compact_revision: 8,
            },
        )]),
        ..Scripted::default()
    };
    let mut b = builder(Duration::ZERO);
    b.push(revision(10, vec![]), Utc::now()).unwrap();
    let first = b.seal(&mut member).await.unwrap();
    assert_eq!(kinds(&records(&first)), ["rev 10"]);

    member.compactions.insert(8, CompactionState::At);
    // etcd 3.4 refuses HashKV at its compaction point: the compaction is mirrored unchecked.
    member.hashes.insert(8, LiveHashKv::Compacted);
    member.hashes.insert(
        11,
        LiveHashKv::Hash {
            hash: 2,
            compact_revision: 8,
        },
    );
    b.push(revision(11, vec![]), Utc::now()).unwrap();
    let second = records(&b.seal(&mut member).await.unwrap());
    assert_eq!(kinds(&second), ["rev 11", "compaction 8", "checkpoint 11"]);
    assert_eq!(
        second[1],
        Record::Compaction {
            rev: 8,
            compact_rev: 8,
            hash: None
        }
    );
}

#[tokio::test]
async fn no_checkpoint_before_it_is_due_nor_at_the_members_own_compaction_point() {
    let mut member = Scripted {
        hashes: HashMap::from([(
            10,
            LiveHashKv::Hash {
                hash: 1,
                compact_revision: 0,
            },
        )]),
        ..Scripted::default()
    };
    let mut b = builder(NEVER);
    b.push(revision(10, vec![]), Utc::now()).unwrap();
    assert_eq!(
        kinds(&records(&b.seal(&mut member).await.unwrap())),
        ["rev 10"]
    );

    // Hashed at the revision it compacted at: a replay could never compare it.
    member.hashes.insert(
        11,
        LiveHashKv::Hash {
            hash: 1,
            compact_revision: 11,
        },
    );
    let mut b = builder(Duration::ZERO);
    b.first_rev = 11;
    b.push(revision(11, vec![]), Utc::now()).unwrap();
    assert_eq!(
        kinds(&records(&b.seal(&mut member).await.unwrap())),
        ["rev 11"]
    );
}

#[test]
fn a_due_checkpoint_seals_the_segment_once_and_only_with_revisions_in_it() {
    let mut b = builder(Duration::from_secs(5));
    assert_eq!(b.checkpoint_due(), None, "nothing to seal yet");
    b.push(
        crate::etcd::watch::Revision {
            rev: 10,
            changes: Vec::new(),
        },
        Utc::now(),
    )
    .unwrap();
    let due = b.last_checkpoint + Duration::from_secs(5);
    assert_eq!(b.checkpoint_due(), Some(due));
    // A seal after it fell due that could not take the checkpoint: the tick retries.
    b.last_seal = due + Duration::from_millis(1);
    assert_eq!(b.checkpoint_due(), None);
}
