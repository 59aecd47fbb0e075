//! Immutable backups (#11) against SeaweedFS, which enforces S3 Object Lock and IAM policies:
//! the node writes locked backups with the credentials of deploy/iam/node-policy.json, which
//! cannot delete; the pruner, configured as deploy/kubernetes/pruner-config.yaml with the
//! credentials of deploy/iam/pruner-policy.json, deletes a backup only once no lock holds it and
//! reports the locked ones without touching them.

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::error::ProvideErrorMetadata;
use serde_json::Value;

use crate::harness::data::rt;
use crate::harness::s3::{Keys, S3Server};
use crate::harness::{age_key, lifeboat, run, test_keys, EtcdProcess, Version};

const BUCKET: &str = "etcd-backups";
const PREFIX: &str = "my-cluster/";

/// Every key of a backup as the bucket names it: data, manifest, signature.
fn keys_of(m: &Value) -> Vec<String> {
    let id = m["id"].as_str().unwrap();
    vec![
        format!("{PREFIX}{}", m["object"]["key"].as_str().unwrap()),
        format!("{PREFIX}{id}.manifest.json"),
        format!("{PREFIX}{id}.manifest.json.minisig"),
    ]
}

/// The lock mode and end the bucket reports for a key.
fn lock_of(server: &S3Server, key: &str) -> (String, SystemTime) {
    let head = rt().block_on(async {
        server
            .client()
            .await
            .head_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .unwrap()
    });
    let mode = head
        .object_lock_mode()
        .expect("locked")
        .as_str()
        .to_string();
    let until = SystemTime::try_from(*head.object_lock_retain_until_date().unwrap()).unwrap();
    (mode, until)
}

/// (key, version id) of every version, and the keys of every delete marker, in the bucket.
fn versions(server: &S3Server) -> (Vec<(String, String)>, Vec<String>) {
    let out = rt().block_on(async {
        server
            .client()
            .await
            .list_object_versions()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap()
    });
    let versions = out
        .versions()
        .iter()
        .map(|v| {
            (
                v.key().unwrap().to_string(),
                v.version_id().unwrap().to_string(),
            )
        })
        .collect();
    let markers = out
        .delete_markers()
        .iter()
        .map(|m| m.key().unwrap().to_string())
        .collect();
    (versions, markers)
}

/// Deletes a key (one version of it when given) with `keys`; the S3 error code on refusal.
fn delete_as(
    server: &S3Server,
    keys: &Keys,
    key: &str,
    version: Option<&str>,
) -> Result<(), String> {
    rt().block_on(async {
        server
            .client_as(keys)
            .await
            .delete_object()
            .bucket(BUCKET)
            .key(key)
            .set_version_id(version.map(String::from))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| e.code().unwrap_or("no code").to_string())
    })
}

