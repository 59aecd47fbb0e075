use super::*;
use chrono::TimeZone;

#[test]
fn ids_round_trip_and_sort_by_time() {
    let t1 = Utc.with_ymd_and_hms(2026, 11, 22, 3, 4, 5).unwrap();
    let t2 = t1 + chrono::Duration::milliseconds(1);
    let a = BackupId::new(t1, 0xdead_beef_0000_0001);
    let b = BackupId::new(t2, 0xdead_beef_0000_0001);
    assert_eq!(BackupId::parse(&a.to_string()), Some(a.clone()));
    assert!(a.to_string() < b.to_string());
    assert!(a.to_string().contains("deadbeef00000001"));
    assert_eq!(id_of_manifest_key(&a.manifest_key()), Some(a.clone()));
    assert_eq!(id_of_manifest_key(&a.object_key(true)), None);
}

#[test]
fn foreign_names_are_not_ours() {
    for name in [
        "etcd-x.manifest.json",
        "notes.manifest.json",
        "etcd-20261122T030405.000Z-deadbeef-0001.manifest.json",
        "etcd-20261122T030405.000Z-deadbeef00000001-0001-extra.manifest.json",
    ] {
        assert_eq!(id_of_manifest_key(name), None, "{name}");
    }
}

#[test]
fn bundle_keys_are_ours_only_with_a_backup_id_and_a_node() {
    let id = BackupId::new(chrono::Utc::now(), 0xab);
    assert_eq!(
        id_of_bundle_key(&format!("{id}.node-cp1.tar.zst.age")),
        Some(id.clone())
    );
    assert_eq!(
        id_of_bundle_key(&format!("{id}.node-cp1.tar.zst")),
        Some(id.clone())
    );
    assert_eq!(id_of_bundle_key(&format!("{id}.node-.tar.zst.age")), None);
    assert_eq!(id_of_bundle_key("etcd-x.node-cp1.tar.zst.age"), None);
    assert_eq!(id_of_bundle_key(&format!("{id}.db.zst.age")), None);
}

#[test]
fn upgrade_marks_name_their_backup_and_kit_and_each_upgrade_has_its_own() {
    let id = BackupId::new(chrono::Utc::now(), 0xab);
    let kit = "ab".repeat(32);
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-29T02:03:04.5Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let mark = upgrade_mark_key(&id.to_string(), "cp 1/x", at, &kit);
    assert_eq!(
        mark,
        format!("{id}.node-cp_1_x.20261129T020304.500Z.kit-{kit}")
    );
    assert_eq!(parse_upgrade_mark(&mark), Some((id.clone(), kit.clone())));
    assert_eq!(id_of_bundle_key(&mark), Some(id.clone()));
    let later = at + chrono::Duration::milliseconds(1);
    assert_ne!(
        mark,
        upgrade_mark_key(&id.to_string(), "cp 1/x", later, &kit)
    );
    // Not ours: a short or non-hex kit id, no node, no backup id.
    for key in [
        format!("{id}.node-cp1.x.kit-abc"),
        format!("{id}.node-cp1.x.kit-{}", "zz".repeat(32)),
        format!("{id}.node-.kit-{kit}"),
        format!("etcd-x.node-cp1.kit-{kit}"),
    ] {
        assert_eq!(parse_upgrade_mark(&key), None, "{key}");
    }
}

/// A manifest as `Manifest::new` would write it for a backup of `cluster` at `t`.
fn manifest(t: DateTime<Utc>, cluster: u64) -> Manifest {
    let id = BackupId::new(t, cluster);
    let text = format!(
        r#"{{"schema_version":1,"id":"{id}","created_at":"{}","cluster_id":"{cluster:x}","member_id":"1","member_name":"m","endpoint":"e","etcd_version":"3.5.16","revision":1,"raft_index":1,"db_size":1,"status":{{"hash":1,"revision":1,"totalKey":1,"totalSize":1}},"hashkv":{{"hash":1,"compact_revision":0,"checked":true,"result":"equal"}},"plain_sha256":"00","plain_size":1,"object":{{"key":"{}","size":1,"sha256":"00"}},"compression":{{"algorithm":"zstd","level":3}},"encryption":{{"scheme":"age","recipients":[]}},"reason":"scheduled","tool_version":"t","duration_ms":1}}"#,
        id.time.to_rfc3339(),
        id.object_key(true)
    );
    Manifest::parse("t", text.as_bytes()).unwrap()
}

