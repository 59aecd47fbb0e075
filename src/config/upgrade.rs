//! `[upgrade]`: the tools `lifeboat upgrade` drives and its limits.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, section, ConfigError};
use crate::upgrade::tools::ToolPaths;

section! {
    #[derive(clap::Args, Debug, Default, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct UpgradeSection {
        #[arg(skip)]
        pub kubeadm: Option<PathBuf>,
        #[arg(skip)]
        pub kubectl: Option<PathBuf>,
        #[arg(skip)]
        pub systemctl: Option<PathBuf>,
        #[arg(skip)]
        pub package_manager: Option<String>,
        #[arg(skip)]
        pub kubeconfig: Option<PathBuf>,
        /// Accept an existing backup younger than this instead of taking one (default 15m).
        #[arg(long, value_name = "DURATION")]
        pub max_snapshot_age: Option<String>,
        #[arg(skip)]
        pub drain_timeout: Option<String>,
        #[arg(skip)]
        pub ready_timeout: Option<String>,
        /// How long etcd may take to pass the post-flight after kubeadm's upgrade (default 5m).
        #[arg(skip)]
        pub etcd_ready_timeout: Option<String>,
        #[arg(skip)]
        pub command_timeout: Option<String>,
        #[arg(skip)]
        pub keep_kubeadm_backups: Option<usize>,
    }
}

/// The upgrade settings after merging.
#[derive(Debug, Clone)]
pub struct ResolvedUpgrade {
    pub kubernetes_dir: PathBuf,
    pub max_snapshot_age: Duration,
    pub drain_timeout: Duration,
    pub ready_timeout: Duration,
    pub etcd_ready_timeout: Duration,
    pub command_timeout: Duration,
    pub keep_kubeadm_backups: usize,
    pub tools: ToolPaths,
}

/// # Errors
/// A bad duration, naming its key.
pub fn resolve_upgrade(
    u: &UpgradeSection,
    node: &super::NodeSection,
) -> Result<ResolvedUpgrade, ConfigError> {
    let kubernetes_dir = super::resolve_node(node, None).kubernetes_dir;
    let admin_conf = kubernetes_dir.join("admin.conf");
    Ok(ResolvedUpgrade {
        max_snapshot_age: duration(
            "upgrade.max_snapshot_age",
            u.max_snapshot_age.as_ref(),
            Duration::from_secs(15 * 60),
        )?,
        drain_timeout: duration(
            "upgrade.drain_timeout",
            u.drain_timeout.as_ref(),
            Duration::from_secs(600),
        )?,
        ready_timeout: duration(
            "upgrade.ready_timeout",
            u.ready_timeout.as_ref(),
            Duration::from_secs(600),
        )?,
        etcd_ready_timeout: duration(
            "upgrade.etcd_ready_timeout",
            u.etcd_ready_timeout.as_ref(),
            Duration::from_secs(300),
        )?,
        command_timeout: duration(
            "upgrade.command_timeout",
            u.command_timeout.as_ref(),
            Duration::from_secs(1800),
        )?,
        keep_kubeadm_backups: u.keep_kubeadm_backups.unwrap_or(2),
        tools: ToolPaths {
            kubeadm: u.kubeadm.clone(),
            kubectl: u.kubectl.clone(),
            systemctl: u.systemctl.clone(),
            package_manager: u.package_manager.clone(),
            kubeconfig: u
                .kubeconfig
                .clone()
                .or_else(|| admin_conf.exists().then_some(admin_conf)),
        },
        kubernetes_dir,
    })
}
