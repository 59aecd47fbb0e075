//! One backup, in one streaming pass: etcd source → (sha256, spool) → zstd → age → store,
//! then the checks, then the manifest.
//!
//! ```text
//!  async: etcd stream ──(bounded, 32 × 32 KiB)──▶ blocking thread: sha256 + spool copy
//!                                                   └▶ zstd ▶ age ▶ sha256 ──(bounded, 8 × 256 KiB)──▶ async: store.put
//! ```
//! The spool copy (0600, flock'ed, in the work dir) exists only for the checks that need
//! random access (the bbolt walk and the offline HashKV); it is removed afterwards. Until the
//! manifest is written the backup does not exist: any failure removes the data object.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::catalog::{
    BackupId, Catalog, CatalogError, Compression, Encryption, Manifest, ObjectRef, Reason,
    SCHEMA_VERSION,
};
use crate::etcd::{EtcdSource, LiveHashKv, MemberFacts, SnapshotPiece, SourceError};
use crate::progress::Progress;
use crate::stages::encrypt::Recipients;
use crate::stages::hash::HashingWriter;
use crate::stages::{compress, pipe};
use crate::store::{Store, StoreError};
use crate::verify::{self, HashKvCheck, SnapshotInfo, VerifyError};

/// Settings of one backup run, validated before it starts.
#[derive(Clone, Debug)]
pub struct BackupSettings {
    pub work_dir: PathBuf,
    pub compression_level: i32,
    /// `None` only when the config says `encryption = "none"`.
    pub recipients: Option<Recipients>,
    pub reason: Reason,
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
    #[error("work dir {path}: {detail}")]
    WorkDir { path: PathBuf, detail: String },
    #[error("the work dir {path} has {free} bytes free but the database is {needed} bytes: free space or point `backup.work_dir` (--work-dir) elsewhere")]
    WorkDirFull {
        path: PathBuf,
        free: u64,
        needed: u64,
    },
    #[error("the compress/encrypt stage failed: {0}")]
    Stage(io::Error),
    #[error("the backup was cancelled (shutdown); nothing was kept")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
}

/// Takes, verifies and stores one backup; returns its manifest once committed.
///
/// # Errors
/// Any source, stage, store or verification failure. On error no manifest exists and the
/// data object has been removed.
pub async fn take_backup(
    source: &mut EtcdSource,
    store: Arc<dyn Store>,
    settings: &BackupSettings,
    progress: Arc<dyn Progress>,
    cancel: &CancellationToken,
) -> Result<Manifest, BackupError> {
    let started = Instant::now();
    let member = source.member_facts().await?;
    let spool = Spool::create(&settings.work_dir, member.db_size)?;
    let removed = store.clean_incomplete().await?;
    if !removed.is_empty() {
        tracing::info!(removed = ?removed, "removed leftovers of interrupted backups");
    }
    let id = BackupId::new(Utc::now(), member.cluster_id);
    let object_key = id.object_key(settings.recipients.is_some());
    tracing::info!(id = %id, endpoint = %member.endpoint, member = %member.member_name, db_size = member.db_size, "taking snapshot");

    let streamed = stream_to_store(
        source,
        &store,
        &object_key,
        &spool,
        settings,
        &member,
        progress,
        cancel,
    )
    .await?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "streamed and stored"
    );
    let result = verify_and_commit(
        source,
        &store,
        &id,
        &object_key,
        spool.path(),
        settings,
        &member,
        &streamed,
        started,
        cancel,
    )
    .await;
    if result.is_err() {
        if let Err(e) = store.delete(&object_key).await {
            tracing::error!(key = %object_key, error = %e, "could not remove the data object of a failed backup; it has no manifest and will be ignored");
        }
    }
    result
}