/// The pruner's ConfigMap, pointed at this server with the pruner's keys in files.
fn pruner_config(server: &S3Server, dir: &Path) -> std::path::PathBuf {
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_norway::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/pruner-config.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let text = cm.data.unwrap().remove("lifeboat.toml").unwrap();
    let keys = server.pruner.clone().unwrap();
    let secrets = dir.join("pruner-secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("access-key"), &keys.access_key).unwrap();
    std::fs::write(secrets.join("secret-key"), &keys.secret_key).unwrap();
    std::fs::copy(&test_keys().public, secrets.join("signing.key.pub")).unwrap();
    let text = text
        .replace(
            "# endpoint = \"https://minio.example:9000\"",
            &format!("endpoint = {:?}", server.endpoint),
        )
        .replace("# path_style = true", "path_style = true")
        .replace(
            "/var/run/secrets/etcd-lifeboat-pruner",
            secrets.to_str().unwrap(),
        );
    assert!(text.contains("endpoint = \"http://127.0.0.1"), "{text}");
    let path = dir.join("pruner.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `lifeboat <args> --config pruner.toml` as the pruner: no signing key, only the config's.
fn as_pruner(config: &Path, args: &[&str]) -> crate::harness::Run {
    let mut cmd = lifeboat();
    cmd.env_remove("LIFEBOAT_SIGNING_KEY")
        .env_remove("LIFEBOAT_TRUSTED_KEYS")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(args)
        .arg("--config")
        .arg(config);
    run(&mut cmd)
}

#[test]
fn locked_backups_outlive_the_nodes_credentials_and_the_pruner_deletes_them_only_when_the_lock_ends(
) {
    let server = S3Server::start_with_roles();
    rt().block_on(server.create_locked_bucket(BUCKET));
    let node = server.node.clone().unwrap();
    let pruner = server.pruner.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let etcd = EtcdProcess::start(Version::V35, None);
    etcd.put("/registry/a", "1");
    let save = |mode: &str, period: &str| -> Value {
        let mut cmd = lifeboat();
        cmd.args(["snapshot", "save", "-w", "json", "-r", &key.recipient])
            .args(etcd.lifeboat_flags())
            .arg("--work-dir")
            .arg(dir.path().join("w"))
            .arg(format!("--dest=s3://{BUCKET}/{PREFIX}"))
            .args(server.flags())
            .arg(format!("--s3-lock-mode={mode}"))
            .arg(format!("--s3-lock-period={period}"))
            .envs(server.env_as(&node));
        run(&mut cmd).ok().json()
    };
    let short = save("compliance", "2s");
    let governed = save("governance", "1h");
    let newest = save("compliance", "1h");

    // Every object of a backup carries the lock, from its upload on.
    let hour_from_now = SystemTime::now() + Duration::from_secs(3000);
    for (m, mode) in [(&governed, "GOVERNANCE"), (&newest, "COMPLIANCE")] {
        for k in keys_of(m) {
            let (got, until) = lock_of(&server, &k);
            assert_eq!(got, mode, "{k}");
            assert!(until > hour_from_now, "{k} locked for the hour");
        }
    }

    // The node's credentials delete nothing: not the object, not a version of it.
    let (all, _) = versions(&server);
    for k in keys_of(&newest) {
        assert_eq!(
            delete_as(&server, &node, &k, None),
            Err("AccessDenied".into()),
            "{k}"
        );
        let version = &all.iter().find(|(key, _)| *key == k).unwrap().1;
        assert!(delete_as(&server, &node, &k, Some(version)).is_err(), "{k}");
    }

    // Wait out the short lock (read from the bucket, not guessed).
    let short_until = keys_of(&short)
        .iter()
        .map(|k| lock_of(&server, k).1)
        .max()
        .unwrap();
    while SystemTime::now() <= short_until + Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(200));
    }

    let config = pruner_config(&server, dir.path());
    // Manual backups are kept 30 days by the ConfigMap's rules; here none is.
    let report = as_pruner(&config, &["prune", "--manual-keep-days", "0", "-w", "json"])
        .ok()
        .json();
    let action_of = |m: &Value| {
        report["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == m["id"])
            .unwrap_or_else(|| panic!("{m} in {report}"))
            .clone()
    };
    assert_eq!(action_of(&short)["action"], "delete", "{report}");
    assert_eq!(action_of(&newest)["action"], "keep", "{report}");
    let locked = action_of(&governed);
    assert_eq!(locked["action"], "locked", "{report}");
    assert!(
        locked["rules"]
            .to_string()
            .contains("Object Lock (governance) until"),
        "{locked}"
    );
    assert_eq!(
        (report["deleted"].as_u64(), report["locked"].as_u64()),
        (Some(1), Some(1))
    );

    // The expired backup is gone with every version; the locked one was never touched (no
    // delete marker hides it).
    let (left, markers) = versions(&server);
    assert!(markers.is_empty(), "delete markers: {markers:?}");
    for k in keys_of(&short) {
        assert!(!left.iter().any(|(key, _)| *key == k), "{k} left: {left:?}");
    }
    for k in keys_of(&governed).into_iter().chain(keys_of(&newest)) {
        assert!(left.iter().any(|(key, _)| *key == k), "{k} kept");
    }

    // The pruner's own credentials cannot remove a locked version either (no governance bypass).
    for (k, version) in left.iter().filter(|(k, _)| k.ends_with(".manifest.json")) {
        assert!(
            delete_as(&server, &pruner, k, Some(version)).is_err(),
            "{k} is locked"
        );
    }
    let listed = as_pruner(&config, &["snapshot", "list", "-w", "json"])
        .ok()
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    // The table says which backups the lock keeps, and a second run changes nothing.
    let table = as_pruner(&config, &["prune", "--manual-keep-days", "0"]).ok();
    assert!(
        table.stdout.contains("1 held by an S3 Object Lock"),
        "{}",
        table.stdout
    );
    assert_eq!(versions(&server).0.len(), left.len());
}

#[test]
fn a_lock_setting_on_a_bucket_without_object_lock_is_refused_before_any_upload() {
    let server = S3Server::start();
    rt().block_on(server.create_bucket("plain"));
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let etcd = EtcdProcess::start(Version::V35, None);
    let mut cmd = lifeboat();
    cmd.args(["snapshot", "save", "-r", &key.recipient])
        .args(etcd.lifeboat_flags())
        .arg("--work-dir")
        .arg(dir.path().join("w"))
        .arg("--dest=s3://plain/x")
        .args(server.flags())
        .args(["--s3-lock-mode=compliance", "--s3-lock-period=1d"])
        .envs(server.env());
    let r = run(&mut cmd);
    assert_eq!(r.code, 5, "storage refused: {}", r.stderr);
    assert!(
        r.stderr.contains("has no Object Lock") && r.stderr.contains("s3.lock_mode"),
        "{}",
        r.stderr
    );
    assert!(rt().block_on(server.keys("plain")).is_empty());
}

/// #21: the shadow has its own S3 principal (deploy/iam/shadow-policy.json): it writes its bases
/// and its proofs, and nothing of what the writers' journal is made of; it deletes nothing.
#[test]
fn the_shadows_credentials_write_only_its_bases_and_proofs() {
    let server = S3Server::start_with_roles();
    rt().block_on(server.create_bucket(BUCKET));
    let shadow = server.shadow.clone().unwrap();
    let put = |key: &str| {
        rt().block_on(async {
            server
                .client_as(&shadow)
                .await
                .put_object()
                .bucket(BUCKET)
                .key(key)
                .body(aws_sdk_s3::primitives::ByteStream::from_static(b"x"))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.code().unwrap_or("no code").to_string())
        })
    };
    let chain = "etcd-20261204T000000.000Z-00000000000000ab-0001";
    let base = format!("{PREFIX}{chain}.manifest.json");
    for key in [
        base.clone(),
        format!("{PREFIX}{chain}.db.zst.age"),
        format!("{PREFIX}seg.{chain}.proven.json"),
        format!("{chain}.manifest.json"),
    ] {
        assert_eq!(put(&key), Ok(()), "{key}");
    }
    for key in [
        format!("{PREFIX}seg.{chain}.0000000001.0000000000000000002.json"),
        format!("{PREFIX}seg.{chain}.head.json"),
        format!("{PREFIX}notes.txt"),
    ] {
        assert_eq!(put(&key), Err("AccessDenied".into()), "{key}");
    }
    assert_eq!(
        delete_as(&server, &shadow, &base, None),
        Err("AccessDenied".into())
    );
}

/// #21: Object Lock protects versions while lifeboat reads current ones. A node's credentials
/// can put a backup's files again without lock headers: the pruner then still spares the key
/// (an older version is locked) instead of hiding it behind a delete marker; and a manifest
/// hidden behind a delete marker while locked makes `latest` fail, naming it.
#[test]
fn a_locked_older_version_spares_its_key_and_a_hidden_locked_backup_stops_latest() {
    let server = S3Server::start_with_roles();
    rt().block_on(server.create_locked_bucket(BUCKET));
    let node = server.node.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let etcd = EtcdProcess::start(Version::V35, None);
    let save = || -> Value {
        etcd.put("/registry/a", "1");
        let mut cmd = lifeboat();
        cmd.args(["snapshot", "save", "-w", "json", "-r", &key.recipient])
            .args(etcd.lifeboat_flags())
            .arg(format!("--dest=s3://{BUCKET}/{PREFIX}"))
            .args(server.flags())
            .arg("--s3-lock-mode=compliance")
            .arg("--s3-lock-period=1h")
            .envs(server.env_as(&node));
        run(&mut cmd).ok().json()
    };
    let older = save();
    let newer = save();
    // The node puts every file of the older backup again, same bytes, no lock headers.
    for k in keys_of(&older) {
        let bytes = rt().block_on(server.get(BUCKET, &k));
        rt().block_on(async {
            server
                .client_as(&node)
                .await
                .put_object()
                .bucket(BUCKET)
                .key(&k)
                .body(aws_sdk_s3::primitives::ByteStream::from(bytes))
                .send()
                .await
                .unwrap()
        });
    }
    let config = pruner_config(&server, dir.path());
    let report = as_pruner(
        &config,
        &[
            "prune",
            "--keep-last",
            "0",
            "--manual-keep-days",
            "0",
            "-w",
            "json",
        ],
    )
    .ok()
    .json();
    let decision = report["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == older["id"])
        .unwrap()
        .clone();
    assert_eq!(decision["action"], "locked", "{report}");
    let (_, markers) = versions(&server);
    assert!(markers.is_empty(), "nothing hidden: {markers:?}");

    // Someone hides the newer backup's manifest behind a delete marker.
    let manifest = format!("{PREFIX}{}.manifest.json", newer["id"].as_str().unwrap());
    rt().block_on(async {
        server
            .client()
            .await
            .delete_object()
            .bucket(BUCKET)
            .key(&manifest)
            .send()
            .await
            .unwrap()
    });
    let latest = |extra: &[&str]| {
        let mut cmd = lifeboat();
        cmd.args(["snapshot", "get", "latest", "--force", "-o"])
            .arg(dir.path().join("latest.db"))
            .arg("-i")
            .arg(&key.identity_file)
            .arg(format!("--dest=s3://{BUCKET}/{PREFIX}"))
            .args(server.flags())
            .args(extra)
            .envs(server.env());
        run(&mut cmd)
    };
    let r = latest(&[]);
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(newer["id"].as_str().unwrap()) && r.stderr.contains("delete marker"),
        "{}",
        r.stderr
    );
    let r = latest(&["--accept-older"]).ok();
    assert!(
        r.stdout.contains(older["id"].as_str().unwrap()),
        "{}",
        r.stdout
    );
}
