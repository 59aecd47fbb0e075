//! `lifeboat recover`: read the survivors, pick the base, print the plan; with --yes, build the
//! recovered state (the journal replayed on the base in the sandbox) and restore it on this
//! node through the restore's journaled steps.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::SecondsFormat;
use lifeboat::config::{resolve_drill, resolve_read_policy, resolve_restore, FileConfig};
use lifeboat::continuous::Journal;
use lifeboat::etcd::discovery;
use lifeboat::recover::{
    self, Base, Examined, HashCheck, Origin, RecoverPlan, Recovery, Survivor, WhenRunning,
};
use lifeboat::restore::cluster::Wanted;
use lifeboat::restore::{
    self, ClusterRun, EtcdProbe, JournalDir, MemberOverrides, RestoreError, SnapshotSource, Step,
};
use lifeboat::stages::encrypt::Identities;

use super::args::{Output, RecoverArgs};
use super::restore::{options_of, print_plan, source_of};
use super::{progress, snapshot};

pub async fn run(a: RecoverArgs, file: FileConfig) -> Result<()> {
    let config = &file.overlay(a.flags());
    let resolved = resolve_restore(&config.restore)?;
    let sandbox = resolve_drill(config)?;
    if a.rollback || a.resume {
        return finish_unfinished(&a, config, &resolved).await;
    }
    // First: an interrupted run has moved etcd.yaml into its holding folder.
    JournalDir::new(&resolved.state_dir).refuse_unfinished("recover")?;
    let etcd_manifest = resolved.manifests_dir.join("etcd.yaml");
    let local = discovery::discover(&etcd_manifest)?.ok_or_else(|| {
        RestoreError::Node {
            path: etcd_manifest.clone(),
            detail: "no etcd static pod manifest here: is this a kubeadm control-plane node? pass --manifests-dir".into(),
        }
    })?;
    refuse_running(&a, &local)?;
    let mut survivors = vec![Survivor::at(&local.data_dir, Origin::ThisNode)];
    survivors.extend(a.member_data.iter().map(|p| Survivor::at(p, Origin::Given)));
    let dir = resolved.state_dir.join("recover");
    let mut copies = Copies(Vec::new());
    if a.force {
        lifeboat::fsutil::create_private_dir(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
    let examined: Vec<(Survivor, Examined)> = survivors
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let copy = dir.join(format!("recover-{stamp}-survivor{i}.db"));
            let running = match a.force {
                true => WhenRunning::CopyTo(&copy),
                false => WhenRunning::Refuse,
            };
            let (s, e) = recover::examine(s, running);
            if s.db == copy {
                copies.0.push(copy);
            }
            (s, e)
        })
        .collect();
    let store = snapshot::open_store(config).await?;
    let journal = Journal::new(store.clone(), resolve_read_policy(&config.trust)?);
    let identities = snapshot::load_identities(a.identity.as_ref())?;
    let recovery = Recovery {
        journal: &journal,
        identities: identities.as_deref(),
        cluster: snapshot::cluster_flag(a.pick.cluster_id.as_deref())?,
    };
    let target = super::pitr::target(&a.point)?;
    let plan = recover::plan(&recovery, examined, target)
        .await
        .context("recover: choosing the base")?;
    if a.output == Output::Table {
        print_recover_plan(&plan);
    }
    // Refused before anything: a state the other nodes cannot build.
    let wanted = match a.cluster {
        true => Some(wanted(&plan)?),
        false => None,
    };
    if !super::restore::carry_out_plan(a.output, a.dry_run, a.yes, &plan)? {
        return Ok(());
    }
    check_encryption(&plan, identities.as_ref(), a.pick.allow_unencrypted)?;
    lifeboat::fsutil::create_private_dir(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    // No restore is unfinished (refused above otherwise): states built by earlier runs are
    // not needed by anyone (this run's survivor copies are).
    remove_built_states(&resolved.state_dir, &copies.0);
    let out = dir.join(format!("recover-{stamp}.db"));
    let inputs = recover::Inputs {
        store,
        identities: identities.as_ref(),
        sandbox: &sandbox,
        progress: progress::for_terminal(),
    };
    let prepared = recover::prepare(&plan, inputs, &out)
        .await
        .context("recover: building the recovered state (nothing on the node has changed)")?;
    if let Some(report) = &prepared.replay {
        if a.output == Output::Table {
            super::pitr::print_report(report, &out);
        }
    }
    // From here a restore may stop half-way: `--resume` may need the copies.
    std::mem::take(&mut copies.0);
    if let Some(wanted) = wanted {
        return cluster_recover(&a, config, &resolved, &plan, wanted, prepared.source).await;
    }
    // One member: the others rejoin with `member replace`, so the member list is this node's
    // alone (and restore's HA warning does not apply).
    let member = MemberOverrides {
        initial_cluster: match (&local.name, &local.initial_advertise_peer_urls) {
            (Some(n), Some(p)) => Some(format!("{n}={p}")),
            _ => None,
        },
        ..MemberOverrides::default()
    };
    let opts = options_of(&resolved, member, a.force, true);
    let restore_plan = restore::plan(&prepared.source, &opts).await?;
    if a.output == Output::Table {
        print_plan(&restore_plan);
    }
    let done = restore::execute(restore_plan, &prepared.source, &opts, progress::for_terminal())
        .await
        .context("recover stopped: `lifeboat recover --resume` finishes it, `lifeboat recover --rollback` undoes it")?;
    remove_built_states(&resolved.state_dir, &[]);
    let window = recover::loss_window(&plan);
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "plan": plan,
                "carried_out": true,
                "replay": prepared.replay,
                "restored_revision": plan.target,
                "run_id": done.plan.run_id,
                "data_dir": done.plan.data_dir,
                "old_data_dir": done.plan.aside_dir,
                "loss_window": window,
            })
        ),
        Output::Table => {
            println!("recovered: {window}");
            println!(
                "this node now runs a one-member etcd cluster; its old data is kept in {}",
                done.plan.aside_dir.display()
            );
            for line in next_steps() {
                println!("next: {line}");
            }
        }
    }
    Ok(())
}

