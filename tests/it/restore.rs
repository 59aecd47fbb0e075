//! `lifeboat restore` on fake kubeadm nodes: real etcd 3.4/3.5 run by a stand-in kubelet from
//! the node's static pod manifests, real etcdutl/etcdctl restores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::harness::node::{files_under, FakeNode};
use crate::harness::{age_key, lifeboat, run, AgeKey, Version};

struct Setup {
    node: FakeNode,
    key: AgeKey,
    dest: PathBuf,
    backup: serde_json::Value,
    /// Keys and values at backup time.
    expected: BTreeMap<String, String>,
    _dir: tempfile::TempDir,
}

/// Node with data, one backup, then more writes the restore must undo.
fn setup(version: Version) -> Setup {
    let node = FakeNode::start(version);
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let dest = dir.path().join("backups");
    node.put("/registry/a", "1");
    node.put("/registry/b", "2");
    let backup = save(&node, &key, &dest, dir.path());
    let expected = node.dump();
    node.put("/registry/c", "3");
    node.put("/registry/a", "changed");
    Setup {
        node,
        key,
        dest,
        backup,
        expected,
        _dir: dir,
    }
}

fn save(node: &FakeNode, key: &AgeKey, dest: &Path, work: &Path) -> serde_json::Value {
    node.save(key, dest, &work.join("work"))
}

fn restore_cmd(s: &Setup) -> std::process::Command {
    let mut cmd = s.node.restore();
    cmd.arg("latest")
        .arg("--dest")
        .arg(&s.dest)
        .arg("--identity")
        .arg(&s.key.identity_file);
    cmd
}

/// Everything a restore may change on the node, for "nothing changed" assertions.
struct NodeState {
    manifests: BTreeMap<String, Vec<u8>>,
    data_dir_inode: u64,
    journal: bool,
    siblings: usize,
}

fn node_state(node: &FakeNode) -> NodeState {
    use std::os::unix::fs::MetadataExt;
    NodeState {
        manifests: node.manifests(),
        data_dir_inode: std::fs::metadata(&node.data_dir).unwrap().ino(),
        journal: node.journal().exists(),
        siblings: node.siblings_of_data_dir("").len(),
    }
}

fn assert_unchanged(node: &FakeNode, before: &NodeState) {
    let now = node_state(node);
    assert_eq!(now.manifests, before.manifests, "manifests changed");
    assert_eq!(
        now.data_dir_inode, before.data_dir_inode,
        "data dir replaced"
    );
    assert!(!now.journal, "a journal was left behind");
    assert_eq!(
        now.siblings, before.siblings,
        "something was created beside the data dir"
    );
}

#[test]
fn etcdutl_restore_brings_back_the_backup_with_a_bumped_revision() {
    let s = setup(Version::V35);
    let manifests_before = s.node.manifests();
    let r = run(restore_cmd(&s).args(["--yes", "--force", "-w", "json"])).ok();
    assert!(r.stderr.contains("==> stop-control-plane"), "{}", r.stderr);
    assert!(
        r.stderr.contains("the API server is ready"),
        "the stand-in API server's /readyz was awaited: {}",
        r.stderr
    );
    s.node.wait_healthy();
    assert_eq!(
        s.node.dump(),
        s.expected,
        "exactly the backup's keys and values"
    );
    let backup_rev = s.backup["revision"].as_i64().unwrap();
    assert!(
        s.node.revision() >= backup_rev + 1_000_000_000,
        "revision {} not bumped past {backup_rev} + 1e9",
        s.node.revision()
    );
    assert_eq!(
        s.node.manifests(),
        manifests_before,
        "manifests back byte for byte"
    );
    assert!(!s.node.journal().exists(), "journal closed");
    let aside = s.node.siblings_of_data_dir("lifeboat-2");
    assert_eq!(aside.len(), 1, "old data dir kept aside: {aside:?}");
    assert!(aside[0].join("member/snap/db").exists());
    let runs = crate::harness::files_in(&s.node.state_dir.join("restore"));
    let run_dir = s
        .node
        .state_dir
        .join("restore")
        .join(runs.iter().find(|r| r.starts_with("20")).unwrap());
    assert!(!run_dir.join("snapshot.db").exists(), "plain copy removed");
    assert!(
        run_dir.join("journal.json").exists(),
        "journal kept for the record"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&s.node.data_dir)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let out: serde_json::Value = serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
    assert!(out["next_steps"].as_array().unwrap().len() >= 2);
}

