//! Signed manifests (#11, first part): `lifeboat signing-key generate` writes a minisign key
//! pair; writers sign every manifest with it; the standard `minisign` CLI verifies the
//! signature without lifeboat; retention removes a signature with its manifest.

use std::path::Path;
use std::process::Command;

use crate::harness::{age_key, files_in, lifeboat, run, EtcdProcess, Version};

fn minisign_verifies(public: &Path, manifest: &Path) -> bool {
    let mut sig = manifest.as_os_str().to_os_string();
    sig.push(".minisig");
    Command::new("minisign")
        .arg("-Vq")
        .arg("-p")
        .arg(public)
        .arg("-m")
        .arg(manifest)
        .arg("-x")
        .arg(&sig)
        .status()
        .unwrap()
        .success()
}

/// `lifeboat prune` with a policy that keeps only the newest backup of each cluster.
fn prune_all_but_the_newest(dest: &Path, extra: &[&str]) {
    run(lifeboat()
        .args([
            "prune",
            "--keep-last",
            "0",
            "--manual-keep-days",
            "0",
            "--dest",
        ])
        .arg(dest)
        .args(extra))
    .ok();
}

#[test]
fn manifests_are_signed_and_the_minisign_cli_checks_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let signing = dir.path().join("signing.key");
    let r = run(lifeboat()
        .args(["signing-key", "generate", "-o"])
        .arg(&signing))
    .ok();
    assert!(r.stdout.contains("key id"), "{}", r.stdout);
    let public = dir.path().join("signing.key.pub");
    let mode = std::fs::metadata(&signing).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(public.exists());
    let again = run(lifeboat()
        .args(["signing-key", "generate", "-o"])
        .arg(&signing));
    assert_eq!(again.code, 5, "never overwritten: {}", again.stderr);

    let etcd = EtcdProcess::start(Version::V35, None);
    etcd.put("/registry/a", "1");
    let dest = dir.path().join("b");
    let save = || {
        run(lifeboat()
            .args(["snapshot", "save", "-w", "json", "-r", &key.recipient])
            .args(etcd.lifeboat_flags())
            .arg("--dest")
            .arg(&dest)
            .arg("--work-dir")
            .arg(dir.path().join("w"))
            .arg("--signing-key")
            .arg(&signing))
        .ok()
        .json()
    };
    let first = save();
    let id = first["id"].as_str().unwrap();
    let manifest = dest.join(format!("{id}.manifest.json"));
    assert!(files_in(&dest).contains(&format!("{id}.manifest.json.minisig")));
    assert!(
        minisign_verifies(&public, &manifest),
        "the standard CLI accepts it"
    );

    // One changed byte in the manifest, and the standard CLI refuses it.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let tampered = dir.path().join("tampered.manifest.json");
    std::fs::write(
        &tampered,
        text.replacen("\"revision\": 2", "\"revision\": 3", 1),
    )
    .unwrap();
    assert_ne!(std::fs::read(&tampered).unwrap(), text.as_bytes());
    let mut sig = tampered.as_os_str().to_os_string();
    sig.push(".minisig");
    std::fs::copy(format!("{}.minisig", manifest.display()), &sig).unwrap();
    assert!(!minisign_verifies(&public, &tampered));

    // Retention removes the signature with its manifest.
    etcd.put("/registry/b", "2");
    let second = save();
    prune_all_but_the_newest(&dest, &["--trusted-key", public.to_str().unwrap()]);
    let left = files_in(&dest);
    assert!(
        !left.iter().any(|f| f.starts_with(id)),
        "the older backup goes whole, signature included: {left:?}"
    );
    let newest = second["id"].as_str().unwrap();
    assert!(
        left.contains(&format!("{newest}.manifest.json.minisig")),
        "{left:?}"
    );
}

#[test]
fn a_signing_key_others_can_read_is_refused_naming_the_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let signing = dir.path().join("signing.key");
    run(lifeboat()
        .args(["signing-key", "generate", "-o"])
        .arg(&signing))
    .ok();
    std::fs::set_permissions(&signing, std::fs::Permissions::from_mode(0o644)).unwrap();
    let key = age_key(dir.path(), "key.txt");
    // A save against an etcd that is not there: the key is checked before etcd is asked.
    let save = |signing: Option<&Path>| {
        let mut cmd = lifeboat();
        cmd.env_remove("LIFEBOAT_SIGNING_KEY")
            .args(["snapshot", "save", "-r", &key.recipient])
            .args(["--endpoints", "http://127.0.0.1:1", "--dest"])
            .arg(dir.path().join("b"));
        if let Some(k) = signing {
            cmd.arg("--signing-key").arg(k);
        }
        run(&mut cmd)
    };
    let r = save(Some(&signing));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("trust.signing_key"), "{}", r.stderr);
    // #22: no key at all is refused too (every reader would refuse the unsigned backup),
    // saying how to make one or how to write unsigned on purpose.
    let r = save(None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("signing-key generate") && r.stderr.contains("--allow-unsigned"),
        "{}",
        r.stderr
    );
}