/// Removes the recovered states (`<state-dir>/recover/recover-*.db`, a database's size each)
/// once no restore needs them: the restore keeps its own checked copy while it runs.
/// Survivor files this run copied (`--force`): removed when the run ends before a restore
/// that may need them started.
struct Copies(Vec<PathBuf>);

impl Drop for Copies {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Removes the states earlier runs built (and the survivor copies they took), but `keep`.
fn remove_built_states(state_dir: &Path, keep: &[PathBuf]) {
    let Ok(entries) = std::fs::read_dir(state_dir.join("recover")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let built =
            name.starts_with("recover-") && (name.ends_with(".db") || name.ends_with(".db.part"));
        if built && !keep.contains(&e.path()) {
            if let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!(path = %e.path().display(), error = %err, "could not remove a recovered state no restore needs");
            }
        }
    }
}

fn next_steps() -> [&'static str; 2] {
    [
        "on each other control-plane node, one at a time: `lifeboat member replace --yes` (its old data is set aside, it joins as a learner and is promoted once in sync)",
        "once all are back: `etcdctl endpoint health --cluster` shows every member healthy; remove the old data dirs once the cluster is confirmed good",
    ]
}

/// What this node asks the others to restore with `--cluster`: the journal's revision, which
/// every node can build (from its own survivor, or from the backup).
fn wanted(plan: &RecoverPlan) -> Result<Wanted> {
    let Some(journal) = &plan.journal else {
        return Err(RestoreError::refused(
            "--cluster needs the journal (the nodes meet on one of its revisions) and the store holds none: recover this node alone (without --cluster) and let the others rejoin with `lifeboat member replace`",
        )
        .into());
    };
    if plan.target > journal.newest_rev {
        return Err(RestoreError::refused(format!(
            "the freshest source ({}) is at revision {}, past the journal's newest durable revision {}: the other nodes cannot build it. Either recover this node alone (without --cluster) and let the others rejoin with `lifeboat member replace`, or recover the cluster at the journal's revision with --to-revision {} (revisions {}–{} are then lost)",
            plan.base.describe(),
            plan.target,
            journal.newest_rev,
            journal.newest_rev,
            journal.newest_rev + 1,
            plan.target
        ))
        .into());
    }
    let backup = plan.newest_backup.as_deref();
    Ok(Wanted {
        cluster_id: journal.cluster_id.clone(),
        backup_id: backup.map_or_else(|| "journal".to_string(), |m| m.id.clone()),
        target_revision: Some(plan.target),
        voting_members: backup.and_then(|m| m.voting_members.clone()),
        any_backup: true,
    })
}

