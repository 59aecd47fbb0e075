//! Reading a backup back: store → sha256 → age → zstd → (plain file) + streaming verifier, then
//! every check against the manifest (object hash and size, plain hash and size, etcd's trailer,
//! the bbolt walk and its status). Used by `snapshot verify` (no file at all), `snapshot get`,
//! restore and drills (the file etcd's tools need, checked as it is written: one pass).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::catalog::Manifest;
use crate::progress::Observer;
use crate::stages;
use crate::stages::decode::DecodeError;
use crate::stages::encrypt::Identities;
use crate::store::{Store, StoreError};
use crate::verify::{
    self, SnapshotInfo, SnapshotStatus, StreamChecked, StreamVerifier, VerifyError,
};

#[derive(Debug, thiserror::Error)]
pub enum ReadBackError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("backup {id} is encrypted: pass --identity KEYFILE with a private key of one of its recipients ({recipients})")]
    IdentityNeeded { id: String, recipients: String },
    #[error("backup {id} is stored without encryption although an identity was given: refused, since whoever can write the store could swap in a plaintext snapshot of their choosing; if it was taken with encryption = \"none\" on purpose, pass --allow-unencrypted")]
    Unencrypted { id: String },
    #[error("cannot decrypt {object}: {detail}; the backup was encrypted to {recipients}: use the identity file of one of these")]
    WrongIdentity {
        object: String,
        detail: String,
        recipients: String,
    },
    #[error("{object} is damaged: {detail}")]
    Damaged { object: String, detail: String },
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("{path}: {source}")]
    Output {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: no space left on the device: free space or write elsewhere")]
    NoSpace { path: PathBuf },
    #[error("{0} already exists: pass --force to overwrite it")]
    Exists(PathBuf),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Before reading: a reader that holds identities expects encrypted backups, and refuses a
/// plaintext one unless told otherwise; one without identities cannot read an encrypted one.
///
/// # Errors
/// `Unencrypted` or `IdentityNeeded`.
pub fn check_encryption(
    manifest: &Manifest,
    has_identities: bool,
    allow_unencrypted: bool,
) -> Result<(), ReadBackError> {
    match (manifest.encryption.scheme.as_str(), has_identities) {
        ("age", false) => Err(ReadBackError::IdentityNeeded {
            id: manifest.id.clone(),
            recipients: manifest.encryption.recipients.join(", "),
        }),
        ("age", true) => Ok(()),
        (_, true) if !allow_unencrypted => Err(ReadBackError::Unencrypted {
            id: manifest.id.clone(),
        }),
        _ => Ok(()),
    }
}

/// What reading the backup back established.
#[derive(Debug, Clone)]
pub struct ReadBack {
    pub object_sha256: String,
    pub object_size: u64,
    pub plain_sha256: String,
    pub plain_size: u64,
    pub status: SnapshotStatus,
}

/// Reads the backup back and checks everything, writing nothing to disk.
///
/// # Errors
/// Any mismatch or read failure, naming the object.
pub async fn verify_backup(
    store: Arc<dyn Store>,
    manifest: &Manifest,
    identities: Option<&Arc<Identities>>,
    progress: Arc<dyn Observer>,
) -> Result<ReadBack, ReadBackError> {
    let label = PathBuf::from(&manifest.object.key);
    read_into(store, manifest, identities, None, &label, progress).await
}

/// Writes the plain snapshot (trailer included) to `out` after checking it completely.
/// The file appears under its name only once every check passed.
///
/// # Errors
/// `Exists` without `force`; any mismatch or read failure.
pub async fn get_backup(
    store: Arc<dyn Store>,
    manifest: &Manifest,
    identities: Option<&Arc<Identities>>,
    out: &Path,
    force: bool,
    progress: Arc<dyn Observer>,
) -> Result<ReadBack, ReadBackError> {
    if out.exists() && !force {
        return Err(ReadBackError::Exists(out.to_path_buf()));
    }
    let part = part_path(out);
    let file = crate::fsutil::create_private_file(&part).map_err(|e| output_err(&part, e))?;
    let result = read_into(store, manifest, identities, Some(file), &part, progress).await;
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
        return result;
    }
    std::fs::rename(&part, out).map_err(|e| output_err(out, e))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| output_err(dir, e))?;
    }
    result
}

