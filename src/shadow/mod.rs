//! The shadow: a private etcd off the control plane that follows the journal of continuous
//! backup revision by revision, exactly as a point-in-time restore replays it, proves every
//! checkpoint the capture recorded, and every `base_interval` cuts a full backup of itself at
//! a proven revision (a "base": restores then replay at most one interval), costing the
//! production etcd nothing.
//!
//! - `follow.rs`: the chain's segments as the capture commits them, checked link by link.
//! - here: the run — base backup → sandbox → replay with a hook that updates the shared
//!   state (metrics, `/readyz`) and asks for a base at a checkpoint; bases are taken on the
//!   caller's runtime from a client of their own; the replay waits at that revision only
//!   until the base's snapshot has begun (etcd reads it in one transaction), then goes on.
//!
//! A mismatch (a checkpoint hash, a revision, a broken or tampered link) stops the shadow at
//! the last verified revision: no base is ever written past it.

mod bases;
mod follow;
mod local;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backup::BackupSettings;
use crate::continuous::{ContinuousError, Journal, NewestChain};
use crate::pitr::{self, PitrError, ReplayStart};
use crate::restore::RestoreTool;
use crate::sandbox::{Sandbox, SandboxSettings};
use crate::stages::encrypt::Identities;
use crate::store::Store;
use crate::trust::ReadPolicy;
use bases::{serve_bases, ShadowHook};
use local::{Proven, ShadowDir};

/// How the shadow runs (`[shadow]`, validated once at start).
#[derive(Clone, Debug)]
pub struct ShadowSettings {
    /// The private etcd: binary (the cluster's minor version), restore tool, work dir.
    pub sandbox: SandboxSettings,
    /// A base at the first checkpoint at least this long after the last one.
    pub base_interval: Duration,
    /// Between looks for new segments.
    pub poll_interval: Duration,
    /// Stop once the segment holding this revision is replayed (a one-off proof).
    pub until_revision: Option<i64>,
    pub cluster: Option<u64>,
    /// How bases are written: encryption, compression and the shadow's own signing key.
    pub backup: BackupSettings,
}

/// What the shadow has done and proved, for metrics, `/readyz` and the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShadowState {
    pub chain: String,
    /// The base backup the shadow started from.
    pub started_from: String,
    /// The newest revision in the segments read so far.
    pub journal_revision: i64,
    pub applied_revision: i64,
    /// The newest revision whose HashKV the shadow reproduced.
    pub verified_revision: i64,
    /// When the capture received `verified_revision` (ms since the epoch).
    #[serde(skip)]
    pub verified_at_ms: Option<i64>,
    pub checkpoints_verified: u64,
    pub bases: Vec<BaseTaken>,
    pub base_failures: u64,
    pub mismatches_total: u64,
    /// Why the shadow stopped, when a check failed.
    pub stopped: Option<String>,
    /// Why the shadow is not following now when it could not start (no journal yet, the
    /// store unreachable): `serve` tries again after a pause.
    pub retrying: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BaseTaken {
    pub id: String,
    pub revision: i64,
}

impl ShadowState {
    /// Seconds from the capture receiving the oldest revision not yet proven to now; 0 when
    /// every revision read is proven.
    pub fn lag_seconds(&self) -> f64 {
        if self.verified_revision >= self.journal_revision {
            return 0.0;
        }
        self.verified_at_ms.map_or(0.0, |at| {
            ((Utc::now().timestamp_millis() - at).max(0) as f64) / 1000.0
        })
    }
}

/// The state, shared with whoever reports it.
#[derive(Clone, Default)]
pub struct SharedState(Arc<Mutex<ShadowState>>);

