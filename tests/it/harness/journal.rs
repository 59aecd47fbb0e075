//! A journal under test: real etcd, `serve --continuous` capturing it into a folder store, and
//! what the cluster held at a revision (`expect_at`) against what a restored file holds
//! (`observed`); helpers to read, tamper with and re-sign segments. Shared by the continuous,
//! capture, leases, shadow, tamper and hardening tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions};

use super::data::{client, rt};
use super::serve::{wait_until, Serve};
use super::{age_key, etcd_bin, free_port, lifeboat, run, run_ok, AgeKey, EtcdProcess, Version};

/// key, value, create revision, mod revision, version, lease.
pub(crate) type Kv = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

/// What the cluster returned at one revision.
pub(crate) struct Expected {
    pub(crate) rev: i64,
    pub(crate) kvs: Vec<Kv>,
    /// Granted TTL of every lease a key is attached to.
    pub(crate) ttls: BTreeMap<i64, i64>,
    /// HashKV at `rev` and the compact revision it was taken at.
    pub(crate) hash: (u32, i64),
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

pub(crate) async fn head(c: &mut Client) -> i64 {
    c.get("/", None).await.unwrap().header().unwrap().revision()
}

/// What the restored file holds: started as a fresh etcd of the same version.
pub(crate) fn observed(v: Version, snapshot: &Path, dir: &Path, rev: i64) -> Expected {
    let data = tempfile::tempdir_in(dir).unwrap().keep().join("data");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut cmd = super::restore_tool_command(v);
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

pub(crate) fn start_serve(dir: &Path, key: &AgeKey, etcd: &EtcdProcess) -> Serve {
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
    pub(crate) fn drill(&self, point: &str) -> crate::harness::Run {
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
            .arg(super::restore_tool(self.v))
            .arg("--work-dir")
            .arg(self.dir.path().join(work));
    }

    pub(crate) fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
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

/// A segment's records, decrypted with the test identity.
pub(crate) fn decode_segment(j: &Journal, m: &serde_json::Value) -> Vec<serde_json::Value> {
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
pub(crate) fn all_records(j: &Journal) -> Vec<serde_json::Value> {
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
pub(crate) fn rewrite_record(j: &Journal, m: &serde_json::Value, t: &str) {
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
