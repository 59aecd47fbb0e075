//! The catalog: which backups exist, read from their manifests.
//!
//! Names: `etcd-<UTC time, ms>-<cluster id hex>-<4 hex random>` is a backup id; its data
//! object is `<id>.db.zst.age` (or `.db.zst` without encryption) and its manifest
//! `<id>.manifest.json`. Ids sort by time; the cluster id lets retention touch only its own
//! cluster; anything that does not parse as such a name is not ours and is never touched.

mod manifest;

use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};

pub use manifest::{
    Compression, Encryption, Manifest, ManifestError, ObjectRef, Reason, RecordedMembership,
    Written, SCHEMA_VERSION,
};

use crate::store::{bytes_stream, get_small, Store, StoreError};
use crate::trust::{Claim, Kind, ReadPolicy, Signer, SigningKey};

const ID_PREFIX: &str = "etcd-";
const MANIFEST_SUFFIX: &str = ".manifest.json";
const TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";
/// Manifests are a few KiB; anything far larger is not one of ours.
const MANIFEST_LIMIT: usize = 1 << 20;
/// A minisign signature is a few hundred bytes.
const SIGNATURE_LIMIT: usize = 16 << 10;
/// How far in the future a manifest may be dated (clocks of the nodes that write backups).
const MAX_CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(5);

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no backup in {location}{}", cluster_hint(.cluster))]
    Empty {
        location: String,
        cluster: Option<String>,
    },
    #[error("no backup with id {id} in {location}; `lifeboat snapshot list` shows the ids")]
    NoSuchBackup { id: String, location: String },
    #[error("`latest` is ambiguous: {location} holds backups of clusters {}; pass --cluster-id ID (or a backup id)", .clusters.join(", "))]
    AmbiguousLatest {
        location: String,
        clusters: Vec<String>,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error("`latest` would be {pick}, but {newer} is newer and not trusted ({why}): someone may have hidden the newest backup (a deleted signature, a delete marker, an overwritten manifest). Find out why it is not trusted; to restore the older backup anyway, name it by id or pass --accept-older")]
    NewerUntrusted {
        pick: String,
        newer: String,
        why: String,
    },
}

fn cluster_hint(cluster: &Option<String>) -> String {
    cluster
        .as_ref()
        .map(|c| format!(" for cluster {c}"))
        .unwrap_or_default()
}

/// A parsed backup id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupId {
    pub time: DateTime<Utc>,
    pub cluster_id: u64,
    pub nonce: u16,
}

impl BackupId {
    /// The time is kept to the millisecond, as the id shows it.
    pub fn new(time: DateTime<Utc>, cluster_id: u64) -> BackupId {
        BackupId {
            time: time.trunc_subsecs(3),
            cluster_id,
            nonce: rand::random(),
        }
    }

    pub fn parse(s: &str) -> Option<BackupId> {
        let rest = s.strip_prefix(ID_PREFIX)?;
        let mut parts = rest.split('-');
        let (time, cluster, nonce) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || cluster.len() != 16 || nonce.len() != 4 {
            return None;
        }
        let time = NaiveDateTime::parse_from_str(time, TIME_FORMAT)
            .ok()?
            .and_utc();
        Some(BackupId {
            time,
            cluster_id: u64::from_str_radix(cluster, 16).ok()?,
            nonce: u16::from_str_radix(nonce, 16).ok()?,
        })
    }

    pub fn manifest_key(&self) -> String {
        format!("{self}{MANIFEST_SUFFIX}")
    }

    pub fn object_key(&self, encrypted: bool) -> String {
        if encrypted {
            format!("{self}.db.zst.age")
        } else {
            format!("{self}.db.zst")
        }
    }
}

impl std::fmt::Display for BackupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{ID_PREFIX}{}-{:016x}-{:04x}",
            self.time.format(TIME_FORMAT),
            self.cluster_id,
            self.nonce
        )
    }
}

/// The id part of a manifest key, when the key is one of ours.
pub fn id_of_manifest_key(key: &str) -> Option<BackupId> {
    BackupId::parse(key.strip_suffix(MANIFEST_SUFFIX)?)
}

/// The backup id of an object kept beside a backup for a node: the upgrade gate's mark
/// ([`upgrade_mark_key`]) or an old node bundle (`<id>.node-<node>[.<time>].tar.zst[.age]`),
/// when it is ours.
pub fn id_of_bundle_key(key: &str) -> Option<BackupId> {
    if let Some((id, _)) = parse_upgrade_mark(key) {
        return Some(id);
    }
    let stem = key
        .strip_suffix(".tar.zst.age")
        .or_else(|| key.strip_suffix(".tar.zst"))?;
    let (id, node) = stem.split_once(".node-")?;
    (!node.is_empty()).then_some(())?;
    BackupId::parse(id)
}

