//! Capture (#12, #13): the journal `serve --continuous` writes — checkpoints at their pace and
//! sealed when due, a killed uploader resumed without a lost or repeated revision, segments
//! queued while the store is down, a new chain after compaction, and its retention.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::data::{client, rt};
use crate::harness::journal::{
    assert_contiguous, assert_same, capturing, compact, expect_at, journal_json, observed,
    segment_files, verified_checkpoints, write_keys, Journal, FAST_JOURNAL,
};
use crate::harness::serve::{wait_until, Serve};
use crate::harness::{age_key, etcd_bin, etcdutl_bin, lifeboat, run, EtcdProcess, Version};

/// The default checkpoint pace, `auto`, against real etcd: 25 times what the member's HashKV
/// takes, at least 5 s — on a small database, one every 5 s, never faster; the capture reports
/// the pace and the HashKV's duration (how long the member's writes waited).
#[test]
fn checkpoints_come_at_the_auto_pace_by_default() {
    let started = std::time::Instant::now();
    let j = Journal::start_config(Version::V35, "[continuous]\nsegment_interval = \"500ms\"\n");
    writing_until(&j, "two checkpoints", Duration::from_secs(60), |serve| {
        serve.metric("lifeboat_continuous_checkpoints_total") >= 2.0
    });
    let checkpoints = j.serve.metric("lifeboat_continuous_checkpoints_total");
    let elapsed = started.elapsed().as_secs_f64();
    // The first comes 5 s after the capture started, each next one 5 s or more after it.
    assert!(
        checkpoints <= (elapsed / 5.0).floor(),
        "{checkpoints} checkpoints in {elapsed:.1} s: faster than one per 5 s"
    );
    let took = j
        .serve
        .metric("lifeboat_continuous_checkpoint_hashkv_seconds");
    let pace = j
        .serve
        .metric("lifeboat_continuous_checkpoint_pace_seconds");
    assert!(took > 0.0, "the HashKV's duration: {took}");
    assert!(
        (5.0..=300.0).contains(&pace),
        "pace {pace} s after a HashKV of {took} s"
    );
    // And a restore to the newest durable revision checks them on its way.
    let last = j.serve.metric("lifeboat_continuous_last_revision") as i64;
    let r = j.get(&format!("--to-revision={last}"), &j.out("auto.db"));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(verified_checkpoints(&r.stdout) >= 2, "{}", r.stdout);
}

/// A checkpoint seals its segment when it falls due, not at the next segment tick: with
/// segments every minute (the longest allowed) and checkpoints every second, proofs still come
/// every second or so, each in a segment of its own.
#[test]
fn a_due_checkpoint_seals_its_segment_before_the_tick() {
    let j = Journal::start_config(
        Version::V35,
        "[continuous]\nsegment_interval = \"60s\"\ncheckpoint_interval = \"1s\"\n",
    );
    // Well before the first minute's tick.
    writing_until(&j, "two checkpoints", Duration::from_secs(30), |serve| {
        serve.metric("lifeboat_continuous_checkpoints_total") >= 2.0
    });
    let segments = segment_files(&j);
    assert!(
        segments
            .iter()
            .filter(|m| m["checkpoints"].as_u64() == Some(1))
            .count()
            >= 2,
        "{segments:?}"
    );
}

/// Writes keys (checkpoints come only with segments, segments only with writes) until `done`
/// holds for the journal's serve.
fn writing_until(j: &Journal, what: &str, timeout: Duration, done: impl FnMut(&Serve) -> bool) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                write_keys(&j.etcd, &format!("/registry/leases/l{n}-"), 5, 100);
                n += 1;
            }
        });
        // The writer stops whether the wait passes or fails (a panic would leave it running
        // and the scope waiting for it forever).
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            j.serve.wait_until(what, timeout, done);
        }));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        writer.join().unwrap();
        if let Err(panic) = waited {
            std::panic::resume_unwind(panic);
        }
    });
}

