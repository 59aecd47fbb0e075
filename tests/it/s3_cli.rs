//! Every `snapshot` subcommand with an S3 destination (a real SeaweedFS), credentials from the
//! standard AWS environment variables.

use crate::data::{fill, rt};
use crate::harness::s3::S3Server;
use crate::harness::{age_key, lifeboat, run, EtcdProcess, Version};

fn with_s3(cmd: &mut std::process::Command, server: &S3Server, dest: &str) {
    cmd.arg(format!("--dest={dest}")).args(server.flags());
    for (k, v) in server.env() {
        cmd.env(k, v);
    }
}

#[test]
fn save_list_verify_and_get_work_against_s3() {
    let server = S3Server::start();
    rt().block_on(server.create_bucket("etcd-backups"));
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let etcd = EtcdProcess::start(Version::V35, None);
    // Larger than one 8 MiB part after compression, so the upload is multipart.
    crate::data::rt().block_on(async {
        let mut c = crate::data::client(&etcd).await;
        for i in 0..400 {
            let v: Vec<u8> = (0..30_000).map(|_| rand::random::<u8>()).collect();
            c.put(format!("/registry/secrets/big/{i}"), v, None)
                .await
                .unwrap();
        }
    });
    fill(&etcd, 0);
    let dest = "s3://etcd-backups/clusters/prod";
    let mut save = lifeboat();
    save.args(["snapshot", "save", "-w", "json", "-r", &key.recipient])
        .args(etcd.lifeboat_flags())
        .arg("--work-dir")
        .arg(dir.path().join("w"));
    with_s3(&mut save, &server, dest);
    let m = run(&mut save).ok().json();
    assert!(
        m["object"]["size"].as_u64().unwrap() > 8 << 20,
        "multipart-sized: {m}"
    );
    assert_eq!(m["hashkv"]["checked"], true);
    let id = m["id"].as_str().unwrap();
    let mut keys = rt().block_on(server.keys("etcd-backups"));
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("clusters/prod/{}", m["object"]["key"].as_str().unwrap()),
            format!("clusters/prod/{id}.manifest.json"),
        ]
    );
    assert_eq!(rt().block_on(server.multipart_uploads("etcd-backups")), 0);

    let mut list = lifeboat();
    list.args(["snapshot", "list", "-w", "json"]);
    with_s3(&mut list, &server, dest);
    assert_eq!(run(&mut list).ok().json()[0]["id"], id);

    let mut verify = lifeboat();
    verify
        .args(["snapshot", "verify", "latest", "-i"])
        .arg(&key.identity_file)
        .arg("--work-dir")
        .arg(dir.path().join("w"));
    with_s3(&mut verify, &server, dest);
    run(&mut verify).ok();

    let out = dir.path().join("snap.db");
    let mut get = lifeboat();
    get.args(["snapshot", "get", id, "-i"])
        .arg(&key.identity_file)
        .arg("-o")
        .arg(&out);
    with_s3(&mut get, &server, dest);
    run(&mut get).ok();
    let status = run(lifeboat()
        .args(["snapshot", "status", "-w", "json"])
        .arg(&out))
    .ok()
    .json();
    assert_eq!(status, m["status"]);
}

#[test]
fn wrong_credentials_and_a_missing_bucket_are_one_clear_line_with_exit_5() {
    let server = S3Server::start();
    rt().block_on(server.create_bucket("bkt"));
    let mut cmd = lifeboat();
    cmd.args(["snapshot", "list"]);
    with_s3(&mut cmd, &server, "s3://bkt/x");
    cmd.env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let r = run(&mut cmd);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(
        r.stderr.contains("SignatureDoesNotMatch")
            || r.stderr.contains("AccessDenied")
            || r.stderr.contains("InvalidAccessKeyId"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("credentials"), "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(!r.stderr.contains("not-the-secret"));

    let mut cmd = lifeboat();
    cmd.args(["snapshot", "list"]);
    with_s3(&mut cmd, &server, "s3://missing-bucket/x");
    let r = run(&mut cmd);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(
        r.stderr.contains("NoSuchBucket") && r.stderr.contains("missing-bucket"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
}
