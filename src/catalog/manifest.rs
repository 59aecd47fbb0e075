//! The manifest: a backup exists exactly when its manifest does. Format: docs/manifest.md.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use std::time::Duration;

use super::BackupId;
use crate::etcd::MemberFacts;
use crate::stages::encrypt::Recipients;
use crate::verify::{Finding, HashKvCheck, LiveMember, Membership, SnapshotInfo, SnapshotStatus};

/// Bumped on incompatible changes; readers refuse versions they do not know.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Manual,
    Scheduled,
    PreUpgrade,
    /// Cut from the shadow (a replica of the journal off the control plane), at a revision
    /// it proved equal to the cluster.
    Shadow,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Manual => "manual",
            Reason::Scheduled => "scheduled",
            Reason::PreUpgrade => "pre-upgrade",
            Reason::Shadow => "shadow",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    pub algorithm: String,
    pub level: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// `age` or `none`.
    pub scheme: String,
    /// Public keys only (age1…); never an identity.
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub id: String,
    pub created_at: DateTime<Utc>,
    /// Hex, as etcdctl prints it.
    pub cluster_id: String,
    pub member_id: String,
    pub member_name: String,
    pub endpoint: String,
    pub etcd_version: String,
    pub revision: i64,
    pub raft_index: u64,
    /// The member's database size when the snapshot started.
    pub db_size: u64,
    pub status: SnapshotStatus,
    pub hashkv: HashKvCheck,
    /// sha256 of the plain snapshot bytes, etcd's trailer included.
    pub plain_sha256: String,
    /// Length of the plain snapshot, trailer included.
    pub plain_size: u64,
    pub object: ObjectRef,
    pub compression: Compression,
    pub encryption: Encryption,
    pub reason: Reason,
    pub tool_version: String,
    pub duration_ms: u64,
    /// When the data's newest revision was written, where that is not `created_at`: a shadow's
    /// base is cut later than the revision it holds was received (#21).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_at: Option<DateTime<Utc>>,
    /// The names of the cluster's voting members when the backup was taken (whom
    /// `restore --cluster` waits for by default); absent in manifests written before it was
    /// recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voting_members: Option<Vec<String>>,
    /// The control-plane kit taken with it (its content id: `kit-<id>.json`), on a kubeadm
    /// node; absent elsewhere and in manifests written before kits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kit: Option<String>,
    /// The snapshot's v3-store membership (buckets `members`, `members_removed`) and the live
    /// member list when it was taken: what the zombie-member check compares (#26). Absent in
    /// manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<RecordedMembership>,
}

/// The two member lists of a backup, as taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedMembership {
    pub v3_store: Membership,
    pub live: Vec<LiveMember>,
}

impl RecordedMembership {
    /// Where the snapshot's buckets and the member list of its time disagree.
    pub fn findings(&self) -> Vec<Finding> {
        self.v3_store.findings(&self.live)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{key} is not a lifeboat manifest: {source}")]
    Parse {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{key} has schema version {found}; this lifeboat reads up to {SCHEMA_VERSION}: upgrade lifeboat")]
    FutureSchema { key: String, found: u32 },
    #[error("{key} is not trusted: {what}; nothing it names is read or deleted")]
    Inconsistent { key: String, what: String },
}

/// What the streaming pass wrote: the plain snapshot's digest and the stored object.
#[derive(Debug, Clone)]
pub struct Written {
    pub plain_sha256: [u8; 32],
    pub plain_size: u64,
    pub object: ObjectRef,
    pub compression: Compression,
    pub encryption: Encryption,
}

impl Encryption {
    /// `age` to these recipients (public keys only), or `none`.
    pub fn for_recipients(recipients: Option<&Recipients>) -> Encryption {
        match recipients {
            Some(r) => Encryption {
                scheme: "age".into(),
                recipients: r.public_keys(),
            },
            None => Encryption {
                scheme: "none".into(),
                recipients: Vec::new(),
            },
        }
    }
}

impl Manifest {
    /// The manifest of a backup whose every check passed: who and when from the member and
    /// the id, what from the snapshot's own reading, the object from what was written.
    pub fn new(
        id: &BackupId,
        member: &MemberFacts,
        snapshot: &SnapshotInfo,
        hashkv: HashKvCheck,
        written: Written,
        reason: Reason,
        took: Duration,
    ) -> Manifest {
        Manifest {
            schema_version: SCHEMA_VERSION,
            id: id.to_string(),
            created_at: id.time,
            cluster_id: format!("{:x}", member.cluster_id),
            member_id: format!("{:x}", member.member_id),
            member_name: member.member_name.clone(),
            endpoint: member.endpoint.clone(),
            etcd_version: member.etcd_version.clone(),
            revision: snapshot.restored_revision,
            raft_index: snapshot.consistent_index.unwrap_or(member.raft_index),
            db_size: member.db_size,
            status: snapshot.status,
            hashkv,
            plain_sha256: hex::encode(written.plain_sha256),
            plain_size: written.plain_size,
            object: written.object,
            compression: written.compression,
            encryption: written.encryption,
            reason,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            data_at: member.data_at,
            voting_members: Some(member.voting_members.clone()).filter(|n| !n.is_empty()),
            kit: None,
            // An unreadable member list (a learner's) would make every member "a zombie".
            membership: (!member.members.is_empty()).then(|| RecordedMembership {
                v3_store: snapshot.membership.clone(),
                live: member.members.iter().map(LiveMember::of).collect(),
            }),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest always serialises")
    }

    /// Parses and checks the schema version.
    ///
    /// # Errors
    /// Not JSON of this shape, or a newer schema.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<Manifest, ManifestError> {
        #[derive(Deserialize)]
        struct Version {
            schema_version: u32,
        }
        let version: Version =
            serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
                key: key.to_string(),
                source,
            })?;
        if version.schema_version > SCHEMA_VERSION {
            return Err(ManifestError::FutureSchema {
                key: key.to_string(),
                found: version.schema_version,
            });
        }
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
            key: key.to_string(),
            source,
        })
    }
}