/// The upgrade gate's mark beside the backup it stood behind, naming the node's kit: an empty
/// object, `<backup id>.node-<node>.<time>.kit-<kit id>`. Retention keeps that backup like a
/// pre-upgrade one and the kit with it; the name alone says so, nothing is read from it. Each
/// upgrade has its own (several may reuse one recent backup, and kubeadm renews certificates).
pub fn upgrade_mark_key(backup_id: &str, node: &str, at: DateTime<Utc>, kit: &str) -> String {
    let safe: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let at = at.format("%Y%m%dT%H%M%S%.3fZ");
    format!("{backup_id}.node-{safe}.{at}.kit-{kit}")
}

/// The backup id and kit id of an upgrade mark, when the key is one.
pub fn parse_upgrade_mark(key: &str) -> Option<(BackupId, String)> {
    let (rest, kit) = key.rsplit_once(".kit-")?;
    let hex = kit.len() == 64 && kit.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then_some(())?;
    let (id, node) = rest.split_once(".node-")?;
    (!node.is_empty()).then_some(())?;
    Some((BackupId::parse(id)?, kit.to_string()))
}

/// A writer's right to change the catalog, checked right before each commit and each
/// deletion: `serve` passes its hold on the uploader election, so an uploader that was paused
/// (SIGSTOP, a long GC, a frozen VM) past its lease, while another took over, cannot commit or
/// prune on stale authority.
#[async_trait::async_trait]
pub trait Fence: Send + Sync {
    /// `Err(why)` when the right is lost (or cannot be confirmed: then it is not assumed).
    async fn check(&self) -> Result<(), FenceLost>;
}

/// Why a writer may no longer change the catalog.
#[derive(Debug, thiserror::Error)]
pub enum FenceLost {
    #[error("this instance no longer holds the uploader election")]
    NotHeld,
    #[error(
        "the uploader election key is gone: another instance took over while this one was stalled"
    )]
    TakenOver,
    #[error("cannot confirm the uploader election (etcd did not answer in {0:?})")]
    NoAnswer(std::time::Duration),
    #[error("cannot confirm the uploader election: {0}")]
    Unconfirmed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Where the signature of the manifest stored under `manifest_key` is.
pub fn signature_key(manifest_key: &str) -> String {
    format!("{manifest_key}{}", crate::trust::SIGNATURE_SUFFIX)
}

/// The cluster a manifest belongs to, from its (checked) id.
pub fn cluster_of(m: &Manifest) -> Option<u64> {
    BackupId::parse(&m.id).map(|id| id.cluster_id)
}

