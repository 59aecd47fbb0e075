//! S3 Object Lock: the retention written with every object, the one-time check that the bucket
//! can hold it, reading an object's lock back, and removing every version of an object once no
//! lock holds it (a versioned bucket keeps the data of a plain delete as a noncurrent version).

use std::time::SystemTime;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::DateTime;
use aws_sdk_s3::types::{ObjectLockEnabled, ObjectLockLegalHoldStatus, ObjectLockMode};

use super::settings::{LockMode, ObjectLock};
use super::{describe_sdk_error, S3Store};
use crate::store::{Lock, Store, StoreError};

/// The mode and end of the retention for an object uploaded now.
pub(super) fn retention(lock: &ObjectLock) -> (ObjectLockMode, DateTime) {
    let mode = match lock.mode {
        LockMode::Governance => ObjectLockMode::Governance,
        LockMode::Compliance => ObjectLockMode::Compliance,
    };
    (mode, DateTime::from(SystemTime::now() + lock.period))
}

impl S3Store {
    /// Refuses to write when Object Lock is configured and the bucket cannot hold locks, before
    /// a byte is uploaded (S3 would refuse each upload with a bare `InvalidRequest`).
    pub(super) async fn check_bucket_lock(&self) -> Result<(), StoreError> {
        let refuse = |detail: String| StoreError::Other {
            location: self.location(),
            what: "checking the bucket's Object Lock".into(),
            source: std::io::Error::other(detail),
        };
        match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.settings.bucket)
            .send()
            .await
        {
            Ok(out) => {
                let enabled = out
                    .object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    == Some(&ObjectLockEnabled::Enabled);
                if enabled {
                    Ok(())
                } else {
                    Err(refuse(NOT_ENABLED.into()))
                }
            }
            Err(SdkError::ServiceError(e))
                if e.err().code() == Some("ObjectLockConfigurationNotFoundError") =>
            {
                Err(refuse(NOT_ENABLED.into()))
            }
            // Without s3:GetBucketObjectLockConfiguration the uploads themselves tell.
            Err(SdkError::ServiceError(e)) if e.err().code() == Some("AccessDenied") => {
                tracing::debug!(
                    "may not read the bucket's Object Lock configuration; the uploads will show"
                );
                Ok(())
            }
            Err(e) => Err(refuse(describe_sdk_error(&e))),
        }
    }

    /// The strongest lock on any version of `full` (#21): node credentials may `PutObject` over
    /// a backup's file without lock headers, or a delete marker may hide it, while an older
    /// version is still locked; the key is spared while any version is. Versions are read
    /// when the bucket lets this principal list them (the pruner's may); otherwise only the
    /// current one.
    pub(super) async fn read_lock(&self, full: &str) -> Result<Option<Lock>, StoreError> {
        let mut strongest = self.version_lock(full, None).await?;
        match self.noncurrent_versions(full).await {
            Ok(versions) => {
                for v in versions {
                    let lock = self.version_lock(full, Some(&v)).await?;
                    strongest = stronger(strongest, lock);
                }
            }
            Err(e) => {
                tracing::debug!(key = full, error = %e, "cannot list the versions of an object; its current version's lock decides");
            }
        }
        Ok(strongest)
    }

    /// Keys under `prefix` whose newest version is a delete marker while an older version is
    /// still locked: hidden, not deleted (the pruner deletes only what no lock holds, and
    /// removes every version).
    pub(super) async fn locked_behind_markers(
        &self,
        prefix: &str,
    ) -> Result<Vec<String>, StoreError> {
        let hidden: Vec<String> = self
            .versions_under(prefix)
            .await?
            .into_iter()
            .filter(|v| v.marker && v.latest)
            .map(|v| v.key)
            .collect();
        let now = SystemTime::now();
        let mut locked = Vec::new();
        for key in hidden {
            let lock = self.read_lock(&key).await?;
            if lock.is_some_and(|l| l.holds_at(now)) {
                locked.push(key);
            }
        }
        Ok(locked)
    }

    /// The version ids of `full` other than the newest (delete markers excluded).
    async fn noncurrent_versions(&self, full: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .versions_under(full)
            .await?
            .into_iter()
            .filter(|v| v.key == full && !v.marker && !v.latest)
            .map(|v| v.id)
            .collect())
    }

    /// Every version and delete marker of every key under `prefix`, page after page.
    async fn versions_under(&self, prefix: &str) -> Result<Vec<VersionEntry>, StoreError> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.settings.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(version_marker.clone())
                .send()
                .await
                .map_err(|e| self.sdk_err(format!("listing the versions under {prefix}"), e))?;
            let entry = |key: Option<&str>, id: Option<&str>, latest, marker| {
                Some(VersionEntry {
                    key: key?.to_string(),
                    id: id?.to_string(),
                    latest: latest == Some(true),
                    marker,
                })
            };
            out.extend(
                page.versions()
                    .iter()
                    .filter_map(|v| entry(v.key(), v.version_id(), v.is_latest(), false)),
            );
            out.extend(
                page.delete_markers()
                    .iter()
                    .filter_map(|m| entry(m.key(), m.version_id(), m.is_latest(), true)),
            );
            if page.is_truncated() != Some(true) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(String::from);
            version_marker = page.next_version_id_marker().map(String::from);
        }
    }

    /// The lock of one version of `full` (the current one when `version` is `None`).
    async fn version_lock(
        &self,
        full: &str,
        version: Option<&str>,
    ) -> Result<Option<Lock>, StoreError> {
        let head = match self
            .client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(full)
            .set_version_id(version.map(String::from))
            .send()
            .await
        {
            Ok(h) => h,
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => return Ok(None),
            // A delete marker's version answers 405 to HEAD: it holds nothing.
            Err(SdkError::ServiceError(e))
                if version.is_some() && e.raw().status().as_u16() == 405 =>
            {
                return Ok(None)
            }
            Err(e) => return Err(self.sdk_err(format!("reading the lock of {full}"), e)),
        };
        if head.object_lock_legal_hold_status() == Some(&ObjectLockLegalHoldStatus::On) {
            return Ok(Some(Lock {
                mode: "legal hold".into(),
                until: None,
            }));
        }
        let (Some(mode), Some(until)) = (
            head.object_lock_mode(),
            head.object_lock_retain_until_date(),
        ) else {
            return Ok(None);
        };
        Ok(Some(Lock {
            mode: mode.as_str().to_ascii_lowercase(),
            until: SystemTime::try_from(*until).ok(),
        }))
    }

    /// After a plain delete left a delete marker: removes every version of exactly `full`, so
    /// the data is gone and not just hidden. Without the permissions for it the data stays as
    /// noncurrent versions; that costs storage, not correctness, so it is a warning.
    pub(super) async fn purge_versions(&self, full: &str) {
        if let Err(e) = self.try_purge_versions(full).await {
            tracing::warn!(key = full, error = %e, "the bucket keeps versions and the old ones of this object could not be removed: grant s3:ListBucketVersions and s3:DeleteObjectVersion, or expire noncurrent versions with a lifecycle rule");
        }
    }

    async fn try_purge_versions(&self, full: &str) -> Result<(), StoreError> {
        for v in self.versions_under(full).await? {
            if v.key != full {
                continue;
            }
            self.client
                .delete_object()
                .bucket(&self.settings.bucket)
                .key(full)
                .version_id(&v.id)
                .send()
                .await
                .map_err(|e| self.sdk_err(format!("deleting version {} of {full}", v.id), e))?;
        }
        Ok(())
    }
}

/// One version (or delete marker) of a key.
struct VersionEntry {
    key: String,
    id: String,
    latest: bool,
    marker: bool,
}

/// The lock that holds longer: a legal hold over any retention, else the later end.
fn stronger(a: Option<Lock>, b: Option<Lock>) -> Option<Lock> {
    match (a, b) {
        (None, b) => b,
        (a, None) => a,
        (Some(a), Some(b)) => match (a.until, b.until) {
            (None, _) => Some(a),
            (_, None) => Some(b),
            (Some(x), Some(y)) => Some(if y > x { b } else { a }),
        },
    }
}

const NOT_ENABLED: &str = "s3.lock_mode is set but the bucket has no Object Lock: create the bucket with Object Lock enabled (aws s3api create-bucket --object-lock-enabled-for-bucket), or unset s3.lock_mode";
