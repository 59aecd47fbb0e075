//! Maintenance (#27) against real etcd 3.5: `lifeboat defrag` on a fragmented three-member
//! cluster (one member at a time, followers first, the leader last, behind a backup taken
//! first), refused behind a failing store, and NOSPACE cleared — or left, saying why.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};

use crate::harness::data::rt;
use crate::harness::etcd::start_cluster;
use crate::harness::{age_key, lifeboat, run, EtcdProcess, Run, Version};

/// `lifeboat defrag` through `members` (every endpoint) into `dest`, with `args`.
fn defrag(members: &[&EtcdProcess], dest: &std::path::Path, key: &str, args: &[&str]) -> Run {
    let endpoints: Vec<&str> = members.iter().map(|m| m.client_url.as_str()).collect();
    let mut cmd = lifeboat();
    cmd.args(["defrag", "--endpoints", &endpoints.join(","), "-r", key])
        .arg("--dest")
        .arg(dest)
        .arg("--work-dir")
        .arg(dest.with_extension("work"))
        .args(args);
    run(&mut cmd)
}

/// Writes `mib` MiB in 64 KiB values over `keys` keys (each overwritten: history the
/// compaction frees), then compacts: most of the file becomes free pages.
fn fragment(member: &EtcdProcess, mib: usize, keys: usize) {
    rt().block_on(async {
        let mut c = Client::connect([member.client_url.as_str()], None)
            .await
            .unwrap();
        let value = vec![b'v'; 64 << 10];
        let mut rev = 0;
        for i in 0..mib * 16 {
            let r = c
                .put(format!("/registry/big/k{}", i % keys), value.clone(), None)
                .await
                .unwrap();
            rev = r.header().unwrap().revision();
        }
        c.compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    });
}

/// Until every member has applied the compaction (each frees its pages on its own, and counts
/// them free only at a later commit: a small write each look makes one).
fn wait_compacted(members: &[&EtcdProcess]) {
    crate::harness::serve::wait_until(
        "every member applied the compaction",
        Duration::from_secs(60),
        || {
            rt().block_on(async {
                let mut all = true;
                let mut w = Client::connect([members[0].client_url.as_str()], None)
                    .await
                    .unwrap();
                w.put("/registry/tick", "t", None).await.unwrap();
                for m in members {
                    let mut c = Client::connect([m.client_url.as_str()], None)
                        .await
                        .unwrap();
                    let s = c.status().await.unwrap();
                    all &= s.raft_used_db_size() * 2 < s.db_size();
                }
                all
            })
        },
    );
}

/// Each member's database size.
fn sizes(members: &[&EtcdProcess]) -> Vec<i64> {
    rt().block_on(async {
        let mut out = Vec::new();
        for m in members {
            let mut c = Client::connect([m.client_url.as_str()], None)
                .await
                .unwrap();
            out.push(c.status().await.unwrap().db_size());
        }
        out
    })
}

/// Polls every member with a serializable read (served by the member alone, blocked while it
/// defragments) until stopped; the most members that did not answer within `slow` at once.
fn poll_unanswering(
    urls: Vec<String>,
    stop: Arc<AtomicBool>,
    slow: Duration,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        rt().block_on(async {
            let mut clients = Vec::new();
            for u in &urls {
                clients.push(Client::connect([u.as_str()], None).await.unwrap());
            }
            let mut worst = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut silent = 0;
                let reads = clients.iter_mut().map(|c| {
                    tokio::time::timeout(
                        slow,
                        c.get(
                            "/registry/poll",
                            Some(GetOptions::new().with_serializable()),
                        ),
                    )
                });
                for r in futures::future::join_all(reads).await {
                    if !matches!(r, Ok(Ok(_))) {
                        silent += 1;
                    }
                }
                worst = worst.max(silent);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            worst
        })
    })
}

