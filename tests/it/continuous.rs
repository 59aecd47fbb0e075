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
struct Expected {
    rev: i64,
    kvs: Vec<Kv>,
    /// Granted TTL of every lease a key is attached to.
    ttls: BTreeMap<i64, i64>,
    /// HashKV at `rev` and the compact revision it was taken at.
    hash: (u32, i64),
}

/// The cluster's state at `rev`. `granted` has the TTLs of leases granted by the load (a lease
/// revoked since cannot be asked any more); others (lifeboat's own election lease) are asked.
async fn expect_at(c: &mut Client, rev: i64, granted: &BTreeMap<i64, i64>) -> Expected {
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
fn observed(v: Version, snapshot: &Path, dir: &Path, rev: i64) -> Expected {
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

fn assert_same(expected: &Expected, got: &Expected, what: &str) {
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
    assert_eq!(got.ttls, expected.ttls, "{what}: granted lease TTLs");
}

struct Journal {
    v: Version,
    dir: tempfile::TempDir,
    key: AgeKey,
    etcd: EtcdProcess,
    serve: Serve,
}

impl Journal {
    fn start(v: Version) -> Journal {
        let dir = tempfile::tempdir().unwrap();
        let key = age_key(dir.path(), "key.txt");
        let etcd = EtcdProcess::start(v, None);
        etcd.put("/registry/namespaces/default", "ns");
        let config = dir.path().join("lifeboat.toml");
        std::fs::write(
            &config,
            "[continuous]\nsegment_interval = \"500ms\"\ncheckpoint_interval = \"1s\"\n",
        )
        .unwrap();
        let mut cmd = lifeboat();
        cmd.arg("--config")
            .arg(&config)
            .args(["serve", "--continuous", "--schedule", "0 0 1 1 *"])
            .args(["-r", &key.recipient])
            .args(etcd.lifeboat_flags())
            .arg("--dest")
            .arg(dir.path().join("b"))
            .arg("--work-dir")
            .arg(dir.path().join("w"));
        let serve = Serve::start(cmd, dir.path().join("serve.log"));
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

    fn wait_durable(&self, rev: i64) {
        wait_until(
            &format!("revision {rev} durable in the journal"),
            Duration::from_secs(60),
            || self.serve.metric("lifeboat_continuous_last_revision") >= rev as f64,
        );
    }

    /// `lifeboat snapshot get --to-revision|--to-time` into a file.
    fn get(&self, point: &str, out: &Path) -> crate::harness::Run {
        run(lifeboat()
            .args(["snapshot", "get", point, "-o"])
            .arg(out)
            .arg("--dest")
            .arg(self.dir.path().join("b"))
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
            .arg(self.dir.path().join("pitr")))
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The mixed load; returns what the cluster held at several revisions, and a time with the
/// revision it maps to.
fn mixed_load(j: &Journal) -> (Vec<Expected>, (String, i64)) {
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
        c.compact(
            after_expiry - 5,
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
        (expected, (at.to_rfc3339(), after_deletes))
    })
}

fn point_in_time_restores_are_exact(v: Version) {
    let j = Journal::start(v);
    let (expected, (time, time_rev)) = mixed_load(&j);
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
    // Checkpoints were recorded and verified on the way to the newest revision.
    let out = j.out("at-final-again.db");
    let r = j.get(&format!("--to-revision={final_rev}"), &out);
    let verified: u64 = r
        .stdout
        .split(" checkpoint(s) verified")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(verified >= 1, "no checkpoint verified: {}", r.stdout);
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
