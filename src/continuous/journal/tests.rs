//! The journal's reader against a real (local) store: which chains it believes, how it links
//! segments, what it refuses — without etcd, from segments committed the way capture does.

use std::sync::Arc;

use chrono::{Duration, Utc};

use super::*;
use crate::continuous::chain::{root_hash, Sealed, SegmentWriter};
use crate::continuous::segment::{Header, SCHEMA_VERSION};
use crate::etcd::watch::Change;
use crate::store::LocalStore;
use crate::trust::{generate, SigningKey, TrustedKeys};

const CLUSTER: u64 = 0x6d97_8015_9c4d_479d;
const CHAIN: &str = "etcd-20261129T042350.934Z-6d9780159c4d479d-c5f1";
/// A later chain of the same cluster.
const NEWER: &str = "etcd-20261130T042350.934Z-6d9780159c4d479d-c5f1";

struct Ground {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    signed: SegmentWriter,
    unsigned: SegmentWriter,
    policy: Arc<ReadPolicy>,
}

fn ground() -> Ground {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.key");
    let (public, _) = generate(&key).unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(&dir.path().join("store")).unwrap());
    let writer = |signer: Option<Arc<SigningKey>>| SegmentWriter {
        store: store.clone(),
        recipients: None,
        compression_level: 1,
        signer,
    };
    let trusted = TrustedKeys::from_files(&[public]).unwrap();
    Ground {
        signed: writer(Some(Arc::new(SigningKey::from_file(&key).unwrap()))),
        unsigned: writer(None),
        policy: Arc::new(ReadPolicy::new(trusted, None).unwrap()),
        store,
        _dir: dir,
    }
}

fn rev(rev: i64) -> Record {
    Record::Rev {
        rev,
        at_ms: 1,
        changes: vec![Change::Delete { key: vec![1] }],
    }
}

/// Commits `segments` segments of ten revisions each to `chain`, from revision 11 on, linked
/// as capture links them.
async fn commit_chain(writer: &SegmentWriter, chain: &str, segments: u64) -> Vec<SegmentManifest> {
    let mut prev_hash = root_hash(chain);
    let mut out = Vec::new();
    let start = Utc::now() - Duration::minutes(10);
    for seq in 1..=segments {
        let first_rev = 1 + 10 * seq as i64;
        let header = Header {
            schema_version: SCHEMA_VERSION,
            cluster_id: format!("{CLUSTER:x}"),
            chain: chain.into(),
            seq,
            prev_hash: prev_hash.clone(),
            first_rev,
            last_rev: first_rev + 9,
        };
        let records: Vec<Record> = (first_rev..first_rev + 10).map(rev).collect();
        let at = start + Duration::seconds(seq as i64);
        let m = writer
            .commit(&Sealed::new(header, &records, at, at))
            .await
            .unwrap();
        prev_hash = m.hash.clone();
        out.push(m);
    }
    out
}

fn journal(g: &Ground) -> Journal {
    Journal::new(g.store.clone(), g.policy.clone())
}

async fn listing(j: &Journal, chain: &str) -> ChainListing {
    let all = j.listings(Some(CLUSTER)).await.unwrap();
    all.into_iter().find(|c| c.chain == chain).unwrap()
}

#[tokio::test]
async fn a_chain_no_writer_signed_is_never_the_newest() {
    let g = ground();
    commit_chain(&g.signed, CHAIN, 2).await;
    commit_chain(&g.unsigned, NEWER, 3).await;
    let j = journal(&g);
    let newest = j.newest_trusted(CLUSTER, None).await.unwrap().unwrap();
    assert_eq!(newest.chain, CHAIN, "the planted, newer chain was believed");
    assert!(j
        .newest_trusted(CLUSTER, Some(CHAIN))
        .await
        .unwrap()
        .is_none());
    let planted = listing(&j, NEWER).await;
    assert!(matches!(
        j.check_chain(&planted).await,
        Err(ContinuousError::Trust(_))
    ));
    // Both chains are listed by name; only the signed one's segments are listed as segments.
    let segments = j.segments(Some(CLUSTER)).await.unwrap();
    assert_eq!(segments.len(), 2);
    assert!(segments.iter().all(|m| m.chain == CHAIN));
}

#[tokio::test]
async fn segments_are_handed_out_linked_and_a_missing_one_is_named() {
    let g = ground();
    let committed = commit_chain(&g.signed, CHAIN, 4).await;
    let j = journal(&g);
    let chain = listing(&j, CHAIN).await;
    // From revision 21 (segment 2) to 45 (segment 4).
    let got = j.segments_between(&chain, 20, 45).await.unwrap();
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(got[0].hash, committed[1].hash);
    let since: Vec<u64> = j
        .segments_since(CHAIN, 2)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(since, [3, 4]);

    for (after, to) in [(200, 300), (30, 300), (0, 5)] {
        assert!(
            matches!(
                j.segments_between(&chain, after, to).await,
                Err(ContinuousError::NotCovered { .. })
            ),
            "{after}..{to} was handed out"
        );
    }

    // Segment 3 deleted: a read across it fails naming it, a fresh reader too.
    let third = &chain.segments[2];
    g.store.delete(&third.manifest_key()).await.unwrap();
    let j = journal(&g);
    let chain = listing(&j, CHAIN).await;
    let err = j.segments_between(&chain, 20, 45).await.unwrap_err();
    assert!(
        matches!(&err, ContinuousError::BrokenChain { seq: 4, what, .. } if what.contains("segment 3 is missing")),
        "{err}"
    );
}

#[tokio::test]
async fn without_a_trusted_base_nothing_is_restorable_and_the_refusal_says_so() {
    let g = ground();
    commit_chain(&g.signed, CHAIN, 2).await;
    let j = journal(&g);
    let reach = j.reach(None).await.unwrap();
    assert_eq!(reach.cluster, CLUSTER);
    assert!(
        reach.chains.is_empty(),
        "a chain without its base backup was restorable"
    );
    let err = reach.newest().unwrap_err().to_string();
    assert!(
        err.contains("no journal chain has a trusted base backup"),
        "{err}"
    );
    assert!(err.contains("nothing (no journal chain"), "{err}");
}

#[tokio::test]
async fn an_empty_store_or_two_clusters_are_refused_for_what_they_are() {
    let g = ground();
    let j = journal(&g);
    assert!(matches!(
        j.reach(None).await,
        Err(ContinuousError::NotCovered { .. })
    ));
    commit_chain(&g.signed, CHAIN, 1).await;
    commit_chain(
        &g.signed,
        "etcd-20261129T042350.934Z-00000000000000aa-c5f1",
        1,
    )
    .await;
    let err = j.reach(None).await.unwrap_err();
    assert!(
        matches!(&err, ContinuousError::AmbiguousCluster(ids) if ids.contains("aa")),
        "{err}"
    );
}

#[test]
fn only_distrust_is_skipped_by_readers() {
    assert!(is_distrust(&ContinuousError::Invalid {
        key: "k".into(),
        what: "w".into()
    }));
    let outage = ContinuousError::Store(crate::store::StoreError::NotFound {
        location: "l".into(),
        key: "k".into(),
    });
    assert!(!is_distrust(&outage));
}
