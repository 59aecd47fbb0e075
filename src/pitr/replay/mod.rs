//! The replay: base backup → sandbox etcd (the drill's, no fsync) → one txn per revision with
//! the changes in event order, so revision, create revision, version and sub-revisions come
//! out as they were; leases re-granted with their ids and TTLs before their first use and kept
//! alive throughout (a sandbox must never expire a lease on its own: that would write a
//! revision the cluster never had); revocations replayed once the journal saw them; at every
//! checkpoint the sandbox compacted like the cluster was and its HashKV compared. Then the
//! sandbox's snapshot, at exactly the target revision, is written to a file.
//!
//! `leases.rs`: the leases; `proofs.rs`: compactions mirrored and checkpoints compared;
//! `output.rs`: the snapshot written and checked.

mod leases;
mod output;
mod proofs;

use leases::keep_alive;
use output::{check_written, write_snapshot};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use etcd_client::Client;
use serde::Serialize;

use super::pipeline::{self, Pending};
use super::{PitrError, PitrPlan};
use crate::continuous::{read_records, Record, SegmentManifest};
use crate::etcd::watch::Change;
use crate::etcd::{EtcdSource, LiveHashKv};
use crate::progress::Observer;
use crate::restore::RestoreTool;
use crate::sandbox::{Sandbox, SandboxSettings};
use crate::stages::encrypt::Identities;
use crate::store::Store;

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub base: String,
    pub target_rev: i64,
    pub revisions: i64,
    pub segments: usize,
    pub checkpoints_verified: usize,
    /// The newest revision a checkpoint proved on the way (`None`: none did). Revisions after
    /// it are as the signed journal says, not proven by a HashKV (#21).
    pub verified_through: Option<i64>,
    /// Compactions replayed at their own revision (checked where the member gave a hash).
    pub compactions_mirrored: usize,
    pub leases_granted: usize,
    pub leases_revoked: usize,
    pub replay_ms: u64,
    pub revisions_per_second: f64,
    /// HashKV of the written snapshot at the target (compact revision in brackets).
    pub hash: u32,
    pub compact_revision: i64,
}

/// What a replay tells as it goes: the shadow follows it; a point-in-time restore needs none.
#[async_trait::async_trait]
pub trait ReplayHook: Send {
    /// Every revision up to `rev` is applied.
    fn applied(&mut self, _rev: i64) {}

    /// The sandbox hashes as the cluster did (see [`Proof`]).
    async fn verified(&mut self, _proof: Proof) -> Result<(), PitrError> {
        Ok(())
    }

    /// The replay has ended, either way; the sandbox stops after this returns.
    async fn finished(&mut self) {}
}

/// A revision at which the sandbox hashed as the cluster did.
#[derive(Debug, Clone, Copy)]
pub struct Proof {
    pub rev: i64,
    pub compact_rev: i64,
    pub hash: u32,
    /// When the capture received `rev` (ms since the epoch), when known.
    pub at_ms: Option<i64>,
    /// A checkpoint: the sandbox is at `rev` now and stays there until the hook returns.
    pub exact: bool,
}

/// No one follows.
pub struct NoHook;

impl ReplayHook for NoHook {}

/// Replays `plan` and writes the snapshot at its target revision to `out` (`.part`, fsync,
/// rename).
///
/// # Errors
/// Any check that fails stops the replay, naming the revision; nothing is written then.
pub async fn replay_to_file(
    store: Arc<dyn Store>,
    plan: &PitrPlan,
    identities: Option<&Arc<Identities>>,
    settings: &SandboxSettings,
    out: &Path,
    progress: Arc<dyn Observer>,
) -> Result<ReplayReport, PitrError> {
    let dir = scratch_dir(settings)?;
    let base_file = dir.path().join("base.db");
    crate::readback::get_backup(
        store.clone(),
        &plan.base,
        identities,
        &base_file,
        true,
        progress,
    )
    .await?;
    let base = LocalBase {
        file: base_file,
        id: plan.base.id.clone(),
        revision: plan.base.revision,
        db_size: plan.base.db_size,
    };
    let journal = (plan.segments.clone(), plan.target_rev);
    replay_in(dir.path(), store, base, journal, identities, settings, out).await
}

