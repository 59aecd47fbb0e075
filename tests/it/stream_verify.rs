//! The streaming verifier (one pass, no file) against the file walker it replaces, etcd's own
//! tools and the member: equal on every fixture, and on every damaged copy of one either both
//! fail on the same page or both read the same numbers.

use std::path::Path;

use lifeboat::bbolt::BoltError;
use lifeboat::verify::{self, OfflineHashKv, StreamChecked, StreamVerifier};

use crate::data::{client, fill, rt};
use crate::harness::{run_ok, EtcdProcess, Version};
use crate::status::oracle_status;

fn stream(bytes: &[u8], chunk: usize, compact: Option<i64>) -> Result<StreamChecked, BoltError> {
    let mut v = StreamVerifier::new(Path::new("fixture"), compact);
    for piece in bytes.chunks(chunk.max(1)) {
        v.feed(piece);
    }
    v.finish()
}

fn member_hashkv(etcd: &EtcdProcess, rev: i64) -> (u32, i64) {
    rt().block_on(async {
        let r = client(etcd).await.hash_kv(rev).await.unwrap();
        (r.hash(), r.compact_version())
    })
}

/// The walker's numbers and the stream's are the same, whatever the piece size; the status
/// equals etcd's tool; HashKV equals the walker's for each compaction point given.
fn assert_stream_equals_walker(file: &Path, compacts: &[i64]) -> StreamChecked {
    let bytes = std::fs::read(file).unwrap();
    let walked = verify::read_snapshot_info(file).unwrap();
    let mut last = None;
    for chunk in [bytes.len(), 32 * 1024, 3001] {
        for &c in compacts {
            let s = stream(&bytes, chunk, Some(c)).unwrap();
            assert_eq!(s.info.status, walked.status, "status, chunk {chunk}");
            assert_eq!(s.info.restored_revision, walked.restored_revision);
            assert_eq!(s.info.compact_revision, walked.compact_revision);
            assert_eq!(s.info.consistent_index, walked.consistent_index);
            assert_eq!(s.info.term, walked.term);
            let offline = verify::hash_kv(file, walked.restored_revision, c).unwrap();
            assert_eq!(
                s.hashkv.clone().unwrap().unwrap(),
                OfflineHashKv {
                    compact_revision: c,
                    hash: offline
                },
                "HashKV for compaction point {c}, chunk {chunk}"
            );
            last = Some(s);
        }
    }
    last.unwrap()
}

fn fixtures_of(v: Version) {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdProcess::start(v, None);
    let snap = |name: &str| {
        let p = dir.path().join(name);
        run_ok(etcd.etcdctl().args(["snapshot", "save"]).arg(&p));
        p
    };
    let empty = snap("empty.db");
    let never = rt().block_on(async {
        let mut source =
            lifeboat::etcd::EtcdSource::connect(&crate::data::settings(&etcd), &etcd.client_url)
                .await
                .unwrap();
        source.compaction_point(1).await.unwrap()
    });
    assert_eq!(never, 0);
    let s = assert_stream_equals_walker(&empty, &[0]);
    let oracle = oracle_status(v, &etcd, &empty);
    assert_eq!(serde_json::to_value(s.info.status).unwrap(), oracle);

    // Overwrites, deletes, leases, a transaction, a compaction and writes after it; values
    // of 20 KB (overflow pages) and one over 1 MB.
    let last = fill(&etcd, 200_000);
    rt().block_on(async {
        let mut c = client(&etcd).await;
        c.put("/registry/configmaps/huge/one", "h".repeat(1_200_000), None)
            .await
            .unwrap();
    });
    let full = snap("full.db");
    let snapshot_compact = verify::read_snapshot_info(&full).unwrap().compact_revision;
    assert!(snapshot_compact > 0 && last > snapshot_compact);
    let (live_hash, live_compact) = member_hashkv(&etcd, last + 1);
    let probed = rt().block_on(async {
        let mut source =
            lifeboat::etcd::EtcdSource::connect(&crate::data::settings(&etcd), &etcd.client_url)
                .await
                .unwrap();
        source.compaction_point(last + 1).await.unwrap()
    });
    assert_eq!(probed, live_compact, "the bisected compaction point");
    let s = assert_stream_equals_walker(&full, &[0, snapshot_compact, snapshot_compact + 3]);
    assert_eq!(
        serde_json::to_value(s.info.status).unwrap(),
        oracle_status(v, &etcd, &full)
    );
    let ours = stream(
        &std::fs::read(&full).unwrap(),
        32 * 1024,
        Some(live_compact),
    )
    .unwrap();
    assert_eq!(
        ours.hashkv.unwrap().unwrap().hash,
        live_hash,
        "the member's own HashKV at {}",
        last + 1
    );

    // Everything deleted, then compacted: no key left to keep.
    rt().block_on(async {
        let mut c = client(&etcd).await;
        c.delete("", Some(etcd_client::DeleteOptions::new().with_all_keys()))
            .await
            .unwrap();
        let rev = c.get("x", None).await.unwrap().header().unwrap().revision();
        c.compact(rev - 1, None).await.unwrap();
    });
    let gone = snap("gone.db");
    let c = verify::read_snapshot_info(&gone).unwrap().compact_revision;
    assert_stream_equals_walker(&gone, &[0, c]);
}

