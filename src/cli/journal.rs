//! `lifeboat continuous status|list`: what the journal holds.

use anyhow::Result;
use lifeboat::config::{resolve_read_policy, FileConfig};
use lifeboat::continuous::Journal;

use super::args::{ContinuousCommand, JournalArgs, Output};
use super::snapshot::{cluster_flag, open_store};

pub async fn run(cmd: ContinuousCommand, file: FileConfig) -> Result<()> {
    match cmd {
        ContinuousCommand::Status(a) => show_status(a, file).await,
        ContinuousCommand::List(a) => list(a, file).await,
    }
}

async fn show_status(a: JournalArgs, file: FileConfig) -> Result<()> {
    let config = file.overlay(a.dest.flags());
    let store = open_store(&config).await?;
    let policy = resolve_read_policy(&config.trust)?;
    let cluster = cluster_flag(a.cluster_id.as_deref())?;
    let s = Journal::new(store.clone(), policy).status(cluster).await?;
    if a.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    if s.chains.is_empty() {
        println!(
            "no journal in {} (continuous backup off?)",
            store.location()
        );
        for u in &s.untrusted_chains {
            println!("UNTRUSTED: chain {} is not used: {}", u.chain, u.why);
        }
        return Ok(());
    }
    println!(
        "{:<52} {:>8} {:>21}  {:<24} {:<24}",
        "CHAIN (base backup)", "SEGMENTS", "REVISIONS", "FROM", "TO"
    );
    for c in &s.chains {
        let from = c.base_revision.unwrap_or(c.first_rev - 1);
        println!(
            "{:<52} {:>8} {:>21}  {:<24} {:<24}{}",
            c.chain,
            c.segments,
            format!("{from}–{}", c.last_rev),
            c.first_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            c.last_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            if c.base_revision.is_none() {
                "  (base backup missing or untrusted: not restorable)"
            } else {
                ""
            }
        );
    }
    for c in &s.chains {
        for h in &c.holes {
            println!(
                "HOLE: chain {} lacks segment(s) {}–{}: revisions before {} are not restorable through it from its base (deleted or never committed)",
                c.chain,
                h.after_seq + 1,
                h.resumes_at_seq - 1,
                h.resumes_at_rev
            );
        }
    }
    for u in &s.untrusted_chains {
        println!("UNTRUSTED: chain {} is not used: {}", u.chain, u.why);
    }
    for g in &s.gaps {
        println!(
            "GAP: revisions {}–{} of cluster {} are not restorable (between chains {} and {})",
            g.after_rev + 1,
            g.resumes_at_rev - 1,
            g.cluster_id,
            g.after_chain,
            g.next_chain
        );
    }
    if let (Some(rev), Some(age)) = (s.newest_rev, s.newest_age_secs) {
        println!("newest durable revision {rev}, received {age:.1} s ago");
    }
    match (s.proven_rev, s.proven_at) {
        (Some(rev), Some(at)) => println!(
            "verified window: the shadow proved the journal restores exactly up to revision {rev} (at {})",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        _ => println!("verified window: none (no shadow proof this reader trusts; docs/shadow.md)"),
    }
    if let (Some(rev), Some(at), Some(newest)) = (s.newest_rev, s.caught_up_at, s.newest_at) {
        if at > newest {
            println!(
                "no write since: the journal was caught up at {} (a --to-time up to then restores revision {rev})",
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            );
        }
    }
    Ok(())
}

async fn list(a: JournalArgs, file: FileConfig) -> Result<()> {
    let config = file.overlay(a.dest.flags());
    let store = open_store(&config).await?;
    let policy = resolve_read_policy(&config.trust)?;
    let cluster = cluster_flag(a.cluster_id.as_deref())?;
    let segments = Journal::new(store.clone(), policy)
        .segments(cluster)
        .await?;
    if a.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&segments)?);
        return Ok(());
    }
    println!(
        "{:<52} {:>6} {:>21} {:<24} {:>10} {:>5}",
        "CHAIN", "SEQ", "REVISIONS", "LAST RECEIVED", "BYTES", "CHECK"
    );
    for m in &segments {
        println!(
            "{:<52} {:>6} {:>21} {:<24} {:>10} {:>5}",
            m.chain,
            m.seq,
            format!("{}–{}", m.first_rev, m.last_rev),
            m.last_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            m.object.size,
            m.checkpoints
        );
    }
    Ok(())
}
