//! The node tools `lifeboat upgrade` drives: kubeadm, kubectl, systemctl and the package
//! manager. Every call is logged; outputs lifeboat depends on are parsed here, in one place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::version::KubeVersion;
use super::UpgradeError;
use crate::process::on_path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageKind {
    Apt,
    Dnf,
    Yum,
}

/// Paths of the tools; `None` entries are looked up on PATH.
#[derive(Debug, Clone, Default)]
pub struct ToolPaths {
    pub kubeadm: Option<PathBuf>,
    pub kubectl: Option<PathBuf>,
    pub systemctl: Option<PathBuf>,
    /// `apt`, `dnf`, `yum` or `auto`.
    pub package_manager: Option<String>,
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Tools {
    pub kubeadm: PathBuf,
    pub kubectl: PathBuf,
    pub systemctl: PathBuf,
    pub packages: PackageKind,
    pub kubeconfig: Option<PathBuf>,
}

fn find(name: &str, configured: Option<&PathBuf>) -> Result<PathBuf, UpgradeError> {
    if let Some(p) = configured {
        return Ok(p.clone());
    }
    on_path(name).ok_or_else(|| UpgradeError::Tool {
        detail: format!("{name} is not on PATH: install it or set [upgrade] {name} in the config"),
    })
}

impl Tools {
    /// # Errors
    /// A tool that cannot be found.
    pub fn find(paths: &ToolPaths) -> Result<Tools, UpgradeError> {
        let packages = match paths.package_manager.as_deref().unwrap_or("auto") {
            "apt" => PackageKind::Apt,
            "dnf" => PackageKind::Dnf,
            "yum" => PackageKind::Yum,
            _ => {
                if on_path("apt-get").is_some() {
                    PackageKind::Apt
                } else if on_path("dnf").is_some() {
                    PackageKind::Dnf
                } else if on_path("yum").is_some() {
                    PackageKind::Yum
                } else {
                    return Err(UpgradeError::Tool {
                        detail: "no package manager found (apt-get, dnf or yum): set [upgrade] package_manager".into(),
                    });
                }
            }
        };
        Ok(Tools {
            kubeadm: find("kubeadm", paths.kubeadm.as_ref())?,
            kubectl: find("kubectl", paths.kubectl.as_ref())?,
            systemctl: find("systemctl", paths.systemctl.as_ref())?,
            packages,
            kubeconfig: paths.kubeconfig.clone(),
        })
    }

    pub fn kubeadm(&self, args: &[&str]) -> Vec<String> {
        argv(&self.kubeadm, args)
    }

    pub fn kubectl(&self, args: &[&str]) -> Vec<String> {
        let mut v = vec![self.kubectl.display().to_string()];
        if let Some(k) = &self.kubeconfig {
            v.push(format!("--kubeconfig={}", k.display()));
        }
        v.extend(args.iter().map(|s| (*s).to_string()));
        v
    }

    /// `kubectl` reading kubeadm's ClusterConfiguration from its ConfigMap.
    pub fn cluster_configuration(&self) -> Vec<String> {
        crate::kit::cluster_configuration_command(&self.kubectl, self.kubeconfig.as_deref())
    }

    pub fn systemctl(&self, args: &[&str]) -> Vec<String> {
        argv(&self.systemctl, args)
    }

    /// The commands that upgrade `packages` to `version` and keep them pinned there.
    pub fn install(&self, packages: &[&str], version: KubeVersion) -> Vec<Vec<String>> {
        let v = version.bare();
        match self.packages {
            PackageKind::Apt => {
                let mut unhold = vec!["apt-mark".to_string(), "unhold".into()];
                unhold.extend(packages.iter().map(|p| (*p).to_string()));
                let mut install = vec![
                    "apt-get".to_string(),
                    "install".into(),
                    "-y".into(),
                    "--allow-change-held-packages".into(),
                ];
                install.extend(packages.iter().map(|p| format!("{p}={v}-*")));
                let mut hold = vec!["apt-mark".to_string(), "hold".into()];
                hold.extend(packages.iter().map(|p| (*p).to_string()));
                vec![
                    unhold,
                    vec!["apt-get".into(), "update".into()],
                    install,
                    hold,
                ]
            }
            PackageKind::Dnf | PackageKind::Yum => {
                let tool = if self.packages == PackageKind::Dnf {
                    "dnf"
                } else {
                    "yum"
                };
                let mut install = vec![tool.to_string(), "install".into(), "-y".into()];
                install.extend(packages.iter().map(|p| format!("{p}-{v}")));
                install.push("--disableexcludes=kubernetes".into());
                vec![install]
            }
        }
    }
}

fn argv(program: &Path, args: &[&str]) -> Vec<String> {
    let mut v = vec![program.display().to_string()];
    v.extend(args.iter().map(|s| (*s).to_string()));
    v
}

/// Runs a command to completion within `timeout` (killed with its children when it passes);
/// stdout on success. Package managers run non-interactively.
///
/// # Errors
/// It cannot start, times out, or exits non-zero (its last stderr line in the message).
pub fn run(argv: &[String], timeout: Duration) -> Result<String, UpgradeError> {
    tracing::info!(command = %argv.join(" "), "running");
    crate::process::run(argv, &[("DEBIAN_FRONTEND", "noninteractive")], timeout)
        .map_err(UpgradeError::from)
}

/// `kubectl version -o json` → the server's version.
pub fn parse_server_version(json: &str) -> Option<KubeVersion> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    KubeVersion::parse(v["serverVersion"]["gitVersion"].as_str()?)
}

