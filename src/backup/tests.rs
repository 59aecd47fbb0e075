//! The backup run against a fake source that replays a real etcd 3.5.16 snapshot
//! (tests/fixtures/snapshot-etcd-3.5.16.db, as `etcdctl snapshot save` wrote it: data and
//! sha256 trailer), into a real folder store. Facts recorded from that etcd when the fixture
//! was taken: revision 11, compacted at 5, `endpoint hashkv` 2285003843, `etcdutl snapshot
//! status` {hash 3768667658, revision 11, totalKey 19, totalSize 24576}.

use std::io::Read;

use super::*;
use crate::etcd::{LiveHashKv, PieceStream};
use crate::store::LocalStore;

const FIXTURE: &[u8] = include_bytes!("../../tests/fixtures/snapshot-etcd-3.5.16.db");
const LIVE_HASH: u32 = 2_285_003_843;
const COMPACTED_AT: i64 = 5;

/// How the fake member behaves.
#[derive(Clone)]
struct Fake {
    facts: MemberFacts,
    /// The stream's bytes: data then the 32-byte trailer.
    bytes: Vec<u8>,
    /// Break the stream after this many data bytes.
    cut_after: Option<usize>,
    live: LiveHashKv,
    /// What the member says its compaction point is before the snapshot.
    compaction_point: i64,
}

impl Fake {
    fn good() -> Fake {
        Fake {
            facts: MemberFacts {
                voting_members: vec!["m1".into()],
                endpoint: "http://127.0.0.1:2379".into(),
                member_id: 0x2e12_45e6_2fb6_2a40,
                member_name: "fx".into(),
                cluster_id: 0x0482_7c47_3c1f_1187,
                etcd_version: "3.5.16".into(),
                db_size: 24576,
                raft_index: 16,
                revision: 11,
                is_learner: false,
                members: Vec::new(),
                data_at: None,
            },
            bytes: FIXTURE.to_vec(),
            cut_after: None,
            live: LiveHashKv::Hash {
                hash: LIVE_HASH,
                compact_revision: COMPACTED_AT,
            },
            compaction_point: COMPACTED_AT,
        }
    }
}

#[async_trait::async_trait]
impl Source for Fake {
    async fn member_facts(&mut self) -> Result<MemberFacts, SourceError> {
        Ok(self.facts.clone())
    }

    async fn snapshot(&mut self) -> Result<PieceStream, SourceError> {
        let (data, trailer) = self.bytes.split_at(self.bytes.len() - 32);
        let mut pieces: Vec<Result<SnapshotPiece, SourceError>> = Vec::new();
        for (i, chunk) in data.chunks(8 * 1024).enumerate() {
            if self.cut_after.is_some_and(|n| i * 8 * 1024 >= n) {
                pieces.push(Err(SourceError::StreamBroken {
                    endpoint: self.facts.endpoint.clone(),
                    bytes: (i * 8 * 1024) as u64,
                    cause: crate::etcd::Cause::text("connection reset"),
                }));
                return Ok(Box::pin(futures::stream::iter(pieces)));
            }
            pieces.push(Ok(SnapshotPiece::Data(bytes::Bytes::copy_from_slice(
                chunk,
            ))));
        }
        pieces.push(Ok(SnapshotPiece::Trailer(bytes::Bytes::copy_from_slice(
            trailer,
        ))));
        Ok(Box::pin(futures::stream::iter(pieces)))
    }

    async fn hash_kv(&mut self, revision: i64) -> Result<LiveHashKv, SourceError> {
        assert_eq!(revision, 11, "HashKV is asked at the snapshot's revision");
        Ok(self.live)
    }

    async fn compaction_point(&mut self, current: i64) -> Result<i64, SourceError> {
        assert_eq!(
            current, self.facts.revision,
            "bisected up to the member's revision"
        );
        Ok(self.compaction_point)
    }
}

struct Setup {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    settings: BackupSettings,
    fence: Option<Lost>,
}

/// A fence whose holder lost the election.
struct Lost;

#[async_trait::async_trait]
impl Fence for Lost {
    async fn check(&self) -> Result<(), crate::catalog::FenceLost> {
        Err(crate::catalog::FenceLost::TakenOver)
    }
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(&dir.path().join("store")).unwrap());
    let settings = BackupSettings {
        compression_level: 3,
        recipients: None,
        reason: Reason::Manual,
        signer: None,
        max_rate: None,
        kit: None,
    };
    Setup {
        dir,
        store,
        settings,
        fence: None,
    }
}

impl Setup {
    fn run(&self, mut fake: Fake, cancel: &CancellationToken) -> Result<Manifest, BackupError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(take_backup(
            &mut fake,
            self.store.clone(),
            &self.settings,
            Arc::new(crate::progress::Silent),
            cancel,
            self.fence.as_ref().map(|f| f as &dyn Fence),
        ))
    }

    fn files(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path().join(sub))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// After a failure: no manifest, no object, no `.part`.
    fn assert_nothing_kept(&self) {
        assert_eq!(self.files("store"), Vec::<String>::new());
    }
}

