//! `[drill]`: restore drills, run by `lifeboat drill` and on a schedule by `serve`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, section, ConfigError, FileConfig, DEFAULT_WORK_DIR};
use crate::sandbox::SandboxSettings;

section! {
    #[derive(clap::Args, Debug, Default, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct DrillSection {
        /// Cron schedule for drills in `serve`; drills run only when this and an identity are set.
        #[arg(skip)]
        pub schedule: Option<String>,
        /// age identity file (private key) of one of the backup's recipients.
        #[arg(long = "identity", short = 'i', env = "LIFEBOAT_IDENTITY", value_name = "KEYFILE")]
        pub identity_file: Option<PathBuf>,
        /// The etcd binary the sandbox member runs (default: etcd on PATH).
        #[arg(long, env = "LIFEBOAT_ETCD", value_name = "PATH")]
        pub etcd: Option<PathBuf>,
        /// etcdutl (3.5+) or etcdctl 3.4 to restore with (default: found on PATH).
        #[arg(long, env = "LIFEBOAT_ETCDUTL", value_name = "PATH")]
        pub etcdutl: Option<PathBuf>,
        /// Parent folder of the sandbox.
        #[arg(long, env = "LIFEBOAT_WORK_DIR", value_name = "DIR")]
        pub work_dir: Option<PathBuf>,
        #[arg(skip)]
        pub start_timeout: Option<String>,
    }
}

/// How drills run: `[drill]`, then `[restore] etcdutl` and `[backup] work_dir`.
///
/// # Errors
/// A bad `drill.start_timeout`.
pub fn resolve_drill(c: &FileConfig) -> Result<SandboxSettings, ConfigError> {
    let d = &c.drill;
    Ok(SandboxSettings {
        etcd: d.etcd.clone().unwrap_or_else(|| PathBuf::from("etcd")),
        tool: d.etcdutl.clone().or_else(|| c.restore.etcdutl.clone()),
        work_dir: d
            .work_dir
            .clone()
            .or_else(|| c.backup.work_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_WORK_DIR)),
        start_timeout: duration(
            "drill.start_timeout",
            d.start_timeout.as_ref(),
            Duration::from_secs(60),
        )?,
    })
}
