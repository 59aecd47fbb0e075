//! Bad input gets a clear error, the documented exit code, and nothing half-written is kept.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::data::fill;
use crate::harness::proxy::{Fault, Proxy};
use crate::harness::{
    age_key, files_in, free_port, lifeboat, run, run_ok, EtcdProcess, Pki, Version,
};

fn save_cmd(endpoint_flags: &[String], dir: &Path, recipient: &str) -> Command {
    save_cmd_into(endpoint_flags, &dir.join("b"), &dir.join("w"), recipient)
}

fn save_cmd_into(endpoint_flags: &[String], dest: &Path, work: &Path, recipient: &str) -> Command {
    let mut cmd = lifeboat();
    cmd.args(["snapshot", "save", "-r", recipient])
        .args(endpoint_flags)
        .arg("--dest")
        .arg(dest)
        .arg("--work-dir")
        .arg(work)
        .args(["--connect-timeout", "3s", "--request-timeout", "10s"]);
    cmd
}

fn assert_nothing_kept(dir: &Path) {
    assert!(
        files_in(&dir.join("b")).is_empty(),
        "backup folder: {:?}",
        files_in(&dir.join("b"))
    );
    assert!(
        files_in(&dir.join("w")).is_empty(),
        "work dir: {:?}",
        files_in(&dir.join("w"))
    );
}

#[test]
fn unreachable_etcd_exits_3_naming_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "k");
    let url = format!("http://127.0.0.1:{}", free_port());
    let r = run(&mut save_cmd(
        &[format!("--endpoints={url}")],
        dir.path(),
        &key.recipient,
    ));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot reach etcd") && r.stderr.contains(&url),
        "{}",
        r.stderr
    );
    assert!(files_in(&dir.path().join("b")).is_empty());
}

#[test]
fn an_error_chain_is_printed_once_per_cause() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-a-folder"), b"x").unwrap();
    let r = run(lifeboat()
        .args(["snapshot", "list", "--dest"])
        .arg(dir.path().join("not-a-folder")));
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert_eq!(r.stderr.matches("os error").count(), 1, "{}", r.stderr);
}

#[test]
fn a_wrong_ca_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "k");
    let etcd = EtcdProcess::start(Version::V35, Some(Pki::generate()));
    let other = Pki::generate();
    let mut flags = etcd.lifeboat_flags();
    flags[1] = format!("--cacert={}", other.ca_cert.display());
    let r = run(&mut save_cmd(&flags, dir.path(), &key.recipient));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains(&etcd.client_url), "{}", r.stderr);
}

#[test]
fn a_missing_client_certificate_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "k");
    let etcd = EtcdProcess::start(Version::V35, Some(Pki::generate()));
    let mut flags = etcd.lifeboat_flags();
    flags[2] = "--cert=/nonexistent/client.crt".into();
    let r = run(&mut save_cmd(&flags, dir.path(), &key.recipient));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("/nonexistent/client.crt"), "{}", r.stderr);
}

#[test]
fn etcd_dying_mid_stream_leaves_no_backup_behind() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "k");
    let etcd = EtcdProcess::start(Version::V35, None);
    fill(&etcd, 2_000_000);
    let target = etcd.client_url.trim_start_matches("http://").to_string();
    let proxy = Proxy::start(&target, Fault::CutAfter(600_000), "http");
    let r = run(&mut save_cmd(
        &[format!("--endpoints={}", proxy.url)],
        dir.path(),
        &key.recipient,
    ));
    assert!(proxy.forwarded() >= 600_000, "the cut happened mid-stream");
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("snapshot stream"), "{}", r.stderr);
    assert_nothing_kept(dir.path());
}

/// A save whose etcd stream stalls after 600 kB, returned once its `.part` object exists.
fn save_stalled_mid_stream(
    dir: &std::path::Path,
    key: &crate::harness::AgeKey,
    stderr: Stdio,
) -> (EtcdProcess, Proxy, std::process::Child) {
    let etcd = EtcdProcess::start(Version::V35, None);
    fill(&etcd, 2_000_000);
    let target = etcd.client_url.trim_start_matches("http://").to_string();
    let proxy = Proxy::start(&target, Fault::StallAfter(600_000), "http");
    let child = save_cmd(&[format!("--endpoints={}", proxy.url)], dir, &key.recipient)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(proxy.forwarded() >= 600_000
        && files_in(&dir.join("b"))
            .iter()
            .any(|f| f.ends_with(".part")))
    {
        assert!(Instant::now() < deadline, "save never reached the stall");
        std::thread::sleep(Duration::from_millis(50));
    }
    (etcd, proxy, child)
}

