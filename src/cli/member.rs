//! `lifeboat member replace`.

use anyhow::{Context, Result};
use lifeboat::config::{resolve_restore, FileConfig};
use lifeboat::member::{self, MemberError, ReplaceOptions, ReplacePlan, ReplaceReport};

use super::args::{MemberCommand, Output, ReplaceArgs};

pub async fn run(cmd: MemberCommand, file: FileConfig) -> Result<()> {
    match cmd {
        MemberCommand::Replace(a) => replace(*a, file).await,
    }
}

async fn replace(a: ReplaceArgs, file: FileConfig) -> Result<()> {
    let config = file.overlay(a.flags());
    let resolved = resolve_restore(&config.restore)?;
    let opts = ReplaceOptions {
        endpoints: a.endpoints.clone(),
        force: a.force,
        stop_timeout: resolved.stop_timeout,
        catch_up_timeout: resolved.start_timeout,
        ..ReplaceOptions::new(resolved.manifests_dir, resolved.state_dir)
    };
    if a.resume {
        let report = member::resume(&opts)
            .await
            .context("member replace stopped")?;
        return print_report(&report, a.output);
    }
    if let Some(j) = member::unfinished(&opts.state_dir)? {
        return Err(MemberError::Refused {
            reason: format!(
                "a member replace ({}) is unfinished on this node: `lifeboat member replace --resume` goes on with it",
                j.plan.run_id
            ),
        }
        .into());
    }
    let plan = member::plan_replace(&opts).await?;
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({ "plan": plan, "carried_out": a.yes && !a.dry_run })
        ),
        Output::Table => print_plan(&plan),
    }
    if a.dry_run {
        eprintln!("dry run: nothing changed");
        return Ok(());
    }
    if !a.yes {
        return Err(MemberError::Refused {
            reason: "nothing changed: add --yes to carry out this plan".into(),
        }
        .into());
    }
    let report = member::replace(plan, &opts)
        .await
        .context("member replace stopped")?;
    print_report(&report, a.output)
}

fn print_plan(plan: &ReplacePlan) {
    println!(
        "member replace {} on this node: member {} ({})",
        plan.run_id, plan.name, plan.peer_url
    );
    println!("the cluster now:");
    for m in &plan.members {
        let role = if m.member.learner { "learner" } else { "voter" };
        let state = if m.answers {
            "answers"
        } else {
            "DOES NOT ANSWER"
        };
        let name = if m.member.name.is_empty() {
            "(not started)"
        } else {
            &m.member.name
        };
        println!(
            "  {:<16} {:x}  {role:<7}  {state:<15}  {}  {}",
            name,
            m.member.id,
            m.version.as_deref().unwrap_or("-"),
            m.member.peer_urls.join(",")
        );
    }
    println!("steps:");
    for (n, step) in member::STEPS.iter().enumerate() {
        println!("  {}. {}", n + 1, step.describe(plan));
    }
}

fn print_report(r: &ReplaceReport, output: Output) -> Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!(
        "member replace complete: {} voting members",
        r.members.len()
    );
    for m in &r.members {
        println!("  {:<16} {}  etcd {}", m.name, m.id, m.version);
    }
    let compacted = match r.compact_revision {
        c if c > 0 => format!("compacted at {c}"),
        _ => "never compacted".to_string(),
    };
    println!(
        "every member hashes to {} at revision {} ({compacted})",
        r.hash, r.revision
    );
    if let Some(aside) = &r.aside_dir {
        println!("the old data dir is kept at {}", aside.display());
    }
    println!(
        "the original etcd.yaml is kept at {}",
        r.original_manifest.display()
    );
    Ok(())
}
