//! Continuous backup and point-in-time restore (#12), against real etcd 3.4 and 3.5: `serve
//! --continuous` captures a mixed load (puts, overwrites, multi-key txns, deletes, a
//! delete-range, keys with leases, a lease revoked, a lease expiring, a compaction) into the
//! journal; `snapshot get --to-revision/--to-time` replays it into a sandbox; at each target,
//! every key, value, create/mod revision, version and lease equals what the cluster returned at
//! that revision, the leases' granted TTLs are equal, and the HashKV equals the cluster's at the
//! same compact revision.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp};

use crate::data::{client, rt};
use crate::harness::{
    age_key, etcd_bin, etcdctl_bin, etcdutl_bin, free_port, lifeboat, run, run_ok, AgeKey,
    EtcdProcess, Version,
};
use crate::serve::{wait_until, Serve};

/// key, value, create revision, mod revision, version, lease.
type Kv = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

/// What the cluster returned at one revision.
pub(crate) struct Expected {
    rev: i64,
    kvs: Vec<Kv>,
    /// Granted TTL of every lease a key is attached to.
    ttls: BTreeMap<i64, i64>,
    /// HashKV at `rev` and the compact revision it was taken at.
    hash: (u32, i64),
}

/// The cluster's state at `rev`. `granted` has the TTLs of leases granted by the load (a lease
/// revoked since cannot be asked any more); others (lifeboat's own election lease) are asked.
pub(crate) async fn expect_at(c: &mut Client, rev: i64, granted: &BTreeMap<i64, i64>) -> Expected {
    let r = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_revision(rev)),
        )
        .await
        .unwrap();
    let kvs: Vec<Kv> = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    let mut ttls = BTreeMap::new();
    for kv in &kvs {
        if let Some(ttl) = granted.get(&kv.5) {
            ttls.insert(kv.5, *ttl);
        } else if kv.5 != 0 && !ttls.contains_key(&kv.5) {
            let t = c
                .lease_time_to_live(kv.5, Some(LeaseTimeToLiveOptions::new()))
                .await
                .unwrap();
            ttls.insert(kv.5, t.granted_ttl());
        }
    }
    let h = c.hash_kv(rev).await.unwrap();
    Expected {
        rev,
        kvs,
        ttls,
        hash: (h.hash(), h.compact_version()),
    }
}

async fn head(c: &mut Client) -> i64 {
    c.get("/", None).await.unwrap().header().unwrap().revision()
}

/// What the restored file holds: started as a fresh etcd of the same version.
pub(crate) fn observed(v: Version, snapshot: &Path, dir: &Path, rev: i64) -> Expected {
    let data = tempfile::tempdir_in(dir).unwrap().keep().join("data");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut cmd = match v {
        Version::V34 => {
            let mut c = std::process::Command::new(etcdctl_bin(v));
            c.env("ETCDCTL_API", "3");
            c
        }
        Version::V35 => std::process::Command::new(etcdutl_bin()),
    };
    run_ok(
        cmd.args(["snapshot", "restore"])
            .arg(snapshot)
            .arg(format!("--data-dir={}", data.display()))
            .arg("--name=default")
            .arg(format!("--initial-cluster=default={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}")),
    );
    let back = EtcdProcess::start_on(v, None, &data, Some(("default", &peer)));
    rt().block_on(async {
        let mut c = client(&back).await;
        let mut e = expect_at(&mut c, rev, &BTreeMap::new()).await;
        // The restored member's own compaction may differ; the hash that must match is the
        // cluster's, at the cluster's compact revision: computed offline from the file.
        e.hash.1 = -1;
        e
    })
}

pub(crate) fn assert_same(expected: &Expected, got: &Expected, what: &str) {
    assert_eq!(got.rev, expected.rev, "{what}: revision");
    assert_eq!(
        got.kvs.len(),
        expected.kvs.len(),
        "{what}: number of keys at revision {}",
        expected.rev
    );
    for (e, g) in expected.kvs.iter().zip(&got.kvs) {
        assert_eq!(
            g,
            e,
            "{what}: key {} at revision {}",
            String::from_utf8_lossy(&e.0),
            expected.rev
        );
    }
    // A lease that expired before the test could ask its TTL (0) is compared by its keys only.
    for (lease, ttl) in expected.ttls.iter().filter(|(_, t)| **t > 0) {
        assert_eq!(
            got.ttls.get(lease),
            Some(ttl),
            "{what}: granted TTL of lease {lease:x}"
        );
    }
}

fn start_serve(dir: &Path, key: &AgeKey, etcd: &EtcdProcess) -> Serve {
    let mut cmd = capturing(dir, key, &dir.join("b").display().to_string());
    cmd.args(etcd.lifeboat_flags());
    Serve::start(cmd, dir.join("serve.log"))
}