fn part_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    out.with_file_name(name)
}

fn output_err(path: &Path, source: io::Error) -> ReadBackError {
    let path = path.to_path_buf();
    if source.raw_os_error() == Some(28) {
        ReadBackError::NoSpace { path }
    } else {
        ReadBackError::Output { path, source }
    }
}

/// Reads the backup into `file` (when given; `path` names it, or the object, in errors) and
/// checks it against the manifest.
async fn read_into(
    store: Arc<dyn Store>,
    manifest: &Manifest,
    identities: Option<&Arc<Identities>>,
    file: Option<File>,
    path: &Path,
    progress: Arc<dyn Observer>,
) -> Result<ReadBack, ReadBackError> {
    // Callers have refused a downgrade already (`check_encryption` with their own setting);
    // here only "encrypted, but no identity" remains to catch.
    check_encryption(manifest, identities.is_some(), true)?;
    let encrypted = manifest.encryption.scheme == "age";
    let stream = store.get(&manifest.object.key).await?;
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let object_tally = Arc::new(Mutex::new(Tally::default()));
    let tally = object_tally.clone();
    let manifest_c = manifest.clone();
    let path_c = path.to_path_buf();
    let identities = identities.filter(|_| encrypted).cloned();
    let decoded = tokio::task::spawn_blocking(move || {
        decode(
            reader,
            tally,
            identities.as_deref(),
            file,
            &path_c,
            &manifest_c,
            progress.as_ref(),
        )
    })
    .await
    .map_err(|e| ReadBackError::Internal(format!("decode thread: {e}")))?;
    let plain = decoded?;
    let object = object_tally
        .lock()
        .map_err(|_| ReadBackError::Internal("object hash lock poisoned".into()))?
        .clone();
    let object_sha256 = hex::encode(object.hasher.finalize());
    let key = manifest.object.key.as_str();
    verify::expect_equal(key, "object size", manifest.object.size, object.count)?;
    verify::expect_equal(
        key,
        "object sha256",
        manifest.object.sha256.as_str(),
        &object_sha256,
    )?;
    verify::expect_equal(key, "plain size", manifest.plain_size, plain.size)?;
    verify::expect_equal(
        key,
        "plain sha256",
        manifest.plain_sha256.as_str(),
        &plain.sha256,
    )?;
    verify::check_trailer(plain.trailer.as_ref().map(|t| &t[..]), &plain.data_sha256)?;
    let info = plain.checked.map_err(VerifyError::from)?.info;
    let s = info.status;
    verify::expect_equal(key, "status hash", manifest.status.hash, s.hash)?;
    verify::expect_equal(key, "status revision", manifest.status.revision, s.revision)?;
    verify::expect_equal(key, "revision", manifest.revision, info.restored_revision)?;
    verify::expect_equal(
        key,
        "status totalKey",
        manifest.status.total_key,
        s.total_key,
    )?;
    verify::expect_equal(
        key,
        "status totalSize",
        manifest.status.total_size,
        s.total_size,
    )?;
    Ok(ReadBack {
        object_sha256,
        object_size: object.count,
        plain_sha256: plain.sha256,
        plain_size: plain.size,
        status: s,
    })
}

#[derive(Clone, Default)]
struct Tally {
    hasher: Sha256,
    count: u64,
}

/// Hashes what the decryptor pulls from the store, behind a lock so the total can be read
/// after the decryptor (which owns this reader) is done.
struct TallyReader<R> {
    inner: R,
    tally: Arc<Mutex<Tally>>,
}

impl<R: Read> Read for TallyReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut t = self
            .tally
            .lock()
            .map_err(|_| io::Error::other("hash lock poisoned"))?;
        t.hasher.update(&buf[..n]);
        t.count += n as u64;
        Ok(n)
    }
}

struct PlainTally {
    sha256: String,
    size: u64,
    data_sha256: [u8; 32],
    trailer: Option<[u8; 32]>,
    checked: Result<StreamChecked, crate::bbolt::BoltError>,
}

