//! The command line. Flag names are the contract in the README; every flag that has a config
//! key also reads a `LIFEBOAT_*` environment variable (flag > env > file > default).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod copy;
mod defrag;
mod etcd;
mod kit;
mod member;
mod rebuild;
mod recover;
mod upgrade;
pub use copy::CopyArgs;
pub use defrag::DefragArgs;
pub use etcd::{EtcdCheckArgs, EtcdCommand, EtcdHealthArgs};
pub use kit::{KitCommand, KitGetArgs, KitShowArgs};
use lifeboat::config::{
    BackupSection, ContinuousSection, CopySection, DrillSection, EtcdSection, FileConfig,
    NodeSection, RestoreSection, RetentionSection, S3Section, ServeSection, ShadowSection,
    TrustSection,
};
pub use member::{MemberCommand, ReplaceArgs};
pub use rebuild::RebuildArgs;
pub use recover::RecoverArgs;
pub use upgrade::{RoleArg, UpgradeArgs};

#[derive(Parser, Debug)]
#[command(
    name = "lifeboat",
    version,
    about = "Verified, encrypted etcd backups for kubeadm control planes",
    propagate_version = true
)]
pub struct Cli {
    /// Config file (TOML). Default: /etc/etcd-lifeboat/lifeboat.toml when it exists.
    #[arg(long, global = true, env = "LIFEBOAT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, env = "LIFEBOAT_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, global = true, env = "LIFEBOAT_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Take, verify, list and read back snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Apply the retention policy: delete backups no rule keeps (manifest first, then object).
    Prune(PruneArgs),
    /// Run as a service: scheduled backups (one uploader per cluster), retention, /metrics.
    Serve(Box<ServeArgs>),
    /// Restore this control-plane node from a backup: plan, then journaled steps (needs --yes).
    Restore(Box<RestoreArgs>),
    /// Restore a backup into a sandbox, start etcd there, check it against the manifest.
    Drill(Box<DrillArgs>),
    /// Upgrade this node with kubeadm, only behind a fresh, verified, off-node backup.
    Upgrade(Box<UpgradeArgs>),
    /// Manage the key that signs manifests.
    #[command(subcommand)]
    SigningKey(SigningKeyCommand),
    /// The journal of continuous backup: chains, gaps, segments.
    #[command(subcommand)]
    Continuous(ContinuousCommand),
    /// Follow the journal in a private etcd off the control plane: prove every checkpoint,
    /// cut full backups ("bases") from it, stop at the first mismatch.
    Shadow(Box<ShadowArgs>),
    /// This node's etcd member: replace a dead one without losing quorum.
    #[command(subcommand)]
    Member(MemberCommand),
    /// etcd itself: the zombie-member check before etcd 3.6, the post-flight health check.
    #[command(subcommand)]
    Etcd(EtcdCommand),
    /// Defragment members (followers first, the leader last, one at a time) behind a recent
    /// verified backup; clears NOSPACE. Prints the plan; needs --yes.
    Defrag(Box<DefragArgs>),
    /// Copy every backup, kit and journal segment the other store lacks, each checked on the
    /// way (signature, digest); what fails a check is named and not copied.
    Copy(Box<CopyArgs>),
    /// The control-plane kits (the files a rebuilt node needs besides etcd) in the store.
    #[command(subcommand)]
    Kit(KitCommand),
    /// Quorum lost: restore this node from the freshest survivor (or backup), topped up from
    /// the journal, as a new one-member cluster; the others rejoin with `member replace`.
    Recover(Box<RecoverArgs>),
    /// A control plane on a fresh machine: the node's files from its kit (CA, keys, configs,
    /// manifests), then the normal restore of etcd; the kubelet starts the rest.
    Rebuild(Box<RebuildArgs>),
}

