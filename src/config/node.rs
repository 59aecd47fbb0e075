//! `[node]`: where this control-plane node keeps kubeadm's and the kubelet's files — read by
//! the kit (backups, the upgrade gate) and written back by `rebuild`.

use std::path::PathBuf;

use serde::Deserialize;

use super::section;
use crate::kit::{KitDirs, KitPlan};

pub const DEFAULT_KUBERNETES_DIR: &str = "/etc/kubernetes";

section! {
    #[derive(clap::Args, Debug, Default, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct NodeSection {
        /// kubeadm's folder (default: the one holding the etcd manifest found, else
        /// /etc/kubernetes).
        #[arg(long, env = "LIFEBOAT_KUBERNETES_DIR", value_name = "DIR")]
        pub kubernetes_dir: Option<PathBuf>,
        /// The kubelet's folder (default /var/lib/kubelet).
        #[arg(long, env = "LIFEBOAT_KUBELET_DIR", value_name = "DIR")]
        pub kubelet_dir: Option<PathBuf>,
    }
}

/// The node's folders: as set, else kubeadm's from where its etcd manifest is (a node whose
/// manifests live elsewhere keeps them together), else the defaults.
pub fn resolve_node(n: &NodeSection, etcd_manifest: Option<&std::path::Path>) -> KitDirs {
    let discovered = etcd_manifest
        .and_then(|m| m.parent()?.parent())
        .map(std::path::Path::to_path_buf);
    KitDirs {
        kubernetes_dir: n
            .kubernetes_dir
            .clone()
            .or(discovered)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBERNETES_DIR)),
        kubelet_dir: n
            .kubelet_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::kit::DEFAULT_KUBELET_DIR)),
    }
}

/// What a backup on this node takes its kit from: only on a kubeadm node (an etcd manifest
/// was found).
pub fn resolve_kit(n: &NodeSection, etcd: &super::ResolvedEtcd) -> Option<KitPlan> {
    let k = etcd.kubeadm.as_ref()?;
    let dirs = resolve_node(n, Some(&k.manifest));
    // Only with the node's admin kubeconfig: kubectl without one has no credentials here.
    let admin = dirs.kubernetes_dir.join("admin.conf");
    let cluster_configuration = crate::process::on_path("kubectl")
        .filter(|_| admin.is_file())
        .map(|kubectl| crate::kit::cluster_configuration_command(&kubectl, Some(&admin)));
    Some(KitPlan {
        dirs,
        etcd_image: k.image.clone(),
        cluster_configuration,
    })
}
