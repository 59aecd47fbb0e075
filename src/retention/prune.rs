//! Applying a retention plan to a store: manifests first, locks respected, orphans after a
//! grace period, the journal's own retention alongside.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{plan, Action, Decision, Policy};
use crate::catalog::{BackupId, Catalog, CatalogError, Fence, Manifest};
use crate::store::{Lock, ObjectInfo, Store};

/// An object named as ours whose manifest does not exist.
#[derive(Debug, Clone, Serialize)]
pub struct Orphan {
    pub key: String,
    pub age_secs: u64,
    pub action: Action,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub decisions: Vec<Decision>,
    pub orphans: Vec<Orphan>,
    /// Control-plane kits: kept while a kept backup names them (#25).
    pub kits: Vec<super::kits::KitDecision>,
    /// Leftovers the store itself cleaned (`.part` files, stale multipart uploads).
    pub incomplete_cleaned: Vec<String>,
    pub deleted: usize,
    /// Backups and orphans the rules would delete that an Object Lock still holds.
    pub locked: usize,
    /// The journal (continuous backup): what its retention keeps and deletes.
    pub journal: crate::continuous::prune::JournalPlan,
    pub journal_deleted: usize,
    pub journal_locked: usize,
    /// Manifests left alone because they cannot be trusted, each with why (#22): an
    /// untrusted key (its id), an unsigned one, one that does not parse or is not what its
    /// name says.
    pub skipped_manifests: Vec<SkippedManifest>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SkippedManifest {
    pub key: String,
    pub why: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Kit(#[from] crate::kit::KitError),
    #[error("retention stopped: {0}; what was deleted before stays deleted, the rest is left to the current uploader")]
    Fenced(#[source] crate::catalog::FenceLost),
}

/// Plans and (unless `dry_run`) applies retention to a store.
///
/// # Errors
/// Listing or deleting fails; what was deleted before the failure stays deleted (each backup's
/// manifest goes before its object, so the catalog is consistent at every step).
pub async fn prune(
    catalog: &Catalog,
    policy: &Policy,
    now: DateTime<Utc>,
    only_cluster: Option<u64>,
    dry_run: bool,
    fence: Option<&dyn Fence>,
) -> Result<PruneReport, PruneError> {
    let store: &dyn Store = catalog.store().as_ref();
    let (manifests, skipped) = catalog.list().await?;
    // One listing of everything named as ours serves the bundles and the orphans.
    let all = store.list("etcd-").await?;
    let bundled = bundled_backups(&all);
    let mut decisions = plan(&manifests, &bundled, now, policy, only_cluster);
    let mut orphans = find_orphans(&all, &manifests, now, policy, only_cluster);
    let mut locked =
        hold_locked(store, &manifests, &all, &mut decisions, &mut orphans, now).await?;
    let kept: Vec<Manifest> = manifests
        .iter()
        .filter(|m| {
            decisions
                .iter()
                .find(|d| d.id == m.id)
                .is_none_or(|d| d.action != Action::Delete)
        })
        .cloned()
        .collect();
    let (mut kits, kit_orphans) = super::kits::plan(
        catalog.store(),
        catalog.policy(),
        &super::kits::referenced(&kept, &all),
        only_cluster,
        now,
        policy.incomplete_grace,
    )
    .await?;
    let first_kit_orphan = orphans.len();
    orphans.extend(kit_orphans);
    locked += hold_locked_kits(store, &mut kits, &mut orphans[first_kit_orphan..], now).await?;
    let mut deleted = 0;
    let mut incomplete_cleaned = Vec::new();
    if !dry_run {
        for d in decisions.iter().filter(|d| d.action == Action::Delete) {
            let Some(m) = manifests.iter().find(|m| m.id == d.id) else {
                continue;
            };
            // The catalog lists only manifests whose id, cluster and object follow from their
            // key; anything else never reaches this point.
            let Some(id) = BackupId::parse(&m.id) else {
                tracing::warn!(id = %m.id, "not deleting a backup whose id does not parse");
                continue;
            };
            check_fence(fence).await?;
            // Manifest first: a crash mid-way leaves an orphan, never a manifest without data.
            for key in backup_keys(m, &id, &all) {
                store.delete(&key).await?;
            }
            deleted += 1;
            tracing::info!(id = %m.id, rules = ?d.rules, "retention deleted a backup");
        }
        for o in orphans.iter().filter(|o| o.action == Action::Delete) {
            check_fence(fence).await?;
            store.delete(&o.key).await?;
            tracing::info!(key = %o.key, "retention deleted an object without manifest");
        }
        for k in kits.iter().filter(|k| k.action == Action::Delete) {
            check_fence(fence).await?;
            for key in &k.keys {
                store.delete(key).await?;
            }
            tracing::info!(kit = %k.id, node = %k.node, "retention deleted a control-plane kit no kept backup names");
        }
        incomplete_cleaned = store.clean_incomplete().await?;
    }
    let journal_objects = store
        .list(&crate::continuous::segment::prefix(None))
        .await?;
    let mut journal = crate::continuous::prune::plan(
        &journal_objects,
        &kept,
        policy.journal_keep,
        policy.incomplete_grace,
        now,
        only_cluster,
    );
    confirm_cuts(catalog, &mut journal).await;
    let (journal_deleted, journal_locked) = if dry_run {
        (0, 0)
    } else {
        prune_journal(store, &journal, now, fence).await?
    };
    Ok(PruneReport {
        dry_run,
        decisions,
        orphans,
        kits,
        incomplete_cleaned,
        deleted,
        locked,
        journal,
        journal_deleted,
        journal_locked,
        skipped_manifests: skipped
            .into_iter()
            .map(|s| SkippedManifest {
                key: s.key,
                why: s.reason,
            })
            .collect(),
    })
}

/// Segment names are not signed (#21): a chain's segments go only when the segment at its cut
/// — the oldest kept, whose first revision decided what goes — has a trusted manifest that
/// says what its name says. Otherwise the chain is left alone, warned.
async fn confirm_cuts(catalog: &Catalog, journal: &mut crate::continuous::prune::JournalPlan) {
    let cuts: Vec<_> = journal.cuts.values().cloned().collect();
    let reader = crate::continuous::Journal::new(catalog.store().clone(), catalog.policy().clone());
    for cut in cuts {
        if let Err(e) = reader.manifest(&cut).await {
            tracing::warn!(chain = %cut.chain, error = %e, "journal retention leaves a chain alone: the segment that decides what goes is not trusted");
            journal.spare(&cut.chain);
            journal.suspicious.push(cut.chain.clone());
        }
    }
}

/// Deletes the segments and dead attempts the journal plan names, except what a lock holds.
async fn prune_journal(
    store: &dyn Store,
    plan: &crate::continuous::prune::JournalPlan,
    now: DateTime<Utc>,
    fence: Option<&dyn Fence>,
) -> Result<(usize, usize), PruneError> {
    let (mut deleted, mut locked) = (0, 0);
    for (segment, keys) in &plan.delete {
        if holding_lock(store, keys, now).await?.is_some() {
            locked += 1;
            continue;
        }
        check_fence(fence).await?;
        for key in keys {
            store.delete(key).await?;
        }
        deleted += 1;
        tracing::debug!(chain = %segment.chain, seq = segment.seq, "retention deleted a journal segment");
    }
    for key in plan.orphans.iter().chain(&plan.stale_state) {
        if holding_lock(store, std::slice::from_ref(key), now)
            .await?
            .is_some()
        {
            continue;
        }
        check_fence(fence).await?;
        store.delete(key).await?;
    }
    if deleted > 0 {
        tracing::info!(
            segments = deleted,
            "retention deleted journal segments no kept point in time needs"
        );
    }
    Ok((deleted, locked))
}

/// Every object of a backup, manifest first: the manifest, its signature, the data object and
/// the node bundles saved next to it.
fn backup_keys(m: &Manifest, id: &BackupId, all: &[ObjectInfo]) -> Vec<String> {
    let manifest = id.manifest_key();
    let mut keys = vec![
        manifest.clone(),
        crate::catalog::signature_key(&manifest),
        m.object.key.clone(),
    ];
    keys.extend(
        all.iter()
            .filter(|o| crate::catalog::id_of_bundle_key(&o.key).is_some_and(|b| b == *id))
            .map(|o| o.key.clone()),
    );
    keys
}

/// Turns every planned deletion that an Object Lock still prevents into `Locked`, naming the
/// lock in its rules; returns how many.
async fn hold_locked(
    store: &dyn Store,
    manifests: &[Manifest],
    all: &[ObjectInfo],
    decisions: &mut [Decision],
    orphans: &mut [Orphan],
    now: DateTime<Utc>,
) -> Result<usize, PruneError> {
    let mut locked = 0;
    for d in decisions.iter_mut().filter(|d| d.action == Action::Delete) {
        let (Some(m), Some(id)) = (
            manifests.iter().find(|m| m.id == d.id),
            BackupId::parse(&d.id),
        ) else {
            continue;
        };
        if let Some(lock) = holding_lock(store, &backup_keys(m, &id, all), now).await? {
            d.action = Action::Locked;
            d.rules.push(describe_lock(&lock));
            locked += 1;
        }
    }
    Ok(locked + hold_locked_orphans(store, orphans, now).await?)
}

/// Turns every kit deletion an Object Lock prevents into `Locked`; returns how many.
async fn hold_locked_kits(
    store: &dyn Store,
    kits: &mut [super::kits::KitDecision],
    orphans: &mut [Orphan],
    now: DateTime<Utc>,
) -> Result<usize, PruneError> {
    let mut locked = 0;
    for k in kits.iter_mut().filter(|k| k.action == Action::Delete) {
        if holding_lock(store, &k.keys, now).await?.is_some() {
            k.action = Action::Locked;
            locked += 1;
        }
    }
    Ok(locked + hold_locked_orphans(store, orphans, now).await?)
}

async fn hold_locked_orphans(
    store: &dyn Store,
    orphans: &mut [Orphan],
    now: DateTime<Utc>,
) -> Result<usize, PruneError> {
    let mut locked = 0;
    for o in orphans.iter_mut().filter(|o| o.action == Action::Delete) {
        if holding_lock(store, std::slice::from_ref(&o.key), now)
            .await?
            .is_some()
        {
            o.action = Action::Locked;
            locked += 1;
        }
    }
    Ok(locked)
}

/// The lock that holds longest among those still holding any of `keys` at `now`.
async fn holding_lock(
    store: &dyn Store,
    keys: &[String],
    now: DateTime<Utc>,
) -> Result<Option<Lock>, PruneError> {
    let now = std::time::SystemTime::from(now);
    let mut longest: Option<Lock> = None;
    for key in keys {
        let Some(lock) = store.lock_of(key).await? else {
            continue;
        };
        let outlasts = |l: &Lock| match (lock.until, l.until) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a > b,
        };
        if lock.holds_at(now) && longest.as_ref().is_none_or(outlasts) {
            longest = Some(lock);
        }
    }
    Ok(longest)
}

fn describe_lock(lock: &Lock) -> String {
    match lock.until {
        Some(until) => format!(
            "Object Lock ({}) until {}",
            lock.mode,
            DateTime::<Utc>::from(until).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => format!("Object Lock ({})", lock.mode),
    }
}

fn find_orphans(
    all: &[ObjectInfo],
    manifests: &[Manifest],
    now: DateTime<Utc>,
    policy: &Policy,
    only_cluster: Option<u64>,
) -> Vec<Orphan> {
    let referenced: HashSet<&str> = manifests.iter().map(|m| m.object.key.as_str()).collect();
    let manifest_keys: HashSet<&str> = all.iter().map(|o| o.key.as_str()).collect();
    let mut out = Vec::new();
    for o in all {
        let Some(id) = data_object_id(&o.key)
            .or_else(|| crate::catalog::id_of_bundle_key(&o.key))
            .or_else(|| orphan_signature_id(&o.key))
        else {
            continue;
        };
        if referenced.contains(o.key.as_str()) || manifest_keys.contains(id.manifest_key().as_str())
        {
            continue;
        }
        if only_cluster.is_some_and(|c| c != id.cluster_id) {
            continue;
        }
        let age = o
            .modified
            .and_then(|t| std::time::SystemTime::from(now).duration_since(t).ok())
            .unwrap_or_default();
        out.push(Orphan {
            key: o.key.clone(),
            age_secs: age.as_secs(),
            action: if age > policy.incomplete_grace {
                Action::Delete
            } else {
                Action::Keep
            },
        });
    }
    out
}

async fn check_fence(fence: Option<&dyn Fence>) -> Result<(), PruneError> {
    match fence {
        Some(f) => f.check().await.map_err(PruneError::Fenced),
        None => Ok(()),
    }
}

/// The ids of the backups that have a node bundle beside them.
/// The backups the upgrade gate left a mark (or an old node bundle) beside, among `all`
/// (every object named `etcd-…`): kept like pre-upgrade backups.
pub fn bundled_backups(all: &[ObjectInfo]) -> HashSet<String> {
    all.iter()
        .filter_map(|o| crate::catalog::id_of_bundle_key(&o.key))
        .map(|id| id.to_string())
        .collect()
}

/// The id of a manifest's signature (`<id>.manifest.json.minisig`): written before its
/// manifest, it is left alone when a commit was interrupted between the two (#21).
fn orphan_signature_id(key: &str) -> Option<BackupId> {
    crate::catalog::id_of_manifest_key(key.strip_suffix(crate::trust::SIGNATURE_SUFFIX)?)
}

/// The id of a data object key (`<id>.db.zst.age` or `<id>.db.zst`), when it is one of ours.
fn data_object_id(key: &str) -> Option<BackupId> {
    let stem = key
        .strip_suffix(".db.zst.age")
        .or_else(|| key.strip_suffix(".db.zst"))?;
    BackupId::parse(stem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn data_object_names_are_parsed_strictly() {
        let id = BackupId::new(Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap(), 5);
        assert!(data_object_id(&id.object_key(true)).is_some());
        assert!(data_object_id(&id.object_key(false)).is_some());
        assert!(data_object_id(&id.manifest_key()).is_none());
        assert!(data_object_id("etcd-backup.db.zst.age").is_none());
        assert!(data_object_id("snapshot.db").is_none());
    }

    /// #21: a signature whose manifest was never written (a commit interrupted between the two)
    /// goes after the grace period; one beside its manifest stays.
    #[test]
    fn a_signature_without_its_manifest_is_an_orphan() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        let lone = BackupId::new(now - chrono::Duration::days(3), 5);
        let paired = BackupId::new(now - chrono::Duration::days(3), 5);
        let sig = |id: &BackupId| crate::catalog::signature_key(&id.manifest_key());
        let old = Some(std::time::SystemTime::from(now - chrono::Duration::days(2)));
        let all: Vec<ObjectInfo> = [sig(&lone), sig(&paired), paired.manifest_key()]
            .into_iter()
            .map(|key| ObjectInfo {
                key,
                size: 1,
                modified: old,
            })
            .collect();
        let policy = Policy {
            incomplete_grace: std::time::Duration::from_secs(86400),
            ..Policy::default()
        };
        let orphans = find_orphans(&all, &[], now, &policy, None);
        let keys: Vec<&str> = orphans.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, vec![sig(&lone).as_str()]);
        assert_eq!(orphans[0].action, Action::Delete);
        assert!(orphan_signature_id("etcd-x.manifest.json.minisig").is_none());
    }
}
