//! Preflight: every check runs before anything changes, and each failed one names itself and
//! how to fix it. Read-only commands only (`kubeadm version`, `kubectl get`, `kubeadm upgrade
//! plan`, `kubeadm certs check-expiration`) and etcd reads.

use std::time::Duration;

use serde::Serialize;

use super::etcd_path::{self, EtcdVersion, MemberVersion, TargetSource};
use super::tools::{self, Tools};
use super::version::{skew_violation, KubeVersion};
use super::{Role, UpgradeOptions};
use crate::etcd::{EtcdSettings, EtcdSource};

pub use crate::progress::Severity;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub severity: Severity,
    pub detail: String,
}

fn check(name: &str, severity: Severity, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        severity,
        detail: detail.into(),
    }
}

const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A database above this share of its quota may hit NOSPACE during the upgrade's writes.
const QUOTA_HEADROOM: f64 = 0.8;

async fn read(argv: Vec<String>) -> Result<String, super::UpgradeError> {
    match tokio::task::spawn_blocking(move || tools::run(&argv, READ_TIMEOUT)).await {
        Ok(out) => out,
        Err(e) => Err(super::UpgradeError::Tool {
            detail: format!("the task running a read-only command failed: {e}"),
        }),
    }
}

/// A role given with `--role` that the node contradicts: a worker upgrade skips the backup
/// gate, so it must never run on a node that has control-plane manifests.
fn role_mismatch(opts: &UpgradeOptions) -> Option<String> {
    let manifests = opts.kubernetes_dir.join("manifests");
    let present: Vec<&str> = ["kube-apiserver.yaml", "etcd.yaml"]
        .into_iter()
        .filter(|m| manifests.join(m).exists())
        .collect();
    match opts.role? {
        Role::Worker if !present.is_empty() => Some(format!(
            "--role worker, but {} has {}: this is a control-plane node, whose upgrade goes behind the backup gate; drop --role (or use control-plane)",
            manifests.display(),
            present.join(" and ")
        )),
        r if r.is_control_plane() && !present.contains(&"kube-apiserver.yaml") => Some(format!(
            "--role {}, but {} has no kube-apiserver.yaml: this is not a control-plane node; drop --role",
            r.name(),
            manifests.display()
        )),
        _ => None,
    }
}

/// What preflight found.
pub struct Preflight {
    pub checks: Vec<Check>,
    /// The node's role, when it could be determined.
    pub role: Option<Role>,
    /// The etcd the upgrade brings, where kubeadm runs etcd on this node.
    pub etcd_target: Option<EtcdVersion>,
}

/// Runs every check.
pub async fn run(opts: &UpgradeOptions, tools: &Tools, etcd: Option<&EtcdSettings>) -> Preflight {
    let mut checks = Vec::new();
    let mut etcd_target = None;
    match read(tools.kubeadm(&["version", "-o", "short"])).await {
        Ok(out) => checks.push(check(
            "kubeadm",
            Severity::Ok,
            format!("kubeadm {}", out.trim()),
        )),
        Err(e) => checks.push(check(
            "kubeadm",
            Severity::Fail,
            format!("{e}: install kubeadm or set [upgrade] kubeadm"),
        )),
    }
    let is_control_plane = opts
        .kubernetes_dir
        .join("manifests/kube-apiserver.yaml")
        .exists();
    let cluster_version = read(tools.cluster_configuration())
        .await
        .ok()
        .and_then(|y| tools::parse_cluster_config_version(&y));
    let server_version = read(tools.kubectl(&["version", "-o", "json"]))
        .await
        .ok()
        .and_then(|j| tools::parse_server_version(&j));
    let cluster = cluster_version.or(server_version);
    match cluster {
        Some(v) => checks.push(check("cluster-version", Severity::Ok, format!("the cluster runs {v}"))),
        None => checks.push(check(
            "cluster-version",
            Severity::Fail,
            "cannot read the cluster's version (kubectl version / the kubeadm-config ConfigMap): check the kubeconfig ([upgrade] kubeconfig)",
        )),
    }
    let node_version = read(tools.kubectl(&["get", "node", &opts.node, "-o", "json"]))
        .await
        .ok()
        .and_then(|j| tools::parse_node(&j))
        .and_then(|(_, v)| v);
    let role = opts.role.or(match (is_control_plane, cluster_version) {
        (false, _) => Some(Role::Worker),
        (true, Some(v)) if v < opts.to => Some(Role::FirstControlPlane),
        (true, Some(_)) => Some(Role::ControlPlane),
        (true, None) => None,
    });
    match (role, role_mismatch(opts)) {
        (_, Some(why)) => checks.push(check("role", Severity::Fail, why)),
        (Some(r), None) => checks.push(check("role", Severity::Ok, r.name())),
        (None, None) => {}
    }
    // The node's own version decides the skew; the first control plane also moves the cluster.
    let current = match (role, node_version, cluster) {
        (Some(Role::FirstControlPlane), n, Some(c)) => Some(n.map_or(c, |n| n.min(c))),
        (_, Some(n), _) => Some(n),
        (_, None, c) => c,
    };
    if let Some(current) = current {
        match skew_violation(current, opts.to) {
            Some(why) => checks.push(check("version-skew", Severity::Fail, why)),
            None => checks.push(check(
                "version-skew",
                Severity::Ok,
                format!("{current} → {}", opts.to),
            )),
        }
    }
    // Only the first control plane moves the cluster: the others' plan says "up to date".
    let plan = match role {
        Some(Role::FirstControlPlane) => Some(read(tools.kubeadm(&["upgrade", "plan"])).await),
        _ => None,
    };
    if let Some(plan) = &plan {
        checks.push(latest_patch(plan, current, opts.to));
    }
    if role.is_some_and(Role::is_control_plane) {
        match etcd {
            Some(settings) => {
                let (etcd_checks, members) = etcd_checks(settings, opts).await;
                checks.extend(etcd_checks);
                let plan = plan.as_ref().and_then(|p| p.as_deref().ok());
                let (path, target) = etcd_path(opts, plan, &members);
                checks.extend(path);
                etcd_target = target;
            }
            None => checks.push(check(
                "etcd",
                Severity::Fail,
                "no etcd connection configured",
            )),
        }
        checks.push(certificates(tools).await);
        checks.push(disk_for_kubeadm_backups(opts));
    }
    Preflight {
        checks,
        role,
        etcd_target,
    }
}

