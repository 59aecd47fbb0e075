//! `lifeboat member replace`: bring back a control-plane node whose etcd member is dead or
//! whose data dir is gone, while the other members keep quorum — the most common etcd
//! incident, and until now `etcdctl` surgery.
//!
//! Order (docs/member.md): decide everything first (`plan.rs`: this node's member from its own
//! `etcd.yaml`, the cluster's members and which answer, the refusals) → stop the local etcd
//! (its manifest into a holding folder) → remove the stale member → move its data dir aside
//! (never deleted) → add this node back as a **learner** → write the manifest back with the
//! current member list and `--initial-cluster-state=existing` (kubelet starts it) → promote it
//! once it has caught up → check every member answers and hashes alike. Quorum is never lost:
//! a learner does not vote, and the stale member is removed only while the others are a
//! majority of what is left. Every step is journaled (`steps.rs`); `--resume` goes on.

mod plan;
mod steps;

use std::path::PathBuf;
use std::time::Duration;

pub use plan::{plan_replace, MemberView, ReplacePlan};
pub use steps::{replace, resume, unfinished, ReplaceReport, Step, STEPS};

/// What `member replace` was asked.
#[derive(Debug, Clone)]
pub struct ReplaceOptions {
    /// The node's static pod manifests (its `etcd.yaml` names the member).
    pub manifests_dir: PathBuf,
    /// Healthy members to talk to; empty: derived from this node's `etcd.yaml`.
    pub endpoints: Vec<String>,
    /// Where the journal and the original manifest are kept.
    pub state_dir: PathBuf,
    /// Replace the member even though it answers.
    pub force: bool,
    /// How long to wait for each member to answer.
    pub connect_timeout: Duration,
    /// How long the local etcd may take to stop once its manifest left.
    pub stop_timeout: Duration,
    /// How long the new member may take to catch up (it is promoted then).
    pub catch_up_timeout: Duration,
}

impl ReplaceOptions {
    pub fn new(manifests_dir: PathBuf, state_dir: PathBuf) -> ReplaceOptions {
        ReplaceOptions {
            manifests_dir,
            endpoints: Vec::new(),
            state_dir,
            force: false,
            connect_timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(60),
            catch_up_timeout: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("member replace refused, nothing changed: {reason}")]
    Refused { reason: String },
    #[error(transparent)]
    Discovery(#[from] crate::etcd::discovery::DiscoveryError),
    #[error("no member answers at {endpoints}: {source}; pass --endpoints with a healthy member's client URL")]
    NoCluster {
        endpoints: String,
        #[source]
        source: Box<crate::etcd::SourceError>,
    },
    #[error("{what}: {source}")]
    Membership {
        what: String,
        #[source]
        source: Box<crate::etcd::SourceError>,
    },
    #[error(transparent)]
    Node(Box<crate::restore::RestoreError>),
    #[error(transparent)]
    Journal(#[from] crate::fsutil::JournalError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the new member {name} was not in sync within {waited:?} ({last}); it keeps catching up as a learner: `lifeboat member replace --resume` promotes it")]
    CatchUp {
        name: String,
        waited: Duration,
        last: String,
    },
    #[error("the members do not agree after the replace: {0}; nothing more was changed — look at each member's logs")]
    Disagree(#[source] crate::etcd::health::HealthError),
}

impl From<crate::restore::RestoreError> for MemberError {
    fn from(e: crate::restore::RestoreError) -> MemberError {
        MemberError::Node(Box::new(e))
    }
}

impl MemberError {
    pub(crate) fn refused(reason: impl Into<String>) -> MemberError {
        MemberError::Refused {
            reason: reason.into(),
        }
    }
}
