//! The verify stage: what makes a stream of bytes a backup that counts.
//!
//! 1. etcd's sha256 trailer equals the sha256 of the streamed bytes;
//! 2. a native bbolt walk succeeds and yields `snapshot status` (hash, revision, totalKey,
//!    totalSize) as etcdctl computes it;
//! 3. the snapshot's revision is not older than the member's revision just before it;
//! 4. the offline HashKV at that revision equals the live member's `HashKV(revision)`.

#[cfg(test)]
mod fuzz;
mod hashkv;
pub mod membership;
mod status;
mod stream;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use hashkv::{hash_kv, live_keys};
pub use membership::{Finding, LiveMember, Membership};
pub use status::{read_snapshot_info, Revision, SnapshotInfo, SnapshotStatus};
pub use stream::{OfflineHashKv, StreamChecked, StreamVerifier};

use crate::bbolt::BoltError;
use crate::etcd::LiveHashKv;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the snapshot's sha256 trailer {trailer} does not match the sha256 {computed} of the streamed bytes: the snapshot was damaged in transit; take it again")]
    TrailerMismatch { trailer: String, computed: String },
    #[error(
        "the snapshot stream ended without etcd's sha256 trailer: it is incomplete; take it again"
    )]
    MissingTrailer,
    #[error("the snapshot file is damaged: {0}")]
    Bolt(#[from] BoltError),
    #[error("the snapshot's revision {snapshot} is older than the revision {member} the member reported just before it: the member served stale data; take the snapshot from another member")]
    RevisionBehind { snapshot: i64, member: i64 },
    #[error("HashKV mismatch at revision {revision}: the snapshot hashes to {offline}, the live member to {live} (compact revision {compact_revision}): the snapshot does not hold the member's data; do not rely on it, check the member with `etcdctl endpoint hashkv`")]
    HashKvMismatch {
        revision: i64,
        offline: u32,
        live: u32,
        compact_revision: i64,
    },
    #[error("{object}: {field} is {actual}, but the manifest says {expected}: the backup is damaged or not the one the manifest describes")]
    ManifestMismatch {
        object: String,
        field: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{path}: {source}")]
    PlainFile {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What the HashKV check found; stored in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashKvCheck {
    /// The member's HashKV at the snapshot's revision (0 when skipped).
    pub hash: u32,
    /// The member's compaction point when asked (unknown when it had compacted past the
    /// snapshot: etcd's error does not say).
    pub compact_revision: Option<i64>,
    /// True when the hashes were compared and equal.
    pub checked: bool,
    /// `equal`, or why the comparison was skipped (`skipped: revision compacted`).
    pub result: String,
}

impl HashKvCheck {
    pub fn equal(hash: u32, compact_revision: i64) -> HashKvCheck {
        HashKvCheck {
            hash,
            compact_revision: Some(compact_revision),
            checked: true,
            result: "equal".into(),
        }
    }

    pub fn skipped_at_compaction_point(member_compact_revision: i64) -> HashKvCheck {
        HashKvCheck {
            hash: 0,
            compact_revision: Some(member_compact_revision),
            checked: false,
            result: "skipped: revision is the compaction point".into(),
        }
    }

    /// The member compacted between the probe before the stream and its HashKV answer: the
    /// stream was hashed for the earlier point.
    pub fn skipped_compacted_during_backup(hashed_for: i64, member_now: i64) -> HashKvCheck {
        HashKvCheck {
            hash: 0,
            compact_revision: Some(member_now),
            checked: false,
            result: format!(
                "skipped: the member compacted during the backup (from {hashed_for} to {member_now})"
            ),
        }
    }

    /// The stream could not be hashed (why).
    pub fn skipped(why: &str) -> HashKvCheck {
        HashKvCheck {
            hash: 0,
            compact_revision: None,
            checked: false,
            result: format!("skipped: {why}"),
        }
    }

    pub fn skipped_compacted() -> HashKvCheck {
        HashKvCheck {
            hash: 0,
            compact_revision: None,
            checked: false,
            result: "skipped: revision compacted".into(),
        }
    }
}

/// Check 1: the trailer etcd sent equals the sha256 of the bytes before it.
pub fn check_trailer(trailer: Option<&[u8]>, computed: &[u8]) -> Result<(), VerifyError> {
    let trailer = trailer.ok_or(VerifyError::MissingTrailer)?;
    if trailer != computed {
        return Err(VerifyError::TrailerMismatch {
            trailer: hex::encode(trailer),
            computed: hex::encode(computed),
        });
    }
    Ok(())
}

/// Check 3: the snapshot is not older than what the member had already committed.
pub fn check_revision(snapshot: i64, member_before: i64) -> Result<(), VerifyError> {
    if snapshot < member_before {
        return Err(VerifyError::RevisionBehind {
            snapshot,
            member: member_before,
        });
    }
    Ok(())
}

/// What to do about check 4, decided from the live member's answer alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKvStep {
    /// No comparison is possible; the reason is recorded in the manifest.
    Skip(HashKvCheck),
    /// Hash the snapshot for the member's compaction point and compare with `live`.
    Compare { live: u32, compact_revision: i64 },
}

/// Check 4, first half: can the live `HashKV(revision)` be compared with the snapshot's?
/// Not when the member compacted past `revision` (etcd does not say to where), nor when
/// `revision` is the snapshot's own compaction point and the member answered from the cache
/// etcd 3.5 fills while compacting (over the entries before deletion, with the previous
/// compaction point): no snapshot taken after the compaction can reproduce that number.
pub fn plan_hashkv(revision: i64, snapshot_compact_revision: i64, live: LiveHashKv) -> HashKvStep {
    match live {
        LiveHashKv::Compacted => HashKvStep::Skip(HashKvCheck::skipped_compacted()),
        LiveHashKv::Hash {
            compact_revision, ..
        } if snapshot_compact_revision > 0
            && revision == snapshot_compact_revision
            && compact_revision < snapshot_compact_revision =>
        {
            HashKvStep::Skip(HashKvCheck::skipped_at_compaction_point(compact_revision))
        }
        LiveHashKv::Hash {
            hash,
            compact_revision,
        } => HashKvStep::Compare {
            live: hash,
            compact_revision,
        },
    }
}

/// Whether two compaction points hash alike: every point at or below revision 1 (never
/// compacted is -1 or 0) leaves all entries in, since revision 1 holds none.
pub fn same_compaction_point(a: i64, b: i64) -> bool {
    a.max(1) == b.max(1)
}

/// Check 4, second half: the snapshot's offline HashKV equals the member's.
///
/// # Errors
/// `HashKvMismatch` with both numbers.
pub fn compare_hashkv(
    revision: i64,
    offline: u32,
    live: u32,
    compact_revision: i64,
) -> Result<HashKvCheck, VerifyError> {
    if offline != live {
        return Err(VerifyError::HashKvMismatch {
            revision,
            offline,
            live,
            compact_revision,
        });
    }
    Ok(HashKvCheck::equal(live, compact_revision))
}

/// Compares one field of a backup read back against its manifest.
pub fn expect_equal<T: PartialEq + std::fmt::Display>(
    object: &str,
    field: &'static str,
    expected: T,
    actual: T,
) -> Result<(), VerifyError> {
    if expected != actual {
        return Err(VerifyError::ManifestMismatch {
            object: object.to_string(),
            field,
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailer_that_differs_fails_with_both_hashes() {
        let err = check_trailer(Some(&[1u8; 32]), &[2u8; 32]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&"01".repeat(32)) && msg.contains(&"02".repeat(32)),
            "{msg}"
        );
        assert!(check_trailer(Some(&[3u8; 32]), &[3u8; 32]).is_ok());
        assert!(matches!(
            check_trailer(None, &[3u8; 32]),
            Err(VerifyError::MissingTrailer)
        ));
    }

    #[test]
    fn hashkv_is_compared_unless_the_member_compacted_past_or_answered_from_its_cache() {
        let live = |hash, compact_revision| LiveHashKv::Hash {
            hash,
            compact_revision,
        };
        assert_eq!(
            plan_hashkv(10, 0, live(7, -1)),
            HashKvStep::Compare {
                live: 7,
                compact_revision: -1
            }
        );
        assert_eq!(
            plan_hashkv(10, 4, live(7, 4)),
            HashKvStep::Compare {
                live: 7,
                compact_revision: 4
            }
        );
        assert!(matches!(
            plan_hashkv(10, 0, LiveHashKv::Compacted),
            HashKvStep::Skip(c) if !c.checked && c.compact_revision.is_none()
        ));
        // The snapshot's revision is its compaction point and the member still reports the
        // previous one: etcd 3.5 answered from its compaction cache.
        assert!(matches!(
            plan_hashkv(10, 10, live(7, 4)),
            HashKvStep::Skip(c) if !c.checked && c.compact_revision == Some(4)
        ));
        assert!(matches!(
            plan_hashkv(10, 10, live(7, 10)),
            HashKvStep::Compare { .. }
        ));
        assert_eq!(
            compare_hashkv(10, 7, 7, 4).unwrap(),
            HashKvCheck::equal(7, 4)
        );
        assert!(matches!(
            compare_hashkv(10, 6, 7, 4),
            Err(VerifyError::HashKvMismatch {
                offline: 6,
                live: 7,
                ..
            })
        ));
    }

    #[test]
    fn a_snapshot_older_than_the_member_is_refused() {
        assert!(check_revision(10, 10).is_ok());
        assert!(check_revision(11, 10).is_ok());
        assert!(matches!(
            check_revision(9, 10),
            Err(VerifyError::RevisionBehind { .. })
        ));
    }
}
