//! Running a plan: execute from the start, resume from the journal, or roll back — each under
//! the run lock, with the journal rewritten around every step.

use std::sync::Arc;
use std::time::Instant;

use super::plan::{sibling, Plan, RestoreOptions, SnapshotSource};
use super::steps;
use super::{crash, node, EtcdProbe, Journal, JournalDir, RestoreError, RunState, Step};
use crate::fsutil;
use crate::progress::Observer;

/// Carries out a plan from the start.
///
/// # Errors
/// The first step that fails; the journal then says where to resume or roll back from.
pub async fn execute(
    plan: Plan,
    source: &SnapshotSource,
    opts: &RestoreOptions,
    observer: Arc<dyn Observer>,
) -> Result<Journal, RestoreError> {
    let journals = JournalDir::new(&opts.state_dir);
    let _lock = journals.lock()?;
    if journals.load()?.is_some() {
        return Err(RestoreError::refused(
            "an unfinished restore journal appeared meanwhile: run `lifeboat restore --resume` or `--rollback`",
        ));
    }
    let mut journal = Journal::new(plan);
    journals.save(&journal)?;
    run_steps(&journals, &mut journal, Some(source), opts, observer).await?;
    Ok(journal)
}

/// Continues an interrupted restore from its journal. `source` is needed only when the
/// fetch step has to be redone.
///
/// # Errors
/// No unfinished restore, or the step that fails again.
pub async fn resume(
    source: Option<&SnapshotSource>,
    opts: &RestoreOptions,
    observer: Arc<dyn Observer>,
) -> Result<Journal, RestoreError> {
    let journals = JournalDir::new(&opts.state_dir);
    let _lock = journals.lock()?;
    let mut journal = unfinished(&journals)?;
    if journal.state == RunState::RolledBack {
        return Err(RestoreError::refused(
            "this restore was being rolled back: finish that with `lifeboat restore --rollback`",
        ));
    }
    run_steps(&journals, &mut journal, source, opts, observer).await?;
    Ok(journal)
}

/// The unfinished journal, or a refusal saying there is none.
///
/// # Errors
/// No journal, or an unreadable one.
pub fn unfinished(journals: &JournalDir) -> Result<Journal, RestoreError> {
    journals.load()?.ok_or_else(|| {
        RestoreError::refused(format!(
            "there is no unfinished restore on this node (no {})",
            journals.path().display()
        ))
    })
}

async fn run_steps(
    journals: &JournalDir,
    journal: &mut Journal,
    source: Option<&SnapshotSource>,
    opts: &RestoreOptions,
    observer: Arc<dyn Observer>,
) -> Result<(), RestoreError> {
    // Whether this process fetched (and so checked) the staged snapshot; a resumed run checks
    // it again before etcd's tool reads it.
    let mut fetched_here = false;
    while let Some(step) = journal.next_step() {
        let plan = journal.plan.clone();
        observer.step_started(step.name(), &[steps::describe(step, &plan)]);
        journal.mark_started(step);
        journals.save(journal)?;
        crash::before(step);
        let started = Instant::now();
        let result = match step {
            Step::Fetch => steps::fetch(&plan, source, observer.clone()).await,
            Step::StopControlPlane => steps::stop_control_plane(&plan, opts),
            Step::MoveDataDir => steps::move_data_dir(&plan),
            Step::Restore if !fetched_here => {
                steps::recheck_staged(&plan).and_then(|()| steps::restore_data_dir(&plan))
            }
            Step::Restore => steps::restore_data_dir(&plan),
            Step::StartEtcd => steps::start_etcd(&plan, opts, observer.as_ref()).await,
            Step::StartControlPlane => {
                steps::start_control_plane(&plan, opts, observer.as_ref()).await
            }
            Step::Finish => steps::finish(&plan),
        };
        if let Err(e) = result {
            if step == Step::Fetch {
                // Nothing on the node changed: drop the journal so a new attempt may start.
                journals.discard(&plan.run_id);
            }
            return Err(e);
        }
        crash::after(step);
        fetched_here |= step == Step::Fetch;
        journal.mark_done(step);
        if step == Step::Finish {
            journal.state = RunState::Finished;
            journals.close(journal)?;
        } else {
            journals.save(journal)?;
        }
        observer.step_done(step.name(), started.elapsed());
    }
    Ok(())
}