/// `--cluster`: meet the others on the plan's revision, restore this node's build of it with
/// the member list and token every node computes alike, wait until all answer and hash alike.
async fn cluster_recover(
    a: &RecoverArgs,
    config: &FileConfig,
    resolved: &lifeboat::config::ResolvedRestore,
    plan: &RecoverPlan,
    wanted: Wanted,
    source: SnapshotSource,
) -> Result<()> {
    let mut opts = options_of(resolved, MemberOverrides::default(), a.force, true);
    let me = super::cluster::this_node(&opts)?;
    let store = snapshot::open_store(config).await?;
    let meeting = super::cluster::meeting(&a.meet, config, store)?;
    let rv = meeting
        .meet(&wanted, &me)
        .await
        .context("recover --cluster: meeting the other nodes")?;
    eprintln!(
        "cluster recovery {}: every member joined ({}); restoring revision {} of the journal",
        rv.plan.run_id,
        rv.initial_cluster(),
        plan.target
    );
    opts.member.initial_cluster = Some(rv.initial_cluster());
    opts.member.initial_cluster_token = Some(rv.plan.token.clone());
    let mut restore_plan = restore::plan(&source, &opts).await?;
    restore_plan.cluster = Some(ClusterRun {
        plan: rv.plan.clone(),
        joined: rv.joined.clone(),
        node: me.name.clone(),
        peer_url: me.peer_url.clone(),
    });
    if a.output == Output::Table {
        print_plan(&restore_plan);
    }
    let done = restore::execute(restore_plan, &source, &opts, progress::for_terminal())
        .await
        .context("recover stopped: `lifeboat recover --resume` finishes it, `lifeboat recover --rollback` undoes it")?;
    remove_built_states(&resolved.state_dir, &[]);
    if a.output == Output::Table {
        println!("recovered: {}", recover::loss_window(plan));
    }
    super::cluster::finish(&done.plan, &meeting, &opts, a.output).await
}

/// This node's etcd still running: refused without `--force`.
fn refuse_running(a: &RecoverArgs, local: &discovery::KubeadmEtcd) -> Result<()> {
    let probe = EtcdProbe::new(local.endpoints.first().map(String::as_str), &local.data_dir);
    if let Some(why) = probe.running() {
        if !a.force {
            return Err(RestoreError::refused(format!(
                "etcd still runs on this node ({why}): if quorum is really lost (`etcdctl endpoint status --cluster` shows no leader), add --force — a copy of its file is read as it stands (a running member may still apply the committed entries of its own WAL) and the restore stops it first"
            ))
            .into());
        }
    }
    Ok(())
}

/// As for a point-in-time restore: with an identity, plaintext is refused unless asked for.
fn check_encryption(
    plan: &RecoverPlan,
    identities: Option<&Arc<Identities>>,
    allow_unencrypted: bool,
) -> Result<()> {
    if let Base::Backup { manifest } = &plan.base {
        lifeboat::readback::check_encryption(manifest, identities.is_some(), allow_unencrypted)?;
    }
    if identities.is_some() && !allow_unencrypted {
        let segments = plan.replay.iter().flat_map(|r| &r.segments);
        if let Some(s) = segments.into_iter().find(|s| s.encryption.scheme != "age") {
            anyhow::bail!(
                "journal segment {} of chain {} is stored without encryption although an identity is given; pass --allow-unencrypted if that was meant",
                s.seq,
                s.chain
            );
        }
    }
    Ok(())
}