/// A base already on this machine: a fetched backup, or a member's own `member/snap/db`
/// (recover's survivor), which the sandbox's restore only reads.
#[derive(Debug, Clone)]
pub struct LocalBase {
    pub file: PathBuf,
    /// What the report calls it.
    pub id: String,
    /// Its revision: the replay applies the journal from the next one.
    pub revision: i64,
    pub db_size: u64,
}

/// Replays `segments` (checked and linked, from the one holding `base.revision + 1`) onto
/// `base` up to `target` and writes the snapshot there to `out`, with every check of
/// [`replay_to_file`].
///
/// # Errors
/// As [`replay_to_file`].
pub async fn replay_local_to_file(
    store: Arc<dyn Store>,
    base: LocalBase,
    segments: Vec<SegmentManifest>,
    target: i64,
    identities: Option<&Arc<Identities>>,
    settings: &SandboxSettings,
    out: &Path,
) -> Result<ReplayReport, PitrError> {
    let dir = scratch_dir(settings)?;
    replay_in(
        dir.path(),
        store,
        base,
        (segments, target),
        identities,
        settings,
        out,
    )
    .await
}

/// A private scratch folder under the sandbox's work dir, removed when dropped.
fn scratch_dir(settings: &SandboxSettings) -> Result<tempfile::TempDir, PitrError> {
    crate::fsutil::create_private_dir(&settings.work_dir).map_err(|source| PitrError::Output {
        path: settings.work_dir.clone(),
        source,
    })?;
    tempfile::Builder::new()
        .prefix("lifeboat-pitr-")
        .tempdir_in(&settings.work_dir)
        .map_err(|source| PitrError::Output {
            path: settings.work_dir.clone(),
            source,
        })
}

/// The segments to replay and the revision to stop at.
type Journal = (Vec<SegmentManifest>, i64);

async fn replay_in(
    dir: &Path,
    store: Arc<dyn Store>,
    base: LocalBase,
    (segments, target): Journal,
    identities: Option<&Arc<Identities>>,
    settings: &SandboxSettings,
    out: &Path,
) -> Result<ReplayReport, PitrError> {
    let tool = RestoreTool::find(settings.tool.as_deref())?;
    let size = std::fs::metadata(&base.file)
        .map_err(|source| PitrError::Output {
            path: base.file.clone(),
            source,
        })?
        .len();
    let skip_hash_check = !crate::bbolt::has_sha256_trailer(size);
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    let count = segments.len();
    let reader = read_ahead(store, segments, identities.cloned(), tx);
    let sandbox_run = SandboxRun {
        dir: dir.to_path_buf(),
        base,
        skip_hash_check,
        tool,
        settings: settings.clone(),
        target,
        segments: count,
        out: out.to_path_buf(),
    };
    let (_, result) = tokio::join!(reader, on_own_runtime(sandbox_run, rx));
    result
}

/// Segments decoded ahead of the replay, at most.
const READ_AHEAD: usize = 2;

/// The records of each segment in turn, read and checked on the caller's runtime while the
/// replay applies the ones before; stops at the first error (sent on) or when the replay is
/// done with them.
async fn read_ahead(
    store: Arc<dyn Store>,
    segments: Vec<crate::continuous::SegmentManifest>,
    identities: Option<Arc<Identities>>,
    tx: tokio::sync::mpsc::Sender<Result<Vec<Record>, PitrError>>,
) {
    for m in &segments {
        let records = read_records(store.as_ref(), m, identities.as_deref())
            .await
            .map_err(PitrError::from);
        let failed = records.is_err();
        if tx.send(records).await.is_err() || failed {
            return;
        }
    }
}

/// What the sandbox side of a replay needs, owned (it runs on its own thread).
struct SandboxRun {
    dir: PathBuf,
    base: LocalBase,
    skip_hash_check: bool,
    tool: RestoreTool,
    settings: SandboxSettings,
    target: i64,
    segments: usize,
    out: PathBuf,
}