/// What the streaming pass produced.
struct Streamed {
    trailer: Option<Vec<u8>>,
    data_sha256: [u8; 32],
    plain_sha256: [u8; 32],
    plain_size: u64,
    object_sha256: [u8; 32],
    object_size: u64,
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
async fn stream_to_store(
    source: &mut EtcdSource,
    store: &Arc<dyn Store>,
    object_key: &str,
    spool: &Spool,
    settings: &BackupSettings,
    member: &MemberFacts,
    progress: Arc<dyn Progress>,
    cancel: &CancellationToken,
) -> Result<Streamed, BackupError> {
    let mut stream = source.open_snapshot().await?;
    let (feed_tx, feed_rx) = mpsc::channel::<Feed>(32);
    let (pipe_writer, object_stream) = pipe::pipe(8);
    let put = {
        let store = store.clone();
        let key = object_key.to_string();
        tokio::spawn(async move { store.put(&key, object_stream).await })
    };
    let spool_file = spool.file.try_clone().map_err(|e| spool.error(e))?;
    let recipients = settings.recipients.clone();
    let level = settings.compression_level;
    progress.begin("snapshot", Some(member.db_size));
    let stage = {
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || {
            encode(
                feed_rx,
                spool_file,
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
        loop {
            let piece = tokio::select! {
                piece = stream.next() => piece?,
                () = cancel.cancelled() => return Err(BackupError::Cancelled),
            };
            let Some(piece) = piece else { break };
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

    if let Err(e) = fed {
        let _ = store.delete(object_key).await;
        return Err(e);
    }
    let staged = match (staged, put) {
        (Ok(s), Ok(stored)) => {
            if stored != s.object_size {
                let _ = store.delete(object_key).await;
                return Err(BackupError::Internal(format!(
                    "the store wrote {stored} bytes of {object_key} but the pipeline produced {}",
                    s.object_size
                )));
            }
            s
        }
        // The store's own error is the cause when the stage only saw the pipe close.
        (Err(e), Err(store_err)) if e.kind() == io::ErrorKind::BrokenPipe => {
            return Err(store_err.into())
        }
        (Err(e), put) => {
            if put.is_ok() {
                let _ = store.delete(object_key).await;
            }
            return Err(stage_error(e, spool));
        }
        (Ok(_), Err(store_err)) => return Err(store_err.into()),
    };
    Ok(staged)
}

fn stage_error(e: io::Error, spool: &Spool) -> BackupError {
    if e.raw_os_error() == Some(28) {
        return spool.error(e);
    }
    BackupError::Stage(e)
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
async fn verify_and_commit(
    source: &mut EtcdSource,
    store: &Arc<dyn Store>,
    id: &BackupId,
    object_key: &str,
    spool_path: &Path,
    settings: &BackupSettings,
    member: &MemberFacts,
    streamed: &Streamed,
    started: Instant,
    cancel: &CancellationToken,
) -> Result<Manifest, BackupError> {
    verify::check_trailer(streamed.trailer.as_deref(), &streamed.data_sha256)?;
    let path = spool_path.to_path_buf();
    let info: SnapshotInfo = blocking(move || verify::read_snapshot_info(&path)).await??;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "bbolt walk done"
    );
    let rev = info.restored_revision;
    verify::check_revision(rev, member.revision)?;
    // Ask the member first: it may compact the revision away at any moment.
    let live = source.hash_kv(rev).await?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "live HashKV answered"
    );
    let hashkv = match live {
        LiveHashKv::Compacted => {
            tracing::warn!(
                revision = rev,
                "member has compacted past the snapshot's revision; HashKV comparison skipped"
            );
            HashKvCheck::skipped_compacted()
        }
        // etcd 3.5 answers HashKV at its compaction point from a cache filled while compacting
        // (over the entries before deletion, with the previous compaction point): no
        // snapshot taken after the compaction can reproduce that number.
        LiveHashKv::Hash {
            compact_revision, ..
        } if info.compact_revision > 0
            && rev == info.compact_revision
            && compact_revision < info.compact_revision =>
        {
            tracing::warn!(revision = rev, "the snapshot's revision is the member's compaction point; HashKV comparison skipped");
            HashKvCheck::skipped_at_compaction_point(compact_revision)
        }
        LiveHashKv::Hash {
            hash,
            compact_revision,
        } => {
            let path = spool_path.to_path_buf();
            let offline = blocking(move || verify::hash_kv(&path, rev, compact_revision)).await??;
            if offline != hash {
                return Err(VerifyError::HashKvMismatch {
                    revision: rev,
                    offline,
                    live: hash,
                    compact_revision,
                }
                .into());
            }
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "offline HashKV done"
            );
            HashKvCheck::equal(hash, compact_revision)
        }
    };
    let manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        id: id.to_string(),
        created_at: id.time,
        cluster_id: format!("{:x}", member.cluster_id),
        member_id: format!("{:x}", member.member_id),
        member_name: member.member_name.clone(),
        endpoint: member.endpoint.clone(),
        etcd_version: member.etcd_version.clone(),
        revision: rev,
        raft_index: info.consistent_index.unwrap_or(member.raft_index),
        db_size: member.db_size,
        status: info.status,
        hashkv,
        plain_sha256: hex::encode(streamed.plain_sha256),
        plain_size: streamed.plain_size,
        object: ObjectRef {
            key: object_key.to_string(),
            size: streamed.object_size,
            sha256: hex::encode(streamed.object_sha256),
        },
        compression: Compression {
            algorithm: "zstd".into(),
            level: settings.compression_level,
        },
        encryption: match &settings.recipients {
            Some(r) => Encryption {
                scheme: "age".into(),
                recipients: r.public_keys(),
            },
            None => Encryption {
                scheme: "none".into(),
                recipients: Vec::new(),
            },
        },
        reason: settings.reason,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    if cancel.is_cancelled() {
        return Err(BackupError::Cancelled);
    }
    Catalog::new(store.clone()).commit(&manifest).await?;
    tracing::info!(id = %manifest.id, revision = manifest.revision, object_size = manifest.object.size, "backup committed");
    Ok(manifest)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BackupError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackupError::Internal(format!("blocking task: {e}")))
}

impl From<crate::bbolt::BoltError> for BackupError {
    fn from(e: crate::bbolt::BoltError) -> Self {
        BackupError::Verify(VerifyError::Bolt(e))
    }
}

enum Feed {
    Piece(SnapshotPiece),
    End,
}

/// The blocking stage: sha256 of the plain bytes, the spool copy, zstd, age, object sha256.
fn encode(
    mut rx: mpsc::Receiver<Feed>,
    spool: File,
    recipients: Option<Recipients>,
    level: i32,
    out: pipe::PipeWriter,
    progress: &dyn Progress,
) -> io::Result<Streamed> {
    let mut spool = BufWriter::with_capacity(256 * 1024, spool);
    let object = HashingWriter::new(out);
    let sealer = match &recipients {
        Some(r) => Sealer::Age(r.encryptor(object)?),
        None => Sealer::Plain(object),
    };
    let mut zstd = compress::compressor(sealer, level)?;
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
        spool.write_all(&bytes)?;
        zstd.write_all(&bytes)?;
    }
    if !complete {
        return Err(io::Error::other("the snapshot stream was cut off"));
    }
    // The spool copy is scratch for the checks: flushed to the page cache, never fsynced.
    spool.into_inner().map_err(|e| e.into_error())?;
    let (out, object_sha256, object_size) = zstd.finish()?.finish()?.finish();
    out.finish()?;
    let data_sha256 = data_hash.clone().finalize().into();
    Ok(Streamed {
        trailer,
        data_sha256,
        plain_sha256: plain_hash.unwrap_or(data_hash).finalize().into(),
        plain_size,
        object_sha256,
        object_size,
    })
}

/// age, or nothing when encryption is explicitly off.
enum Sealer<W: Write> {
    Age(age::stream::StreamWriter<W>),
    Plain(W),
}

impl<W: Write> Sealer<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Sealer::Age(w) => w.finish(),
            Sealer::Plain(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealer::Age(w) => w.write(buf),
            Sealer::Plain(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealer::Age(w) => w.flush(),
            Sealer::Plain(w) => w.flush(),
        }
    }
}

