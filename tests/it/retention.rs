//! Retention against real stores (the folder and SeaweedFS), with an injected clock; and
//! `lifeboat prune` on real backups.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use lifeboat::catalog::{BackupId, Catalog, Manifest};
use lifeboat::retention::{prune, Action, Policy};
use lifeboat::store::{
    bytes_stream, ByteStream, LocalStore, ObjectInfo, S3Settings, S3Store, Store, StoreError,
};

use crate::harness::data::rt;
use crate::harness::s3::S3Server;
use crate::harness::{age_key, lifeboat, run, EtcdProcess, Version};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
}

/// Commits a backup (object + manifest) created `hours` before `now()`.
async fn backup_at(catalog: &Catalog, hours: i64, reason: &str, cluster: u64) -> String {
    let id = BackupId::new(now() - chrono::Duration::hours(hours), cluster);
    let object = id.object_key(true);
    catalog
        .store()
        .put(
            &object,
            bytes_stream(Bytes::from_static(b"age-encrypted bytes")),
        )
        .await
        .unwrap();
    let m = serde_json::json!({
        "schema_version": 1, "id": id.to_string(), "created_at": id.time, "cluster_id": format!("{cluster:x}"),
        "member_id": "1", "member_name": "cp1", "endpoint": "https://127.0.0.1:2379", "etcd_version": "3.5.16",
        "revision": 100 - hours, "raft_index": 1, "db_size": 1,
        "status": {"hash": 1, "revision": 1, "totalKey": 1, "totalSize": 1},
        "hashkv": {"hash": 1, "compact_revision": 0, "checked": true, "result": "equal"},
        "plain_sha256": "00", "plain_size": 1, "object": {"key": object, "size": 19, "sha256": "00"},
        "compression": {"algorithm": "zstd", "level": 3}, "encryption": {"scheme": "age", "recipients": []},
        "reason": reason, "tool_version": "test", "duration_ms": 1
    });
    let manifest = Manifest::parse("test", m.to_string().as_bytes()).unwrap();
    catalog.commit(&manifest, None).await.unwrap();
    id.to_string()
}

fn policy() -> Policy {
    Policy {
        keep_last: 2,
        keep_hourly: 0,
        keep_daily: 3,
        keep_weekly: 0,
        keep_monthly: 0,
        manual_keep_days: 7,
        pre_upgrade_keep_days: 7,
        incomplete_grace: std::time::Duration::from_secs(3600),
        journal_keep: std::time::Duration::from_secs(3600),
    }
}

async fn keys(store: &dyn Store) -> Vec<String> {
    store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

async fn prune_against(store: Arc<dyn Store>) {
    let catalog = Catalog::new(store.clone(), crate::harness::lenient_trust());
    // Scheduled every 8 hours for 5 days, one old and one fresh manual backup, another cluster.
    let mut scheduled = Vec::new();
    for h in (0..120).step_by(8) {
        scheduled.push(backup_at(&catalog, h, "scheduled", 0xa).await);
    }
    let old_manual = backup_at(&catalog, 24 * 10, "manual", 0xa).await;
    let new_manual = backup_at(&catalog, 24 * 2, "manual", 0xa).await;
    let other_cluster = backup_at(&catalog, 24 * 50, "scheduled", 0xb).await;
    // Node bundles saved by `lifeboat upgrade` go with their backup.
    let old_bundle = format!("{old_manual}.node-cp1.tar.zst.age");
    let new_bundle = format!("{new_manual}.node-cp1.tar.zst.age");
    for b in [&old_bundle, &new_bundle] {
        store
            .put(b, bytes_stream(Bytes::from_static(b"bundle")))
            .await
            .unwrap();
    }
    // Not ours: never touched.
    for foreign in [
        "notes.txt",
        "etcd-backup.db.zst.age",
        "etcd-20261122T000000.000Z-zz-0000.manifest.json",
    ] {
        store
            .put(foreign, bytes_stream(Bytes::from_static(b"x")))
            .await
            .unwrap();
    }
    let before = keys(store.as_ref()).await;

    let dry = prune(&catalog, &policy(), now(), Some(0xa), true, None)
        .await
        .unwrap();
    assert_eq!(
        keys(store.as_ref()).await,
        before,
        "a dry run deletes nothing"
    );
    assert!(dry.decisions.iter().all(|d| d.cluster_id == "a"));
    let doomed: Vec<&str> = dry
        .decisions
        .iter()
        .filter(|d| d.action == Action::Delete)
        .map(|d| d.id.as_str())
        .collect();
    // Kept: the 2 newest (last), the newest of 3 days (12:00 today, 20:00 and 20:00 the days
    // before… whichever are newest per day), the fresh manual one.
    assert!(!doomed.contains(&scheduled[0].as_str()) && !doomed.contains(&new_manual.as_str()));
    assert!(doomed.contains(&old_manual.as_str()));
    assert!(doomed.contains(&scheduled.last().unwrap().as_str()));

    let done = prune(&catalog, &policy(), now(), Some(0xa), false, None)
        .await
        .unwrap();
    assert_eq!(done.deleted, doomed.len());
    let (left, _) = catalog.list().await.unwrap();
    let left_ids: Vec<&str> = left.iter().map(|m| m.id.as_str()).collect();
    for id in &doomed {
        assert!(!left_ids.contains(id), "{id} deleted");
    }
    assert!(
        left_ids.contains(&other_cluster.as_str()),
        "other clusters untouched"
    );
    let after = keys(store.as_ref()).await;
    for foreign in [
        "notes.txt",
        "etcd-backup.db.zst.age",
        "etcd-20261122T000000.000Z-zz-0000.manifest.json",
    ] {
        assert!(after.contains(&foreign.to_string()), "{foreign} untouched");
    }
    assert!(
        !after.contains(&old_bundle),
        "the bundle went with its backup"
    );
    assert!(
        after.contains(&new_bundle),
        "a kept backup keeps its bundle"
    );
    // Every remaining manifest has its object.
    for m in &left {
        assert!(after.contains(&m.object.key), "{} has its object", m.id);
    }
}

#[test]
fn prune_on_the_local_folder() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(prune_against(Arc::new(
        LocalStore::open(dir.path()).unwrap(),
    )));
}

