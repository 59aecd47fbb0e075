//! `lifeboat recover` (#24) against a real three-member etcd 3.5 cluster on kubeadm-shaped
//! nodes, with `serve --continuous` capturing it: two members die with their data, the
//! survivor's data is older than the journal, and recover brings back every revision the
//! journal holds; a survivor ahead of the journal is the base with nothing replayed; a damaged
//! survivor is refused by the walk and the next freshest source used; a survivor that
//! disagrees with a journal checkpoint stops everything (exit 4) with nothing touched.
//! One cluster serves all four: the dry runs change nothing, and the real run comes last.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::journal::capturing;
use crate::harness::node::{files_under, FakeNode};
use crate::harness::serve::{wait_until, Serve};
use crate::harness::{age_key, etcd_bin, etcdutl_bin, lifeboat, run, run_ok, AgeKey, Run, Version};

/// Every key at `rev` as etcdctl prints it (key, value, create and mod revision, version,
/// lease), through `node`.
fn kvs_at(node: &FakeNode, rev: i64) -> serde_json::Value {
    let out =
        run_ok(
            node.etcdctl()
                .args(["get", "", "--prefix", &format!("--rev={rev}"), "-w", "json"]),
        );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["kvs"].clone()
}

fn lease_grant(node: &FakeNode, ttl: u32) -> String {
    let out = run_ok(node.etcdctl().args(["lease", "grant", &ttl.to_string()]));
    // "lease 694d7f4b0b1d3f0a granted with TTL(600s)"
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

/// `n` puts through `node` (every fifth on `lease`), values unique across the test.
fn write(node: &FakeNode, from: usize, n: usize, lease: &str) {
    for i in from..from + n {
        let key = format!("/registry/recover/k{}", i % 25);
        let value = format!("value-{i:05}");
        let mut cmd = node.etcdctl();
        cmd.args(["put", &key, &value]);
        if i % 5 == 0 {
            cmd.arg(format!("--lease={lease}"));
        }
        run_ok(&mut cmd);
    }
}

fn journal_newest(dest: &Path) -> i64 {
    let out = run_ok(
        lifeboat()
            .args(["continuous", "status", "-w", "json", "--dest"])
            .arg(dest),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["newest_rev"].as_i64().unwrap_or(0)
}

struct Ground {
    dest: PathBuf,
    key: AgeKey,
    work: PathBuf,
}

/// `lifeboat recover` on `node` against the journal.
fn recover(node: &FakeNode, g: &Ground, extra: &[&str]) -> Run {
    recover_with(lifeboat(), node, g, extra)
}

fn recover_with(mut cmd: Command, node: &FakeNode, g: &Ground, extra: &[&str]) -> Run {
    add_recover_args(&mut cmd, node, g);
    run(cmd.args(extra))
}

fn recover_cmd(node: &FakeNode, g: &Ground) -> Command {
    let mut cmd = lifeboat();
    add_recover_args(&mut cmd, node, g);
    cmd
}

fn add_recover_args(cmd: &mut Command, node: &FakeNode, g: &Ground) {
    cmd.arg("recover")
        .arg("--manifests-dir")
        .arg(&node.manifests_dir)
        .arg("--state-dir")
        .arg(&node.state_dir)
        .arg("--etcdutl")
        .arg(etcdutl_bin())
        .arg("--etcd")
        .arg(etcd_bin(Version::V35))
        .arg("--work-dir")
        .arg(&g.work)
        .arg("--dest")
        .arg(&g.dest)
        .arg("--identity")
        .arg(&g.key.identity_file)
        .args(["--stop-timeout", "30s", "--start-timeout", "60s"]);
}

/// Copies `db` to `to` with every occurrence of `needle` changed by `change` (applied at the
/// offset of each occurrence): old copies of a page that bbolt freed hold the same bytes, so
/// all of them are changed to be sure the live one is.
fn damaged_copy(db: &Path, to: &Path, needle: &[u8], change: impl Fn(&mut Vec<u8>, usize)) {
    let mut bytes = std::fs::read(db).unwrap();
    let hits: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert!(
        !hits.is_empty(),
        "{} not in {}",
        String::from_utf8_lossy(needle),
        db.display()
    );
    for at in hits {
        change(&mut bytes, at);
    }
    std::fs::write(to, bytes).unwrap();
}

/// A three-member cluster captured by `serve --continuous` (through the second member): a
/// full backup, writes, the first member (the survivor) killed, more writes the journal holds
/// and the survivor never saw; the capture stopped.
struct Lost {
    nodes: Vec<FakeNode>,
    dir: tempfile::TempDir,
    g: Ground,
    lease: String,
    /// The writer's last revision.
    written: i64,
    /// The journal's newest durable revision, and every key there.
    newest: i64,
    expected: serde_json::Value,
}

fn survivor_behind_the_journal() -> Lost {
    let nodes = FakeNode::cluster(Version::V35, 3);
    let (survivor, writer, third) = (&nodes[0], &nodes[1], &nodes[2]);
    let dir = tempfile::tempdir().unwrap();
    let g = Ground {
        dest: dir.path().join("b"),
        key: age_key(dir.path(), "key.txt"),
        work: dir.path().join("w"),
    };
    let lease = lease_grant(writer, 600);
    write(writer, 0, 20, &lease);
    // Continuous backup through the writer's member: its first full backup, then the journal.
    let mut cmd = capturing(dir.path(), &g.key, &g.dest.display().to_string());
    cmd.arg("--etcd-manifest").arg(writer.etcd_manifest());
    let mut serve = Serve::start(cmd, dir.path().join("serve.log"));
    wait_until("the first full backup", Duration::from_secs(60), || {
        serve.metric("lifeboat_backups_total") >= 1.0
    });
    write(writer, 20, 20, &lease);
    // The survivor stops first (a hard kill); the cluster goes on without it.
    survivor
        .kubelet
        .kill_until_moved("etcd.yaml", survivor.etcd_manifest());
    // It may have been the leader: the other two elect one first.
    writer.wait_healthy();
    third.wait_healthy();
    write(writer, 40, 40, &lease);
    let written = writer.revision();
    wait_until(
        "the journal has every write",
        Duration::from_secs(60),
        || serve.metric("lifeboat_continuous_last_revision") >= written as f64,
    );
    serve.stop(Duration::from_secs(30));
    let newest = journal_newest(&g.dest);
    assert!(newest >= written, "journal {newest} < written {written}");
    let expected = kvs_at(writer, newest);
    drop(serve);
    Lost {
        nodes,
        dir,
        g,
        lease,
        written,
        newest,
        expected,
    }
}

/// The two members still up die (SIGKILL) and their data is lost.
fn lose_the_others(nodes: &[FakeNode]) {
    for n in &nodes[1..] {
        n.kubelet.kill_until_moved("etcd.yaml", n.etcd_manifest());
    }
    for n in &nodes[1..] {
        std::fs::remove_dir_all(n.data_dir.join("member")).unwrap();
    }
}

#[test]
fn quorum_lost_the_freshest_survivor_is_topped_up_from_the_journal() {
    let lost = survivor_behind_the_journal();
    let (g, dir, lease) = (&lost.g, &lost.dir, &lost.lease);
    let (written, newest, expected) = (lost.written, lost.newest, &lost.expected);
    let (survivor, writer) = (&lost.nodes[0], &lost.nodes[1]);
    // Writes the journal never saw (capture stopped), on the two members still up.
    write(writer, 80, 5, lease);
    // A defragmentation commits etcd's pending batch, so the file copied after the kill holds
    // every write (otherwise up to 100 ms of them live only in the WAL).
    run_ok(writer.etcdctl().arg("defrag"));
    let ahead = writer.revision();
    // The other two die with their data; a copy of one's file is kept (taken after the kill).
    writer
        .kubelet
        .kill_until_moved("etcd.yaml", writer.etcd_manifest());
    let copy = dir.path().join("cp2.db");
    std::fs::copy(writer.data_dir.join("member/snap/db"), &copy).unwrap();
    lose_the_others(&lost.nodes);
    let untouched = (
        files_under(&survivor.manifests_dir),
        files_under(&survivor.data_dir),
    );

    // A survivor ahead of the journal is the base; nothing is replayed, and the plan says so.
    let r = recover(
        survivor,
        g,
        &["--dry-run", "--member-data", copy.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "base        survivor {} (revision {ahead})",
            copy.display()
        )),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(
            "replay      nothing: the base is at or past the journal's newest durable revision"
        ),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("equals the journal's checkpoint"),
        "{}",
        r.stdout
    );
    // The other nodes could not build that state from the journal: --cluster says what to do.
    let r = recover(
        survivor,
        g,
        &[
            "--dry-run",
            "--cluster",
            "--member-data",
            copy.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 8, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!("--to-revision {newest}")),
        "{}",
        r.stderr
    );

    // A flipped byte in a leaf page's header: refused by the walk, named; the next freshest
    // source (this node's own data, topped up from the journal) is used.
    let flipped = dir.path().join("flipped.db");
    damaged_copy(&copy, &flipped, b"value-00003", |b, at| {
        let page = at / 4096 * 4096;
        b[page] ^= 0x40; // the page's own id
    });
    let r = recover(
        survivor,
        g,
        &[
            "--dry-run",
            "-w",
            "json",
            "--member-data",
            flipped.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let plan = &r.json()["plan"];
    assert_eq!(
        plan["survivors"][1]["examined"]["verdict"], "refused",
        "{plan}"
    );
    let why = plan["survivors"][1]["examined"]["why"].as_str().unwrap();
    assert!(
        why.contains("fails the bbolt walk") && why.contains("flipped.db"),
        "{why}"
    );
    assert_eq!(plan["base"]["kind"], "survivor", "{plan}");
    assert_eq!(plan["base"]["index"], 0, "{plan}");
    assert_eq!(plan["target"], newest, "{plan}");
    // The survivor alone would lose writes: the journal tops it up.
    let base_rev = plan["base_rev"].as_i64().unwrap();
    assert!(base_rev < written, "the survivor holds every write: {plan}");
    assert_eq!(plan["replay"]["from_rev"], base_rev, "{plan}");
    // An earlier point is asked for: the replay stops there.
    let to = (base_rev + newest) / 2;
    let r = recover(
        survivor,
        g,
        &["--dry-run", "-w", "json", &format!("--to-revision={to}")],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let plan = &r.json()["plan"];
    assert_eq!(plan["target"], to, "{plan}");
    assert_eq!(plan["replay"]["to_rev"], to, "{plan}");

    // A value changed inside a leaf (the walk passes): the survivor's HashKV disagrees with
    // the journal's checkpoint — exit 4, nothing on the node touched.
    let forged = dir.path().join("forged.db");
    damaged_copy(&copy, &forged, b"value-00003", |b, at| b[at + 6] = b'9');
    let r = recover(
        survivor,
        g,
        &["--yes", "--member-data", forged.to_str().unwrap()],
    );
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("disagree") && r.stderr.contains("the journal's checkpoint says"),
        "{}",
        r.stderr
    );
    assert_eq!(
        (
            files_under(&survivor.manifests_dir),
            files_under(&survivor.data_dir)
        ),
        untouched
    );
    assert!(!survivor.journal().exists());

    // The recovery: this node's data (older than the journal) topped up to the journal's
    // newest durable revision. Killed once it moved the data dir aside, it rolls back to the
    // node as it was; killed before etcd starts again, `--resume` finishes it.
    let crash = |point: &str| {
        let mut cmd = lifeboat();
        cmd.env("LIFEBOAT_TEST_CRASH_AT", point);
        let r = recover_with(
            cmd,
            survivor,
            g,
            &["--yes", "--force", "--bump-revision", "0"],
        );
        assert_eq!(r.code, 86, "{}\n{}", r.stdout, r.stderr);
        r
    };
    let r = crash("move-data-dir");
    assert!(
        r.stdout.contains(&format!(
            "at revision {newest} (base survivor {}",
            survivor.data_dir.display()
        )),
        "{}",
        r.stdout
    );
    // A new run is refused while that one is unfinished, naming how to finish or undo it.
    let r = recover(survivor, g, &["--yes", "--force"]);
    assert_eq!(r.code, 8, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("`lifeboat recover --resume`")
            && r.stderr.contains("`lifeboat recover --rollback`"),
        "{}",
        r.stderr
    );
    // Back as it was: the old member runs again on its own data (without quorum).
    let r = run(recover_cmd(survivor, g).arg("--rollback"));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(files_under(&survivor.manifests_dir), untouched.0);
    assert!(survivor.siblings_of_data_dir("lifeboat-").is_empty());
    // Its etcd runs: refused without --force; with it, a copy of its file is read as it stands
    // (a restarted member applies its WAL's committed entries: the live file can move on).
    let r = recover(survivor, g, &["--yes"]);
    assert_eq!(r.code, 8, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("etcd still runs on this node"),
        "{}",
        r.stderr
    );
    let r = recover(survivor, g, &["--dry-run", "--force", "-w", "json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let read = r.json()["plan"]["survivors"][0]["survivor"]["db"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        Path::new(&read).starts_with(survivor.state_dir.join("recover")),
        "the live file was read: {read}"
    );
    assert!(
        !Path::new(&read).exists(),
        "a dry run left its copy: {read}"
    );
    let r = crash("start-etcd:before");
    let replayed = r
        .stdout
        .lines()
        .find(|l| l.starts_with("wrote "))
        .unwrap_or_default()
        .to_string();
    assert!(
        replayed.contains(&format!("at revision {newest} ")),
        "{}",
        r.stdout
    );
    let checkpoints: u64 = replayed
        .split(" checkpoint(s) verified")
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(checkpoints >= 1, "{replayed}");
    let r = run(recover_cmd(survivor, g).arg("--resume"));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("recovered into"), "{}", r.stdout);
    // The states it built (a database's size each) are gone once no restore needs them.
    let built: Vec<String> = std::fs::read_dir(survivor.state_dir.join("recover"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(built.is_empty(), "{built:?}");
    survivor.wait_healthy();
    assert!(survivor.revision() >= newest);
    assert_eq!(
        kvs_at(survivor, newest),
        *expected,
        "the recovered keys differ"
    );
    let ttl = run_ok(survivor.etcdctl().args(["lease", "timetolive", lease]));
    assert!(
        String::from_utf8_lossy(&ttl.stdout).contains("granted with TTL(600s)"),
        "{}",
        String::from_utf8_lossy(&ttl.stdout)
    );
    // The old data is kept aside, never deleted.
    assert_eq!(survivor.siblings_of_data_dir("lifeboat-").len(), 1);

    // Another node rejoins the recovered cluster with `member replace`.
    let r = run(writer
        .member_replace()
        .arg("--endpoints")
        .arg(&survivor.client_url)
        .arg("--yes"));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    writer.wait_healthy();
    assert_eq!(kvs_at(writer, newest), *expected);
}

#[test]
fn every_remaining_node_runs_one_command_and_the_whole_cluster_comes_back() {
    let lost = survivor_behind_the_journal();
    lose_the_others(&lost.nodes);
    // The same command on all three: the survivor builds the journal's newest revision from
    // its own data, the two that lost theirs from the full backup; they meet in the store.
    let children: Vec<_> = lost
        .nodes
        .iter()
        .map(|n| {
            recover_cmd(n, &lost.g)
                .args(["--cluster", "--yes", "--bump-revision", "0"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (n, child) in lost.nodes.iter().zip(children) {
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(0), "{}: {stdout}\n{stderr}", n.name);
        assert!(stdout.contains("3 members answer"), "{}: {stdout}", n.name);
        assert!(
            stdout.contains(&format!("restored through revision {}", lost.newest)),
            "{}: {stdout}",
            n.name
        );
        let base = if n.name == "cp1" {
            format!("base        survivor {}", n.data_dir.display())
        } else {
            "base        backup ".to_string()
        };
        assert!(stdout.contains(&base), "{}: {stdout}", n.name);
    }
    for n in &lost.nodes {
        n.wait_healthy();
        assert_eq!(kvs_at(n, lost.newest), lost.expected, "{}", n.name);
    }
}