#[derive(Args, Debug)]
pub struct ShadowArgs {
    #[command(flatten)]
    pub dest: DestArgs,
    /// The identity to read the journal, and the private etcd: --etcd (the cluster's minor
    /// version), --etcdutl, --work-dir.
    #[command(flatten)]
    pub drill: DrillSection,
    #[command(flatten)]
    pub shadow: ShadowSection,
    /// age recipient the bases are encrypted to (default: `backup.recipients`); repeatable.
    #[arg(
        long = "recipient",
        short = 'r',
        value_delimiter = ',',
        value_name = "AGE1…"
    )]
    pub recipients: Option<Vec<String>>,
    /// Stop once the journal is replayed through this revision (a one-off proof).
    #[arg(long, value_name = "REV")]
    pub until_revision: Option<i64>,
    /// Serve /healthz, /readyz and /metrics here (e.g. 0.0.0.0:9102). With it, a shadow that
    /// a check stopped keeps serving (readyz 503 naming the cause) until SIGTERM, then exits 4.
    #[arg(long, env = "LIFEBOAT_SHADOW_LISTEN", value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Subcommand, Debug)]
pub enum ContinuousCommand {
    /// Chains, gaps, the newest durable revision and its age, and the restorable window.
    Status(JournalArgs),
    /// Every segment: chain, sequence, revisions, receive times, size.
    List(JournalArgs),
}

#[derive(Args, Debug)]
pub struct JournalArgs {
    #[command(flatten)]
    pub dest: DestArgs,
    /// Only this cluster's journal (hex cluster id).
    #[arg(long, value_name = "ID")]
    pub cluster_id: Option<String>,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Subcommand, Debug)]
pub enum SigningKeyCommand {
    /// Write a new minisign key pair: the secret key to FILE (0600) and the public key to
    /// FILE.pub. Writers sign with FILE; readers trust FILE.pub.
    Generate {
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// A backup id (or unique prefix), `latest`, or a plain snapshot FILE (with or without
    /// etcd's trailer). Not needed with --resume / --rollback.
    #[arg(value_name = "ID|latest|FILE", required_unless_present_any = ["resume", "rollback", "to_revision", "to_time"], conflicts_with_all = ["to_revision", "to_time"])]
    pub backup: Option<String>,
    #[command(flatten)]
    pub point: PointArgs,
    /// With --to-revision/--to-time: the etcd binary of the replay sandbox, of the cluster's
    /// minor version (`drill.etcd`).
    #[arg(long, env = "LIFEBOAT_ETCD", value_name = "PATH")]
    pub etcd: Option<PathBuf>,
    #[command(flatten)]
    pub dest: DestArgs,
    /// age identity file (private key) of one of the backup's recipients.
    #[arg(long, short = 'i', env = "LIFEBOAT_IDENTITY", value_name = "KEYFILE")]
    pub identity: Option<PathBuf>,
    #[command(flatten)]
    pub pick: PickArgs,
    #[command(flatten)]
    pub restore: RestoreSection,
    /// Member name (default: --name in etcd.yaml).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// This member's peer URLs (default: from etcd.yaml).
    #[arg(long, value_name = "URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Every member as name=peer-url, comma-separated: the same on every node of an HA restore.
    #[arg(long, value_name = "NAME=URL,…")]
    pub initial_cluster: Option<String>,
    /// Cluster token, the same on every node (default: derived from the backup).
    #[arg(long, value_name = "TOKEN")]
    pub initial_cluster_token: Option<String>,
    /// Do not wait for etcd (or the API server) after the manifests go back.
    /// Restore the whole cluster: run the same command on every control-plane node; the nodes
    /// meet through the store (a signed plan), wait until all have joined, then each restores
    /// the same backup with the same member list and token (docs/restore.md).
    #[arg(long, conflicts_with_all = ["name", "initial_advertise_peer_urls", "initial_cluster", "initial_cluster_token"])]
    pub cluster: bool,
    #[command(flatten)]
    pub meet: MeetArgs,
    #[arg(long)]
    pub no_wait: bool,
    /// Restore although etcd is running on this node (it is stopped first).
    #[arg(long)]
    pub force: bool,
    /// Carry out the plan (without it, the plan is printed and nothing changes).
    #[arg(long)]
    pub yes: bool,
    /// Print the plan and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Continue an interrupted restore from its journal.
    #[arg(long, conflicts_with_all = ["rollback", "dry_run"])]
    pub resume: bool,
    /// Undo an unfinished restore: old data dir and manifests back, byte for byte.
    #[arg(long, conflicts_with = "dry_run")]
    pub rollback: bool,
    /// Run in the background, detached from this terminal (survives a `kubectl exec` session
    /// dying with the API server); logs to the state dir.
    #[arg(long)]
    pub detach: bool,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// How the nodes of a cluster run meet (`restore --cluster`, `recover --cluster`).
#[derive(Args, Debug, Clone)]
pub struct MeetArgs {
    /// With --cluster: how many members to wait for (default: the backup's voting members).
    #[arg(long, value_name = "N", requires = "cluster")]
    pub members: Option<usize>,
    /// With --cluster: how long every member has to join before the run fails everywhere,
    /// with nothing changed (default 10m).
    #[arg(
        long,
        value_name = "DURATION",
        requires = "cluster",
        default_value = "10m"
    )]
    pub join_timeout: String,
}