/// The plain copy for the random-access checks: private, locked while in use, removed on drop.
pub(crate) struct Spool {
    file: File,
    temp: tempfile::TempPath,
}

const SPOOL_PREFIX: &str = "lifeboat-spool-";

impl Spool {
    /// Creates the spool after checking the work dir has room for `expected` bytes, and removes
    /// spool files that killed runs left behind.
    pub(crate) fn create(work_dir: &Path, expected: u64) -> Result<Spool, BackupError> {
        let err = |detail: String| BackupError::WorkDir {
            path: work_dir.to_path_buf(),
            detail,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(work_dir)
            .map_err(|e| err(format!("cannot create it: {e}")))?;
        remove_stale_spools(work_dir);
        let free =
            crate::fsutil::free_bytes(work_dir).map_err(|e| err(format!("cannot stat it: {e}")))?;
        // The snapshot is the database plus its trailer; leave 1 MiB of slack.
        let needed = expected + (1 << 20);
        if free < needed {
            return Err(BackupError::WorkDirFull {
                path: work_dir.to_path_buf(),
                free,
                needed,
            });
        }
        let named = tempfile::Builder::new()
            .prefix(SPOOL_PREFIX)
            .tempfile_in(work_dir)
            .map_err(|e| err(format!("cannot create a spool file: {e}")))?;
        let (file, temp) = named.into_parts();
        file.try_lock()
            .map_err(|e| err(format!("cannot lock the spool file: {e}")))?;
        Ok(Spool { file, temp })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.temp
    }

    pub(crate) fn error(&self, e: io::Error) -> BackupError {
        let path = self
            .temp
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        if e.raw_os_error() == Some(28) {
            BackupError::WorkDir {
                path,
                detail: "ran out of space while writing the spool copy: free space or move `backup.work_dir`".into(),
            }
        } else {
            BackupError::WorkDir {
                path,
                detail: format!("writing the spool copy failed: {e}"),
            }
        }
    }
}

fn remove_stale_spools(work_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(SPOOL_PREFIX)
        {
            let _ = crate::store::remove_if_unlocked(&entry.path());
        }
    }
}
