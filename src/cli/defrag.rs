//! `lifeboat defrag`: maintenance's rules, once, from the command line (#27).

use anyhow::{Context, Result};
use lifeboat::catalog::Reason;
use lifeboat::config::{
    resolve_backup, resolve_etcd, resolve_maintenance, resolve_read_policy, FileConfig,
};
use lifeboat::etcd::discovery::DEFAULT_QUOTA;
use lifeboat::maintenance::{
    self, BackupProof, Inputs, MaintenanceError, NospaceOutcome, Pick, Plan, Report, Survey,
};

use super::args::{DefragArgs, Output};
use super::render::human_bytes;
use super::{progress, snapshot};

pub async fn run(a: DefragArgs, file: FileConfig) -> Result<()> {
    let config = file.overlay(a.flags());
    let etcd = resolve_etcd(&config.etcd)?;
    let resolved = resolve_maintenance(&config.maintenance)?;
    let backup = resolve_backup(&config.backup, &config.trust, Reason::Manual)?;
    let quota = resolved
        .quota
        .or(etcd.kubeadm.as_ref().map(|k| k.quota()))
        .unwrap_or(DEFAULT_QUOTA);
    let survey = maintenance::survey(&etcd.settings, quota)
        .await
        .context("defrag: reading every member's status")?;
    let pick = match (&a.member, a.all) {
        (Some(name), _) => Pick::Member(name.clone()),
        (None, true) => Pick::All,
        (None, false) => Pick::OverThresholds,
    };
    let plan = maintenance::plan(&survey, &resolved.rules, &pick);
    let store = snapshot::open_primary(&config)
        .await
        .context("defrag: opening the store for the backup that must stand behind it (nothing was defragmented)")?;
    let printer = progress::for_terminal();
    let inputs = Inputs {
        etcd: &etcd.settings,
        store,
        backup: &backup,
        read_policy: resolve_read_policy(&config.trust)?,
        max_backup_age: resolved.max_backup_age,
        ready_timeout: resolved.ready_timeout,
        quota,
        observer: printer.as_ref(),
    };
    let proof = maintenance::existing_proof(&inputs, survey.cluster_id).await;
    if a.output == Output::Table {
        print_plan(&survey, &plan, proof.as_ref());
    }
    if let Some(why) = &plan.blocked {
        return Err(MaintenanceError::Blocked { why: why.clone() }.into());
    }
    if plan.is_empty() {
        if a.output == Output::Json {
            super::restore::print_undone(&plan);
        }
        println!("nothing to defragment");
        return Ok(());
    }
    if !super::restore::carry_out_plan(a.output, a.dry_run, a.yes, &plan)? {
        return Ok(());
    }
    let proof = maintenance::ensure_backup(&inputs, survey.cluster_id).await?;
    let report = maintenance::execute(&plan, &survey, &resolved.rules, &inputs, proof).await?;
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "plan": plan, "carried_out": true, "report": report })
            )?
        ),
        Output::Table => print_report(&report),
    }
    match report.nospace {
        Some(NospaceOutcome::Left { why, .. }) => Err(MaintenanceError::NospaceLeft { why }.into()),
        _ => Ok(()),
    }
}

fn print_plan(survey: &Survey, plan: &Plan, proof: Option<&BackupProof>) {
    println!(
        "{:<16} {:<8} {:>10} {:>10} {:>6}",
        "MEMBER", "ROLE", "DB", "IN USE", "FREE"
    );
    for m in &survey.members {
        println!(
            "{:<16} {:<8} {:>10} {:>10} {:>5.0}%",
            m.name,
            if m.is_leader {
                "leader"
            } else if m.learner {
                "learner"
            } else {
                "follower"
            },
            human_bytes(m.db_size),
            human_bytes(m.db_size_in_use),
            m.fragmentation() * 100.0
        );
    }
    if plan.nospace {
        println!(
            "NOSPACE is raised: compact, defragment every member, disarm once under the quota"
        );
    }
    for (i, p) in plan.order.iter().enumerate() {
        println!(
            "  {} defragment {} (expected to give back ~{}){}",
            i + 1,
            p.member.name,
            human_bytes(p.expected_reclaim),
            if p.member.is_leader && plan.move_leader && survey.members.len() > 1 {
                ", leadership moved to a follower first"
            } else {
                ""
            }
        );
    }
    for (name, why) in &plan.skipped {
        println!("  skip {name}: {why}");
    }
    match proof {
        Some(BackupProof::Recent { id, created_at }) => {
            println!("behind it: backup {id} ({created_at}), verified")
        }
        Some(BackupProof::Shadow {
            revision,
            proven_at,
        }) => println!("behind it: the shadow proved revision {revision} at {proven_at}"),
        _ if !plan.is_empty() => {
            println!("behind it: no backup recent enough — one is taken first")
        }
        _ => {}
    }
}

fn print_report(r: &Report) {
    // The plan already named a recent backup or the shadow's proof; only a new one is news.
    if let BackupProof::Taken { id } = &r.backup {
        println!("backup {id} taken first");
    }
    for a in &r.actions {
        match a.action {
            "defragment" => println!(
                "defragmented {}: {} → {} in {} ms",
                a.member,
                human_bytes(a.before),
                human_bytes(a.after),
                a.ms
            ),
            other => println!("{other} {} ({} ms)", a.member, a.ms),
        }
    }
    if let Some(NospaceOutcome::Disarmed { largest, quota }) = &r.nospace {
        println!(
            "NOSPACE disarmed: the largest member holds {} of a {} quota",
            human_bytes(*largest),
            human_bytes(*quota)
        );
    }
}
