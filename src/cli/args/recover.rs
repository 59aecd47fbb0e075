//! `lifeboat recover`.

use std::path::PathBuf;

use clap::Args;

use super::{DestArgs, MeetArgs, Output, PickArgs, PointArgs};
use lifeboat::config::{DrillSection, FileConfig, RestoreSection};

#[derive(Args, Debug)]
pub struct RecoverArgs {
    /// Another survivor's data: its data dir, `member` dir, or a copied `member/snap/db`
    /// (repeatable). This node's own data dir (from its etcd.yaml) is always a candidate.
    #[arg(long = "member-data", value_name = "DIR|FILE")]
    pub member_data: Vec<PathBuf>,
    /// Stop at this revision or time instead of the newest the sources reach.
    #[command(flatten)]
    pub point: PointArgs,
    /// The etcd binary of the replay sandbox, of the cluster's minor version (`drill.etcd`).
    #[arg(long, env = "LIFEBOAT_ETCD", value_name = "PATH")]
    pub etcd: Option<PathBuf>,
    /// Where the replay sandbox lives (`drill.work_dir`).
    #[arg(long, env = "LIFEBOAT_WORK_DIR", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    #[command(flatten)]
    pub dest: DestArgs,
    /// age identity file (private key): reads the journal and backups.
    #[arg(long, short = 'i', env = "LIFEBOAT_IDENTITY", value_name = "KEYFILE")]
    pub identity: Option<PathBuf>,
    #[command(flatten)]
    pub pick: PickArgs,
    /// --manifests-dir, --state-dir, --etcdutl, --bump-revision, timeouts: as for restore.
    #[command(flatten)]
    pub restore: RestoreSection,
    /// Recover the whole cluster: run the same command on every remaining control-plane node;
    /// the nodes meet through the store (as `restore --cluster`) and each builds the same
    /// journal revision — from its own freshest survivor where it has one, else from the
    /// backup — then all start as one cluster.
    #[arg(long)]
    pub cluster: bool,
    #[command(flatten)]
    pub meet: MeetArgs,
    /// Go on although this node's etcd still runs (a copy of its file is read as it stands,
    /// taken so that it holds one whole commit; the restore stops it first), or a survivor's
    /// file is held by a running etcd (copied the same way).
    #[arg(long)]
    pub force: bool,
    /// Carry out the plan (without it, the plan is printed and nothing changes).
    #[arg(long)]
    pub yes: bool,
    /// Print the sources and the plan, then stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Finish an interrupted recovery (its restore journal in the state dir).
    #[arg(long, conflicts_with_all = ["rollback", "dry_run"])]
    pub resume: bool,
    /// Undo an unfinished recovery: the old data dir and manifests back, byte for byte.
    #[arg(long, conflicts_with = "dry_run")]
    pub rollback: bool,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl RecoverArgs {
    pub fn flags(&self) -> FileConfig {
        FileConfig {
            restore: self.restore.clone(),
            drill: DrillSection {
                etcd: self.etcd.clone(),
                work_dir: self.work_dir.clone(),
                ..Default::default()
            },
            ..self.dest.flags()
        }
    }
}