/// The `[continuous]` lines of the tests: segments every 500 ms, a checkpoint every second.
pub(crate) const FAST_JOURNAL: &str =
    "[continuous]\nsegment_interval = \"500ms\"\ncheckpoint_interval = \"1s\"\n";

/// `serve --continuous` with no scheduled backup in sight, its config `dir/lifeboat.toml`
/// (written by the caller, or `FAST_JOURNAL` when there is none), work dir `dir/w`, backups
/// to `dest`; the caller adds how to reach etcd (and S3).
pub(crate) fn capturing(dir: &Path, key: &AgeKey, dest: &str) -> std::process::Command {
    let config = dir.join("lifeboat.toml");
    if !config.exists() {
        std::fs::write(&config, FAST_JOURNAL).unwrap();
    }
    let mut cmd = lifeboat();
    cmd.arg("--config")
        .arg(config)
        .args(["serve", "--continuous", "--schedule", "0 0 1 1 *"])
        .args(["-r", &key.recipient])
        .arg(format!("--dest={dest}"))
        .arg("--work-dir")
        .arg(dir.join("w"));
    cmd
}

pub(crate) struct Journal {
    pub(crate) v: Version,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) key: AgeKey,
    pub(crate) etcd: EtcdProcess,
    pub(crate) serve: Serve,
}

impl Journal {
    pub(crate) fn start(v: Version) -> Journal {
        Journal::start_with(v, "")
    }

    /// With more lines for the `[continuous]` section.
    pub(crate) fn start_with(v: Version, continuous: &str) -> Journal {
        Journal::start_config(v, &format!("{FAST_JOURNAL}{continuous}"))
    }

    /// With this config file.
    pub(crate) fn start_config(v: Version, config_text: &str) -> Journal {
        let dir = tempfile::tempdir().unwrap();
        let key = age_key(dir.path(), "key.txt");
        let etcd = EtcdProcess::start(v, None);
        etcd.put("/registry/namespaces/default", "ns");
        let config = dir.path().join("lifeboat.toml");
        std::fs::write(&config, config_text).unwrap();
        let serve = start_serve(dir.path(), &key, &etcd);
        // The journal starts from a full backup it takes itself (the store has none).
        wait_until(
            "the journal's first full backup",
            Duration::from_secs(60),
            || serve.metric("lifeboat_backups_total") >= 1.0,
        );
        Journal {
            v,
            dir,
            key,
            etcd,
            serve,
        }
    }

    /// A new `serve` on the same store and etcd (the old one must be gone).
    pub(crate) fn restart(&mut self) {
        self.serve = start_serve(self.dir.path(), &self.key, &self.etcd);
    }

    pub(crate) fn dest(&self) -> PathBuf {
        self.dir.path().join("b")
    }

    pub(crate) fn wait_durable(&self, rev: i64) {
        wait_until(
            &format!("revision {rev} durable in the journal"),
            Duration::from_secs(60),
            || self.serve.metric("lifeboat_continuous_last_revision") >= rev as f64,
        );
    }

    /// `lifeboat snapshot get --to-revision|--to-time` into a file.
    pub(crate) fn get(&self, point: &str, out: &Path) -> crate::harness::Run {
        let mut cmd = lifeboat();
        cmd.args(["snapshot", "get", point, "-o"]).arg(out);
        self.replaying(&mut cmd, "pitr");
        run(&mut cmd)
    }

    /// `lifeboat drill --to-revision|--to-time`.
    fn drill(&self, point: &str) -> crate::harness::Run {
        let mut cmd = lifeboat();
        cmd.args(["drill", point]);
        self.replaying(&mut cmd, "drills");
        run(&mut cmd)
    }

    /// The store, the identity and the replay sandbox (etcd and restore tool of this version).
    pub(crate) fn replaying(&self, cmd: &mut std::process::Command, work: &str) {
        cmd.arg("--dest")
            .arg(self.dest())
            .arg("-i")
            .arg(&self.key.identity_file)
            .arg("--etcd")
            .arg(etcd_bin(self.v))
            .arg("--etcdutl")
            .arg(match self.v {
                Version::V34 => etcdctl_bin(Version::V34),
                Version::V35 => etcdutl_bin(),
            })
            .arg("--work-dir")
            .arg(self.dir.path().join(work));
    }