/// Parses a cluster id as the user may write it: hex, with or without leading zeros (as
/// backup names show it) or a `0x`.
pub fn parse_cluster_id(s: &str) -> Option<u64> {
    let s = s.trim();
    let hex = s.strip_prefix("0x").unwrap_or(s);
    if hex.is_empty() || hex.len() > 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// A manifest is what its key says, or it is not trusted: the id, the cluster, the time and
/// the object it names must all follow from the key, and it may not be dated in the future.
fn check_names(key: &str, m: &Manifest, now: DateTime<Utc>) -> Result<(), ManifestError> {
    let bad = |what: String| ManifestError::Inconsistent {
        key: key.to_string(),
        what,
    };
    let id = id_of_manifest_key(key).ok_or_else(|| bad("the name is not a backup id".into()))?;
    if m.id != id.to_string() {
        return Err(bad(format!("it says it is backup {:?}", m.id)));
    }
    if parse_cluster_id(&m.cluster_id) != Some(id.cluster_id) {
        return Err(bad(format!(
            "it names cluster {:?}, its id cluster {:x}",
            m.cluster_id, id.cluster_id
        )));
    }
    if m.created_at != id.time {
        return Err(bad(format!(
            "it is dated {}, its id {}",
            m.created_at, id.time
        )));
    }
    if m.created_at > now + MAX_CLOCK_SKEW {
        return Err(bad(format!(
            "it is dated {} — in the future; a node's clock is wrong, or the manifest is not ours",
            m.created_at
        )));
    }
    let expected = id.object_key(m.encryption.scheme == "age");
    if m.object.key != expected {
        return Err(bad(format!(
            "it names the object {:?}, not {expected:?}",
            m.object.key
        )));
    }
    Ok(())
}

/// A manifest the policy accepted, and who signed it (`None`: an old unsigned backup let
/// through by `trust.allow_unsigned_before`).
struct Checked {
    manifest: Manifest,
    signer: Option<Signer>,
}

/// A trusted manifest with the exact bytes its signature covers, and that signature.
#[derive(Debug, Clone)]
pub struct RawManifest {
    pub manifest: Manifest,
    pub bytes: Vec<u8>,
    pub signature: Option<Vec<u8>>,
}

/// What `latest` can be: the trusted candidates, best first, and what was skipped.
#[derive(Debug)]
pub struct Latest {
    pub candidates: Vec<Manifest>,
    pub skipped: Vec<Skipped>,
}

impl Latest {
    /// No silent rollback (#21): `pick` stands only when no manifest of its cluster that
    /// could not be trusted is newer (by its id's time: nothing else of it can be believed).
    /// A deleted signature, a delete marker over it or an overwritten manifest would otherwise
    /// make `latest` quietly the backup before. `accept_older` lets it stand, logged.
    ///
    /// # Errors
    /// `NewerUntrusted`, naming the newest such manifest and why it was not trusted.
    pub fn settle(&self, pick: &Manifest, accept_older: bool) -> Result<(), CatalogError> {
        let cluster = cluster_of(pick);
        let newer = self
            .skipped
            .iter()
            .filter_map(|s| id_of_manifest_key(&s.key).map(|id| (id, s)))
            .filter(|(id, _)| Some(id.cluster_id) == cluster && id.time > pick.created_at)
            .max_by_key(|(id, _)| id.time);
        let Some((_, newer)) = newer else {
            return Ok(());
        };
        if accept_older {
            tracing::warn!(pick = %pick.id, newer = %newer.key, why = %newer.reason, "a newer manifest is not trusted; using the older backup as told (--accept-older)");
            return Ok(());
        }
        Err(CatalogError::NewerUntrusted {
            pick: pick.id.clone(),
            newer: newer.key.clone(),
            why: newer.reason.clone(),
        })
    }
}

/// Manifests that could not be read, reported next to a listing rather than failing it.
#[derive(Debug)]
pub struct Skipped {
    pub key: String,
    pub reason: String,
}

pub struct Catalog {
    store: Arc<dyn Store>,
    policy: Arc<ReadPolicy>,
}

impl Catalog {
    /// A catalog whose reads accept what `policy` accepts.
    pub fn new(store: Arc<dyn Store>, policy: Arc<ReadPolicy>) -> Catalog {
        Catalog { store, policy }
    }

    /// A catalog that only commits (a backup run): it trusts, and so lists, nothing.
    pub fn writer(store: Arc<dyn Store>) -> Catalog {
        Catalog::new(store, Arc::new(ReadPolicy::refuse_all()))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// What this catalog's reads accept.
    pub fn policy(&self) -> &Arc<ReadPolicy> {
        &self.policy
    }

    /// Every backup, newest first, plus the manifests that could not be read.
    ///
    /// # Errors
    /// The store cannot be listed.
    pub async fn list(&self) -> Result<(Vec<Manifest>, Vec<Skipped>), CatalogError> {
        let (checked, skipped) = self.list_checked().await?;
        Ok((checked.into_iter().map(|c| c.manifest).collect(), skipped))
    }

    /// The backups a writer's key signed, newest first: what may stand for the cluster's own
    /// state where no journal confirms it (the upgrade gate's "fresh backup", a new chain's
    /// base) — never a shadow's base, never an unsigned one.
    ///
    /// # Errors
    /// The store cannot be listed.
    pub async fn writer_signed(&self) -> Result<Vec<Manifest>, CatalogError> {
        let (checked, _) = self.list_checked().await?;
        Ok(checked
            .into_iter()
            .filter(|c| {
                c.manifest.reason != Reason::Shadow
                    && c.signer
                        .as_ref()
                        .is_some_and(|s| s.role == crate::trust::Role::Writer)
            })
            .map(|c| c.manifest)
            .collect())
    }

    /// The newest writer-signed backup of `cluster` younger than `max_age` whose object still
    /// has the size and sha256 its manifest records: what may stand for the cluster's state now
    /// (the upgrade gate, maintenance).
    pub async fn recent_verified(
        &self,
        cluster: &str,
        max_age: std::time::Duration,
    ) -> Option<Manifest> {
        let manifests = self.writer_signed().await.ok()?;
        let now = chrono::Utc::now();
        let m = manifests.into_iter().find(|m| {
            m.cluster_id == cluster
                && (now - m.created_at)
                    .to_std()
                    .is_ok_and(|age| age <= max_age)
        })?;
        object_matches(self.store.as_ref(), &m).await.then_some(m)
    }

    /// [`Catalog::list`], with who signed each manifest.
    async fn list_checked(&self) -> Result<(Vec<Checked>, Vec<Skipped>), CatalogError> {
        let mut manifests = Vec::new();
        let mut skipped = Vec::new();
        for object in self.store.list(ID_PREFIX).await? {
            if id_of_manifest_key(&object.key).is_none() {
                continue;
            }
            match self.read_manifest(&object.key).await {
                Ok(m) => manifests.push(m),
                Err(e) => skipped.push(Skipped {
                    key: object.key.clone(),
                    reason: e.to_string(),
                }),
            }
        }
        manifests.sort_by(|a, b| {
            let (a, b) = (&a.manifest, &b.manifest);
            b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id))
        });
        Ok((manifests, skipped))
    }

    /// Reads a manifest and checks that it is what its name says and that a key trusted for
    /// it signed it: nothing it names is trusted otherwise (retention deletes the object a
    /// manifest names).
    async fn read_manifest(&self, key: &str) -> Result<Checked, CatalogError> {
        Ok(self.read_raw(key).await?.0)
    }

    /// [`Catalog::read_manifest`], with the exact bytes checked and the signature: what a copy
    /// to another store writes there, never read a second time.
    ///
    /// # Errors
    /// Unreadable, inconsistent with its name, or untrusted.
    pub async fn read_for_copy(&self, key: &str) -> Result<RawManifest, CatalogError> {
        let (checked, bytes, signature) = self.read_raw(key).await?;
        Ok(RawManifest {
            manifest: checked.manifest,
            bytes,
            signature,
        })
    }

    async fn read_raw(
        &self,
        key: &str,
    ) -> Result<(Checked, Vec<u8>, Option<Vec<u8>>), CatalogError> {
        let bytes = get_small(self.store.as_ref(), key, MANIFEST_LIMIT).await?;
        let manifest = Manifest::parse(key, &bytes)?;
        check_names(key, &manifest, Utc::now())?;
        let signature =
            match get_small(self.store.as_ref(), &signature_key(key), SIGNATURE_LIMIT).await {
                Ok(s) => Some(s),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
        let claim = Claim {
            key,
            kind: Kind::Backup {
                shadow: manifest.reason == Reason::Shadow,
            },
            cluster: cluster_of(&manifest),
            dated: manifest.created_at,
        };
        let text = signature
            .as_ref()
            .map(|s| String::from_utf8_lossy(s).into_owned());
        let signer = self.policy.check(&claim, &bytes, text.as_deref())?;
        Ok((Checked { manifest, signer }, bytes, signature))
    }

    /// The candidates for `latest` in `cluster`, best first: signed before unsigned (an
    /// unsigned backup never wins over a signed one), then by revision — revisions only grow
    /// in a cluster, even across restores (they are bumped), while a backup's time is its
    /// writer's clock (a shadow's base is dated when cut, whatever revision it proved) — then
    /// by time. The caller picks the first it can use (a shadow base needs its journal's
    /// confirmation) and then calls [`Latest::settle`].
    ///
    /// # Errors
    /// `Empty`, `AmbiguousLatest`, or store errors.
    pub async fn latest(&self, cluster: Option<u64>) -> Result<Latest, CatalogError> {
        let location = self.store.location();
        let (all, mut skipped) = self.list_checked().await?;
        // A manifest hidden behind a delete marker while a locked version of it remains was
        // not removed by retention (which deletes only what no lock holds): it counts as an
        // untrusted newer manifest (#21).
        for key in self.store.hidden_locked(ID_PREFIX).await {
            if id_of_manifest_key(&key).is_some() {
                skipped.push(Skipped {
                    key,
                    reason: "it is hidden behind a delete marker while a locked version of it is still in the bucket (restore that version, or find who deleted it)".into(),
                });
            }
        }
        let mut mine: Vec<Checked> = all
            .into_iter()
            .filter(|c| cluster.is_none_or(|id| cluster_of(&c.manifest) == Some(id)))
            .collect();
        let mut clusters: Vec<String> =
            mine.iter().map(|c| c.manifest.cluster_id.clone()).collect();
        clusters.sort();
        clusters.dedup();
        if clusters.len() > 1 {
            return Err(CatalogError::AmbiguousLatest { location, clusters });
        }
        if mine.is_empty() {
            return Err(CatalogError::Empty {
                location,
                cluster: cluster.map(|c| format!("{c:x}")),
            });
        }
        mine.sort_by(|a, b| {
            let rank = |c: &Checked| {
                (
                    c.signer.is_some(),
                    c.manifest.revision,
                    c.manifest.created_at,
                )
            };
            rank(b)
                .cmp(&rank(a))
                .then(b.manifest.id.cmp(&a.manifest.id))
        });
        Ok(Latest {
            candidates: mine.into_iter().map(|c| c.manifest).collect(),
            skipped,
        })
    }

    /// Finds `latest` (never a shadow's base) or a backup by id (a unique prefix of an id is
    /// accepted too), in `cluster` when given. `latest` without a cluster is refused when the store holds
    /// backups of several clusters: restoring another cluster's newest backup is not what
    /// anyone means.
    ///
    /// # Errors
    /// `Empty`, `NoSuchBackup`, `AmbiguousLatest`, an inconsistent manifest, or store errors.
    pub async fn find(
        &self,
        selector: &str,
        cluster: Option<u64>,
    ) -> Result<Manifest, CatalogError> {
        let location = self.store.location();
        let in_cluster = |m: &Manifest| cluster.is_none_or(|c| cluster_of(m) == Some(c));
        if selector == "latest" {
            // A shadow's base stands only with the journal's confirmation, which the catalog
            // cannot give (readers that can: `cli/snapshot.rs::pick_latest`): here it is never
            // `latest`.
            let latest = self.latest(cluster).await?;
            let pick = latest
                .candidates
                .iter()
                .find(|m| m.reason != Reason::Shadow)
                .cloned()
                .ok_or(CatalogError::Empty {
                    location,
                    cluster: cluster.map(|c| format!("{c:x}")),
                })?;
            latest.settle(&pick, false)?;
            return Ok(pick);
        }
        let no_such = || CatalogError::NoSuchBackup {
            id: selector.to_string(),
            location: location.clone(),
        };
        let key = format!("{selector}{MANIFEST_SUFFIX}");
        if id_of_manifest_key(&key).is_some() {
            return match self.read_manifest(&key).await {
                Err(CatalogError::Store(StoreError::NotFound { .. })) => Err(no_such()),
                Ok(c) if !in_cluster(&c.manifest) => Err(no_such()),
                other => other.map(|c| c.manifest),
            };
        }
        let (all, _) = self.list().await?;
        let mut matching = all
            .into_iter()
            .filter(|m| m.id.starts_with(selector) && in_cluster(m));
        match (matching.next(), matching.next()) {
            (Some(m), None) => Ok(m),
            _ => Err(no_such()),
        }
    }

    /// Writes the manifest: the moment a backup starts to exist. Never overwrites. With a
    /// signing key, the signature of the manifest's exact bytes goes first, so a manifest never
    /// exists without it.
    ///
    /// # Errors
    /// Store errors, including `AlreadyExists`; a signature that cannot be made.
    pub async fn commit(
        &self,
        manifest: &Manifest,
        signer: Option<&SigningKey>,
    ) -> Result<(), CatalogError> {
        let id = BackupId::parse(&manifest.id).ok_or_else(|| ManifestError::Inconsistent {
            key: manifest.id.clone(),
            what: "its id is not a backup id".into(),
        })?;
        let key = id.manifest_key();
        let body = manifest.to_json().into_bytes();
        if let Some(signer) = signer {
            let signature = signer.sign(&key, &body)?;
            self.store
                .put(
                    &signature_key(&key),
                    bytes_stream(bytes::Bytes::from(signature.into_bytes())),
                )
                .await?;
        }
        self.store
            .put(&key, bytes_stream(bytes::Bytes::from(body)))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

/// Whether `m`'s object still has the size and sha256 its manifest records.
async fn object_matches(store: &dyn Store, m: &Manifest) -> bool {
    use futures::StreamExt;
    use sha2::{Digest, Sha256};
    let Ok(mut stream) = store.get(&m.object.key).await else {
        return false;
    };
    let mut h = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { return false };
        h.update(&chunk);
        size += chunk.len() as u64;
    }
    size == m.object.size && hex::encode(h.finalize()) == m.object.sha256
}
