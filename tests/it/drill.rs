//! `lifeboat drill`: a throwaway etcd on loopback proves a backup restorable.

use crate::harness::{age_key, etcd_bin, lifeboat, run, EtcdProcess, Version};

fn drill_cmd(
    version: Version,
    dest: &std::path::Path,
    identity: &std::path::Path,
    work: &std::path::Path,
) -> std::process::Command {
    drill_cmd_with_etcd(version, &etcd_bin(version), dest, identity, work)
}

fn drill_cmd_with_etcd(
    version: Version,
    etcd: &std::path::Path,
    dest: &std::path::Path,
    identity: &std::path::Path,
    work: &std::path::Path,
) -> std::process::Command {
    let mut cmd = lifeboat();
    cmd.args(["drill", "latest", "-w", "json"])
        .arg("--dest")
        .arg(dest)
        .arg("--identity")
        .arg(identity)
        .arg("--etcd")
        .arg(etcd)
        .arg("--etcdutl")
        .arg(crate::harness::restore_tool(version))
        .arg("--work-dir")
        .arg(work);
    cmd
}

fn backup_with_history(
    version: Version,
) -> (EtcdProcess, tempfile::TempDir, crate::harness::AgeKey) {
    let etcd = EtcdProcess::start(version, None);
    for i in 0..30 {
        etcd.put(&format!("/registry/k{}", i % 12), &format!("v{i}"));
    }
    crate::harness::run_ok(etcd.etcdctl().args(["del", "/registry/k3"]));
    crate::harness::run_ok(etcd.etcdctl().args(["compact", "20"]));
    etcd.put("/registry/last", "x");
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    crate::harness::save_into(&etcd, dir.path(), &key.recipient);
    (etcd, dir, key)
}

#[test]
fn drill_passes_on_good_backups_of_every_version() {
    for version in Version::ALL {
        let (_etcd, dir, key) = backup_with_history(version);
        let work = dir.path().join("drills");
        let report = run(&mut drill_cmd(
            version,
            &dir.path().join("b"),
            &key.identity_file,
            &work,
        ))
        .ok()
        .json();
        assert_eq!(report["ok"], true, "{report}");
        let checks = report["checks"].as_array().unwrap();
        let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["revision", "keys", "hashkv"]);
        let keys = checks.iter().find(|c| c["name"] == "keys").unwrap();
        assert_eq!(
            keys["actual"], "12",
            "11 of the 12 keys live plus /registry/last: {report}"
        );
        assert!(
            crate::harness::files_in(&work).is_empty(),
            "sandbox removed"
        );
    }
}

#[test]
fn drill_fails_on_a_tampered_backup() {
    let (_etcd, dir, key) = backup_with_history(Version::V35);
    let dest = dir.path().join("b");
    let object = crate::harness::files_in(&dest)
        .into_iter()
        .find(|f| f.ends_with(".age"))
        .unwrap();
    let path = dest.join(object);
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let r = run(&mut drill_cmd(
        Version::V35,
        &dest,
        &key.identity_file,
        &dir.path().join("d"),
    ));
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
}

#[test]
fn drill_reports_a_mismatch_the_read_back_cannot_see() {
    // The object is intact but the manifest claims another HashKV: only the live etcd's
    // answer can catch it.
    let (_etcd, dir, key) = backup_with_history(Version::V35);
    let dest = dir.path().join("b");
    let manifest = crate::harness::files_in(&dest)
        .into_iter()
        .find(|f| f.ends_with(".manifest.json"))
        .unwrap();
    let path = dest.join(manifest);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(m["hashkv"]["checked"], true);
    m["hashkv"]["hash"] = serde_json::json!(m["hashkv"]["hash"].as_u64().unwrap() ^ 1);
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    crate::harness::resign(&path);
    let r = run(&mut drill_cmd(
        Version::V35,
        &dest,
        &key.identity_file,
        &dir.path().join("d"),
    ));
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let hashkv = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "hashkv")
        .unwrap();
    assert_eq!(hashkv["ok"], false);
    assert!(r.stderr.contains("FAILED"), "{}", r.stderr);
}

/// A brand-new cluster's backup (no key at all, revision 1) restores and drills clean: the
/// drill compares the revision etcd restores to, not the last key's (which is 0).
#[test]
fn drill_passes_on_the_backup_of_an_empty_etcd() {
    let etcd = EtcdProcess::start(Version::V35, None);
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    crate::harness::save_into(&etcd, dir.path(), &key.recipient);
    let report = run(&mut drill_cmd(
        Version::V35,
        &dir.path().join("b"),
        &key.identity_file,
        &dir.path().join("drills"),
    ))
    .ok()
    .json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["checks"][0]["actual"], "1", "{report}");
}

/// Regression: the sandbox etcd, which holds every Secret while a drill runs, served plain
/// http on a loopback port anyone on the machine could reach. It now requires a client
/// certificate only the drill holds, on client and peer ports alike.
#[test]
fn the_sandbox_etcd_serves_only_the_drill_over_mutual_tls() {
    use std::os::unix::fs::PermissionsExt;
    let (_etcd, dir, key) = backup_with_history(Version::V35);
    let argv_log = dir.path().join("etcd-argv.txt");
    let wrapper = dir.path().join("etcd-wrapper.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\nexec {} \"$@\"\n",
            argv_log.display(),
            etcd_bin(Version::V35).display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = drill_cmd_with_etcd(
        Version::V35,
        &wrapper,
        &dir.path().join("b"),
        &key.identity_file,
        &dir.path().join("drills"),
    );
    let report = run(&mut cmd).ok().json();
    assert_eq!(report["ok"], true, "{report}");
    let argv = std::fs::read_to_string(&argv_log).unwrap();
    let args: Vec<&str> = argv.lines().collect();
    for flag in ["--client-cert-auth", "--peer-client-cert-auth"] {
        assert!(args.contains(&flag), "{flag} missing: {args:?}");
    }
    for prefix in [
        "--listen-client-urls=https://127.0.0.1:",
        "--listen-peer-urls=https://127.0.0.1:",
        "--trusted-ca-file=",
        "--peer-trusted-ca-file=",
    ] {
        assert!(
            args.iter().any(|a| a.starts_with(prefix)),
            "{prefix} missing: {args:?}"
        );
    }
    assert!(
        !args.iter().any(|a| a.contains("http://")),
        "plain http: {args:?}"
    );
}
