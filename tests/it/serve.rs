//! `lifeboat serve`: scheduled backups, metrics and health, one uploader per cluster (three
//! real etcd members, three instances), fail-over, overlapping ticks, clean shutdown, config
//! checks, and no secret in the logs.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::data::{client, rt};
use crate::harness::etcd::start_cluster;
use crate::harness::proxy::{Fault, Proxy};
use crate::harness::s3::S3Server;
use crate::harness::serve::{wait_until, Serve};
use crate::harness::{age_key, files_in, free_port, lifeboat, run, run_ok, EtcdProcess, Version};

fn serve_cmd(
    endpoint_flags: &[String],
    dir: &std::path::Path,
    recipient: &str,
    schedule: &str,
) -> Command {
    let mut cmd = lifeboat();
    cmd.args(["serve", "--schedule", schedule, "-r", recipient])
        .args(endpoint_flags)
        .arg("--dest")
        .arg(dir.join("b"))
        .arg("--work-dir")
        .arg(dir.join("w"));
    cmd
}

fn manifests(dir: &std::path::Path) -> Vec<serde_json::Value> {
    run(lifeboat()
        .args(["snapshot", "list", "-w", "json", "--dest"])
        .arg(dir.join("b")))
    .ok()
    .json()
    .as_array()
    .unwrap()
    .clone()
}

/// With ticks 2 s apart, no two backups may share a 2-second slot.
fn assert_one_backup_per_two_second_tick(manifests: &[serde_json::Value]) {
    let mut slots: Vec<i64> = manifests
        .iter()
        .map(|m| {
            chrono::DateTime::parse_from_rfc3339(m["created_at"].as_str().unwrap())
                .unwrap()
                .timestamp()
                / 2
        })
        .collect();
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(
        slots.len(),
        manifests.len(),
        "two backups in one tick: {manifests:?}"
    );
}

#[test]
fn serve_takes_scheduled_backups_reports_health_and_metrics_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let etcd = EtcdProcess::start(Version::V35, None);
    etcd.put("/registry/a", "1");
    let mut serve = Serve::start(
        serve_cmd(
            &etcd.lifeboat_flags(),
            dir.path(),
            &key.recipient,
            "*/1 * * * * *",
        ),
        dir.path().join("serve.log"),
    );
    wait_until("two scheduled backups", Duration::from_secs(30), || {
        manifests(dir.path()).len() >= 2
    });
    assert_eq!(serve.get("/healthz").unwrap().0, 200);
    assert_eq!(
        serve.get("/readyz").unwrap().0,
        200,
        "{:?}",
        serve.get("/readyz")
    );
    assert_eq!(serve.metric("lifeboat_is_leader"), 1.0);
    assert!(serve.metric("lifeboat_last_success_timestamp_seconds") > 1.7e9);
    assert!(serve.metric("lifeboat_snapshot_revision") >= 2.0);
    assert!(serve.metric("lifeboat_backup_size_bytes") > 0.0);
    let metrics = serve.get("/metrics").unwrap().1;
    assert!(
        metrics.contains("lifeboat_backup_failures_total{reason=\"etcd\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lifeboat_retention_deleted_total"),
        "{metrics}"
    );
    assert!(manifests(dir.path())
        .iter()
        .all(|m| m["reason"] == "scheduled"));
    assert_eq!(
        serve.stop(Duration::from_secs(20)),
        0,
        "{}",
        serve.log_text()
    );
    assert!(files_in(&dir.path().join("b"))
        .iter()
        .all(|f| !f.ends_with(".part")));
    // The last backup verifies.
    run(&mut crate::harness::verify_latest(
        &dir.path().join("b"),
        &key.identity_file,
    ))
    .ok();
}

/// The index in `cluster` (from `start_cluster`) of the raft leader's member.
fn raft_leader(cluster: &[EtcdProcess]) -> usize {
    rt().block_on(async {
        let mut c = client(&cluster[0]).await;
        let s = c.status().await.unwrap();
        let members = c.member_list().await.unwrap();
        let name = members
            .members()
            .iter()
            .find(|m| m.id() == s.leader())
            .unwrap()
            .name()
            .to_string();
        // start_cluster names its members m0, m1, …
        name.trim_start_matches('m').parse::<usize>().unwrap()
    })
}