#[test]
fn an_uploader_killed_mid_capture_is_resumed_without_a_lost_or_repeated_revision() {
    let mut j = Journal::start(Version::V35);
    let writer = {
        let url = j.etcd.client_url.clone();
        let etcd = crate::harness::data::settings(&j.etcd);
        std::thread::spawn(move || {
            rt().block_on(async move {
                let mut c = lifeboat::etcd::EtcdSource::connect(&etcd, &url)
                    .await
                    .unwrap()
                    .client();
                for i in 0..400 {
                    c.put(format!("/registry/pods/load/p{i}"), format!("{i}"), None)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
    };
    // Some segments are committed, the rest is in flight when the node dies.
    wait_until("a first segment", Duration::from_secs(30), || {
        j.serve.metric("lifeboat_continuous_segments_total") >= 1.0
    });
    j.serve.kill();
    writer.join().unwrap();
    let last = write_keys(&j.etcd, "/registry/pods/after/p", 3, 0);
    j.restart();
    j.wait_durable(last);
    let status = journal_json(&j, "status");
    assert_eq!(status["chains"].as_array().unwrap().len(), 1, "{status}");
    assert!(status["gaps"].as_array().unwrap().is_empty(), "{status}");
    assert_contiguous(&journal_json(&j, "list"));
    let expected = rt().block_on(async {
        let mut c = client(&j.etcd).await;
        expect_at(&mut c, last, &BTreeMap::new()).await
    });
    let out = j.out("after-kill.db");
    let r = j.get(&format!("--to-revision={last}"), &out);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_same(
        &expected,
        &observed(Version::V35, &out, j.dir.path(), last),
        "after a kill",
    );
}

#[test]
fn a_watch_behind_compaction_starts_a_new_chain_and_targets_in_the_gap_are_refused() {
    let mut j = Journal::start(Version::V35);
    let first = write_keys(&j.etcd, "/registry/a/k", 5, 0);
    j.wait_durable(first);
    assert_eq!(j.serve.stop(Duration::from_secs(30)), 0);
    // While no uploader runs, the cluster writes and compacts that history away.
    let head_rev = write_keys(&j.etcd, "/registry/b/k", 10, 0);
    compact(&j.etcd, head_rev);
    j.restart();
    wait_until("a new chain after the gap", Duration::from_secs(60), || {
        j.serve.metric("lifeboat_continuous_gaps_total") >= 1.0
    });
    // The new chain's base holds every revision so far: durable with no segment written.
    j.wait_durable(head_rev);
    let after = write_keys(&j.etcd, "/registry/c/k", 3, 0);
    j.wait_durable(after);
    let status = journal_json(&j, "status");
    assert_eq!(status["chains"].as_array().unwrap().len(), 2, "{status}");
    let gap = &status["gaps"][0];
    let (gap_from, resumes) = (
        gap["after_rev"].as_i64().unwrap() + 1,
        gap["resumes_at_rev"].as_i64().unwrap(),
    );
    assert!(gap_from < resumes, "{gap}");
    let r = j.get(&format!("--to-revision={gap_from}"), &j.out("gap.db"));
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(
        r.stderr.contains("Restorable: revisions")
            && r.stderr.contains(&format!("–{}", gap_from - 1)),
        "{}",
        r.stderr
    );
    // Both sides of the gap restore.
    for rev in [gap_from - 1, after] {
        let out = j.out(&format!("side-{rev}.db"));
        let r = j.get(&format!("--to-revision={rev}"), &out);
        assert_eq!(r.code, 0, "revision {rev}: {}", r.stderr);
    }
}

/// The store down for 30 s: capture keeps watching, sealed segments queue, the lag metric
/// grows; when the store is back the queue drains, in order, with nothing lost.
#[test]
fn while_the_store_is_down_segments_queue_and_catch_up_afterwards() {
    let store = crate::harness::http_fault::FlakyS3::start("journal", false, |_| true);
    let (server, proxy) = (&store.server, &store.proxy);
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let etcd = EtcdProcess::start(Version::V35, None);
    std::fs::write(
        dir.path().join("lifeboat.toml"),
        format!("{FAST_JOURNAL}[s3]\nmax_attempts = 2\nrequest_timeout = \"5s\"\n"),
    )
    .unwrap();
    let s3 = [
        "--dest=s3://journal/c1".to_string(),
        format!("--s3-endpoint={}", proxy.endpoint),
        "--s3-path-style".to_string(),
    ];
    let mut cmd = capturing(dir.path(), &key, "s3://journal/c1");
    cmd.args(etcd.lifeboat_flags())
        .args(&s3[1..])
        .envs(server.env());
    let serve = Serve::start(cmd, dir.path().join("serve.log"));
    wait_until("the first full backup", Duration::from_secs(60), || {
        serve.metric("lifeboat_backups_total") >= 1.0
    });
    let before = write_keys(&etcd, "/registry/a/k", 5, 0);
    wait_until("durable before the outage", Duration::from_secs(60), || {
        serve.metric("lifeboat_continuous_last_revision") >= before as f64
    });
    store.fail(true);
    let outage = std::time::Instant::now();
    let mut last = before;
    while outage.elapsed() < Duration::from_secs(30) {
        last = write_keys(&etcd, "/registry/b/k", 5, 100);
    }
    assert!(
        serve.metric("lifeboat_continuous_last_revision") < last as f64,
        "nothing became durable while the store was down"
    );
    let lag = serve.metric("lifeboat_continuous_lag_seconds");
    assert!(lag >= 20.0, "the lag shows the outage: {lag}");
    store.fail(false);
    wait_until("caught up", Duration::from_secs(120), || {
        serve.metric("lifeboat_continuous_last_revision") >= last as f64
    });
    wait_until("lag back to seconds", Duration::from_secs(30), || {
        serve.metric("lifeboat_continuous_lag_seconds") < 5.0
    });
    let expected = rt().block_on(async {
        let mut c = client(&etcd).await;
        expect_at(&mut c, last, &BTreeMap::new()).await
    });
    let out = dir.path().join("after-outage.db");
    let r = run(lifeboat()
        .args(["snapshot", "get", &format!("--to-revision={last}"), "-o"])
        .arg(&out)
        .args(&s3)
        .envs(server.env())
        .arg("-i")
        .arg(&key.identity_file)
        .arg("--etcd")
        .arg(etcd_bin(Version::V35))
        .arg("--etcdutl")
        .arg(etcdutl_bin())
        .arg("--work-dir")
        .arg(dir.path().join("pitr")));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_same(
        &expected,
        &observed(Version::V35, &out, dir.path(), last),
        "after the outage",
    );
}

#[test]
fn retention_deletes_only_the_segments_no_kept_point_in_time_needs() {
    let j = Journal::start(Version::V35);
    let early = write_keys(&j.etcd, "/registry/early/k", 20, 30);
    j.wait_durable(early);
    // A second full backup: retention will keep only it (the newest).
    let second = run(lifeboat()
        .args(["snapshot", "save", "-w", "json", "-r", &j.key.recipient])
        .args(j.etcd.lifeboat_flags())
        .arg("--dest")
        .arg(j.dest())
        .arg("--work-dir")
        .arg(j.dir.path().join("w2")))
    .ok()
    .json();
    let anchor = second["revision"].as_i64().unwrap();
    let late = write_keys(&j.etcd, "/registry/late/k", 20, 30);
    j.wait_durable(late);
    std::thread::sleep(Duration::from_millis(1100));
    let before = segment_files(&j);
    let config = j.out("prune.toml");
    std::fs::write(&config, "[continuous]\nkeep = \"1s\"\n").unwrap();
    let prune = |extra: &[&str]| {
        run(lifeboat()
            .arg("--config")
            .arg(&config)
            .args([
                "prune",
                "-w",
                "json",
                "--keep-last",
                "0",
                "--manual-keep-days",
                "0",
            ])
            .args(extra)
            .arg("--dest")
            .arg(j.dest()))
        .ok()
        .json()
    };
    let dry = prune(&["--dry-run"]);
    assert!(
        dry["journal"]["segments_to_delete"].as_u64() > Some(0),
        "{dry}"
    );
    assert_eq!(
        segment_files(&j).len(),
        before.len(),
        "a dry run deletes nothing"
    );
    let report = prune(&[]);
    assert_eq!(
        report["journal_deleted"], dry["journal"]["segments_to_delete"],
        "{report}"
    );
    let after = segment_files(&j);
    assert!(after.len() < before.len());
    // What is left starts at or before the kept backup's next revision, and still chains.
    assert!(
        after[0]["first_rev"].as_i64().unwrap() <= anchor + 1,
        "{:?}",
        after[0]
    );
    assert_contiguous(&serde_json::Value::Array(after.clone()));
    for m in &before {
        let gone = !after.iter().any(|a| a["seq"] == m["seq"]);
        if gone {
            assert!(
                m["last_rev"].as_i64().unwrap() <= anchor,
                "needed segment deleted: {m}"
            );
        }
    }
    // Every revision from the kept backup on still restores; before it, none.
    let out = j.out("late.db");
    let r = j.get(&format!("--to-revision={late}"), &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = j.get(
        &format!("--to-revision={}", anchor + 1),
        &j.out("anchor.db"),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(anchor >= early);
    let r = j.get(&format!("--to-revision={}", early - 10), &j.out("early.db"));
    assert_eq!(r.code, 7, "before the kept backup: {}", r.stderr);
}
