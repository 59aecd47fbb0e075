//! `lifeboat upgrade`: drive kubeadm only behind a fresh, verified, off-node snapshot.
//!
//! Preflight (read-only) → the gate (control-plane nodes: a fresh pre-upgrade backup committed
//! to the store, or one younger than `--max-snapshot-age` whose object still matches its
//! manifest, plus the node's control-plane kit) → the node's steps, each journaled so `--resume`
//! continues at the step that failed. Nothing that changes the node runs before the gate
//! passed; on failure the node stays cordoned and the recovery commands are printed.

mod gate;
mod journal;
mod kubeadm_backups;
mod plan;
mod run;
mod steps;

pub mod etcd_path;
pub mod preflight;
pub mod tools;
pub mod version;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backup::BackupSettings;
use crate::etcd::EtcdSettings;
use crate::store::Store;
pub use journal::{load_journal, Journal};
pub use kubeadm_backups::{clean_kubeadm_backups, stale_kubeadm_backups};
pub use preflight::{Check, Severity};
pub use run::upgrade;
use version::KubeVersion;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrade refused, nothing changed: {reason}")]
    Refused { reason: String },
    #[error("the gate refused, kubeadm was not run: {reason}")]
    Gate { reason: String },
    #[error(transparent)]
    Command(#[from] crate::process::ProcessError),
    #[error("{detail}")]
    Tool { detail: String },
    #[error(
        "step {step} failed: {source}; the node stays cordoned — see the recovery commands above"
    )]
    Step {
        step: String,
        #[source]
        source: Box<UpgradeError>,
    },
    #[error(transparent)]
    Journal(#[from] crate::fsutil::JournalError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    FirstControlPlane,
    ControlPlane,
    Worker,
}

impl Role {
    pub fn is_control_plane(self) -> bool {
        self != Role::Worker
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::FirstControlPlane => "first-control-plane",
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        }
    }
}

/// How the run should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Preflight and the plan; nothing runs that changes anything.
    DryRun,
    /// As dry run, then refuse: `--yes` was not given.
    PlanOnly,
    Execute,
}

#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    pub to: KubeVersion,
    /// `None`: detect (kube-apiserver.yaml present → control plane; the cluster's kubeadm
    /// configuration still older than the target → the first one).
    pub role: Option<Role>,
    pub node: String,
    /// `/etc/kubernetes`.
    pub kubernetes_dir: PathBuf,
    pub state_dir: PathBuf,
    pub max_snapshot_age: Duration,
    pub allow_local_backup: bool,
    pub drain_timeout: Duration,
    pub ready_timeout: Duration,
    /// How long etcd may take to pass the post-flight.
    pub etcd_ready_timeout: Duration,
    pub command_timeout: Duration,
    pub keep_kubeadm_backups: usize,
}

/// What the gate needs on control-plane nodes.
pub struct GateInputs {
    pub etcd: EtcdSettings,
    pub store: Arc<dyn Store>,
    pub store_is_local: bool,
    pub backup: BackupSettings,
    /// Which existing backups the gate may reuse (`[trust]`).
    pub read_policy: Arc<crate::trust::ReadPolicy>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateResult {
    pub backup_id: String,
    pub reused: bool,
    pub created_at: DateTime<Utc>,
    /// The node's control-plane kit (none with encryption off).
    pub kit: Option<String>,
    pub store: String,
    /// The zombie-member check of the backup (#26): what its v3 store and the member list of
    /// its time disagree on (a 3.6+ target refuses on any; below 3.6 they are warnings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub membership_findings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Gate,
    UpgradeKubeadm,
    #[serde(rename = "kubeadm-upgrade-plan")]
    UpgradePlan,
    KubeadmUpgrade,
    Drain,
    #[serde(rename = "upgrade-kubelet-kubectl")]
    UpgradeKubelet,
    DaemonReload,
    RestartKubelet,
    WaitReady,
    /// #26: every etcd member healthy, on the etcd the upgrade brings, HashKV equal.
    EtcdPostflight,
    Uncordon,
}

impl Step {
    /// The name in logs, the journal and JSON (the serde names match).
    pub fn name(self) -> &'static str {
        match self {
            Step::Gate => "gate",
            Step::UpgradeKubeadm => "upgrade-kubeadm",
            Step::UpgradePlan => "kubeadm-upgrade-plan",
            Step::KubeadmUpgrade => "kubeadm-upgrade",
            Step::Drain => "drain",
            Step::UpgradeKubelet => "upgrade-kubelet-kubectl",
            Step::DaemonReload => "daemon-reload",
            Step::RestartKubelet => "restart-kubelet",
            Step::WaitReady => "wait-ready",
            Step::EtcdPostflight => "etcd-postflight",
            Step::Uncordon => "uncordon",
        }
    }

    /// The node's steps, in order.
    pub fn for_role(role: Role) -> Vec<Step> {
        let mut v = Vec::new();
        if role.is_control_plane() {
            v.push(Step::Gate);
        }
        v.push(Step::UpgradeKubeadm);
        if role == Role::FirstControlPlane {
            v.push(Step::UpgradePlan);
        }
        v.extend([
            Step::KubeadmUpgrade,
            Step::Drain,
            Step::UpgradeKubelet,
            Step::DaemonReload,
            Step::RestartKubelet,
            Step::WaitReady,
        ]);
        // Before uncordon: a node whose etcd fails it stays cordoned.
        if role.is_control_plane() {
            v.push(Step::EtcdPostflight);
        }
        v.push(Step::Uncordon);
        v
    }
}

/// One step as it ran.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: Step,
    pub commands: Vec<String>,
    pub duration_ms: u64,
    pub status: String,
}

/// Everything the run found and did, for the summary and `-w json`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub to: Option<KubeVersion>,
    pub role: Option<Role>,
    pub node: String,
    pub checks: Vec<Check>,
    pub plan: Vec<String>,
    pub gate: Option<GateResult>,
    pub steps: Vec<StepReport>,
    pub result: String,
    pub recovery: Vec<String>,
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_are_the_serialized_names() {
        for role in [Role::FirstControlPlane, Role::Worker] {
            for step in Step::for_role(role) {
                assert_eq!(
                    serde_json::to_value(step).unwrap(),
                    serde_json::Value::String(step.name().into())
                );
            }
        }
    }
}
