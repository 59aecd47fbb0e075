//! Preflight and the plan: every check and every refusal, before anything on the node
//! changes. What comes out is the journal of a run that may start.

use chrono::Utc;

use super::preflight;
use super::steps::step_commands;
use super::tools::Tools;
use super::{
    Check, GateInputs, Journal, Mode, Report, Role, Severity, Step, UpgradeError, UpgradeOptions,
};
use crate::progress::Observer;

/// Runs preflight and decides the plan. `Ok(None)`: a dry run, done.
///
/// # Errors
/// A failed check, an unknown role, a gate that cannot pass (no destination, a folder on this
/// node), or no `--yes`.
pub(super) async fn plan(
    opts: &UpgradeOptions,
    tools: &Tools,
    gate: Option<&GateInputs>,
    mode: Mode,
    observer: &dyn Observer,
    report: &mut Report,
) -> Result<Option<Journal>, UpgradeError> {
    let preflight::Preflight {
        checks,
        role,
        etcd_target,
    } = preflight::run(opts, tools, gate.map(|g| &g.etcd)).await;
    for c in &checks {
        observer.check(c.severity, &c.name, &c.detail);
    }
    report.checks = checks.clone();
    report.role = role;
    let Some(role) = role else {
        return Err(UpgradeError::Refused {
            reason: "the node's role could not be determined: pass --role".into(),
        });
    };
    report.plan = plan_lines(opts, tools, role, etcd_target);
    refuse_failed_checks(&checks)?;
    if role.is_control_plane() {
        check_gate_can_pass(opts, gate)?;
    }
    match mode {
        Mode::DryRun => {
            report.result = "dry-run".into();
            return Ok(None);
        }
        Mode::PlanOnly => {
            report.result = "planned".into();
            return Err(UpgradeError::Refused {
                reason: "add --yes to carry out this plan".into(),
            });
        }
        Mode::Execute => {}
    }
    Ok(Some(Journal {
        version: 1,
        to: opts.to,
        role,
        node: opts.node.clone(),
        started_at: Utc::now(),
        done: Vec::new(),
        failed: None,
        gate: None,
        etcd_target,
    }))
}

fn refuse_failed_checks(checks: &[Check]) -> Result<(), UpgradeError> {
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.severity == Severity::Fail)
        .map(|c| c.name.as_str())
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(UpgradeError::Refused {
        reason: format!("preflight failed: {}", failed.join(", ")),
    })
}

fn check_gate_can_pass(
    opts: &UpgradeOptions,
    gate: Option<&GateInputs>,
) -> Result<(), UpgradeError> {
    let Some(g) = gate else {
        return Err(UpgradeError::Refused {
            reason: "a control-plane node needs a backup destination and recipients for the gate"
                .into(),
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
    Ok(())
}

fn plan_lines(
    opts: &UpgradeOptions,
    tools: &Tools,
    role: Role,
    etcd_target: Option<super::etcd_path::EtcdVersion>,
) -> Vec<String> {
    Step::for_role(role)
        .into_iter()
        .map(|s| {
            let cmds = step_commands(s, opts, tools, role, etcd_target);
            if cmds.is_empty() {
                s.name().to_string()
            } else {
                format!("{}: {}", s.name(), cmds.join(" && "))
            }
        })
        .collect()
}