#[test]
fn the_raft_leaders_node_uploads_when_no_followers_instance_campaigns() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let cluster = start_cluster(Version::V35, 3);
    let leader = raft_leader(&cluster);
    let config = dir.path().join("lifeboat.toml");
    std::fs::write(&config, "[serve]\nlease_ttl = \"3s\"\n").unwrap();
    let mut cmd = serve_cmd(
        &[format!("--endpoints={}", cluster[leader].client_url)],
        dir.path(),
        &key.recipient,
        "*/2 * * * * *",
    );
    cmd.arg("--config")
        .arg(&config)
        .env("LIFEBOAT_LOG_LEVEL", "info");
    let serve = Serve::start(cmd, dir.path().join("serve.log"));
    wait_until(
        "a backup by the raft leader's node",
        Duration::from_secs(40),
        || !manifests(dir.path()).is_empty(),
    );
    assert!(
        serve
            .log_text()
            .contains("no follower's instance campaigns"),
        "{}",
        serve.log_text()
    );
}

#[test]
fn three_instances_make_one_backup_per_tick_and_fail_over_when_the_uploader_dies() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let mut cluster = start_cluster(Version::V35, 3);
    let config = dir.path().join("lifeboat.toml");
    // Retention would otherwise keep only the last 3 of these same-hour backups.
    std::fs::write(
        &config,
        "[serve]\nlease_ttl = \"3s\"\n[retention]\nkeep_last = 1000\n",
    )
    .unwrap();
    let mut serves: Vec<Serve> = cluster
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut cmd = serve_cmd(
                &[format!("--endpoints={}", m.client_url)],
                dir.path(),
                &key.recipient,
                "*/2 * * * * *",
            );
            cmd.arg("--config").arg(&config);
            Serve::start(cmd, dir.path().join(format!("serve{i}.log")))
        })
        .collect();
    let logs = |serves: &[Serve]| {
        serves
            .iter()
            .map(|s| s.log_text())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while manifests(dir.path()).len() < 4 {
        assert!(
            Instant::now() < deadline,
            "no four backups: {}",
            logs(&serves)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let leaders: Vec<usize> = (0..3)
        .filter(|&i| serves[i].metric("lifeboat_is_leader") == 1.0)
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one uploader");
    let leader = leaders[0];
    // The uploader's member is a follower: the raft leader already carries every write.
    let (member, raft_leader) = rt().block_on(async {
        let mut c = client(&cluster[leader]).await;
        let s = c.status().await.unwrap();
        (s.header().unwrap().member_id(), s.leader())
    });
    assert_ne!(
        member, raft_leader,
        "the uploader runs on the raft leader's node"
    );
    // One backup per tick: ticks are 2 s apart, so no two backups share a 2-second slot.
    let before = manifests(dir.path());
    assert_one_backup_per_two_second_tick(&before);
    assert!(before
        .iter()
        .all(|m| m["member_name"] == format!("m{leader}")));

    // The uploader's etcd dies: its lease expires and another instance takes over.
    cluster[leader].stop();
    let count = before.len();
    wait_until(
        "a backup by another member",
        Duration::from_secs(40),
        || {
            manifests(dir.path())
                .iter()
                .take(manifests(dir.path()).len() - count)
                .any(|m| m["member_name"] != format!("m{leader}"))
        },
    );
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    wait_until("one new leader", Duration::from_secs(10), || {
        others
            .iter()
            .filter(|&&i| serves[i].metric("lifeboat_is_leader") == 1.0)
            .count()
            == 1
    });
    for i in others {
        assert_eq!(serves[i].stop(Duration::from_secs(20)), 0);
    }
    let _ = serves[leader].stop(Duration::from_secs(20));
}

#[test]
fn overlapping_ticks_are_skipped_and_shutdown_aborts_a_stuck_backup_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let s3 = S3Server::start();
    rt().block_on(s3.create_bucket("serve"));
    let etcd = EtcdProcess::start(Version::V35, None);
    rt().block_on(async {
        let mut c = crate::harness::data::client(&etcd).await;
        for i in 0..24 {
            let v: Vec<u8> = (0..1_000_000).map(|_| rand::random::<u8>()).collect();
            c.put(format!("/registry/secrets/big/{i}"), v, None)
                .await
                .unwrap();
        }
    });
    // etcd hangs after 18 MB: zstd has emitted its first 8 MiB job and the first 5 MiB part
    // is uploaded, so a multipart upload is open when the backup gets stuck.
    let target = etcd.client_url.trim_start_matches("http://").to_string();
    let proxy = Proxy::start(&target, Fault::StallAfter(18_000_000), "http");
    let config = dir.path().join("lifeboat.toml");
    std::fs::write(
        &config,
        format!(
            "[etcd]\nstall_timeout = \"120s\"\n[backup]\ndest = \"s3://serve/p\"\n[s3]\nendpoint = \"{}\"\npath_style = true\npart_size_mib = 5\n[serve]\nshutdown_deadline = \"1s\"\nlease_ttl = \"60s\"\n",
            s3.endpoint
        ),
    )
    .unwrap();
    let mut cmd = lifeboat();
    cmd.args([
        "serve",
        "--schedule",
        "*/1 * * * * *",
        "-r",
        &key.recipient,
        "--config",
    ])
    .arg(&config)
    .arg(format!("--endpoints={}", proxy.url))
    .arg("--work-dir")
    .arg(dir.path().join("w"));
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    let mut serve = Serve::start(cmd, dir.path().join("serve.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt().block_on(s3.multipart_uploads("serve")) != 1 {
        assert!(
            Instant::now() < deadline,
            "the backup never hung with an open multipart upload: {}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_until("skipped ticks", Duration::from_secs(20), || {
        serve.metric("lifeboat_backup_skipped_total") >= 2.0
    });
    assert_eq!(
        serve.stop(Duration::from_secs(30)),
        0,
        "{}",
        serve.log_text()
    );
    assert!(
        serve.log_text().contains("aborted") || serve.log_text().contains("cancelled"),
        "{}",
        serve.log_text()
    );
    assert_eq!(
        rt().block_on(s3.multipart_uploads("serve")),
        0,
        "the multipart upload was aborted"
    );
    assert!(
        rt().block_on(s3.keys("serve")).is_empty(),
        "no manifest, no object"
    );
    assert!(files_in(&dir.path().join("w")).is_empty(), "no spool left");
}

#[test]
fn check_config_validates_without_connecting_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let config = dir.path().join("lifeboat.toml");
    std::fs::write(
        &config,
        format!(
            "[etcd]\nendpoints = [\"https://127.0.0.1:1\"]\nuser = \"root\"\npassword_file = \"{pw}\"\n[backup]\ndest = \"s3://b/p\"\nrecipients = [\"{r}\"]\n[serve]\nschedule = \"*/5 * * * *\"\n",
            pw = dir.path().join("pw").display(),
            r = key.recipient
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("pw"), "Sup3r-Secret-PW\n").unwrap();
    let ok = run(lifeboat()
        .args(["serve", "--check-config", "--config"])
        .arg(&config))
    .ok();
    assert!(
        ok.stdout.contains("configuration is valid"),
        "{}",
        ok.stdout
    );
    assert!(ok.stdout.contains(&key.recipient));
    assert!(!ok.stdout.contains("Sup3r-Secret-PW") && !ok.stderr.contains("Sup3r-Secret-PW"));
    let bad = run(lifeboat()
        .args([
            "serve",
            "--check-config",
            "--schedule",
            "every hour",
            "--config",
        ])
        .arg(&config));
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("serve.schedule"), "{}", bad.stderr);
    assert_eq!(bad.stderr.trim().lines().count(), 1, "{}", bad.stderr);
    // The [continuous] section is validated too.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}[continuous]\nenabled = true\nsegment_interval = \"10m\"\n"),
    )
    .unwrap();
    let bad = run(lifeboat()
        .args(["serve", "--check-config", "--config"])
        .arg(&config));
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("continuous.segment_interval"),
        "{}",
        bad.stderr
    );
    std::fs::write(&config, format!("{text}[continuous]\nenabled = true\n")).unwrap();
    let on = run(lifeboat()
        .args(["serve", "--check-config", "--config"])
        .arg(&config))
    .ok();
    assert!(on.stdout.contains("segment_interval: 2s"), "{}", on.stdout);
    // The shadow belongs off the control plane: not on an instance that takes backups.
    std::fs::write(&config, format!("{text}[shadow]\nenabled = true\n")).unwrap();
    let bad = run(lifeboat()
        .args(["serve", "--check-config", "--config"])
        .arg(&config));
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("shadow.enabled"), "{}", bad.stderr);
}

