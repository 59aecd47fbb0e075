//! etcd versions (#26): the zombie-member check of `lifeboat etcd check` against real etcd
//! clusters. (The upgrade gate's etcd step and its zombie check are in upgrade.rs; the
//! version-sensitive paths run on every `Version::ALL` in their own files.)

use std::path::Path;

use crate::harness::etcd::start_cluster;
use crate::harness::{lifeboat, run, run_ok, EtcdProcess, Run, Version};

fn check(member: &EtcdProcess, snapshot: Option<&Path>) -> Run {
    let mut cmd = lifeboat();
    cmd.args(["etcd", "check", "--endpoints", &member.client_url]);
    if let Some(file) = snapshot {
        cmd.arg("--snapshot").arg(file);
    }
    run(&mut cmd)
}

/// The member id of `name`, as etcdctl prints it (hex).
fn member_id(member: &EtcdProcess, name: &str) -> String {
    let out = run_ok(member.etcdctl().args(["member", "list"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.split(", ").nth(2) == Some(name))
        .and_then(|l| l.split(", ").next())
        .unwrap_or_else(|| panic!("no member {name}"))
        .to_string()
}

/// A real 3-member 3.5 cluster removes a member. A snapshot taken before that still holds it
/// in bucket `members` and not in `members_removed`: the blog's zombie, named; the live
/// cluster (3.5 writes both stores) and a clean snapshot pass.
#[test]
fn a_snapshot_that_still_holds_a_removed_member_is_named_and_a_clean_one_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(Version::V35, 3);
    let r = check(&cluster[0], None);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("3 in bucket `members`"), "{}", r.stdout);
    assert!(
        r.stdout.starts_with("checked      a snapshot of"),
        "{}",
        r.stdout
    );
    let before = dir.path().join("before.db");
    run_ok(cluster[0].etcdctl().args(["snapshot", "save"]).arg(&before));
    let gone = member_id(&cluster[0], "m2");
    // etcd refuses a removal until the members have been connected for a while ("unhealthy
    // cluster"): asked again until it is accepted.
    crate::harness::serve::wait_until(
        "etcd accepts the member removal",
        std::time::Duration::from_secs(60),
        || {
            cluster[0]
                .etcdctl()
                .args(["member", "remove", &gone])
                .output()
                .is_ok_and(|o| o.status.success())
        },
    );
    drop(cluster.pop());

    let r = check(&cluster[0], Some(&before));
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "FINDING      zombie member {gone} (m2, http://127.0.0.1:"
        )),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("3.5.26+"), "{}", r.stderr);
    let mut json = lifeboat();
    json.args([
        "etcd",
        "check",
        "-w",
        "json",
        "--endpoints",
        &cluster[0].client_url,
    ])
    .arg("--snapshot")
    .arg(&before);
    let j = run(&mut json).json();
    assert_eq!(j["ok"], false, "{j}");
    assert_eq!(j["findings"][0]["finding"], "zombie", "{j}");
    assert_eq!(j["findings"][0]["id"], gone, "{j}");
    assert_eq!(j["live"].as_array().unwrap().len(), 2, "{j}");

    // Now: 3.5 recorded the removal in both stores.
    let r = check(&cluster[0], None);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("2 in bucket `members`") && r.stdout.contains("1 in `members_removed`"),
        "{}",
        r.stdout
    );
    // `snapshot status` shows a file's buckets.
    let status = run(lifeboat().args(["snapshot", "status"]).arg(&before))
        .ok()
        .stdout;
    assert!(
        status.contains("v3 store members: 3 in bucket `members` [")
            && ["m0 (", "m1 (", "m2 ("].iter().all(|m| status.contains(m))
            && status.contains("0 in `members_removed`"),
        "{status}"
    );
}

fn health(member: &EtcdProcess, args: &[&str]) -> Run {
    run(lifeboat()
        .args(["etcd", "health", "--endpoints", &member.client_url])
        .args(args))
}

/// The post-flight on a real 3-member cluster: healthy and HashKV equal; a version not yet
/// reached is named per member; another etcd with other data on a member's address is named
/// (its cluster and its HashKV), exit 4.
#[test]
fn the_post_flight_names_a_member_on_an_old_version_or_with_other_data() {
    let mut cluster = start_cluster(Version::V35, 3);
    for i in 0..5 {
        run_ok(
            cluster[0]
                .etcdctl()
                .args(["put", &format!("/k{i}"), "cluster"]),
        );
    }
    let r = health(&cluster[0], &["--etcd-version", "3.5.16", "-w", "json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let h = r.json();
    assert_eq!(h["members"].as_array().unwrap().len(), 3, "{h}");
    let hashes: Vec<&serde_json::Value> = h["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["hash"])
        .collect();
    assert!(hashes.iter().all(|x| *x == hashes[0]), "{h}");

    // Every member still on 3.5.16: named, one by one.
    let r = health(&cluster[0], &["--etcd-version", "3.5.30"]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    for name in ["m0", "m1", "m2"] {
        assert!(
            r.stderr.contains(&format!("{name} (http://127.0.0.1:"))
                && r.stderr.contains("runs etcd 3.5.16, not yet 3.5.30"),
            "{}",
            r.stderr
        );
    }

    // m2's etcd stops; another etcd with other data takes its address.
    let m2 = cluster.pop().unwrap();
    let port: u16 = m2.client_url.rsplit(':').next().unwrap().parse().unwrap();
    drop(m2);
    let impostor = EtcdProcess::start_at_port(Version::V35, port);
    for i in 0..3 {
        run_ok(
            impostor
                .etcdctl()
                .args(["put", &format!("/other{i}"), "impostor"]),
        );
    }
    // m2 may have led: the other two elect a leader before the one look below.
    for m in &cluster {
        crate::harness::serve::wait_until(
            "the remaining members serve a linearizable read",
            std::time::Duration::from_secs(30),
            || {
                m.etcdctl()
                    .args(["endpoint", "health", "--command-timeout=2s"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            },
        );
    }
    let r = health(&cluster[0], &[]);
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains(&format!("m2 ({}) answers for cluster", impostor.client_url))
            && r.stderr.contains("its data differs"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("m0 ("), "{}", r.stderr);
}