/// #21, reproduced as a new user would: hiding the newest backup's signature made `snapshot
/// get latest` quietly return the backup before it. Now `latest` fails naming it; a shadow's
/// key, trusted as a shadow's, cannot sign a backup that becomes `latest` either.
#[test]
fn a_hidden_newest_backup_stops_latest_and_a_shadow_key_cannot_sign_a_manual_backup() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let dest = dir.path().join("b");
    let etcd = EtcdProcess::start(Version::V35, None);
    let save = |extra: &[&str]| {
        etcd.put("/registry/a", &extra.len().to_string());
        run(lifeboat()
            .args(["snapshot", "save", "-w", "json", "-r", &key.recipient])
            .args(etcd.lifeboat_flags())
            .arg("--dest")
            .arg(&dest)
            .args(extra))
        .ok()
        .json()
    };
    let older = save(&[]);
    let newest = save(&[]);
    let get_latest = |extra: &[&str]| {
        run(lifeboat()
            .args(["snapshot", "get", "latest", "-o"])
            .arg(dir.path().join(format!("out-{}.db", extra.len())))
            .arg("--force")
            .arg("--dest")
            .arg(&dest)
            .arg("-i")
            .arg(&key.identity_file)
            .args(extra))
    };
    let id = |m: &serde_json::Value| m["id"].as_str().unwrap().to_string();
    let signature = dest.join(format!("{}.manifest.json.minisig", id(&newest)));
    let kept = std::fs::read(&signature).unwrap();
    std::fs::remove_file(&signature).unwrap();
    let r = get_latest(&[]);
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&id(&newest)) && r.stderr.contains("not signed"),
        "{}",
        r.stderr
    );
    let r = get_latest(&["--accept-older"]).ok();
    assert!(r.stdout.contains(&id(&older)), "{}", r.stdout);
    std::fs::write(&signature, kept).unwrap();
    assert!(get_latest(&[]).ok().stdout.contains(&id(&newest)));

    // A backup signed with the shadow's key: not a shadow base, so not trusted from it.
    let shadow = dir.path().join("shadow.key");
    let (shadow_pub, _) = lifeboat::trust::generate(&shadow).unwrap();
    let forged = save(&["--signing-key", shadow.to_str().unwrap()]);
    assert_eq!(forged["reason"], "manual");
    let trusting = ["--trusted-shadow-key", shadow_pub.to_str().unwrap()];
    let listed = run(lifeboat()
        .args(["snapshot", "list", "-w", "json", "--dest"])
        .arg(&dest)
        .args(trusting))
    .ok();
    assert!(!listed.stdout.contains(&id(&forged)), "{}", listed.stdout);
    assert!(
        listed.stderr.contains("trusted as shadow only"),
        "{}",
        listed.stderr
    );
    let r = get_latest(&trusting);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains(&id(&forged)), "{}", r.stderr);
    // The same key as a writer's (--trusted-key) would be trusted: the role is what differs.
    let r = get_latest(&["--trusted-key", shadow_pub.to_str().unwrap()]).ok();
    assert!(r.stdout.contains(&id(&forged)), "{}", r.stdout);
}

