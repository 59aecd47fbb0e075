//! `lifeboat restore --cluster` (#23 part 1) against a real three-member etcd 3.5 cluster on
//! kubeadm-shaped nodes with stand-in kubelets and one SeaweedFS store they share: the same
//! command on every node, run concurrently, brings back one healthy cluster at the backup's
//! data; a node that never joins fails the run everywhere with nothing changed; a node killed
//! mid-run finishes with `--resume`.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use crate::harness::data::rt;
use crate::harness::node::{files_under, FakeNode};
use crate::harness::s3::S3Server;
use crate::harness::{age_key, lifeboat, run, AgeKey, Version};

const DEST: &str = "s3://etcd-backups/prod";

fn with_s3(cmd: &mut Command, server: &S3Server) {
    cmd.envs(server.env())
        .args(server.flags())
        .arg(format!("--dest={DEST}"));
}

/// `restore latest --cluster` on `node`, reaching the shared store.
fn cluster_restore(node: &FakeNode, server: &S3Server, key: &AgeKey, extra: &[&str]) -> Command {
    let mut cmd = node.restore();
    cmd.args(["latest", "--cluster", "--yes", "--identity"])
        .arg(&key.identity_file)
        .args(extra);
    with_s3(&mut cmd, server);
    cmd
}

/// What a node's restore may change: its manifests and whether its data dir has a member.
fn untouched(node: &FakeNode) -> (BTreeMap<String, Vec<u8>>, bool, usize) {
    (
        files_under(&node.manifests_dir),
        node.data_dir.join("member").exists(),
        node.siblings_of_data_dir("lifeboat-").len(),
    )
}

fn spawn(mut cmd: Command) -> std::process::Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: std::process::Child) -> (i32, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_node_runs_one_command_and_the_whole_cluster_comes_back() {
    let server = S3Server::start();
    rt().block_on(server.create_bucket("etcd-backups"));
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let nodes = FakeNode::cluster(Version::V35, 3);
    for i in 0..30 {
        nodes[0].put(
            &format!("/registry/configmaps/default/cm{i}"),
            &format!("v{i}"),
        );
    }
    let mut save = lifeboat();
    save.args(["snapshot", "save", "-w", "json", "-r", &key.recipient])
        .arg("--etcd-manifest")
        .arg(nodes[0].etcd_manifest())
        .arg("--work-dir")
        .arg(dir.path().join("w"));
    with_s3(&mut save, &server);
    let backup = run(&mut save).ok().json();
    assert_eq!(
        backup["voting_members"],
        serde_json::json!(["cp1", "cp2", "cp3"]),
        "{backup}"
    );
    let expected = nodes[0].dump();
    nodes[0].put("/registry/after-the-backup", "gone after the restore");

    // Every member's data is lost.
    for n in &nodes {
        n.lose_member();
    }
    let before: Vec<_> = nodes.iter().map(untouched).collect();

    // Two of three nodes: the plan expires, both fail, nothing changed on either.
    let short = ["--join-timeout", "4s"];
    let two: Vec<_> = nodes[..2]
        .iter()
        .map(|n| spawn(cluster_restore(n, &server, &key, &short)))
        .collect();
    for child in two {
        let (code, out, err) = finish(child);
        assert_eq!(code, 8, "{out}\n{err}");
        assert!(err.contains("2 of 3 members joined"), "{err}");
        assert!(err.contains("missing: cp3"), "{err}");
    }
    let after: Vec<_> = nodes.iter().map(untouched).collect();
    assert_eq!(
        after, before,
        "a node was changed before every member joined"
    );

    // All three at once; the third is killed mid-restore and finishes with --resume while the
    // other two wait for it.
    let first: Vec<_> = nodes[..2]
        .iter()
        .map(|n| spawn(cluster_restore(n, &server, &key, &[])))
        .collect();
    let mut crashing = cluster_restore(&nodes[2], &server, &key, &[]);
    crashing.env("LIFEBOAT_TEST_CRASH_AT", "restore");
    let r = run(&mut crashing);
    assert_eq!(r.code, 86, "{}\n{}", r.stdout, r.stderr);
    let mut resume = nodes[2].restore();
    resume
        .arg("--resume")
        .arg("--identity")
        .arg(&key.identity_file);
    with_s3(&mut resume, &server);
    let r = run(&mut resume);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("every member hashes to"), "{}", r.stdout);
    let mut outputs = vec![r.stdout];
    for child in first {
        let (code, out, err) = finish(child);
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(out.contains("3 members answer"), "{out}");
        outputs.push(out);
    }
    assert!(
        outputs
            .iter()
            .any(|o| o.contains("the cluster restore plan is complete")),
        "{outputs:?}"
    );

    // One cluster of the three nodes, at the backup's data, every member hashing alike.
    for n in &nodes {
        n.wait_healthy();
    }
    let got = nodes[1].dump();
    assert_eq!(
        got, expected,
        "the restored cluster holds the backup's data"
    );
    let hashes: Vec<String> = nodes
        .iter()
        .map(|n| {
            let out = run(n.etcdctl().args(["endpoint", "hashkv", "-w", "json"])).ok();
            let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
            v[0]["HashKV"]["hash"].to_string()
        })
        .collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    let members = run(nodes[0].etcdctl().args(["member", "list"])).ok().stdout;
    for name in ["cp1", "cp2", "cp3"] {
        assert!(members.contains(name), "{members}");
    }
    // The old data dirs are kept on every node.
    for n in &nodes {
        assert_eq!(n.siblings_of_data_dir("lifeboat-").len(), 1, "{}", n.name);
    }
}

