//! The command line. Flag names are the contract in the README; every flag that has a config
//! key also reads a `LIFEBOAT_*` environment variable (flag > env > file > default).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
}

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
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub dest: DestArgs,
    #[command(flatten)]
    pub backup: BackupArgs,
    /// Accept an existing backup younger than this instead of taking one (default 15m).
    #[arg(long, value_name = "DURATION")]
    pub max_snapshot_age: Option<String>,
    /// Let a folder on this node pass the gate (it dies with the node).
    #[arg(long)]
    pub allow_local_backup: bool,
    /// kubeadm's folder (default /etc/kubernetes).
    #[arg(long, env = "LIFEBOAT_KUBERNETES_DIR", value_name = "DIR")]
    pub kubernetes_dir: Option<PathBuf>,
    /// Folder of the upgrade journal (default /var/lib/etcd-lifeboat).
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

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// A backup id (or unique prefix), `latest`, or a plain snapshot FILE (with or without
    /// etcd's trailer). Not needed with --resume / --rollback.
    #[arg(value_name = "ID|latest|FILE", required_unless_present_any = ["resume", "rollback"])]
    pub backup: Option<String>,
    #[command(flatten)]
    pub dest: DestArgs,
    /// age identity file (private key) of one of the backup's recipients.
    #[arg(long, short = 'i', env = "LIFEBOAT_IDENTITY", value_name = "KEYFILE")]
    pub identity: Option<PathBuf>,
    /// kubelet's static pod folder (etcd.yaml in it describes the member).
    #[arg(long, env = "LIFEBOAT_MANIFESTS_DIR", value_name = "DIR")]
    pub manifests_dir: Option<PathBuf>,
    /// Folder of the restore journal and the verified snapshot copy.
    #[arg(long, env = "LIFEBOAT_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// etcdutl (3.5+) or etcdctl 3.4 to restore with (default: found on PATH).
    #[arg(long, env = "LIFEBOAT_ETCDUTL", value_name = "PATH")]
    pub etcdutl: Option<PathBuf>,
    /// Revision bump with --mark-compacted (etcdutl 3.5.10+); 0 disables.
    #[arg(long, value_name = "N")]
    pub bump_revision: Option<u64>,
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
    /// How long etcd may take to stop after its manifest leaves (default 120s).
    #[arg(long, value_name = "DURATION")]
    pub stop_timeout: Option<String>,
    /// How long etcd may take to answer after its manifest comes back (default 300s).
    #[arg(long, value_name = "DURATION")]
    pub start_timeout: Option<String>,
    /// How long to wait for the API server's /readyz after the restore (default 180s; a slow
    /// API server is reported, not an error).
    #[arg(long, value_name = "DURATION")]
    pub apiserver_timeout: Option<String>,
    /// Do not wait for etcd (or the API server) after the manifests go back.
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

