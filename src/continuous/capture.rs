//! Capture: one watch on the whole keyspace, revisions grouped into segments sealed every
//! `segment_interval` (only when there are revisions) or at `segment_max_bytes`, with the lease
//! facts the watch does not carry and periodic HashKV checkpoints; sealed segments queue
//! (bounded) for an uploader that commits them in order, retrying while the store is down.
//!
//! ```text
//!  watch (all keys, from next_rev) ──revisions──▶ builder ──seal──▶ [queue] ──▶ commit (retry)
//!     ▲ progress requests (heartbeat)              │ leases, revokes, checkpoint   │
//!     └───────────────────────── caught up ◀───────┴──── durable revision ◀───────┘
//! ```

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::chain::{Sealed, SegmentWriter};
use super::clock::ChainClock;
use super::head::{write_head, Head};
use super::segment::{Header, Record, SegmentManifest, SCHEMA_VERSION};
use super::ContinuousError;
use crate::catalog::Fence;
use crate::etcd::watch::{Change, Revision, WatchItem};
use crate::etcd::{CompactionState, EtcdSource, LiveHashKv};

/// The key Kubernetes' compactor writes the revision it compacts at into.
const COMPACT_REV_KEY: &[u8] = b"compact_rev_key";
/// How long a hinted compaction that has not happened is looked for.
const COMPACTION_HINT_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct CaptureSettings {
    pub segment_interval: Duration,
    pub segment_max_bytes: usize,
    pub checkpoint: CheckpointPace,
    /// How often the watch is asked for progress (the heartbeat behind the lag metric).
    pub heartbeat: Duration,
    /// The largest watch message accepted (fragments keep each below the server's limit).
    pub max_message: usize,
    /// Bytes of sealed segments waiting for the store, at most (#21: counted in segments, an
    /// S3 outage under load could queue 64 × 8 MiB against a 256 Mi pod limit). When full, the
    /// watch waits: etcd holds what follows, and if the outage outlasts its history (the next
    /// compaction), the capture ends with `Compacted` and a new chain starts from a fresh
    /// full backup once the store is back.
    pub queue_bytes: usize,
    /// While idle, how often the chain's head is replaced ("caught up to R at T"): the
    /// precision of a time target after the newest write.
    pub head_interval: Duration,
}

impl Default for CaptureSettings {
    fn default() -> CaptureSettings {
        CaptureSettings {
            segment_interval: Duration::from_secs(2),
            segment_max_bytes: 8 << 20,
            checkpoint: CheckpointPace::Auto,
            heartbeat: Duration::from_secs(1),
            max_message: 64 << 20,
            queue_bytes: 64 << 20,
            head_interval: Duration::from_secs(30),
        }
    }
}

/// How often the capture takes a checkpoint (the member's HashKV at the segment's last
/// revision). A HashKV scans the member's whole key space while holding its backend's read
/// lock, and the member's commits wait for that lock: writes stall for as long as it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointPace {
    /// Every this long.
    Every(Duration),
    /// As often as the member can afford: `AUTO_FACTOR` times what a HashKV takes (the
    /// member's writes wait at most 1/`AUTO_FACTOR` of the time), between `AUTO_MIN` (a proof
    /// every 5 s up to a few GB) and `AUTO_MAX` (for huge ones).
    Auto,
}

const AUTO_FACTOR: u32 = 25;
const AUTO_MIN: Duration = Duration::from_secs(5);
const AUTO_MAX: Duration = Duration::from_secs(300);
/// Weight of the newest HashKV in what one costs: a single slow one (the member busy
/// compacting, a CPU spike) must not leave a hole of many seconds in the proofs.
const COST_WEIGHT: f64 = 0.25;

/// What a HashKV costs the member, smoothed over the recent ones.
#[derive(Debug, Default, Clone, Copy)]
struct HashKvCost(Option<Duration>);

impl HashKvCost {
    /// Records one that took `took`; the smoothed cost.
    fn note(&mut self, took: Duration) -> Duration {
        let cost = match self.0 {
            None => took,
            Some(c) => c.mul_f64(1.0 - COST_WEIGHT) + took.mul_f64(COST_WEIGHT),
        };
        self.0 = Some(cost);
        cost
    }
}