/// Only Kubernetes' keys (lifeboat's own election key may come and go with its lease).
fn registry(all: BTreeMap<String, String>) -> BTreeMap<String, String> {
    all.into_iter()
        .filter(|(k, _)| k.starts_with("/registry/"))
        .collect()
}

#[test]
fn a_point_in_time_of_the_journal_restores_the_whole_cluster() {
    use crate::harness::journal::capturing;
    use crate::harness::serve::{wait_until, Serve};
    use std::time::Duration;

    let server = S3Server::start();
    rt().block_on(server.create_bucket("etcd-backups"));
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let nodes = FakeNode::cluster(Version::V35, 3);
    let mut capture = capturing(dir.path(), &key, DEST);
    capture
        .envs(server.env())
        .args(server.flags())
        .arg("--etcd-manifest")
        .arg(nodes[0].etcd_manifest());
    let mut serve = Serve::start(capture, dir.path().join("serve.log"));
    serve.wait_until("the journal's base backup", Duration::from_secs(60), |s| {
        s.metric("lifeboat_backups_total") >= 1.0
    });
    for i in 0..15 {
        nodes[0].put(
            &format!("/registry/configmaps/default/cm{i}"),
            &format!("v{i}"),
        );
    }
    let expected = registry(nodes[0].dump());
    let target = nodes[0].revision();
    serve.wait_until("the writes durable", Duration::from_secs(60), |s| {
        s.metric("lifeboat_continuous_last_revision") >= target as f64
    });
    std::thread::sleep(Duration::from_millis(1500));
    let at = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(1500));
    nodes[0].put("/registry/configmaps/default/later", "not in the restore");
    let later = nodes[0].revision();
    wait_until("the later write durable", Duration::from_secs(60), || {
        serve.metric("lifeboat_continuous_last_revision") >= later as f64
    });
    assert_eq!(serve.stop(Duration::from_secs(30)), 0);

    for n in &nodes {
        n.lose_member();
    }
    let children: Vec<_> = nodes
        .iter()
        .map(|n| {
            let mut cmd = n.restore();
            cmd.arg(format!("--to-time={}", at.to_rfc3339()))
                .args(["--cluster", "--yes", "--identity"])
                .arg(&key.identity_file)
                .arg("--etcd")
                .arg(crate::harness::etcd_bin(Version::V35))
                .env(
                    "LIFEBOAT_WORK_DIR",
                    dir.path().join(format!("replay-{}", n.name)),
                );
            with_s3(&mut cmd, &server);
            spawn(cmd)
        })
        .collect();
    for child in children {
        let (code, out, err) = finish(child);
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(
            err.contains(&format!("revision {target} of the journal")),
            "{err}"
        );
    }
    for n in &nodes {
        n.wait_healthy();
    }
    for n in &nodes {
        let mut own = n.etcdctl();
        own.args(["get", "/registry/", "--prefix", "--consistency=s"]);
        let text = String::from_utf8(crate::harness::run_ok(&mut own).stdout).unwrap();
        assert!(!text.contains("later"), "{}: {text}", n.name);
    }
    assert_eq!(registry(nodes[2].dump()), expected);
}
