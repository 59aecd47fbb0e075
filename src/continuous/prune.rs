//! Retention of the journal: a segment stays while a kept full backup needs it to reach a
//! point in time inside the window (`continuous.keep` back from now). Per chain, the anchor is
//! the newest kept backup from before the window (or, if none, the oldest kept backup in the
//! chain): segments wholly at or below the anchor's revision can never be replayed from any
//! kept backup into the window, and go. A chain with no kept backup in it is left alone (its
//! segments may still be the only record; nothing is deleted on a guess). Decided from names
//! and trusted backup manifests only; the newest segment of a chain always stays.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::segment::SegmentKey;
use crate::catalog::{cluster_of, Manifest};
use crate::store::ObjectInfo;

#[derive(Debug, Clone, Default, Serialize)]
pub struct JournalPlan {
    /// Segments to delete: every object of each (manifest first).
    #[serde(skip)]
    pub delete: Vec<(SegmentKey, Vec<String>)>,
    /// Objects of attempts that never committed (no manifest), older than the grace period.
    #[serde(skip)]
    pub orphans: Vec<String>,
    pub segments_kept: usize,
    pub segments_to_delete: usize,
    /// Per chain: the revision of the backup PITR into the window starts from.
    pub anchors: BTreeMap<String, i64>,
    /// Per chain with deletions: its oldest segment kept, whose first revision (from its name)
    /// decided the cut. Names are not signed: nothing of the chain is deleted unless this
    /// segment's manifest is trusted and says the same (the caller checks, #21).
    #[serde(skip)]
    pub cuts: BTreeMap<String, SegmentKey>,
    /// Heads and proofs of chains wholly before the window.
    pub stale_state: Vec<String>,
    /// Chains left alone because their names do not form a chain (a sequence number twice,
    /// revisions that do not grow with it): planted or damaged, never pruned on their word.
    pub suspicious: Vec<String>,
}

impl JournalPlan {
    /// Drops every deletion of `chain` (its cut could not be confirmed).
    pub fn spare(&mut self, chain: &str) {
        let before = self.delete.len();
        self.delete.retain(|(k, _)| k.chain != chain);
        let spared = before - self.delete.len();
        self.segments_kept += spared;
        self.segments_to_delete = self.delete.len();
        self.cuts.remove(chain);
    }
}

/// Whether segment names form one chain: sequence numbers unique and first revisions growing
/// with them (sorted by sequence number).
fn names_form_a_chain(segments: &[SegmentKey]) -> bool {
    segments
        .windows(2)
        .all(|w| w[1].seq > w[0].seq && w[1].first_rev > w[0].first_rev)
}

/// Plans the journal's retention.
pub fn plan(
    all: &[ObjectInfo],
    kept: &[Manifest],
    keep: Duration,
    grace: Duration,
    now: DateTime<Utc>,
    only_cluster: Option<u64>,
) -> JournalPlan {
    let window_start = now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    let mut chains: BTreeMap<String, Vec<SegmentKey>> = BTreeMap::new();
    let mut objects: BTreeMap<String, Vec<&ObjectInfo>> = BTreeMap::new();
    for o in all {
        let Some(k) = SegmentKey::of_any_key(&o.key) else {
            continue;
        };
        if SegmentKey::of_manifest_key(&o.key).is_some() {
            chains.entry(k.chain.clone()).or_default().push(k.clone());
        }
        objects.entry(k.stem_prefix()).or_default().push(o);
    }
    let mut out = JournalPlan::default();
    for (chain, mut segments) in chains {
        let Some(cluster) = crate::catalog::BackupId::parse(&chain).map(|id| id.cluster_id) else {
            continue;
        };
        if only_cluster.is_some_and(|c| c != cluster) {
            continue;
        }
        segments.sort_by_key(|s| s.seq);
        if !names_form_a_chain(&segments) {
            tracing::warn!(chain, "journal retention leaves a chain alone: its segment names repeat a sequence number or their revisions do not grow (planted or damaged objects; `lifeboat continuous status` shows the chain)");
            out.suspicious.push(chain.clone());
            out.segments_kept += segments.len();
            continue;
        }
        let Some(anchor) = anchor(&segments, kept, cluster, window_start) else {
            out.segments_kept += segments.len();
            continue;
        };
        out.anchors.insert(chain.clone(), anchor);
        for pair in segments.windows(2) {
            let (this, next) = (&pair[0], &pair[1]);
            // `this` holds revisions up to next.first_rev - 1.
            if next.first_rev - 1 <= anchor {
                out.cuts.insert(chain.clone(), next.clone());
                let mut keys = vec![this.manifest_key()];
                keys.extend(
                    objects
                        .get(&this.stem_prefix())
                        .into_iter()
                        .flatten()
                        .map(|o| o.key.clone())
                        .filter(|k| *k != this.manifest_key()),
                );
                out.delete.push((this.clone(), keys));
            } else {
                out.segments_kept += 1;
            }
        }
        out.segments_kept += 1; // the newest
    }
    out.segments_to_delete = out.delete.len();
    out.orphans = orphans(&objects, all, grace, now, only_cluster);
    out.stale_state = stale_state(all, window_start, only_cluster);
    out
}

