//! Finding where the member's compaction stands, cheaply (for the journal's compaction
//! records).

use super::{EtcdSource, SourceError};

/// Where the member's finished compaction stands relative to a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionState {
    /// Not compacted up to it (yet).
    Before,
    /// Compacted exactly at it.
    At,
    /// Compacted past it.
    Beyond,
}

impl EtcdSource {
    /// Where the member's compaction stands relative to `rev`, from two one-key reads: a read
    /// at `r` fails as compacted exactly when the compaction revision is above `r` (etcd has no
    /// call that names the compaction revision cheaply; HashKV does, at the cost of a walk).
    ///
    /// # Errors
    /// The member is unreachable or fails a read for another reason.
    pub async fn compaction_state(&mut self, rev: i64) -> Result<CompactionState, SourceError> {
        if !self.read_is_compacted(rev - 1).await? {
            return Ok(CompactionState::Before);
        }
        if self.read_is_compacted(rev).await? {
            return Ok(CompactionState::Beyond);
        }
        Ok(CompactionState::At)
    }

    /// The member's compaction point (0 when it never compacted past revision 1), found by
    /// bisecting one-key reads between 1 and `current` (its revision): some 30 reads for a
    /// revision of a billion, where HashKV would walk the whole store.
    ///
    /// # Errors
    /// The member is unreachable or fails a read for another reason.
    pub async fn compaction_point(&mut self, current: i64) -> Result<i64, SourceError> {
        if current <= 1 || !self.read_is_compacted(1).await? {
            return Ok(0);
        }
        // A read at `compacted` fails, one at `open` succeeds; the point is the lowest `open`.
        let (mut compacted, mut open) = (1, current);
        while open - compacted > 1 {
            let mid = compacted + (open - compacted) / 2;
            if self.read_is_compacted(mid).await? {
                compacted = mid;
            } else {
                open = mid;
            }
        }
        Ok(open)
    }

    async fn read_is_compacted(&mut self, rev: i64) -> Result<bool, SourceError> {
        if rev <= 0 {
            return Ok(false);
        }
        let mut client = self.client.clone();
        let options = etcd_client::GetOptions::new()
            .with_revision(rev)
            .with_count_only();
        match self
            .call(
                "Range",
                client.get("\0lifeboat-compaction-probe", Some(options)),
            )
            .await
        {
            Ok(_) => Ok(false),
            Err(SourceError::Call { cause, .. }) if cause.to_string().contains("compacted") => {
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }
}
