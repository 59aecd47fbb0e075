//! Which source a recovery starts from: every usable survivor and the newest trusted full
//! backups, freshest first; the first one the journal continues to the target (or that is the
//! target) is the base. A survivor base is checked against the journal's newest checkpoint at
//! or before its revision before anything changes.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::survivors::{Examined, Origin, Survivor, SurvivorFacts};
use super::RecoverError;
use crate::catalog::{Manifest, Reason};
use crate::continuous::{ChainListing, ContinuousError, Journal, Reach, SegmentManifest};
use crate::pitr::Target;
use crate::stages::encrypt::Identities;

/// What a recovery asks of the store.
pub struct Recovery<'a> {
    pub journal: &'a Journal,
    pub identities: Option<&'a Identities>,
    pub cluster: Option<u64>,
}

/// A survivor as the plan prints it.
#[derive(Debug, Clone, Serialize)]
pub struct SurvivorRow {
    pub survivor: Survivor,
    pub examined: Examined,
    /// When the capture received the survivor's revision (if the journal holds it).
    pub received_at: Option<DateTime<Utc>>,
}

/// The journal as the plan prints it.
#[derive(Debug, Clone, Serialize)]
pub struct JournalRow {
    pub cluster_id: String,
    pub newest_rev: i64,
    pub newest_at: DateTime<Utc>,
    /// What a shadow proved, if one runs.
    pub proven_rev: Option<i64>,
    pub proven_at: Option<DateTime<Utc>>,
}

/// Where the recovered state starts.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Base {
    /// `survivors[index]`.
    Survivor {
        index: usize,
        label: String,
    },
    Backup {
        manifest: Box<Manifest>,
    },
}

impl Base {
    /// `survivor <path>` or `backup <id>`.
    pub fn describe(&self) -> String {
        match self {
            Base::Survivor { label, .. } => format!("survivor {label}"),
            Base::Backup { manifest } => format!("backup {}", manifest.id),
        }
    }
}

/// The revisions replayed on the base.
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    pub chain: String,
    pub from_rev: i64,
    pub to_rev: i64,
    #[serde(skip)]
    pub segments: Vec<SegmentManifest>,
    pub segment_count: usize,
}

/// What was checked between a survivor base and the journal.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum HashCheck {
    /// The survivor's HashKV at the reference's revision equals it (`against`: the journal's
    /// checkpoint, or a full backup's HashKV).
    Equal {
        against: String,
        rev: i64,
        compact_rev: i64,
        hash: u32,
    },
    /// Nothing to compare with, and why.
    NotCompared { why: String },
}

/// The recovery, decided before anything changes.
#[derive(Debug, Clone, Serialize)]
pub struct RecoverPlan {
    pub survivors: Vec<SurvivorRow>,
    pub journal: Option<JournalRow>,
    /// The newest trusted full backup of the cluster.
    pub newest_backup: Option<Box<Manifest>>,
    pub base: Base,
    pub base_rev: i64,
    pub target: i64,
    pub target_at: Option<DateTime<Utc>>,
    pub replay: Option<Replay>,
    /// Fresher sources that were not used, and why.
    pub passed_over: Vec<String>,
    pub hash_check: HashCheck,
}

impl RecoverPlan {
    /// The base survivor's facts, if the base is a survivor.
    pub fn base_survivor(&self) -> Option<(&Survivor, &SurvivorFacts)> {
        match &self.base {
            Base::Survivor { index, .. } => {
                let row = self.survivors.get(*index)?;
                Some((&row.survivor, row.examined.usable()?))
            }
            Base::Backup { .. } => None,
        }
    }
}

/// One source a recovery could start from.
struct Candidate {
    base: Base,
    revision: i64,
    /// Survivors first at equal revisions (no download), this node's first among them.
    rank: u8,
}