    pub(crate) fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

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
    assert_eq!(
        compaction["hash"].is_u64(),
        v == Version::V35,
        "{compaction}"
    );
    assert!(
        r.stdout.contains("1 compaction(s) mirrored"),
        "{}",
        r.stdout
    );
    if v == Version::V35 {
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

#[test]
fn a_short_lease_kept_alive_by_the_cluster_outlives_a_longer_replay() {
    let j = Journal::start(Version::V35);
    // A 2 s lease the cluster keeps alive while 15,000 revisions go by: replaying them takes
    // several seconds here (about 2,500/s), so the sandbox would expire the lease — a revision
    // the cluster never had, which stops the replay — unless the replay keeps it alive too.
    let (lease, last) = rt().block_on(async {
        let mut c = client(&j.etcd).await;
        let lease = c.lease_grant(2, None).await.unwrap().id();
        c.put(
            "/registry/leases/kube-system/holder",
            "me",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
        let (mut keeper, mut stream) = c.lease_keep_alive(lease).await.unwrap();
        let keeping = tokio::spawn(async move {
            loop {
                keeper.keep_alive().await.unwrap();
                let _ = stream.message().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        for i in 0..15_000 {
            c.put(
                format!("/registry/pods/churn/p{}", i % 50),
                format!("{i}"),
                None,
            )
            .await
            .unwrap();
        }
        let last = head(&mut c).await;
        keeping.abort();
        (lease, last)
    });
    j.wait_durable(last);
    let expected = rt().block_on(async {
        let mut c = client(&j.etcd).await;
        expect_at(&mut c, last, &BTreeMap::from([(lease, 2)])).await
    });
    let out = j.out("kept-alive.db");
    let r = j.get(&format!("--to-revision={last}"), &out);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_same(
        &expected,
        &observed(Version::V35, &out, j.dir.path(), last),
        "kept alive",
    );
}

/// `n` puts under `prefix`, `pause_ms` apart; the revision after the last.
pub(crate) fn write_keys(etcd: &EtcdProcess, prefix: &str, n: usize, pause_ms: u64) -> i64 {
    rt().block_on(async {
        let mut c = client(etcd).await;
        for i in 0..n {
            c.put(format!("{prefix}{i}"), format!("value-{i}"), None)
                .await
                .unwrap();
            if pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
        }
        head(&mut c).await
    })
}

/// Flips one bit in the middle of a file; its original bytes.
pub(crate) fn flip_a_byte(path: &Path) -> Vec<u8> {
    let original = std::fs::read(path).unwrap();
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    std::fs::write(path, &bad).unwrap();
    original
}

/// A physical compaction of `etcd` at `rev`.
pub(crate) fn compact(etcd: &EtcdProcess, rev: i64) {
    rt().block_on(async {
        let mut c = client(etcd).await;
        c.compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    });
}

pub(crate) fn journal_json(j: &Journal, what: &str) -> serde_json::Value {
    run(lifeboat()
        .args(["continuous", what, "-w", "json", "--dest"])
        .arg(j.dest()))
    .ok()
    .json()
}

/// A segment's path in the folder store, by chain order index.
pub(crate) fn segment_files(j: &Journal) -> Vec<serde_json::Value> {
    journal_json(j, "list").as_array().unwrap().clone()
}

pub(crate) fn manifest_path(j: &Journal, m: &serde_json::Value) -> PathBuf {
    j.dest().join(format!(
        "seg.{}.{:010}.{:019}.json",
        m["chain"].as_str().unwrap(),
        m["seq"].as_u64().unwrap(),
        m["first_rev"].as_i64().unwrap()
    ))
}

#[test]
fn a_tampered_segment_a_broken_chain_and_a_checkpoint_mismatch_stop_the_restore() {
    let j = Journal::start(Version::V35);
    // Segments with checkpoints: writes over a few seconds (checkpoint_interval 1s).
    let last = write_keys(&j.etcd, "/registry/configmaps/t/c", 60, 60);
    j.wait_durable(last);
    let segments = segment_files(&j);
    assert!(segments.len() >= 3, "{segments:?}");
    let target = format!("--to-revision={last}");

    // A flipped byte in a segment object.
    let victim = &segments[1];
    let object = j.dest().join(victim["object"]["key"].as_str().unwrap());
    let original = flip_a_byte(&object);
    let r = j.get(&target, &j.out("tampered.db"));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr.contains(victim["object"]["key"].as_str().unwrap())
            && r.stderr.contains("tampered"),
        "{}",
        r.stderr
    );
    assert!(!j.out("tampered.db").exists(), "nothing written");
    std::fs::write(&object, &original).unwrap();

    // A segment taken out of the chain.
    let manifest = manifest_path(&j, victim);
    let aside = j.out("aside.json");
    std::fs::rename(&manifest, &aside).unwrap();
    let r = j.get(&target, &j.out("broken.db"));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("is missing"), "{}", r.stderr);
    std::fs::rename(&aside, &manifest).unwrap();

    // A segment whose recorded checkpoint the replay does not reach (as a writer bug would
    // make it: re-encoded and re-signed, so only the replay can tell).
    let with_checkpoint = segments
        .iter()
        .rev()
        .find(|m| m["checkpoints"].as_u64() > Some(0))
        .expect("a segment with a checkpoint");
    rewrite_checkpoint(&j, with_checkpoint);
    let rev = with_checkpoint["last_rev"].as_i64().unwrap();
    let r = j.get(&format!("--to-revision={rev}"), &j.out("mismatch.db"));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("checkpoint at revision {rev} FAILED")),
        "{}",
        r.stderr
    );
    assert!(!j.out("mismatch.db").exists(), "nothing written");
    // A drill of that point fails the same way.
    let d = j.drill(&format!("--to-revision={rev}"));
    assert_eq!(d.code, 4, "{}", d.stderr);
    assert!(
        d.stderr.contains("point-in-time drill FAILED"),
        "{}",
        d.stderr
    );
}

/// A segment's records, decrypted with the test identity.
fn decode_segment(j: &Journal, m: &serde_json::Value) -> Vec<serde_json::Value> {
    let object = j.dest().join(m["object"]["key"].as_str().unwrap());
    let ids = lifeboat::stages::encrypt::Identities::from_file(&j.key.identity_file).unwrap();
    let mut body = String::new();
    std::io::Read::read_to_string(
        &mut lifeboat::stages::decode::decoder(std::fs::File::open(&object).unwrap(), Some(&ids))
            .unwrap(),
        &mut body,
    )
    .unwrap();
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every record of every segment, in chain order.
fn all_records(j: &Journal) -> Vec<serde_json::Value> {
    journal_json(j, "list")
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| decode_segment(j, m))
        .collect()
}

/// Changes the hash of the last checkpoint in a segment and re-signs the segment.
pub(crate) fn rewrite_checkpoint(j: &Journal, m: &serde_json::Value) {
    rewrite_record(j, m, "checkpoint");
}

/// Changes the hash of the last record of kind `t` in a segment and re-signs the segment.
fn rewrite_record(j: &Journal, m: &serde_json::Value, t: &str) {
    use lifeboat::stages::encrypt::Recipients;
    use sha2::{Digest, Sha256};
    let object = j.dest().join(m["object"]["key"].as_str().unwrap());
    let mut lines = decode_segment(j, m);
    let cp = lines.iter_mut().rev().find(|l| l["t"] == t).unwrap();
    cp["hash"] = serde_json::json!(cp["hash"].as_u64().unwrap() ^ 1);
    let mut new_body = Vec::new();
    for l in &lines {
        new_body.extend(serde_json::to_vec(l).unwrap());
        new_body.push(b'\n');
    }
    let recipients = Recipients::parse("test", [j.key.recipient.as_str()]).unwrap();
    let stored = lifeboat::stages::encode::encode_all(&new_body, 3, Some(&recipients)).unwrap();
    std::fs::write(&object, &stored).unwrap();
    let mut manifest = m.clone();
    manifest["hash"] = serde_json::json!(hex::encode(Sha256::digest(&new_body)));
    manifest["plain_size"] = serde_json::json!(new_body.len());
    manifest["object"]["size"] = serde_json::json!(stored.len());
    manifest["object"]["sha256"] = serde_json::json!(hex::encode(Sha256::digest(&stored)));
    let path = manifest_path(j, m);
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    let key = lifeboat::trust::SigningKey::from_file(&crate::harness::test_keys().secret).unwrap();
    let nonce = m["object"]["key"]
        .as_str()
        .unwrap()
        .rsplit(".jsonl")
        .nth(1)
        .unwrap()
        .rsplit('.')
        .next()
        .unwrap()
        .to_string();
    let sig = name.replace(".json", &format!(".{nonce}.json.minisig"));
    std::fs::write(j.dest().join(sig), key.sign(&name, &bytes).unwrap()).unwrap();
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

/// How many checkpoints a `snapshot get --to-revision` says it verified.
pub(crate) fn verified_checkpoints(stdout: &str) -> u64 {
    stdout
        .split(" checkpoint(s) verified")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Every segment in chain order follows the one before: sequence, revisions, hash.
pub(crate) fn assert_contiguous(segments: &serde_json::Value) {
    let all = segments.as_array().unwrap();
    for pair in all.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a["chain"] != b["chain"] {
            continue;
        }
        assert_eq!(b["seq"].as_u64(), a["seq"].as_u64().map(|s| s + 1), "{b}");
        assert_eq!(
            b["first_rev"].as_i64(),
            a["last_rev"].as_i64().map(|r| r + 1),
            "no revision lost or repeated between {a} and {b}"
        );
        assert_eq!(b["prev_hash"], a["hash"], "hash chain");
    }
}
