//! One function per upgrade step: the commands each runs (the same argvs the plan shows) and
//! the two steps lifeboat does itself (the gate, the wait for the node to be Ready).

use std::time::{Duration, Instant};

use super::etcd_path::EtcdVersion;
use super::gate::run_gate;
use super::tools::{self, Tools};
use super::{GateInputs, Journal, Role, Step, UpgradeError, UpgradeOptions};
use crate::etcd::health::{verify_cluster, Wanted};
use crate::progress::Observer;

/// What a step shows in the plan and the log: its command lines, or what it does.
pub(super) fn step_commands(
    step: Step,
    opts: &UpgradeOptions,
    tools: &Tools,
    role: Role,
    etcd_target: Option<EtcdVersion>,
) -> Vec<String> {
    match step {
        Step::Gate => vec![format!(
            "pre-upgrade backup (fresh, or one younger than {}s that verifies) + the node's control-plane kit",
            opts.max_snapshot_age.as_secs()
        )],
        Step::WaitReady => vec![format!(
            "wait until node {} is Ready at {} (up to {}s)",
            opts.node,
            opts.to,
            opts.ready_timeout.as_secs()
        )],
        Step::EtcdPostflight => vec![format!(
            "wait until every etcd member is healthy{} with HashKV equal at one revision (up to {}s)",
            etcd_target.map_or(String::new(), |t| format!(" on etcd {t}+")),
            opts.etcd_ready_timeout.as_secs()
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
        Step::Gate | Step::WaitReady | Step::EtcdPostflight => Vec::new(),
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

pub(super) async fn run_step(
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
            let result = run_gate(opts, g, journal.etcd_target, observer).await?;
            journal.gate = Some(result);
            Ok(())
        }
        Step::WaitReady => wait_ready(opts, tools).await,
        Step::EtcdPostflight => {
            let g = gate.ok_or_else(|| UpgradeError::Tool {
                detail: "no etcd connection configured for the post-flight".into(),
            })?;
            postflight(opts, g, journal.etcd_target, observer).await
        }
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

/// #26: the node's etcd came back on the etcd the upgrade brings, and the cluster is whole.
async fn postflight(
    opts: &UpgradeOptions,
    g: &GateInputs,
    etcd_target: Option<EtcdVersion>,
    observer: &dyn Observer,
) -> Result<(), UpgradeError> {
    let wanted = Wanted {
        version: etcd_target,
        timeout: opts.etcd_ready_timeout,
    };
    let health = verify_cluster(&g.etcd, wanted)
        .await
        .map_err(|e| UpgradeError::Tool {
            detail: e.to_string(),
        })?;
    let versions: Vec<String> = health
        .answers
        .iter()
        .map(|a| format!("{} {}", a.member.name, a.status.version))
        .collect();
    observer.note(&format!(
        "etcd post-flight: {} healthy, HashKV equal at revision {}",
        versions.join(", "),
        health.revision
    ));
    Ok(())
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
