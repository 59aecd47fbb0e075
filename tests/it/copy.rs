//! A second copy (#28), against two real SeaweedFS servers: `serve --continuous` copies every
//! backup and journal segment to the other one (behind a proxy that can take it down), in
//! order and byte for byte; a copy target that is down is caught up once it is back; an object
//! tampered on the primary is named, counted and never copied; `lifeboat copy` is idempotent;
//! readers fall back to the copy when the primary cannot be reached; verify and a
//! point-in-time get work from the copy alone.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::data::{client, rt};
use crate::harness::http_fault::{FaultProxy, HttpFault};
use crate::harness::journal::write_keys;
use crate::harness::s3::S3Server;
use crate::harness::serve::Serve;
use crate::harness::{
    age_key, etcd_bin, free_port, lifeboat, restore_tool, run, EtcdProcess, Version,
};

/// The sum of a labelled metric's samples (`name{…} value`).
fn labelled(serve: &Serve, name: &str) -> f64 {
    serve
        .get("/metrics")
        .map(|(_, body)| {
            body.lines()
                .filter(|l| l.starts_with(&format!("{name}{{")))
                .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0)
}

/// Keys of a bucket that are committed manifests (backups, segments), without the prefix.
fn manifests(server: &S3Server, bucket: &str) -> Vec<String> {
    rt().block_on(server.keys(bucket))
        .into_iter()
        .map(|k| k.trim_start_matches("etcd/").to_string())
        .filter(|k| k.ends_with(".manifest.json") || is_segment_manifest(k))
        .collect()
}

/// The committed manifests (backups, segments) in a folder store.
fn folder_manifests(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|k| k.ends_with(".manifest.json") || is_segment_manifest(k))
                .collect()
        })
        .unwrap_or_default()
}

fn is_segment_manifest(key: &str) -> bool {
    lifeboat::continuous::SegmentKey::of_manifest_key(key).is_some()
}

fn backups(keys: &[String]) -> Vec<String> {
    keys.iter()
        .filter(|k| k.ends_with(".manifest.json"))
        .cloned()
        .collect()
}

fn segments(keys: &[String]) -> Vec<String> {
    keys.iter()
        .filter(|k| is_segment_manifest(k))
        .cloned()
        .collect()
}