#[test]
fn etcdctl_34_restore_keeps_the_backup_revision() {
    let s = setup(Version::V34);
    let r = run(restore_cmd(&s).args(["--yes", "--force"])).ok();
    assert!(
        r.stdout.contains("cannot bump") || r.stdout.contains("not bumped"),
        "{}",
        r.stdout
    );
    s.node.wait_healthy();
    assert_eq!(s.node.dump(), s.expected);
    assert_eq!(s.node.revision(), s.backup["revision"].as_i64().unwrap());
}

#[test]
fn a_plain_snapshot_file_is_restored_with_and_without_trailer() {
    let s = setup(Version::V35);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.db");
    crate::harness::run_ok(s.node.etcdctl().arg("snapshot").arg("save").arg(&file));
    let expected = s.node.dump();
    s.node.put("/registry/after-file", "x");
    run(s.node.restore().arg(&file).args(["--yes", "--force"])).ok();
    s.node.wait_healthy();
    assert_eq!(s.node.dump(), expected);
    // A copy of member/snap/db has no trailer: etcdutl gets --skip-hash-check (as every
    // restore now: the fetch checks the file itself).
    let no_trailer = dir.path().join("db-copy");
    let aside = s.node.siblings_of_data_dir("lifeboat-2");
    std::fs::copy(aside[0].join("member/snap/db"), &no_trailer).unwrap();
    let r = run(s.node.restore().arg(&no_trailer).args(["--yes", "--force"])).ok();
    assert!(r.stdout.contains("--skip-hash-check"), "{}", r.stdout);
    s.node.wait_healthy();
    assert!(
        s.node.dump().contains_key("/registry/c"),
        "data of the db copy"
    );
}

#[test]
fn without_yes_or_with_dry_run_nothing_changes() {
    let s = setup(Version::V35);
    let before = node_state(&s.node);
    let r = run(restore_cmd(&s).arg("--force"));
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(r.stdout.contains("Restore plan"), "{}", r.stdout);
    assert!(r.stderr.contains("--yes"), "{}", r.stderr);
    assert_unchanged(&s.node, &before);
    let r = run(restore_cmd(&s).args(["--force", "--dry-run", "-w", "json"])).ok();
    let plan = r.json();
    assert_eq!(plan["carried_out"], false);
    assert_eq!(plan["plan"]["static_pods"][0], "etcd.yaml");
    assert_unchanged(&s.node, &before);
}

#[test]
fn a_running_etcd_is_not_touched_without_force() {
    let s = setup(Version::V35);
    let before = node_state(&s.node);
    let r = run(restore_cmd(&s).arg("--yes"));
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(
        r.stderr.contains("etcd is running") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert_unchanged(&s.node, &before);
    assert!(s.node.dump().contains_key("/registry/c"));
}

#[test]
fn a_bad_backup_or_a_wrong_identity_changes_nothing() {
    let s = setup(Version::V35);
    let before = node_state(&s.node);
    let dir = tempfile::tempdir().unwrap();
    let other = age_key(dir.path(), "other.txt");
    let mut cmd = s.node.restore();
    cmd.arg("latest")
        .arg("--dest")
        .arg(&s.dest)
        .arg("--identity")
        .arg(&other.identity_file)
        .args(["--yes", "--force"]);
    let r = run(&mut cmd);
    assert_eq!(r.code, 6, "wrong identity: {}", r.stderr);
    assert_unchanged(&s.node, &before);

    let object = s.dest.join(s.backup["object"]["key"].as_str().unwrap());
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&object, bytes).unwrap();
    let r = run(restore_cmd(&s).args(["--yes", "--force"]));
    assert_eq!(r.code, 4, "tampered backup: {}", r.stderr);
    assert_unchanged(&s.node, &before);
    assert!(
        s.node.dump().contains_key("/registry/c"),
        "etcd still serves the newer data"
    );
}