#[test]
fn a_killed_save_leaves_leftovers_that_the_next_run_cleans() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "k");
    let (etcd, _proxy, mut child) = save_stalled_mid_stream(dir.path(), &key, Stdio::null());
    run_ok(Command::new("kill").arg("-9").arg(child.id().to_string()));
    let _ = child.wait();
    assert!(
        files_in(&dir.path().join("b"))
            .iter()
            .any(|f| f.ends_with(".part")),
        "a partial object was left"
    );
    assert!(
        files_in(&dir.path().join("w")).is_empty(),
        "a backup writes no local copy"
    );

    let listed = run(lifeboat()
        .args(["snapshot", "list", "-w", "json", "--dest"])
        .arg(dir.path().join("b")))
    .ok()
    .json();
    assert_eq!(
        listed.as_array().unwrap().len(),
        0,
        "nothing half-written is listed"
    );

    let m = run(save_cmd(&etcd.lifeboat_flags(), dir.path(), &key.recipient).args(["-w", "json"]))
        .ok()
        .json();
    let id = m["id"].as_str().unwrap();
    assert_eq!(
        files_in(&dir.path().join("b")),
        vec![
            m["object"]["key"].as_str().unwrap().to_string(),
            format!("{id}.manifest.json"),
            format!("{id}.manifest.json.minisig")
        ]
    );
}

#[test]
fn recipients_missing_wrong_or_private_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdProcess::start(Version::V35, None);
    let key = age_key(dir.path(), "k");
    let mut none = lifeboat();
    none.args(["snapshot", "save"])
        .args(etcd.lifeboat_flags())
        .arg("--dest")
        .arg(dir.path().join("b"));
    let r = run(&mut none);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("backup.recipients"), "{}", r.stderr);

    let r = run(&mut save_cmd(
        &etcd.lifeboat_flags(),
        dir.path(),
        "age1notakey",
    ));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("age1notakey"), "{}", r.stderr);

    let secret = std::fs::read_to_string(&key.identity_file).unwrap();
    let secret = secret
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    let r = run(&mut save_cmd(&etcd.lifeboat_flags(), dir.path(), secret));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("private age identity"), "{}", r.stderr);
    assert!(
        !r.stderr.contains(&secret[20..]),
        "the key must never be printed"
    );
    assert!(files_in(&dir.path().join("b")).is_empty());
}

/// One good backup, for the read-back failures.
struct Saved {
    dir: tempfile::TempDir,
    key: crate::harness::AgeKey,
    manifest: serde_json::Value,
    _etcd: EtcdProcess,
}

impl Saved {
    fn new() -> Saved {
        let dir = tempfile::tempdir().unwrap();
        let key = age_key(dir.path(), "k");
        let etcd = EtcdProcess::start(Version::V35, None);
        fill(&etcd, 200_000);
        let manifest =
            run(save_cmd(&etcd.lifeboat_flags(), dir.path(), &key.recipient).args(["-w", "json"]))
                .ok()
                .json();
        Saved {
            dir,
            key,
            manifest,
            _etcd: etcd,
        }
    }

    fn object(&self) -> std::path::PathBuf {
        self.dir
            .path()
            .join("b")
            .join(self.manifest["object"]["key"].as_str().unwrap())
    }

    fn verify(&self, identity: &Path) -> crate::harness::Run {
        run(&mut crate::harness::verify_latest(
            &self.dir.path().join("b"),
            identity,
        ))
    }

    fn get(&self, identity: &Path, out: &Path) -> crate::harness::Run {
        run(lifeboat()
            .args(["snapshot", "get", "latest", "--dest"])
            .arg(self.dir.path().join("b"))
            .arg("--identity")
            .arg(identity)
            .arg("-o")
            .arg(out))
    }
}

#[test]
fn wrong_or_unreadable_identities_exit_6() {
    let s = Saved::new();
    let other = age_key(s.dir.path(), "other");
    let r = s.verify(&other.identity_file);
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot decrypt") && r.stderr.contains(&s.key.recipient),
        "{}",
        r.stderr
    );
    let out = s.dir.path().join("out.db");
    let r = s.get(&other.identity_file, &out);
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(!out.exists() && !s.dir.path().join("out.db.part").exists());
    let r = s.verify(Path::new("/nonexistent/key.txt"));
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(r.stderr.contains("/nonexistent/key.txt"), "{}", r.stderr);
    let r = run(lifeboat()
        .args(["snapshot", "verify", "latest", "--dest"])
        .arg(s.dir.path().join("b")));
    assert_eq!(r.code, 6, "no identity: {}", r.stderr);
    assert!(r.stderr.contains("--identity"), "{}", r.stderr);
}

#[test]
fn a_truncated_object_fails_verification_naming_it() {
    let s = Saved::new();
    let obj = s.object();
    let len = std::fs::metadata(&obj).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&obj).unwrap();
    f.set_len(len / 2).unwrap();
    let r = s.verify(&s.key.identity_file);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(s.manifest["object"]["key"].as_str().unwrap()),
        "{}",
        r.stderr
    );
    let out = s.dir.path().join("out.db");
    assert_eq!(s.get(&s.key.identity_file, &out).code, 4);
    assert!(!out.exists(), "nothing is written under the output name");
}

