//! `lifeboat member replace` (#23 part 2) against a real three-member etcd 3.5 cluster on
//! kubeadm-shaped nodes with stand-in kubelets: a member whose etcd died and whose data is
//! lost rejoins as a learner and is promoted, while a client writing to the two survivors sees
//! no failed write; a healthy member, a second learner and a cluster without quorum are
//! refused with nothing changed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use std::time::Duration;

use crate::harness::node::{files_under, FakeNode};
use crate::harness::serve::wait_until;
use crate::harness::{free_port, run, run_ok, Version};

/// `etcdctl member list` as (name, id, learner).
fn members(node: &FakeNode) -> Vec<(String, String, bool)> {
    let out = run_ok(node.etcdctl().args(["member", "list", "-w", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("").to_string(),
                format!("{:x}", m["ID"].as_u64().unwrap()),
                m["isLearner"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// Puts through the survivors' endpoints until stopped; (writes, failures).
struct Writer {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    /// What etcdctl said about the last failed put.
    last_error: Arc<std::sync::Mutex<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(through: &FakeNode, endpoints: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let mut base = through.etcdctl();
        base.arg(format!("--endpoints={endpoints}"));
        let program = base.get_program().to_owned();
        let args: Vec<_> = base.get_args().map(|a| a.to_owned()).collect();
        let last_error = Arc::new(std::sync::Mutex::new(String::new()));
        let (s, w, f, e) = (
            stop.clone(),
            writes.clone(),
            failures.clone(),
            last_error.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::SeqCst) {
                n += 1;
                let out = std::process::Command::new(&program)
                    .env("ETCDCTL_API", "3")
                    .args(&args)
                    .args([
                        "put",
                        &format!("/registry/writer/k{}", n % 50),
                        &n.to_string(),
                    ])
                    .output();
                w.fetch_add(1, Ordering::SeqCst);
                let failed = match out {
                    Ok(o) if o.status.success() => None,
                    Ok(o) => Some(String::from_utf8_lossy(&o.stderr).into_owned()),
                    Err(err) => Some(err.to_string()),
                };
                if let Some(why) = failed {
                    f.fetch_add(1, Ordering::SeqCst);
                    *e.lock().unwrap() = why;
                }
            }
        });
        Writer {
            stop,
            writes,
            failures,
            last_error,
            thread: Some(thread),
        }
    }

    /// Waits until `n` puts were made in all (each one through its own etcdctl process).
    fn wait_for(&self, n: u64) {
        wait_until(&format!("{n} writes"), Duration::from_secs(120), || {
            self.writes.load(Ordering::SeqCst) >= n
        });
    }

    fn done(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// (writes, failures, the last failure's message).
    fn finish(mut self) -> (u64, u64, String) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.writes.load(Ordering::SeqCst),
            self.failures.load(Ordering::SeqCst),
            self.last_error.lock().unwrap().clone(),
        )
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_dead_member_is_replaced_while_the_survivors_keep_serving_writes() {
    let nodes = FakeNode::cluster(Version::V35, 3);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    for i in 0..20 {
        a.put(&format!("/registry/configmaps/default/cm{i}"), "v1");
    }
    let survivors = format!("{},{}", a.client_url, b.client_url);
    let replace = |node: &FakeNode, extra: &[&str]| {
        let mut cmd = node.member_replace();
        cmd.arg("--endpoints").arg(&survivors).args(extra);
        run(&mut cmd)
    };

    // Another member already a learner: refused (etcd allows one at a time). It is added while
    // every member is up: etcd accepts a new member only while the one asked reaches all.
    // (Connected for etcd's health interval, 5 s, first: a fresh cluster is retried.)
    let fake_peer = format!("https://127.0.0.1:{}", free_port());
    let mut added = None;
    wait_until("etcd accepts a learner", Duration::from_secs(30), || {
        let r = run(a.etcdctl().args([
            "member",
            "add",
            "stray",
            "--learner",
            &format!("--peer-urls={fake_peer}"),
        ]));
        let ok = r.code == 0;
        added = Some(r);
        ok
    });
    let stray = members(a)
        .into_iter()
        .find(|(_, _, learner)| *learner)
        .unwrap_or_else(|| panic!("no learner after {:?}", added.map(|r| r.stdout)));
    let before = files_under(&c.manifests_dir);
    let r = replace(c, &["--yes", "--force"]);
    assert_eq!(r.code, 8, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("already a learner"), "{}", r.stderr);
    run_ok(a.etcdctl().args(["member", "remove", &stray.1]));

    // A healthy member is not replaced (without --force), and nothing changes.
    let r = replace(c, &["--yes"]);
    assert_eq!(r.code, 8, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("nothing to replace"), "{}", r.stderr);
    assert_eq!(files_under(&c.manifests_dir), before);
    assert!(c.data_dir.join("member").exists());

    // The member dies first (it may have been the raft leader: the survivors elect one, and a
    // write in that moment may fail — that is the death, not the replace); the writer starts
    // once the survivors serve, and runs through the whole replace.
    c.lose_member();
    a.wait_healthy();
    b.wait_healthy();
    let writer = Writer::start(a, survivors.clone());
    writer.wait_for(3);

    // The plan, then the replace.
    let r = replace(c, &["--dry-run"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("DOES NOT ANSWER"), "{}", r.stdout);
    assert!(
        r.stdout.contains("add cp3 back as a learner"),
        "{}",
        r.stdout
    );
    let old = members(a).into_iter().find(|m| m.0 == "cp3").unwrap();
    // Killed right after the learner was added (before the journal says so): a new run is
    // refused, `--resume` finds that learner and goes on.
    let mut crashing = c.member_replace();
    crashing
        .arg("--endpoints")
        .arg(&survivors)
        .arg("--yes")
        .env("LIFEBOAT_TEST_CRASH_AT", "member:add-learner");
    let r = run(&mut crashing);
    assert_eq!(r.code, 86, "{}\n{}", r.stdout, r.stderr);
    let r = replace(c, &["--yes"]);
    assert_eq!(r.code, 8, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("--resume"), "{}", r.stderr);
    let r = run(c.member_replace().arg("--resume"));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("member replace complete: 3 voting members"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("every member hashes to"), "{}", r.stdout);
    // It goes on writing after the replace too (it never stopped in between).
    writer.wait_for(writer.done() + 3);
    let (writes, failures, last_error) = writer.finish();
    assert_eq!(
        failures, 0,
        "{failures} of {writes} writes failed during the replace; the last: {last_error}"
    );

    // Three voters, the replaced one under a new id; its old (emptied) data dir kept aside.
    let now = members(a);
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.iter().all(|m| !m.2), "a learner is left: {now:?}");
    let new = now.iter().find(|m| m.0 == "cp3").unwrap();
    assert_ne!(new.1, old.1, "the member was not replaced");
    assert_eq!(c.siblings_of_data_dir("replaced-").len(), 1);
    // Every member serves the same data (the replaced one reads it from its own copy).
    c.wait_healthy();
    let mut serializable = c.etcdctl();
    serializable.args(["get", "", "--prefix", "--consistency=s"]);
    let own = String::from_utf8(run_ok(&mut serializable).stdout).unwrap();
    assert!(own.contains("/registry/configmaps/default/cm19"), "{own}");
    let hashes: Vec<String> = nodes
        .iter()
        .map(|n| {
            let out = run_ok(n.etcdctl().args(["endpoint", "hashkv", "-w", "json"]));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v[0]["HashKV"]["hash"].to_string()
        })
        .collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
}

#[test]
fn a_two_member_cluster_with_one_dead_has_no_quorum_to_replace_it() {
    let nodes = FakeNode::cluster(Version::V35, 2);
    let (a, b) = (&nodes[0], &nodes[1]);
    b.lose_member();
    let before = files_under(&b.manifests_dir);
    let r = run(b
        .member_replace()
        .arg("--endpoints")
        .arg(&a.client_url)
        .arg("--yes"));
    assert_eq!(r.code, 8, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("quorum"), "{}", r.stderr);
    assert_eq!(files_under(&b.manifests_dir), before, "nothing changed");
    assert!(!b.state_dir.join("member-replace/journal.json").exists());
}