#[test]
fn an_unfinished_journal_blocks_a_new_restore() {
    let s = setup(Version::V35);
    let r = run(restore_cmd(&s)
        .args(["--yes", "--force"])
        .env("LIFEBOAT_TEST_CRASH_AT", "move-data-dir"));
    assert_eq!(r.code, 86, "{}", r.stderr);
    let manifests = s.node.manifests();
    let journal = std::fs::read(s.node.journal()).unwrap();
    let r = run(restore_cmd(&s).args(["--yes", "--force"]));
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(
        r.stderr.contains("--resume") && r.stderr.contains("--rollback"),
        "{}",
        r.stderr
    );
    assert_eq!(s.node.manifests(), manifests);
    assert_eq!(std::fs::read(s.node.journal()).unwrap(), journal);
    run(s.node.restore().arg("--resume")).ok();
    s.node.wait_healthy();
    assert_eq!(s.node.dump(), s.expected);
}

/// Crash (the process exits without cleanup) at `point`, then `--resume` finishes the restore.
fn crash_then_resume(point: &str) {
    let s = setup(Version::V35);
    let r = run(restore_cmd(&s)
        .args(["--yes", "--force"])
        .env("LIFEBOAT_TEST_CRASH_AT", point));
    assert_eq!(r.code, 86, "did not crash at {point}: {}", r.stderr);
    let mut resume = s.node.restore();
    resume.arg("--resume");
    if point.starts_with("fetch") {
        resume
            .arg("--dest")
            .arg(&s.dest)
            .arg("--identity")
            .arg(&s.key.identity_file);
    }
    run(&mut resume).ok();
    s.node.wait_healthy();
    assert_eq!(
        s.node.dump(),
        s.expected,
        "after crash at {point} and resume"
    );
    assert!(!s.node.journal().exists());
}

/// Crash at `point`, then `--rollback` returns the node to its state before the restore: the
/// manifests byte for byte, and the data dir exactly as etcd left it when stopped.
fn crash_then_rollback(point: &str) {
    let s = setup(Version::V35);
    let manifests = s.node.manifests();
    let r = run(restore_cmd(&s)
        .args(["--yes", "--force"])
        .env("LIFEBOAT_TEST_CRASH_AT", point));
    assert_eq!(r.code, 86, "did not crash at {point}: {}", r.stderr);
    if !s.node.etcd_manifest().exists() {
        wait_until_stopped(&s.node);
    }
    // The pre-restore data dir, as etcd left it: still in place, or moved aside.
    let aside = s.node.siblings_of_data_dir("lifeboat-2");
    let original = match aside.first() {
        Some(dir) => Some(files_under(dir)),
        None if !s.node.kubelet.running().contains(&"etcd.yaml".to_string()) => {
            Some(files_under(&s.node.data_dir))
        }
        None => None, // etcd still runs on it: compare the data instead
    };
    // Keep etcd from starting again so the bytes can be compared; stopping still works.
    s.node.kubelet.hold(true);
    run(s.node.restore().args(["--rollback", "--no-wait"])).ok();
    assert_eq!(
        s.node.manifests(),
        manifests,
        "manifests after rollback from {point}"
    );
    if let Some(original) = original {
        assert!(
            files_under(&s.node.data_dir) == original,
            "data dir not byte-identical after rollback from {point}"
        );
    }
    assert!(!s.node.journal().exists());
    s.node.kubelet.hold(false);
    s.node.wait_healthy();
    let data = s.node.dump();
    assert_eq!(data.get("/registry/a").map(String::as_str), Some("changed"));
    assert!(data.contains_key("/registry/c"), "the newer data is back");
}

