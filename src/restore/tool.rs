//! The external restore tool: `etcdutl` (3.5+) or `etcdctl` 3.4, and the command line it gets.
//!
//! We drive etcd's own tool rather than writing a data dir ourselves: the WAL, the raft
//! snapshot and the member/cluster ids it writes are etcd's format to own.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::RestoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolKind {
    Etcdutl,
    Etcdctl,
}

/// A restore tool found and asked for its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreTool {
    pub path: PathBuf,
    pub kind: ToolKind,
    /// (major, minor, patch)
    pub version: (u32, u32, u32),
}

/// Who the restored member is, and the cluster it bootstraps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSpec {
    pub name: String,
    pub initial_advertise_peer_urls: String,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
}

/// Kubernetes' documentation bumps by a billion: far beyond any resourceVersion an informer
/// could have seen since the backup, and still far from overflowing an int64.
pub const DEFAULT_BUMP_REVISION: u64 = 1_000_000_000;

impl RestoreTool {
    /// `configured` (flag or config), else `etcdutl`, else `etcdctl` on PATH.
    ///
    /// # Errors
    /// Nothing usable found, or a tool that does not say its version.
    pub fn find(configured: Option<&Path>) -> Result<RestoreTool, RestoreError> {
        if let Some(path) = configured {
            return RestoreTool::probe(path);
        }
        let mut tried = Vec::new();
        for name in ["etcdutl", "etcdctl"] {
            if let Some(path) = crate::process::on_path(name) {
                match RestoreTool::probe(&path) {
                    Ok(t) => return Ok(t),
                    Err(e) => tried.push(e.to_string()),
                }
            }
        }
        Err(RestoreError::Tool {
            detail: if tried.is_empty() {
                "neither etcdutl nor etcdctl is on PATH: install etcdutl (from the etcd release of your cluster) or pass --etcdutl PATH".into()
            } else {
                tried.join("; ")
            },
        })
    }

    /// Asks `path version` what it is.
    ///
    /// # Errors
    /// It does not run, or is neither etcdutl nor an etcdctl that can restore.
    pub fn probe(path: &Path) -> Result<RestoreTool, RestoreError> {
        let out = Command::new(path)
            .arg("version")
            .env("ETCDCTL_API", "3")
            .output()
            .map_err(|e| RestoreError::Tool {
                detail: format!("cannot run {} version: {e}", path.display()),
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let parsed = parse_version_output(&text).ok_or_else(|| RestoreError::Tool {
            detail: format!(
                "{} version printed {:?}: not etcdutl or etcdctl; pass --etcdutl with etcdutl (3.5+) or etcdctl 3.4",
                path.display(),
                text.lines().next().unwrap_or("")
            ),
        })?;
        let tool = RestoreTool {
            path: path.to_path_buf(),
            kind: parsed.0,
            version: parsed.1,
        };
        if tool.kind == ToolKind::Etcdctl && tool.version.1 >= 6 {
            return Err(RestoreError::Tool {
                detail: format!(
                    "{} is etcdctl {}: from 3.6 on only etcdutl restores; pass --etcdutl with etcdutl",
                    path.display(),
                    tool.version_string()
                ),
            });
        }
        Ok(tool)
    }

    pub fn version_string(&self) -> String {
        let (a, b, c) = self.version;
        format!("{a}.{b}.{c}")
    }

    /// `--bump-revision` with `--mark-compacted` exist from etcdutl 3.5.10 on.
    pub fn can_bump_revision(&self) -> bool {
        self.kind == ToolKind::Etcdutl && self.version >= (3, 5, 10)
    }

    /// The argv of the restore (program first).
    pub fn restore_argv(
        &self,
        snapshot: &Path,
        data_dir: &Path,
        member: &MemberSpec,
        skip_hash_check: bool,
        bump_revision: Option<u64>,
    ) -> Vec<String> {
        let mut argv = vec![
            self.path.display().to_string(),
            "snapshot".into(),
            "restore".into(),
            snapshot.display().to_string(),
            format!("--data-dir={}", data_dir.display()),
            format!("--name={}", member.name),
            format!("--initial-cluster={}", member.initial_cluster),
            format!("--initial-cluster-token={}", member.initial_cluster_token),
            format!(
                "--initial-advertise-peer-urls={}",
                member.initial_advertise_peer_urls
            ),
        ];
        if skip_hash_check {
            argv.push("--skip-hash-check".into());
        }
        if let Some(n) = bump_revision {
            argv.push(format!("--bump-revision={n}"));
            argv.push("--mark-compacted".into());
        }
        argv
    }
}

/// Runs a restore argv (etcdctl 3.4 needs `ETCDCTL_API=3`).
///
/// # Errors
/// The tool could not run, hung, or exited non-zero (its last stderr line in the message).
pub fn run_restore(argv: &[String]) -> Result<(), RestoreError> {
    crate::process::run(argv, &[("ETCDCTL_API", "3")], RESTORE_TIMEOUT)?;
    Ok(())
}

/// etcdutl restores about 1 GB a minute here; an hour means it is stuck.
const RESTORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

fn parse_version_output(text: &str) -> Option<(ToolKind, (u32, u32, u32))> {
    let first = text.lines().next()?.trim();
    let (kind, rest) = if let Some(r) = first.strip_prefix("etcdutl version:") {
        (ToolKind::Etcdutl, r)
    } else if let Some(r) = first.strip_prefix("etcdctl version:") {
        (ToolKind::Etcdctl, r)
    } else {
        return None;
    };
    let mut parts = rest.trim().trim_start_matches('v').split('.');
    let mut num = || -> Option<u32> {
        let p = parts.next()?;
        p.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    Some((kind, (num()?, num()?, num().unwrap_or(0))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_both_tools_parse() {
        assert_eq!(
            parse_version_output("etcdutl version: 3.5.16\nAPI version: 3.5\n"),
            Some((ToolKind::Etcdutl, (3, 5, 16)))
        );
        assert_eq!(
            parse_version_output("etcdctl version: 3.4.30\nAPI version: 3.4\n"),
            Some((ToolKind::Etcdctl, (3, 4, 30)))
        );
        assert_eq!(
            parse_version_output("etcdutl version: 3.6.0-rc.1\n"),
            Some((ToolKind::Etcdutl, (3, 6, 0)))
        );
        assert_eq!(parse_version_output("etcd Version: 3.5.16\n"), None);
        assert_eq!(parse_version_output(""), None);
    }

    #[test]
    fn bump_needs_etcdutl_3_5_10() {
        let t = |kind, version| RestoreTool {
            path: "x".into(),
            kind,
            version,
        };
        assert!(t(ToolKind::Etcdutl, (3, 5, 10)).can_bump_revision());
        assert!(t(ToolKind::Etcdutl, (3, 6, 0)).can_bump_revision());
        assert!(!t(ToolKind::Etcdutl, (3, 5, 9)).can_bump_revision());
        assert!(!t(ToolKind::Etcdctl, (3, 5, 16)).can_bump_revision());
    }
}