/// Heads and proofs (state replaced in place, #21) of chains that lie wholly before the window:
/// a newer chain of the same cluster started before the window did, so no time in the window
/// falls in this chain, and its head or proof can answer nothing a restore will ask.
fn stale_state(
    all: &[ObjectInfo],
    window_start: DateTime<Utc>,
    only_cluster: Option<u64>,
) -> Vec<String> {
    let state_of = |key: &str| {
        super::head::chain_of_head_key(key)
            .map(str::to_string)
            .or_else(|| super::proven::chain_of_proven_key(key))
    };
    let mut starts: BTreeMap<u64, Vec<DateTime<Utc>>> = BTreeMap::new();
    for o in all {
        let chain = SegmentKey::of_manifest_key(&o.key)
            .map(|k| k.chain)
            .or_else(|| state_of(&o.key));
        if let Some(id) = chain.and_then(|c| crate::catalog::BackupId::parse(&c)) {
            starts.entry(id.cluster_id).or_default().push(id.time);
        }
    }
    all.iter()
        .filter_map(|o| {
            let id = crate::catalog::BackupId::parse(&state_of(&o.key)?)?;
            if only_cluster.is_some_and(|c| c != id.cluster_id) {
                return None;
            }
            let superseded = starts
                .get(&id.cluster_id)?
                .iter()
                .any(|t| *t > id.time && *t <= window_start);
            superseded.then(|| o.key.clone())
        })
        .collect()
}

/// The revision PITR into the window starts from, for one chain.
fn anchor(
    segments: &[SegmentKey],
    kept: &[Manifest],
    cluster: u64,
    window_start: DateTime<Utc>,
) -> Option<i64> {
    let (first, last) = (segments.first()?, segments.last()?);
    // A shadow's base never anchors the journal: its key may not vouch for what the writers'
    // journal may lose.
    let in_chain: Vec<&Manifest> = kept
        .iter()
        .filter(|m| m.reason != crate::catalog::Reason::Shadow)
        .filter(|m| cluster_of(m) == Some(cluster))
        .filter(|m| m.revision + 1 >= first.first_rev && m.revision < last.first_rev)
        .collect();
    in_chain
        .iter()
        .filter(|m| m.created_at <= window_start)
        .map(|m| m.revision)
        .max()
        .or_else(|| in_chain.iter().map(|m| m.revision).min())
}