#[test]
fn prune_on_s3() {
    let server = S3Server::start();
    rt().block_on(async {
        server.create_bucket("ret").await;
        let mut s = S3Settings::new("ret", "prod");
        s.endpoint = Some(server.endpoint.clone());
        s.path_style = true;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ak"), &server.access_key).unwrap();
        std::fs::write(dir.path().join("sk"), &server.secret_key).unwrap();
        s.access_key_file = Some(dir.path().join("ak"));
        s.secret_key_file = Some(dir.path().join("sk"));
        s.region = Some("us-east-1".into());
        prune_against(Arc::new(S3Store::open(s).await.unwrap())).await;
    });
}

/// A store whose deletes of data objects fail: a crash between the two deletes.
struct FailingObjectDeletes {
    inner: LocalStore,
    fail: AtomicBool,
}

#[async_trait::async_trait]
impl Store for FailingObjectDeletes {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn put(&self, key: &str, body: ByteStream) -> Result<u64, StoreError> {
        self.inner.put(key, body).await
    }
    async fn replace(&self, key: &str, body: bytes::Bytes) -> Result<(), StoreError> {
        self.inner.replace(key, body).await
    }
    async fn get(&self, key: &str) -> Result<ByteStream, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        if key.ends_with(".db.zst.age") && self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Other {
                location: self.location(),
                what: format!("deleting {key}"),
                source: std::io::Error::other("injected crash"),
            });
        }
        self.inner.delete(key).await
    }
    async fn clean_incomplete(&self) -> Result<Vec<String>, StoreError> {
        self.inner.clean_incomplete().await
    }
}

#[test]
fn a_crash_mid_prune_never_leaves_a_manifest_without_its_object() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Arc::new(FailingObjectDeletes {
            inner: LocalStore::open(dir.path()).unwrap(),
            fail: AtomicBool::new(true),
        });
        let catalog = Catalog::new(store.clone(), crate::harness::lenient_trust());
        let _newest = backup_at(&catalog, 0, "manual", 0xa).await;
        let old = backup_at(&catalog, 24 * 30, "manual", 0xa).await;
        assert!(prune(&catalog, &policy(), now(), None, false, None)
            .await
            .is_err());
        let (left, _) = catalog.list().await.unwrap();
        assert_eq!(left.len(), 1, "the manifest went first");
        assert!(left.iter().all(|m| m.id != old));
        // The orphaned object goes once past the grace period.
        store.fail.store(false, Ordering::SeqCst);
        let report = prune(
            &catalog,
            &Policy {
                incomplete_grace: std::time::Duration::ZERO,
                ..policy()
            },
            Utc::now() + chrono::Duration::hours(1),
            None,
            false,
            None,
        )
        .await
        .unwrap();
        assert_eq!(report.orphans.len(), 1);
        assert!(!keys(store.as_ref())
            .await
            .iter()
            .any(|k| k.starts_with(&old)));
    });
}

#[test]
fn prune_cli_dry_run_lists_rules_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let etcd = EtcdProcess::start(Version::V35, None);
    etcd.put("/a", "1");
    let dest = dir.path().join("b");
    for _ in 0..3 {
        run(lifeboat()
            .args(["snapshot", "save", "-r", &key.recipient])
            .args(etcd.lifeboat_flags())
            .arg("--dest")
            .arg(&dest)
            .arg("--work-dir")
            .arg(dir.path().join("w")))
        .ok();
    }
    let prune_cmd = |extra: &[&str]| {
        run(lifeboat()
            .args(["prune", "--manual-keep-days", "0", "--dest"])
            .arg(&dest)
            .args(extra))
    };
    let dry = prune_cmd(&["--dry-run"]).ok();
    assert_eq!(
        dry.stdout.matches("would delete").count(),
        2,
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("newest") && dry.stdout.contains("no rule keeps it"),
        "{}",
        dry.stdout
    );
    // Three backups: object, manifest and signature each.
    assert_eq!(crate::harness::files_in(&dest).len(), 9);
    let done = prune_cmd(&["-w", "json"]).ok().json();
    assert_eq!(done["deleted"], 2);
    assert_eq!(crate::harness::files_in(&dest).len(), 3);
}