#[test]
fn no_secret_reaches_the_logs_even_at_debug_level() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let s3 = S3Server::start();
    rt().block_on(s3.create_bucket("logs"));
    let etcd = EtcdProcess::start(Version::V35, None);
    let password = "etcd-Pa55w0rd-zz9";
    run_ok(
        etcd.etcdctl()
            .args(["user", "add", &format!("root:{password}")]),
    );
    run_ok(etcd.etcdctl().args(["auth", "enable"]));
    let mut cmd = lifeboat();
    cmd.args([
        "serve",
        "--schedule",
        "*/1 * * * * *",
        "-r",
        &key.recipient,
        "--user",
        "root",
    ])
    .args(["--log-level", "debug", "--log-format", "json"])
    .args(etcd.lifeboat_flags())
    .arg("--dest=s3://logs/p")
    .args(s3.flags())
    .arg("--work-dir")
    .arg(dir.path().join("w"))
    .env("LIFEBOAT_PASSWORD", password);
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    let mut serve = Serve::start(cmd, dir.path().join("serve.log"));
    wait_until("a backup", Duration::from_secs(30), || {
        serve.metric("lifeboat_backups_total") >= 1.0
    });
    assert_eq!(serve.stop(Duration::from_secs(20)), 0);
    let log = serve.log_text();
    assert!(log.contains("backup committed"), "{log}");
    assert!(!log.contains(password), "the etcd password leaked");
    assert!(!log.contains(&s3.secret_key), "the S3 secret key leaked");
    assert!(!log.contains("AGE-SECRET-KEY"), "an age identity leaked");
}

