//! Questions about single revisions, asked by quorum recovery: when the capture received one,
//! and the newest checkpoint at or before one — each answered from the one or few segments that
//! hold it.

use chrono::{DateTime, Utc};

use super::super::chain::ChainListing;
use super::super::segment::Record;
use super::super::ContinuousError;
use super::Journal;
use crate::stages::encrypt::Identities;

/// Segments with checkpoints read, newest first, before the search gives up: a capture writes
/// one every checkpoint interval, so the newest is almost always in the first.
const CHECKPOINT_SEARCH: usize = 8;

/// A HashKV the member reported, as the journal recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Checkpoint {
    pub rev: i64,
    pub compact_rev: i64,
    pub hash: u32,
}

impl Journal {
    /// When the capture received revision `rev` of `listing`'s chain (`None`: no segment of the
    /// chain holds it).
    ///
    /// # Errors
    /// The segment holding it is unreadable, tampered or untrusted.
    pub async fn received_at(
        &self,
        listing: &ChainListing,
        rev: i64,
        identities: Option<&Identities>,
    ) -> Result<Option<DateTime<Utc>>, ContinuousError> {
        let Some(key) = listing.segments.iter().rev().find(|k| k.first_rev <= rev) else {
            return Ok(None);
        };
        let m = self.manifest(key).await?;
        if m.last_rev < rev {
            return Ok(None);
        }
        let records = self.records(&m, identities).await?;
        Ok(records.iter().find_map(|r| match r {
            Record::Rev { rev: r, at_ms, .. } if *r == rev => {
                DateTime::<Utc>::from_timestamp_millis(*at_ms)
            }
            _ => None,
        }))
    }

    /// The newest checkpoint of `listing`'s chain at or before `rev` (`None`: none in the
    /// newest segments that have any).
    ///
    /// # Errors
    /// A segment searched is unreadable, tampered or untrusted.
    pub async fn checkpoint_at_or_before(
        &self,
        listing: &ChainListing,
        rev: i64,
        identities: Option<&Identities>,
    ) -> Result<Option<Checkpoint>, ContinuousError> {
        let mut searched = 0;
        for key in listing.segments.iter().rev().filter(|k| k.first_rev <= rev) {
            let m = self.manifest(key).await?;
            if m.checkpoints == 0 {
                continue;
            }
            let records = self.records(&m, identities).await?;
            let newest = records
                .iter()
                .filter_map(|r| match r {
                    Record::Checkpoint {
                        rev: at,
                        compact_rev,
                        hash,
                    } if *at <= rev => Some(Checkpoint {
                        rev: *at,
                        compact_rev: *compact_rev,
                        hash: *hash,
                    }),
                    _ => None,
                })
                .max_by_key(|c| c.rev);
            if newest.is_some() {
                return Ok(newest);
            }
            searched += 1;
            if searched >= CHECKPOINT_SEARCH {
                break;
            }
        }
        Ok(None)
    }
}
