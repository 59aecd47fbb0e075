//! `snapshot save` end to end: the stored object decrypts with the `age` CLI, decompresses
//! with the `zstd` CLI, restores with etcdctl (3.4) / etcdutl (3.5), and an etcd started on
//! the result serves the same keys, values and revision. Then `list`, `verify` and `get`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::harness::data::{dump, fill};
use crate::harness::{
    age_key, etcdutl_bin, files_in, free_port, lifeboat, run, run_ok, EtcdProcess, Pki, Version,
};

fn save(etcd: &EtcdProcess, dest: &Path, work: &Path, recipient: &str) -> serde_json::Value {
    run(lifeboat()
        .args(["snapshot", "save", "-w", "json", "--recipient", recipient])
        .args(etcd.lifeboat_flags())
        .arg("--dest")
        .arg(dest)
        .arg("--work-dir")
        .arg(work))
    .ok()
    .json()
}

/// `age -d -i KEY obj | zstd -d > out`, with the real CLIs.
fn decrypt_with_clis(identity: &Path, object: &Path, out: &Path) {
    let mut age = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(object)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let status = Command::new("zstd")
        .args(["-d", "-q", "-f", "-o"])
        .arg(out)
        .stdin(age.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(age.wait().unwrap().success(), "age -d failed");
    assert!(status.success(), "zstd -d failed");
}

fn restore(v: Version, snapshot: &Path, data_dir: &Path, peer_url: &str) {
    let cluster = format!("default={peer_url}");
    let mut cmd = crate::harness::restore_tool_command(v);
    run_ok(
        cmd.args(["snapshot", "restore"])
            .arg(snapshot)
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg("--name=default")
            .arg(format!("--initial-cluster={cluster}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}")),
    );
}

fn round_trip(v: Version, tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (dest, work) = (dir.path().join("backups"), dir.path().join("work"));
    let key = age_key(dir.path(), "key.txt");
    let etcd = EtcdProcess::start(v, tls.then(Pki::generate));
    let last_rev = fill(&etcd, 0);
    let before = dump(&etcd);

    let m = save(&etcd, &dest, &work, &key.recipient);
    assert_eq!(m["schema_version"], 1);
    assert_eq!(m["revision"], last_rev);
    assert_eq!(m["status"]["revision"], last_rev);
    assert_eq!(m["hashkv"]["checked"], true, "{m}");
    assert_eq!(m["hashkv"]["result"], "equal");
    assert_eq!(m["reason"], "manual");
    assert_eq!(m["member_name"], "default");
    assert_eq!(m["endpoint"], etcd.client_url);
    assert_eq!(m["encryption"]["recipients"][0], key.recipient.as_str());
    let version = m["etcd_version"].as_str().unwrap();
    assert!(version.starts_with(if v == Version::V34 { "3.4." } else { "3.5." }));
    // Cluster and member id as etcdctl reports them.
    let es = run_ok(etcd.etcdctl().args(["endpoint", "status", "-w", "json"]));
    let es: serde_json::Value = serde_json::from_slice(&es.stdout).unwrap();
    let header = &es[0]["Status"]["header"];
    assert_eq!(
        m["cluster_id"],
        format!("{:x}", header["cluster_id"].as_u64().unwrap())
    );
    assert_eq!(
        m["member_id"],
        format!("{:x}", header["member_id"].as_u64().unwrap())
    );

    // Object, manifest and its signature only, private.
    let object = m["object"]["key"].as_str().unwrap();
    let id = m["id"].as_str().unwrap();
    assert_eq!(
        files_in(&dest),
        vec![
            object.to_string(),
            format!("{id}.manifest.json"),
            format!("{id}.manifest.json.minisig")
        ]
    );
    assert!(files_in(&work).is_empty(), "the spool copy is removed");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dest.join(object))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The real CLIs read it; etcdctl/etcdutl accept it.
    let plain = dir.path().join("plain.db");
    decrypt_with_clis(&key.identity_file, &dest.join(object), &plain);
    let status = run(lifeboat()
        .args(["snapshot", "status", "-w", "json"])
        .arg(&plain))
    .ok()
    .json();
    assert_eq!(status, m["status"]);
    let restored = dir.path().join("restored");
    let peer = format!("http://127.0.0.1:{}", free_port());
    restore(v, &plain, &restored, &peer);
    let back = EtcdProcess::start_on(v, None, &restored, Some(("default", &peer)));
    let after = dump(&back);
    assert_eq!(after.0, before.0, "restored keys, values and revisions");
    assert_eq!(after.1, before.1, "restored revision");
}

#[test]
fn save_and_restore_etcd_3_5_plain() {
    round_trip(Version::V35, false);
}

#[test]
fn save_and_restore_etcd_3_5_mutual_tls() {
    round_trip(Version::V35, true);
}

#[test]
fn save_and_restore_etcd_3_5_30_mutual_tls() {
    round_trip(Version::V3530, true);
}

#[test]
fn save_and_restore_etcd_3_4_plain() {
    round_trip(Version::V34, false);
}

