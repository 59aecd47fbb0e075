//! One pass over the source store: what the target lacks, in order, each checked.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::object::{copy_object, put_small, Fail, Outcome};
use super::{CopyError, CopyReport, Kind, Refused};
use crate::catalog::{id_of_manifest_key, parse_upgrade_mark, BackupId, Catalog, CatalogError};
use crate::continuous::chain::read_for_copy;
use crate::continuous::head::{chain_of_head_key, head_from_bytes, head_key};
use crate::continuous::proven::{chain_of_proven_key, proven_from_bytes, proven_key};
use crate::continuous::{ContinuousError, SegmentKey};
use crate::retention::Policy;
use crate::store::{get_small, ObjectInfo, Store, StoreError};

/// A head or a proof, at most.
const STATE_LIMIT: usize = 64 << 10;
/// A kit's manifest, at most (hundreds of files listed).
const KIT_MANIFEST_LIMIT: usize = 4 << 20;
/// How long a retention decision over the source's backups is reused while they stay the same.
const KEEP_CACHE: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// Only backups created, and segments ending, at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Say what would be copied; write nothing.
    pub dry_run: bool,
    /// The target's own retention: what it would delete at once is not copied.
    pub retention: Option<Policy>,
}

/// Copies one source store to one target, pass after pass.
pub struct Copier {
    source: Catalog,
    target: Arc<dyn Store>,
    options: CopyOptions,
    /// Keys refused in an earlier pass: named and counted once.
    refused: HashSet<String>,
    keep: Option<KeepCache>,
}

/// What the target's retention would drop, for one set of source backups.
struct KeepCache {
    manifest_keys: Vec<String>,
    at: std::time::Instant,
    dropped: HashSet<String>,
    kept: Vec<crate::catalog::Manifest>,
}

/// What both stores hold, by name, at the start of a pass.
struct Listing {
    etcd: Vec<ObjectInfo>,
    journal: Vec<ObjectInfo>,
    target: HashMap<String, u64>,
}

impl Listing {
    fn on_target(&self, key: &str) -> bool {
        self.target.contains_key(key)
    }

    /// The target holds `key` with the source's size.
    fn same_on_target(&self, src: &ObjectInfo) -> bool {
        self.target.get(&src.key) == Some(&src.size)
    }
}

impl Copier {
    pub fn new(source: Catalog, target: Arc<dyn Store>, options: CopyOptions) -> Copier {
        Copier {
            source,
            target,
            options,
            refused: HashSet::new(),
            keep: None,
        }
    }

    pub fn target(&self) -> &Arc<dyn Store> {
        &self.target
    }

    /// One pass: everything the target lacks, in order.
    ///
    /// # Errors
    /// A store fails; what was copied before stays (the next pass skips it).
    pub async fn pass(&mut self) -> Result<CopyReport, CopyError> {
        let mut report = CopyReport {
            from: self.source.store().location(),
            to: self.target.location(),
            dry_run: self.options.dry_run,
            ..CopyReport::default()
        };
        let mut listing = self.list().await?;
        let (dropped, dropped_segments) = self.retention_drops(&listing).await?;
        self.backups(&mut listing, &dropped, &mut report).await?;
        self.marks(&mut listing, &mut report).await?;
        self.segments(&mut listing, &dropped_segments, &mut report)
            .await?;
        self.state(&listing, &mut report).await?;
        Ok(report)
    }

    async fn list(&self) -> Result<Listing, CopyError> {
        let src = self.source.store();
        let list_src =
            |prefix: &'static str| async move { src.list(prefix).await.map_err(CopyError::Source) };
        let mut target = HashMap::new();
        for prefix in ["etcd-", "kit-", "seg."] {
            for o in self.target.list(prefix).await.map_err(CopyError::Target)? {
                target.insert(o.key, o.size);
            }
        }
        Ok(Listing {
            etcd: list_src("etcd-").await?,
            journal: list_src("seg.").await?,
            target,
        })
    }