fn latest_patch(
    plan: &Result<String, super::UpgradeError>,
    current: Option<KubeVersion>,
    to: KubeVersion,
) -> Check {
    let Some(current) = current else {
        return check("latest-patch", Severity::Warn, "current version unknown");
    };
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            return check(
                "latest-patch",
                Severity::Warn,
                format!("kubeadm upgrade plan: {e}"),
            )
        }
    };
    let newest_same_minor = tools::parse_plan_targets(plan)
        .into_iter()
        .filter(|v| v.major == current.major && v.minor == current.minor)
        .max();
    match newest_same_minor {
        Some(latest) if to.minor > current.minor && latest > current => check(
            "latest-patch",
            Severity::Warn,
            format!("{current} is not the latest patch of its minor ({latest}): upgrading to {latest} first is the documented path"),
        ),
        _ => check("latest-patch", Severity::Ok, format!("{current} is the latest known patch")),
    }
}

/// The etcd step (#26): the etcd the upgrade brings against every member's version. Only
/// where kubeadm runs etcd as a static pod (an external etcd is not upgraded by kubeadm).
fn etcd_path(
    opts: &UpgradeOptions,
    plan: Option<&str>,
    members: &[MemberVersion],
) -> (Vec<Check>, Option<EtcdVersion>) {
    if !opts.kubernetes_dir.join("manifests/etcd.yaml").exists() {
        let ok = check(
            "etcd-path",
            Severity::Ok,
            "etcd is not a static pod on this node: kubeadm does not upgrade it",
        );
        return (vec![ok], None);
    }
    let (target, source) = etcd_path::target(plan, opts.to);
    if members.is_empty() {
        return (Vec::new(), Some(target)); // etcd-members failed already, naming why
    }
    let from = match source {
        TargetSource::Plan => "kubeadm upgrade plan",
        TargetSource::KubeadmConstants => "kubeadm's etcd line for that release",
    };
    let blocked = etcd_path::blocked_members(members, target);
    if blocked.is_empty() {
        let running: Vec<String> = members
            .iter()
            .filter_map(|m| m.version.map(|v| v.to_string()))
            .collect();
        let ok = check(
            "etcd-path",
            Severity::Ok,
            format!(
                "{} brings etcd {target} ({from}); the members run {}",
                opts.to,
                running.join(", ")
            ),
        );
        return (vec![ok], Some(target));
    }
    let failed = blocked
        .into_iter()
        .map(|(name, why)| check(&format!("etcd-path {name}"), Severity::Fail, why))
        .collect();
    (failed, Some(target))
}

