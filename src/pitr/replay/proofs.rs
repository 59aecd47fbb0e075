//! What a replay proves on the way: compactions mirrored at their own revision (the member's
//! hash there checked first, where it gave one) and every checkpoint's HashKV compared with
//! the sandbox's.

use etcd_client::CompactionOptions;

use super::{Proof, Replayer};
use crate::etcd::{EtcdSource, LiveHashKv};
use crate::pitr::PitrError;

impl Replayer {
    /// Compacts the sandbox where the cluster compacted, first checking the member's HashKV at
    /// that point (taken with the compaction before it: the state the compaction started
    /// from).
    pub(super) async fn mirror_compaction(
        &mut self,
        rev: i64,
        compact_rev: i64,
        hash: Option<u32>,
        source: &mut EtcdSource,
    ) -> Result<(), PitrError> {
        // Only a hash with the compaction before can be compared: after compacting, a 3.5.5+
        // sandbox answers this revision from the hash it kept while compacting. A sandbox
        // already compacted there (a journal that recorded a checkpoint first) only goes on.
        if rev <= self.compacted {
            return Ok(());
        }
        if let Some(expected) = hash.filter(|_| compact_rev < rev) {
            self.compact_to(compact_rev, rev).await?;
            let proof = Proof {
                rev,
                compact_rev,
                hash: expected,
                at_ms: None,
                exact: false,
            };
            self.prove(proof, source).await?;
        }
        self.compact_to(rev, rev).await?;
        self.report.compactions_mirrored += 1;
        Ok(())
    }

    /// Compacts the sandbox at `to` unless it is there already (a base backup restored with
    /// its own compaction counts).
    async fn compact_to(&mut self, to: i64, at_record: i64) -> Result<(), PitrError> {
        if to <= self.compacted || to <= 0 {
            return Ok(());
        }
        match self
            .client
            .compact(to, Some(CompactionOptions::new().with_physical()))
            .await
        {
            Ok(_) => {}
            Err(e) if e.to_string().contains("compacted") => {}
            Err(e) => {
                return Err(self.sandbox_failed(at_record, format!("compacting to {to}: {e}")))
            }
        }
        self.compacted = to;
        Ok(())
    }

    pub(super) async fn verify_checkpoint(
        &mut self,
        rev: i64,
        compact_rev: i64,
        expected: u32,
        source: &mut EtcdSource,
    ) -> Result<(), PitrError> {
        if compact_rev <= rev {
            self.compact_to(compact_rev, rev).await?;
        }
        let proof = Proof {
            rev,
            compact_rev,
            hash: expected,
            at_ms: self.last_at_ms,
            exact: true,
        };
        self.prove(proof, source).await?;
        self.report.checkpoints_verified += 1;
        self.report.verified_through = Some(rev);
        tracing::info!(rev, hash = expected, "checkpoint verified");
        Ok(())
    }

    /// Checks the sandbox against `proof` and tells the hook.
    async fn prove(&mut self, proof: Proof, source: &mut EtcdSource) -> Result<(), PitrError> {
        self.verify_hash(proof.rev, proof.compact_rev, proof.hash, source)
            .await?;
        self.hook.verified(proof).await
    }

    /// The sandbox's HashKV at `rev` equals the member's, compacted at `compact_rev`.
    async fn verify_hash(
        &mut self,
        rev: i64,
        compact_rev: i64,
        expected: u32,
        source: &mut EtcdSource,
    ) -> Result<(), PitrError> {
        let (actual, ok) = match source.hash_kv(rev).await? {
            LiveHashKv::Hash {
                hash,
                compact_revision,
            } => (
                format!("{hash} (compact revision {compact_revision})"),
                hash == expected && compact_revision == compact_rev,
            ),
            LiveHashKv::Compacted => ("revision compacted".into(), false),
        };
        if !ok {
            return Err(PitrError::CheckpointMismatch {
                rev,
                compact_rev,
                expected,
                actual,
            });
        }
        Ok(())
    }
}
