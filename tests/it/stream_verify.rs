//! The streaming verifier (one pass, no file) against the file walker it replaces, etcd's own
//! tools and the member: equal on every fixture, and on every damaged copy of one either both
//! fail on the same page or both read the same numbers.

use std::path::Path;

use lifeboat::bbolt::BoltError;
use lifeboat::verify::{self, OfflineHashKv, StreamChecked, StreamVerifier};

use etcd_client::{CompactionOptions, Txn, TxnOp};

use crate::harness::data::{client, fill, rt};
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
            assert_eq!(
                s.info.membership, walked.membership,
                "membership, chunk {chunk}"
            );
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
    // The v3 store's membership (#26): this one member, read by both passes.
    let first = dir.path().join("first.db");
    run_ok(etcd.etcdctl().args(["snapshot", "save"]).arg(&first));
    let m = verify::read_snapshot_info(&first).unwrap().membership;
    assert_eq!(m.members.len(), 1, "{v:?}: {m:?}");
    assert_eq!(m.members[0].name, "default", "{v:?}: {m:?}");
    assert!(m.removed.is_empty(), "{v:?}: {m:?}");
    assert_stream_equals_walker(&first, &[0]);
    let snap = |name: &str| {
        let p = dir.path().join(name);
        run_ok(etcd.etcdctl().args(["snapshot", "save"]).arg(&p));
        p
    };
    let empty = snap("empty.db");
    let never = rt().block_on(async {
        let mut source = lifeboat::etcd::EtcdSource::connect(
            &crate::harness::data::settings(&etcd),
            &etcd.client_url,
        )
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
        let mut source = lifeboat::etcd::EtcdSource::connect(
            &crate::harness::data::settings(&etcd),
            &etcd.client_url,
        )
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

#[test]
fn the_stream_reads_what_the_walker_reads_on_etcd_3_5_30() {
    fixtures_of(Version::V3530);
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

/// etcd's snapshot copies the file's pages while the member goes on writing, and a page that
/// was free when the snapshot began may be reused by a later write before it streams by. Such
/// a copy is built here from two real snapshots: A's live pages, and B's (taken after keys
/// were overwritten) wherever A's pages are free. Its status and HashKV must be A's — the
/// member's own HashKV at A's revision. (Before this was handled, the newer revisions in the
/// reused pages marked keys as rewritten since the compaction, and the HashKV of backups of
/// busy clusters, and of the shadow's bases, did not match.)
#[test]
fn free_pages_written_during_the_snapshot_do_not_change_its_hashkv() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdProcess::start(Version::V35, None);
    let put_all = |round: usize| {
        rt().block_on(async {
            let mut c = client(&etcd).await;
            for batch in 0..30 {
                let ops: Vec<_> = (batch * 100..batch * 100 + 100)
                    .map(|i| {
                        let key = format!("/registry/pods/ns{}/p{i}", i % 7);
                        TxnOp::put(key, format!("{round}:{i}:{}", "v".repeat(400)), None)
                    })
                    .collect();
                c.txn(Txn::new().and_then(ops)).await.unwrap();
            }
        })
    };
    for round in 0..3 {
        put_all(round);
    }
    // The compaction frees pages; the write after it makes A's revision past its point.
    let (compact, rev_a) = rt().block_on(async {
        let mut c = client(&etcd).await;
        let at = c.get("x", None).await.unwrap().header().unwrap().revision();
        c.compact(at, Some(CompactionOptions::new().with_physical()))
            .await
            .unwrap();
        let put = c.put("/registry/events/after", "e", None).await.unwrap();
        (at, put.header().unwrap().revision())
    });
    let snap = |name: &str| {
        let p = dir.path().join(name);
        run_ok(etcd.etcdctl().args(["snapshot", "save"]).arg(&p));
        std::fs::read(p).unwrap()
    };
    let a = snap("a.db");
    let (member_hash, member_compact) = member_hashkv(&etcd, rev_a);
    assert_eq!(member_compact, compact);
    put_all(3);
    put_all(4);
    let b = snap("b.db");

    let page_size = 4096;
    let (live, pgid) = live_pages(&a, page_size);
    let mut during = a.clone();
    let mut reused = 0;
    for page in 2..pgid as usize {
        let range = page * page_size..(page + 1) * page_size;
        if live.contains(&(page as u64))
            || range.end > b.len()
            || a[range.clone()] == b[range.clone()]
        {
            continue;
        }
        during[range.clone()].copy_from_slice(&b[range]);
        reused += 1;
    }
    assert!(reused > 10, "B must have reused pages free in A: {reused}");

    let expected = stream(&a, 32 * 1024, Some(compact)).unwrap();
    assert_eq!(
        expected.hashkv.clone().unwrap().unwrap().hash,
        member_hash,
        "A as etcdctl saved it"
    );
    for chunk in [during.len(), 32 * 1024, 3001] {
        let s = stream(&during, chunk, Some(compact)).unwrap();
        assert_eq!(s.info.status, expected.info.status, "chunk {chunk}");
        assert_eq!(s.info.restored_revision, rev_a);
        assert_eq!(
            s.hashkv.unwrap().unwrap(),
            OfflineHashKv {
                compact_revision: compact,
                hash: member_hash
            },
            "the member's HashKV at {rev_a}, chunk {chunk}"
        );
    }
}

/// The pages reachable from a bbolt file's newest meta page (branches, leaves, their overflow
/// pages, nested buckets' roots), and its high-water mark.
fn live_pages(file: &[u8], page_size: usize) -> (std::collections::HashSet<u64>, u64) {
    let u16_at = |at: usize| u16::from_le_bytes(file[at..at + 2].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().unwrap());
    // Meta: after the 16-byte page header, root bucket at 16, pgid at 40, txid at 48.
    let meta = (0..2)
        .map(|p| p * page_size + 16)
        .max_by_key(|m| u64_at(m + 48))
        .unwrap();
    let (root, pgid) = (u64_at(meta + 16), u64_at(meta + 40));
    let mut live = std::collections::HashSet::new();
    let mut next = vec![root];
    while let Some(id) = next.pop() {
        let page = id as usize * page_size;
        let (flags, count, overflow) = (u16_at(page + 8), u16_at(page + 10), u32_at(page + 12));
        live.extend(id..=id + u64::from(overflow));
        for i in 0..usize::from(count) {
            let elem = page + 16 + i * 16;
            match flags {
                0x01 => next.push(u64_at(elem + 8)),
                0x02 if u32_at(elem) & 1 == 1 => {
                    let value = elem + u32_at(elem + 4) as usize + u32_at(elem + 8) as usize;
                    match u64_at(value) {
                        0 => {} // an inline bucket: no page of its own
                        root => next.push(root),
                    }
                }
                _ => {}
            }
        }
    }
    (live, pgid)
}
