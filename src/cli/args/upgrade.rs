//! `lifeboat upgrade`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use lifeboat::config::{FileConfig, RestoreSection, UpgradeSection};

use super::{Output, WriterArgs};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RoleArg {
    #[default]
    Auto,
    FirstControlPlane,
    ControlPlane,
    Worker,
}

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// Target Kubernetes version, e.g. v1.31.2.
    #[arg(long, value_name = "vX.Y.Z", required_unless_present_any = ["resume", "clean_kubeadm_backups"])]
    pub to: Option<String>,
    /// The node's role; auto: control plane when kube-apiserver.yaml exists, the first one while
    /// the cluster's kubeadm configuration is older than --to.
    #[arg(long, value_enum, default_value_t = RoleArg::Auto)]
    pub role: RoleArg,
    /// This node's name in Kubernetes (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    #[command(flatten)]
    pub writer: WriterArgs,
    #[command(flatten)]
    pub upgrade: UpgradeSection,
    /// Let a folder on this node pass the gate (it dies with the node).
    #[arg(long)]
    pub allow_local_backup: bool,
    /// Folder of the upgrade journal (default /var/lib/etcd-lifeboat; `restore.state_dir`).
    #[arg(long, env = "LIFEBOAT_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print the preflight results and the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Carry out the plan.
    #[arg(long)]
    pub yes: bool,
    /// Continue an upgrade that failed, from the step that failed.
    #[arg(long, conflicts_with = "dry_run")]
    pub resume: bool,
    /// Remove kubeadm's backup folders beyond the newest [upgrade] keep_kubeadm_backups of
    /// each kind (with --dry-run: list them).
    #[arg(long)]
    pub clean_kubeadm_backups: bool,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl UpgradeArgs {
    pub fn flags(&self) -> FileConfig {
        FileConfig {
            upgrade: self.upgrade.clone(),
            restore: RestoreSection {
                state_dir: self.state_dir.clone(),
                ..Default::default()
            },
            ..self.writer.flags()
        }
    }
}
