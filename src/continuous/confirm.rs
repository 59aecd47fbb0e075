//! A shadow's base is used — as `latest` or as the base of a point-in-time restore — only when
//! the journal confirms it (#21): a writer-signed checkpoint at the base's revision with the same
//! HashKV and compaction point. The shadow's key alone proves only that the shadow made it; the
//! checkpoint proves it equals what the production member hashed at that revision.

use super::journal::Journal;
use super::segment::Record;
use super::ContinuousError;
use crate::catalog::{cluster_of, Manifest, Reason};
use crate::stages::encrypt::Identities;

impl Journal {
    /// Checks a shadow base against the journal; any other backup passes as it is.
    ///
    /// # Errors
    /// `Unconfirmed`, naming the base and why (no such checkpoint, another hash, or the journal
    /// cannot be read: an encrypted segment without `identities`, an untrusted one).
    pub async fn confirm_base(
        &self,
        identities: Option<&Identities>,
        base: &Manifest,
    ) -> Result<(), ContinuousError> {
        if base.reason != Reason::Shadow {
            return Ok(());
        }
        let unconfirmed = |why: String| ContinuousError::Unconfirmed {
            id: base.id.clone(),
            rev: base.revision,
            why,
        };
        let Some(expected_compact) = base.hashkv.compact_revision.filter(|_| base.hashkv.checked)
        else {
            return Err(unconfirmed("its manifest records no checked HashKV".into()));
        };
        let cluster = cluster_of(base);
        let rev = base.revision;
        let Some(cluster) = cluster else {
            return Err(unconfirmed("its id names no cluster".into()));
        };
        for listing in self.listings(Some(cluster)).await?.iter().rev() {
            // A checkpoint is recorded at the end of the segment whose last revision it hashes.
            let Some(key) = listing.segments.iter().rev().find(|s| s.first_rev <= rev) else {
                continue;
            };
            let m = self.manifest(key).await.map_err(|e| {
                unconfirmed(format!(
                    "the journal segment that would hold it is not trusted: {e}"
                ))
            })?;
            if m.last_rev != rev {
                continue;
            }
            let records = self
                .records(&m, identities)
                .await
                .map_err(|e| unconfirmed(format!("reading its journal segment: {e}")))?;
            let checkpoint = records.iter().find_map(|r| match r {
                Record::Checkpoint {
                    rev: at,
                    hash,
                    compact_rev,
                } if *at == rev => Some((*hash, *compact_rev)),
                _ => None,
            });
            match checkpoint {
            Some((hash, compact)) if hash == base.hashkv.hash && compact == expected_compact => {
                return Ok(())
            }
            Some((hash, compact)) => {
                return Err(unconfirmed(format!(
                    "the journal's checkpoint there is HashKV {hash} (compacted at {compact}), the base says {} (compacted at {expected_compact}): the base does not equal the cluster",
                    base.hashkv.hash
                )))
            }
            None => continue,
        }
        }
        Err(unconfirmed(
        "no writer-signed checkpoint of the journal is at its revision (pruned, or never taken)"
            .into(),
    ))
    }
}