impl SharedState {
    pub fn get(&self) -> ShadowState {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Records why the shadow could not start (cleared when it does).
    pub fn note_retrying(&self, why: String) {
        self.update(|s| s.retrying = Some(why));
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut ShadowState)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error(transparent)]
    Setup(#[from] PitrError),
    #[error("the shadow STOPPED at verified revision {verified}: {source}; no base is written past it — find what changed the journal (docs/shadow.md)")]
    Mismatch {
        verified: i64,
        #[source]
        source: PitrError,
    },
}

/// Follows the newest chain from its newest trusted base until cancelled (or `until_revision`);
/// when the cluster starts a new chain (after a gap), goes on with that one from its base.
///
/// # Errors
/// No journal to follow, the base cannot be read or the sandbox not started (`Setup`); a check
/// failed on the way (`Mismatch`, also recorded in `state`).
pub async fn run(
    store: Arc<dyn Store>,
    policy: Arc<ReadPolicy>,
    identities: Option<Arc<Identities>>,
    settings: ShadowSettings,
    state: SharedState,
    cancel: CancellationToken,
) -> Result<ShadowState, ShadowError> {
    let follow = Following {
        journal: Arc::new(Journal::new(store.clone(), policy)),
        store,
        identities,
        settings,
        state: state.clone(),
        cancel,
    };
    let mut pause = ENVIRONMENT_RETRY_MIN;
    loop {
        match follow.newest_chain().await {
            Ok(Some(chain)) => {
                tracing::warn!(%chain, "the cluster's journal continues in a newer chain; the shadow follows it from its base");
            }
            Ok(None) => return Ok(state.get()),
            // The machine failed the sandbox (#21): not a mismatch. Its data is kept (a
            // restart resumes from it once it still hashes as proven) and it tries again.
            Err(ShadowError::Setup(e)) if is_environment(&e) && !follow.cancel.is_cancelled() => {
                tracing::error!(error = %e, retry_in = ?pause, "the shadow's sandbox failed (not the journal); it tries again");
                state.note_retrying(e.to_string());
                tokio::select! {
                    () = follow.cancel.cancelled() => return Ok(state.get()),
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(ENVIRONMENT_RETRY_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

const ENVIRONMENT_RETRY_MIN: Duration = Duration::from_secs(1);
const ENVIRONMENT_RETRY_MAX: Duration = Duration::from_secs(60);

/// A failure of the sandbox's machine — its etcd killed, out of space or over its quota, not
/// starting — rather than of the journal: retried, never counted as a mismatch.
fn is_environment(e: &PitrError) -> bool {
    matches!(
        e,
        PitrError::SandboxFailed { .. }
            | PitrError::Etcd(_)
            | PitrError::Sandbox(
                crate::sandbox::SandboxError::EtcdStart { .. }
                    | crate::sandbox::SandboxError::Dir { .. }
                    | crate::sandbox::SandboxError::Pki(_)
            )
    )
}

/// What following one chain needs.
struct Following {
    /// One reader for the whole run: a manifest read once is not read again.
    journal: Arc<Journal>,
    store: Arc<dyn Store>,
    identities: Option<Arc<Identities>>,
    settings: ShadowSettings,
    state: SharedState,
    cancel: CancellationToken,
}

/// Where one run of the replay starts.
struct Start {
    chain: String,
    cluster_id: u64,
    replay: ReplayStart,
    /// The checked segments to replay first.
    first: Vec<crate::continuous::SegmentManifest>,
    launch: Launch,
    /// The size of the database the replay starts on (its quota follows).
    base_db_size: u64,
}

impl Following {
    /// Follows the newest chain; `Some(newer)` when a newer chain of the cluster appeared
    /// after this one went quiet.
    async fn newest_chain(&self) -> Result<Option<String>, ShadowError> {
        let newest = self
            .journal
            .newest_chain(self.settings.cluster)
            .await
            .map_err(PitrError::from)?;
        let upto = self
            .settings
            .until_revision
            .map_or(newest.to_rev, |u| u.min(newest.to_rev));
        let dir = ShadowDir::open(&self.settings.sandbox.work_dir).map_err(|source| {
            PitrError::Output {
                path: self.settings.sandbox.work_dir.clone(),
                source,
            }
        })?;
        // Sized from the data the sandbox starts on: its own, or (below) the base's.
        let extra = pitr::sandbox_flags(&self.settings.sandbox.etcd, dir.db_size());
        let start = match self.resumable(&dir, &newest, upto, &extra).await {
            Some((p, current)) => self.resume(&newest, p, current, upto).await,
            None => self.restore(&dir, upto).await,
        }
        .map_err(|e| self.failed(e))?;
        let extra = match start.launch {
            Launch::Restore { .. } => {
                pitr::sandbox_flags(&self.settings.sandbox.etcd, start.base_db_size)
            }
            Launch::Resume => extra,
        };
        self.replay(start, dir, extra).await
    }

    /// A check that failed is a stop (recorded); anything else an error of the setup.
    fn failed(&self, e: PitrError) -> ShadowError {
        if breaks_the_journal(&e) {
            stopped(&self.state, e)
        } else {
            e.into()
        }
    }

    /// The proof recorded in `dir` and the revision its etcd is at, when that data is of the
    /// newest chain, not past `upto`, and still hashes as proven.
    async fn resumable(
        &self,
        dir: &ShadowDir,
        newest: &NewestChain,
        upto: i64,
        extra: &[String],
    ) -> Option<(Proven, i64)> {
        let p = dir.proven().filter(|p| p.chain == newest.chain)?;
        match local::check_resumable(dir, &p, &self.settings.sandbox, extra).await {
            Ok(current) if current <= upto => Some((p, current)),
            Ok(current) => {
                tracing::info!(
                    current,
                    upto,
                    "the shadow's own data is past where it should stop; starting from the base"
                );
                None
            }
            Err(why) => {
                tracing::warn!(why = %why, "the shadow's own data does not hold what it proved; starting from the newest base");
                None
            }
        }
    }

    /// Goes on from the shadow's own data at `current`.
    async fn resume(
        &self,
        newest: &NewestChain,
        p: Proven,
        current: i64,
        upto: i64,
    ) -> Result<Start, PitrError> {
        // From the segment holding `current` (its revisions are skipped): the follower then
        // looks for segments after it, not through the whole chain again.
        let from_current = self
            .journal
            .segments_after(&newest.chain, current - 1, upto.max(current))
            .await;
        let first = match from_current {
            Ok(s) => s,
            // Nothing past the base yet: the follower lists the chain from its start.
            Err(ContinuousError::NotCovered { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        tracing::info!(chain = %newest.chain, current, proven = p.rev, "shadow resuming from its own data");
        self.state.update(|s| {
            s.chain = newest.chain.clone();
            s.started_from = format!("its own data at revision {current} (base {})", p.base_id);
            s.applied_revision = current;
            s.verified_revision = p.rev;
            s.journal_revision = current;
        });
        Ok(Start {
            chain: newest.chain.clone(),
            cluster_id: newest.cluster,
            replay: ReplayStart {
                base_id: p.base_id,
                base_rev: p.base_rev,
                current,
                target: self.target(),
                segments: first.len(),
            },
            first,
            launch: Launch::Resume,
            base_db_size: 0,
        })
    }

    /// Starts over from the newest trusted base at or before `upto`.
    async fn restore(&self, dir: &ShadowDir, upto: i64) -> Result<Start, PitrError> {
        let plan = pitr::plan(
            &self.journal,
            self.identities.as_deref(),
            self.settings.cluster,
            upto,
        )
        .await?;
        dir.forget().map_err(|source| PitrError::Output {
            path: dir.path.clone(),
            source,
        })?;
        self.state.update(|s| {
            s.chain = plan.chain.clone();
            s.started_from = plan.base.id.clone();
            s.applied_revision = plan.base.revision;
            s.verified_revision = plan.base.revision;
            s.journal_revision = plan.base.revision;
        });
        tracing::info!(chain = %plan.chain, base = %plan.base.id, base_rev = plan.base.revision, "shadow starting from the newest trusted base");
        crate::readback::get_backup(
            self.store.clone(),
            &plan.base,
            self.identities.as_ref(),
            &dir.base_file(),
            true,
            Arc::new(crate::progress::Silent),
        )
        .await?;
        let tool = RestoreTool::find(self.settings.sandbox.tool.as_deref())?;
        Ok(Start {
            chain: plan.chain.clone(),
            cluster_id: u64::from_str_radix(&plan.cluster_id, 16).unwrap_or_default(),
            replay: ReplayStart {
                base_id: plan.base.id.clone(),
                base_rev: plan.base.revision,
                current: plan.base.revision,
                target: self.target(),
                segments: plan.segments.len(),
            },
            launch: Launch::Restore {
                base_file: dir.base_file(),
                skip_hash_check: !crate::bbolt::has_sha256_trailer(plan.base.plain_size),
                tool,
            },
            first: plan.segments,
            base_db_size: plan.base.db_size,
        })
    }

    fn target(&self) -> i64 {
        self.settings.until_revision.unwrap_or(i64::MAX)
    }

    /// The follower, the replay on its own thread and the base taker, until the replay ends;
    /// `Some(newer)` when the follower moved on to a newer chain.
    async fn replay(
        &self,
        start: Start,
        dir: ShadowDir,
        extra: Vec<String>,
    ) -> Result<Option<String>, ShadowError> {
        self.state.update(|s| s.retrying = None);
        let (records_tx, records_rx) = mpsc::channel(2);
        let (asks_tx, asks_rx) = mpsc::channel(1);
        let follower = follow::follow(
            follow::Follow {
                journal: self.journal.clone(),
                identities: self.identities.clone(),
                chain: start.chain.clone(),
                first: start.first,
                before: None,
                poll: self.settings.poll_interval,
                until: self.settings.until_revision,
                cluster: start.cluster_id,
            },
            records_tx,
            self.state.clone(),
            self.cancel.clone(),
        );
        let proven = Proven {
            chain: start.chain.clone(),
            base_id: start.replay.base_id.clone(),
            base_rev: start.replay.base_rev,
            rev: 0,
            compact_rev: 0,
            hash: 0,
        };
        let replay = ReplaySide {
            dir: dir.path.clone(),
            launch: start.launch,
            extra,
            sandbox: self.settings.sandbox.clone(),
            start: start.replay,
            hook: ShadowHook {
                state: self.state.clone(),
                base_interval: self.settings.base_interval,
                last_base: Instant::now(),
                bases: asks_tx,
                sandbox: None,
                dir: dir.clone(),
                proven,
                in_flight: None,
            },
        };
        let replayed = pitr::on_own_thread("lifeboat-shadow", move || replay.run(records_rx));
        let bases = serve_bases(
            self.store.clone(),
            &self.settings.backup,
            start.cluster_id,
            asks_rx,
            &self.state,
            &self.cancel,
        );
        let (newer, result, ()) = tokio::join!(follower, replayed, bases);
        match result {
            Ok(()) => Ok(newer),
            Err(e) if breaks_the_journal(&e) => {
                // Its data went past the last proof into what failed: never resume from it.
                if let Err(io) = dir.forget() {
                    tracing::error!(error = %io, dir = %dir.path.display(), "cannot remove the shadow's data after a mismatch; remove it by hand");
                }
                Err(stopped(&self.state, e))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The journal does not reproduce the cluster: a tampered, untrusted or missing segment, a
/// revision out of place, a checkpoint that does not hash as recorded.
fn breaks_the_journal(e: &PitrError) -> bool {
    use crate::continuous::ContinuousError as C;
    matches!(
        e,
        PitrError::Replay { .. }
            | PitrError::CheckpointMismatch { .. }
            | PitrError::Journal(
                C::Trust(_) | C::Invalid { .. } | C::BrokenChain { .. } | C::Hole { .. }
            )
    )
}

/// Records the stop (metrics, `/readyz`) and names it.
fn stopped(state: &SharedState, source: PitrError) -> ShadowError {
    let verified = state.get().verified_revision;
    state.update(|s| {
        s.mismatches_total += 1;
        s.stopped = Some(source.to_string());
    });
    tracing::error!(verified, error = %source, "shadow stopped at a mismatch");
    ShadowError::Mismatch { verified, source }
}

/// How the private etcd starts: restored from a base, or on the data it left.
enum Launch {
    Restore {
        base_file: std::path::PathBuf,
        skip_hash_check: bool,
        tool: RestoreTool,
    },
    Resume,
}

/// The sandbox side, owned: it runs on a thread of its own.
struct ReplaySide {
    dir: std::path::PathBuf,
    launch: Launch,
    extra: Vec<String>,
    sandbox: SandboxSettings,
    start: ReplayStart,
    hook: ShadowHook,
}

impl ReplaySide {
    async fn run(
        mut self,
        records: mpsc::Receiver<Result<Vec<crate::continuous::Record>, PitrError>>,
    ) -> Result<(), PitrError> {
        let mut sandbox = match &self.launch {
            Launch::Restore {
                base_file,
                skip_hash_check,
                tool,
            } => {
                Sandbox::start(
                    &self.dir,
                    base_file,
                    *skip_hash_check,
                    tool,
                    &self.sandbox,
                    &self.extra,
                )
                .await?
            }
            Launch::Resume => Sandbox::resume(&self.dir, &self.sandbox, &self.extra).await?,
        };
        self.hook.sandbox = Some(sandbox.etcd_settings.clone());
        let result = pitr::apply_journal(
            &mut sandbox.source,
            self.start,
            records,
            Box::new(self.hook),
        )
        .await;
        sandbox.stop().await;
        result.map(|_| ())
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn the_lag_counts_from_the_oldest_unproven_revision_and_is_zero_when_all_are_proven() {
        let ten_s_ago = Utc::now().timestamp_millis() - 10_000;
        let behind = ShadowState {
            journal_revision: 200,
            verified_revision: 150,
            verified_at_ms: Some(ten_s_ago),
            ..ShadowState::default()
        };
        assert!(
            (9.0..60.0).contains(&behind.lag_seconds()),
            "{}",
            behind.lag_seconds()
        );
        let caught_up = ShadowState {
            verified_revision: 200,
            ..behind
        };
        assert_eq!(caught_up.lag_seconds(), 0.0);
    }
}