fn wait_until_stopped(node: &FakeNode) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while node.kubelet.running().contains(&"etcd.yaml".to_string()) {
        assert!(std::time::Instant::now() < deadline, "etcd never stopped");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

macro_rules! crash_tests {
    ($($name:ident: $point:expr,)*) => {
        mod crash_resume {
            $( #[test] fn $name() { super::crash_then_resume($point); } )*
        }
        mod crash_rollback {
            $( #[test] fn $name() { super::crash_then_rollback($point); } )*
        }
    };
}

/// etcd's tool is told to skip its own hash of the staged snapshot (the fetch checked it), so a
/// resumed run checks the file again before the tool reads it: a changed file is refused.
#[test]
fn a_staged_snapshot_changed_before_a_resume_is_refused() {
    let s = setup(Version::V35);
    let r = run(restore_cmd(&s)
        .args(["--yes", "--force"])
        .env("LIFEBOAT_TEST_CRASH_AT", "restore:before"));
    assert_eq!(r.code, 86, "did not crash: {}", r.stderr);
    let staged = files_under(&s.node.state_dir)
        .into_keys()
        .map(|f| s.node.state_dir.join(f))
        .find(|p| p.file_name().is_some_and(|n| n == "snapshot.db"))
        .expect("the staged snapshot");
    // Inside a value, where etcd's tool would notice nothing.
    let mut bytes = std::fs::read(&staged).unwrap();
    // The value "2" of /registry/b: mvccpb.KeyValue field 5, length 1, after the key.
    let key_at = bytes
        .windows(11)
        .position(|w| w == b"/registry/b")
        .expect("the key /registry/b");
    let at = key_at
        + bytes[key_at..]
            .windows(3)
            .position(|w| w == [0x2a, 0x01, b'2'])
            .expect("its value")
        + 2;
    bytes[at] = b'7';
    std::fs::write(&staged, &bytes).unwrap();
    let r = run(s.node.restore().arg("--resume"));
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stderr.contains("snapshot.db"), "{}", r.stderr);
    assert!(
        !s.node.data_dir.join("member").exists(),
        "etcd's tool never ran"
    );
    run(s.node.restore().arg("--rollback")).ok();
    s.node.wait_healthy();
}

crash_tests! {
    fetch_before: "fetch:before",
    fetch: "fetch",
    stop_midway: "stop-control-plane:midway",
    stop: "stop-control-plane",
    move_data_dir: "move-data-dir",
    restore: "restore",
    restore_before: "restore:before",
    start_etcd: "start-etcd",
    start_control_plane: "start-control-plane",
    finish: "finish",
}

#[test]
fn three_members_restored_from_one_backup_form_a_healthy_cluster() {
    let nodes = FakeNode::cluster(Version::V35, 3);
    for n in &nodes {
        n.wait_healthy();
    }
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let dest = dir.path().join("backups");
    nodes[0].put("/registry/ha", "before");
    let backup = save(&nodes[1], &key, &dest, dir.path());
    let expected = nodes[0].dump();
    nodes[0].put("/registry/ha", "after");
    let initial_cluster = nodes
        .iter()
        .map(|n| format!("{}={}", n.name, n.peer_url))
        .collect::<Vec<_>>()
        .join(",");
    for n in &nodes {
        run(n
            .restore()
            .arg(backup["id"].as_str().unwrap())
            .arg("--dest")
            .arg(&dest)
            .arg("--identity")
            .arg(&key.identity_file)
            .args(["--initial-cluster", &initial_cluster, "--yes", "--force"]))
        .ok();
    }
    for n in &nodes {
        n.wait_healthy();
    }
    let out = crate::harness::run_ok(nodes[2].etcdctl().args(["member", "list", "-w", "json"]));
    let members: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(members["members"].as_array().unwrap().len(), 3);
    for n in &nodes {
        assert_eq!(n.dump(), expected, "data on {}", n.name);
    }
    nodes[2].put("/registry/new", "writes work");
}

#[test]
fn detach_runs_the_restore_in_its_own_session_and_logs_to_the_state_dir() {
    let s = setup(Version::V35);
    let r = run(restore_cmd(&s).args(["--yes", "--force", "--detach"])).ok();
    assert!(r.stdout.contains("detached as pid"), "{}", r.stdout);
    let log = PathBuf::from(
        r.stdout
            .lines()
            .find_map(|l| l.split("log: ").nth(1))
            .unwrap()
            .trim(),
    );
    assert!(log.starts_with(&s.node.state_dir));
    let pid: u32 = r
        .stdout
        .split("pid ")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .unwrap()
        .parse()
        .unwrap();
    // The detached restore is ours: stopped by PID if the test ends before it does.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    let _guard = KillOnDrop(pid);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("restored ")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    s.node.wait_healthy();
    assert_eq!(s.node.dump(), s.expected);
    assert!(!s.node.journal().exists());
}

#[test]
fn a_backup_of_another_cluster_is_flagged_and_too_little_disk_is_refused() {
    let s = setup(Version::V35);
    let other = FakeNode::start(Version::V35);
    let mut cmd = other.restore();
    cmd.arg("latest")
        .arg("--dest")
        .arg(&s.dest)
        .arg("--identity")
        .arg(&s.key.identity_file)
        .args(["--force", "--dry-run"]);
    let r = run(&mut cmd).ok();
    assert!(
        r.stdout.contains("WARNING") && r.stdout.contains("is from cluster"),
        "{}",
        r.stdout
    );
    // A state dir on a 1 MiB tmpfs cannot hold the snapshot copy and its slack.
    let before = node_state(&s.node);
    let tmpfs = crate::failures::Tmpfs::new("1m");
    let mut cmd = s.node.restore_in(tmpfs.path());
    cmd.arg("latest")
        .arg("--dest")
        .arg(&s.dest)
        .arg("--identity")
        .arg(&s.key.identity_file)
        .args(["--force", "--yes"]);
    let r = run(&mut cmd);
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(r.stderr.contains("not enough disk"), "{}", r.stderr);
    assert_unchanged(&s.node, &before);
}

/// #11: a newer backup signed by another key (as anyone with write access to the store could
/// make) is never restored: `latest` is the newest trusted one, and naming it is refused.
#[test]
fn a_backup_signed_by_another_key_is_never_restored() {
    let s = setup(Version::V35);
    let dir = tempfile::tempdir().unwrap();
    let attacker = dir.path().join("attacker.key");
    run(lifeboat()
        .args(["signing-key", "generate", "-o"])
        .arg(&attacker))
    .ok();
    s.node
        .put("/registry/clusterrolebindings/evil", "cluster-admin");
    let forged = run(lifeboat()
        .args(["snapshot", "save", "-w", "json", "-r", &s.key.recipient])
        .arg("--etcd-manifest")
        .arg(s.node.etcd_manifest())
        .arg("--dest")
        .arg(&s.dest)
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .arg("--signing-key")
        .arg(&attacker))
    .ok()
    .json();
    let before = node_state(&s.node);
    let mut cmd = s.node.restore();
    cmd.arg(forged["id"].as_str().unwrap())
        .arg("--dest")
        .arg(&s.dest)
        .arg("--identity")
        .arg(&s.key.identity_file)
        .args(["--yes", "--force"]);
    let r = run(&mut cmd);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("not trusted"), "{}", r.stderr);
    assert_unchanged(&s.node, &before);
    // `latest` is not quietly the older genuine backup while a newer manifest is untrusted
    // (#21); told to, it is.
    let refused = run(restore_cmd(&s).args(["--force", "--dry-run", "-w", "json"]));
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(forged["id"].as_str().unwrap()),
        "{}",
        refused.stderr
    );
    let plan = run(restore_cmd(&s).args(["--force", "--dry-run", "-w", "json", "--accept-older"]))
        .ok()
        .json();
    assert!(
        plan.to_string().contains(s.backup["id"].as_str().unwrap()),
        "latest is the genuine backup: {plan}"
    );
    assert!(!plan.to_string().contains(forged["id"].as_str().unwrap()));
}
