//! The segment being filled: revisions as the watch hands them over, the leases they use, the
//! revocations and compactions the member shows, and at each seal the checkpoint (the member's
//! HashKV) when one is due. `capture.rs` drives it from the watch and queues what it seals.
//!
//! What it asks of the member goes through `Member` (the etcd source in production), so the
//! sealing rules are unit-tested against a scripted member.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::capture::{
    CaptureObserver, CaptureSettings, CheckpointPace, HashKvCost, Resume, COMPACTION_HINT_PATIENCE,
    COMPACT_REV_KEY,
};
use super::chain::Sealed;
use super::segment::{Header, Record, SCHEMA_VERSION};
use super::ContinuousError;
use crate::etcd::watch::{Change, Revision};
use crate::etcd::{CompactionState, EtcdSource, LiveHashKv, SourceError};

/// What the builder asks of the member it captures.
#[async_trait::async_trait]
pub(super) trait Member: Send {
    /// The leases alive now, and the store's revision when listed.
    async fn lease_ids(&mut self) -> Result<(Vec<i64>, i64), SourceError>;
    /// The TTL lease `id` was granted with; `None` once it is gone.
    async fn lease_granted_ttl(&mut self, id: i64) -> Result<Option<i64>, SourceError>;
    async fn hash_kv(&mut self, rev: i64) -> Result<LiveHashKv, SourceError>;
    async fn compaction_state(&mut self, rev: i64) -> Result<CompactionState, SourceError>;
}

#[async_trait::async_trait]
impl Member for EtcdSource {
    async fn lease_ids(&mut self) -> Result<(Vec<i64>, i64), SourceError> {
        EtcdSource::lease_ids(self).await
    }
    async fn lease_granted_ttl(&mut self, id: i64) -> Result<Option<i64>, SourceError> {
        EtcdSource::lease_granted_ttl(self, id).await
    }
    async fn hash_kv(&mut self, rev: i64) -> Result<LiveHashKv, SourceError> {
        EtcdSource::hash_kv(self, rev).await
    }
    async fn compaction_state(&mut self, rev: i64) -> Result<CompactionState, SourceError> {
        EtcdSource::compaction_state(self, rev).await
    }
}

/// The segment being filled.
pub(super) struct Builder {
    pub(super) resume: Resume,
    pub(super) observer: Arc<dyn CaptureObserver>,
    pub(super) pace: CheckpointPace,
    /// The wait between checkpoints now (`pace` after the last HashKV).
    pub(super) checkpoint_every: Duration,
    pub(super) last_checkpoint: Instant,
    /// When the last segment was sealed.
    pub(super) last_seal: Instant,
    pub(super) hashkv_cost: HashKvCost,
    pub(super) leases: Vec<Record>,
    pub(super) revs: Vec<Record>,
    pub(super) revokes: Vec<Record>,
    pub(super) first_at: Option<DateTime<Utc>>,
    pub(super) last_at: Option<DateTime<Utc>>,
    pub(super) first_rev: i64,
    pub(super) bytes: usize,
    /// Leases the replay will have: recorded in this chain, or alive when capture started.
    pub(super) known: BTreeSet<i64>,
    /// Revisions the member may have compacted at, not yet recorded, with when each was seen.
    pub(super) compaction_hints: Vec<(i64, Instant)>,
    /// The newest compaction recorded (or known from a checkpoint).
    pub(super) last_compaction: i64,
}

impl Builder {
    pub(super) fn new(
        resume: Resume,
        settings: &CaptureSettings,
        observer: Arc<dyn CaptureObserver>,
    ) -> Builder {
        Builder {
            first_rev: resume.next_rev,
            resume,
            observer,
            pace: settings.checkpoint,
            checkpoint_every: settings.checkpoint.first(),
            last_checkpoint: Instant::now(),
            last_seal: Instant::now(),
            hashkv_cost: HashKvCost::default(),
            leases: Vec::new(),
            revs: Vec::new(),
            revokes: Vec::new(),
            first_at: None,
            last_at: None,
            bytes: 0,
            known: BTreeSet::new(),
            compaction_hints: Vec::new(),
            last_compaction: 0,
        }
    }

    pub(super) fn has_revisions(&self) -> bool {
        !self.revs.is_empty()
    }

    /// When the next checkpoint is due, while there is a segment to take it with and no seal
    /// has come since it fell due (one that could not take it — the member compacting — leaves
    /// the retry to the next tick).
    pub(super) fn checkpoint_due(&self) -> Option<Instant> {
        let due = self.last_checkpoint + self.checkpoint_every;
        (self.has_revisions() && due > self.last_seal).then_some(due)
    }

