//! `lifeboat restore` and `lifeboat drill`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use lifeboat::config::{resolve_drill, resolve_restore, FileConfig, ResolvedRestore};
use lifeboat::drill::{self, DrillReport};
use lifeboat::restore::{
    self, JournalDir, MemberOverrides, Plan, RestoreError, RestoreOptions, SnapshotSource, Step,
};

use super::args::{DrillArgs, Output, RestoreArgs};
use super::{progress, snapshot};

pub async fn run(a: RestoreArgs, file: FileConfig) -> Result<()> {
    run_held(a, file, None).await
}

/// `restore`, with the control-plane manifests held in `held` rather than in the kubelet's
/// folder (`rebuild`: see `RestoreOptions::held_manifests`).
pub(super) async fn run_held(
    a: RestoreArgs,
    file: FileConfig,
    held: Option<PathBuf>,
) -> Result<()> {
    let config = &file.overlay(a.flags());
    let resolved = resolve_restore(&config.restore)?;
    let opts = RestoreOptions {
        held_manifests: held,
        ..options(&a, &resolved)
    };
    if a.detach {
        return detach(&resolved.state_dir);
    }
    if a.rollback {
        let journal = restore::rollback(&opts, progress::for_terminal().as_ref()).await?;
        eprintln!(
            "rolled back restore {}: the original data dir and manifests are back",
            journal.plan.run_id
        );
        return Ok(());
    }
    if a.resume {
        let journals = JournalDir::new(&opts.state_dir);
        let pending = restore::unfinished(&journals)?;
        let source = if pending.is_done(Step::Fetch) {
            None
        } else {
            Some(
                source_for(
                    &pending.plan.backup.id,
                    &pending.plan.backup.source,
                    &a,
                    config,
                )
                .await?,
            )
        };
        eprintln!(
            "resuming restore {} at step {}",
            pending.plan.run_id,
            pending.next_step().map_or("none", Step::name)
        );
        let journal = restore::resume(source.as_ref(), &opts, progress::for_terminal()).await?;
        summary(&journal.plan, a.output);
        return super::cluster::finish_resumed(&journal.plan, config, &opts, a.output).await;
    }
    if a.cluster {
        return super::cluster::restore(&a, config, opts).await;
    }
    let source = match super::pitr::target(&a.point)? {
        Some(target) => point_in_time(target, &a, config, &resolved.state_dir).await?,
        None => source_for(&a.backup.clone().unwrap_or_default(), "", &a, config).await?,
    };
    let plan = restore::plan(&source, &opts).await?;
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({ "plan": plan, "carried_out": a.yes && !a.dry_run })
        ),
        Output::Table => print_plan(&plan),
    }
    if !carry_out(a.dry_run, a.yes)? {
        return Ok(());
    }
    let journal = restore::execute(plan, &source, &opts, progress::for_terminal())
        .await
        .context("restore stopped")?;
    summary(&journal.plan, a.output);
    Ok(())
}

/// As `carry_out`; with `-w json` a plan not carried out is printed for scripts to read.
pub(super) fn carry_out_plan(
    output: Output,
    dry_run: bool,
    yes: bool,
    plan: &impl serde::Serialize,
) -> Result<bool> {
    if output == Output::Json && (dry_run || !yes) {
        print_undone(plan);
    }
    carry_out(dry_run, yes)
}

/// A plan as `-w json` gives it when nothing of it was done.
pub(super) fn print_undone(plan: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::json!({ "plan": plan, "carried_out": false })
    );
}

/// Whether to carry out a printed plan: not on a dry run (said), refused without `--yes`.
pub(super) fn carry_out(dry_run: bool, yes: bool) -> Result<bool> {
    if dry_run {
        eprintln!("dry run: nothing changed");
        return Ok(false);
    }
    if !yes {
        return Err(RestoreError::Refused {
            reason: "nothing changed: add --yes to carry out this plan".into(),
        }
        .into());
    }
    Ok(true)
}

fn options(a: &RestoreArgs, r: &ResolvedRestore) -> RestoreOptions {
    let member = MemberOverrides {
        name: a.name.clone(),
        initial_advertise_peer_urls: a.initial_advertise_peer_urls.clone(),
        initial_cluster: a.initial_cluster.clone(),
        initial_cluster_token: a.initial_cluster_token.clone(),
    };
    options_of(r, member, a.force, !a.no_wait)
}

/// The restore's options from the resolved `[restore]` section.
pub(super) fn options_of(
    r: &ResolvedRestore,
    member: MemberOverrides,
    force: bool,
    wait: bool,
) -> RestoreOptions {
    RestoreOptions {
        manifests_dir: r.manifests_dir.clone(),
        state_dir: r.state_dir.clone(),
        tool: r.etcdutl.clone(),
        member,
        bump_revision: r.bump_revision,
        force,
        stop_timeout: r.stop_timeout,
        start_timeout: r.start_timeout,
        wait,
        connect_timeout: Duration::from_secs(3),
        apiserver_timeout: r.apiserver_timeout,
        held_manifests: None,
    }
}