    /// Backup ids and segment manifest keys the target's retention would delete at once.
    async fn retention_drops(
        &mut self,
        listing: &Listing,
    ) -> Result<(HashSet<String>, HashSet<String>), CopyError> {
        let Some(policy) = self.options.retention.clone() else {
            return Ok(Default::default());
        };
        let manifest_keys: Vec<String> = listing
            .etcd
            .iter()
            .filter(|o| id_of_manifest_key(&o.key).is_some())
            .map(|o| o.key.clone())
            .collect();
        let fresh = self
            .keep
            .as_ref()
            .is_some_and(|k| k.manifest_keys == manifest_keys && k.at.elapsed() < KEEP_CACHE);
        if !fresh {
            let (manifests, _) = self.source.list().await.map_err(CopyError::Catalog)?;
            let bundled = crate::retention::bundled_backups(&listing.etcd);
            let decisions = crate::retention::plan(&manifests, &bundled, Utc::now(), &policy, None);
            let dropped: HashSet<String> = decisions
                .into_iter()
                .filter(|d| d.action == crate::retention::Action::Delete)
                .map(|d| d.id)
                .collect();
            let kept = manifests
                .into_iter()
                .filter(|m| !dropped.contains(&m.id))
                .collect();
            self.keep = Some(KeepCache {
                manifest_keys,
                at: std::time::Instant::now(),
                dropped,
                kept,
            });
        }
        let keep = self.keep.as_ref().expect("set above");
        let journal = crate::continuous::prune::plan(
            &listing.journal,
            &keep.kept,
            policy.journal_keep,
            policy.incomplete_grace,
            Utc::now(),
            None,
        );
        let segments = journal
            .delete
            .iter()
            .map(|(k, _)| k.manifest_key())
            .collect();
        Ok((keep.dropped.clone(), segments))
    }

    /// Every backup the target lacks, oldest first: its kit, object, signature, then manifest.
    async fn backups(
        &mut self,
        listing: &mut Listing,
        dropped: &HashSet<String>,
        report: &mut CopyReport,
    ) -> Result<(), CopyError> {
        let mut manifests: Vec<(BackupId, ObjectInfo)> = listing
            .etcd
            .iter()
            .filter_map(|o| Some((id_of_manifest_key(&o.key)?, o.clone())))
            .collect();
        manifests.sort_by(|a, b| a.0.time.cmp(&b.0.time).then(a.1.key.cmp(&b.1.key)));
        for (id, info) in manifests {
            if self.options.since.is_some_and(|since| id.time < since) {
                report.before_since += 1;
            } else if dropped.contains(&id.to_string()) {
                report.left_to_retention += 1;
            } else if listing.same_on_target(&info) {
                report.present += 1;
            } else {
                self.backup(listing, &info.key, report).await?;
            }
        }
        Ok(())
    }

    async fn backup(
        &mut self,
        listing: &mut Listing,
        key: &str,
        report: &mut CopyReport,
    ) -> Result<(), CopyError> {
        let raw = match self.source.read_for_copy(key).await {
            Ok(raw) => raw,
            Err(CatalogError::Store(e)) => return Err(CopyError::Source(e)),
            Err(e) => {
                self.refuse(report, Kind::Backup, key, e.to_string());
                return Ok(());
            }
        };
        let m = &raw.manifest;
        if let Some(kit) = &m.kit {
            self.kit(listing, kit, report).await?;
        }
        if self.options.dry_run {
            // As if written: what follows (marks, heads) is judged as after a real pass.
            listing
                .target
                .insert(key.to_string(), raw.bytes.len() as u64);
            report.copied(Kind::Backup, &m.id, m.object.size);
            return Ok(());
        }
        let Some(mut bytes) = self
            .object(listing, report, Kind::Backup, &m.object, key)
            .await?
        else {
            return Ok(());
        };
        if let Some(signature) = &raw.signature {
            let sig_key = crate::catalog::signature_key(key);
            bytes += put_small(
                self.target.as_ref(),
                &sig_key,
                signature,
                listing.on_target(&sig_key),
            )
            .await?;
        }
        bytes += put_small(
            self.target.as_ref(),
            key,
            &raw.bytes,
            listing.on_target(key),
        )
        .await?;
        listing
            .target
            .insert(key.to_string(), raw.bytes.len() as u64);
        tracing::info!(id = %m.id, target = %report.to, bytes, "backup copied");
        report.copied(Kind::Backup, &m.id, bytes);
        Ok(())
    }