/// Examines the sources and decides the base, the target and the replay.
///
/// # Errors
/// No source can reach the target; the journal is unreadable or untrusted; a survivor base
/// disagrees with the journal (`Disagree`).
pub async fn plan(
    r: &Recovery<'_>,
    survivors: Vec<(Survivor, Examined)>,
    target: Option<Target>,
) -> Result<RecoverPlan, RecoverError> {
    let reach = match r.journal.reach(r.cluster).await {
        Ok(reach) => Some(reach),
        // No journal in the store: survivors and full backups only.
        Err(ContinuousError::NotCovered { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let backups = match &reach {
        Some(reach) => reach.backups.clone(),
        None => r.journal.backups().await?,
    };
    let newest_backup = backups
        .iter()
        .filter(|m| m.reason != Reason::Shadow)
        .max_by_key(|m| (m.revision, m.created_at))
        .cloned();
    let journal_row = match &reach {
        Some(reach) => journal_row(r, reach).await?,
        None => None,
    };
    let freshest = survivors
        .iter()
        .filter_map(|(_, e)| e.usable().map(|f| f.revision))
        .max();
    let target = match target {
        Some(Target::Revision(rev)) => rev,
        Some(Target::Time(at)) => r.journal.resolve_time(r.identities, r.cluster, at).await?,
        None => [
            journal_row.as_ref().map(|j| j.newest_rev),
            freshest,
            newest_backup.as_ref().map(|m| m.revision),
        ]
        .into_iter()
        .flatten()
        .max()
        .ok_or_else(|| {
            RecoverError::NoSource(
                "no survivor is usable, and the store holds no trusted backup and no journal"
                    .into(),
            )
        })?,
    };
    let candidates = candidates(&survivors, reach.as_ref(), newest_backup.as_ref(), target);
    let mut passed_over = Vec::new();
    let mut rows = Vec::new();
    for (survivor, examined) in survivors {
        let received_at = match (&reach, examined.usable()) {
            (Some(reach), Some(f)) => received_at(r, reach, f.revision).await?,
            _ => None,
        };
        rows.push(SurvivorRow {
            survivor,
            examined,
            received_at,
        });
    }
    for c in candidates {
        let replay = if c.revision == target {
            None
        } else {
            match continue_from(r, reach.as_ref(), c.revision, target).await? {
                Some(replay) => Some(replay),
                None => {
                    passed_over.push(format!(
                        "{} (revision {}): no journal chain continues from it to revision {target}",
                        c.base.describe(),
                        c.revision
                    ));
                    continue;
                }
            }
        };
        let hash_check = match (&c.base, &reach) {
            (Base::Survivor { index, .. }, Some(reach)) => {
                let row = &rows[*index];
                check_survivor(r, reach, row, replay.as_ref()).await?
            }
            (Base::Survivor { .. }, None) => HashCheck::NotCompared {
                why: "the store holds no journal".into(),
            },
            (Base::Backup { .. }, _) => HashCheck::NotCompared {
                why: "a full backup's own checks (digest, signature, HashKV at backup time) vouch for it".into(),
            },
        };
        let target_at = match &reach {
            Some(reach) => received_at(r, reach, target).await?,
            None => None,
        };
        return Ok(RecoverPlan {
            survivors: rows,
            journal: journal_row,
            newest_backup: newest_backup.map(Box::new),
            base: c.base,
            base_rev: c.revision,
            target,
            target_at,
            replay,
            passed_over,
            hash_check,
        });
    }
    Err(RecoverError::NoSource(format!(
        "nothing reaches revision {target}: {}",
        if passed_over.is_empty() {
            "no usable survivor or trusted backup at or before it".to_string()
        } else {
            passed_over.join("; ")
        }
    )))
}

/// Usable survivors and trusted full backups (the newest, and each chain's own base) at or
/// before `target`, freshest first.
fn candidates(
    survivors: &[(Survivor, Examined)],
    reach: Option<&Reach>,
    newest_backup: Option<&Manifest>,
    target: i64,
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = survivors
        .iter()
        .enumerate()
        .filter_map(|(index, (s, e))| {
            let f = e.usable()?;
            Some(Candidate {
                base: Base::Survivor {
                    index,
                    label: s.label.clone(),
                },
                revision: f.revision,
                rank: match s.origin {
                    Origin::ThisNode => 0,
                    Origin::Given => 1,
                },
            })
        })
        .collect();
    let chain_bases = reach
        .into_iter()
        .flat_map(|r| r.chains.iter().map(|c| &c.base));
    let mut seen = Vec::new();
    for m in newest_backup.into_iter().chain(chain_bases) {
        if seen.contains(&m.id) {
            continue;
        }
        seen.push(m.id.clone());
        out.push(Candidate {
            base: Base::Backup {
                manifest: Box::new(m.clone()),
            },
            revision: m.revision,
            rank: 2,
        });
    }
    out.retain(|c| c.revision <= target);
    out.sort_by_key(|c| (std::cmp::Reverse(c.revision), c.rank));
    out
}

async fn journal_row(r: &Recovery<'_>, reach: &Reach) -> Result<Option<JournalRow>, RecoverError> {
    let Some(newest) = reach.chains.iter().max_by_key(|c| c.coverage.to_rev) else {
        return Ok(None);
    };
    let status = r.journal.status(Some(reach.cluster)).await?;
    Ok(Some(JournalRow {
        cluster_id: format!("{:x}", reach.cluster),
        newest_rev: newest.coverage.to_rev,
        newest_at: newest.coverage.to_time,
        proven_rev: status.proven_rev,
        proven_at: status.proven_at,
    }))
}

/// The segments from `from + 1` to `target` of the newest chain that has them.
async fn continue_from(
    r: &Recovery<'_>,
    reach: Option<&Reach>,
    from: i64,
    target: i64,
) -> Result<Option<Replay>, RecoverError> {
    let Some(reach) = reach else {
        return Ok(None);
    };
    for chain in reach.chains.iter().rev() {
        if chain.coverage.to_rev < target {
            continue;
        }
        match r
            .journal
            .segments_between(&chain.listing, from, target)
            .await
        {
            Ok(segments) => {
                return Ok(Some(Replay {
                    chain: chain.listing.chain.clone(),
                    from_rev: from,
                    to_rev: target,
                    segment_count: segments.len(),
                    segments,
                }))
            }
            Err(ContinuousError::NotCovered { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// The chain whose segments hold `rev`, newest first.
fn chain_holding(reach: &Reach, rev: i64) -> Option<&ChainListing> {
    reach
        .chains
        .iter()
        .rev()
        .map(|c| &c.listing)
        .find(|l| l.segments.first().is_some_and(|s| s.first_rev <= rev))
}

async fn received_at(
    r: &Recovery<'_>,
    reach: &Reach,
    rev: i64,
) -> Result<Option<DateTime<Utc>>, RecoverError> {
    match chain_holding(reach, rev) {
        Some(listing) => Ok(r.journal.received_at(listing, rev, r.identities).await?),
        None => Ok(None),
    }
}

/// The survivor's HashKV at the newest revision at or before its own where the cluster's is
/// known — a journal checkpoint, or a full backup's — against it: unequal means the survivor
/// and the journal are not the same history.
async fn check_survivor(
    r: &Recovery<'_>,
    reach: &Reach,
    row: &SurvivorRow,
    replay: Option<&Replay>,
) -> Result<HashCheck, RecoverError> {
    let Some(facts) = row.examined.usable() else {
        return Err(RecoverError::NoSource(format!(
            "{} is not usable",
            row.survivor.label
        )));
    };
    let listing = match replay {
        Some(p) => reach
            .chains
            .iter()
            .find(|c| c.listing.chain == p.chain)
            .map(|c| &c.listing),
        None => chain_holding(reach, facts.revision),
    };
    let Some(listing) = listing else {
        return Ok(HashCheck::NotCompared {
            why: format!(
                "no journal chain holds revision {} or before",
                facts.revision
            ),
        });
    };
    let checkpoint = r
        .journal
        .checkpoint_at_or_before(listing, facts.revision, r.identities)
        .await?
        .map(|c| Reference {
            rev: c.rev,
            compact_rev: c.compact_rev,
            hash: c.hash,
            what: "the journal's checkpoint".into(),
        });
    let Some(cp) = checkpoint
        .into_iter()
        .chain(backup_reference(reach, facts.revision))
        .max_by_key(|c| c.rev)
    else {
        return Ok(HashCheck::NotCompared {
            why: format!(
                "neither the journal nor a trusted backup has a HashKV at or before revision {}",
                facts.revision
            ),
        });
    };
    // etcd reports -1 for a store never compacted.
    let cp_compact = cp.compact_rev.max(0);
    if cp_compact < facts.compact_revision || cp.rev <= facts.compact_revision {
        return Ok(HashCheck::NotCompared {
            why: format!(
                "the survivor is compacted at revision {}, past {} (revision {}, compacted at {})",
                facts.compact_revision, cp.what, cp.rev, cp.compact_rev
            ),
        });
    }
    let db = row.survivor.db.clone();
    let rev = cp.rev;
    let actual = tokio::task::spawn_blocking(move || crate::verify::hash_kv(&db, rev, cp_compact))
        .await
        .map_err(|e| RecoverError::NoSource(format!("hashing {}: {e}", row.survivor.label)))?
        .map_err(|source| RecoverError::Read {
            path: row.survivor.db.clone(),
            source,
        })?;
    if actual != cp.hash {
        return Err(RecoverError::Disagree {
            label: row.survivor.label.clone(),
            against: cp.what,
            rev: cp.rev,
            compact_rev: cp.compact_rev,
            expected: cp.hash,
            actual,
        });
    }
    Ok(HashCheck::Equal {
        against: cp.what,
        rev: cp.rev,
        compact_rev: cp.compact_rev,
        hash: actual,
    })
}

/// A HashKV the cluster reported, to hold a survivor against.
struct Reference {
    rev: i64,
    compact_rev: i64,
    hash: u32,
    what: String,
}

/// The newest trusted full backup at or before `rev` whose HashKV was checked when it was
/// taken: the reference when the journal has no checkpoint there yet (a survivor at the
/// journal's base).
fn backup_reference(reach: &Reach, rev: i64) -> Option<Reference> {
    reach
        .backups
        .iter()
        .filter(|m| m.revision <= rev && m.hashkv.checked)
        .max_by_key(|m| m.revision)
        .and_then(|m| {
            Some(Reference {
                rev: m.revision,
                compact_rev: m.hashkv.compact_revision?,
                hash: m.hashkv.hash,
                what: format!("backup {}'s HashKV", m.id),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn survivor(label: &str, origin: Origin, revision: Option<i64>) -> (Survivor, Examined) {
        let s = Survivor {
            label: label.into(),
            db: Path::new(label).join("member/snap/db"),
            origin,
        };
        let e = match revision {
            Some(revision) => Examined::Usable(SurvivorFacts {
                revision,
                compact_revision: 0,
                consistent_index: None,
                db_size: 4096,
            }),
            None => Examined::Refused {
                why: "fails the bbolt walk".into(),
            },
        };
        (s, e)
    }

    fn labels(c: &[Candidate]) -> Vec<(String, i64)> {
        c.iter()
            .map(|c| match &c.base {
                Base::Survivor { label, .. } => (label.clone(), c.revision),
                Base::Backup { manifest } => (manifest.id.clone(), c.revision),
            })
            .collect()
    }

    /// Freshest first; this node before a given one at the same revision; refused ones and
    /// ones past the target never.
    #[test]
    fn candidates_are_the_usable_sources_freshest_first() {
        let survivors = vec![
            survivor("/var/lib/etcd", Origin::ThisNode, Some(40)),
            survivor("/mnt/cp2", Origin::Given, Some(90)),
            survivor("/mnt/cp3", Origin::Given, Some(40)),
            survivor("/mnt/broken", Origin::Given, None),
            survivor("/mnt/ahead", Origin::Given, Some(500)),
        ];
        let c = candidates(&survivors, None, None, 100);
        assert_eq!(
            labels(&c),
            vec![
                ("/mnt/cp2".to_string(), 90),
                ("/var/lib/etcd".to_string(), 40),
                ("/mnt/cp3".to_string(), 40),
            ]
        );
    }

    #[test]
    fn the_loss_window_names_what_was_restored_and_what_is_lost() {
        let at = |s: &str| Some(DateTime::parse_from_rfc3339(s).unwrap().to_utc());
        let mut plan = RecoverPlan {
            survivors: vec![{
                let (survivor, examined) = survivor("/var/lib/etcd", Origin::ThisNode, Some(40));
                SurvivorRow {
                    survivor,
                    examined,
                    received_at: None,
                }
            }],
            journal: Some(JournalRow {
                cluster_id: "c1".into(),
                newest_rev: 90,
                newest_at: at("2026-12-04T03:00:02Z").unwrap(),
                proven_rev: None,
                proven_at: None,
            }),
            newest_backup: None,
            base: Base::Survivor {
                index: 0,
                label: "/var/lib/etcd".into(),
            },
            base_rev: 40,
            target: 90,
            target_at: at("2026-12-04T03:00:02Z"),
            replay: None,
            passed_over: Vec::new(),
            hash_check: HashCheck::NotCompared { why: "x".into() },
        };
        let line = super::super::loss_window(&plan);
        assert!(
            line.starts_with("restored through revision 90 (received at 2026-12-04T03:00:02.000Z)"),
            "{line}"
        );
        assert!(
            line.contains(
                "writes after 2026-12-04T03:00:02.000Z are lost (at most the journal's lag)"
            ),
            "{line}"
        );
        plan.target = 70;
        let line = super::super::loss_window(&plan);
        assert!(
            line.contains("revisions after 70 were left out as asked"),
            "{line}"
        );
        plan.journal = None;
        let line = super::super::loss_window(&plan);
        assert!(line.contains("there is no journal"), "{line}");
    }
}