    /// Every lease alive now goes into the first segment of this capture, so a replay has
    /// each lease its keys name, whatever base backup it starts from.
    pub(super) async fn record_all_leases(
        &mut self,
        source: &mut dyn Member,
    ) -> Result<(), ContinuousError> {
        let (ids, at_rev) = source.lease_ids().await?;
        for id in ids {
            self.record_lease(source, id, at_rev).await?;
        }
        Ok(())
    }

    /// Records lease `id`, first seen with the store at `from_rev`.
    pub(super) async fn record_lease(
        &mut self,
        source: &mut dyn Member,
        id: i64,
        from_rev: i64,
    ) -> Result<(), ContinuousError> {
        let ttl = source.lease_granted_ttl(id).await?.unwrap_or(0);
        self.leases.push(Record::Lease {
            id,
            ttl,
            from_rev: Some(from_rev),
        });
        self.known.insert(id);
        Ok(())
    }

    pub(super) async fn record_new_leases(
        &mut self,
        source: &mut dyn Member,
        r: &Revision,
    ) -> Result<(), ContinuousError> {
        for c in &r.changes {
            if let Change::Put { lease, .. } = c {
                if *lease != 0 && !self.known.contains(lease) {
                    self.record_lease(source, *lease, r.rev).await?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn push(&mut self, r: Revision, at: DateTime<Utc>) -> Result<(), ContinuousError> {
        let expected = self.first_rev + self.revs.len() as i64;
        if r.rev != expected {
            return Err(ContinuousError::Hole {
                expected,
                got: r.rev,
            });
        }
        self.bytes += r
            .changes
            .iter()
            .map(|c| match c {
                Change::Put { key, value, .. } => key.len() + value.len() + 64,
                Change::Delete { key } => key.len() + 32,
            })
            .sum::<usize>();
        self.note_compaction_hints(&r);
        self.first_at.get_or_insert(at);
        self.last_at = Some(at);
        self.revs.push(Record::Rev {
            rev: r.rev,
            at_ms: at.timestamp_millis(),
            changes: r.changes,
        });
        Ok(())
    }

    /// The member's HashKV at `last_rev` when a checkpoint is due; `None` when it is not, when
    /// the member compacted past it, or when the hash was taken at its own compaction point
    /// after that compaction (a 3.5.5+ sandbox answers that revision from the hash it kept
    /// while compacting, so it could never be compared): the next segment tries again.
    pub(super) async fn checkpoint(
        &mut self,
        source: &mut dyn Member,
        last_rev: i64,
    ) -> Result<Option<Record>, ContinuousError> {
        if self.last_checkpoint.elapsed() < self.checkpoint_every {
            return Ok(None);
        }
        let started = Instant::now();
        let answer = source.hash_kv(last_rev).await?;
        let took = started.elapsed();
        self.checkpoint_every = self.pace.after(self.hashkv_cost.note(took));
        self.observer.checkpoint_hashed(took, self.checkpoint_every);
        tracing::debug!(
            rev = last_rev,
            took_ms = took.as_millis() as u64,
            next_in_s = self.checkpoint_every.as_secs(),
            "checkpoint HashKV"
        );
        let LiveHashKv::Hash {
            hash,
            compact_revision,
        } = answer
        else {
            return Ok(None);
        };
        if compact_revision == last_rev {
            return Ok(None);
        }
        // A compaction the hints missed (not Kubernetes' compactor) shows here.
        if compact_revision > self.last_compaction {
            self.compaction_hints
                .push((compact_revision, Instant::now()));
        }
        Ok(Some(Record::Checkpoint {
            rev: last_rev,
            compact_rev: compact_revision,
            hash,
        }))
    }

    /// Kubernetes' compactor writes the revision it is about to compact at into
    /// `compact_rev_key` (in a txn, so it is in the watch), then compacts: a hint to look.
    pub(super) fn note_compaction_hints(&mut self, r: &Revision) {
        for c in &r.changes {
            if let Change::Put { key, value, .. } = c {
                if key.as_slice() == COMPACT_REV_KEY {
                    let hinted = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.trim().parse::<i64>().ok());
                    if let Some(rev) = hinted.filter(|v| *v > self.last_compaction) {
                        self.compaction_hints.push((rev, Instant::now()));
                    }
                }
            }
        }
    }

    /// Compaction records for the hints the member confirms: compacted exactly there, with
    /// its HashKV at that point. A hint not compacted yet waits for a later segment (a while);
    /// one compacted past is dropped (the later compaction is found on its own).
    pub(super) async fn compactions(
        &mut self,
        source: &mut dyn Member,
        last_rev: i64,
    ) -> Result<Vec<Record>, ContinuousError> {
        let mut hints = std::mem::take(&mut self.compaction_hints);
        hints.sort_unstable();
        hints.dedup_by_key(|(rev, _)| *rev);
        let mut out = Vec::new();
        for (rev, seen) in hints {
            if rev <= self.last_compaction {
                continue;
            }
            if rev > last_rev {
                self.compaction_hints.push((rev, seen));
                continue;
            }
            match source.compaction_state(rev).await? {
                CompactionState::Before => {
                    if seen.elapsed() < COMPACTION_HINT_PATIENCE {
                        self.compaction_hints.push((rev, seen));
                    }
                }
                CompactionState::Beyond => {}
                CompactionState::At => {
                    let patient = seen.elapsed() < COMPACTION_HINT_PATIENCE;
                    let (compact_rev, hash) = match source.hash_kv(rev).await? {
                        // etcd 3.5.5+ once the compaction is done: the hash it kept from it.
                        LiveHashKv::Hash {
                            hash,
                            compact_revision,
                        } if compact_revision < rev => (compact_revision, Some(hash)),
                        // Hashed after the compaction (still running, or etcd before 3.5.5):
                        // a sandbox of 3.5.5+ answers that revision from its own kept hash
                        // (the state before), so it could never be compared. Asked again
                        // while the compaction may still be running, then mirrored unchecked.
                        LiveHashKv::Hash { .. } if patient => {
                            self.compaction_hints.push((rev, seen));
                            continue;
                        }
                        // 3.4 refuses HashKV at its compaction point.
                        LiveHashKv::Hash { .. } | LiveHashKv::Compacted => (rev, None),
                    };
                    out.push(Record::Compaction {
                        rev,
                        compact_rev,
                        hash,
                    });
                    self.last_compaction = rev;
                }
            }
        }
        Ok(out)
    }

    /// Closes the segment: leases granted since the last look (before its revisions), leases
    /// gone since, compactions the member confirms, a checkpoint when one is due.
    pub(super) async fn seal(
        &mut self,
        source: &mut dyn Member,
    ) -> Result<Sealed, ContinuousError> {
        self.last_seal = Instant::now();
        let (alive, at_rev) = source.lease_ids().await?;
        let alive: BTreeSet<i64> = alive.into_iter().collect();
        for id in alive.difference(&self.known.clone()) {
            self.record_lease(source, *id, at_rev).await?;
        }
        let gone: Vec<i64> = self.known.difference(&alive).copied().collect();
        for id in gone {
            self.known.remove(&id);
            self.revokes.push(Record::Revoke {
                id,
                after_rev: at_rev,
            });
        }
        let last_rev = self.first_rev + self.revs.len() as i64 - 1;
        let mut records = std::mem::take(&mut self.leases);
        records.append(&mut self.revs);
        records.append(&mut self.revokes);
        let checkpoint = self.checkpoint(source, last_rev).await?;
        records.append(&mut self.compactions(source, last_rev).await?);
        // A checkpoint goes after the record of the compaction it was taken with: the replay
        // mirrors a compaction once, and only before compacting can it check the hash there.
        // Until that record is written (the member may still be compacting), it waits.
        if let Some(Record::Checkpoint { compact_rev, .. }) = &checkpoint {
            if *compact_rev <= self.last_compaction {
                self.last_checkpoint = Instant::now();
                records.extend(checkpoint);
            }
        }
        let header = Header {
            schema_version: SCHEMA_VERSION,
            cluster_id: format!("{:x}", self.resume.cluster_id),
            chain: self.resume.chain.clone(),
            seq: self.resume.next_seq,
            prev_hash: self.resume.prev_hash.clone(),
            first_rev: self.first_rev,
            last_rev,
        };
        let sealed = Sealed::new(
            header,
            &records,
            self.first_at.take().unwrap_or_else(Utc::now),
            self.last_at.take().unwrap_or_else(Utc::now),
        );
        self.resume.prev_hash = sealed.hash.clone();
        self.resume.next_seq += 1;
        self.resume.next_rev = last_rev + 1;
        self.first_rev = last_rev + 1;
        self.bytes = 0;
        Ok(sealed)
    }
}

#[cfg(test)]
mod tests;