    /// The kit `id` unless the target has it: its object, then its manifest.
    async fn kit(
        &mut self,
        listing: &mut Listing,
        id: &str,
        report: &mut CopyReport,
    ) -> Result<(), CopyError> {
        let key = crate::kit::manifest_key(id);
        if listing.on_target(&key) {
            report.present += 1;
            return Ok(());
        }
        let src = self.source.store().clone();
        let bytes = match get_small(src.as_ref(), &key, KIT_MANIFEST_LIMIT).await {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => {
                self.refuse(
                    report,
                    Kind::Kit,
                    &key,
                    "a backup names it; the source does not have it".into(),
                );
                return Ok(());
            }
            Err(e) => return Err(CopyError::Source(e)),
        };
        let manifest = match crate::kit::manifest_from_bytes(self.source.policy(), id, &bytes) {
            Ok(m) => m,
            Err(e) => {
                self.refuse(report, Kind::Kit, &key, e.to_string());
                return Ok(());
            }
        };
        if self.options.dry_run {
            listing.target.insert(key, bytes.len() as u64);
            report.copied(Kind::Kit, id, manifest.object.size);
            return Ok(());
        }
        let Some(mut written) = self
            .object(listing, report, Kind::Kit, &manifest.object, &key)
            .await?
        else {
            return Ok(());
        };
        written += put_small(self.target.as_ref(), &key, &bytes, false).await?;
        listing.target.insert(key, bytes.len() as u64);
        report.copied(Kind::Kit, id, written);
        Ok(())
    }

    /// The upgrade gate's marks (empty objects whose names keep a backup and its kit) of the
    /// backups the target holds, each after the kit it names.
    async fn marks(
        &mut self,
        listing: &mut Listing,
        report: &mut CopyReport,
    ) -> Result<(), CopyError> {
        let marks: Vec<(String, BackupId, String)> = listing
            .etcd
            .iter()
            .filter(|o| o.size == 0 && !listing.on_target(&o.key))
            .filter_map(|o| {
                let (id, kit) = parse_upgrade_mark(&o.key)?;
                Some((o.key.clone(), id, kit))
            })
            .collect();
        for (key, id, kit) in marks {
            if !listing.on_target(&id.manifest_key()) {
                continue;
            }
            self.kit(listing, &kit, report).await?;
            if !self.options.dry_run {
                put_small(self.target.as_ref(), &key, &[], false).await?;
                listing.target.insert(key.clone(), 0);
            }
            report.copied(Kind::Mark, &key, 0);
        }
        Ok(())
    }

