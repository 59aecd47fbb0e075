//! `lifeboat rebuild`.

use std::path::PathBuf;

use clap::Args;
use lifeboat::config::{DrillSection, FileConfig, NodeSection, RestoreSection};

use super::{DestArgs, MeetArgs, Output, PickArgs, PointArgs};

#[derive(Args, Debug)]
pub struct RebuildArgs {
    /// A backup id (or unique prefix), or `latest`: the etcd data, and the kit it names.
    #[arg(value_name = "ID|latest", required_unless_present_any = ["to_revision", "to_time"], conflicts_with_all = ["to_revision", "to_time"])]
    pub backup: Option<String>,
    /// Or a point in time: the journal replayed to it, and the kit of the newest backup at or
    /// before it.
    #[command(flatten)]
    pub point: PointArgs,
    /// Install the kit of this node instead (the newest of that node stored at or before the
    /// backup or point, else the earliest after; `lifeboat kit list` shows them): for an HA
    /// rebuild, each node its own.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// With --to-revision/--to-time: the etcd binary of the replay sandbox (`drill.etcd`).
    #[arg(long, env = "LIFEBOAT_ETCD", value_name = "PATH")]
    pub etcd: Option<PathBuf>,
    #[command(flatten)]
    pub dest: DestArgs,
    /// age identity file (private key) of one of the backup's and kit's recipients.
    #[arg(long, short = 'i', env = "LIFEBOAT_IDENTITY", value_name = "KEYFILE")]
    pub identity: PathBuf,
    #[command(flatten)]
    pub pick: PickArgs,
    /// Where kubeadm's and the kubelet's files go (the kit's folders are moved there; files
    /// named by the manifests' flags go back to their absolute paths).
    #[command(flatten)]
    pub node_dirs: NodeSection,
    /// --manifests-dir (default: <kubernetes-dir>/manifests), --state-dir, --etcdutl, …: as for
    /// restore.
    #[command(flatten)]
    pub restore: RestoreSection,
    /// Restore the whole cluster (`restore --cluster`): the same command on every node.
    #[arg(long)]
    pub cluster: bool,
    #[command(flatten)]
    pub meet: MeetArgs,
    /// Do not wait for etcd (or the API server) once the manifests are in place.
    #[arg(long)]
    pub no_wait: bool,
    /// Move files that are in the way aside (hidden, beside them; never deleted), and restore
    /// although etcd runs here.
    #[arg(long)]
    pub force: bool,
    /// Carry out the plan (without it, the plan is printed and nothing changes).
    #[arg(long)]
    pub yes: bool,
    /// Print every file it would write, and the restore it would run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl RebuildArgs {
    pub fn flags(&self) -> FileConfig {
        FileConfig {
            node: self.node_dirs.clone(),
            restore: self.restore.clone(),
            drill: DrillSection {
                etcd: self.etcd.clone(),
                ..Default::default()
            },
            ..self.dest.flags()
        }
    }
}
