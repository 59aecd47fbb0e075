//! Continuous backup and point-in-time restore (#12), against real etcd 3.4 and 3.5: `serve
//! --continuous` captures a mixed load (puts, overwrites, multi-key txns, deletes, a
//! delete-range, keys with leases, a lease revoked, a lease expiring, a compaction) into the
//! journal; `snapshot get --to-revision/--to-time` replays it into a sandbox; at each target,
//! every key, value, create/mod revision, version and lease equals what the cluster returned at
//! that revision, the leases' granted TTLs are equal, and the HashKV equals the cluster's at the
//! same compact revision.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{PutOptions, Txn, TxnOp};

use crate::harness::data::{client, rt};
use crate::harness::journal::{
    all_records, assert_contiguous, assert_same, capturing, decode_segment, expect_at, head,
    journal_json, observed, rewrite_record, verified_checkpoints, write_keys, Expected, Journal,
};
use crate::harness::serve::{wait_until, Serve};
use crate::harness::{age_key, etcd_bin, lifeboat, run, run_ok, Version};

/// The mixed load; returns what the cluster held at several revisions, and a time with the
/// revision it maps to.
fn mixed_load(j: &Journal) -> (Vec<Expected>, (String, i64), i64) {
    rt().block_on(async {
        let mut c = client(&j.etcd).await;
        let mut expected = Vec::new();
        let mut granted = BTreeMap::new();
        for i in 0..20 {
            c.put(
                format!("/registry/configmaps/default/cm{i}"),
                format!("v1-{i}"),
                None,
            )
            .await
            .unwrap();
        }
        for i in (0..20).step_by(3) {
            c.put(
                format!("/registry/configmaps/default/cm{i}"),
                format!("v2-{i}"),
                None,
            )
            .await
            .unwrap();
        }
        let after_puts = head(&mut c).await;
        // A txn with several keys: one revision, sub-revisions in op order.
        c.txn(Txn::new().and_then([
            TxnOp::put("/registry/pods/default/a", "pod-a", None),
            TxnOp::put("/registry/pods/default/b", "pod-b", None),
            TxnOp::delete("/registry/configmaps/default/cm1", None),
            TxnOp::put("/registry/configmaps/default/cm2", "v3-2", None),
        ]))
        .await
        .unwrap();
        c.delete("/registry/configmaps/default/cm4", None)
            .await
            .unwrap();
        c.delete(
            "/registry/configmaps/default/cm1",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap(); // cm10..cm19: one revision, many deletes
        let after_deletes = head(&mut c).await;
        expected.push(expect_at(&mut c, after_deletes, &granted).await);
        // The time maps to the last revision received before it: wait until the journal has
        // it durable (so it was received), then take the time, then write on.
        j.wait_durable(after_deletes);
        let at = chrono::Utc::now();
        tokio::time::sleep(Duration::from_millis(200)).await;

        let kept = c.lease_grant(600, None).await.unwrap().id();
        let revoked = c.lease_grant(300, None).await.unwrap().id();
        let expiring = c.lease_grant(2, None).await.unwrap().id();
        granted.extend([(kept, 600), (revoked, 300), (expiring, 2)]);
        for i in 0..3 {
            c.put(
                format!("/registry/events/default/kept{i}"),
                "event",
                Some(PutOptions::new().with_lease(kept)),
            )
            .await
            .unwrap();
            c.put(
                format!("/registry/events/default/revoked{i}"),
                "event",
                Some(PutOptions::new().with_lease(revoked)),
            )
            .await
            .unwrap();
        }
        c.put(
            "/registry/masterleases/10.0.0.1",
            "ip",
            Some(PutOptions::new().with_lease(expiring)),
        )
        .await
        .unwrap();
        let with_leases = head(&mut c).await;
        expected.push(expect_at(&mut c, with_leases, &granted).await);
        c.lease_revoke(revoked).await.unwrap();
        // The expiring lease runs out on its own (the leader revokes it: one more revision).
        let mut waited = 0;
        while c
            .get("/registry/masterleases/10.0.0.1", None)
            .await
            .unwrap()
            .count()
            > 0
        {
            assert!(waited < 300, "the 2 s lease never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += 1;
        }
        let after_expiry = head(&mut c).await;
        expected.push(expect_at(&mut c, after_expiry, &granted).await);
        // A revision picked between the first state and now ("random", but recorded before
        // the compaction that would remove its history).
        let middle = after_puts + (after_expiry - after_puts) * 2 / 3;
        expected.push(expect_at(&mut c, middle, &granted).await);
        // As Kubernetes' compactor does: the revision into `compact_rev_key` (a txn, so the
        // journal sees it), then the compaction.
        let compact_at = after_expiry - 5;
        c.txn(Txn::new().and_then([TxnOp::put("compact_rev_key", compact_at.to_string(), None)]))
            .await
            .unwrap();
        c.compact(
            compact_at,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
        for i in 0..5 {
            c.put(
                format!("/registry/secrets/default/s{i}"),
                format!("secret-{i}"),
                None,
            )
            .await
            .unwrap();
        }
        let last = head(&mut c).await;
        // Let a checkpoint after the compaction be taken (checkpoint_interval 1s).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.put("/registry/secrets/default/last", "x", None)
            .await
            .unwrap();
        let final_rev = head(&mut c).await;
        expected.push(expect_at(&mut c, last, &granted).await);
        expected.push(expect_at(&mut c, final_rev, &granted).await);
        (expected, (at.to_rfc3339(), after_deletes), compact_at)
    })
}

fn point_in_time_restores_are_exact(v: Version) {
    let j = Journal::start(v);
    let (expected, (time, time_rev), compact_at) = mixed_load(&j);
    let final_rev = expected.iter().map(|e| e.rev).max().unwrap();
    j.wait_durable(final_rev);
    for e in &expected {
        let out = j.out(&format!("at-{}.db", e.rev));
        let r = j.get(&format!("--to-revision={}", e.rev), &out);
        assert_eq!(
            r.code, 0,
            "get --to-revision {}: {}\n{}",
            e.rev, r.stdout, r.stderr
        );
        let got = observed(v, &out, j.dir.path(), e.rev);
        assert_same(e, &got, &format!("--to-revision {}", e.rev));
        let offline = lifeboat::verify::hash_kv(&out, e.rev, e.hash.1).unwrap();
        assert_eq!(
            offline, e.hash.0,
            "HashKV at {} (compact revision {})",
            e.rev, e.hash.1
        );
    }
    // A time: the last revision received at or before it.
    let out = j.out("at-time.db");
    let r = j.get(&format!("--to-time={time}"), &out);
    assert_eq!(r.code, 0, "get --to-time: {}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains(&format!("revision received at or before it is {time_rev}")),
        "{}",
        r.stderr
    );
    let e = expected.iter().find(|e| e.rev == time_rev).unwrap();
    assert_same(e, &observed(v, &out, j.dir.path(), time_rev), "--to-time");
    // A drill of a point in time passes and leaves nothing behind.
    let d = j.drill(&format!("--to-time={time}"));
    assert_eq!(d.code, 0, "{}\n{}", d.stdout, d.stderr);
    assert!(
        d.stdout.contains(&format!(
            "point-in-time drill of revision {time_rev}: PASSED"
        )),
        "{}",
        d.stdout
    );
    assert!(crate::harness::files_in(&j.dir.path().join("drills")).is_empty());
    // Checkpoints were recorded and verified on the way to the newest revision.
    let out = j.out("at-final-again.db");
    let r = j.get(&format!("--to-revision={final_rev}"), &out);
    let verified = verified_checkpoints(&r.stdout);
    assert!(verified >= 1, "no checkpoint verified: {}", r.stdout);
    // The compaction was recorded at its own revision, with the member's hash at that point
    // where etcd gives one (3.5 keeps it from the compaction; 3.4 refuses HashKV there), and
    // mirrored by the replay.
    let compaction = all_records(&j)
        .into_iter()
        .find(|r| r["t"] == "compaction" && r["rev"].as_i64() == Some(compact_at))
        .expect("a compaction record at the compaction revision");
    assert_eq!(compaction["hash"].is_u64(), v.is_35(), "{compaction}");
    assert!(
        r.stdout.contains("1 compaction(s) mirrored"),
        "{}",
        r.stdout
    );
    if v.is_35() {
        // A compaction hash the replay does not reach stops it, naming the revision.
        let segment = journal_json(&j, "list")
            .as_array()
            .unwrap()
            .iter()
            .find(|m| decode_segment(&j, m).iter().any(|r| r["t"] == "compaction"))
            .cloned()
            .unwrap();
        rewrite_record(&j, &segment, "compaction");
        // Up to that segment's end (the next one links to its old hash).
        let end = segment["last_rev"].as_i64().unwrap();
        let r = j.get(&format!("--to-revision={end}"), &j.out("bad-compaction.db"));
        assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
        assert!(
            r.stderr
                .contains(&format!("at revision {compact_at} FAILED")),
            "{}",
            r.stderr
        );
    }
    // Beyond the journal: refused, naming what is restorable.
    let r = j.get(
        &format!("--to-revision={}", final_rev + 1000),
        &j.out("beyond.db"),
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("Restorable: revisions"), "{}", r.stderr);
}

#[test]
fn point_in_time_restores_are_exact_on_etcd_3_5() {
    point_in_time_restores_are_exact(Version::V35);
}

#[test]
fn point_in_time_restores_are_exact_on_etcd_3_4() {
    point_in_time_restores_are_exact(Version::V34);
}

#[test]
fn point_in_time_restores_are_exact_on_etcd_3_5_30() {
    point_in_time_restores_are_exact(Version::V3530);
}

/// The time the newest chain was last known caught up (its head, while idle).
fn caught_up_at(j: &Journal) -> Option<chrono::DateTime<chrono::Utc>> {
    journal_json(j, "status")["caught_up_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.to_utc())
}

/// Waits until the journal's head says it was caught up later than `after`.
fn wait_caught_up_after(
    j: &Journal,
    after: chrono::DateTime<chrono::Utc>,
) -> chrono::DateTime<chrono::Utc> {
    let mut seen = None;
    wait_until(
        "the journal head after the last write",
        Duration::from_secs(30),
        || {
            seen = caught_up_at(j).filter(|t| *t > after);
            seen.is_some()
        },
    );
    seen.unwrap()
}

/// `lifeboat snapshot get --to-time` of `at` maps to `rev` and restores what the cluster
/// held at `rev`.
fn assert_time_restores(j: &Journal, at: chrono::DateTime<chrono::Utc>, rev: i64, name: &str) {
    let expected = rt().block_on(async {
        let mut c = client(&j.etcd).await;
        expect_at(&mut c, rev, &BTreeMap::new()).await
    });
    let out = j.out(name);
    let r = j.get(&format!("--to-time={}", at.to_rfc3339()), &out);
    assert_eq!(r.code, 0, "get --to-time {at}: {}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains(&format!("revision received at or before it is {rev}")),
        "{}",
        r.stderr
    );
    assert_same(&expected, &observed(j.v, &out, j.dir.path(), rev), name);
}

#[test]
fn an_idle_journal_keeps_a_signed_head_so_a_time_after_its_last_write_restores() {
    let mut j = Journal::start_with(Version::V35, "heartbeat_interval = \"1s\"\n");
    // Only the base backup so far: the head alone makes its time restorable.
    let base_rev = rt().block_on(async { head(&mut client(&j.etcd).await).await });
    let started = chrono::Utc::now();
    let at = wait_caught_up_after(&j, started);
    assert_time_restores(&j, at, base_rev, "idle-base.db");
    // Writes, then quiet: a time after the last write (and before the head) restores it.
    let last = write_keys(&j.etcd, "/registry/leases/kube-node-lease/n", 5, 0);
    j.wait_durable(last);
    let quiet = chrono::Utc::now();
    let at = wait_caught_up_after(&j, quiet);
    let status = run(lifeboat()
        .args(["continuous", "status", "--dest"])
        .arg(j.dest()))
    .ok();
    assert!(
        status.stdout.contains("no write since"),
        "{}",
        status.stdout
    );
    assert_time_restores(&j, quiet + (at - quiet) / 2, last, "idle-after-writes.db");
    // Past the head nothing proves every write was seen: refused, naming the window.
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    let r = j.get(
        &format!("--to-time={}", future.to_rfc3339()),
        &j.out("future.db"),
    );
    assert_eq!(r.code, 7, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("Restorable: revisions"), "{}", r.stderr);
    // A head whose time was moved on without its signature is ignored: the window ends at
    // the last write again.
    j.serve.kill();
    let key = crate::harness::files_in(&j.dest())
        .into_iter()
        .find(|name| name.ends_with(".head.json"))
        .map(|name| j.dest().join(name))
        .expect("a head object");
    let mut envelope: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&key).unwrap()).unwrap();
    let mut head_json: serde_json::Value =
        serde_json::from_str(envelope["head"].as_str().unwrap()).unwrap();
    head_json["caught_up_at"] = serde_json::Value::String(future.to_rfc3339());
    envelope["head"] = serde_json::Value::String(serde_json::to_string(&head_json).unwrap());
    std::fs::write(&key, serde_json::to_vec(&envelope).unwrap()).unwrap();
    let target = quiet + (at - quiet) / 2;
    let r = j.get(
        &format!("--to-time={}", target.to_rfc3339()),
        &j.out("forged.db"),
    );
    assert_eq!(
        r.code, 7,
        "a forged head widened the window: {}\n{}",
        r.stdout, r.stderr
    );
    assert!(r.stderr.contains("journal head is ignored"), "{}", r.stderr);
}

/// `lifeboat restore --to-revision` on a (stand-in) kubeadm node: the journaled restore of the
/// replayed snapshot, one code path with every other restore.
#[test]
fn restore_to_a_revision_puts_the_node_back_at_exactly_that_state() {
    use crate::harness::node::FakeNode;
    let node = FakeNode::start(Version::V35);
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let mut cmd = capturing(
        dir.path(),
        &key,
        &dir.path().join("b").display().to_string(),
    );
    cmd.arg("--etcd-manifest").arg(node.etcd_manifest());
    let mut serve = Serve::start(cmd, dir.path().join("serve.log"));
    wait_until(
        "the journal's first full backup",
        Duration::from_secs(60),
        || serve.metric("lifeboat_backups_total") >= 1.0,
    );
    node.put("/registry/configmaps/default/a", "1");
    node.put("/registry/configmaps/default/b", "2");
    let target = node.dump();
    let target_rev = serve_rev(&node);
    node.put("/registry/configmaps/default/a", "changed");
    node.put("/registry/secrets/default/later", "x");
    let later = serve_rev(&node);
    wait_until("durable", Duration::from_secs(60), || {
        serve.metric("lifeboat_continuous_last_revision") >= later as f64
    });
    assert_eq!(serve.stop(Duration::from_secs(30)), 0);
    let mut restore = node.restore();
    restore
        .arg(format!("--to-revision={target_rev}"))
        .arg("--dest")
        .arg(dir.path().join("b"))
        .arg("--identity")
        .arg(&key.identity_file)
        .arg("--etcd")
        .arg(etcd_bin(Version::V35))
        .args(["--yes", "--force"]);
    let r = run(&mut restore);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("point-in-time plan"), "{}", r.stderr);
    let now = node.dump();
    assert_eq!(
        now.get("/registry/configmaps/default/a")
            .map(String::as_str),
        Some("1"),
        "the value at the target revision"
    );
    assert!(!now.contains_key("/registry/secrets/default/later"));
    for (k, v) in &target {
        if !k.starts_with("/lifeboat/") {
            assert_eq!(now.get(k), Some(v), "{k}");
        }
    }
}

/// The member's current revision, through etcdctl (the node's etcd speaks mutual TLS).
fn serve_rev(node: &crate::harness::node::FakeNode) -> i64 {
    let out = run_ok(node.etcdctl().args(["endpoint", "status", "-w", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["Status"]["header"]["revision"].as_i64().unwrap()
}

/// Revisions of over a MiB each, caught up in one go after the uploader was away: one watch
/// response would exceed etcd's request size limit, so it comes in fragments, which capture
/// reassembles. (Three rounds: the test's own reads keep under the client's 4 MiB limit.)
#[test]
fn large_revisions_caught_up_in_fragments_restore_exactly() {
    let mut j = Journal::start(Version::V35);
    let first = write_keys(&j.etcd, "/registry/small/k", 3, 0);
    j.wait_durable(first);
    assert_eq!(j.serve.stop(Duration::from_secs(30)), 0);
    let last = rt().block_on(async {
        let mut c = client(&j.etcd).await;
        for round in 0..3 {
            let ops: Vec<TxnOp> = (0..100)
                .map(|i| {
                    TxnOp::put(
                        format!("/registry/big/r{round}/k{i}"),
                        vec![b'a' + (round as u8 % 26); 12_000],
                        None,
                    )
                })
                .collect();
            c.txn(Txn::new().and_then(ops)).await.unwrap();
        }
        head(&mut c).await
    });
    j.restart();
    j.wait_durable(last);
    let expected = rt().block_on(async {
        let mut c = client(&j.etcd).await;
        expect_at(&mut c, last, &BTreeMap::new()).await
    });
    let out = j.out("big.db");
    let r = j.get(&format!("--to-revision={last}"), &out);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_same(
        &expected,
        &observed(Version::V35, &out, j.dir.path(), last),
        "large revisions",
    );
    assert_contiguous(&journal_json(&j, "list"));
}