/// Runs the sandbox and the replay on a single-threaded runtime of their own: one txn in
/// flight at a time gains nothing from worker threads, and on 2 cores their hand-offs (a
/// wake-up per request and per response) cost lifeboat about three times the CPU of the
/// replay itself (docs/performance.md).
async fn on_own_runtime(
    run: SandboxRun,
    records: tokio::sync::mpsc::Receiver<Result<Vec<Record>, PitrError>>,
) -> Result<ReplayReport, PitrError> {
    on_own_thread("lifeboat-replay", move || sandbox_replay(run, records)).await
}

/// Runs `work` on a thread with a single-threaded runtime of its own (see `on_own_runtime`).
///
/// # Errors
/// What `work` returns; the thread or its runtime could not be started.
pub(crate) async fn on_own_thread<T, F, Fut>(name: &str, work: F) -> Result<T, PitrError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, PitrError>>,
{
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(work()),
                Err(source) => Err(PitrError::Output {
                    path: PathBuf::from("(replay runtime)"),
                    source,
                }),
            };
            let _ = done_tx.send(result);
        });
    if let Err(source) = spawned {
        return Err(PitrError::Output {
            path: PathBuf::from("(replay thread)"),
            source,
        });
    }
    done_rx.await.unwrap_or_else(|_| {
        Err(PitrError::Replay {
            rev: 0,
            detail: "the replay thread ended without a result".into(),
        })
    })
}

async fn sandbox_replay(
    run: SandboxRun,
    records: tokio::sync::mpsc::Receiver<Result<Vec<Record>, PitrError>>,
) -> Result<ReplayReport, PitrError> {
    let extra = sandbox_flags(&run.settings.etcd, run.base.db_size);
    let mut sandbox = Sandbox::start(
        &run.dir,
        &run.base.file,
        run.skip_hash_check,
        &run.tool,
        &run.settings,
        &extra,
    )
    .await?;
    let result = replay(records, &run, &mut sandbox).await;
    sandbox.stop().await;
    result
}

/// The sandbox's backend quota for a base of `db_size` bytes: the replay adds history on top
/// of it (compacted only where the journal says), so a fixed quota made a large cluster's
/// replay fail with NOSPACE — read, before #21, as a journal that does not reproduce the
/// cluster. etcd's recommended maximum (8 GiB) or four times the base, whichever is larger.
pub(crate) fn sandbox_quota(db_size: u64) -> u64 {
    (8u64 << 30).max(db_size.saturating_mul(4))
}

/// Throughput flags: no fsync (the sandbox is thrown away), and limits that fit any revision
/// the cluster accepted (a DeleteRange of many keys is one txn of many ops here); the quota
/// from the base's size ([`sandbox_quota`]).
pub(crate) fn sandbox_flags(etcd: &Path, db_size: u64) -> Vec<String> {
    let mut flags = vec![
        "--max-txn-ops=10000000".to_string(),
        "--max-request-bytes=268435456".to_string(),
        format!("--quota-backend-bytes={}", sandbox_quota(db_size)),
        "--snapshot-count=1000000".to_string(),
    ];
    let help = std::process::Command::new(etcd).arg("--help").output();
    let knows = |flag: &str| {
        help.as_ref().is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).contains(flag)
                || String::from_utf8_lossy(&o.stderr).contains(flag)
        })
    };
    if knows("--unsafe-no-fsync") {
        flags.push("--unsafe-no-fsync".into());
    }
    flags
}

/// Revisions applied between two looks at the revocations due.
const BATCH: usize = 4096;

struct Replayer {
    client: Client,
    /// The base backup's revision: compactions at or below it are in the base already.
    base_rev: i64,
    current: i64,
    target: i64,
    /// Lease id → TTL, for the keepalive task.
    alive: Arc<std::sync::Mutex<BTreeMap<i64, i64>>>,
    /// Revocations seen but not yet due (`after_rev` not replayed yet).
    pending_revokes: Vec<(i64, i64)>,
    /// Leases first seen at a revision not replayed yet: id → (TTL, that revision). Granted
    /// once the replay reaches it, or just before a revision attaches a key to one; never when
    /// the target comes first — a lease granted after the target is not in its state (#22).
    deferred: BTreeMap<i64, (i64, i64)>,
    compacted: i64,
    /// When the capture received the newest revision applied.
    last_at_ms: Option<i64>,
    report: ReplayReport,
    hook: Box<dyn ReplayHook>,
}

