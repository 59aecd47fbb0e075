//! The manifest: a backup exists exactly when its manifest does. Format: docs/manifest.md.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::verify::{HashKvCheck, SnapshotStatus};

/// Bumped on incompatible changes; readers refuse versions they do not know.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Manual,
    Scheduled,
    PreUpgrade,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Manual => "manual",
            Reason::Scheduled => "scheduled",
            Reason::PreUpgrade => "pre-upgrade",
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
}

impl Manifest {
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
