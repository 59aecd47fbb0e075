//! Kits (#25) follow the backups that name them: a kit stays while a kept backup's manifest
//! or an upgrade mark of a kept backup names it, and goes with the last of them. Only kits
//! whose manifest is trusted are judged (its cluster decides `--cluster-id`); an object named
//! like a kit's with no manifest is an interrupted save, deleted after the grace period.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Action;
use crate::catalog::Manifest;
use crate::store::{ObjectInfo, Store};
use crate::trust::ReadPolicy;

/// The verdict on one kit.
#[derive(Debug, Clone, Serialize)]
pub struct KitDecision {
    pub id: String,
    pub node: String,
    pub created_at: DateTime<Utc>,
    pub action: Action,
    /// Its objects, manifest first (the commit point goes first).
    #[serde(skip)]
    pub keys: Vec<String>,
}

/// The kit ids that kept backups name, in their manifests or in upgrade marks beside them.
pub fn referenced(kept: &[Manifest], etcd_objects: &[ObjectInfo]) -> HashSet<String> {
    let kept_ids: HashSet<&str> = kept.iter().map(|m| m.id.as_str()).collect();
    let marks = etcd_objects.iter().filter_map(|o| {
        let (backup, kit) = crate::catalog::parse_upgrade_mark(&o.key)?;
        kept_ids
            .contains(backup.to_string().as_str())
            .then_some(kit)
    });
    kept.iter()
        .filter_map(|m| m.kit.clone())
        .chain(marks)
        .collect()
}

/// Judges every kit in the store: kept while referenced, deleted otherwise; objects of
/// interrupted saves (no manifest) deleted once older than `grace`.
///
/// # Errors
/// The store cannot be listed.
pub async fn plan(
    store: &Arc<dyn Store>,
    policy: &ReadPolicy,
    referenced: &HashSet<String>,
    only_cluster: Option<u64>,
    now: DateTime<Utc>,
    grace: std::time::Duration,
) -> Result<(Vec<KitDecision>, Vec<super::prune::Orphan>), crate::kit::KitError> {
    let objects = store.list("kit-").await?;
    let mut by_id: BTreeMap<&str, Vec<&ObjectInfo>> = BTreeMap::new();
    for o in &objects {
        if let Some(id) = kit_id_of(&o.key) {
            by_id.entry(id).or_default().push(o);
        }
    }
    let mut decisions = Vec::new();
    let mut judged = HashSet::new();
    for m in crate::kit::list(store, policy).await? {
        judged.insert(m.id.clone());
        let cluster = u64::from_str_radix(&m.cluster_id, 16).ok();
        if only_cluster.is_some_and(|c| Some(c) != cluster) {
            continue;
        }
        let manifest = crate::kit::manifest_key(&m.id);
        let objects = by_id.get(m.id.as_str()).into_iter().flatten();
        let others = objects.map(|o| o.key.clone()).filter(|k| *k != manifest);
        let keys: Vec<String> = std::iter::once(manifest.clone()).chain(others).collect();
        decisions.push(KitDecision {
            action: if referenced.contains(&m.id) {
                Action::Keep
            } else {
                Action::Delete
            },
            id: m.id,
            node: m.node,
            created_at: m.created_at,
            keys,
        });
    }
    let manifests: HashSet<String> = objects
        .iter()
        .filter(|o| o.key.ends_with(".json"))
        .filter_map(|o| kit_id_of(&o.key).map(str::to_string))
        .collect();
    let orphans = objects
        .iter()
        .filter(|o| o.key.ends_with(".tar.zst.age"))
        .filter(|o| {
            kit_id_of(&o.key).is_some_and(|id| !manifests.contains(id) && !judged.contains(id))
        })
        .map(|o| {
            let age = o
                .modified
                .and_then(|t| std::time::SystemTime::from(now).duration_since(t).ok())
                .unwrap_or_default();
            super::prune::Orphan {
                key: o.key.clone(),
                age_secs: age.as_secs(),
                action: if age > grace {
                    Action::Delete
                } else {
                    Action::Keep
                },
            }
        })
        // Without a manifest its cluster is unknown: a prune of one cluster leaves it.
        .filter(|_| only_cluster.is_none())
        .collect();
    Ok((decisions, orphans))
}

/// The kit id in `kit-<id>.json` or `kit-<id>.<nonce>.tar.zst.age`, when the key is one.
fn kit_id_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("kit-")?;
    let id = rest.get(..64)?;
    let tail = &rest[64..];
    let hex = id.bytes().all(|b| b.is_ascii_hexdigit());
    let ours = tail == ".json"
        || tail
            .strip_prefix('.')
            .and_then(|t| t.strip_suffix(".tar.zst.age"))
            .is_some_and(|nonce| !nonce.is_empty() && nonce.bytes().all(|b| b.is_ascii_hexdigit()));
    (hex && ours).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Reason;

    #[test]
    fn a_kit_is_referenced_by_a_kept_manifest_or_an_upgrade_mark_of_a_kept_backup() {
        let t = Utc::now();
        let (a, b, c, d) = (
            "a".repeat(64),
            "b".repeat(64),
            "c".repeat(64),
            "d".repeat(64),
        );
        let mut named = super::super::tests::manifest_at(t, Reason::Scheduled, 1);
        named.kit = Some(a.clone());
        let reused =
            super::super::tests::manifest_at(t - chrono::Duration::hours(1), Reason::Scheduled, 1);
        let deleted =
            super::super::tests::manifest_at(t - chrono::Duration::hours(2), Reason::Scheduled, 1);
        let object = |key: String| ObjectInfo {
            key,
            size: 0,
            modified: None,
        };
        let marks = [
            object(crate::catalog::upgrade_mark_key(&reused.id, "cp1", t, &b)),
            object(crate::catalog::upgrade_mark_key(&deleted.id, "cp1", t, &c)),
            object(format!("{}.manifest.json", reused.id)),
        ];
        let kept = [named, reused];
        let refs = referenced(&kept, &marks);
        assert_eq!(
            refs,
            HashSet::from([a, b]),
            "not {c} (its backup goes) nor {d}"
        );
    }

    #[test]
    fn only_kit_names_are_ours() {
        let id = "ab".repeat(32);
        assert_eq!(kit_id_of(&format!("kit-{id}.json")), Some(id.as_str()));
        assert_eq!(
            kit_id_of(&format!("kit-{id}.0a1b2c3d4e5f.tar.zst.age")),
            Some(id.as_str())
        );
        for key in [
            format!("kit-{id}.json.bak"),
            format!("kit-{id}..tar.zst.age"),
            format!("kit-{id}.zz.tar.zst.age"),
            format!("kit-{}.json", "zz".repeat(32)),
            "kit-ab.json".to_string(),
            format!("kitty-{id}.json"),
        ] {
            assert_eq!(kit_id_of(&key), None, "{key}");
        }
    }
}