#[test]
fn a_good_snapshot_is_stored_checked_and_committed_with_its_facts() {
    let s = setup();
    let m = s.run(Fake::good(), &CancellationToken::new()).unwrap();
    assert_eq!(m.revision, 11);
    assert_eq!(
        m.status,
        verify::SnapshotStatus {
            hash: 3_768_667_658,
            revision: 11,
            total_key: 19,
            total_size: 24576
        }
    );
    assert_eq!(
        m.hashkv,
        verify::HashKvCheck::equal(LIVE_HASH, COMPACTED_AT)
    );
    assert_eq!(m.plain_size, FIXTURE.len() as u64);
    assert_eq!(m.plain_sha256, hex::encode(Sha256::digest(FIXTURE)));
    assert_eq!(m.cluster_id, "4827c473c1f1187");
    assert_eq!(m.encryption.scheme, "none");
    assert_eq!(
        s.files("store"),
        vec![m.object.key.clone(), format!("{}.manifest.json", m.id)]
    );
    let object = std::fs::read(s.dir.path().join("store").join(&m.object.key)).unwrap();
    assert_eq!(m.object.size, object.len() as u64);
    assert_eq!(m.object.sha256, hex::encode(Sha256::digest(&object)));
    let mut plain = Vec::new();
    crate::stages::decode::decoder(&object[..], None)
        .unwrap()
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(
        plain, FIXTURE,
        "the object holds the snapshot with its trailer"
    );
}

#[test]
fn a_trailer_that_does_not_match_fails_and_keeps_nothing() {
    let s = setup();
    let mut fake = Fake::good();
    let last = fake.bytes.len() - 1;
    fake.bytes[last] ^= 1;
    let err = s.run(fake, &CancellationToken::new()).unwrap_err();
    assert!(
        matches!(
            err,
            BackupError::Verify(VerifyError::TrailerMismatch { .. })
        ),
        "{err}"
    );
    s.assert_nothing_kept();
}

#[test]
fn a_damaged_page_fails_the_walk_and_keeps_nothing() {
    let s = setup();
    let mut fake = Fake::good();
    // A byte inside a page body, with the trailer recomputed so only the walk can see it.
    let (data, _) = FIXTURE.split_at(FIXTURE.len() - 32);
    let mut data = data.to_vec();
    for b in &mut data[4096 * 2 + 16..4096 * 2 + 64] {
        *b = 0xff;
    }
    let trailer = Sha256::digest(&data);
    data.extend_from_slice(&trailer);
    fake.bytes = data;
    let err = s.run(fake, &CancellationToken::new()).unwrap_err();
    assert!(matches!(err, BackupError::Verify(_)), "{err}");
    s.assert_nothing_kept();
}

#[test]
fn a_hashkv_that_differs_from_the_member_fails_and_keeps_nothing() {
    let s = setup();
    let mut fake = Fake::good();
    fake.live = LiveHashKv::Hash {
        hash: LIVE_HASH ^ 1,
        compact_revision: COMPACTED_AT,
    };
    let err = s.run(fake, &CancellationToken::new()).unwrap_err();
    assert!(
        matches!(err, BackupError::Verify(VerifyError::HashKvMismatch { .. })),
        "{err}"
    );
    s.assert_nothing_kept();
}

#[test]
fn a_member_ahead_of_its_own_snapshot_fails() {
    let s = setup();
    let mut fake = Fake::good();
    fake.facts.revision = 12;
    let err = s.run(fake, &CancellationToken::new()).unwrap_err();
    assert!(
        matches!(err, BackupError::Verify(VerifyError::RevisionBehind { .. })),
        "{err}"
    );
    s.assert_nothing_kept();
}

#[test]
fn a_stream_that_breaks_keeps_nothing() {
    let s = setup();
    let mut fake = Fake::good();
    fake.cut_after = Some(8 * 1024);
    let err = s.run(fake, &CancellationToken::new()).unwrap_err();
    assert!(
        matches!(err, BackupError::Source(SourceError::StreamBroken { .. })),
        "{err}"
    );
    s.assert_nothing_kept();
}

#[test]
fn a_member_that_compacted_past_the_revision_is_recorded_as_not_compared() {
    let s = setup();
    let mut fake = Fake::good();
    fake.live = LiveHashKv::Compacted;
    let m = s.run(fake, &CancellationToken::new()).unwrap();
    assert!(!m.hashkv.checked, "{:?}", m.hashkv);
    assert!(m.hashkv.result.starts_with("skipped"), "{:?}", m.hashkv);
}

#[test]
fn a_cancelled_backup_keeps_nothing() {
    let s = setup();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let err = s.run(Fake::good(), &cancel).unwrap_err();
    assert!(matches!(err, BackupError::Cancelled), "{err}");
    s.assert_nothing_kept();
}

#[test]
fn a_member_that_compacts_during_the_backup_is_recorded_as_not_compared() {
    let s = setup();
    let mut fake = Fake::good();
    // Hashed in the stream for compaction point 3; the member answers after compacting at 5.
    fake.compaction_point = 3;
    let m = s.run(fake, &CancellationToken::new()).unwrap();
    assert!(!m.hashkv.checked, "{:?}", m.hashkv);
    assert_eq!(
        m.hashkv.result,
        "skipped: the member compacted during the backup (from 3 to 5)"
    );
    assert_eq!(m.hashkv.compact_revision, Some(5));
}

#[test]
fn a_backup_writes_no_local_copy() {
    let s = setup();
    s.run(Fake::good(), &CancellationToken::new()).unwrap();
    let mut entries: Vec<String> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        vec!["store".to_string()],
        "only the store was written"
    );
}

#[test]
fn an_uploader_that_lost_its_election_commits_nothing() {
    let mut s = setup();
    s.fence = Some(Lost);
    let err = s.run(Fake::good(), &CancellationToken::new()).unwrap_err();
    assert!(matches!(err, BackupError::Fenced(_)), "{err}");
    s.assert_nothing_kept();
}