/// A point in time, reached by replaying the journal (continuous backup) onto the newest full
/// backup before it.
#[derive(Args, Debug, Clone, Default)]
pub struct PointArgs {
    /// The state at exactly this etcd revision.
    #[arg(long, value_name = "REV", conflicts_with = "to_time")]
    pub to_revision: Option<i64>,
    /// The state at this time (RFC 3339, e.g. 2026-11-29T04:05:06Z): the last revision
    /// received at or before it.
    #[arg(long, value_name = "TIME")]
    pub to_time: Option<String>,
}

#[derive(Args, Debug)]
pub struct DrillArgs {
    /// A backup id (or a unique prefix of one), or `latest`; not with --to-revision/--to-time.
    #[arg(required_unless_present_any = ["to_revision", "to_time"], conflicts_with_all = ["to_revision", "to_time"])]
    pub backup: Option<String>,
    /// Drill a point in time instead: replay the journal to it in the sandbox with every check
    /// of a point-in-time restore (checkpoints, the snapshot at the target), keep nothing.
    #[command(flatten)]
    pub point: PointArgs,
    #[command(flatten)]
    pub dest: DestArgs,
    #[command(flatten)]
    pub drill: DrillSection,
    #[command(flatten)]
    pub pick: PickArgs,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub dest: DestArgs,
    #[command(flatten)]
    pub retention: RetentionSection,
    /// Only this cluster's backups (hex cluster id, as `snapshot list -w json` shows it).
    #[arg(long, value_name = "ID")]
    pub cluster_id: Option<String>,
    /// Print each backup with the rule that keeps or drops it; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Take one snapshot from one member, verify it, compress, encrypt and store it.
    Save(Box<SaveArgs>),
    /// Print hash, revision, totalKey and totalSize of a plain snapshot file, as etcdctl does.
    Status(StatusArgs),
    /// List the backups in a destination, newest first.
    List(ListArgs),
    /// Read a backup back and re-check every hash and the bbolt walk against its manifest.
    Verify(VerifyArgs),
    /// Write the plain snapshot of a backup (trailer included), ready for etcdutl restore.
    Get(GetArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct DestArgs {
    /// Where backups are: a local folder, or s3://BUCKET/PREFIX.
    #[arg(long, env = "LIFEBOAT_DEST", value_name = "DIR|s3://BUCKET/PREFIX")]
    pub dest: Option<String>,
    /// Where readers turn when --dest cannot be reached (a second copy); default: the first
    /// `[[copy]]` of the config file.
    #[arg(
        long,
        env = "LIFEBOAT_FALLBACK_DEST",
        value_name = "DIR|s3://BUCKET/PREFIX"
    )]
    pub fallback_dest: Option<String>,
    #[command(flatten)]
    pub s3: S3Section,
    #[command(flatten)]
    pub trust: TrustSection,
}

