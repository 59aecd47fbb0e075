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
        status.contains("v3 store members: 3 in bucket `members` [m0 (")
            && status.contains("0 in `members_removed`"),
        "{status}"
    );
}
