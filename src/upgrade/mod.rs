//! `lifeboat upgrade`: drive kubeadm only behind a fresh, verified, off-node snapshot.
//!
//! Preflight (read-only) → the gate (control-plane nodes: a fresh pre-upgrade backup committed
//! to the store, or one younger than `--max-snapshot-age` whose object still matches its
//! manifest, plus an encrypted node bundle) → the node's steps, each journaled so `--resume`
//! continues at the step that failed. Nothing that changes the node runs before the gate
//! passed; on failure the node stays cordoned and the recovery commands are printed.

pub mod bundle;
pub mod preflight;
pub mod tools;
pub mod version;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backup::{take_backup, BackupSettings};
use crate::catalog::{Catalog, Manifest, Reason};
use crate::etcd::{EtcdSettings, EtcdSource};
use crate::fsutil;
use crate::store::Store;
pub use preflight::{Check, Severity};
use tools::Tools;
use version::KubeVersion;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrade refused, nothing changed: {reason}")]
    Refused { reason: String },
    #[error("the gate refused, kubeadm was not run: {reason}")]
    Gate { reason: String },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{detail}")]
    Tool { detail: String },
    #[error(
        "step {step} failed: {detail}; the node stays cordoned — see the recovery commands above"
    )]
    Step { step: String, detail: String },
    #[error("journal {path}: {detail}")]
    Journal { path: PathBuf, detail: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    FirstControlPlane,
    ControlPlane,
    Worker,
}

impl Role {
    pub fn is_control_plane(self) -> bool {
        self != Role::Worker
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::FirstControlPlane => "first-control-plane",
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        }
    }
}

/// How the run should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Preflight and the plan; nothing runs that changes anything.
    DryRun,
    /// As dry run, then refuse: `--yes` was not given.
    PlanOnly,
    Execute,
}

#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    pub to: KubeVersion,
    /// `None`: detect (kube-apiserver.yaml present → control plane; the cluster's kubeadm
    /// configuration still older than the target → the first one).
    pub role: Option<Role>,
    pub node: String,
    /// `/etc/kubernetes`.
    pub kubernetes_dir: PathBuf,
    pub state_dir: PathBuf,
    pub max_snapshot_age: Duration,
    pub allow_local_backup: bool,
    pub drain_timeout: Duration,
    pub ready_timeout: Duration,
    pub command_timeout: Duration,
    pub keep_kubeadm_backups: usize,
}

/// What the gate needs on control-plane nodes.
pub struct GateInputs {
    pub etcd: EtcdSettings,
    pub store: Arc<dyn Store>,
    pub store_is_local: bool,
    pub backup: BackupSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateResult {
    pub backup_id: String,
    pub reused: bool,
    pub created_at: DateTime<Utc>,
    pub bundle_key: String,
    pub store: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Gate,
    UpgradeKubeadm,
    #[serde(rename = "kubeadm-upgrade-plan")]
    UpgradePlan,
    KubeadmUpgrade,
    Drain,
    #[serde(rename = "upgrade-kubelet-kubectl")]
    UpgradeKubelet,
    DaemonReload,
    RestartKubelet,
    WaitReady,
    Uncordon,
}

impl Step {
    /// The name in logs, the journal and JSON (the serde names match).
    pub fn name(self) -> &'static str {
        match self {
            Step::Gate => "gate",
            Step::UpgradeKubeadm => "upgrade-kubeadm",
            Step::UpgradePlan => "kubeadm-upgrade-plan",
            Step::KubeadmUpgrade => "kubeadm-upgrade",
            Step::Drain => "drain",
            Step::UpgradeKubelet => "upgrade-kubelet-kubectl",
            Step::DaemonReload => "daemon-reload",
            Step::RestartKubelet => "restart-kubelet",
            Step::WaitReady => "wait-ready",
            Step::Uncordon => "uncordon",
        }
    }

    /// The node's steps, in order.
    pub fn for_role(role: Role) -> Vec<Step> {
        let mut v = Vec::new();
        if role.is_control_plane() {
            v.push(Step::Gate);
        }
        v.push(Step::UpgradeKubeadm);
        if role == Role::FirstControlPlane {
            v.push(Step::UpgradePlan);
        }
        v.extend([
            Step::KubeadmUpgrade,
            Step::Drain,
            Step::UpgradeKubelet,
            Step::DaemonReload,
            Step::RestartKubelet,
            Step::WaitReady,
            Step::Uncordon,
        ]);
        v
    }
}

