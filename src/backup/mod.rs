//! One backup, in one streaming pass: etcd source → (sha256, streaming verifier) → zstd → age
//! → store, then the checks, then the manifest.
//!
//! ```text
//!  async: etcd stream ──(bounded, 32 × 32 KiB)──▶ blocking thread: sha256 + verify::StreamVerifier
//!                                                   └▶ zstd ▶ age ▶ sha256 ──(bounded, 8 × 256 KiB)──▶ async: store.put
//! ```
//! Nothing is written to local disk but the object itself when the store is a folder: the
//! bbolt walk, etcd's status and the offline HashKV are computed while the pages pass. Until
//! the manifest is written the backup does not exist: any failure removes the data object.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::catalog::{
    BackupId, Catalog, CatalogError, Compression, Encryption, Fence, Manifest, ObjectRef, Reason,
    Written,
};
use crate::etcd::{MemberFacts, SnapshotPiece, Source, SourceError};
use crate::progress::Observer;
use crate::stages::encode::Encoder;
use crate::stages::encrypt::Recipients;
use crate::stages::pipe;
use crate::store::{Store, StoreError};
use crate::trust::SigningKey;
use crate::verify::{self, HashKvCheck, HashKvStep, StreamChecked, StreamVerifier, VerifyError};

/// Settings of one backup run, validated before it starts.
#[derive(Clone, Debug)]
pub struct BackupSettings {
    pub compression_level: i32,
    /// `None` only when the config says `encryption = "none"`.
    pub recipients: Option<Recipients>,
    pub reason: Reason,
    /// Signs every manifest when set (`[trust] signing_key`).
    pub signer: Option<Arc<SigningKey>>,
    /// At most this many snapshot bytes per second read from etcd (`backup.max_rate`).
    pub max_rate: Option<u64>,
    /// On a kubeadm node: the control-plane kit stored with the backup (`None`: no kit).
    pub kit: Option<crate::kit::KitPlan>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("backup failed verification, nothing was kept: {0}")]
    Verify(#[from] VerifyError),
    #[error("the compress/encrypt stage failed: {0}")]
    Stage(io::Error),
    #[error("the backup was cancelled (shutdown); nothing was kept")]
    Cancelled,
    #[error("the backup was not committed: {0}; nothing was kept (the current uploader takes the next one)")]
    Fenced(#[source] crate::catalog::FenceLost),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Takes, verifies and stores one backup; returns its manifest once committed.
///
/// # Errors
/// Any source, stage, store or verification failure. On error no manifest exists and the
/// data object has been removed.
pub async fn take_backup(
    source: &mut dyn Source,
    store: Arc<dyn Store>,
    settings: &BackupSettings,
    progress: Arc<dyn Observer>,
    cancel: &CancellationToken,
    fence: Option<&dyn Fence>,
) -> Result<Manifest, BackupError> {
    let started = Instant::now();
    let member = source.member_facts().await?;
    // The offline HashKV is computed in the stream, for the compaction point it has now; a
    // compaction during the backup is recorded as such (see `hashkv_check`).
    let compaction_point = source.compaction_point(member.revision).await?;
    let removed = store.clean_incomplete().await?;
    if !removed.is_empty() {
        tracing::info!(removed = ?removed, "removed leftovers of interrupted backups");
    }
    let id = BackupId::new(Utc::now(), member.cluster_id);
    let run = Run {
        object_key: id.object_key(settings.recipients.is_some()),
        id,
        store,
        settings,
        member,
        compaction_point,
        started,
        cancel,
        fence,
    };
    tracing::info!(id = %run.id, endpoint = %run.member.endpoint, member = %run.member.member_name, db_size = run.member.db_size, "taking snapshot");
    let result = match stream_to_store(source, &run, progress).await {
        Ok(streamed) => {
            run.debug_elapsed("streamed and stored");
            verify_and_commit(source, &run, streamed).await
        }
        Err(e) => Err(e),
    };
    if result.is_err() {
        if let Err(e) = run.store.delete(&run.object_key).await {
            tracing::error!(key = %run.object_key, error = %e, "could not remove the data object of a failed backup; it has no manifest and will be ignored");
        }
    }
    result
}

/// One run's context, decided before the first byte.
struct Run<'a> {
    id: BackupId,
    object_key: String,
    store: Arc<dyn Store>,
    settings: &'a BackupSettings,
    member: MemberFacts,
    compaction_point: i64,
    started: Instant,
    cancel: &'a CancellationToken,
    fence: Option<&'a dyn Fence>,
}

impl Run<'_> {
    fn debug_elapsed(&self, what: &str) {
        tracing::debug!(
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "{what}"
        );
    }
}