/// Where a replay starts: the sandbox serving the base backup (or a replay's own data).
pub(crate) struct ReplayStart {
    pub base_id: String,
    /// The base backup's revision: compactions at or below it are in the base already.
    pub base_rev: i64,
    /// The sandbox's revision now.
    pub current: i64,
    /// The last revision to apply.
    pub target: i64,
    pub segments: usize,
}

/// Applies the journal's `records` to the sandbox from `start.current` up to `start.target`
/// (or until the records end), checking every checkpoint; the report and the sandbox's
/// revision at the end.
///
/// # Errors
/// The first revision or check that fails, named.
pub(crate) async fn apply_journal(
    source: &mut EtcdSource,
    start: ReplayStart,
    records: tokio::sync::mpsc::Receiver<Result<Vec<Record>, PitrError>>,
    hook: Box<dyn ReplayHook>,
) -> Result<(ReplayReport, i64), PitrError> {
    let started = Instant::now();
    let client = source.client();
    let mut r = Replayer {
        client: client.clone(),
        base_rev: start.base_rev,
        current: start.current,
        target: start.target,
        alive: Arc::new(std::sync::Mutex::new(BTreeMap::new())),
        pending_revokes: Vec::new(),
        deferred: BTreeMap::new(),
        compacted: 0,
        last_at_ms: None,
        report: ReplayReport {
            base: start.base_id,
            target_rev: start.target,
            revisions: 0,
            segments: start.segments,
            checkpoints_verified: 0,
            verified_through: None,
            compactions_mirrored: 0,
            leases_granted: 0,
            leases_revoked: 0,
            replay_ms: 0,
            revisions_per_second: 0.0,
            hash: 0,
            compact_revision: 0,
        },
        hook,
    };
    r.adopt_base_leases().await?;
    let keepalive = tokio::spawn(keep_alive(client.clone(), r.alive.clone()));
    let outcome = r.apply_segments(records, source).await;
    r.hook.finished().await;
    keepalive.abort();
    outcome?;
    let elapsed = started.elapsed();
    r.report.replay_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    r.report.revisions_per_second = r.report.revisions as f64 / elapsed.as_secs_f64().max(1e-3);
    Ok((r.report, r.current))
}

async fn replay(
    records: tokio::sync::mpsc::Receiver<Result<Vec<Record>, PitrError>>,
    run: &SandboxRun,
    sandbox: &mut Sandbox,
) -> Result<ReplayReport, PitrError> {
    let (target, out) = (run.target, &run.out);
    let start = ReplayStart {
        base_id: run.base.id.clone(),
        base_rev: run.base.revision,
        current: run.base.revision,
        target,
        segments: run.segments,
    };
    let (mut report, current) =
        apply_journal(&mut sandbox.source, start, records, Box::new(NoHook)).await?;
    if current != target {
        return Err(PitrError::Replay {
            rev: target,
            detail: format!("the journal ends at revision {current}"),
        });
    }
    let (hash, compact_revision) = match sandbox.source.hash_kv(target).await? {
        LiveHashKv::Hash {
            hash,
            compact_revision,
        } => (hash, compact_revision),
        LiveHashKv::Compacted => (0, 0),
    };
    report.hash = hash;
    report.compact_revision = compact_revision;
    write_snapshot(&mut sandbox.source, out).await?;
    check_written(out, target, hash)?;
    Ok(report)
}

impl Replayer {
    fn failed(&self, rev: i64, detail: String) -> PitrError {
        PitrError::Replay { rev, detail }
    }

    /// The sandbox etcd refused or failed a request: its environment, not the journal.
    fn sandbox_failed(&self, rev: i64, detail: String) -> PitrError {
        PitrError::SandboxFailed { rev, detail }
    }