fn decode<R: Read>(
    reader: R,
    tally: Arc<Mutex<Tally>>,
    identities: Option<&Identities>,
    file: Option<File>,
    path: &Path,
    manifest: &Manifest,
    progress: &dyn Observer,
) -> Result<PlainTally, ReadBackError> {
    let object = manifest.object.key.clone();
    let damaged = |detail: String| ReadBackError::Damaged {
        object: object.clone(),
        detail,
    };
    let source = TallyReader {
        inner: reader,
        tally,
    };
    let mut sink = SinkThread::spawn(file, path);
    progress.begin("reading back", Some(manifest.plain_size));
    let copied = match stages::decode::decoder(source, identities) {
        Ok(plain) => copy_plain(plain, &mut sink, manifest.plain_size, progress),
        Err(DecodeError::Decrypt(e)) => return Err(decrypt_error(e, manifest)),
        Err(DecodeError::Decompress(e)) => Err(CopyError::Read(e)),
    };
    progress.end();
    // The writer's own error explains a failed send better than the send does.
    let written = sink.finish();
    let (file, tally_out) = match (copied, written) {
        (Err(CopyError::Read(e)), _) => {
            return Err(classify_copy_error(CopyError::Read(e), path, &damaged))
        }
        (_, Err(e)) | (Err(CopyError::Write(e)), Ok(_)) => return Err(output_err(path, e)),
        (Ok(()), Ok(done)) => done,
    };
    if let Some(file) = file {
        file.sync_all().map_err(|e| output_err(path, e))?;
    }
    Ok(tally_out)
}

/// Hashing, checking and writing the plain bytes run on a thread of their own, overlapping
/// with decryption and decompression (a bounded channel of 8 chunks keeps memory flat).
struct SinkThread {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    handle: Option<std::thread::JoinHandle<io::Result<Sunk>>>,
}

/// The file written (if any) and what was learnt of its bytes.
type Sunk = (Option<File>, PlainTally);

impl SinkThread {
    fn spawn(file: Option<File>, label: &Path) -> SinkThread {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
        let verifier = StreamVerifier::new(label, None);
        let handle = std::thread::spawn(move || {
            let writer = file.map(|f| BufWriter::with_capacity(256 * 1024, f));
            let mut sink = PlainSink::new(writer, verifier);
            for chunk in rx {
                sink.write_all(&chunk)?;
            }
            let (writer, tally) = sink.finish();
            let file = writer
                .map(|w| w.into_inner().map_err(|e| e.into_error()))
                .transpose()?;
            Ok((file, tally))
        });
        SinkThread {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> io::Result<Sunk> {
        drop(self.tx.take());
        self.handle
            .take()
            .map_or(Err(io::Error::other("writer thread missing")), |h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("writer thread panicked")))
            })
    }
}

impl Write for SinkThread {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::other("writer closed"))?;
        tx.send(buf.to_vec())
            .map_err(|_| io::Error::other("the writer thread stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn classify_copy_error(
    e: CopyError,
    path: &Path,
    damaged: &dyn Fn(String) -> ReadBackError,
) -> ReadBackError {
    match e {
        CopyError::Write(e) => output_err(path, e),
        CopyError::Read(e) => damaged(crate::error_chain::one_line(&e)),
    }
}

/// Copies the plain bytes, but never more than the manifest says there are: a tampered
/// object that expands further (a decompression bomb) would otherwise fill the disk — during
/// a restore, the disk of a running etcd — before any hash could catch it.
fn copy_plain(
    mut decoder: impl Read,
    sink: &mut impl Write,
    limit: u64,
    progress: &dyn Observer,
) -> Result<(), CopyError> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        total += n as u64;
        if total > limit {
            return Err(CopyError::Read(io::Error::other(format!(
                "it expands to more than the {limit} bytes its manifest records; stopped there (do not trust it)"
            ))));
        }
        sink.write_all(&buf[..n]).map_err(CopyError::Write)?;
        progress.advance(n as u64);
    }
}

fn decrypt_error(e: age::DecryptError, manifest: &Manifest) -> ReadBackError {
    let recipients = manifest.encryption.recipients.join(", ");
    match e {
        age::DecryptError::NoMatchingKeys => ReadBackError::WrongIdentity {
            object: manifest.object.key.clone(),
            detail: "none of the identities in the key file matches".into(),
            recipients,
        },
        other => ReadBackError::Damaged {
            object: manifest.object.key.clone(),
            detail: format!("not a readable age file: {other}"),
        },
    }
}

