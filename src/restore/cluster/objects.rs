//! The objects of a cluster restore in the store, and their names: flat, like every object of
//! ours: the plans `cluster-restore.<cluster>.slot-<n>.json` (numbered, each created once), and
//! per run `cluster-restore.<cluster>.<run>.{join.<node>,progress.<node>,complete}.json`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::trust::envelope::Envelope;
use crate::trust::Kind;

pub(super) const PREFIX: &str = "cluster-restore.";

/// The plan every node of one cluster restore follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPlan {
    pub run_id: String,
    /// The backup's cluster (hex).
    pub cluster_id: String,
    pub backup_id: String,
    /// A point-in-time restore: the revision every node replays the journal to (resolved once,
    /// by the node that opened the plan); `backup_id` is then the replay's base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<i64>,
    /// Members to wait for before anything changes.
    pub members: usize,
    /// The backup's members by name, when it recorded them: named when they do not join.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected: Vec<String>,
    /// `--initial-cluster-token` of the restored cluster (new for every run).
    pub token: String,
    pub created_at: DateTime<Utc>,
    /// Every member must have joined by then, or the run fails on every node, untouched.
    pub join_by: DateTime<Utc>,
    pub created_by: String,
}

/// A node's part: who it is in the restored cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    pub run_id: String,
    pub cluster_id: String,
    pub name: String,
    pub peer_url: String,
    pub joined_at: DateTime<Utc>,
}

/// How far a node got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub run_id: String,
    pub cluster_id: String,
    pub name: String,
    pub state: NodeState,
    pub at: DateTime<Utc>,
    /// Once complete: the revision every member hashed alike at, and the hash.
    pub revision: Option<i64>,
    pub hash: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Its etcd is restored and started; the cluster may not have quorum yet.
    Restored,
    /// Every member answers and hashes alike.
    Complete,
}

fn cluster_u64(hex: &str) -> Option<u64> {
    u64::from_str_radix(hex, 16).ok()
}

impl Envelope for ClusterPlan {
    const KIND: Kind = Kind::Coordination;
    fn cluster(&self) -> Option<u64> {
        cluster_u64(&self.cluster_id)
    }
    fn dated(&self) -> DateTime<Utc> {
        self.created_at
    }
}

impl Envelope for Joined {
    const KIND: Kind = Kind::Coordination;
    fn cluster(&self) -> Option<u64> {
        cluster_u64(&self.cluster_id)
    }
    fn dated(&self) -> DateTime<Utc> {
        self.joined_at
    }
}

impl Envelope for Progress {
    const KIND: Kind = Kind::Coordination;
    fn cluster(&self) -> Option<u64> {
        cluster_u64(&self.cluster_id)
    }
    fn dated(&self) -> DateTime<Utc> {
        self.at
    }
}

/// A node name as it may appear in an object name.
fn safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub(super) fn run_prefix(cluster: &str, run: &str) -> String {
    format!("{PREFIX}{cluster}.{run}.")
}

/// Plans take numbered slots per cluster: `cluster-restore.<cluster>.slot-<n>.json`.
pub(super) fn slot_prefix(cluster: &str) -> String {
    format!("{PREFIX}{cluster}.slot-")
}

pub(super) fn slot_key(cluster: &str, slot: u64) -> String {
    format!("{}{slot:010}.json", slot_prefix(cluster))
}

pub(super) fn join_key(cluster: &str, run: &str, node: &str) -> String {
    format!("{}join.{}.json", run_prefix(cluster, run), safe(node))
}

pub(super) fn progress_key(cluster: &str, run: &str, node: &str) -> String {
    format!("{}progress.{}.json", run_prefix(cluster, run), safe(node))
}

pub(super) fn complete_key(cluster: &str, run: &str) -> String {
    format!("{}complete.json", run_prefix(cluster, run))
}