/// What the streaming pass produced.
struct Streamed {
    trailer: Option<Vec<u8>>,
    data_sha256: [u8; 32],
    plain_sha256: [u8; 32],
    plain_size: u64,
    object_sha256: [u8; 32],
    object_size: u64,
    /// The bbolt walk, status and HashKV, from the stream.
    checked: Result<StreamChecked, crate::bbolt::BoltError>,
}

async fn stream_to_store(
    source: &mut dyn Source,
    run: &Run<'_>,
    progress: Arc<dyn Observer>,
) -> Result<Streamed, BackupError> {
    let mut stream = source.snapshot().await?;
    let (feed_tx, feed_rx) = mpsc::channel::<Feed>(32);
    let (pipe_writer, object_stream) = pipe::pipe(8);
    let put = {
        let store = run.store.clone();
        let key = run.object_key.clone();
        tokio::spawn(async move { store.put(&key, object_stream).await })
    };
    let verifier = StreamVerifier::new(
        &PathBuf::from(format!("the snapshot of {}", run.member.endpoint)),
        Some(run.compaction_point),
    );
    let recipients = run.settings.recipients.clone();
    let level = run.settings.compression_level;
    progress.begin("snapshot", Some(run.member.db_size));
    let stage = {
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || {
            encode(
                feed_rx,
                verifier,
                recipients,
                level,
                pipe_writer,
                progress.as_ref(),
            )
        })
    };

    // On cancel the feed stops without `End`: the stage then fails, the pipe aborts, and the
    // store removes the partial object (or aborts the multipart upload) before we return.
    let fed: Result<(), BackupError> = async {
        let mut pace = run.settings.max_rate.map(Pace::new);
        loop {
            let piece = tokio::select! {
                piece = stream.next() => piece.transpose()?,
                () = run.cancel.cancelled() => return Err(BackupError::Cancelled),
            };
            let Some(piece) = piece else { break };
            if let (Some(pace), SnapshotPiece::Data(bytes)) = (pace.as_mut(), &piece) {
                tokio::select! {
                    () = pace.after(bytes.len()) => {}
                    () = run.cancel.cancelled() => return Err(BackupError::Cancelled),
                }
            }
            if feed_tx.send(Feed::Piece(piece)).await.is_err() {
                return Ok(()); // the stage failed; its error is reported below
            }
        }
        let _ = feed_tx.send(Feed::End).await;
        Ok(())
    }
    .await;
    drop(feed_tx);
    let staged = stage
        .await
        .map_err(|e| BackupError::Internal(format!("stage thread: {e}")))?;
    let put = put
        .await
        .map_err(|e| BackupError::Internal(format!("store task: {e}")))?;
    progress.end();
    fed?;
    match (staged, put) {
        (Ok(s), Ok(stored)) if stored == s.object_size => Ok(s),
        (Ok(s), Ok(stored)) => Err(BackupError::Internal(format!(
            "the store wrote {stored} bytes of {} but the pipeline produced {}",
            run.object_key, s.object_size
        ))),
        // The store's own error is the cause when the stage only saw the pipe close.
        (Err(e), Err(store_err)) if e.kind() == io::ErrorKind::BrokenPipe => Err(store_err.into()),
        (Err(e), _) => Err(BackupError::Stage(e)),
        (Ok(_), Err(store_err)) => Err(store_err.into()),
    }
}