#[derive(Args, Debug)]
pub struct DrillArgs {
    /// A backup id (or a unique prefix of one), or `latest`.
    pub backup: String,
    #[command(flatten)]
    pub dest: DestArgs,
    /// age identity file (private key) of one of the backup's recipients.
    #[arg(long, short = 'i', env = "LIFEBOAT_IDENTITY", value_name = "KEYFILE")]
    pub identity: Option<PathBuf>,
    /// The etcd binary the sandbox member runs (default: etcd on PATH).
    #[arg(long, env = "LIFEBOAT_ETCD", value_name = "PATH")]
    pub etcd: Option<PathBuf>,
    /// etcdutl (3.5+) or etcdctl 3.4 to restore with (default: found on PATH).
    #[arg(long, env = "LIFEBOAT_ETCDUTL", value_name = "PATH")]
    pub etcdutl: Option<PathBuf>,
    /// Parent folder of the sandbox.
    #[arg(long, env = "LIFEBOAT_WORK_DIR", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub dest: DestArgs,
    /// Keep the newest N scheduled backups.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,
    /// Keep the newest scheduled backup of each of the last N hours that have one.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<usize>,
    /// … of each of the last N days.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<usize>,
    /// … of each of the last N ISO weeks.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<usize>,
    /// … of each of the last N months.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<usize>,
    /// Keep manual backups this many days.
    #[arg(long, value_name = "DAYS")]
    pub manual_keep_days: Option<u32>,
    /// Keep pre-upgrade backups this many days.
    #[arg(long, value_name = "DAYS")]
    pub pre_upgrade_keep_days: Option<u32>,
    /// Delete objects without manifest only when older than this (e.g. 24h).
    #[arg(long, value_name = "DURATION")]
    pub grace: Option<String>,
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

#[derive(Args, Debug, Clone, Default)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated; the first that answers is used (one member only).
    #[arg(
        long,
        env = "LIFEBOAT_ENDPOINTS",
        value_delimiter = ',',
        value_name = "URLS"
    )]
    pub endpoints: Vec<String>,
    /// CA bundle that signed etcd's server certificate.
    #[arg(long, env = "LIFEBOAT_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, env = "LIFEBOAT_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, env = "LIFEBOAT_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// etcd user (when etcd auth is on).
    #[arg(long, env = "LIFEBOAT_USER")]
    pub user: Option<String>,
    /// etcd password (prefer LIFEBOAT_PASSWORD or etcd.password_file: flags show in `ps`).
    #[arg(long, env = "LIFEBOAT_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// kubeadm's etcd static pod manifest, read for endpoint, certificates and member name
    /// when no endpoint is given.
    #[arg(long, env = "LIFEBOAT_ETCD_MANIFEST", value_name = "FILE")]
    pub etcd_manifest: Option<PathBuf>,
    /// Connect timeout, e.g. 5s.
    #[arg(long, env = "LIFEBOAT_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub connect_timeout: Option<String>,
    /// Timeout of unary calls (status, HashKV), e.g. 60s.
    #[arg(long, env = "LIFEBOAT_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub request_timeout: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct DestArgs {
    /// Where backups are: a local folder, or s3://BUCKET/PREFIX.
    #[arg(long, env = "LIFEBOAT_DEST", value_name = "DIR|s3://BUCKET/PREFIX")]
    pub dest: Option<String>,
    /// S3 endpoint for MinIO, Ceph, SeaweedFS, R2 … (default: AWS).
    #[arg(long, env = "LIFEBOAT_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: from the AWS config, else us-east-1).
    #[arg(long, env = "LIFEBOAT_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Path-style addressing (http://host/bucket/key), as most self-hosted S3 servers need.
    #[arg(long, env = "LIFEBOAT_S3_PATH_STYLE")]
    pub s3_path_style: bool,
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub dest: DestArgs,
    #[command(flatten)]
    pub backup: BackupArgs,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub dest: DestArgs,
    #[command(flatten)]
    pub backup: BackupArgs,
    /// Cron schedule, UTC: 5 fields (min hour dom mon dow), or 6 with seconds first.
    /// Default: hourly ("0 * * * *") with up to 5 minutes of jitter. `off`: no backups (a
    /// drill-only instance, see [drill] in the config).
    #[arg(long, env = "LIFEBOAT_SCHEDULE", value_name = "CRON")]
    pub schedule: Option<String>,
    /// Address of /healthz, /readyz and /metrics. Default 127.0.0.1:9464.
    #[arg(long, env = "LIFEBOAT_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Validate the configuration, print it (secrets redacted) and exit.
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    /// Age recipient (public key age1…); repeatable.
    #[arg(
        long = "recipient",
        short = 'r',
        env = "LIFEBOAT_RECIPIENTS",
        value_delimiter = ',',
        value_name = "AGE1…"
    )]
    pub recipients: Vec<String>,
    /// File with one age recipient per line.
    #[arg(long, env = "LIFEBOAT_RECIPIENTS_FILE", value_name = "FILE")]
    pub recipients_file: Option<PathBuf>,
    /// zstd level, 1–19.
    #[arg(long, env = "LIFEBOAT_COMPRESSION_LEVEL", value_name = "N")]
    pub compression_level: Option<i32>,
    /// Folder for the temporary plain copy the checks read (needs room for the database).
    #[arg(long, env = "LIFEBOAT_WORK_DIR", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
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
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// Folder for the temporary plain copy.
    #[arg(long, env = "LIFEBOAT_WORK_DIR", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// Where to write the plain snapshot.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub out: PathBuf,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    pub force: bool,
}