/// The flags of every command that takes backups: the member, the destination, how to write.
#[derive(Args, Debug)]
pub struct WriterArgs {
    #[command(flatten)]
    pub etcd: EtcdSection,
    #[command(flatten)]
    pub dest: DestArgs,
    #[command(flatten)]
    pub backup: BackupSection,
    /// Where kubeadm's and the kubelet's files are (the control-plane kit).
    #[command(flatten)]
    pub node: NodeSection,
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    #[command(flatten)]
    pub writer: WriterArgs,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub writer: WriterArgs,
    #[command(flatten)]
    pub serve: ServeSection,
    #[command(flatten)]
    pub continuous: ContinuousSection,
    /// Also copy every committed backup and journal segment to DEST, checked on the way
    /// (repeatable; adds to the config file's `[[copy]]`; the --dest store's S3 connection).
    #[arg(long = "copy-to", value_name = "DEST")]
    pub copy_to: Vec<String>,
    /// Validate the configuration, print it (secrets redacted) and exit.
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// A snapshot file (as etcdctl saves it, or a copy of member/snap/db).
    pub file: PathBuf,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub dest: DestArgs,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct ReadArgs {
    /// A backup id (or a unique prefix of one), or `latest`.
    pub backup: String,
    #[command(flatten)]
    pub dest: DestArgs,
    /// age identity file (private key) of one of the backup's recipients.
    #[arg(long, short = 'i', env = "LIFEBOAT_IDENTITY", value_name = "KEYFILE")]
    pub identity: Option<PathBuf>,
    #[command(flatten)]
    pub pick: PickArgs,
}

/// Which backup a reader may take.
#[derive(Args, Debug, Clone, Default)]
pub struct PickArgs {
    /// Only this cluster's backups (hex, as `snapshot list` shows it); `latest` needs it when
    /// the store holds backups of several clusters.
    #[arg(long, value_name = "ID")]
    pub cluster_id: Option<String>,
    /// Accept a backup stored without encryption although an identity is given (a reader
    /// with an identity otherwise refuses one: whoever can write the bucket could swap in
    /// a plaintext snapshot).
    #[arg(long)]
    pub allow_unencrypted: bool,
    /// Let `latest` be a backup although a newer manifest of the cluster is not trusted (a
    /// deleted or foreign signature, an overwritten manifest): otherwise refused (exit 4), as a
    /// hidden newest backup would make it the one before without a word. Logged.
    #[arg(long)]
    pub accept_older: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// Accepted for scripts written for earlier versions and ignored: verify checks the
    /// backup as it streams and writes nothing to disk.
    #[arg(long, env = "LIFEBOAT_WORK_DIR", value_name = "DIR", hide = true)]
    pub work_dir: Option<PathBuf>,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// A backup id (or a unique prefix of one), or `latest`; not with --to-revision/--to-time.
    #[arg(required_unless_present_any = ["to_revision", "to_time"], conflicts_with_all = ["to_revision", "to_time"])]
    pub backup: Option<String>,
    #[command(flatten)]
    pub dest: DestArgs,
    #[command(flatten)]
    pub pick: PickArgs,
    /// The identity, and for --to-revision/--to-time the replay sandbox: --etcd (the cluster's
    /// minor version), --etcdutl, --work-dir.
    #[command(flatten)]
    pub drill: DrillSection,
    #[command(flatten)]
    pub point: PointArgs,
    /// Where to write the plain snapshot.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub out: PathBuf,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

// What each command's flags say, as a config to lay over the file's (`FileConfig::overlay`).
// The sections' own flags are taken whole; the few flags that set one key of a section they do
// not flatten are mapped here, each in one line.

impl DestArgs {
    pub fn flags(&self) -> FileConfig {
        FileConfig {
            backup: BackupSection {
                dest: self.dest.clone(),
                fallback_dest: self.fallback_dest.clone(),
                ..Default::default()
            },
            s3: self.s3.clone(),
            trust: self.trust.clone(),
            ..Default::default()
        }
    }
}

impl WriterArgs {
    pub fn flags(&self) -> FileConfig {
        let dest = self.dest.flags();
        FileConfig {
            etcd: self.etcd.clone(),
            backup: self.backup.clone().overlay(dest.backup),
            node: self.node.clone(),
            ..dest
        }
    }
}

impl ServeArgs {
    pub fn flags(&self) -> FileConfig {
        FileConfig {
            serve: self.serve.clone(),
            continuous: self.continuous.clone(),
            copy: self
                .copy_to
                .iter()
                .map(|dest| CopySection::from_flag(dest))
                .collect(),
            ..self.writer.flags()
        }
    }
}

impl RestoreArgs {
    pub fn flags(&self) -> FileConfig {
        FileConfig {
            restore: self.restore.clone(),
            drill: DrillSection {
                etcd: self.etcd.clone(),
                ..Default::default()
            },
            ..self.dest.flags()
        }
    }
}

impl GetArgs {
    pub fn flags(&self) -> FileConfig {
        FileConfig {
            drill: self.drill.clone(),
            ..self.dest.flags()
        }
    }
}

impl DrillArgs {
    pub fn flags(&self) -> FileConfig {
        FileConfig {
            drill: self.drill.clone(),
            ..self.dest.flags()
        }
    }
}

impl ShadowArgs {
    pub fn flags(&self) -> FileConfig {
        let dest = self.dest.flags();
        FileConfig {
            drill: self.drill.clone(),
            shadow: self.shadow.clone(),
            backup: BackupSection {
                recipients: self.recipients.clone(),
                ..Default::default()
            }
            .overlay(dest.backup),
            ..dest
        }
    }
}

impl PruneArgs {
    pub fn flags(&self) -> FileConfig {
        FileConfig {
            retention: self.retention.clone(),
            ..self.dest.flags()
        }
    }
}

impl VerifyArgs {
    pub fn flags(&self) -> FileConfig {
        self.read.dest.flags()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks of every command (duplicate names, bad defaults), which
    /// otherwise fire only when that command is run.
    #[test]
    fn every_command_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// `--s3-path-style` alone means true; `=false` turns a config file's `true` off; absent,
    /// the file decides.
    #[test]
    fn the_path_style_flag_overrides_the_file_either_way() {
        let file = FileConfig {
            s3: S3Section {
                path_style: Some(true),
                ..Default::default()
            },
            ..Default::default()
        };
        let style = |flag: &[&str]| {
            let args = [&["lifeboat", "snapshot", "list"][..], flag].concat();
            let Cli {
                command: Command::Snapshot(SnapshotCommand::List(a)),
                ..
            } = Cli::try_parse_from(args).unwrap()
            else {
                panic!("not snapshot list")
            };
            file.clone().overlay(a.dest.flags()).s3.path_style
        };
        assert_eq!(style(&[]), Some(true));
        assert_eq!(style(&["--s3-path-style=false"]), Some(false));
        assert_eq!(style(&["--s3-path-style"]), Some(true));
    }

    /// Regression: the parsed arguments kept `--password` in a `Debug`-printable `String`.
    #[test]
    fn the_password_flag_never_prints() {
        let cli = Cli::try_parse_from([
            "lifeboat",
            "snapshot",
            "save",
            "--password",
            "hunter2",
            "--dest",
            "/x",
        ])
        .unwrap();
        let shown = format!("{cli:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}