/// Holds the reading of the snapshot stream to `rate` bytes per second on average: etcd sends
/// only as fast as the stream is read (gRPC flow control), so its disk and CPU see the same.
struct Pace {
    rate: u64,
    started: tokio::time::Instant,
    bytes: u64,
}

impl Pace {
    fn new(rate: u64) -> Pace {
        Pace {
            rate: rate.max(1),
            started: tokio::time::Instant::now(),
            bytes: 0,
        }
    }

    /// Waits until `n` more bytes fit the rate.
    async fn after(&mut self, n: usize) {
        self.bytes += n as u64;
        let due = std::time::Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        tokio::time::sleep_until(self.started + due).await;
    }
}

/// The checks (verify/), then the manifest (catalog/): the moment the backup exists.
async fn verify_and_commit(
    source: &mut dyn Source,
    run: &Run<'_>,
    streamed: Streamed,
) -> Result<Manifest, BackupError> {
    verify::check_trailer(streamed.trailer.as_deref(), &streamed.data_sha256)?;
    let written = written(run, &streamed);
    let checked = streamed.checked.map_err(VerifyError::Bolt)?;
    let info = &checked.info;
    let rev = info.restored_revision;
    verify::check_revision(rev, run.member.revision)?;
    // Ask the member first: it may compact the revision away at any moment.
    let live = source.hash_kv(rev).await?;
    run.debug_elapsed("live HashKV answered");
    let hashkv = hashkv_check(
        rev,
        &checked,
        verify::plan_hashkv(rev, info.compact_revision, live),
    )?;
    if !hashkv.checked {
        tracing::warn!(revision = rev, why = %hashkv.result, "HashKV comparison skipped");
    }
    let mut manifest = Manifest::new(
        &run.id,
        &run.member,
        info,
        hashkv,
        written,
        run.settings.reason,
        run.started.elapsed(),
    );
    manifest.kit = kit_for(run).await;
    if run.cancel.is_cancelled() {
        return Err(BackupError::Cancelled);
    }
    hold::before_commit().await;
    if let Some(fence) = run.fence {
        fence.check().await.map_err(BackupError::Fenced)?;
    }
    Catalog::writer(run.store.clone())
        .commit(&manifest, run.settings.signer.as_deref())
        .await?;
    tracing::info!(id = %manifest.id, revision = manifest.revision, object_size = manifest.object.size, "backup committed");
    Ok(manifest)
}

/// On a kubeadm node, the control-plane kit stored before the backup's manifest (so the
/// manifest never names a kit that is not there). A kit that cannot be taken does not cost the
/// backup: etcd's data restores without it; the backup is committed without one, warned.
async fn kit_for(run: &Run<'_>) -> Option<String> {
    let cluster = format!("{:x}", run.member.cluster_id);
    store_kit(run.settings, &run.store, &cluster, &run.member.member_name).await
}

/// This node's kit, stored unless its content is there, by a `serve` instance that is not
/// the uploader: the backups carry the uploader's node's kit, and a rebuild of any other
/// control-plane node (`rebuild --node`) needs that node's own.
pub async fn store_node_kit(
    source: &mut crate::etcd::EtcdSource,
    store: &Arc<dyn Store>,
    settings: &BackupSettings,
) -> Option<String> {
    settings.kit.as_ref()?;
    let member = match source.member_facts().await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "this node's control-plane kit was not stored: etcd did not say which member this is");
            return None;
        }
    };
    let cluster = format!("{:x}", member.cluster_id);
    store_kit(settings, store, &cluster, &member.member_name).await
}

async fn store_kit(
    settings: &BackupSettings,
    store: &Arc<dyn Store>,
    cluster: &str,
    node: &str,
) -> Option<String> {
    let plan = settings.kit.as_ref()?;
    let taken = crate::kit::take(
        plan,
        cluster,
        node,
        store,
        settings.signer.as_deref(),
        settings.recipients.as_ref(),
    )
    .await;
    match taken {
        Ok(saved) => {
            tracing::info!(kit = %saved.id, stored = saved.uploaded, "control-plane kit");
            Some(saved.id)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no control-plane kit stored: a rebuild of this node on a fresh machine will need its files from elsewhere");
            None
        }
    }
}

