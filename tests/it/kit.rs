//! The control-plane kit (#25, part 1) taken with backups on a kubeadm-shaped node: stored
//! once while nothing changes, again when a certificate does; never in plaintext; read back
//! with `kit list|show|get`.

use crate::harness::node::FakeNode;
use crate::harness::{age_key, lifeboat, run, Version};

fn kit_objects(dest: &std::path::Path) -> (Vec<String>, Vec<String>) {
    let names: Vec<String> = std::fs::read_dir(dest)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kit-"))
        .collect();
    let objects = names
        .iter()
        .filter(|n| n.ends_with(".tar.zst.age"))
        .cloned()
        .collect();
    let manifests = names
        .iter()
        .filter(|n| n.ends_with(".json"))
        .cloned()
        .collect();
    (objects, manifests)
}

#[test]
fn every_backup_on_a_control_plane_node_carries_its_kit_stored_once_per_content() {
    let node = FakeNode::start(Version::V35);
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let dest = dir.path().join("b");
    let save = || {
        node.save(&key, &dest, &dir.path().join("w"))["kit"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = save();
    let second = save();
    assert_eq!(first, second, "nothing changed: the same kit");
    let (objects, manifests) = kit_objects(&dest);
    assert_eq!(
        (objects.len(), manifests),
        (1, vec![format!("kit-{first}.json")])
    );
    // What it lists: the manifests, the pki, files the API server's flags name.
    let text = std::fs::read_to_string(dest.join(format!("kit-{first}.json"))).unwrap();
    let envelope: serde_json::Value = serde_json::from_str(&text).unwrap();
    let kit: serde_json::Value = serde_json::from_str(envelope["kit"].as_str().unwrap()).unwrap();
    let paths: Vec<&str> = kit["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    let k = node.kubernetes_dir();
    for want in [
        "manifests/etcd.yaml",
        "manifests/kube-apiserver.yaml",
        "pki/ca.crt",
        "pki/apiserver.key",
        "pki/etcd/server.key",
    ] {
        let want = k.join(want).display().to_string();
        assert!(paths.contains(&want.as_str()), "{want} not in {paths:?}");
    }
    assert!(
        envelope["signature"].is_string(),
        "the kit's manifest is signed: {text}"
    );
    // Never in plaintext: no private key's text in anything stored.
    for e in std::fs::read_dir(&dest).unwrap().flatten() {
        let bytes = std::fs::read(e.path()).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
            "{} holds a private key in the clear",
            e.path().display()
        );
    }
    // A renewed certificate: a new kit.
    let ca = k.join("pki/ca.crt");
    let mut pem = std::fs::read(&ca).unwrap();
    pem.extend_from_slice(b"\n");
    std::fs::write(&ca, pem).unwrap();
    let third = save();
    assert_ne!(third, first);
    assert_eq!(kit_objects(&dest).0.len(), 2);

    // Read without rebuilding: list, show, get (decrypted, checked, files as they were).
    let kit = |args: &[&str]| {
        let r = run(lifeboat().arg("kit").args(args).arg("--dest").arg(&dest));
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        r
    };
    let listed = kit(&["list", "-w", "json"]).json();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let shown = kit(&["show", &third[..12]]);
    assert!(
        shown.stdout.contains(&ca.display().to_string()),
        "{}",
        shown.stdout
    );
    let out = dir.path().join("kit-files");
    let id = key.identity_file.display().to_string();
    let out_s = out.display().to_string();
    kit(&["get", &third[..12], "-i", &id, "-o", &out_s]);
    let back = out.join(ca.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&ca).unwrap());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&back).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o600, 0, "{mode:o}");
    // Nothing is overwritten.
    let r = run(lifeboat()
        .args(["kit", "get", &third[..12], "-i", &id, "-o", &out_s])
        .arg("--dest")
        .arg(&dest));
    assert_eq!(r.code, 5, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);

    // Retention: the kit goes with the last backup naming it, the kept backup's stays.
    let prune = |extra: &[&str]| {
        run(lifeboat()
            .args([
                "prune",
                "--keep-last",
                "1",
                "--manual-keep-days",
                "0",
                "-w",
                "json",
            ])
            .args(extra)
            .arg("--dest")
            .arg(&dest))
        .ok()
        .json()
    };
    let kit_action = |report: &serde_json::Value, id: &str| {
        report["kits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .unwrap_or_else(|| panic!("kit {id} not judged: {report}"))["action"]
            .clone()
    };
    let planned = prune(&["--dry-run"]);
    assert_eq!(kit_action(&planned, &first), "delete", "{planned}");
    assert_eq!(kit_action(&planned, &third), "keep", "{planned}");
    assert_eq!(kit_objects(&dest).0.len(), 2, "a dry run deletes nothing");
    let done = prune(&[]);
    assert_eq!(done["deleted"], 2, "{done}");
    let (objects, manifests) = kit_objects(&dest);
    assert_eq!(manifests, vec![format!("kit-{third}.json")]);
    assert_eq!(objects.len(), 1);
    assert!(
        objects[0].starts_with(&format!("kit-{third}.")),
        "{objects:?}"
    );
}