#[test]
fn a_learner_never_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let cluster = start_cluster(Version::V35, 1);
    let voter = &cluster[0];
    voter.put("/registry/a", "1");
    // Add a learner and start it.
    let peer_port = free_port();
    let client_port = free_port();
    let peer = format!("http://127.0.0.1:{peer_port}");
    let out = run_ok(voter.etcdctl().args([
        "member",
        "add",
        "learner",
        "--learner",
        &format!("--peer-urls={peer}"),
    ]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let initial = text
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
        .map(|l| l.trim_end_matches('"').to_string())
        .unwrap_or_else(|| panic!("no initial cluster in: {text}"));
    let learner_url = format!("http://127.0.0.1:{client_port}");
    let mut learner = Command::new(crate::harness::etcd_bin(Version::V35))
        .arg("--name=learner")
        .arg(format!(
            "--data-dir={}",
            dir.path().join("learner").display()
        ))
        .arg(format!("--listen-client-urls={learner_url}"))
        .arg(format!("--advertise-client-urls={learner_url}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster={initial}"))
        .arg("--initial-cluster-state=existing")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct KillOnDrop<'a>(&'a mut Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = KillOnDrop(&mut learner);
    let mut serve = Serve::start(
        {
            let mut cmd = serve_cmd(
                &[format!("--endpoints={learner_url}")],
                dir.path(),
                &key.recipient,
                "*/1 * * * * *",
            );
            cmd.env("LIFEBOAT_LOG_LEVEL", "info");
            cmd
        },
        dir.path().join("serve.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !serve
        .log_text()
        .contains("this member is a learner: not campaigning")
    {
        assert!(
            Instant::now() < deadline,
            "the learner did not decline: {}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(serve.metric("lifeboat_is_leader"), 0.0);
    assert_eq!(serve.metric("lifeboat_backups_total"), 0.0);
    assert!(
        files_in(&dir.path().join("b")).is_empty(),
        "no backup from a learner"
    );
    assert_eq!(serve.stop(Duration::from_secs(20)), 0);
}

#[test]
fn a_drill_only_instance_drills_the_latest_backup_on_schedule_and_counts_failures() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let etcd = EtcdProcess::start(Version::V35, None);
    etcd.put("/registry/a", "1");
    crate::harness::save_into(&etcd, dir.path(), &key.recipient);
    // No etcd for this instance: it only reads the store and holds the identity.
    let config = dir.path().join("drill.toml");
    std::fs::write(
        &config,
        format!(
            "[backup]\ndest = {:?}\n[serve]\nschedule = \"off\"\n[drill]\nschedule = \"*/1 * * * * *\"\nidentity_file = {:?}\netcd = {:?}\netcdutl = {:?}\nwork_dir = {:?}\n",
            dir.path().join("b"),
            key.identity_file,
            crate::harness::etcd_bin(Version::V35),
            crate::harness::etcdutl_bin(),
            dir.path().join("drills"),
        ),
    )
    .unwrap();
    let mut cmd = lifeboat();
    cmd.arg("--config").arg(&config).arg("serve");
    let mut serve = Serve::start(cmd, dir.path().join("serve.log"));
    wait_until("a passed drill", Duration::from_secs(60), || {
        serve.metric("lifeboat_drill_last_success_timestamp_seconds") > 1.7e9
    });
    assert_eq!(serve.metric("lifeboat_drill_failures_total"), 0.0);
    assert_eq!(
        serve.get("/readyz").unwrap().0,
        200,
        "{:?}",
        serve.get("/readyz")
    );
    // Drill-only: no backup worker, so none of its metrics (a worker that does not run exports
    // nothing), and the drills' are there.
    assert!(
        serve.metric("lifeboat_backups_total").is_nan(),
        "drill-only: no backup metrics"
    );
    assert!(serve.metric("lifeboat_continuous_lag_seconds").is_nan());
    // A manifest whose HashKV the restored etcd contradicts makes the drills fail.
    let b = dir.path().join("b");
    let name = files_in(&b)
        .into_iter()
        .find(|f| f.ends_with(".manifest.json"))
        .unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join(&name)).unwrap()).unwrap();
    m["hashkv"]["hash"] = serde_json::json!(m["hashkv"]["hash"].as_u64().unwrap() ^ 1);
    std::fs::write(b.join(&name), serde_json::to_vec(&m).unwrap()).unwrap();
    crate::harness::resign(&b.join(&name));
    // The manifest and its signature are rewritten one after the other, so a drill may run in
    // between and fail on the signature: wait for the one that fails on the HashKV.
    wait_until(
        "a drill failed on the HashKV",
        Duration::from_secs(60),
        || serve.log_text().contains("FAILED"),
    );
    assert!(serve.metric("lifeboat_drill_failures_total") >= 1.0);
    assert_eq!(
        serve.stop(Duration::from_secs(20)),
        0,
        "{}",
        serve.log_text()
    );
    assert!(
        files_in(&dir.path().join("drills")).is_empty(),
        "sandboxes removed"
    );
}

/// Regression: `/readyz` opened an etcd connection and listed the store on every request,
/// with no cache or bound, and its 503 body named the endpoints and the store to anyone.
#[test]
fn readyz_names_components_only_and_logs_the_details() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let mut etcd = EtcdProcess::start(Version::V35, None);
    let port = etcd.client_url.rsplit(':').next().unwrap().to_string();
    let serve = Serve::start(
        serve_cmd(
            &etcd.lifeboat_flags(),
            dir.path(),
            &key.recipient,
            "0 0 * * *",
        ),
        dir.path().join("serve.log"),
    );
    wait_until("ready", Duration::from_secs(30), || {
        serve.get("/readyz").is_some_and(|(code, _)| code == 200)
    });
    etcd.stop();
    let mut last = (0, String::new());
    wait_until("not ready", Duration::from_secs(30), || {
        last = serve.get("/readyz").unwrap_or_default();
        last.0 == 503
    });
    assert_eq!(last.1, "not ready: etcd (details in the log)\n");
    assert!(!last.1.contains(&port), "{}", last.1);
    let dest = dir.path().join("b").display().to_string();
    assert!(!last.1.contains(&dest), "{}", last.1);
    // Many requests at once are answered from one check.
    let answers: Vec<Option<(u16, String)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20).map(|_| s.spawn(|| serve.get("/readyz"))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers
        .iter()
        .all(|a| a.as_ref().is_some_and(|(c, _)| *c == 503)));
    let log = serve.log_text();
    assert!(log.contains("not ready") && log.contains(&port), "{log}");
    let checks = log.matches("not ready").count();
    assert!(
        checks <= 6,
        "the verdict is cached, not re-checked per request: {checks} checks in {log}"
    );
}