impl CheckpointPace {
    /// The wait before the first checkpoint.
    fn first(self) -> Duration {
        match self {
            CheckpointPace::Every(d) => d,
            CheckpointPace::Auto => AUTO_MIN,
        }
    }

    /// The wait after a checkpoint, HashKVs costing `took`.
    pub fn after(self, took: Duration) -> Duration {
        match self {
            CheckpointPace::Every(d) => d,
            CheckpointPace::Auto => took.saturating_mul(AUTO_FACTOR).clamp(AUTO_MIN, AUTO_MAX),
        }
    }
}

/// Where a chain continues: the next link and the next revision.
#[derive(Debug, Clone)]
pub struct Resume {
    pub chain: String,
    pub cluster_id: u64,
    pub next_seq: u64,
    pub prev_hash: String,
    pub next_rev: i64,
    /// The chain's last recorded time (its newest segment's, or its base's): no time this
    /// capture records goes below it, whatever this node's clock says.
    pub last_at: Option<DateTime<Utc>>,
}

/// Jobs queued at most (heads are tiny; segments are bounded by bytes, [`QueueBudget`]).
const JOBS_QUEUED: usize = 1024;

/// The bytes of sealed segments the queue may hold, in KiB permits.
#[derive(Clone)]
struct QueueBudget {
    permits: Arc<tokio::sync::Semaphore>,
    total: u32,
}