#[test]
fn a_bit_flip_in_the_object_fails_verification() {
    let s = Saved::new();
    let obj = s.object();
    let mut bytes = std::fs::read(&obj).unwrap();
    let at = bytes.len() * 2 / 3;
    bytes[at] ^= 0x10;
    std::fs::write(&obj, bytes).unwrap();
    let r = s.verify(&s.key.identity_file);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(s.manifest["object"]["key"].as_str().unwrap()),
        "{}",
        r.stderr
    );
}

#[test]
fn a_manifest_whose_object_is_missing_fails_verification() {
    let s = Saved::new();
    std::fs::remove_file(s.object()).unwrap();
    let r = s.verify(&s.key.identity_file);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
}

#[test]
fn an_object_without_manifest_is_not_a_backup() {
    let s = Saved::new();
    let id = s.manifest["id"].as_str().unwrap();
    std::fs::remove_file(s.dir.path().join("b").join(format!("{id}.manifest.json"))).unwrap();
    let listed = run(lifeboat()
        .args(["snapshot", "list", "-w", "json", "--dest"])
        .arg(s.dir.path().join("b")))
    .ok()
    .json();
    assert_eq!(listed.as_array().unwrap().len(), 0);
    let r = s.verify(&s.key.identity_file);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(r.stderr.contains("no backup"), "{}", r.stderr);
}

#[test]
fn corrupt_plain_files_given_to_status_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0xA5u8; 64 * 1024]).unwrap();
    let r = run(lifeboat().args(["snapshot", "status"]).arg(&garbage));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("garbage.db"), "{}", r.stderr);

    let etcd = EtcdProcess::start(Version::V35, None);
    fill(&etcd, 100_000);
    let good = dir.path().join("good.db");
    run_ok(etcd.etcdctl().args(["snapshot", "save"]).arg(&good));
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let r = run(lifeboat().args(["snapshot", "status"]).arg(&truncated));
    assert_eq!(r.code, 4, "{}", r.stderr);
    let mut flipped = bytes.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 1;
    let flipped_path = dir.path().join("flipped.db");
    std::fs::write(&flipped_path, flipped).unwrap();
    let r = run(lifeboat().args(["snapshot", "status"]).arg(&flipped_path));
    assert_eq!(r.code, 4, "a flip is caught by the trailer: {}", r.stderr);
    assert!(r.stderr.contains("trailer"), "{}", r.stderr);
    let r = run(lifeboat().args(["snapshot", "status", "/nonexistent/snap.db"]));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("/nonexistent/snap.db"), "{}", r.stderr);
}

/// A small tmpfs, unmounted on drop.
pub struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }

    pub fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path()),
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_backup_disk_fails_cleanly_with_exit_5() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "k");
    let etcd = EtcdProcess::start(Version::V35, None);
    // Incompressible values so the object is as large as the database.
    crate::harness::data::rt().block_on(async {
        let mut c = crate::harness::data::client(&etcd).await;
        for i in 0..40 {
            let v: Vec<u8> = (0..50_000).map(|_| rand::random::<u8>()).collect();
            c.put(format!("/registry/secrets/big/{i}"), v, None)
                .await
                .unwrap();
        }
    });
    let small = Tmpfs::new("512k");
    let r = run(&mut save_cmd_into(
        &etcd.lifeboat_flags(),
        small.0.path(),
        &dir.path().join("w"),
        &key.recipient,
    ));
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.to_lowercase().contains("space"), "{}", r.stderr);
    assert!(
        files_in(small.0.path()).is_empty(),
        "{:?}",
        files_in(small.0.path())
    );
}

/// The checks run in the stream: a work dir with no room at all does not matter to a backup.
#[test]
fn a_work_dir_without_room_does_not_stop_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "k");
    let etcd = EtcdProcess::start(Version::V35, None);
    fill(&etcd, 1_000_000);
    let small = Tmpfs::new("4k");
    let r = run(&mut save_cmd_into(
        &etcd.lifeboat_flags(),
        &dir.path().join("b"),
        small.0.path(),
        &key.recipient,
    ))
    .ok();
    assert!(r.stdout.contains("committed"), "{}", r.stdout);
    assert!(files_in(small.0.path()).is_empty());
    assert_eq!(files_in(&dir.path().join("b")).len(), 3);
}

#[test]
fn a_bad_config_key_is_one_line_naming_it_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[backup]\ndestination = \"/x\"\n").unwrap();
    let r = run(lifeboat()
        .args(["snapshot", "list", "--config"])
        .arg(&config));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("destination"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&config.display().to_string()),
        "names the file: {}",
        r.stderr
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
}

#[test]
fn ctrl_c_during_save_aborts_cleanly_leaving_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "k");
    let (_etcd, _proxy, child) = save_stalled_mid_stream(dir.path(), &key, Stdio::piped());
    run_ok(Command::new("kill").arg("-INT").arg(child.id().to_string()));
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "cancelled is a failure, not success"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cancelled"), "{stderr}");
    // Unlike kill -9, nothing is left for the next run to clean.
    assert_nothing_kept(dir.path());
}