#[test]
fn save_and_restore_etcd_3_4_mutual_tls() {
    round_trip(Version::V34, true);
}

#[test]
fn list_verify_and_get_read_backups_back() {
    let dir = tempfile::tempdir().unwrap();
    let (dest, work) = (dir.path().join("backups"), dir.path().join("work"));
    let key = age_key(dir.path(), "key.txt");
    let etcd = EtcdProcess::start(Version::V35, None);
    fill(&etcd, 0);
    let first = save(&etcd, &dest, &work, &key.recipient);
    etcd.put("/registry/newer", "v");
    let second = save(&etcd, &dest, &work, &key.recipient);

    let listed = run(lifeboat()
        .args(["snapshot", "list", "-w", "json", "--dest"])
        .arg(&dest))
    .ok()
    .json();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![
            second["id"].as_str().unwrap(),
            first["id"].as_str().unwrap()
        ],
        "newest first"
    );
    let table = run(lifeboat().args(["snapshot", "list", "--dest"]).arg(&dest))
        .ok()
        .stdout;
    assert!(table.contains(first["id"].as_str().unwrap()) && table.contains("REVISION"));

    let verified =
        run(crate::harness::verify_latest(&dest, &key.identity_file).args(["-w", "json"]))
            .ok()
            .json();
    assert_eq!(verified["id"], second["id"]);
    assert_eq!(verified["status"], second["status"]);
    assert_eq!(verified["plain_sha256"], second["plain_sha256"]);

    let out = dir.path().join("restore-me.db");
    let get = |extra: &[&str]| {
        run(lifeboat()
            .args(["snapshot", "get"])
            .arg(first["id"].as_str().unwrap())
            .arg("--dest")
            .arg(&dest)
            .arg("-i")
            .arg(&key.identity_file)
            .arg("-o")
            .arg(&out)
            .args(extra))
    };
    get(&[]).ok();
    let oracle = run_ok(
        Command::new(etcdutl_bin())
            .args(["snapshot", "status", "-w", "json"])
            .arg(&out),
    );
    let oracle: serde_json::Value = serde_json::from_slice(&oracle.stdout).unwrap();
    assert_eq!(oracle, first["status"]);
    let again = get(&[]);
    assert_eq!(again.code, 5, "refuses to overwrite: {}", again.stderr);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    get(&["--force"]).ok();
    // A unique prefix of an id works too.
    let prefix = &second["id"].as_str().unwrap()[..second["id"].as_str().unwrap().len() - 2];
    run(lifeboat()
        .args(["snapshot", "verify", prefix, "--dest"])
        .arg(&dest)
        .arg("-i")
        .arg(&key.identity_file)
        .arg("--work-dir")
        .arg(&work))
    .ok();
}

#[test]
fn unencrypted_backups_need_the_explicit_setting_and_warn_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lifeboat.toml");
    std::fs::write(
        &config,
        format!(
            "[backup]\nencryption = \"none\"\ndest = \"{}\"\nwork_dir = \"{}\"\n",
            dir.path().join("b").display(),
            dir.path().join("w").display()
        ),
    )
    .unwrap();
    let etcd = EtcdProcess::start(Version::V35, None);
    etcd.put("/a", "1");
    let r = run(lifeboat()
        .args(["snapshot", "save", "-w", "json", "--config"])
        .arg(&config)
        .args(etcd.lifeboat_flags()))
    .ok();
    assert!(r.stderr.contains("ENCRYPTION IS OFF"), "{}", r.stderr);
    let m = r.json();
    // A member that never compacted reports compact revision -1; HashKV is still compared.
    assert_eq!(m["hashkv"]["checked"], true, "{m}");
    assert_eq!(m["encryption"]["scheme"], "none");
    let object = dir
        .path()
        .join("b")
        .join(m["object"]["key"].as_str().unwrap());
    assert!(object.to_string_lossy().ends_with(".db.zst"));
    let plain = dir.path().join("p.db");
    run_ok(
        Command::new("zstd")
            .args(["-d", "-q", "-o"])
            .arg(&plain)
            .arg(&object),
    );
    run(lifeboat()
        .args(["snapshot", "verify", "latest", "--config"])
        .arg(&config))
    .ok();
    // A reader holding an identity refuses a plaintext backup (an encryption downgrade by
    // whoever can write the store) unless told it is expected.
    let key = age_key(dir.path(), "key.txt");
    let verify = |extra: &[&str]| {
        run(lifeboat()
            .args(["snapshot", "verify", "latest", "--config"])
            .arg(&config)
            .arg("--identity")
            .arg(&key.identity_file)
            .args(extra))
    };
    let refused = verify(&[]);
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("--allow-unencrypted"),
        "{}",
        refused.stderr
    );
    verify(&["--allow-unencrypted"]).ok();
}

