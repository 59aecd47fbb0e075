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
    run(lifeboat()
        .args([
            "prune",
            "--keep-last",
            "0",
            "--manual-keep-days",
            "0",
            "--dest",
        ])
        .arg(&dest))
    .ok();
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
    let r = run(lifeboat()
        .args([
            "snapshot",
            "save",
            "-r",
            &key.recipient,
            "--endpoints",
            "http://127.0.0.1:1",
        ])
        .arg("--dest")
        .arg(dir.path().join("b"))
        .arg("--signing-key")
        .arg(&signing));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("trust.signing_key"), "{}", r.stderr);
}