fn secret_file(dir: &std::path::Path, name: &str, value: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, value).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn serve_copies_everything_checked_in_order_catches_up_and_readers_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let etcd = EtcdProcess::start(Version::V35, None);
    let (a, b) = (S3Server::start(), S3Server::start());
    rt().block_on(a.create_bucket("primary"));
    rt().block_on(b.create_bucket("copy"));
    let down = Arc::new(AtomicBool::new(false));
    let is_down = down.clone();
    let proxy = FaultProxy::start(&b.endpoint, move |_, _| {
        is_down
            .load(Ordering::SeqCst)
            .then_some(HttpFault::Status(503))
    });
    let copy_section = |endpoint: &str| {
        format!(
            "[[copy]]\ndest = \"s3://copy/etcd\"\ns3_endpoint = \"{endpoint}\"\ns3_path_style = true\ns3_region = \"us-east-1\"\naccess_key_file = \"{}\"\nsecret_key_file = \"{}\"\n",
            secret_file(dir.path(), "b.access", &b.access_key).display(),
            secret_file(dir.path(), "b.secret", &b.secret_key).display(),
        )
    };
    // Nothing pruned while the test runs: every backup stays on both sides.
    let config = dir.path().join("serve.toml");
    let (short, flagged) = (dir.path().join("short"), dir.path().join("flagged"));
    std::fs::write(
        &config,
        format!(
            // A folder copy with a retention of its own: the newest two only.
            "[retention]\nkeep_last = 1000\n\n{}\n[[copy]]\ndest = \"{}\"\nkeep_last = 2\nkeep_hourly = 0\nkeep_daily = 0\nkeep_weekly = 0\nkeep_monthly = 0\n",
            copy_section(&proxy.endpoint),
            short.display()
        ),
    )
    .unwrap();
    let primary = |cmd: &mut Command| {
        cmd.args(["--dest", "s3://primary/etcd"])
            .args(a.flags())
            .envs(a.env());
    };
    let mut cmd = lifeboat();
    cmd.arg("--config").arg(&config).args([
        "serve",
        "--schedule",
        "*/3 * * * * *",
        "--continuous",
        "-r",
        &key.recipient,
    ]);
    primary(&mut cmd);
    cmd.args(etcd.lifeboat_flags())
        .arg("--work-dir")
        .arg(dir.path().join("w"))
        .arg("--copy-to")
        .arg(&flagged);
    let mut serve = Serve::start(cmd, dir.path().join("serve.log"));

    // Up: backups and segments reach the copy.
    write_keys(&etcd, "/registry/before/", 20, 50);
    let before_rev = write_keys(&etcd, "/registry/before-more/", 5, 0) - 1;
    serve.wait_until(
        "two backups and a segment on the copy",
        Duration::from_secs(60),
        |_| {
            let on_b = manifests(&b, "copy");
            backups(&on_b).len() >= 2 && !segments(&on_b).is_empty()
        },
    );

    // Down: passes fail and are counted; the primary goes on.
    down.store(true, Ordering::SeqCst);
    let failures = |s: &Serve| labelled(s, "lifeboat_copy_failures_total");
    serve.wait_until("a failed copy pass", Duration::from_secs(60), |s| {
        failures(s) >= 1.0
    });
    let on_b_while_down = manifests(&b, "copy");
    write_keys(&etcd, "/registry/during/", 20, 50);
    serve.wait_until(
        "two backups on the primary the copy lacks",
        Duration::from_secs(60),
        |_| {
            let missing = backups(&manifests(&a, "primary"))
                .into_iter()
                .filter(|k| !on_b_while_down.contains(k))
                .count();
            missing >= 2
        },
    );
    // One of them tampered on the primary before the copy can take it.
    let newest = backups(&manifests(&a, "primary"))
        .into_iter()
        .filter(|k| !on_b_while_down.contains(k))
        .max()
        .unwrap();
    let id = newest.trim_end_matches(".manifest.json").to_string();
    let object = format!("etcd/{id}.db.zst.age");
    let mut bytes = rt().block_on(a.get("primary", &object));
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    rt().block_on(async {
        a.client()
            .await
            .put_object()
            .bucket("primary")
            .key(&object)
            .body(bytes.into())
            .send()
            .await
            .unwrap();
    });
    let seen_before_up = proxy.requests();

    // Back up: caught up, the tampered backup named, counted and not copied.
    down.store(false, Ordering::SeqCst);
    let after_rev = write_keys(&etcd, "/registry/after/", 10, 50) - 1;
    serve.wait_until("the copy caught up", Duration::from_secs(90), |serve| {
        let on_b = manifests(&b, "copy");
        let on_a = manifests(&a, "primary");
        let lacking: Vec<&String> = on_a
            .iter()
            .filter(|k| !on_b.contains(k) && **k != newest)
            .collect();
        let in_folder = folder_manifests(&flagged);
        serve.metric("lifeboat_continuous_last_revision") >= after_rev as f64
            && lacking.is_empty()
            && on_b.iter().all(|k| in_folder.contains(k))
            && labelled(serve, "lifeboat_copy_refused_total") >= 1.0
    });
    assert!(proxy.requests() > seen_before_up);
    assert!(
        serve.log_text().contains(&format!("{id}.db.zst.age")),
        "the log names the tampered object: {}",
        serve.log_text()
    );
    // Writes go on through SIGTERM: the journal's last segment, committed while serve stops,
    // holds some of them, and the uploader's last copy pass takes it (and anything else
    // committed meanwhile) before the process ends.
    let writing = AtomicBool::new(true);
    let written = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            rt().block_on(async {
                let mut c = client(&etcd).await;
                while writing.load(Ordering::SeqCst) {
                    let i = written.fetch_add(1, Ordering::SeqCst);
                    c.put(format!("/registry/last/{i}"), "v", None)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        });
        while written.load(Ordering::SeqCst) < 100 {
            std::thread::sleep(Duration::from_millis(10));
        }
        serve.stop_with(0);
        writing.store(false, Ordering::SeqCst);
    });
    let on_b = manifests(&b, "copy");
    let lacking: Vec<String> = manifests(&a, "primary")
        .into_iter()
        .filter(|k| !on_b.contains(k) && *k != newest)
        .collect();
    assert!(
        lacking.is_empty(),
        "committed on the primary, not on the copy after serve stopped: {lacking:?}\n{}",
        serve.log_text()
    );
    let in_folder = folder_manifests(&flagged);
    assert!(on_b.iter().all(|k| in_folder.contains(k)));
    assert!(
        !on_b.contains(&newest),
        "the tampered backup's manifest is not on the copy"
    );
    assert!(
        !rt().block_on(b.keys("copy")).contains(&object),
        "nor its object"
    );
    assert!(segments(&on_b).len() > segments(&on_b_while_down).len());
    // A copy with a retention of its own holds what that retention keeps, the primary more.
    let kept = backups(&folder_manifests(&short));
    assert!(
        (1..=3).contains(&kept.len()) && backups(&manifests(&a, "primary")).len() > 3,
        "{kept:?}"
    );

    // Byte for byte, and in order: no manifest before its object on the copy.
    let a_keys = rt().block_on(a.keys("primary"));
    for k in rt().block_on(b.keys("copy")) {
        if a_keys.contains(&k) && k != object {
            assert_eq!(
                rt().block_on(a.get("primary", &k)),
                rt().block_on(b.get("copy", &k)),
                "{k}"
            );
        }
    }
    let lines: Vec<String> = proxy
        .heads()
        .iter()
        .map(|h| h.lines().next().unwrap_or("").to_string())
        .collect();
    // The request line names the key, then a query or the protocol.
    let names = |line: &str, key: &str| {
        line.contains(&format!("/{key} ")) || line.contains(&format!("/{key}?"))
    };
    for m in backups(&on_b) {
        let id = m.trim_end_matches(".manifest.json");
        let manifest_put = lines
            .iter()
            .position(|l| l.starts_with("PUT ") && names(l, &m))
            .unwrap_or_else(|| panic!("no PUT of {m} through the proxy: {lines:#?}"));
        let object_done = lines
            .iter()
            .rposition(|l| names(l, &format!("{id}.db.zst.age")))
            .unwrap_or_else(|| panic!("no request for {id}'s object: {lines:#?}"));
        assert!(
            object_done < manifest_put,
            "{m} was written before its object"
        );
    }

    // From the copy alone (its own endpoint): verify and a point-in-time get.
    let b_config = dir.path().join("b.toml");
    std::fs::write(&b_config, copy_section(&b.endpoint)).unwrap();
    let copy_dest = |cmd: &mut Command| {
        cmd.args([
            "--dest",
            "s3://copy/etcd",
            "--s3-path-style",
            "--s3-endpoint",
            &b.endpoint,
        ])
        .envs(b.env());
    };
    let mut verify = lifeboat();
    verify
        .args(["snapshot", "verify", "latest", "-i"])
        .arg(&key.identity_file);
    copy_dest(&mut verify);
    let r = run(&mut verify);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let pitr = |dest: &dyn Fn(&mut Command), out: &str, rev: i64| {
        let mut cmd = lifeboat();
        cmd.args(["snapshot", "get", &format!("--to-revision={rev}"), "-o"])
            .arg(dir.path().join(out))
            .arg("-i")
            .arg(&key.identity_file)
            .arg("--etcd")
            .arg(etcd_bin(Version::V35))
            .arg("--etcdutl")
            .arg(restore_tool(Version::V35))
            .arg("--work-dir")
            .arg(dir.path().join(format!("pitr-{out}")));
        dest(&mut cmd);
        let r = run(&mut cmd);
        assert_eq!(r.code, 0, "{out}: {}\n{}", r.stdout, r.stderr);
        lifeboat::verify::hash_kv(&dir.path().join(out), rev, 0).unwrap()
    };
    // The cluster's own HashKV at each revision is the oracle (nothing was compacted).
    let live =
        |rev: i64| rt().block_on(async { client(&etcd).await.hash_kv(rev).await.unwrap().hash() });
    for rev in [before_rev, after_rev] {
        assert_eq!(
            pitr(&copy_dest, &format!("copy-{rev}.db"), rev),
            live(rev),
            "the copy alone restores revision {rev} exactly"
        );
    }
    // The primary as well, where its base is not the backup tampered with above.
    assert_eq!(
        pitr(&primary, &format!("primary-{before_rev}.db"), before_rev),
        live(before_rev)
    );

    // lifeboat copy of the whole primary, twice: the second copies nothing; the tampered
    // backup is refused both times (exit 4), named.
    let folder = dir.path().join("nfs");
    let copy_to_folder = || {
        let mut cmd = lifeboat();
        cmd.args(["copy", "--to"]).arg(&folder).args(["-w", "json"]);
        primary(&mut cmd);
        run(&mut cmd)
    };
    let first = copy_to_folder();
    assert_eq!(first.code, 4, "{}\n{}", first.stdout, first.stderr);
    let report = first.json();
    assert!(report["copied"].as_array().unwrap().len() >= 4, "{report}");
    assert!(
        report["refused"]
            .to_string()
            .contains(&format!("{id}.db.zst.age")),
        "{report}"
    );
    let second = copy_to_folder();
    assert_eq!(second.code, 4, "{}", second.stderr);
    assert_eq!(
        second.json()["copied"].as_array().unwrap().len(),
        0,
        "{}",
        second.stdout
    );
    assert!(second.json()["present"].as_u64().unwrap() >= 4);

    // Retention per store: the pruner run against the copy deletes there, nowhere else.
    let primary_before = manifests(&a, "primary");
    let mut prune = lifeboat();
    prune
        .args([
            "prune",
            "--keep-last",
            "1",
            "--keep-hourly",
            "0",
            "--keep-daily",
            "0",
        ])
        .args([
            "--keep-weekly",
            "0",
            "--keep-monthly",
            "0",
            "-w",
            "json",
            "--dest",
        ])
        .arg(&folder);
    let pruned = run(&mut prune);
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    assert!(
        pruned.json()["deleted"].as_u64().unwrap() >= 1,
        "{}",
        pruned.stdout
    );
    assert_eq!(
        manifests(&a, "primary"),
        primary_before,
        "the primary is untouched"
    );

    // The primary unreachable: a reader with the copy configured says so and reads the copy.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let unreachable = [
        "--dest",
        "s3://primary/etcd",
        "--s3-path-style",
        "--s3-endpoint",
        &dead,
    ];
    let mut get = lifeboat();
    get.arg("--config")
        .arg(&b_config)
        .args(["snapshot", "get", "latest", "-o"])
        .arg(dir.path().join("fallback.db"))
        .arg("-i")
        .arg(&key.identity_file)
        .args(unreachable)
        .envs(a.env());
    let r = run(&mut get);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("reading the second copy s3://copy/etcd"),
        "{}",
        r.stderr
    );
    assert!(dir.path().join("fallback.db").exists());
    // Without a copy configured, the same reader fails on the primary.
    let mut alone = lifeboat();
    alone
        .args(["snapshot", "list"])
        .args(unreachable)
        .envs(a.env());
    assert_ne!(run(&mut alone).code, 0);
}