fn key_of(m: &Manifest) -> String {
    format!("{}{MANIFEST_SUFFIX}", m.id)
}

#[test]
fn a_manifest_must_be_what_its_name_says() {
    let now = Utc::now();
    let good = manifest(now - chrono::Duration::hours(1), 0xab);
    assert!(check_names(&key_of(&good), &good, now).is_ok());
    let refused = |m: &Manifest, key: &str| check_names(key, m, now).unwrap_err().to_string();

    let other = manifest(now - chrono::Duration::hours(2), 0xab);
    assert!(refused(&good, &key_of(&other)).contains("says it is backup"));

    let mut elsewhere = good.clone();
    elsewhere.object.key = "etcd-20261122T030405.000Z-00000000000000cd-0001.db.zst.age".into();
    assert!(refused(&elsewhere, &key_of(&good)).contains("names the object"));

    let mut foreign = good.clone();
    foreign.object.key = "kube-apiserver.yaml".into();
    assert!(refused(&foreign, &key_of(&good)).contains("names the object"));

    let mut downgraded = good.clone();
    downgraded.encryption.scheme = "none".into();
    assert!(refused(&downgraded, &key_of(&good)).contains("names the object"));

    let mut cluster = good.clone();
    cluster.cluster_id = "cd".into();
    assert!(refused(&cluster, &key_of(&good)).contains("names cluster"));

    let mut padded = good.clone();
    padded.cluster_id = "00000000000000ab".into();
    assert!(check_names(&key_of(&good), &padded, now).is_ok());

    let mut redated = good.clone();
    redated.created_at = now;
    assert!(refused(&redated, &key_of(&good)).contains("dated"));

    let future = manifest(now + chrono::Duration::hours(1), 0xab);
    assert!(refused(&future, &key_of(&future)).contains("in the future"));
    let slightly = manifest(now + chrono::Duration::minutes(1), 0xab);
    assert!(
        check_names(&key_of(&slightly), &slightly, now).is_ok(),
        "clock skew"
    );
}

#[test]
fn cluster_ids_parse_padded_or_not() {
    assert_eq!(parse_cluster_id("ab"), Some(0xab));
    assert_eq!(parse_cluster_id("00000000000000ab"), Some(0xab));
    assert_eq!(parse_cluster_id("0xab"), Some(0xab));
    assert_eq!(parse_cluster_id("xyz"), None);
    assert_eq!(parse_cluster_id("00000000000000000ab"), None);
}

fn store_with(manifests: &[(String, Vec<u8>)]) -> (tempfile::TempDir, Catalog) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(crate::store::LocalStore::open(dir.path()).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (key, body) in manifests {
        rt.block_on(store.put(key, bytes_stream(body.clone().into())))
            .unwrap();
    }
    (dir, Catalog::new(store, lenient()))
}

fn lenient() -> Arc<ReadPolicy> {
    Arc::new(
        ReadPolicy::new(
            crate::trust::TrustedKeys::default(),
            Some(Utc::now() + chrono::Duration::days(1)),
        )
        .unwrap(),
    )
}

