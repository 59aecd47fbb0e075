//! `lifeboat prune`.

use anyhow::Result;
use lifeboat::catalog::Catalog;
use lifeboat::config::{resolve_read_policy, resolve_retention, FileConfig};
use lifeboat::retention::{self, Action};

use super::args::{Output, PruneArgs};
use super::snapshot::open_primary as open_store;

pub async fn run(a: PruneArgs, file: FileConfig) -> Result<()> {
    let config = file.overlay(a.flags());
    let policy = resolve_retention(&config.retention, &config.continuous)?;
    let cluster = super::snapshot::cluster_flag(a.cluster_id.as_deref())?;
    let store = open_store(&config).await?;
    let catalog = Catalog::new(store.clone(), resolve_read_policy(&config.trust)?);
    let report = retention::prune(
        &catalog,
        &policy,
        chrono::Utc::now(),
        cluster,
        a.dry_run,
        None,
    )
    .await?;
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            let verb = |action: Action| match (action, a.dry_run) {
                (Action::Keep, _) => "keep",
                (Action::Delete, true) => "would delete",
                (Action::Delete, false) => "deleted",
                (Action::Locked, _) => "locked",
            };
            for d in &report.decisions {
                println!(
                    "{:<13} {:<52} {:<12} {}",
                    verb(d.action),
                    d.id,
                    d.reason.to_string(),
                    d.rules.join(", ")
                );
            }
            for o in &report.orphans {
                println!(
                    "{:<13} {:<52} {:<12} object without manifest, {} s old",
                    verb(o.action),
                    o.key,
                    "-",
                    o.age_secs
                );
            }
            for k in &report.kits {
                println!(
                    "{:<13} {:<52} {:<12} {}",
                    verb(k.action),
                    format!("kit {}", &k.id[..12]),
                    k.node,
                    if k.action == Action::Keep {
                        "a kept backup names it"
                    } else {
                        "no kept backup names it"
                    }
                );
            }
            let j = &report.journal;
            if j.segments_kept + j.segments_to_delete > 0 {
                println!(
                    "journal: {} segments kept, {} {}{} (point-in-time restore reaches back from revision {})",
                    j.segments_kept,
                    j.segments_to_delete,
                    if a.dry_run { "to delete" } else { "deleted" },
                    if report.journal_locked > 0 {
                        format!(" ({} held by an Object Lock)", report.journal_locked)
                    } else {
                        String::new()
                    },
                    j.anchors
                        .values()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            for c in &report.incomplete_cleaned {
                println!("{:<13} {c}", "cleaned");
            }
            for m in &report.skipped_manifests {
                println!("{:<13} {:<52} {:<12} {}", "left alone", m.key, "-", m.why);
            }
            let deletes = report
                .decisions
                .iter()
                .filter(|d| d.action == Action::Delete)
                .count();
            println!(
                "{} backups, {} kept, {} {}{}{}",
                report.decisions.len(),
                report.decisions.len() - deletes,
                deletes,
                if a.dry_run {
                    "to delete (dry run: nothing deleted)"
                } else {
                    "deleted"
                },
                if report.locked == 0 {
                    String::new()
                } else {
                    format!(
                        "; {} held by an S3 Object Lock, left until it ends",
                        report.locked
                    )
                },
                if report.skipped_manifests.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; {} untrusted or unreadable manifests left alone (listed above)",
                        report.skipped_manifests.len()
                    )
                },
            );
        }
    }
    Ok(())
}