/// Writes the plain bytes (when there is somewhere to write them) while the streaming verifier
/// reads them and sha256 hashes all but the last 32 (held back as a possible trailer): that
/// digest checks etcd's trailer, and the same state continued with the held-back bytes is the
/// digest of the whole file — one sha256 pass for both.
struct PlainSink<W> {
    inner: Option<W>,
    verifier: StreamVerifier,
    data: Sha256,
    tail: Vec<u8>,
    size: u64,
}

impl<W: Write> PlainSink<W> {
    fn new(inner: Option<W>, verifier: StreamVerifier) -> Self {
        PlainSink {
            inner,
            verifier,
            data: Sha256::new(),
            tail: Vec::with_capacity(64),
            size: 0,
        }
    }

    fn finish(self) -> (Option<W>, PlainTally) {
        let trailer = if crate::bbolt::has_sha256_trailer(self.size) && self.tail.len() == 32 {
            Some(self.tail.as_slice().try_into().expect("32 bytes"))
        } else {
            None
        };
        let data_sha256 = self.data.clone().finalize().into();
        let mut all = self.data;
        all.update(&self.tail);
        (
            self.inner,
            PlainTally {
                sha256: hex::encode(all.finalize()),
                size: self.size,
                data_sha256,
                trailer,
                checked: self.verifier.finish(),
            },
        )
    }
}

impl<W: Write> Write for PlainSink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.inner {
            Some(w) => w.write(buf)?,
            None => buf.len(),
        };
        let buf = &buf[..n];
        // The trailer, past the last page, is ignored by the verifier.
        self.verifier.feed(buf);
        self.size += n as u64;
        if buf.len() >= 32 {
            self.data.update(&self.tail);
            self.data.update(&buf[..buf.len() - 32]);
            self.tail.clear();
            self.tail.extend_from_slice(&buf[buf.len() - 32..]);
        } else {
            self.tail.extend_from_slice(buf);
            if self.tail.len() > 32 {
                let excess = self.tail.len() - 32;
                self.data.update(&self.tail[..excess]);
                self.tail.drain(..excess);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.as_mut().map_or(Ok(()), Write::flush)
    }
}

fn plain_file_error(
    path: &Path,
    source: impl std::error::Error + Send + Sync + 'static,
) -> VerifyError {
    VerifyError::PlainFile {
        path: path.to_path_buf(),
        source: Box::new(source),
    }
}

/// Status of a plain snapshot file given on the command line (with or without trailer).
/// When the file carries a trailer, it is checked too.
///
/// # Errors
/// Unreadable, damaged, or a trailer that does not match.
pub fn plain_file_info(path: &Path) -> Result<SnapshotInfo, VerifyError> {
    Ok(plain_file_facts(path)?.info)
}

/// What one read of a plain snapshot file establishes.
pub struct PlainFile {
    pub info: SnapshotInfo,
    pub sha256: String,
    pub size: u64,
}

