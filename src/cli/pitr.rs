//! `--to-revision` / `--to-time` of `snapshot get` and `restore`: plan the replay, print the
//! plan, replay into a sandbox, write the snapshot at the target.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use lifeboat::config::{resolve_drill, resolve_read_policy, ConfigError, FileConfig};
use lifeboat::continuous::Journal;
use lifeboat::pitr::{self, ReplayReport, Target};
use lifeboat::stages::encrypt::Identities;

use super::args::PointArgs;
use super::progress;
use super::snapshot::open_store;

/// The point asked for, if any.
pub(super) fn target(p: &PointArgs) -> Result<Option<Target>> {
    if let Some(rev) = p.to_revision {
        if rev < 1 {
            return Err(ConfigError::Invalid {
                key: "--to-revision",
                message: format!("{rev} is not a revision (they start at 1)"),
            }
            .into());
        }
        return Ok(Some(Target::Revision(rev)));
    }
    let Some(raw) = &p.to_time else {
        return Ok(None);
    };
    let at = chrono::DateTime::parse_from_rfc3339(raw).map_err(|e| ConfigError::Invalid {
        key: "--to-time",
        message: format!("`{raw}` is not an RFC 3339 time like 2026-11-29T04:05:06Z ({e})"),
    })?;
    Ok(Some(Target::Time(at.with_timezone(&chrono::Utc))))
}

/// Replays the journal to `target` and writes the snapshot there to `out`.
pub(super) async fn to_file(
    target: Target,
    cluster: Option<u64>,
    identities: Option<&Arc<Identities>>,
    allow_unencrypted: bool,
    config: &FileConfig,
    out: &Path,
) -> Result<ReplayReport> {
    let store = open_store(config).await?;
    let policy = resolve_read_policy(&config.trust)?;
    let sandbox = resolve_drill(config)?;
    let journal = Journal::new(store.clone(), policy);
    let rev = match target {
        Target::Revision(r) => r,
        Target::Time(at) => {
            let rev = journal
                .resolve_time(identities.map(Arc::as_ref), cluster, at)
                .await?;
            eprintln!(
                "{}: the last revision received at or before it is {rev} (receive times are the journal's: within its segment interval of a write, and of its heartbeat interval once writes stop)",
                at.to_rfc3339()
            );
            rev
        }
    };
    let plan = pitr::plan(&journal, identities.map(Arc::as_ref), cluster, rev).await?;
    eprintln!(
        "point-in-time plan: base backup {} (revision {}), then {} revisions from {} journal segment(s) of chain {} up to revision {}",
        plan.base.id,
        plan.base.revision,
        plan.replay_revisions,
        plan.segments.len(),
        plan.chain,
        plan.target_rev
    );
    // As for a backup: with an identity, plaintext is refused unless asked for (whoever can
    // write the bucket must not downgrade what is restored).
    lifeboat::readback::check_encryption(&plan.base, identities.is_some(), allow_unencrypted)?;
    if identities.is_some() && !allow_unencrypted {
        if let Some(s) = plan.segments.iter().find(|s| s.encryption.scheme != "age") {
            anyhow::bail!(
                "journal segment {} of chain {} is stored without encryption although an identity is given; pass --allow-unencrypted if that was meant",
                s.seq,
                s.chain
            );
        }
    }
    pitr::replay_to_file(
        store,
        &plan,
        identities,
        &sandbox,
        out,
        progress::for_terminal(),
    )
    .await
    .with_context(|| format!("replaying the journal to revision {rev}"))
}

pub(super) fn print_report(r: &ReplayReport, out: &Path) {
    println!(
        "wrote {} at revision {} ({})",
        out.display(),
        r.target_rev,
        summary(r)
    );
    if let Some(note) = unverified(r) {
        println!("{note}");
    }
}

/// What no checkpoint proved (#21): the revisions after the last checkpoint verified on the
/// way (or after the base) up to the target.
pub(super) fn unverified(r: &ReplayReport) -> Option<String> {
    if r.verified_through.is_some_and(|v| v >= r.target_rev) || r.revisions == 0 {
        return None;
    }
    let from = match r.verified_through {
        Some(v) => format!("the last checkpoint at revision {v}"),
        None => format!("the base {}", r.base),
    };
    Some(format!(
        "unverified after {from}: revisions up to {} are as the signed journal records them (signatures, digests and hash chain checked) but no HashKV proved them; the next checkpoint does (`lifeboat continuous status` shows the verified window)",
        r.target_rev
    ))
}

/// What a replay did and proved, in one line.
pub(super) fn summary(r: &ReplayReport) -> String {
    format!(
        "base {}, {} revisions replayed at {:.0}/s, {} checkpoint(s) verified, {} compaction(s) mirrored, HashKV {} at compact revision {}",
        r.base,
        r.revisions,
        r.revisions_per_second,
        r.checkpoints_verified,
        r.compactions_mirrored,
        r.hash,
        r.compact_revision
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(verified_through: Option<i64>, target_rev: i64) -> ReplayReport {
        ReplayReport {
            base: "etcd-base".into(),
            target_rev,
            revisions: 10,
            segments: 1,
            checkpoints_verified: usize::from(verified_through.is_some()),
            verified_through,
            compactions_mirrored: 0,
            leases_granted: 0,
            leases_revoked: 0,
            replay_ms: 1,
            revisions_per_second: 1.0,
            hash: 1,
            compact_revision: 0,
        }
    }

    /// #21: a restore says which revisions no checkpoint proved.
    #[test]
    fn the_revisions_no_checkpoint_proved_are_named() {
        assert_eq!(unverified(&report(Some(20), 20)), None);
        let after = unverified(&report(Some(15), 20)).unwrap();
        assert!(
            after.contains("checkpoint at revision 15") && after.contains("up to 20"),
            "{after}"
        );
        let none = unverified(&report(None, 20)).unwrap();
        assert!(none.contains("the base etcd-base"), "{none}");
    }
}