/// #11: a reader with trusted keys lists only manifests signed by one of them.
#[test]
fn only_manifests_signed_by_a_trusted_key_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let (ours_pub, _) = crate::trust::generate(&dir.path().join("ours.key")).unwrap();
    crate::trust::generate(&dir.path().join("theirs.key")).unwrap();
    let ours = SigningKey::from_file(&dir.path().join("ours.key")).unwrap();
    let theirs = SigningKey::from_file(&dir.path().join("theirs.key")).unwrap();
    let now = Utc::now();
    let signed = manifest(now - chrono::Duration::hours(3), 0xab);
    let forged = manifest(now - chrono::Duration::hours(2), 0xab);
    let unsigned = manifest(now - chrono::Duration::hours(1), 0xab);
    let (_d, catalog) = store_with(&[]);
    block_on(catalog.commit(&signed, Some(&ours))).unwrap();
    block_on(catalog.commit(&forged, Some(&theirs))).unwrap();
    block_on(catalog.commit(&unsigned, None)).unwrap();
    let strict = Catalog::new(
        catalog.store().clone(),
        Arc::new(
            ReadPolicy::new(
                crate::trust::TrustedKeys::from_files(&[ours_pub]).unwrap(),
                None,
            )
            .unwrap(),
        ),
    );
    let (listed, skipped) = block_on(strict.list()).unwrap();
    assert_eq!(listed, vec![signed.clone()]);
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped.iter().any(|s| s.reason.contains("not trusted")));
    assert!(skipped.iter().any(|s| s.reason.contains("not signed")));
    // #21: newer manifests that are not trusted make `latest` fail rather than quietly be
    // the older one; told, the newest trusted one stands.
    let refused = block_on(strict.find("latest", None)).unwrap_err();
    assert!(
        matches!(refused, CatalogError::NewerUntrusted { .. }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains(&unsigned.id),
        "names the newest: {refused}"
    );
    let latest = block_on(strict.latest(None)).unwrap();
    assert_eq!(latest.candidates, vec![signed.clone()]);
    assert!(latest.settle(&signed, true).is_ok());
    assert!(block_on(strict.find(&signed.id, None)).is_ok(), "by id");
    assert!(block_on(strict.find(&unsigned.id, None)).is_err());
    // A signed manifest changed afterwards is refused.
    let key = key_of(&signed);
    let mut tampered = signed.clone();
    tampered.revision += 1;
    block_on(catalog.store().delete(&key)).unwrap();
    block_on(
        catalog
            .store()
            .put(&key, bytes_stream(tampered.to_json().into_bytes().into())),
    )
    .unwrap();
    assert!(block_on(strict.find(&signed.id, None)).is_err());
    let (listed, _) = block_on(strict.list()).unwrap();
    assert!(listed.is_empty());
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Runtime::new().unwrap().block_on(f)
}

/// Regression: a manifest under a valid name whose id did not parse made `prune` (and so
/// `serve`'s retention) panic; one naming another object made retention delete it.
#[test]
fn untrusted_manifests_are_skipped_not_listed() {
    let now = Utc::now();
    let good = manifest(now - chrono::Duration::hours(1), 0xab);
    let mut garbage_id = manifest(now - chrono::Duration::hours(2), 0xab);
    let garbage_key = key_of(&garbage_id);
    garbage_id.id = "not-an-id".into();
    let future = manifest(now + chrono::Duration::days(365), 0xab);
    let (_dir, catalog) = store_with(&[
        (key_of(&good), good.to_json().into_bytes()),
        (garbage_key.clone(), garbage_id.to_json().into_bytes()),
        (key_of(&future), future.to_json().into_bytes()),
    ]);
    let (listed, skipped) = block_on(catalog.list()).unwrap();
    assert_eq!(listed, vec![good.clone()], "the future one is not `latest`");
    let mut skipped: Vec<String> = skipped.into_iter().map(|s| s.key).collect();
    skipped.sort();
    let mut expected = vec![garbage_key, key_of(&future)];
    expected.sort();
    assert_eq!(skipped, expected);
    // Neither becomes `latest`; the one dated in the future (newer than any) is named.
    let e = block_on(catalog.find("latest", None))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&future.id) && e.contains("in the future"), "{e}");
    assert_eq!(
        block_on(catalog.latest(None)).unwrap().candidates,
        vec![good]
    );
}