/// As [`plain_file_info`], with the file's sha256 and size from the same read.
///
/// # Errors
/// As [`plain_file_info`].
pub fn plain_file_facts(path: &Path) -> Result<PlainFile, VerifyError> {
    let mut f = File::open(path).map_err(|e| plain_file_error(path, e))?;
    let mut sink = PlainSink::new(None::<io::Sink>, StreamVerifier::new(path, None));
    io::copy(&mut f, &mut sink).map_err(|e| plain_file_error(path, e))?;
    let (_, tally) = sink.finish();
    if crate::bbolt::has_sha256_trailer(tally.size) {
        verify::check_trailer(tally.trailer.as_ref().map(|t| &t[..]), &tally.data_sha256)
            .map_err(|e| plain_file_error(path, e))?;
    }
    Ok(PlainFile {
        info: tally.checked?.info,
        sha256: tally.sha256,
        size: tally.size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: decompression was unbounded; a tampered object that expands far beyond
    /// the manifest's plain size filled the disk during a restore's fetch.
    #[test]
    fn an_object_that_expands_beyond_its_manifest_is_stopped_there() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::LocalStore::open(&dir.path().join("s")).unwrap());
        let bomb = crate::stages::encode::encode_all(&vec![0u8; 8 << 20], 3, None).unwrap();
        let m: Manifest = serde_json::from_str(&format!(
            r#"{{"schema_version":1,"id":"x","created_at":"2026-11-22T03:04:05Z","cluster_id":"a","member_id":"1","member_name":"m","endpoint":"e","etcd_version":"3.5.16","revision":1,"raft_index":1,"db_size":1,"status":{{"hash":1,"revision":1,"totalKey":1,"totalSize":1}},"hashkv":{{"hash":1,"compact_revision":0,"checked":true,"result":"equal"}},"plain_sha256":"00","plain_size":4096,"object":{{"key":"bomb.db.zst","size":{},"sha256":"00"}},"compression":{{"algorithm":"zstd","level":3}},"encryption":{{"scheme":"none","recipients":[]}},"reason":"manual","tool_version":"t","duration_ms":1}}"#,
            bomb.len()
        ))
        .unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(store.put("bomb.db.zst", crate::store::bytes_stream(bomb.into())))
            .unwrap();
        let out = dir.path().join("out.db");
        let err = rt
            .block_on(get_backup(
                store,
                &m,
                None,
                &out,
                false,
                Arc::new(crate::progress::Silent),
            ))
            .unwrap_err();
        assert!(matches!(err, ReadBackError::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("4096 bytes"), "{err}");
        assert!(!out.exists() && !dir.path().join("out.db.part").exists());
    }

    /// Regression: the manifest decided whether to decrypt, so a plaintext object swapped in
    /// by whoever could write the bucket was read although the reader held an identity.
    #[test]
    fn a_reader_with_an_identity_refuses_a_plaintext_backup_unless_told() {
        let mut m: Manifest = serde_json::from_str(
            r#"{"schema_version":1,"id":"x","created_at":"2026-11-22T03:04:05Z","cluster_id":"a","member_id":"1","member_name":"m","endpoint":"e","etcd_version":"3.5.16","revision":1,"raft_index":1,"db_size":1,"status":{"hash":1,"revision":1,"totalKey":1,"totalSize":1},"hashkv":{"hash":1,"compact_revision":0,"checked":true,"result":"equal"},"plain_sha256":"00","plain_size":1,"object":{"key":"x.db.zst","size":1,"sha256":"00"},"compression":{"algorithm":"zstd","level":3},"encryption":{"scheme":"none","recipients":[]},"reason":"manual","tool_version":"t","duration_ms":1}"#,
        )
        .unwrap();
        assert!(matches!(
            check_encryption(&m, true, false),
            Err(ReadBackError::Unencrypted { .. })
        ));
        assert!(check_encryption(&m, true, true).is_ok());
        assert!(check_encryption(&m, false, false).is_ok());
        m.encryption.scheme = "age".into();
        assert!(check_encryption(&m, true, false).is_ok());
        assert!(matches!(
            check_encryption(&m, false, false),
            Err(ReadBackError::IdentityNeeded { .. })
        ));
    }

    #[test]
    fn plain_sink_separates_data_and_trailer_whatever_the_write_sizes() {
        let data: Vec<u8> = (0..4096u32 * 3).map(|i| (i % 251) as u8).collect();
        let digest: [u8; 32] = Sha256::digest(&data).into();
        let mut file = data.clone();
        file.extend_from_slice(&digest);
        for step in [1usize, 7, 31, 32, 33, 4096, 100_000] {
            let mut sink =
                PlainSink::new(Some(io::sink()), StreamVerifier::new(Path::new("t"), None));
            for chunk in file.chunks(step) {
                sink.write_all(chunk).unwrap();
            }
            let (_, t) = sink.finish();
            assert_eq!(t.trailer, Some(digest), "step {step}");
            assert_eq!(t.data_sha256, digest, "step {step}");
            assert_eq!(t.size, file.len() as u64);
            assert_eq!(t.sha256, hex::encode(Sha256::digest(&file)), "step {step}");
        }
    }
}
