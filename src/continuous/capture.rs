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

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::builder::Builder;
use super::chain::{Sealed, SegmentWriter};
use super::clock::ChainClock;
use super::head::{write_head, Head};
use super::segment::SegmentManifest;
use super::ContinuousError;
use crate::catalog::Fence;
use crate::etcd::watch::WatchItem;
use crate::etcd::EtcdSource;

/// The key Kubernetes' compactor writes the revision it compacts at into.
pub(super) const COMPACT_REV_KEY: &[u8] = b"compact_rev_key";
/// How long a hinted compaction that has not happened is looked for.
pub(super) const COMPACTION_HINT_PATIENCE: Duration = Duration::from_secs(60);

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
pub(super) const COST_WEIGHT: f64 = 0.25;

/// What a HashKV costs the member, smoothed over the recent ones.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct HashKvCost(Option<Duration>);

impl HashKvCost {
    /// Records one that took `took`; the smoothed cost.
    pub(super) fn note(&mut self, took: Duration) -> Duration {
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
    pub(super) fn first(self) -> Duration {
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

#[cfg(test)]
mod tests {
    use super::*;

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
