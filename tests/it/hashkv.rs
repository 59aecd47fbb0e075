//! The offline HashKV against the member's own `HashKV(rev)` (`etcdctl endpoint hashkv`), at
//! several revisions around a compaction, with deletes, re-creates and leases.

use crate::harness::data::fill;
use crate::harness::{run_ok, EtcdProcess, Version};

fn member_hashkv(etcd: &EtcdProcess, rev: i64) -> (u32, i64) {
    let out =
        run_ok(
            etcd.etcdctl()
                .args(["endpoint", "hashkv", "-w", "json", &format!("--rev={rev}")]),
        );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let h = &v[0]["HashKV"];
    (
        h["hash"].as_u64().unwrap() as u32,
        h["compact_revision"].as_i64().unwrap_or(0),
    )
}

fn offline_equals_member(v: Version) {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdProcess::start(v, None);
    let last = fill(&etcd, 0);
    let snap = dir.path().join("s.db");
    run_ok(etcd.etcdctl().args(["snapshot", "save"]).arg(&snap));
    let (_, compact) = member_hashkv(&etcd, last);
    assert!(compact > 0, "the fill compacts");
    // Every revision after the compaction point up to the snapshot's. (At the compaction point
    // itself 3.4 answers "compacted" and 3.5 answers from its compaction-time hash cache.)
    for rev in compact + 1..=last {
        let (live, live_compact) = member_hashkv(&etcd, rev);
        let offline = lifeboat::verify::hash_kv(&snap, rev, live_compact).unwrap();
        assert_eq!(
            offline, live,
            "HashKV at revision {rev} (compact {live_compact}) on {v:?}"
        );
    }
}

#[test]
fn offline_hashkv_equals_the_member_on_etcd_3_4() {
    offline_equals_member(Version::V34);
}

#[test]
fn offline_hashkv_equals_the_member_on_etcd_3_5() {
    offline_equals_member(Version::V35);
}

#[test]
fn offline_hashkv_equals_the_member_on_etcd_3_5_30() {
    offline_equals_member(Version::V3530);
}

/// A snapshot taken exactly at the compaction point cannot be compared (see above): the
/// backup records the comparison as skipped instead of failing.
#[test]
fn a_snapshot_at_the_compaction_point_records_hashkv_as_skipped() {
    for v in Version::ALL {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::harness::age_key(dir.path(), "k");
        let etcd = EtcdProcess::start(v, None);
        etcd.put("/a", "1");
        etcd.put("/a", "2");
        etcd.put("/b", "3");
        run_ok(etcd.etcdctl().args(["compact", "4"]));
        let m = crate::harness::run(
            crate::harness::lifeboat()
                .args(["snapshot", "save", "-w", "json", "-r", &key.recipient])
                .args(etcd.lifeboat_flags())
                .arg("--dest")
                .arg(dir.path().join("b"))
                .arg("--work-dir")
                .arg(dir.path().join("w")),
        )
        .ok()
        .json();
        assert_eq!(m["revision"], 4);
        assert_eq!(m["hashkv"]["checked"], false, "{v:?}: {m}");
        assert!(
            m["hashkv"]["result"]
                .as_str()
                .unwrap()
                .starts_with("skipped:"),
            "{m}"
        );
    }
}
