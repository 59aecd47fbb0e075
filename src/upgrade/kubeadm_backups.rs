//! kubeadm's own backups: `kubeadm upgrade` copies the data dir and the old manifests to
//! `/etc/kubernetes/tmp/kubeadm-backup-*` and never removes them.

use std::path::PathBuf;

use super::{UpgradeError, UpgradeOptions};

pub(super) fn kubeadm_backup_dirs(opts: &UpgradeOptions) -> Vec<PathBuf> {
    let tmp = opts.kubernetes_dir.join("tmp");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&tmp)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("kubeadm-backup-")
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// kubeadm's backup folders beyond the newest `keep` of each kind (etcd, manifests).
pub fn stale_kubeadm_backups(opts: &UpgradeOptions) -> Vec<PathBuf> {
    let mut stale = Vec::new();
    for kind in ["kubeadm-backup-etcd-", "kubeadm-backup-manifests-"] {
        let mut of_kind: Vec<PathBuf> = kubeadm_backup_dirs(opts)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(kind))
            })
            .collect();
        // Names end in <date>-<time>: sorting by name sorts by age.
        of_kind.sort();
        let n = of_kind.len().saturating_sub(opts.keep_kubeadm_backups);
        stale.extend(of_kind.into_iter().take(n));
    }
    stale
}

pub(super) fn kubeadm_backup_note(opts: &UpgradeOptions) -> Vec<String> {
    let stale = stale_kubeadm_backups(opts);
    if stale.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "kubeadm never removes its backup folders: {} in {} are beyond the newest {} of each kind; `lifeboat upgrade --clean-kubeadm-backups --yes` removes them",
        stale.len(),
        opts.kubernetes_dir.join("tmp").display(),
        opts.keep_kubeadm_backups
    )]
}

/// Removes the stale kubeadm backup folders (or lists them with `dry_run`).
///
/// # Errors
/// A folder that cannot be removed.
pub fn clean_kubeadm_backups(
    opts: &UpgradeOptions,
    dry_run: bool,
) -> Result<Vec<PathBuf>, UpgradeError> {
    let stale = stale_kubeadm_backups(opts);
    if !dry_run {
        for p in &stale {
            std::fs::remove_dir_all(p).map_err(|e| UpgradeError::Tool {
                detail: format!("cannot remove {}: {e}", p.display()),
            })?;
        }
    }
    Ok(stale)
}