/// Data objects and signatures of attempts whose manifest was never written.
fn orphans(
    objects: &BTreeMap<String, Vec<&ObjectInfo>>,
    all: &[ObjectInfo],
    grace: Duration,
    now: DateTime<Utc>,
    only_cluster: Option<u64>,
) -> Vec<String> {
    let manifests: std::collections::HashSet<&str> = all
        .iter()
        .filter(|o| SegmentKey::of_manifest_key(&o.key).is_some())
        .map(|o| o.key.as_str())
        .collect();
    let now = std::time::SystemTime::from(now);
    let mut out = Vec::new();
    for objs in objects.values() {
        for o in objs {
            let Some(k) = SegmentKey::of_any_key(&o.key) else {
                continue;
            };
            let cluster = crate::catalog::BackupId::parse(&k.chain).map(|id| id.cluster_id);
            if only_cluster.is_some_and(|c| Some(c) != cluster) {
                continue;
            }
            let committed = manifests.contains(k.manifest_key().as_str());
            let old = o
                .modified
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > grace);
            if !committed && old {
                out.push(o.key.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::BackupId;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap()
    }

    fn backup(hours_ago: i64, revision: i64) -> Manifest {
        let id = BackupId::new(now() - chrono::Duration::hours(hours_ago), 7);
        let text = format!(
            r#"{{"schema_version":1,"id":"{id}","created_at":"{}","cluster_id":"7","member_id":"1","member_name":"m","endpoint":"e","etcd_version":"3.5.16","revision":{revision},"raft_index":1,"db_size":1,"status":{{"hash":1,"revision":1,"totalKey":1,"totalSize":1}},"hashkv":{{"hash":1,"compact_revision":0,"checked":true,"result":"equal"}},"plain_sha256":"00","plain_size":1,"object":{{"key":"{}","size":1,"sha256":"00"}},"compression":{{"algorithm":"zstd","level":3}},"encryption":{{"scheme":"none","recipients":[]}},"reason":"scheduled","tool_version":"t","duration_ms":1}}"#,
            id.time.to_rfc3339(),
            id.object_key(false)
        );
        Manifest::parse("t", text.as_bytes()).unwrap()
    }

    fn segment_objects(chain: &str, firsts: &[i64]) -> Vec<ObjectInfo> {
        let mut out = Vec::new();
        for (i, first) in firsts.iter().enumerate() {
            let k = SegmentKey {
                chain: chain.into(),
                seq: i as u64 + 1,
                first_rev: *first,
            };
            for key in [
                k.manifest_key(),
                k.signature_key("00000000000000aa"),
                k.data_key(true, "00000000000000aa"),
            ] {
                out.push(ObjectInfo {
                    key,
                    size: 1,
                    modified: Some(std::time::SystemTime::from(now())),
                });
            }
        }
        out
    }

    #[test]
    fn segments_below_the_anchor_go_and_what_the_window_needs_stays() {
        let base = backup(100, 10);
        let older = backup(80, 50); // before the 72h window: the anchor
        let inside = backup(10, 150);
        let chain = base.id.clone();
        // Segments hold 11–40, 41–60, 61–120, 121–200, 201–.
        let all = segment_objects(&chain, &[11, 41, 61, 121, 201]);
        let keep = Duration::from_secs(72 * 3600);
        let day = Duration::from_secs(86400);
        let p = plan(
            &all,
            &[base.clone(), older.clone(), inside.clone()],
            keep,
            day,
            now(),
            None,
        );
        assert_eq!(p.anchors.get(&chain), Some(&50));
        let gone: Vec<u64> = p.delete.iter().map(|(k, _)| k.seq).collect();
        assert_eq!(
            gone,
            vec![1],
            "11–40 is below 50; 41–60 holds 51–60, needed"
        );
        assert_eq!(p.segments_kept, 4);
        assert_eq!(p.delete[0].1.len(), 3, "manifest, signature and data");
        assert!(p.delete[0].1[0].ends_with(".json"), "manifest first");
        // Without a kept backup in the chain nothing goes.
        let none = plan(&all, &[], keep, day, now(), None);
        assert!(none.delete.is_empty());
        // All kept backups inside the window: what lies before the oldest cannot be reached.
        let p = plan(&all, std::slice::from_ref(&inside), keep, day, now(), None);
        assert_eq!(p.anchors.get(&chain), Some(&150));
        let gone: Vec<u64> = p.delete.iter().map(|(k, _)| k.seq).collect();
        assert_eq!(gone, vec![1, 2, 3]);
    }

    /// #21: names are not signed. A planted twin (`seq` 4 again, first revision 1) would make
    /// every segment before it look unneeded; such a chain is left alone, and the segment
    /// that decides the cut is named for the caller to check.
    #[test]
    fn planted_segment_names_do_not_drive_deletions() {
        let base = backup(100, 10);
        let older = backup(80, 50);
        let chain = base.id.clone();
        let keep = Duration::from_secs(72 * 3600);
        let day = Duration::from_secs(86400);
        let all = segment_objects(&chain, &[11, 41, 61, 121, 201]);
        let p = plan(&all, &[base.clone(), older.clone()], keep, day, now(), None);
        assert_eq!(p.cuts.get(&chain).map(|k| k.seq), Some(2), "41– decided it");
        let mut planted = all.clone();
        planted.push(ObjectInfo {
            key: SegmentKey {
                chain: chain.clone(),
                seq: 4,
                first_rev: 1,
            }
            .manifest_key(),
            size: 1,
            modified: Some(std::time::SystemTime::from(now())),
        });
        let p = plan(
            &planted,
            &[base.clone(), older.clone()],
            keep,
            day,
            now(),
            None,
        );
        assert!(p.delete.is_empty(), "{:?}", p.delete);
        assert_eq!(p.suspicious, vec![chain.clone()]);
        // A cut that cannot be confirmed spares the chain.
        let mut p = plan(&all, &[base, older], keep, day, now(), None);
        p.spare(&chain);
        assert!(p.delete.is_empty() && p.cuts.is_empty());
        assert_eq!(p.segments_kept, 5);
    }

    /// #21: the heads and proofs of a chain wholly before the window go; the newest chain's,
    /// and those of a chain the window still reaches, stay.
    #[test]
    fn heads_and_proofs_of_chains_before_the_window_go() {
        let keep = Duration::from_secs(72 * 3600);
        let day = Duration::from_secs(86400);
        let old = backup(200, 10).id; // superseded by `middle`, before the window
        let middle = backup(100, 50).id; // superseded inside the window: still reached
        let newest = backup(10, 90).id;
        let mut all = Vec::new();
        for chain in [&old, &middle, &newest] {
            all.extend(segment_objects(chain, &[11]));
            for key in [
                crate::continuous::head::head_key(chain),
                crate::continuous::proven::proven_key(chain),
            ] {
                all.push(ObjectInfo {
                    key,
                    size: 1,
                    modified: Some(std::time::SystemTime::from(now())),
                });
            }
        }
        let p = plan(&all, &[], keep, day, now(), None);
        let mut stale = p.stale_state.clone();
        stale.sort();
        let mut expected = vec![
            crate::continuous::head::head_key(&old),
            crate::continuous::proven::proven_key(&old),
        ];
        expected.sort();
        assert_eq!(stale, expected);
    }

    #[test]
    fn attempts_that_never_committed_go_after_the_grace_period() {
        let base = backup(100, 10);
        let mut all = segment_objects(&base.id, &[11]);
        let dead = SegmentKey {
            chain: base.id.clone(),
            seq: 2,
            first_rev: 30,
        };
        for key in [
            dead.signature_key("00000000000000bb"),
            dead.data_key(true, "00000000000000bb"),
        ] {
            all.push(ObjectInfo {
                key,
                size: 1,
                modified: Some(std::time::SystemTime::from(
                    now() - chrono::Duration::hours(30),
                )),
            });
        }
        let p = plan(
            &all,
            &[base],
            Duration::from_secs(3600),
            Duration::from_secs(86400),
            now(),
            None,
        );
        assert_eq!(p.orphans.len(), 2, "{:?}", p.orphans);
        let p = plan(
            &all,
            &[],
            Duration::from_secs(3600),
            Duration::from_secs(200_000),
            now(),
            None,
        );
        assert!(p.orphans.is_empty(), "within the grace period");
    }
}