impl QueueBudget {
    fn new(bytes: usize) -> QueueBudget {
        let total = u32::try_from((bytes / 1024).max(1)).unwrap_or(u32::MAX >> 4);
        QueueBudget {
            permits: Arc::new(tokio::sync::Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until `len` bytes fit (a segment larger than the whole budget waits for an empty
    /// queue).
    async fn reserve(&self, len: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let want = u32::try_from(len.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total);
        if self.permits.available_permits() < want as usize {
            tracing::warn!(
                queued_kib = self.total as usize - self.permits.available_permits(),
                "the segment queue is full (the store is slow or down): the watch waits"
            );
        }
        self.permits.clone().acquire_many_owned(want).await.ok()
    }
}

/// What the uploader commits, in order.
enum Job {
    /// A segment, holding its share of the queue's byte budget until committed.
    Segment(Sealed, Option<tokio::sync::OwnedSemaphorePermit>),
    /// Every revision up to the newest committed one was all the member had at `at`.
    Head { at: DateTime<Utc> },
}

/// What capture reports as it goes (the service turns it into metrics).
pub trait CaptureObserver: Send + Sync {
    /// A segment is durable: every revision up to `m.last_rev`.
    fn committed(&self, m: &SegmentManifest);
    /// At `at`, every revision the member had was durable.
    fn caught_up(&self, at: SystemTime);
    /// Committing a segment failed; it will be retried.
    fn commit_failed(&self, e: &ContinuousError);
    /// The member's HashKV for a checkpoint took `took` (its writes waited as long); the next
    /// is due `next` after it.
    fn checkpoint_hashed(&self, _took: Duration, _next: Duration) {}
}

/// Captures until `cancel` (then commits what was received) or an error. `Compacted` means the
/// chain cannot continue: the caller starts a new one from a fresh full backup.
///
/// # Errors
/// The watch broke or fell behind compaction; a commit lost the race to another uploader.
pub async fn capture(
    source: &mut EtcdSource,
    writer: SegmentWriter,
    settings: &CaptureSettings,
    resume: Resume,
    cancel: &CancellationToken,
    fence: Option<Arc<dyn Fence>>,
    observer: Arc<dyn CaptureObserver>,
) -> Result<(), ContinuousError> {
    let (tx, rx) = mpsc::channel::<Job>(JOBS_QUEUED);
    let queue = Queue {
        tx,
        budget: QueueBudget::new(settings.queue_bytes),
    };
    let durable = Arc::new(AtomicI64::new(resume.next_rev - 1));
    // After `cancel`, what is queued is still committed, each segment tried once more.
    let uploads = upload_loop(
        writer,
        // The chain's newest link as capture starts: what a head names until a commit.
        Head::new(
            resume.cluster_id,
            &resume.chain,
            resume.next_seq - 1,
            &resume.prev_hash,
            resume.next_rev - 1,
        ),
        rx,
        fence,
        observer.clone(),
        durable.clone(),
        cancel.clone(),
    );
    let watch = watch_loop(source, settings, resume, queue, cancel, &observer, &durable);
    let (watched, uploaded) = tokio::join!(watch, uploads);
    uploaded.and(watched)
}

async fn watch_loop(
    source: &mut EtcdSource,
    settings: &CaptureSettings,
    resume: Resume,
    queue: Queue,
    cancel: &CancellationToken,
    observer: &Arc<dyn CaptureObserver>,
    durable: &AtomicI64,
) -> Result<(), ContinuousError> {
    let mut stream = source
        .watch_changes(resume.next_rev, settings.max_message)
        .await?;
    let mut clock = ChainClock::after(resume.last_at);
    let mut builder = Builder::new(resume, settings, observer.clone());
    builder.record_all_leases(source).await?;
    let mut heartbeat = tokio::time::interval(settings.heartbeat);
    let mut seal_timer = tokio::time::interval(settings.segment_interval);
    let mut last_head: Option<Instant> = None;
    seal_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let checkpoint_due = builder.checkpoint_due();
        tokio::select! {
            () = cancel.cancelled() => {
                if builder.has_revisions() {
                    let sealed = builder.seal(source).await?;
                    let _ = queue.tx.send(Job::Segment(sealed, None)).await;
                }
                return Ok(());
            }
            _ = heartbeat.tick() => stream.request_progress().await?,
            _ = seal_timer.tick() => {
                if builder.has_revisions() {
                    let sealed = builder.seal(source).await?;
                    queue.send(sealed).await?;
                }
            }
            // A checkpoint is due: seal now rather than at the next tick (up to a segment
            // interval later), which every revision since the last proof would wait for.
            () = sleep_until(checkpoint_due), if checkpoint_due.is_some() => {
                let sealed = builder.seal(source).await?;
                queue.send(sealed).await?;
            }
            item = stream.next() => match item? {
                None => return Err(ContinuousError::WatchEnded),
                Some(WatchItem::Revisions(revs)) => {
                    let at = clock.now();
                    for r in revs {
                        // A lease's TTL is read the moment its first key arrives: a lease
                        // revoked soon after cannot be asked any more.
                        builder.record_new_leases(source, &r).await?;
                        builder.push(r, at)?;
                        if builder.bytes >= settings.segment_max_bytes {
                            let sealed = builder.seal(source).await?;
                            queue.send(sealed).await?;
                        }
                    }
                }
                Some(WatchItem::Progress(rev)) => {
                    if !builder.has_revisions() && durable.load(Ordering::SeqCst) >= rev {
                        observer.caught_up(SystemTime::now());
                        if last_head.is_none_or(|t| t.elapsed() >= settings.head_interval) {
                            // Skipped when segments still queue: they are the newer news.
                            if queue.tx.try_send(Job::Head { at: clock.now() }).is_ok() {
                                last_head = Some(Instant::now());
                            }
                        }
                    }
                }
            },
        }
    }
}

/// Sleeps until `at`; forever when there is none.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// The uploader's queue: jobs in order, segments within the byte budget.
struct Queue {
    tx: mpsc::Sender<Job>,
    budget: QueueBudget,
}

impl Queue {
    async fn send(&self, sealed: Sealed) -> Result<(), ContinuousError> {
        let held = self.budget.reserve(sealed.body.len()).await;
        self.tx
            .send(Job::Segment(sealed, held))
            .await
            .map_err(|_| ContinuousError::UploaderStopped)
    }
}

async fn upload_loop(
    writer: SegmentWriter,
    mut head: Head,
    mut rx: mpsc::Receiver<Job>,
    fence: Option<Arc<dyn Fence>>,
    observer: Arc<dyn CaptureObserver>,
    durable: Arc<AtomicI64>,
    stop: CancellationToken,
) -> Result<(), ContinuousError> {
    while let Some(job) = rx.recv().await {
        // `_held` returns the segment's bytes to the queue's budget once it is committed.
        let (sealed, _held) = match job {
            Job::Segment(sealed, held) => (sealed, held),
            Job::Head { at } => {
                head.caught_up_at = at;
                write_head_once(&writer, &head, fence.as_deref()).await?;
                continue;
            }
        };
        let mut backoff = Duration::from_millis(500);
        loop {
            if let Some(f) = &fence {
                f.check().await.map_err(ContinuousError::Fenced)?;
            }
            match writer.commit(&sealed).await {
                Ok(m) => {
                    head.follow(&m);
                    durable.store(m.last_rev, Ordering::SeqCst);
                    observer.committed(&m);
                    break;
                }
                Err(e @ ContinuousError::Store(crate::store::StoreError::AlreadyExists { .. })) => {
                    // Another uploader committed this link: this one must not go on.
                    return Err(e);
                }
                Err(e) => {
                    observer.commit_failed(&e);
                    tracing::warn!(error = %e, seq = sealed.header.seq, "committing a segment failed; retrying (segments queue meanwhile)");
                    tokio::select! {
                        () = stop.cancelled() => return Err(e),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
    Ok(())
}

/// Replaces the head; a failure only narrows the restorable window until the next heartbeat
/// (warned), unless this uploader lost its election.
async fn write_head_once(
    writer: &SegmentWriter,
    head: &Head,
    fence: Option<&dyn Fence>,
) -> Result<(), ContinuousError> {
    if let Some(f) = fence {
        f.check().await.map_err(ContinuousError::Fenced)?;
    }
    if let Err(e) = write_head(writer.store.as_ref(), writer.signer.as_deref(), head).await {
        tracing::warn!(error = %e, chain = %head.chain, "replacing the journal head failed; a time after the newest write stays unrestorable until the next try");
    }
    Ok(())
}

/// The segment being filled.
struct Builder {
    resume: Resume,
    observer: Arc<dyn CaptureObserver>,
    pace: CheckpointPace,
    /// The wait between checkpoints now (`pace` after the last HashKV).
    checkpoint_every: Duration,
    last_checkpoint: Instant,
    /// When the last segment was sealed.
    last_seal: Instant,
    hashkv_cost: HashKvCost,
    leases: Vec<Record>,
    revs: Vec<Record>,
    revokes: Vec<Record>,
    first_at: Option<DateTime<Utc>>,
    last_at: Option<DateTime<Utc>>,
    first_rev: i64,
    bytes: usize,
    /// Leases the replay will have: recorded in this chain, or alive when capture started.
    known: BTreeSet<i64>,
    /// Revisions the member may have compacted at, not yet recorded, with when each was seen.
    compaction_hints: Vec<(i64, Instant)>,
    /// The newest compaction recorded (or known from a checkpoint).
    last_compaction: i64,
}

impl Builder {
    fn new(
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

    fn has_revisions(&self) -> bool {
        !self.revs.is_empty()
    }

    /// When the next checkpoint is due, while there is a segment to take it with and no seal
    /// has come since it fell due (one that could not take it — the member compacting — leaves
    /// the retry to the next tick).
    fn checkpoint_due(&self) -> Option<Instant> {
        let due = self.last_checkpoint + self.checkpoint_every;
        (self.has_revisions() && due > self.last_seal).then_some(due)
    }

    /// Every lease alive now goes into the first segment of this capture, so a replay has
    /// each lease its keys name, whatever base backup it starts from.
    async fn record_all_leases(&mut self, source: &mut EtcdSource) -> Result<(), ContinuousError> {
        let (ids, at_rev) = source.lease_ids().await?;
        for id in ids {
            self.record_lease(source, id, at_rev).await?;
        }
        Ok(())
    }

    /// Records lease `id`, first seen with the store at `from_rev`.
    async fn record_lease(
        &mut self,
        source: &mut EtcdSource,
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

    async fn record_new_leases(
        &mut self,
        source: &mut EtcdSource,
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

    fn push(&mut self, r: Revision, at: DateTime<Utc>) -> Result<(), ContinuousError> {
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
    async fn checkpoint(
        &mut self,
        source: &mut EtcdSource,
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
    fn note_compaction_hints(&mut self, r: &Revision) {
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
    async fn compactions(
        &mut self,
        source: &mut EtcdSource,
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
    async fn seal(&mut self, source: &mut EtcdSource) -> Result<Sealed, ContinuousError> {
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
mod tests {
    use super::*;

    struct Quiet;
    impl CaptureObserver for Quiet {
        fn committed(&self, _: &SegmentManifest) {}
        fn caught_up(&self, _: SystemTime) {}
        fn commit_failed(&self, _: &ContinuousError) {}
    }

    fn builder() -> Builder {
        let resume = Resume {
            chain: "c".into(),
            cluster_id: 1,
            next_seq: 1,
            prev_hash: String::new(),
            next_rev: 10,
            last_at: None,
        };
        let settings = CaptureSettings {
            checkpoint: CheckpointPace::Every(Duration::from_secs(5)),
            ..CaptureSettings::default()
        };
        Builder::new(resume, &settings, Arc::new(Quiet))
    }

    /// #21: the queue holds at most its budget of bytes; a segment waits until committed ones
    /// give theirs back.
    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes() {
        let budget = QueueBudget::new(1 << 20);
        let first = budget.reserve(700 << 10).await.unwrap();
        let second = budget.reserve(300 << 10).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), budget.reserve(100 << 10));
        assert!(waiting.await.is_err(), "over the budget: waits");
        drop(first);
        let third = tokio::time::timeout(Duration::from_millis(50), budget.reserve(100 << 10));
        assert!(
            third.await.is_ok(),
            "room again once a segment is committed"
        );
        drop(second);
        // Larger than the whole budget: it waits for an empty queue, not forever.
        assert!(budget.reserve(8 << 20).await.is_some());
    }

    #[test]
    fn one_slow_hashkv_moves_the_cost_a_quarter_of_the_way() {
        let mut cost = HashKvCost::default();
        assert_eq!(
            cost.note(Duration::from_millis(200)),
            Duration::from_millis(200)
        );
        // A spike to 1 s: the pace follows by a quarter, not all the way.
        assert_eq!(
            cost.note(Duration::from_secs(1)),
            Duration::from_millis(400)
        );
        // A lasting rise is followed within a few checkpoints.
        for _ in 0..10 {
            cost.note(Duration::from_secs(1));
        }
        assert!(cost.0.unwrap() > Duration::from_millis(950));
    }

    #[test]
    fn a_due_checkpoint_seals_the_segment_once_and_only_with_revisions_in_it() {
        let mut b = builder();
        assert_eq!(b.checkpoint_due(), None, "nothing to seal yet");
        b.push(
            crate::etcd::watch::Revision {
                rev: 10,
                changes: Vec::new(),
            },
            Utc::now(),
        )
        .unwrap();
        let due = b.last_checkpoint + Duration::from_secs(5);
        assert_eq!(b.checkpoint_due(), Some(due));
        // A seal after it fell due that could not take the checkpoint: the tick retries.
        b.last_seal = due + Duration::from_millis(1);
        assert_eq!(b.checkpoint_due(), None);
    }

    #[test]
    fn auto_checkpoints_keep_the_members_write_stall_under_four_percent_within_bounds() {
        let auto = CheckpointPace::Auto;
        assert_eq!(auto.first(), Duration::from_secs(5));
        // A small database, and the benchmark's 2 GB (~0.2 s): a proof every 5 s.
        assert_eq!(
            auto.after(Duration::from_millis(40)),
            Duration::from_secs(5)
        );
        assert_eq!(
            auto.after(Duration::from_millis(200)),
            Duration::from_secs(5)
        );
        // 1 s of HashKV: one every 25 s.
        assert_eq!(auto.after(Duration::from_secs(1)), Duration::from_secs(25));
        // A huge database is still checked every 5 minutes.
        assert_eq!(
            auto.after(Duration::from_secs(30)),
            Duration::from_secs(300)
        );
        let fixed = CheckpointPace::Every(Duration::from_secs(60));
        assert_eq!(fixed.first(), Duration::from_secs(60));
        assert_eq!(
            fixed.after(Duration::from_secs(30)),
            Duration::from_secs(60)
        );
    }
}
