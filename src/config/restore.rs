//! `[restore]`: where the node's files are and how long each wait may take.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, section, ConfigError, DEFAULT_STATE_DIR};

pub const DEFAULT_MANIFESTS_DIR: &str = "/etc/kubernetes/manifests";

section! {
    #[derive(clap::Args, Debug, Default, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RestoreSection {
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
        /// How long etcd may take to stop after its manifest leaves (default 120s).
        #[arg(long, value_name = "DURATION")]
        pub stop_timeout: Option<String>,
        /// How long etcd may take to answer after its manifest comes back (default 300s).
        #[arg(long, value_name = "DURATION")]
        pub start_timeout: Option<String>,
        /// How long to wait for the API server's /readyz after the restore (default 180s; a
        /// slow API server is reported, not an error).
        #[arg(long, value_name = "DURATION")]
        pub apiserver_timeout: Option<String>,
    }
}

/// The restore settings after merging.
#[derive(Debug, Clone)]
pub struct ResolvedRestore {
    pub manifests_dir: PathBuf,
    pub state_dir: PathBuf,
    pub etcdutl: Option<PathBuf>,
    pub bump_revision: Option<u64>,
    pub stop_timeout: Duration,
    pub start_timeout: Duration,
    pub apiserver_timeout: Duration,
}

/// # Errors
/// A bad duration, naming its key.
pub fn resolve_restore(r: &RestoreSection) -> Result<ResolvedRestore, ConfigError> {
    Ok(ResolvedRestore {
        manifests_dir: r
            .manifests_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MANIFESTS_DIR)),
        state_dir: state_dir(r),
        etcdutl: r.etcdutl.clone(),
        bump_revision: r.bump_revision,
        // kubelet notices a removed manifest within its file-check period (20 s) and then
        // gives the pod its grace period (30 s by default).
        stop_timeout: duration(
            "restore.stop_timeout",
            r.stop_timeout.as_ref(),
            Duration::from_secs(120),
        )?,
        start_timeout: duration(
            "restore.start_timeout",
            r.start_timeout.as_ref(),
            Duration::from_secs(300),
        )?,
        apiserver_timeout: duration(
            "restore.apiserver_timeout",
            r.apiserver_timeout.as_ref(),
            Duration::from_secs(180),
        )?,
    })
}

/// The state dir (journals of restore and upgrade): `restore.state_dir`, else the default.
pub fn state_dir(r: &RestoreSection) -> PathBuf {
    r.state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}