/// #21: what stands for the cluster without the journal (the upgrade gate's fresh backup, a
/// new chain's base) is a writer's signed backup: never a shadow's base, never unsigned.
#[test]
fn only_writers_signed_backups_stand_for_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (writer_pub, _) = crate::trust::generate(&dir.path().join("w")).unwrap();
    let (shadow_pub, _) = crate::trust::generate(&dir.path().join("s")).unwrap();
    let writer = SigningKey::from_file(&dir.path().join("w")).unwrap();
    let shadow = SigningKey::from_file(&dir.path().join("s")).unwrap();
    let now = Utc::now();
    let production = manifest(now - chrono::Duration::hours(3), 0xab);
    let mut base = manifest(now - chrono::Duration::hours(1), 0xab);
    base.reason = Reason::Shadow;
    let unsigned = manifest(now - chrono::Duration::hours(2), 0xab);
    let (_d, catalog) = store_with(&[]);
    block_on(catalog.commit(&production, Some(&writer))).unwrap();
    block_on(catalog.commit(&base, Some(&shadow))).unwrap();
    block_on(catalog.commit(&unsigned, None)).unwrap();
    let mut keys = crate::trust::TrustedKeys::from_files(&[writer_pub]).unwrap();
    keys.push(
        crate::trust::TrustedKey::from_file(&shadow_pub, crate::trust::Role::Shadow).unwrap(),
    );
    let reader = Catalog::new(
        catalog.store().clone(),
        Arc::new(ReadPolicy::new(keys, Some(now)).unwrap()),
    );
    let (listed, _) = block_on(reader.list()).unwrap();
    assert_eq!(listed.len(), 3, "all three are trusted for listing");
    assert_eq!(
        block_on(reader.writer_signed()).unwrap(),
        vec![production.clone()]
    );
    // Without the journal to confirm it, the shadow's base is not `latest` here.
    assert_eq!(block_on(reader.find("latest", None)).unwrap(), production);
}

/// #21: `latest` is the highest revision of the cluster (a backup's time is its writer's
/// clock), and an unsigned backup never wins over a signed one.
#[test]
fn latest_orders_by_revision_and_prefers_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (public, _) = crate::trust::generate(&dir.path().join("k")).unwrap();
    let key = SigningKey::from_file(&dir.path().join("k")).unwrap();
    let now = Utc::now();
    let mut high = manifest(now - chrono::Duration::hours(3), 0xab);
    high.revision = 900;
    let mut low = manifest(now - chrono::Duration::hours(1), 0xab);
    low.revision = 100;
    let mut unsigned = manifest(now - chrono::Duration::hours(2), 0xab);
    unsigned.revision = 5000;
    let (_d, catalog) = store_with(&[]);
    block_on(catalog.commit(&high, Some(&key))).unwrap();
    block_on(catalog.commit(&low, Some(&key))).unwrap();
    block_on(catalog.commit(&unsigned, None)).unwrap();
    let reader = Catalog::new(
        catalog.store().clone(),
        Arc::new(
            ReadPolicy::new(
                crate::trust::TrustedKeys::from_files(&[public]).unwrap(),
                Some(now),
            )
            .unwrap(),
        ),
    );
    let latest = block_on(reader.latest(None)).unwrap();
    let ids: Vec<&str> = latest.candidates.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![high.id.as_str(), low.id.as_str(), unsigned.id.as_str()]
    );
    assert_eq!(block_on(reader.find("latest", None)).unwrap(), high);
}

#[test]
fn latest_is_of_one_cluster() {
    let now = Utc::now();
    let a = manifest(now - chrono::Duration::hours(2), 0xa);
    let b = manifest(now - chrono::Duration::hours(1), 0xb);
    let (_dir, catalog) = store_with(&[
        (key_of(&a), a.to_json().into_bytes()),
        (key_of(&b), b.to_json().into_bytes()),
    ]);
    let err = block_on(catalog.find("latest", None)).unwrap_err();
    assert!(matches!(err, CatalogError::AmbiguousLatest { .. }), "{err}");
    assert!(err.to_string().contains("--cluster-id"), "{err}");
    assert_eq!(block_on(catalog.find("latest", Some(0xa))).unwrap(), a);
    assert_eq!(block_on(catalog.find(&b.id, None)).unwrap(), b);
    assert!(matches!(
        block_on(catalog.find(&b.id, Some(0xa))),
        Err(CatalogError::NoSuchBackup { .. })
    ));
}