/// `lifeboat copy` between folders on a kubeadm-shaped node: each backup's kit goes before the
/// backup, an upgrade mark after its kit and backup; `--dry-run` writes nothing and lists what a
/// run copies; `--since` leaves older backups out; the copy's kits read back with `kit list`.
#[test]
fn lifeboat_copy_takes_kits_and_marks_in_order_and_honours_dry_run_and_since() {
    let node = crate::harness::node::FakeNode::start(Version::V35);
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let save = || node.save(&key, &src, &dir.path().join("w"));
    let first = save();
    // A renewed certificate: the next backup names a new kit.
    let ca = node.kubernetes_dir().join("pki/ca.crt");
    let mut pem = std::fs::read(&ca).unwrap();
    pem.extend_from_slice(b"\n");
    std::fs::write(&ca, pem).unwrap();
    let second = save();
    let at_second = node.dump();
    let (kit1, kit2) = (
        first["kit"].as_str().unwrap(),
        second["kit"].as_str().unwrap(),
    );
    assert_ne!(kit1, kit2);
    // The upgrade gate's mark beside the first backup, naming its kit.
    let mark = lifeboat::catalog::upgrade_mark_key(
        first["id"].as_str().unwrap(),
        "cp1",
        chrono::Utc::now(),
        kit1,
    );
    std::fs::write(src.join(&mark), b"").unwrap();
    let copy = |extra: &[&str]| {
        let r = run(lifeboat()
            .args(["copy", "-w", "json", "--dest"])
            .arg(&src)
            .arg("--to")
            .arg(&dst)
            .args(extra));
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        r.json()
    };
    let kinds = |report: &serde_json::Value| -> Vec<String> {
        report["copied"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{} {}",
                    c["kind"].as_str().unwrap(),
                    c["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    let planned = copy(&["--dry-run"]);
    assert_eq!(
        kinds(&planned),
        [
            format!("kit {kit1}"),
            format!("backup {}", first["id"].as_str().unwrap()),
            format!("kit {kit2}"),
            format!("backup {}", second["id"].as_str().unwrap()),
            format!("mark {mark}"),
        ],
        "kit before its backup, the mark last"
    );
    assert!(
        crate::harness::files_in(&dst).is_empty(),
        "a dry run writes nothing"
    );
    // Only what is newer than the first backup.
    let since = second["created_at"].as_str().unwrap();
    let newer = copy(&["--since", since]);
    assert_eq!(
        kinds(&newer),
        [
            format!("kit {kit2}"),
            format!("backup {}", second["id"].as_str().unwrap())
        ]
    );
    assert_eq!(newer["before_since"].as_u64(), Some(1));
    let rest = copy(&[]);
    assert_eq!(
        kinds(&rest),
        [
            format!("kit {kit1}"),
            format!("backup {}", first["id"].as_str().unwrap()),
            format!("mark {mark}"),
        ]
    );
    for name in crate::harness::files_in(&dst) {
        assert_eq!(
            std::fs::read(src.join(&name)).unwrap(),
            std::fs::read(dst.join(&name)).unwrap(),
            "{name}"
        );
    }
    let listed = run(lifeboat()
        .args(["kit", "list", "-w", "json", "--dest"])
        .arg(&dst))
    .json();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(
        kinds(&copy(&[])),
        Vec::<String>::new(),
        "nothing left to copy"
    );

    // The primary lost (an S3 endpoint that does not answer): `restore` with the copy as
    // --fallback-dest says so and brings the node back to the newest backup from it.
    node.put("/registry/after-the-copy", "x");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let r = run(node
        .restore()
        .args(["latest", "--yes", "--force", "--identity"])
        .arg(&key.identity_file)
        .args([
            "--dest",
            "s3://primary/etcd",
            "--s3-path-style",
            "--s3-endpoint",
        ])
        .arg(&dead)
        .arg("--fallback-dest")
        .arg(&dst)
        .env("AWS_ACCESS_KEY_ID", "lost")
        .env("AWS_SECRET_ACCESS_KEY", "lost"));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains(&format!("reading the second copy {}", dst.display())),
        "{}",
        r.stderr
    );
    node.wait_healthy();
    assert_eq!(
        node.dump(),
        at_second,
        "the newest backup, read from the copy"
    );
}