/// #11: a backup written straight into the store by someone without the writers' key — signed
/// with another key, or not at all, or a real one replayed under a newer name — is never
/// listed, read, drilled or pruned; `--allow-unsigned-before` lets old unsigned ones through.
#[test]
fn forged_backups_are_refused_by_every_reader_and_ignored_by_retention() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let dest = dir.path().join("b");
    let etcd = EtcdProcess::start(Version::V35, None);
    etcd.put("/registry/a", "1");
    let save = |extra: &[&str], unsigned: bool| {
        let mut cmd = lifeboat();
        cmd.args(["snapshot", "save", "-w", "json", "-r", &key.recipient])
            .args(etcd.lifeboat_flags())
            .arg("--dest")
            .arg(&dest)
            .arg("--work-dir")
            .arg(dir.path().join("w"))
            .args(extra);
        if unsigned {
            cmd.env_remove("LIFEBOAT_SIGNING_KEY")
                .arg("--allow-unsigned");
        }
        run(&mut cmd).ok().json()
    };
    let genuine = save(&[], false);
    let genuine_id = genuine["id"].as_str().unwrap().to_string();
    // An attacker's backup, signed with their own key, and one not signed at all: both newer.
    let attacker = dir.path().join("attacker.key");
    run(lifeboat()
        .args(["signing-key", "generate", "-o"])
        .arg(&attacker))
    .ok();
    etcd.put("/registry/clusterrolebindings/evil", "cluster-admin");
    let foreign = save(&["--signing-key", attacker.to_str().unwrap()], false);
    let unsigned = save(&[], true);
    // A genuine backup replayed under a newer name.
    let replay_id = unsigned["id"]
        .as_str()
        .unwrap()
        .replace(&unsigned["id"].as_str().unwrap()[..9], "etcd-2099");
    for (suffix_from, suffix_to) in [
        (".manifest.json", ".manifest.json"),
        (".manifest.json.minisig", ".manifest.json.minisig"),
    ] {
        std::fs::copy(
            dest.join(format!("{genuine_id}{suffix_from}")),
            dest.join(format!("{replay_id}{suffix_to}")),
        )
        .unwrap();
    }

    let listed = run(lifeboat()
        .args(["snapshot", "list", "-w", "json", "--dest"])
        .arg(&dest))
    .ok();
    let ids: Vec<String> = listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec![genuine_id.clone()], "{}", listed.stderr);

    let read = |what: &str, id: &str, extra: &[&str]| {
        run(lifeboat()
            .args(["snapshot", what, id, "--dest"])
            .arg(&dest)
            .arg("-i")
            .arg(&key.identity_file)
            .args(extra))
    };
    for forged in [
        foreign["id"].as_str().unwrap(),
        unsigned["id"].as_str().unwrap(),
        &replay_id,
    ] {
        let work = dir.path().join("w");
        let r = read("verify", forged, &["--work-dir", work.to_str().unwrap()]);
        assert_eq!(r.code, 4, "{forged}: {}", r.stderr);
        assert!(
            r.stderr.contains("not trusted") || r.stderr.contains("not signed"),
            "{}",
            r.stderr
        );
    }
    // #21: `latest` does not quietly become the older genuine backup while newer manifests
    // are untrusted: it fails naming the newest; told to, it takes the newest trusted one.
    let out = dir.path().join("latest.db");
    let refused = read("get", "latest", &["-o", out.to_str().unwrap()]);
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(&replay_id) && refused.stderr.contains("--accept-older"),
        "{}",
        refused.stderr
    );
    assert!(!out.exists());
    read(
        "get",
        "latest",
        &["-o", out.to_str().unwrap(), "--accept-older"],
    )
    .ok();
    let got = run(lifeboat()
        .args(["snapshot", "status", "-w", "json"])
        .arg(&out))
    .ok()
    .json();
    assert_eq!(
        got, genuine["status"],
        "latest is the newest trusted backup"
    );

    // Drill: the forged one is refused, `latest` drills the genuine one once told to.
    let drill = |id: &str, extra: &[&str]| {
        run(lifeboat()
            .args(["drill", id, "-w", "json", "--dest"])
            .arg(&dest)
            .arg("--identity")
            .arg(&key.identity_file)
            .arg("--etcd")
            .arg(crate::harness::etcd_bin(Version::V35))
            .arg("--etcdutl")
            .arg(crate::harness::etcdutl_bin())
            .arg("--work-dir")
            .arg(dir.path().join("d"))
            .args(extra))
    };
    assert_eq!(drill(foreign["id"].as_str().unwrap(), &[]).code, 4);
    assert_eq!(drill("latest", &[]).code, 4);
    let drilled = drill("latest", &["--accept-older"]);
    assert_eq!(drilled.ok().json()["id"], genuine_id.as_str());

    // Retention deletes nothing on the word of an untrusted manifest.
    prune_all_but_the_newest(&dest, &[]);
    let left = files_in(&dest);
    for forged in [
        foreign["id"].as_str().unwrap(),
        unsigned["id"].as_str().unwrap(),
        &replay_id,
    ] {
        assert!(
            left.iter().any(|f| f.starts_with(forged)),
            "{forged} was touched: {left:?}"
        );
    }
    // Each one left alone is named with why, in JSON and in the table (#22).
    let prune = |extra: &[&str]| {
        run(lifeboat()
            .args(["prune", "--dry-run", "--dest"])
            .arg(&dest)
            .args(extra))
        .ok()
    };
    let report = prune(&["-w", "json"]).json();
    let skipped = report["skipped_manifests"].as_array().unwrap();
    let why = |id: &str| {
        skipped
            .iter()
            .find(|s| s["key"].as_str().unwrap().starts_with(id))
            .unwrap_or_else(|| panic!("{id} in {report}"))["why"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(why(foreign["id"].as_str().unwrap()).contains("which is not trusted"));
    assert!(why(unsigned["id"].as_str().unwrap()).contains("not signed"));
    assert!(why(&replay_id).contains("it says it is backup"));
    let table = prune(&[]).stdout;
    assert!(
        table.contains("left alone") && table.contains(foreign["id"].as_str().unwrap()),
        "{table}"
    );

    // Migration: unsigned backups dated before `--allow-unsigned-before` pass, and say so;
    // after it they stay refused (#21).
    let unsigned_id = unsigned["id"].as_str().unwrap();
    let list_before = |at: &str| {
        run(lifeboat()
            .args([
                "snapshot",
                "list",
                "-w",
                "json",
                "--allow-unsigned-before",
                at,
                "--dest",
            ])
            .arg(&dest))
        .ok()
    };
    let later = (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339();
    let r = list_before(&later);
    assert!(r.stdout.contains(unsigned_id), "{}", r.stdout);
    assert!(r.stderr.contains("UNSIGNED"), "{}", r.stderr);
    let r = list_before(genuine["created_at"].as_str().unwrap());
    assert!(!r.stdout.contains(unsigned_id), "{}", r.stdout);
    // `--allow-unsigned` is a writer's switch now: a reader given it still refuses them.
    let r = run(lifeboat()
        .args([
            "snapshot",
            "list",
            "-w",
            "json",
            "--allow-unsigned",
            "--dest",
        ])
        .arg(&dest))
    .ok();
    assert!(!r.stdout.contains(unsigned_id), "{}", r.stdout);
}

/// Key rotation: backups signed by the old key stay readable while both keys are trusted, and
/// stop being trusted once the old key is dropped.
#[test]
fn rotating_the_signing_key_keeps_old_backups_readable_while_both_keys_are_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let dest = dir.path().join("b");
    let etcd = EtcdProcess::start(Version::V35, None);
    etcd.put("/registry/a", "1");
    let (old, new) = (dir.path().join("old.key"), dir.path().join("new.key"));
    for k in [&old, &new] {
        run(lifeboat().args(["signing-key", "generate", "-o"]).arg(k)).ok();
    }
    let save = |signing: &Path| {
        run(lifeboat()
            .args(["snapshot", "save", "-w", "json", "-r", &key.recipient])
            .args(etcd.lifeboat_flags())
            .arg("--dest")
            .arg(&dest)
            .arg("--work-dir")
            .arg(dir.path().join("w"))
            .arg("--signing-key")
            .arg(signing))
        .ok()
        .json()
    };
    let before = save(&old);
    etcd.put("/registry/b", "2");
    let after = save(&new);
    let pubs = |keys: &[&Path]| -> Vec<String> {
        keys.iter()
            .flat_map(|k| ["--trusted-key".to_string(), format!("{}.pub", k.display())])
            .collect()
    };
    let list = |trusted: &[String]| -> Vec<String> {
        let mut cmd = lifeboat();
        cmd.env_remove("LIFEBOAT_SIGNING_KEY")
            .env_remove("LIFEBOAT_TRUSTED_KEYS")
            .args(["snapshot", "list", "-w", "json", "--dest"])
            .arg(&dest)
            .args(trusted);
        run(&mut cmd)
            .ok()
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let ids = |ms: &[&serde_json::Value]| -> Vec<String> {
        ms.iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(list(&pubs(&[&old, &new])), ids(&[&after, &before]));
    assert_eq!(list(&pubs(&[&new])), ids(&[&after]));
    let mut verify = lifeboat();
    verify
        .env_remove("LIFEBOAT_TRUSTED_KEYS")
        .args([
            "snapshot",
            "verify",
            before["id"].as_str().unwrap(),
            "--dest",
        ])
        .arg(&dest)
        .arg("-i")
        .arg(&key.identity_file)
        .arg("--work-dir")
        .arg(dir.path().join("w"))
        .args(pubs(&[&old, &new]));
    run(&mut verify).ok();
}
