//! Running an upgrade: under the run lock, a new run (preflight, plan) or the unfinished one
//! (`--resume`), then each step not done yet, journaled; a failure leaves the journal and
//! prints the recovery commands.

use std::time::Instant;

use super::journal::{
    close_journal, discard_journal, journal_path, load_journal, lock, save_journal,
};
use super::kubeadm_backups::{kubeadm_backup_dirs, kubeadm_backup_note};
use super::plan::plan;
use super::steps::{run_step, step_commands};
use super::tools::Tools;
use super::{GateInputs, Journal, Mode, Report, Step, StepReport, UpgradeError, UpgradeOptions};
use crate::progress::Observer;

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
    let _lock = lock(&opts.state_dir)?;
    let journal = match (load_journal(&opts.state_dir)?, resume) {
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
        (None, false) => match plan(opts, tools, gate, mode, observer, report).await? {
            Some(j) => j,
            None => return Ok(()),
        },
    };
    run_steps(opts, tools, gate, journal, observer, report).await
}

/// Every step of the role not done yet, in order, the journal saved after each.
async fn run_steps(
    opts: &UpgradeOptions,
    tools: &Tools,
    gate: Option<&GateInputs>,
    mut journal: Journal,
    observer: &dyn Observer,
    report: &mut Report,
) -> Result<(), UpgradeError> {
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
        let commands = step_commands(step, &opts, tools, journal.role, journal.etcd_target);
        let shown: Vec<String> = commands.iter().map(|c| format!("$ {c}")).collect();
        observer.step_started(step.name(), &shown);
        let outcome = run_step(step, &opts, tools, gate, &mut journal, observer).await;
        let took = started.elapsed();
        report.steps.push(StepReport {
            step,
            commands,
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            status: if outcome.is_ok() { "done" } else { "failed" }.into(),
        });
        if let Err(e) = outcome {
            return Err(step_failed(&opts, &mut journal, step, e, report));
        }
        journal.done.push(step);
        journal.failed = None;
        save_journal(&opts.state_dir, &journal)?;
        observer.step_done(step.name(), took);
    }
    report.gate = journal.gate.clone();
    close_journal(&opts.state_dir, &journal)?;
    report.result = "upgraded".into();
    report.notes = kubeadm_backup_note(&opts);
    Ok(())
}

/// A failed gate changed nothing: no journal to resume from, nothing to recover. Any other
/// step leaves the journal (for `--resume`) and the recovery commands in the report.
fn step_failed(
    opts: &UpgradeOptions,
    journal: &mut Journal,
    step: Step,
    e: UpgradeError,
    report: &mut Report,
) -> UpgradeError {
    report.result = "failed".into();
    if step == Step::Gate {
        discard_journal(&opts.state_dir);
        return match e {
            UpgradeError::Gate { .. } => e,
            other => UpgradeError::Gate {
                reason: other.to_string(),
            },
        };
    }
    journal.failed = Some(step);
    if let Err(save) = save_journal(&opts.state_dir, journal) {
        tracing::error!(error = %save, "could not record the failed step in the journal");
    }
    report.gate = journal.gate.clone();
    report.recovery = recovery(opts, journal, step);
    UpgradeError::Step {
        step: step.name().into(),
        source: Box::new(e),
    }
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