/// `kubernetesVersion:` in kubeadm's ClusterConfiguration.
pub fn parse_cluster_config_version(yaml: &str) -> Option<KubeVersion> {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix("kubernetesVersion:"))
        .and_then(KubeVersion::parse)
}

/// Every `kubeadm upgrade apply vX.Y.Z` that `kubeadm upgrade plan` suggests.
pub fn parse_plan_targets(plan: &str) -> Vec<KubeVersion> {
    plan.lines()
        .filter_map(|l| l.trim().strip_prefix("kubeadm upgrade apply "))
        .filter_map(KubeVersion::parse)
        .collect()
}

/// One row of `kubeadm certs check-expiration`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertExpiry {
    pub name: String,
    /// `None` when kubeadm prints `<invalid>` (expired).
    pub residual_days: Option<u64>,
}

/// Rows with a residual time (`364d`, `23h`, `9y`, `<invalid>`), CAs included.
pub fn parse_cert_expiry(out: &str) -> Vec<CertExpiry> {
    let mut rows = Vec::new();
    for line in out.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let Some(name) = cols.first() else { continue };
        if name.starts_with('[') || *name == "CERTIFICATE" {
            continue;
        }
        let residual = cols.iter().skip(1).find_map(|c| {
            if *c == "<invalid>" {
                return Some(None);
            }
            let (num, unit) = c.split_at(c.len().checked_sub(1)?);
            let n: u64 = num.parse().ok()?;
            match unit {
                "y" => Some(Some(n * 365)),
                "d" => Some(Some(n)),
                "h" | "m" | "s" => Some(Some(0)),
                _ => None,
            }
        });
        if let Some(residual_days) = residual {
            rows.push(CertExpiry {
                name: (*name).to_string(),
                residual_days,
            });
        }
    }
    rows
}

/// `kubectl get node NAME -o json` → (Ready, kubelet version).
pub fn parse_node(json: &str) -> Option<(bool, Option<KubeVersion>)> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let ready = v["status"]["conditions"]
        .as_array()?
        .iter()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    let version = v["status"]["nodeInfo"]["kubeletVersion"]
        .as_str()
        .and_then(KubeVersion::parse);
    Some((ready, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeadm_and_kubectl_outputs_parse() {
        assert_eq!(
            parse_server_version(
                r#"{"clientVersion":{"gitVersion":"v1.31.0"},"serverVersion":{"gitVersion":"v1.30.2"}}"#
            ),
            KubeVersion::parse("1.30.2")
        );
        assert_eq!(
            parse_cluster_config_version(
                "apiVersion: kubeadm.k8s.io/v1beta3\nkubernetesVersion: v1.30.2\n"
            ),
            KubeVersion::parse("1.30.2")
        );
        let plan = "Upgrade to the latest version in the v1.30 series:\n\nYou can now apply the upgrade by executing the following command:\n\n\tkubeadm upgrade apply v1.30.5\n\n_____\n\n\tkubeadm upgrade apply v1.31.1\n";
        assert_eq!(
            parse_plan_targets(plan),
            vec![
                KubeVersion::parse("1.30.5").unwrap(),
                KubeVersion::parse("1.31.1").unwrap()
            ]
        );
        let certs = "CERTIFICATE                EXPIRES                  RESIDUAL TIME   CERTIFICATE AUTHORITY   EXTERNALLY MANAGED\nadmin.conf                 Nov 21, 2027 10:00 UTC   364d            ca                      no\napiserver                  Dec 10, 2026 10:00 UTC   17d             ca                      no\netcd-peer                  Nov 20, 2026 10:00 UTC   <invalid>       etcd-ca                 no\n\nCERTIFICATE AUTHORITY   EXPIRES                  RESIDUAL TIME   EXTERNALLY MANAGED\nca                      Nov 19, 2035 10:00 UTC   9y              no\n";
        let rows = parse_cert_expiry(certs);
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert_eq!(
            rows[1],
            CertExpiry {
                name: "apiserver".into(),
                residual_days: Some(17)
            }
        );
        assert_eq!(rows[2].residual_days, None);
        assert_eq!(rows[3].residual_days, Some(9 * 365));
        let node = r#"{"status":{"conditions":[{"type":"Ready","status":"True"}],"nodeInfo":{"kubeletVersion":"v1.31.0"}}}"#;
        assert_eq!(parse_node(node), Some((true, KubeVersion::parse("1.31.0"))));
    }

    #[test]
    fn packages_are_pinned_with_apt_and_versioned_with_dnf() {
        let mut t = Tools {
            kubeadm: "kubeadm".into(),
            kubectl: "kubectl".into(),
            systemctl: "systemctl".into(),
            packages: PackageKind::Apt,
            kubeconfig: Some("/etc/kubernetes/admin.conf".into()),
        };
        let v = KubeVersion::parse("1.31.2").unwrap();
        let apt = t.install(&["kubelet", "kubectl"], v);
        assert_eq!(apt[0], ["apt-mark", "unhold", "kubelet", "kubectl"]);
        assert_eq!(apt[2].last().unwrap(), "kubectl=1.31.2-*");
        assert_eq!(apt[3], ["apt-mark", "hold", "kubelet", "kubectl"]);
        t.packages = PackageKind::Dnf;
        assert_eq!(
            t.install(&["kubeadm"], v),
            vec![vec![
                "dnf",
                "install",
                "-y",
                "kubeadm-1.31.2",
                "--disableexcludes=kubernetes"
            ]]
        );
        assert_eq!(
            t.kubectl(&["uncordon", "n"])[1],
            "--kubeconfig=/etc/kubernetes/admin.conf"
        );
    }
}