#[test]
fn flags_win_over_env_and_env_over_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let config = dir.path().join("lifeboat.toml");
    std::fs::write(
        &config,
        format!(
            "[backup]\ndest = \"{}\"\ncompression_level = 19\nrecipients = [\"{}\"]\nwork_dir = \"{}\"\n",
            dir.path().join("from-file").display(),
            key.recipient,
            dir.path().join("w").display()
        ),
    )
    .unwrap();
    let etcd = EtcdProcess::start(Version::V35, None);
    etcd.put("/a", "1");
    let m = run(lifeboat()
        .args(["snapshot", "save", "-w", "json", "--config"])
        .arg(&config)
        .args(etcd.lifeboat_flags())
        .env("LIFEBOAT_DEST", dir.path().join("from-env"))
        .env("LIFEBOAT_COMPRESSION_LEVEL", "7")
        .args(["--compression-level", "2"]))
    .ok()
    .json();
    assert_eq!(m["compression"]["level"], 2, "flag beats env and file");
    assert_eq!(
        files_in(&dir.path().join("from-env")).len(),
        3,
        "env beats file"
    );
    assert!(!dir.path().join("from-file").exists());
}

/// Saves, restores with etcd's own tool, starts a member on the result and returns (the
/// manifest's revision, the revision the restored member reports).
fn saved_and_restored_revisions(v: Version, etcd: &EtcdProcess) -> (i64, i64) {
    let dir = tempfile::tempdir().unwrap();
    let (dest, work) = (dir.path().join("backups"), dir.path().join("work"));
    let key = age_key(dir.path(), "key.txt");
    let m = save(etcd, &dest, &work, &key.recipient);
    assert_eq!(
        m["hashkv"]["result"].as_str().map(|r| r.is_empty()),
        Some(false)
    );
    let plain = dir.path().join("plain.db");
    decrypt_with_clis(
        &key.identity_file,
        &dest.join(m["object"]["key"].as_str().unwrap()),
        &plain,
    );
    let restored = dir.path().join("restored");
    let peer = format!("http://127.0.0.1:{}", free_port());
    restore(v, &plain, &restored, &peer);
    let back = EtcdProcess::start_on(v, None, &restored, Some(("default", &peer)));
    (m["revision"].as_i64().unwrap(), dump(&back).1)
}

/// Regression: a brand-new cluster has no key at all, and its snapshot's last key revision
/// is 0 while the member reports 1; the save failed with "revision 0 is older than 1".
#[test]
fn an_empty_etcd_saves_at_the_revision_etcd_restores_to() {
    for v in Version::ALL {
        let etcd = EtcdProcess::start(v, None);
        let member = dump(&etcd).1;
        assert_eq!(member, 1);
        let (saved, restored) = saved_and_restored_revisions(v, &etcd);
        assert_eq!((saved, restored), (member, member), "{v:?}");
    }
}

/// Regression: deletes followed by a compaction at the head leave bucket `key` empty at the
/// member's revision; etcd restores to the compaction point.
#[test]
fn deletes_compacted_at_the_head_save_at_the_compaction_revision() {
    for v in [Version::V34, Version::V35] {
        let etcd = EtcdProcess::start(v, None);
        etcd.put("/a", "1");
        etcd.put("/b", "2");
        etcd.put("/c", "3");
        run_ok(etcd.etcdctl().args(["del", "/a"]));
        run_ok(etcd.etcdctl().args(["del", "/b"]));
        run_ok(etcd.etcdctl().args(["del", "/c"]));
        let member = dump(&etcd).1;
        run_ok(
            etcd.etcdctl()
                .args(["compact", &member.to_string(), "--physical"]),
        );
        let (saved, restored) = saved_and_restored_revisions(v, &etcd);
        assert_eq!((saved, restored), (member, member), "{v:?}");
    }
}

#[test]
fn max_rate_holds_the_snapshot_stream_to_its_rate() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let etcd = EtcdProcess::start(Version::V35, None);
    fill(&etcd, 3 << 20);
    let started = std::time::Instant::now();
    let m = run(lifeboat()
        .args(["snapshot", "save", "-w", "json", "--max-rate", "1MiB"])
        .args(["--recipient", &key.recipient])
        .args(etcd.lifeboat_flags())
        .arg("--dest")
        .arg(dir.path().join("b"))
        .arg("--work-dir")
        .arg(dir.path().join("w")))
    .ok()
    .json();
    let took = started.elapsed().as_secs_f64();
    // No level given: the default chosen by measurement (docs/performance.md).
    assert_eq!(m["compression"]["level"], 1);
    // A lower bound only: reading the snapshot's bytes at 1 MiB/s cannot take less.
    let least = m["plain_size"].as_f64().unwrap() / f64::from(1u32 << 20);
    assert!(least >= 3.0, "the database is smaller than meant: {m}");
    assert!(
        took >= least * 0.95,
        "{} bytes read in {took:.1} s: faster than 1 MiB/s",
        m["plain_size"]
    );
    // And a bad rate is one line naming the key.
    let r = run(lifeboat()
        .args(["snapshot", "save", "--max-rate", "fast"])
        .args(["--recipient", &key.recipient])
        .args(etcd.lifeboat_flags())
        .arg("--dest")
        .arg(dir.path().join("b")));
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("backup.max_rate"), "{}", r.stderr);
}
