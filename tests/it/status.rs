//! `lifeboat snapshot status` against `etcdctl snapshot status` (3.4) and `etcdutl snapshot
//! status` (3.5), on files with and without etcd's trailer.

use crate::harness::data::fill;
use crate::harness::{lifeboat, run, run_ok, EtcdProcess, Version};

/// `snapshot status -w json` of etcd's own tool for that version.
pub fn oracle_status(v: Version, etcd: &EtcdProcess, file: &std::path::Path) -> serde_json::Value {
    let out = match v {
        Version::V34 => run_ok(
            etcd.etcdctl()
                .args(["snapshot", "status", "-w", "json"])
                .arg(file),
        ),
        _ => run_ok(
            crate::harness::restore_tool_command(v)
                .args(["snapshot", "status", "-w", "json"])
                .arg(file),
        ),
    };
    serde_json::from_slice(&out.stdout).expect("oracle prints JSON")
}

fn ours(file: &std::path::Path) -> serde_json::Value {
    run(lifeboat()
        .args(["snapshot", "status", "-w", "json"])
        .arg(file))
    .ok()
    .json()
}

fn status_matches_the_oracle(v: Version) {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = EtcdProcess::start(v, None);
    // An empty database, then one with history, then one after more writes.
    let empty = dir.path().join("empty.db");
    run_ok(etcd.etcdctl().args(["snapshot", "save"]).arg(&empty));
    assert_eq!(ours(&empty), oracle_status(v, &etcd, &empty));
    fill(&etcd, 0);
    let full = dir.path().join("full.db");
    run_ok(etcd.etcdctl().args(["snapshot", "save"]).arg(&full));
    let oracle = oracle_status(v, &etcd, &full);
    assert!(oracle["totalKey"].as_u64().unwrap() > 50, "{oracle}");
    assert_eq!(ours(&full), oracle);
    fill(&etcd, 300_000);
    let big = dir.path().join("big.db");
    run_ok(etcd.etcdctl().args(["snapshot", "save"]).arg(&big));
    assert_eq!(ours(&big), oracle_status(v, &etcd, &big));

    // A copy of member/snap/db has no trailer.
    etcd.stop();
    let copy = dir.path().join("copy.db");
    std::fs::copy(etcd.data_dir.join("member/snap/db"), &copy).unwrap();
    assert_ne!(std::fs::metadata(&copy).unwrap().len() % 512, 32);
    assert_eq!(ours(&copy), oracle_status(v, &etcd, &copy));
}

#[test]
fn status_matches_etcdctl_on_etcd_3_4() {
    status_matches_the_oracle(Version::V34);
}

#[test]
fn status_matches_etcdutl_on_etcd_3_5() {
    status_matches_the_oracle(Version::V35);
}

#[test]
fn status_matches_etcdutl_on_etcd_3_5_30() {
    status_matches_the_oracle(Version::V3530);
}

#[test]
fn status_table_shows_the_hash_in_hex_like_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdProcess::start(Version::V35, None);
    etcd.put("/a", "1");
    let f = dir.path().join("s.db");
    run_ok(etcd.etcdctl().args(["snapshot", "save"]).arg(&f));
    let json = ours(&f);
    let table = run(lifeboat().args(["snapshot", "status"]).arg(&f))
        .ok()
        .stdout;
    let hash = format!("{:08x}", json["hash"].as_u64().unwrap());
    assert!(
        table.contains(&hash) && table.contains("REVISION"),
        "{table}"
    );
}