/// `--resume` / `--rollback`: the recovery's restore journal, as `restore` would.
async fn finish_unfinished(
    a: &RecoverArgs,
    config: &FileConfig,
    resolved: &lifeboat::config::ResolvedRestore,
) -> Result<()> {
    let opts = options_of(resolved, MemberOverrides::default(), a.force, true);
    if a.rollback {
        let journal = restore::rollback(&opts, progress::for_terminal().as_ref()).await?;
        remove_built_states(&resolved.state_dir, &[]);
        eprintln!(
            "rolled back recovery {}: the original data dir and manifests are back",
            journal.plan.run_id
        );
        return Ok(());
    }
    let pending = restore::unfinished(&JournalDir::new(&opts.state_dir))?;
    let source = if pending.is_done(Step::Fetch) {
        None
    } else {
        let b = &pending.plan.backup;
        Some(source_of(&b.id, &b.source, a.identity.as_ref(), &a.pick, config).await?)
    };
    eprintln!(
        "resuming recovery {} at step {}",
        pending.plan.run_id,
        pending.next_step().map_or("none", Step::name)
    );
    let journal = restore::resume(source.as_ref(), &opts, progress::for_terminal()).await?;
    remove_built_states(&resolved.state_dir, &[]);
    if journal.plan.cluster.is_some() {
        return super::cluster::finish_resumed(&journal.plan, config, &opts, a.output).await;
    }
    println!(
        "recovered into {} (old data in {})",
        journal.plan.data_dir.display(),
        journal.plan.aside_dir.display()
    );
    for line in next_steps() {
        println!("next: {line}");
    }
    Ok(())
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or("-".into(), |t| {
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    })
}

fn print_recover_plan(p: &RecoverPlan) {
    println!("Recovery plan (nothing has changed yet)");
    println!(
        "  {:<56} {:>10} {:>10}  {:<25} NOTE",
        "SOURCE", "REVISION", "COMPACTED", "RECEIVED AT"
    );
    for row in &p.survivors {
        let who = match row.survivor.origin {
            Origin::ThisNode => format!("this node {}", row.survivor.label),
            Origin::Given => row.survivor.label.clone(),
        };
        match &row.examined {
            Examined::Usable(f) => println!(
                "  {who:<56} {:>10} {:>10}  {:<25} survivor, walk passed",
                f.revision,
                f.compact_revision,
                when(row.received_at)
            ),
            Examined::Refused { why } => {
                println!(
                    "  {who:<56} {:>10} {:>10}  {:<25} REFUSED: {why}",
                    "-", "-", "-"
                );
            }
        }
    }
    match &p.journal {
        Some(j) => println!(
            "  {:<56} {:>10} {:>10}  {:<25} newest durable revision{}",
            format!("journal (cluster {})", j.cluster_id),
            j.newest_rev,
            "-",
            when(Some(j.newest_at)),
            j.proven_rev.map_or(String::new(), |r| format!(
                "; a shadow proved it through revision {r} ({})",
                when(j.proven_at)
            ))
        ),
        None => println!(
            "  {:<56} {:>10} {:>10}  {:<25} none in the store",
            "journal", "-", "-", "-"
        ),
    }
    if let Some(b) = &p.newest_backup {
        println!(
            "  {:<56} {:>10} {:>10}  {:<25} newest trusted full backup (taken then)",
            format!("backup {}", b.id),
            b.revision,
            "-",
            when(Some(b.created_at))
        );
    }
    println!(
        "  base        {} (revision {})",
        p.base.describe(),
        p.base_rev
    );
    for why in &p.passed_over {
        println!("  passed over {why}");
    }
    match &p.replay {
        Some(r) => println!(
            "  replay      revisions {}–{} from {} segment(s) of chain {} in the sandbox, every checkpoint checked",
            r.from_rev + 1,
            r.to_rev,
            r.segment_count,
            r.chain
        ),
        None => match &p.journal {
            Some(j) if p.base_rev >= j.newest_rev => println!(
                "  replay      nothing: the base is at or past the journal's newest durable revision ({})",
                j.newest_rev
            ),
            _ => println!("  replay      nothing: the base is the target"),
        },
    }
    match &p.hash_check {
        HashCheck::Equal {
            against,
            rev,
            compact_rev,
            hash,
        } => println!(
            "  check       the survivor's HashKV at revision {rev} equals {against} ({hash}, compact revision {compact_rev})"
        ),
        HashCheck::NotCompared { why } => println!("  check       not compared with the journal: {why}"),
    }
    println!(
        "  target      revision {} (received at {})",
        p.target,
        when(p.target_at)
    );
    println!("  then        restore it on this node as a new one-member cluster (the restore's journaled steps; the data dir is set aside, never deleted)");
}