/// Returns the node to its state before the restore: restored data moved aside (never
/// deleted), the old data dir and the manifests back, byte for byte.
///
/// # Errors
/// No unfinished restore, or a file operation that fails (rerun: every step is idempotent).
pub async fn rollback(
    opts: &RestoreOptions,
    observer: &dyn Observer,
) -> Result<Journal, RestoreError> {
    let journals = JournalDir::new(&opts.state_dir);
    let _lock = journals.lock()?;
    let mut journal = unfinished(&journals)?;
    journal.state = RunState::RolledBack;
    journals.save(&journal)?;
    let plan = journal.plan.clone();
    let started = Instant::now();
    let touched_node = journal
        .steps
        .iter()
        .any(|r| r.step == Step::StopControlPlane);
    if touched_node {
        // Whatever came back (the restored etcd) stops again before the data dirs swap.
        observer.note("stopping the control plane");
        for pod in &plan.static_pods {
            if plan.manifests_dir.join(pod).exists() {
                node::move_manifest(pod, &plan.manifests_dir, &plan.holding_dir)?;
            }
        }
        EtcdProbe::new(Some(&plan.client.endpoint), &plan.data_dir)
            .wait_stopped(opts.stop_timeout)?;
    }
    steps::remove_partial_restore(&plan)?;
    let data_dir_is_restored = if plan.data_dir_existed {
        plan.aside_dir.exists() && plan.data_dir.exists()
    } else {
        plan.data_dir.exists() && journal.steps.iter().any(|r| r.step == Step::Restore)
    };
    if data_dir_is_restored {
        let discarded = sibling(
            &plan.data_dir,
            &format!("lifeboat-discarded-{}", plan.run_id),
        );
        observer.note(&format!(
            "moving the restored data dir aside to {}",
            discarded.display()
        ));
        fsutil::durable_rename(&plan.data_dir, &discarded)
            .map_err(|e| RestoreError::node(&plan.data_dir, e.to_string()))?;
    }
    if plan.data_dir_existed && plan.aside_dir.exists() && !plan.data_dir.exists() {
        observer.note(&format!(
            "moving the original data dir back from {}",
            plan.aside_dir.display()
        ));
        fsutil::durable_rename(&plan.aside_dir, &plan.data_dir)
            .map_err(|e| RestoreError::node(&plan.aside_dir, e.to_string()))?;
    }
    if touched_node {
        observer.note("putting the static pod manifests back");
        for pod in &plan.static_pods {
            node::move_manifest(pod, &plan.holding_dir, &plan.manifests_dir)?;
        }
        let _ = std::fs::remove_dir(&plan.holding_dir);
    }
    // The old member is back as it was — which may be without quorum (a recovery rolled
    // back): its port is the promise, not its health.
    if touched_node && opts.wait && plan.static_pods.iter().any(|p| p == "etcd.yaml") {
        let addr = steps::wait_port(&plan, opts).await?;
        observer.note(&format!(
            "etcd listens again on {addr} with its original data (it serves as it did before)"
        ));
    }
    steps::remove_snapshot_copy(&plan);
    journals.close(&journal)?;
    observer.note(&format!(
        "rolled back in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(journal)
}

/// What to run on the other control-plane nodes after this one.
pub fn next_steps(plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    if plan.member_count() > 1 {
        let id = if plan.backup.id == "file" {
            "FILE".to_string()
        } else {
            plan.backup.id.clone()
        };
        out.push(format!(
            "On every other control-plane node, restore the same backup with the same cluster and token (each node's own name and peer URL come from its etcd.yaml):\n  lifeboat restore {id} --identity KEYFILE --initial-cluster '{}' --initial-cluster-token '{}' --yes --force",
            plan.member.initial_cluster, plan.member.initial_cluster_token
        ));
        out.push("Once all are restored: etcdctl member list and endpoint health --cluster show every member started and healthy.".into());
    } else {
        out.push("This node now runs a single-member etcd. Any other control-plane node still has the old cluster's data: `kubeadm reset` it and join it again (`kubeadm join --control-plane`), one at a time.".into());
    }
    if plan.bump_revision.is_none() {
        out.push("The revision was not bumped: restart kube-controller-manager, kube-scheduler and controllers that watch the API so their caches relist.".into());
    }
    out.push(format!(
        "The old data dir is kept at {}: remove it once the cluster is confirmed good.",
        plan.aside_dir.display()
    ));
    out
}