/// A client writing every 20 ms until stopped, trying each endpoint in turn for a write (as
/// clients do) for up to 10 s; the writes that no endpoint took.
fn write_throughout(
    urls: Vec<String>,
    stop: Arc<AtomicBool>,
) -> (
    std::thread::JoinHandle<()>,
    Arc<AtomicUsize>,
    Arc<Mutex<Vec<String>>>,
) {
    let failed = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let (f, e) = (failed.clone(), errors.clone());
    let h = std::thread::spawn(move || {
        rt().block_on(async {
            let mut clients = Vec::new();
            for u in &urls {
                clients.push(Client::connect([u.as_str()], None).await.unwrap());
            }
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut ok = false;
                'write: while Instant::now() < deadline {
                    for c in clients.iter_mut() {
                        let put =
                            c.put(format!("/registry/writer/{}", i % 50), i.to_string(), None);
                        match tokio::time::timeout(Duration::from_secs(2), put).await {
                            Ok(Ok(_)) => {
                                ok = true;
                                break 'write;
                            }
                            Ok(Err(err)) => e.lock().unwrap().push(err.to_string()),
                            Err(_) => e.lock().unwrap().push("timeout".into()),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if !ok {
                    f.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    (h, failed, errors)
}

/// Fragments a real three-member cluster. A failing store: no defragmentation at all. Then
/// each member is defragmented exactly once, followers first, the leader last (its leadership
/// moved away first), never two at once, behind a backup taken before the first call; the
/// sizes shrink; a client writing throughout loses no write. A second run stands on that
/// backup and finds nothing to do.
#[test]
fn defrag_goes_one_member_at_a_time_leader_last_behind_a_backup_taken_first() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let cluster = start_cluster(Version::V35, 3);
    let members: Vec<&EtcdProcess> = cluster.iter().collect();
    fragment(members[0], 96, 8);
    wait_compacted(&members);
    let before = sizes(&members);
    assert!(before.iter().all(|s| *s >= 90 << 20), "{before:?}");
    let args = ["--min-db-size", "64MiB", "--fragmentation-ratio", "0.5"];

    // The plan: every member, the leader last; nothing changes in a dry run.
    let dest = dir.path().join("backups");
    let r = defrag(
        &members,
        &dest,
        &key.recipient,
        &[&args[..], &["--dry-run"]].concat(),
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("no backup recent enough — one is taken first"),
        "{}",
        r.stdout
    );
    assert_eq!(r.stdout.matches(" defragment ").count(), 3, "{}", r.stdout);
    assert!(!dest.exists() || crate::harness::files_in(&dest).is_empty());

    // A store that cannot be written: the backup fails, nothing is defragmented.
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let r = defrag(
        &members,
        &blocker.join("backups"),
        &key.recipient,
        &[&args[..], &["--yes", "--quota-backend-bytes", "24MiB"]].concat(),
    );
    assert_ne!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("nothing was defragmented"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("defragmented "), "{}", r.stdout);
    let unchanged = sizes(&members);
    assert!(
        unchanged.iter().zip(&before).all(|(a, b)| a >= b),
        "{before:?} → {unchanged:?}"
    );

    // The run, watched: a poller of every member and a writer through all endpoints.
    let urls: Vec<String> = members.iter().map(|m| m.client_url.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll_unanswering(urls.clone(), stop.clone(), Duration::from_secs(2));
    let (writer, failed, errors) = write_throughout(urls, stop.clone());
    let r = defrag(
        &members,
        &dest,
        &key.recipient,
        &[
            &args[..],
            &["--yes", "-w", "json", "--quota-backend-bytes", "24MiB"],
        ]
        .concat(),
    );
    stop.store(true, Ordering::SeqCst);
    let worst = poller.join().unwrap();
    writer.join().unwrap();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let out = r.json();
    let report = &out["report"];
    assert_eq!(report["backup"]["kind"], "taken", "{out}");
    let actions = report["actions"].as_array().unwrap();
    let defrags: Vec<&serde_json::Value> = actions
        .iter()
        .filter(|a| a["action"] == "defragment")
        .collect();
    let mut names: Vec<&str> = defrags
        .iter()
        .map(|a| a["member"].as_str().unwrap())
        .collect();
    let leader = out["plan"]["order"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["member"]["is_leader"] == true)
        .map(|p| p["member"]["name"].as_str().unwrap().to_string())
        .unwrap();
    assert_eq!(names.last(), Some(&leader.as_str()), "{out}");
    names.sort_unstable();
    assert_eq!(names, ["m0", "m1", "m2"], "each exactly once: {out}");
    let moved = actions
        .iter()
        .position(|a| a["action"] == "move-leader")
        .expect("leadership moved before the leader's defragmentation");
    assert_eq!(moved, actions.len() - 2, "{out}");
    // The backup was committed before the first defragmentation began.
    let id = report["backup"]["id"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join(format!("{id}.manifest.json"))).unwrap())
            .unwrap();
    let committed =
        chrono::DateTime::parse_from_rfc3339(manifest["created_at"].as_str().unwrap()).unwrap();
    let first = chrono::DateTime::parse_from_rfc3339(defrags[0]["at"].as_str().unwrap()).unwrap();
    assert!(committed < first, "{committed} !< {first}");
    for a in &defrags {
        assert!(
            a["after"].as_u64() < a["before"].as_u64(),
            "{a} did not shrink"
        );
    }
    assert!(worst <= 1, "{worst} members silent at once");
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "writes lost: {:?}",
        errors.lock().unwrap()
    );
    let after = sizes(&members);
    assert!(
        after.iter().zip(&before).all(|(a, b)| a < b),
        "{before:?} → {after:?}"
    );

    // Again: that backup is recent enough, and nothing is over the thresholds now.
    let r = defrag(
        &members,
        &dest,
        &key.recipient,
        &[&args[..], &["--yes", "--quota-backend-bytes", "24MiB"]].concat(),
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("nothing to defragment"), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!("behind it: backup {id}")),
        "{}",
        r.stdout
    );
}

/// The alarms of a member, as etcdctl lists them.
fn alarms(member: &EtcdProcess) -> String {
    let out = member.etcdctl().args(["alarm", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Writes 64 KiB values over `keys` keys until etcd refuses with NOSPACE.
fn fill_until_nospace(member: &EtcdProcess, keys: usize) {
    rt().block_on(async {
        let mut c = Client::connect([member.client_url.as_str()], None)
            .await
            .unwrap();
        let value = vec![b'n'; 64 << 10];
        for i in 0..100_000 {
            if let Err(e) = c
                .put(format!("/registry/fill/k{}", i % keys), value.clone(), None)
                .await
            {
                assert!(e.to_string().contains("space exceeded"), "{e}");
                return;
            }
        }
        panic!("no NOSPACE after 100000 writes");
    });
}

/// NOSPACE on a member with a 24 MiB quota. History fills it: compaction and defragmentation
/// free it and the alarm is disarmed, writes accepted again. Live data fills it: the alarm is
/// left, saying why (exit 3), after one compaction and one defragmentation — no loop.
#[test]
fn nospace_is_cleared_when_the_history_filled_it_and_left_saying_why_when_the_data_does() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let dest = dir.path().join("backups");
    let quota = ["--quota-backend-bytes=25165824"];

    let history = EtcdProcess::start_with(Version::V35, &quota);
    fill_until_nospace(&history, 4);
    assert!(alarms(&history).contains("NOSPACE"), "{}", alarms(&history));
    let r = defrag(
        &[&history],
        &dest,
        &key.recipient,
        &["--yes", "-w", "json", "--quota-backend-bytes", "24MiB"],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let report = &r.json()["report"];
    assert_eq!(report["nospace"]["result"], "disarmed", "{report}");
    let kinds: Vec<&str> = report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["compact", "defragment", "disarm"], "{report}");
    assert_eq!(alarms(&history).trim(), "", "alarm still raised");
    history.put("/registry/after", "accepted");

    let data = EtcdProcess::start_with(Version::V35, &quota);
    fill_until_nospace(&data, 100_000);
    let dest2 = dir.path().join("backups2");
    let r = defrag(
        &[&data],
        &dest2,
        &key.recipient,
        &["--yes", "--quota-backend-bytes", "24MiB"],
    );
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("NOSPACE is still raised")
            && r.stderr.contains("raise --quota-backend-bytes"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout.matches("defragmented ").count(), 1, "{}", r.stdout);
    assert!(alarms(&data).contains("NOSPACE"), "{}", alarms(&data));
}

/// `lifeboat serve` with `[maintenance]` on, its window every 2 s, for `members` into `dest`.
fn serving(
    members: &[&EtcdProcess],
    dir: &std::path::Path,
    key: &str,
    extra: &str,
) -> crate::harness::serve::Serve {
    let config = dir.join("lifeboat.toml");
    std::fs::write(
        &config,
        format!(
            "[maintenance]\nenabled = true\nwindow = \"*/2 * * * * *\"\nmin_db_size = \"64MiB\"\n{extra}\n"
        ),
    )
    .unwrap();
    let endpoints: Vec<&str> = members.iter().map(|m| m.client_url.as_str()).collect();
    let mut cmd = lifeboat();
    cmd.arg("--config")
        .arg(&config)
        .args(["--log-level", "info"])
        .args(["serve", "--schedule", "0 0 * * *", "-r", key])
        .args(["--endpoints", &endpoints.join(",")])
        .arg("--dest")
        .arg(dir.join("b"))
        .arg("--work-dir")
        .arg(dir.join("w"));
    crate::harness::serve::Serve::start(cmd, dir.join("serve.log"))
}

const DEFRAGMENTED: &str = r#"lifeboat_maintenance_actions_total{action="defragment",result="ok"}"#;

/// `serve` with `[maintenance]` on: the elected instance exports every member's sizes, takes a
/// backup first, defragments each fragmented member exactly once (leader last), and then,
/// nothing over the thresholds, leaves them alone at the next window ticks.
#[test]
fn serve_maintains_the_cluster_within_its_window_once_per_member() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let cluster = start_cluster(Version::V35, 3);
    let members: Vec<&EtcdProcess> = cluster.iter().collect();
    fragment(members[0], 96, 8);
    wait_compacted(&members);
    let before = sizes(&members);
    let serve = serving(&members, dir.path(), &key.recipient, "");
    crate::harness::serve::wait_until("three defragmentations", Duration::from_secs(120), || {
        serve.metric(DEFRAGMENTED) >= 3.0
    });
    // Two more window ticks: nothing is over the thresholds any more.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(serve.metric(DEFRAGMENTED), 3.0, "{}", serve.log_text());
    assert_eq!(
        serve.metric(r#"lifeboat_maintenance_actions_total{action="backup",result="ok"}"#),
        1.0
    );
    assert_eq!(
        serve.metric(r#"lifeboat_maintenance_actions_total{action="move-leader",result="ok"}"#),
        1.0
    );
    let after = sizes(&members);
    assert!(
        after.iter().zip(&before).all(|(a, b)| a < b),
        "{before:?} → {after:?}"
    );
    let exported: f64 = ["m0", "m1", "m2"]
        .iter()
        .map(|m| serve.metric(&format!("lifeboat_etcd_db_size_bytes{{member=\"{m}\"}}")))
        .sum();
    assert!(exported > 0.0, "member sizes exported");
    assert_eq!(
        serve.metric("lifeboat_etcd_quota_bytes"),
        (2u64 << 30) as f64
    );
    let log = serve.log_text();
    assert!(log.contains("defragmented m0"), "{log}");
}

/// `serve` on a member whose live data fills its quota: NOSPACE is left raised, the metric
/// and the log say why, and later window ticks do not try again (bounded actions).
#[test]
fn serve_leaves_nospace_it_cannot_clear_and_does_not_loop() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let data = EtcdProcess::start_with(Version::V35, &["--quota-backend-bytes=25165824"]);
    fill_until_nospace(&data, 100_000);
    let serve = serving(
        &[&data],
        dir.path(),
        &key.recipient,
        "quota_backend_bytes = \"24MiB\"",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while serve.metric("lifeboat_maintenance_nospace_left") != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "NOSPACE never reported as left: {}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let defrags = serve.metric(DEFRAGMENTED);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(serve.metric(DEFRAGMENTED), defrags, "tried again");
    assert_eq!(defrags, 1.0);
    assert_eq!(
        serve.metric(r#"lifeboat_etcd_alarms{member="default",alarm="NOSPACE"}"#),
        1.0
    );
    let log = serve.log_text();
    assert!(
        log.contains("NOSPACE left raised") && log.contains("not trying again"),
        "{log}"
    );
}