/// Regression: leadership was checked only at the start of a tick, so an uploader paused past
/// its lease (SIGSTOP here; a long GC or a frozen VM in life) finished its backup — and its
/// prune — after another had taken over. The commit is now fenced on still holding the
/// election key in etcd.
#[test]
fn an_uploader_paused_past_its_lease_commits_nothing_after_another_took_over() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let cluster = start_cluster(Version::V35, 3);
    let config = dir.path().join("lifeboat.toml");
    std::fs::write(
        &config,
        "[serve]\nlease_ttl = \"3s\"\n[retention]\nkeep_last = 1000\n",
    )
    .unwrap();
    let release = dir.path().join("release");
    // A and B on the two followers: an uploader on the raft leader's node would hand the
    // election to B as soon as B campaigns (#13).
    let leader = raft_leader(&cluster);
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let start = |i: usize, hold: bool| {
        let mut cmd = serve_cmd(
            &[format!("--endpoints={}", cluster[i].client_url)],
            dir.path(),
            &key.recipient,
            "*/2 * * * * *",
        );
        cmd.arg("--config").arg(&config);
        if hold {
            cmd.env("LIFEBOAT_TEST_HOLD_BEFORE_COMMIT", &release);
        }
        Serve::start(cmd, dir.path().join(format!("serve{i}.log")))
    };
    // A first, so that it is the uploader; its backups wait before their commit.
    let mut a = start(followers[0], true);
    wait_until("A uploads", Duration::from_secs(30), || {
        a.metric("lifeboat_is_leader") == 1.0
    });
    let mut b = start(followers[1], false);
    wait_until(
        "A holds a backup before its commit",
        Duration::from_secs(30),
        || a.log_text().contains("test hold before commit"),
    );
    let pid = a.child.id().to_string();
    run_ok(Command::new("kill").args(["-STOP", &pid]));
    wait_until("B takes over", Duration::from_secs(30), || {
        b.metric("lifeboat_is_leader") == 1.0
    });
    wait_until("a backup by B", Duration::from_secs(30), || {
        manifests(dir.path())
            .iter()
            .any(|m| m["member_name"] == format!("m{}", followers[1]))
    });
    std::fs::write(&release, b"go").unwrap();
    run_ok(Command::new("kill").args(["-CONT", &pid]));
    // Whoever notices first — the fence's transaction, or the lease keeper clearing the
    // local flag — the commit is refused.
    wait_until("A's commit refused", Duration::from_secs(30), || {
        a.log_text().contains("was not committed")
    });
    let all = manifests(dir.path());
    assert!(
        all.iter()
            .all(|m| m["member_name"] == format!("m{}", followers[1])),
        "the stalled uploader committed: {all:?}\n{}",
        a.log_text()
    );
    assert_one_backup_per_two_second_tick(&all);
    assert_eq!(a.stop(Duration::from_secs(20)), 0);
    assert_eq!(b.stop(Duration::from_secs(20)), 0);
}