/// The snapshot at a point in time, replayed into the state dir (where a resumed restore finds
/// it again), restored like a plain snapshot file.
pub(super) async fn point_in_time(
    target: lifeboat::pitr::Target,
    a: &RestoreArgs,
    config: &FileConfig,
    state_dir: &Path,
) -> Result<SnapshotSource> {
    let dir = state_dir.join("pitr");
    lifeboat::fsutil::create_private_dir(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(format!(
        "pitr-{}.db",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
    ));
    let identities = snapshot::load_identities(a.identity.as_ref())?;
    let cluster = snapshot::cluster_flag(a.pick.cluster_id.as_deref())?;
    let report = super::pitr::to_file(
        target,
        cluster,
        identities.as_ref(),
        a.pick.allow_unencrypted,
        config,
        &file,
    )
    .await?;
    super::pitr::print_report(&report, &file);
    Ok(SnapshotSource::File(file))
}

/// A FILE when the argument names an existing file, else a backup in the destination.
async fn source_for(
    selector: &str,
    recorded_source: &str,
    a: &RestoreArgs,
    config: &FileConfig,
) -> Result<SnapshotSource> {
    source_of(
        selector,
        recorded_source,
        a.identity.as_ref(),
        &a.pick,
        config,
    )
    .await
}

/// As `source_for`, from the flags any command that restores has.
pub(super) async fn source_of(
    selector: &str,
    recorded_source: &str,
    identity: Option<&PathBuf>,
    pick: &super::args::PickArgs,
    config: &FileConfig,
) -> Result<SnapshotSource> {
    if selector == "file" && !recorded_source.is_empty() {
        return Ok(SnapshotSource::File(PathBuf::from(recorded_source)));
    }
    let as_path = Path::new(selector);
    if selector != "latest" && as_path.is_file() {
        return Ok(SnapshotSource::File(as_path.to_path_buf()));
    }
    let identities = snapshot::load_identities(identity)?;
    let (store, manifest) = snapshot::find(selector, pick, identities.as_ref(), config).await?;
    Ok(SnapshotSource::Backup {
        store,
        manifest: Box::new(manifest),
        identities,
    })
}

/// Re-runs this command without `--detach` in a new session, output to a log file.
fn detach(state_dir: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let dir = state_dir.join("restore");
    lifeboat::fsutil::create_private_dir(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let log_path = dir.join(format!(
        "restore-{}.log",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    let exe = std::env::current_exe().context("finding the lifeboat binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it only detaches the child from our terminal and
    // session, so a dying `kubectl exec` or SSH session does not take the restore with it.
    unsafe {
        cmd.pre_exec(|| rustix::process::setsid().map(|_| ()).map_err(Into::into));
    }
    let child = cmd.spawn().context("starting the detached restore")?;
    println!(
        "restore running detached as pid {}; log: {}\nfollow it with: tail -f {}",
        child.id(),
        log_path.display(),
        log_path.display()
    );
    Ok(())
}

pub(super) fn print_plan(p: &Plan) {
    let b = &p.backup;
    println!("Restore plan {} (nothing has changed yet)", p.run_id);
    println!(
        "  backup      {}{}, revision {}{}{}",
        b.id,
        b.created_at.map_or(String::new(), |t| {
            let age = chrono::Utc::now() - t;
            format!(
                " taken {} ({}h{:02}m ago)",
                t.format("%Y-%m-%d %H:%M:%SZ"),
                age.num_hours(),
                age.num_minutes() % 60
            )
        }),
        b.revision,
        b.member_name
            .as_ref()
            .map_or(String::new(), |m| format!(", member {m}")),
        b.cluster_id
            .as_ref()
            .map_or(String::new(), |c| format!(", cluster {c}")),
    );
    println!("  from        {}", b.source);
    println!(
        "  1 verify    fetch, decrypt, decompress, check every hash and the bbolt walk into {}",
        p.snapshot_path.display()
    );
    println!(
        "  2 stop      move {} to {}; wait until etcd is down",
        p.static_pods.join(", "),
        p.holding_dir.display()
    );
    if p.data_dir_existed {
        println!(
            "  3 set aside {} -> {} (kept, never deleted)",
            p.data_dir.display(),
            p.aside_dir.display()
        );
    } else {
        println!("  3 set aside {} does not exist", p.data_dir.display());
    }
    println!("  4 restore   {}", p.restore_argv.join(" "));
    println!(
        "              then {} -> {} (owner {}:{}, mode 0700)",
        p.restoring_dir.display(),
        p.data_dir.display(),
        p.owner.0,
        p.owner.1
    );
    println!(
        "  5 start     etcd.yaml back; wait for etcd at {} (revision >= {})",
        p.client.endpoint, p.expected_min_revision
    );
    match &p.apiserver {
        Some(a) => println!(
            "  6 start     the other manifests back; wait for the API server's /readyz on 127.0.0.1:{}",
            a.port
        ),
        None => println!("  6 start     the other manifests back"),
    }
    println!(
        "  member      {} ({}), cluster {}, token {}",
        p.member.name,
        p.member.initial_advertise_peer_urls,
        p.member.initial_cluster,
        p.member.initial_cluster_token
    );
    match p.bump_revision {
        Some(n) => println!("  revision    bumped by {n} and marked compacted"),
        None => println!("  revision    not bumped"),
    }
    for w in &p.warnings {
        println!("  WARNING     {w}");
    }
}

fn summary(p: &Plan, output: Output) {
    let next = restore::next_steps(p);
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({ "restored": p.backup.id, "run_id": p.run_id, "data_dir": p.data_dir, "old_data_dir": p.aside_dir, "next_steps": next })
        ),
        Output::Table => {
            println!(
                "restored {} into {} (old data in {})",
                p.backup.id,
                p.data_dir.display(),
                p.aside_dir.display()
            );
            for line in next {
                println!("next: {line}");
            }
        }
    }
}

pub async fn drill(a: DrillArgs, file: FileConfig) -> Result<()> {
    let config = &file.overlay(a.flags());
    let identities = snapshot::load_identities(config.drill.identity_file.as_ref())?;
    if let Some(target) = super::pitr::target(&a.point)? {
        return drill_point(target, &a, identities.as_ref(), config).await;
    }
    let selector = a.backup.clone().unwrap_or_default();
    let (store, manifest) = snapshot::find(&selector, &a.pick, identities.as_ref(), config).await?;
    let settings = resolve_drill(config)?;
    let report = drill::drill(
        store,
        &manifest,
        identities.as_ref(),
        &settings,
        progress::for_terminal(),
    )
    .await
    .with_context(|| format!("drill of backup {}", manifest.id))?;
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print_report(&report),
    }
    if !report.ok {
        return Err(drill::DrillError::Mismatch { id: report.id }.into());
    }
    Ok(())
}

/// A drill of a point in time: the replay with all its checks, into a scratch file that is
/// removed afterwards.
async fn drill_point(
    target: lifeboat::pitr::Target,
    a: &DrillArgs,
    identities: Option<&std::sync::Arc<lifeboat::stages::encrypt::Identities>>,
    config: &FileConfig,
) -> Result<()> {
    let settings = resolve_drill(config)?;
    lifeboat::fsutil::create_private_dir(&settings.work_dir)
        .with_context(|| format!("creating {}", settings.work_dir.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("lifeboat-drill-pitr-")
        .tempdir_in(&settings.work_dir)
        .with_context(|| {
            format!(
                "creating a scratch folder in {}",
                settings.work_dir.display()
            )
        })?;
    let out = scratch.path().join("snapshot.db");
    let cluster = snapshot::cluster_flag(a.pick.cluster_id.as_deref())?;
    let report = super::pitr::to_file(
        target,
        cluster,
        identities,
        a.pick.allow_unencrypted,
        config,
        &out,
    )
    .await
    .context("point-in-time drill FAILED")?;
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({ "ok": true, "target": target, "replay": report })
        ),
        Output::Table => println!(
            "point-in-time drill of revision {}: PASSED ({})",
            report.target_rev,
            super::pitr::summary(&report)
        ),
    }
    Ok(())
}

fn print_report(r: &DrillReport) {
    println!(
        "drill of {}: {} ({} ms, etcd {}, {})",
        r.id,
        if r.ok { "PASSED" } else { "FAILED" },
        r.duration_ms,
        r.etcd_version,
        r.restore_tool
    );
    println!("{:<10} {:<6} {:<40} ACTUAL", "CHECK", "OK", "EXPECTED");
    for c in &r.checks {
        println!(
            "{:<10} {:<6} {:<40} {}",
            c.name,
            if c.ok { "ok" } else { "FAIL" },
            c.expected,
            c.actual
        );
    }
    let m = &r.membership;
    match &m.findings {
        Some(f) if f.is_empty() => println!(
            "membership {} — matches the member list of its time",
            m.summary
        ),
        Some(f) => {
            println!("membership {}", m.summary);
            for line in f {
                println!("WARNING    {line} (when this backup was taken)");
            }
        }
        None => println!("membership {} (no member list recorded with it)", m.summary),
    }
}