/// The upgrade journal: `<state-dir>/upgrade/journal.json` while a run is unfinished.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    pub to: KubeVersion,
    pub role: Role,
    pub node: String,
    pub started_at: DateTime<Utc>,
    pub done: Vec<Step>,
    pub failed: Option<Step>,
    pub gate: Option<GateResult>,
}

fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join("upgrade").join("journal.json")
}

/// # Errors
/// An unreadable journal.
pub fn load_journal(state_dir: &Path) -> Result<Option<Journal>, UpgradeError> {
    let path = journal_path(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| UpgradeError::Journal {
                path,
                detail: format!("not a journal lifeboat can read: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(UpgradeError::Journal {
            path,
            detail: e.to_string(),
        }),
    }
}

fn save_journal(state_dir: &Path, j: &Journal) -> Result<(), UpgradeError> {
    let path = journal_path(state_dir);
    let err = |e: std::io::Error| UpgradeError::Journal {
        path: path.clone(),
        detail: e.to_string(),
    };
    fsutil::create_private_dir(&fsutil::parent_of(&path)).map_err(err)?;
    let json = serde_json::to_vec_pretty(j).map_err(|e| UpgradeError::Journal {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    fsutil::write_atomic(&path, &json).map_err(err)
}

fn close_journal(state_dir: &Path, j: &Journal) -> Result<(), UpgradeError> {
    save_journal(state_dir, j)?;
    let from = journal_path(state_dir);
    let to = from.with_file_name(format!(
        "journal-{}-{}.json",
        j.to,
        Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    fsutil::durable_rename(&from, &to).map_err(|e| UpgradeError::Journal {
        path: to,
        detail: e.to_string(),
    })
}

/// One step as it ran.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: Step,
    pub commands: Vec<String>,
    pub duration_ms: u64,
    pub status: String,
}

/// Everything the run found and did, for the summary and `-w json`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub to: Option<KubeVersion>,
    pub role: Option<Role>,
    pub node: String,
    pub checks: Vec<Check>,
    pub plan: Vec<String>,
    pub gate: Option<GateResult>,
    pub steps: Vec<StepReport>,
    pub result: String,
    pub recovery: Vec<String>,
    pub notes: Vec<String>,
}

/// Reports progress as it happens.
pub trait Observer: Send + Sync {
    fn check(&self, _check: &Check) {}
    fn step_started(&self, _step: Step, _commands: &[String]) {}
    fn step_done(&self, _step: Step, _took: Duration) {}
    fn note(&self, _message: &str) {}
}

/// Preflight, the gate and the node's steps (or only preflight and the plan).
///
/// # Errors
/// A failed preflight check or gate (nothing changed), or a failed step (journal kept; the
/// report's recovery commands say what to do). The report is returned inside the error path
/// too, through `report` being filled as far as the run got.
pub async fn upgrade(
    opts: &UpgradeOptions,
    tools: &Tools,
    gate: Option<&GateInputs>,
    mode: Mode,
    resume: bool,
    observer: &dyn Observer,
    report: &mut Report,
) -> Result<(), UpgradeError> {
    report.node = opts.node.clone();
    report.to = Some(opts.to);
    let mut journal = match (load_journal(&opts.state_dir)?, resume) {
        (Some(j), true) => {
            observer.note(&format!(
                "resuming the upgrade to {} on {} ({}): done so far: {}",
                j.to,
                j.node,
                j.role.name(),
                j.done.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
            ));
            j
        }
        (None, true) => {
            return Err(UpgradeError::Refused {
                reason: format!(
                    "there is no unfinished upgrade to resume (no {})",
                    journal_path(&opts.state_dir).display()
                ),
            })
        }
        (Some(j), false) => {
            return Err(UpgradeError::Refused {
                reason: format!(
                    "an unfinished upgrade to {} (failed at {}) has its journal at {}: continue it with `lifeboat upgrade --resume`",
                    j.to,
                    j.failed.map_or("?", Step::name),
                    journal_path(&opts.state_dir).display()
                ),
            })
        }
        (None, false) => {
            let (checks, role) = preflight::run(opts, tools, gate.map(|g| &g.etcd)).await;
            for c in &checks {
                observer.check(c);
            }
            report.checks = checks.clone();
            report.role = role;
            let failed: Vec<&Check> = checks
                .iter()
                .filter(|c| c.severity == Severity::Fail)
                .collect();
            let Some(role) = role else {
                return Err(UpgradeError::Refused {
                    reason: "the node's role could not be determined: pass --role".into(),
                });
            };
            report.plan = plan_lines(opts, tools, role);
            if !failed.is_empty() {
                return Err(UpgradeError::Refused {
                    reason: format!(
                        "preflight failed: {}",
                        failed
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            if role.is_control_plane() {
                let Some(g) = gate else {
                    return Err(UpgradeError::Refused {
                        reason: "a control-plane node needs a backup destination and recipients for the gate".into(),
                    });
                };
                if g.store_is_local && !opts.allow_local_backup {
                    return Err(UpgradeError::Gate {
                        reason: format!(
                            "the backup destination {} is a folder on this node, which dies with it: use an off-node store (--dest s3://…) or say --allow-local-backup",
                            g.store.location()
                        ),
                    });
                }
            }
            match mode {
                Mode::DryRun => {
                    report.result = "dry-run".into();
                    return Ok(());
                }
                Mode::PlanOnly => {
                    report.result = "planned".into();
                    return Err(UpgradeError::Refused {
                        reason: "add --yes to carry out this plan".into(),
                    });
                }
                Mode::Execute => {}
            }
            Journal {
                version: 1,
                to: opts.to,
                role,
                node: opts.node.clone(),
                started_at: Utc::now(),
                done: Vec::new(),
                failed: None,
                gate: None,
            }
        }
    };
    report.role = Some(journal.role);
    report.to = Some(journal.to);
    let opts = UpgradeOptions {
        to: journal.to,
        node: journal.node.clone(),
        ..opts.clone()
    };
    save_journal(&opts.state_dir, &journal)?;
    for step in Step::for_role(journal.role) {
        if journal.done.contains(&step) {
            continue;
        }
        let started = Instant::now();
        let commands = step_commands(step, &opts, tools, journal.role);
        observer.step_started(step, &commands);
        let outcome = run_step(step, &opts, tools, gate, &mut journal, observer).await;
        let took = started.elapsed();
        report.steps.push(StepReport {
            step,
            commands: commands.clone(),
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            status: if outcome.is_ok() { "done" } else { "failed" }.into(),
        });
        if let Err(e) = outcome {
            report.result = "failed".into();
            // A failed gate changed nothing: no journal to resume from, nothing to recover.
            if step == Step::Gate {
                let _ = std::fs::remove_file(journal_path(&opts.state_dir));
                return Err(match e {
                    UpgradeError::Gate { .. } => e,
                    other => UpgradeError::Gate {
                        reason: other.to_string(),
                    },
                });
            }
            journal.failed = Some(step);
            save_journal(&opts.state_dir, &journal)?;
            report.gate = journal.gate.clone();
            report.recovery = recovery(&opts, &journal, step);
            return Err(UpgradeError::Step {
                step: step.name().into(),
                detail: e.to_string(),
            });
        }
        journal.done.push(step);
        journal.failed = None;
        save_journal(&opts.state_dir, &journal)?;
        observer.step_done(step, took);
    }
    report.gate = journal.gate.clone();
    close_journal(&opts.state_dir, &journal)?;
    report.result = "upgraded".into();
    report.notes = kubeadm_backup_note(&opts);
    Ok(())
}

fn plan_lines(opts: &UpgradeOptions, tools: &Tools, role: Role) -> Vec<String> {
    Step::for_role(role)
        .into_iter()
        .map(|s| {
            let cmds = step_commands(s, opts, tools, role);
            if cmds.is_empty() {
                s.name().to_string()
            } else {
                format!("{}: {}", s.name(), cmds.join(" && "))
            }
        })
        .collect()
}

/// What a step shows in the plan and the log: its command lines, or what it does.
fn step_commands(step: Step, opts: &UpgradeOptions, tools: &Tools, role: Role) -> Vec<String> {
    match step {
        Step::Gate => vec![format!(
            "pre-upgrade backup (fresh, or one younger than {}s that verifies) + encrypted node bundle",
            opts.max_snapshot_age.as_secs()
        )],
        Step::WaitReady => vec![format!(
            "wait until node {} is Ready at {} (up to {}s)",
            opts.node,
            opts.to,
            opts.ready_timeout.as_secs()
        )],
        _ => step_argvs(step, opts, tools, role)
            .into_iter()
            .map(|c| c.join(" "))
            .collect(),
    }
}

/// The commands a step runs (none for the gate and the readiness wait, which lifeboat does).
fn step_argvs(step: Step, opts: &UpgradeOptions, tools: &Tools, role: Role) -> Vec<Vec<String>> {
    let to = opts.to.to_string();
    match step {
        Step::Gate | Step::WaitReady => Vec::new(),
        Step::UpgradeKubeadm => tools.install(&["kubeadm"], opts.to),
        Step::UpgradePlan => vec![tools.kubeadm(&["upgrade", "plan"])],
        Step::KubeadmUpgrade => match role {
            Role::FirstControlPlane => vec![tools.kubeadm(&["upgrade", "apply", &to, "--yes"])],
            _ => vec![tools.kubeadm(&["upgrade", "node"])],
        },
        Step::Drain => vec![tools.kubectl(&[
            "drain",
            &opts.node,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            &format!("--timeout={}s", opts.drain_timeout.as_secs()),
        ])],
        Step::UpgradeKubelet => tools.install(&["kubelet", "kubectl"], opts.to),
        Step::DaemonReload => vec![tools.systemctl(&["daemon-reload"])],
        Step::RestartKubelet => vec![tools.systemctl(&["restart", "kubelet"])],
        Step::Uncordon => vec![tools.kubectl(&["uncordon", &opts.node])],
    }
}

async fn run_step(
    step: Step,
    opts: &UpgradeOptions,
    tools: &Tools,
    gate: Option<&GateInputs>,
    journal: &mut Journal,
    observer: &dyn Observer,
) -> Result<(), UpgradeError> {
    match step {
        Step::Gate => {
            let g = gate.ok_or_else(|| UpgradeError::Gate {
                reason: "no backup destination configured".into(),
            })?;
            let result = run_gate(opts, tools, g, observer).await?;
            journal.gate = Some(result);
            Ok(())
        }
        Step::WaitReady => wait_ready(opts, tools).await,
        _ => {
            // kubectl drain has its own --timeout; give it room to report before killing it.
            let timeout = if step == Step::Drain {
                opts.drain_timeout + Duration::from_secs(30)
            } else {
                opts.command_timeout
            };
            run_blocking(step_argvs(step, opts, tools, journal.role), timeout).await
        }
    }
}

async fn run_blocking(argvs: Vec<Vec<String>>, timeout: Duration) -> Result<(), UpgradeError> {
    tokio::task::spawn_blocking(move || {
        for argv in &argvs {
            let out = tools::run(argv, timeout)?;
            for line in out.lines().filter(|l| !l.trim().is_empty()) {
                tracing::info!(command = %argv[0], "{line}");
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| UpgradeError::Tool {
        detail: format!("command thread: {e}"),
    })?
}

async fn wait_ready(opts: &UpgradeOptions, tools: &Tools) -> Result<(), UpgradeError> {
    let deadline = Instant::now() + opts.ready_timeout;
    let argv = tools.kubectl(&["get", "node", &opts.node, "-o", "json"]);
    loop {
        let argv_c = argv.clone();
        let out = tokio::task::spawn_blocking(move || tools::run(&argv_c, Duration::from_secs(30)))
            .await
            .map_err(|e| UpgradeError::Tool {
                detail: e.to_string(),
            })?;
        let last = match out.as_deref().map(tools::parse_node) {
            Ok(Some((true, Some(v)))) if v == opts.to => return Ok(()),
            Ok(Some((ready, v))) => format!(
                "node {} is {} at {}",
                opts.node,
                if ready { "Ready" } else { "NotReady" },
                v.map_or("an unknown version".into(), |v| v.to_string())
            ),
            Ok(None) => "kubectl printed no node".into(),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(UpgradeError::Tool {
                detail: format!(
                    "{last} after {}s; expected Ready at {}",
                    opts.ready_timeout.as_secs(),
                    opts.to
                ),
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn run_gate(
    opts: &UpgradeOptions,
    tools: &Tools,
    g: &GateInputs,
    observer: &dyn Observer,
) -> Result<GateResult, UpgradeError> {
    let gate_err = |reason: String| UpgradeError::Gate { reason };
    let mut source = EtcdSource::connect_first(&g.etcd)
        .await
        .map_err(|e| gate_err(format!("cannot reach etcd for the pre-upgrade backup: {e}")))?;
    let facts = source
        .member_facts()
        .await
        .map_err(|e| gate_err(format!("etcd: {e}")))?;
    let cluster = format!("{:x}", facts.cluster_id);
    let catalog = Catalog::new(g.store.clone());
    let recent = recent_verified_backup(&catalog, &cluster, opts.max_snapshot_age).await;
    let (manifest, reused) = match recent {
        Some(m) => {
            observer.note(&format!(
                "using backup {} ({}s old, its object matches its manifest)",
                m.id,
                (Utc::now() - m.created_at).num_seconds()
            ));
            (m, true)
        }
        None => {
            observer.note("taking a fresh pre-upgrade backup");
            let settings = BackupSettings {
                reason: Reason::PreUpgrade,
                ..g.backup.clone()
            };
            let cancel = tokio_util::sync::CancellationToken::new();
            let m = take_backup(
                &mut source,
                g.store.clone(),
                &settings,
                Arc::new(crate::progress::Silent),
                &cancel,
            )
            .await
            .map_err(|e| gate_err(format!("the pre-upgrade backup failed: {e}")))?;
            (m, false)
        }
    };
    let bundle_key = bundle::save(
        &g.store,
        &manifest,
        &opts.node,
        &opts.kubernetes_dir,
        tools,
        g.backup.recipients.as_ref(),
    )
    .await
    .map_err(|e| gate_err(format!("the node bundle: {e}")))?;
    observer.note(&format!(
        "backup {} and node bundle {} are in {}",
        manifest.id,
        bundle_key,
        g.store.location()
    ));
    Ok(GateResult {
        backup_id: manifest.id.clone(),
        reused,
        created_at: manifest.created_at,
        bundle_key,
        store: g.store.location(),
    })
}

/// The newest backup of `cluster` younger than `max_age` whose object still has the size and
/// sha256 its manifest records.
async fn recent_verified_backup(
    catalog: &Catalog,
    cluster: &str,
    max_age: Duration,
) -> Option<Manifest> {
    let (manifests, _) = catalog.list().await.ok()?;
    let now = Utc::now();
    let m = manifests.into_iter().find(|m| {
        m.cluster_id == cluster
            && (now - m.created_at)
                .to_std()
                .is_ok_and(|age| age <= max_age)
    })?;
    object_matches(catalog.store().as_ref(), &m)
        .await
        .then_some(m)
}

async fn object_matches(store: &dyn Store, m: &Manifest) -> bool {
    use futures::StreamExt;
    use sha2::{Digest, Sha256};
    let Ok(mut stream) = store.get(&m.object.key).await else {
        return false;
    };
    let mut h = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { return false };
        h.update(&chunk);
        size += chunk.len() as u64;
    }
    size == m.object.size && hex::encode(h.finalize()) == m.object.sha256
}

fn kubeadm_backup_dirs(opts: &UpgradeOptions) -> Vec<PathBuf> {
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

fn kubeadm_backup_note(opts: &UpgradeOptions) -> Vec<String> {
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

fn recovery(opts: &UpgradeOptions, journal: &Journal, failed: Step) -> Vec<String> {
    let mut out = vec![format!(
        "fix the cause, then continue from `{}`: lifeboat upgrade --resume (the node stays cordoned until uncordon runs)",
        failed.name()
    )];
    let dirs = kubeadm_backup_dirs(opts);
    if !dirs.is_empty() {
        out.push(format!(
            "kubeadm's own backups (etcd data and old manifests): {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(g) = &journal.gate {
        out.push(format!(
            "to return etcd to its state before the upgrade: lifeboat restore {} --dest {} --identity KEYFILE --yes --force (docs/restore.md)",
            g.backup_id, g.store
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_are_the_serialized_names() {
        for role in [Role::FirstControlPlane, Role::Worker] {
            for step in Step::for_role(role) {
                assert_eq!(
                    serde_json::to_value(step).unwrap(),
                    serde_json::Value::String(step.name().into())
                );
            }
        }
    }
}
