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
    Compression, Encryption, Manifest, ManifestError, ObjectRef, Reason, Written, SCHEMA_VERSION,
};

use crate::store::{bytes_stream, get_small, Store, StoreError};

const ID_PREFIX: &str = "etcd-";
const MANIFEST_SUFFIX: &str = ".manifest.json";
const TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";
/// Manifests are a few KiB; anything far larger is not one of ours.
const MANIFEST_LIMIT: usize = 1 << 20;

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
    #[error(transparent)]
    Manifest(#[from] ManifestError),
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

/// The backup id of a node bundle key (`<id>.node-<node>.tar.zst[.age]`), when it is ours.
pub fn id_of_bundle_key(key: &str) -> Option<BackupId> {
    let stem = key
        .strip_suffix(".tar.zst.age")
        .or_else(|| key.strip_suffix(".tar.zst"))?;
    let (id, node) = stem.split_once(".node-")?;
    (!node.is_empty()).then_some(())?;
    BackupId::parse(id)
}

/// Manifests that could not be read, reported next to a listing rather than failing it.
#[derive(Debug)]
pub struct Skipped {
    pub key: String,
    pub reason: String,
}

pub struct Catalog {
    store: Arc<dyn Store>,
}

impl Catalog {
    pub fn new(store: Arc<dyn Store>) -> Catalog {
        Catalog { store }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Every backup, newest first, plus the manifests that could not be read.
    ///
    /// # Errors
    /// The store cannot be listed.
    pub async fn list(&self) -> Result<(Vec<Manifest>, Vec<Skipped>), CatalogError> {
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
        manifests.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok((manifests, skipped))
    }

    async fn read_manifest(&self, key: &str) -> Result<Manifest, CatalogError> {
        let bytes = get_small(self.store.as_ref(), key, MANIFEST_LIMIT).await?;
        Ok(Manifest::parse(key, &bytes)?)
    }

    /// Finds `latest` or a backup by id (a unique prefix of an id is accepted too).
    ///
    /// # Errors
    /// `Empty`, `NoSuchBackup`, or store errors.
    pub async fn find(&self, selector: &str) -> Result<Manifest, CatalogError> {
        let location = self.store.location();
        if selector == "latest" {
            let (all, _) = self.list().await?;
            return all.into_iter().next().ok_or(CatalogError::Empty {
                location,
                cluster: None,
            });
        }
        let key = format!("{selector}{MANIFEST_SUFFIX}");
        if id_of_manifest_key(&key).is_some() {
            return match self.read_manifest(&key).await {
                Err(CatalogError::Store(StoreError::NotFound { .. })) => {
                    Err(CatalogError::NoSuchBackup {
                        id: selector.to_string(),
                        location,
                    })
                }
                other => other,
            };
        }
        let (all, _) = self.list().await?;
        let mut matching = all.into_iter().filter(|m| m.id.starts_with(selector));
        match (matching.next(), matching.next()) {
            (Some(m), None) => Ok(m),
            _ => Err(CatalogError::NoSuchBackup {
                id: selector.to_string(),
                location,
            }),
        }
    }

    /// Writes the manifest: the moment a backup starts to exist. Never overwrites.
    ///
    /// # Errors
    /// Store errors, including `AlreadyExists`.
    pub async fn commit(&self, manifest: &Manifest) -> Result<(), CatalogError> {
        let id = BackupId::parse(&manifest.id).expect("manifests carry ids made by BackupId");
        let body = bytes::Bytes::from(manifest.to_json().into_bytes());
        self.store
            .put(&id.manifest_key(), bytes_stream(body))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ids_round_trip_and_sort_by_time() {
        let t1 = Utc.with_ymd_and_hms(2026, 11, 22, 3, 4, 5).unwrap();
        let t2 = t1 + chrono::Duration::milliseconds(1);
        let a = BackupId::new(t1, 0xdead_beef_0000_0001);
        let b = BackupId::new(t2, 0xdead_beef_0000_0001);
        assert_eq!(BackupId::parse(&a.to_string()), Some(a.clone()));
        assert!(a.to_string() < b.to_string());
        assert!(a.to_string().contains("deadbeef00000001"));
        assert_eq!(id_of_manifest_key(&a.manifest_key()), Some(a.clone()));
        assert_eq!(id_of_manifest_key(&a.object_key(true)), None);
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for name in [
            "etcd-x.manifest.json",
            "notes.manifest.json",
            "etcd-20261122T030405.000Z-deadbeef-0001.manifest.json",
            "etcd-20261122T030405.000Z-deadbeef00000001-0001-extra.manifest.json",
        ] {
            assert_eq!(id_of_manifest_key(name), None, "{name}");
        }
    }

    #[test]
    fn bundle_keys_are_ours_only_with_a_backup_id_and_a_node() {
        let id = BackupId::new(chrono::Utc::now(), 0xab);
        assert_eq!(
            id_of_bundle_key(&format!("{id}.node-cp1.tar.zst.age")),
            Some(id.clone())
        );
        assert_eq!(
            id_of_bundle_key(&format!("{id}.node-cp1.tar.zst")),
            Some(id.clone())
        );
        assert_eq!(id_of_bundle_key(&format!("{id}.node-.tar.zst.age")), None);
        assert_eq!(id_of_bundle_key("etcd-x.node-cp1.tar.zst.age"), None);
        assert_eq!(id_of_bundle_key(&format!("{id}.db.zst.age")), None);
    }
}