#[test]
fn the_stream_reads_what_the_walker_reads_on_etcd_3_4() {
    fixtures_of(Version::V34);
}

#[test]
fn the_stream_reads_what_the_walker_reads_on_etcd_3_5() {
    fixtures_of(Version::V35);
}

/// The one rule the stream adds to the walker's checks.
const LAYOUT: &str = "not where bbolt writes it";

fn page_of(e: &BoltError) -> Option<u64> {
    match e {
        BoltError::Corrupt { page, .. } => Some(*page),
        _ => None,
    }
}

/// One byte flipped at a time, in every page's header, element table and data: the walker
/// and the stream agree. The stream may refuse a page the walker reads only for the layout
/// rule it adds (an element's data not where bbolt writes it).
#[test]
fn a_damaged_copy_fails_both_readers_on_the_same_page() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdProcess::start(Version::V35, None);
    fill(&etcd, 60_000);
    let file = dir.path().join("s.db");
    run_ok(etcd.etcdctl().args(["snapshot", "save"]).arg(&file));
    let good = std::fs::read(&file).unwrap();
    let page_size = 4096;
    let compact = verify::read_snapshot_info(&file).unwrap().compact_revision;
    let damaged = dir.path().join("d.db");
    let (mut both_failed, mut pages_failed) = (0, std::collections::BTreeSet::new());
    // The kind each page's header gives in the good copy: 1 branch, 2 leaf, other free/overflow.
    let kind_of = |page: u64| {
        let at = page as usize * page_size;
        u16::from_le_bytes([good[at + 8], good[at + 9]])
    };
    let mut kinds_caught = std::collections::BTreeSet::new();
    for page in 2..good.len() / page_size {
        for offset in [8, 10, 12, 16 + 4, 16 + 9, 16 + 12, 40, 200, 1500, 4000] {
            let at = page * page_size + offset;
            let mut bytes = good.clone();
            bytes[at] ^= 0x41;
            std::fs::write(&damaged, &bytes).unwrap();
            let walked = verify::read_snapshot_info(&damaged).and_then(|i| {
                verify::hash_kv(&damaged, i.restored_revision, compact).map(|h| (i, h))
            });
            let streamed = stream(&bytes, 32 * 1024, Some(compact));
            match (walked, streamed) {
                (Ok((w, h)), Ok(s)) => {
                    assert_eq!(s.info.status, w.status, "byte {at}");
                    assert_eq!(s.hashkv.unwrap().unwrap().hash, h, "byte {at}");
                }
                (Err(w), Err(s)) => {
                    both_failed += 1;
                    if let (Some(wp), Some(sp)) = (page_of(&w), page_of(&s)) {
                        // Where the walker read at a damaged offset it may fail later, on
                        // what it read there; the stream stops at the damaged element.
                        if wp != 0 && !s.to_string().contains(LAYOUT) {
                            assert_eq!(sp, wp, "byte {at}: walker {w}, stream {s}");
                        }
                        pages_failed.insert(sp);
                        if sp as usize == page {
                            kinds_caught.insert(kind_of(sp));
                        }
                    }
                }
                (Ok(_), Err(s)) => assert!(
                    s.to_string().contains(LAYOUT),
                    "byte {at}: only the stream failed: {s}"
                ),
                (Err(w), Ok(_)) => panic!("byte {at}: only the walker failed: {w}"),
            }
        }
    }
    assert!(
        both_failed > 20,
        "the flips must hit live pages: {both_failed}"
    );
    assert!(pages_failed.len() > 5, "{pages_failed:?}");
    assert!(
        kinds_caught.contains(&1) && kinds_caught.contains(&2),
        "damage in a branch page and in a leaf page is caught on that page: {kinds_caught:?}"
    );
}

#[test]
fn a_truncated_stream_is_caught_naming_the_missing_page() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdProcess::start(Version::V35, None);
    fill(&etcd, 60_000);
    let file = dir.path().join("s.db");
    run_ok(etcd.etcdctl().args(["snapshot", "save"]).arg(&file));
    let bytes = std::fs::read(&file).unwrap();
    let cut = (bytes.len() - 32) / 4096 * 4096 - 4096 + 100;
    let err = stream(&bytes[..cut], 32 * 1024, None).unwrap_err();
    assert!(
        matches!(err, BoltError::Truncated { page, .. } if page == (cut / 4096) as u64),
        "{err}"
    );
    for short in [0, 50] {
        assert!(
            matches!(
                stream(&bytes[..short], 1000, None),
                Err(BoltError::NotBbolt { .. })
            ),
            "{short} bytes"
        );
    }
    assert!(matches!(
        stream(&bytes[..4096], 1000, None),
        Err(BoltError::Truncated { page: 1, .. })
    ));
}