async fn etcd_checks(
    settings: &EtcdSettings,
    opts: &UpgradeOptions,
) -> (Vec<Check>, Vec<MemberVersion>) {
    let mut out = Vec::new();
    let mut versions = Vec::new();
    let mut source = match EtcdSource::connect_first(settings).await {
        Ok(s) => s,
        Err(e) => {
            out.push(check("etcd", Severity::Fail, format!("{e}")));
            return (out, versions);
        }
    };
    let mut client = source.client();
    let members = match client.member_list().await {
        Ok(m) => m,
        Err(e) => {
            out.push(check(
                "etcd-members",
                Severity::Fail,
                format!("member list: {e}: etcd has no quorum?"),
            ));
            return (out, versions);
        }
    };
    let mut problems = Vec::new();
    let mut leader = 0;
    for m in members.members() {
        if m.name().is_empty() || m.client_urls().is_empty() {
            problems.push(format!("member {:x} was added but never started", m.id()));
            continue;
        }
        let url = &m.client_urls()[0];
        let status = match EtcdSource::connect(settings, url).await {
            Ok(mut s) => s.status().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match &status {
            Ok(st) => leader = leader.max(st.leader),
            Err(e) => problems.push(format!("{} ({url}): {e}", m.name())),
        }
        versions.push(MemberVersion {
            name: m.name().to_string(),
            endpoint: url.clone(),
            version: status.ok().and_then(|st| EtcdVersion::parse(&st.version)),
        });
    }
    out.push(if problems.is_empty() {
        check(
            "etcd-members",
            Severity::Ok,
            format!(
                "{} members, all started and answering",
                members.members().len()
            ),
        )
    } else {
        check(
            "etcd-members",
            Severity::Fail,
            format!("{}: repair etcd before upgrading", problems.join("; ")),
        )
    });
    out.push(if leader != 0 {
        check("etcd-leader", Severity::Ok, format!("leader {leader:x}"))
    } else {
        check(
            "etcd-leader",
            Severity::Fail,
            "no member knows a leader: etcd has lost quorum",
        )
    });
    match client
        .alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None)
        .await
    {
        Ok(a) if a.alarms().is_empty() => out.push(check("etcd-alarms", Severity::Ok, "none")),
        Ok(a) => out.push(check(
            "etcd-alarms",
            Severity::Fail,
            format!(
                "{} alarm(s) raised ({:?}): free space (compact + defrag) and `etcdctl alarm disarm`",
                a.alarms().len(),
                a.alarms().iter().map(|m| m.alarm()).collect::<Vec<_>>()
            ),
        )),
        Err(e) => out.push(check("etcd-alarms", Severity::Fail, format!("alarm list: {e}"))),
    }
    let quota = quota_from_manifest(opts);
    match source.member_facts().await {
        Ok(f) => {
            let share = f.db_size as f64 / quota as f64;
            out.push(if share < QUOTA_HEADROOM {
                check(
                    "etcd-db-size",
                    Severity::Ok,
                    format!("{} MiB of a {} MiB quota", f.db_size >> 20, quota >> 20),
                )
            } else {
                check(
                    "etcd-db-size",
                    Severity::Fail,
                    format!(
                        "{} MiB is {:.0} % of the {} MiB quota: compact and defragment first",
                        f.db_size >> 20,
                        share * 100.0,
                        quota >> 20
                    ),
                )
            });
        }
        Err(e) => out.push(check("etcd-db-size", Severity::Fail, e.to_string())),
    }
    (out, versions)
}

fn quota_from_manifest(opts: &UpgradeOptions) -> u64 {
    let path = opts.kubernetes_dir.join("manifests/etcd.yaml");
    crate::etcd::discovery::discover(&path)
        .ok()
        .flatten()
        .map_or(crate::etcd::discovery::DEFAULT_QUOTA, |k| k.quota())
}

async fn certificates(tools: &Tools) -> Check {
    let out = match read(tools.kubeadm(&["certs", "check-expiration"])).await {
        Ok(o) => o,
        Err(e) => {
            return check(
                "certificates",
                Severity::Warn,
                format!("kubeadm certs check-expiration: {e}"),
            )
        }
    };
    let rows = tools::parse_cert_expiry(&out);
    let soon: Vec<String> = rows
        .iter()
        .filter(|r| r.residual_days.is_none_or(|d| d < 30))
        .map(|r| match r.residual_days {
            Some(d) => format!("{} ({d}d)", r.name),
            None => format!("{} (expired)", r.name),
        })
        .collect();
    if soon.is_empty() {
        check(
            "certificates",
            Severity::Ok,
            format!("{} certificates, none expiring within 30 days", rows.len()),
        )
    } else {
        check(
            "certificates",
            Severity::Warn,
            format!("expiring within 30 days: {} (kubeadm upgrade renews the leaf certificates; CAs need `kubeadm certs renew` by hand)", soon.join(", ")),
        )
    }
}

fn disk_for_kubeadm_backups(opts: &UpgradeOptions) -> Check {
    let data_dir =
        crate::etcd::discovery::discover(&opts.kubernetes_dir.join("manifests/etcd.yaml"))
            .ok()
            .flatten()
            .map(|k| k.data_dir);
    let needed = data_dir.as_deref().map_or(0, dir_size) + (16 << 20);
    // kubeadm copies the etcd data dir and the manifests into <kubernetes-dir>/tmp.
    match crate::fsutil::free_bytes(&opts.kubernetes_dir) {
        Ok(free) if free > needed + needed / 5 => check(
            "disk",
            Severity::Ok,
            format!("{} MiB free for kubeadm's backup copies (needs ~{} MiB)", free >> 20, needed >> 20),
        ),
        Ok(free) => check(
            "disk",
            Severity::Fail,
            format!(
                "{} MiB free on {} but kubeadm's backup copies need ~{} MiB: free space (old {}/tmp/kubeadm-backup-* folders?)",
                free >> 20,
                opts.kubernetes_dir.display(),
                needed >> 20,
                opts.kubernetes_dir.display()
            ),
        ),
        Err(e) => check("disk", Severity::Warn, format!("{}: {e}", opts.kubernetes_dir.display())),
    }
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_size(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}