/// Regression: the cluster id was read once at start, for the election key and for
/// retention. When the cluster behind the endpoint is replaced (a restore underneath a running
/// serve makes a new cluster), serve moves to the new cluster's election and keeps taking
/// backups, named for the new cluster.
#[test]
fn serve_follows_a_new_cluster_behind_its_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let mut first = EtcdProcess::start(Version::V35, None);
    let port: u16 = first
        .client_url
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let config = dir.path().join("lifeboat.toml");
    std::fs::write(
        &config,
        "[serve]\nlease_ttl = \"3s\"\n[retention]\nkeep_last = 1000\n",
    )
    .unwrap();
    let mut cmd = serve_cmd(
        &first.lifeboat_flags(),
        dir.path(),
        &key.recipient,
        "*/1 * * * * *",
    );
    cmd.arg("--config").arg(&config);
    let mut serve = Serve::start(cmd, dir.path().join("serve.log"));
    wait_until(
        "a backup of the first cluster",
        Duration::from_secs(30),
        || !manifests(dir.path()).is_empty(),
    );
    let old_cluster = manifests(dir.path())[0]["cluster_id"].clone();
    first.stop();
    let second = EtcdProcess::start_at_port(Version::V35, port);
    let mut new_cluster = serde_json::Value::Null;
    wait_until(
        "a backup of the new cluster",
        Duration::from_secs(60),
        || {
            manifests(dir.path()).iter().any(|m| {
                let new = m["cluster_id"] != old_cluster;
                if new {
                    new_cluster = m["cluster_id"].clone();
                }
                new
            })
        },
    );
    let election = format!("/lifeboat/uploader/{}", new_cluster.as_str().unwrap());
    let keys = run_ok(
        second
            .etcdctl()
            .args(["get", "--prefix", "--keys-only", &election]),
    );
    assert!(
        !String::from_utf8_lossy(&keys.stdout).trim().is_empty(),
        "no campaign under {election}: {}",
        serve.log_text()
    );
    assert!(
        serve.log_text().contains("another cluster"),
        "{}",
        serve.log_text()
    );
    assert_eq!(serve.stop(Duration::from_secs(20)), 0);
}