    async fn apply_segments(
        &mut self,
        mut segments: tokio::sync::mpsc::Receiver<Result<Vec<Record>, PitrError>>,
        source: &mut EtcdSource,
    ) -> Result<(), PitrError> {
        // The revision before the next one to send, when the journal has it (not the base's).
        let mut prev: Option<Vec<Change>> = None;
        let mut batch: Vec<Pending> = Vec::new();
        while let Some(records) = segments.recv().await {
            for record in records? {
                match record {
                    Record::Rev { rev, .. } if rev <= self.current => {}
                    Record::Rev { rev, .. } if rev > self.target => {
                        // What follows is after the target.
                        return self.flush(&mut batch).await;
                    }
                    Record::Rev {
                        rev,
                        changes,
                        at_ms,
                    } => {
                        self.last_at_ms = Some(at_ms);
                        let expected = self.current + batch.len() as i64 + 1;
                        if rev != expected {
                            return Err(
                                self.failed(rev, format!("revision {expected} was due next"))
                            );
                        }
                        if self.attaches_deferred(&changes) {
                            self.flush(&mut batch).await?;
                            self.grant_attached(&changes).await?;
                        }
                        batch.push(pipeline::pending(rev, &changes, prev.as_deref()));
                        prev = Some(changes);
                        if batch.len() >= BATCH {
                            self.flush(&mut batch).await?;
                        }
                    }
                    other => {
                        // Leases, revocations and checkpoints apply between revisions.
                        self.flush(&mut batch).await?;
                        self.apply(other, source).await?;
                    }
                }
            }
            // The next segment may be long in coming (a shadow waits for the capture's).
            self.flush(&mut batch).await?;
        }
        self.flush(&mut batch).await
    }

    /// Applies the revisions gathered so far, in order, several in flight.
    async fn flush(&mut self, batch: &mut Vec<Pending>) -> Result<(), PitrError> {
        let Some(last) = batch.last().map(|p| p.rev) else {
            return Ok(());
        };
        let n = batch.len() as i64;
        pipeline::apply_in_order(&self.client, std::mem::take(batch), pipeline::WINDOW)
            .await
            .map_err(|f| match f {
                pipeline::Failure::Journal(rev, detail) => self.failed(rev, detail),
                pipeline::Failure::Sandbox(rev, detail) => self.sandbox_failed(rev, detail),
            })?;
        self.current = last;
        self.report.revisions += n;
        self.hook.applied(last);
        self.grant_due().await?;
        self.revoke_due().await
    }

    async fn apply(&mut self, record: Record, source: &mut EtcdSource) -> Result<(), PitrError> {
        match record {
            Record::Lease { id, ttl, from_rev } => match from_rev {
                Some(from) if from > self.current => {
                    self.deferred.insert(id, (ttl, from));
                    Ok(())
                }
                _ => self.grant(id, ttl).await,
            },
            Record::Revoke { id, after_rev } => {
                self.pending_revokes.push((id, after_rev));
                self.revoke_due().await
            }
            // A checkpoint follows the revisions up to its own: the sandbox is exactly there.
            Record::Checkpoint {
                rev,
                compact_rev,
                hash,
            } if rev == self.current => {
                self.verify_checkpoint(rev, compact_rev, hash, source).await
            }
            Record::Compaction {
                rev,
                compact_rev,
                hash,
            } if rev > self.base_rev && rev <= self.current => {
                self.mirror_compaction(rev, compact_rev, hash, source).await
            }
            Record::Checkpoint { .. }
            | Record::Compaction { .. }
            | Record::Header(_)
            | Record::Rev { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// #21: a fixed 8 GiB quota made a large cluster's replay fail with NOSPACE.
    #[test]
    fn the_sandbox_quota_follows_the_base() {
        assert_eq!(sandbox_quota(0), 8 << 30);
        assert_eq!(sandbox_quota(1 << 30), 8 << 30);
        assert_eq!(sandbox_quota(6 << 30), 24 << 30);
        assert_eq!(sandbox_quota(u64::MAX), u64::MAX);
    }
}
