//! `lifeboat member …`.

use clap::{Args, Subcommand};

use super::Output;
use lifeboat::config::{FileConfig, RestoreSection};

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Replace this node's dead member (data dir lost, disk replaced): remove it, rejoin as a
    /// learner with an empty data dir, promote it once caught up. The others keep quorum and
    /// serve writes throughout. Prints the plan; needs --yes.
    Replace(Box<ReplaceArgs>),
}

#[derive(Args, Debug)]
pub struct ReplaceArgs {
    /// --manifests-dir (this node's etcd.yaml names the member), --state-dir (the journal);
    /// --stop-timeout; --start-timeout: how long the new member may take to catch up.
    #[command(flatten)]
    pub restore: RestoreSection,
    /// Client URLs of healthy members (default: the --initial-cluster hosts in this node's
    /// etcd.yaml with this node's client port, as kubeadm lays them out).
    #[arg(long, value_delimiter = ',', value_name = "URL,…")]
    pub endpoints: Vec<String>,
    /// Replace the member even though it answers as healthy.
    #[arg(long)]
    pub force: bool,
    /// Carry out the plan.
    #[arg(long)]
    pub yes: bool,
    /// Print the plan and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Go on with the replace that stopped on this node (the journal in --state-dir).
    #[arg(long, conflicts_with = "dry_run")]
    pub resume: bool,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl ReplaceArgs {
    pub fn flags(&self) -> FileConfig {
        FileConfig {
            restore: self.restore.clone(),
            ..FileConfig::default()
        }
    }
}