/// Compares the member's HashKV with the one computed in the stream — possible only when the
/// member's compaction point is still the one the stream was hashed for.
fn hashkv_check(
    rev: i64,
    checked: &StreamChecked,
    step: HashKvStep,
) -> Result<HashKvCheck, VerifyError> {
    let (live, compact_revision) = match step {
        HashKvStep::Skip(skipped) => return Ok(skipped),
        HashKvStep::Compare {
            live,
            compact_revision,
        } => (live, compact_revision),
    };
    match &checked.hashkv {
        Some(Ok(offline))
            if verify::same_compaction_point(offline.compact_revision, compact_revision) =>
        {
            verify::compare_hashkv(rev, offline.hash, live, compact_revision)
        }
        Some(Ok(offline)) => Ok(HashKvCheck::skipped_compacted_during_backup(
            offline.compact_revision,
            compact_revision,
        )),
        Some(Err(why)) => Ok(HashKvCheck::skipped(&why.to_string())),
        None => Ok(HashKvCheck::skipped("not computed")),
    }
}

fn written(run: &Run<'_>, streamed: &Streamed) -> Written {
    Written {
        plain_sha256: streamed.plain_sha256,
        plain_size: streamed.plain_size,
        object: ObjectRef {
            key: run.object_key.clone(),
            size: streamed.object_size,
            sha256: hex::encode(streamed.object_sha256),
        },
        compression: Compression {
            algorithm: "zstd".into(),
            level: run.settings.compression_level,
        },
        encryption: Encryption::for_recipients(run.settings.recipients.as_ref()),
    }
}

enum Feed {
    Piece(SnapshotPiece),
    End,
}

/// The blocking stage: sha256 of the plain bytes, the streaming verifier, zstd, age, object
/// sha256.
fn encode(
    mut rx: mpsc::Receiver<Feed>,
    mut verifier: StreamVerifier,
    recipients: Option<Recipients>,
    level: i32,
    out: pipe::PipeWriter,
    progress: &dyn Observer,
) -> io::Result<Streamed> {
    let mut encoder = Encoder::new(out, level, recipients.as_ref())?;
    // The plain bytes are the data followed by the trailer, so one hash over the data serves
    // both: the plain hash is the data hash's state, cloned, plus the trailer.
    let mut data_hash = Sha256::new();
    let mut plain_hash: Option<Sha256> = None;
    let mut plain_size = 0u64;
    let mut trailer = None;
    let mut complete = false;
    while let Some(feed) = rx.blocking_recv() {
        let bytes = match feed {
            Feed::End => {
                complete = true;
                break;
            }
            Feed::Piece(SnapshotPiece::Data(b)) => {
                data_hash.update(&b);
                verifier.feed(&b);
                progress.advance(b.len() as u64);
                b
            }
            Feed::Piece(SnapshotPiece::Trailer(b)) => {
                let mut h = data_hash.clone();
                h.update(&b);
                plain_hash = Some(h);
                trailer = Some(b.to_vec());
                b
            }
        };
        plain_size += bytes.len() as u64;
        encoder.write_all(&bytes)?;
    }
    if !complete {
        return Err(io::Error::other("the snapshot stream was cut off"));
    }
    let object = encoder.finish()?;
    object.out.finish()?;
    let data_sha256 = data_hash.clone().finalize().into();
    Ok(Streamed {
        trailer,
        data_sha256,
        plain_sha256: plain_hash.unwrap_or(data_hash).finalize().into(),
        plain_size,
        object_sha256: object.sha256,
        object_size: object.size,
        checked: verifier.finish(),
    })
}

mod hold;

#[cfg(test)]
mod tests;
