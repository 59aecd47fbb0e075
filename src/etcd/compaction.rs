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