    /// Each chain's segments the target lacks, by sequence; a chain stops at its first
    /// segment that fails a check (what follows cannot be linked to it).
    async fn segments(
        &mut self,
        listing: &mut Listing,
        dropped: &HashSet<String>,
        report: &mut CopyReport,
    ) -> Result<(), CopyError> {
        for (_, segments) in chains(&listing.journal) {
            for (seg, info) in segments {
                let key = seg.manifest_key();
                if dropped.contains(&key) {
                    report.left_to_retention += 1;
                    continue;
                }
                if listing.same_on_target(&info) {
                    report.present += 1;
                    continue;
                }
                if !self.segment(listing, &seg, report).await? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Copies one segment; false when it was refused (its chain stops there).
    async fn segment(
        &mut self,
        listing: &mut Listing,
        seg: &SegmentKey,
        report: &mut CopyReport,
    ) -> Result<bool, CopyError> {
        let key = seg.manifest_key();
        let src = self.source.store().clone();
        let raw = match read_for_copy(src.as_ref(), self.source.policy(), seg).await {
            Ok(raw) => raw,
            Err(ContinuousError::Store(e)) => return Err(CopyError::Source(e)),
            Err(e) => {
                self.refuse(report, Kind::Segment, &key, e.to_string());
                return Ok(false);
            }
        };
        let m = &raw.manifest;
        if self.options.since.is_some_and(|since| m.last_at < since) {
            report.before_since += 1;
            return Ok(true);
        }
        if self.options.dry_run {
            listing.target.insert(key.clone(), raw.bytes.len() as u64);
            report.copied(Kind::Segment, &key, m.object.size);
            return Ok(true);
        }
        let Some(mut bytes) = self
            .object(listing, report, Kind::Segment, &m.object, &key)
            .await?
        else {
            return Ok(false);
        };
        if let Some((sig_key, signature)) = &raw.signature {
            bytes += put_small(
                self.target.as_ref(),
                sig_key,
                signature,
                listing.on_target(sig_key),
            )
            .await?;
        }
        bytes += put_small(
            self.target.as_ref(),
            &key,
            &raw.bytes,
            listing.on_target(&key),
        )
        .await?;
        listing.target.insert(key.clone(), raw.bytes.len() as u64);
        tracing::debug!(segment = %key, target = %report.to, bytes, "segment copied");
        report.copied(Kind::Segment, &key, bytes);
        Ok(true)
    }

    /// Heads and shadow proofs (small signed objects replaced in place): each trusted one
    /// whose chain the target holds up to the segment it names, where the target's differs.
    async fn state(&mut self, listing: &Listing, report: &mut CopyReport) -> Result<(), CopyError> {
        let newest_on_target = newest_segments_on_target(listing);
        for o in &listing.journal {
            let (kind, chain) = if let Some(chain) = chain_of_head_key(&o.key) {
                (Kind::Head, chain.to_string())
            } else if let Some(chain) = chain_of_proven_key(&o.key) {
                (Kind::Proof, chain)
            } else {
                continue;
            };
            let on_target = newest_on_target.get(&chain).copied();
            let src = self.source.store().clone();
            let bytes = match get_small(src.as_ref(), &o.key, STATE_LIMIT).await {
                Ok(b) => b,
                Err(StoreError::NotFound { .. }) => continue, // replaced or pruned just now
                Err(e) => return Err(CopyError::Source(e)),
            };
            let needs = match kind {
                Kind::Head => head_from_bytes(self.source.policy(), &chain, &bytes).map(|h| h.seq),
                _ => proven_from_bytes(self.source.policy(), &chain, &bytes).map(|_| 0),
            };
            let seq = match needs {
                Ok(seq) => seq,
                Err(ContinuousError::Store(e)) => return Err(CopyError::Source(e)),
                Err(e) => {
                    self.refuse(report, kind, &o.key, e.to_string());
                    continue;
                }
            };
            // A head naming a segment the target does not hold yet waits for it; a proof
            // needs the chain there at all.
            let chain_there = on_target.is_some()
                || listing.on_target(
                    &BackupId::parse(&chain)
                        .map(|id| id.manifest_key())
                        .unwrap_or_default(),
                );
            if (seq > 0 && on_target.is_none_or(|newest| newest < seq)) || !chain_there {
                continue;
            }
            if self.options.dry_run {
                if !listing.on_target(&o.key) {
                    report.copied(kind, &o.key, bytes.len() as u64);
                }
                continue;
            }
            let there = match get_small(self.target.as_ref(), &o.key, STATE_LIMIT).await {
                Ok(b) => Some(b),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(CopyError::Target(e)),
            };
            if there.as_deref() == Some(bytes.as_slice()) {
                continue;
            }
            let key = match kind {
                Kind::Head => head_key(&chain),
                _ => proven_key(&chain),
            };
            self.target
                .replace(&key, bytes.clone().into())
                .await
                .map_err(CopyError::Target)?;
            report.copied(kind, &key, bytes.len() as u64);
        }
        Ok(())
    }

    /// Copies one object named by a trusted manifest (at `manifest_key`): the bytes written,
    /// or `None` when it was refused.
    async fn object(
        &mut self,
        listing: &Listing,
        report: &mut CopyReport,
        kind: Kind,
        object: &crate::catalog::ObjectRef,
        manifest_key: &str,
    ) -> Result<Option<u64>, CopyError> {
        let present = listing.on_target(&object.key);
        let src = self.source.store().clone();
        match copy_object(src.as_ref(), self.target.as_ref(), object, present).await {
            Ok(Outcome::Written(n)) => Ok(Some(n)),
            Ok(Outcome::Present) => Ok(Some(0)),
            Err(fail) => {
                self.failed(report, kind, &object.key, manifest_key, fail)
                    .await?;
                Ok(None)
            }
        }
    }

    /// Records a refusal; logs it the first time this copier sees it.
    fn refuse(&mut self, report: &mut CopyReport, kind: Kind, key: &str, why: String) {
        let first_time = self.refused.insert(key.to_string());
        if first_time {
            tracing::error!(kind = kind.as_str(), key, target = %report.to, why = %why, "not copied: it fails a check on the source (tampered, damaged or not trusted); find out why — the copy keeps what it had");
        }
        report.refused.push(Refused {
            kind,
            key: key.to_string(),
            why,
            first_time,
        });
    }

    /// A failed object copy: a refusal when the source's object is at fault, else the error.
    /// An object gone with its manifest was pruned on the source meanwhile: not a refusal.
    async fn failed(
        &mut self,
        report: &mut CopyReport,
        kind: Kind,
        key: &str,
        manifest_key: &str,
        fail: Fail,
    ) -> Result<(), CopyError> {
        match fail {
            Fail::Mismatch(why) => self.refuse(report, kind, key, why),
            Fail::Missing => {
                let src = self.source.store();
                let listed = src.list(manifest_key).await.map_err(CopyError::Source)?;
                if !listed.iter().any(|o| o.key == manifest_key) {
                    tracing::debug!(key, "pruned on the source while being copied: skipped");
                    return Ok(());
                }
                self.refuse(
                    report,
                    kind,
                    key,
                    format!("its signed manifest names {key}, which the source does not have"),
                );
            }
            Fail::Store(e) => return Err(e),
        }
        Ok(())
    }
}

/// The segments of each chain by their names, chains oldest first, segments by sequence.
fn chains(journal: &[ObjectInfo]) -> Vec<(String, Vec<(SegmentKey, ObjectInfo)>)> {
    let mut by_chain: BTreeMap<String, Vec<(SegmentKey, ObjectInfo)>> = BTreeMap::new();
    for o in journal {
        if let Some(k) = SegmentKey::of_manifest_key(&o.key) {
            by_chain
                .entry(k.chain.clone())
                .or_default()
                .push((k, o.clone()));
        }
    }
    let mut out: Vec<_> = by_chain.into_iter().collect();
    out.sort_by_key(|(chain, _)| BackupId::parse(chain).map(|id| id.time));
    for (_, segments) in &mut out {
        segments.sort_by_key(|(k, _)| k.seq);
    }
    out
}

/// Per chain, the highest sequence number whose manifest the target holds.
fn newest_segments_on_target(listing: &Listing) -> HashMap<String, u64> {
    let mut out: HashMap<String, u64> = HashMap::new();
    for key in listing.target.keys() {
        if let Some(k) = SegmentKey::of_manifest_key(key) {
            let e = out.entry(k.chain).or_default();
            *e = (*e).max(k.seq);
        }
    }
    out
}
