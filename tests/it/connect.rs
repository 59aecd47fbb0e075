//! Connection features: etcd auth (user/password, never logged), several endpoints (the first
//! that answers is the one member used), JSON logs, recipients from a file.

use crate::harness::{age_key, free_port, lifeboat, run, run_ok, EtcdProcess, Version};

#[test]
fn auth_with_user_and_password_works_and_the_password_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "k");
    let etcd = EtcdProcess::start(Version::V35, None);
    etcd.put("/registry/a", "1");
    let password = "S3cr3t-pa55word-xyz";
    run_ok(
        etcd.etcdctl()
            .args(["user", "add", &format!("root:{password}")]),
    );
    run_ok(etcd.etcdctl().args(["auth", "enable"]));
    let save = |pw: &str| {
        run(lifeboat()
            .args([
                "snapshot",
                "save",
                "-w",
                "json",
                "-r",
                &key.recipient,
                "--user",
                "root",
            ])
            .args(etcd.lifeboat_flags())
            .arg("--dest")
            .arg(dir.path().join("b"))
            .arg("--work-dir")
            .arg(dir.path().join("w"))
            .args(["--log-level", "debug", "--log-format", "json"])
            .env("LIFEBOAT_PASSWORD", pw))
    };
    let ok = save(password).ok();
    assert_eq!(ok.json()["hashkv"]["checked"], true);
    assert!(!ok.stderr.contains(password) && !ok.stdout.contains(password));
    let bad = save("wrong-password");
    assert_eq!(bad.code, 3, "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("refused the credentials of user `root`"),
        "{}",
        bad.stderr
    );
    assert!(!bad.stderr.contains("wrong-password"), "{}", bad.stderr);
}

#[test]
fn the_first_endpoint_that_answers_is_the_one_member_used() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "k");
    let etcd = EtcdProcess::start(Version::V34, None);
    etcd.put("/registry/a", "1");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let m = run(lifeboat()
        .args(["snapshot", "save", "-w", "json", "-r", &key.recipient])
        .arg(format!("--endpoints={dead},{}", etcd.client_url))
        .args(["--connect-timeout", "2s"])
        .arg("--dest")
        .arg(dir.path().join("b"))
        .arg("--work-dir")
        .arg(dir.path().join("w")))
    .ok()
    .json();
    assert_eq!(m["endpoint"], etcd.client_url);
}

#[test]
fn json_logs_are_one_object_per_line_and_recipients_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = age_key(dir.path(), "key-a.txt");
    let b = age_key(dir.path(), "key-b.txt");
    let file = dir.path().join("recipients.txt");
    std::fs::write(
        &file,
        format!("# ops team\n{}\n\n# vault\n{}\n", a.recipient, b.recipient),
    )
    .unwrap();
    let etcd = EtcdProcess::start(Version::V35, None);
    etcd.put("/registry/a", "1");
    let r = run(lifeboat()
        .args([
            "snapshot",
            "save",
            "-w",
            "json",
            "--log-format",
            "json",
            "--log-level",
            "info",
        ])
        .arg("--recipients-file")
        .arg(&file)
        .args(etcd.lifeboat_flags())
        .arg("--dest")
        .arg(dir.path().join("b"))
        .arg("--work-dir")
        .arg(dir.path().join("w")))
    .ok();
    let lines: Vec<serde_json::Value> = r
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "backup committed"),
        "{}",
        r.stderr
    );
    let m = r.json();
    assert_eq!(
        m["encryption"]["recipients"],
        serde_json::json!([a.recipient, b.recipient])
    );
    // Either identity reads it back.
    for key in [&a, &b] {
        run(&mut crate::harness::verify_latest(
            &dir.path().join("b"),
            &key.identity_file,
        ))
        .ok();
    }
}
