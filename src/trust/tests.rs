use super::*;

fn pair(dir: &Path, name: &str) -> (SigningKey, TrustedKeys) {
    let path = dir.join(name);
    let (public, _) = generate(&path).unwrap();
    (
        SigningKey::from_file(&path).unwrap(),
        TrustedKeys::from_files(&[public]).unwrap(),
    )
}

#[test]
fn a_signature_verifies_with_its_key_only_for_its_bytes_and_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let (signer, trusted) = pair(dir.path(), "a.key");
    let (_, stranger) = pair(dir.path(), "b.key");
    let sig = signer.sign("x.manifest.json", b"{\"id\":1}").unwrap();
    assert_eq!(
        trusted
            .verify("x.manifest.json", b"{\"id\":1}", &sig)
            .unwrap(),
        signer.id()
    );
    let msg = |r: Result<String, TrustError>| r.unwrap_err().to_string();
    assert!(msg(trusted.verify("x.manifest.json", b"{\"id\":2}", &sig)).contains("does not match"));
    assert!(msg(trusted.verify("y.manifest.json", b"{\"id\":1}", &sig)).contains("another name"));
    assert!(msg(stranger.verify("x.manifest.json", b"{\"id\":1}", &sig)).contains("not trusted"));
    assert!(msg(trusted.verify("x.manifest.json", b"{}", "garbage")).contains("does not parse"));
}

fn claim(kind: Kind, dated: DateTime<Utc>) -> Claim<'static> {
    Claim {
        key: "k",
        kind,
        cluster: Some(0xab),
        dated,
    }
}

const BACKUP: Kind = Kind::Backup { shadow: false };

#[test]
fn a_reader_refuses_unsigned_objects_unless_older_than_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (signer, trusted) = pair(dir.path(), "a.key");
    assert!(matches!(
        ReadPolicy::new(TrustedKeys::default(), None),
        Err(TrustError::NoTrustedKey)
    ));
    let now = Utc::now();
    let strict = ReadPolicy::new(trusted, None).unwrap();
    let sig = signer.sign("k", b"m").unwrap();
    let signed = strict
        .check(&claim(BACKUP, now), b"m", Some(&sig))
        .unwrap()
        .unwrap();
    assert_eq!((signed.id, signed.role), (signer.id(), Role::Writer));
    assert!(strict.check(&claim(BACKUP, now), b"m", None).is_err());
    assert!(strict.check(&claim(BACKUP, now), b"x", Some(&sig)).is_err());
    // #21: unsigned only for backups dated before the cut-over, never for the journal.
    let cutover = now - chrono::Duration::days(1);
    let migrating = ReadPolicy::new(TrustedKeys::default(), Some(cutover)).unwrap();
    let old = cutover - chrono::Duration::hours(1);
    assert_eq!(
        migrating.check(&claim(BACKUP, old), b"m", None).unwrap(),
        None
    );
    let refused = |r: Result<Option<Signer>, TrustError>| r.unwrap_err().to_string();
    assert!(
        refused(migrating.check(&claim(BACKUP, now), b"m", None)).contains("allow_unsigned_before")
    );
    for kind in [Kind::Journal, Kind::Proof] {
        assert!(refused(migrating.check(&claim(kind, old), b"m", None)).contains("never"));
    }
    assert!(ReadPolicy::refuse_all()
        .check(&claim(BACKUP, now), b"m", Some(&sig))
        .is_err());
}

/// #21: a shadow's key signs its bases and proofs, nothing a restore or the capture
/// would otherwise believe; scopes bind keys to clusters and to a time.
#[test]
fn a_key_signs_only_what_its_role_and_scope_allow() {
    let dir = tempfile::tempdir().unwrap();
    let (shadow, _) = pair(dir.path(), "shadow.key");
    let (writer, _) = pair(dir.path(), "writer.key");
    let mut keys = TrustedKeys::default();
    keys.push(TrustedKey::from_file(&dir.path().join("shadow.key.pub"), Role::Shadow).unwrap());
    let mut scoped =
        TrustedKey::from_file(&dir.path().join("writer.key.pub"), Role::Writer).unwrap();
    let now = Utc::now();
    scoped.clusters = Some(vec![0xab]);
    scoped.not_after = Some(now);
    keys.push(scoped);
    let policy = ReadPolicy::new(keys, None).unwrap();
    let by = |k: &SigningKey, c: &Claim<'_>| {
        let sig = k.sign(c.key, b"m").unwrap();
        policy.check(c, b"m", Some(&sig))
    };
    let earlier = now - chrono::Duration::hours(1);
    let shadow_base = claim(Kind::Backup { shadow: true }, earlier);
    assert_eq!(
        by(&shadow, &shadow_base).unwrap().unwrap().role,
        Role::Shadow
    );
    assert!(by(&shadow, &claim(Kind::Proof, earlier)).is_ok());
    for kind in [BACKUP, Kind::Journal] {
        let e = by(&shadow, &claim(kind, earlier)).unwrap_err().to_string();
        assert!(e.contains("trusted as shadow only"), "{e}");
    }
    for kind in [BACKUP, Kind::Journal, Kind::Proof] {
        assert!(by(&writer, &claim(kind, earlier)).is_ok(), "{kind:?}");
    }
    let elsewhere = Claim {
        cluster: Some(0xcd),
        ..claim(BACKUP, earlier)
    };
    assert!(by(&writer, &elsewhere)
        .unwrap_err()
        .to_string()
        .contains("only for clusters ab"));
    let later = claim(BACKUP, now + chrono::Duration::seconds(1));
    assert!(by(&writer, &later)
        .unwrap_err()
        .to_string()
        .contains("dated up to"));
}

#[test]
fn rotation_trusts_old_and_new_keys_together() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.key");
    let new = dir.path().join("new.key");
    let (old_pub, _) = generate(&old).unwrap();
    let (new_pub, _) = generate(&new).unwrap();
    let both = TrustedKeys::from_files(&[old_pub, new_pub]).unwrap();
    for k in [&old, &new] {
        let s = SigningKey::from_file(k).unwrap();
        let sig = s.sign("k", b"m").unwrap();
        assert_eq!(both.verify("k", b"m", &sig).unwrap(), s.id());
    }
}

#[test]
fn keys_are_private_and_never_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signing.key");
    generate(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(matches!(generate(&path), Err(TrustError::Exists { .. })));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        SigningKey::from_file(&path),
        Err(TrustError::KeyTooOpen { .. })
    ));
    // #21: a Secret mounted with fsGroup (0440) loads, with a warning.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
    assert!(SigningKey::from_file(&path).is_ok());
}
