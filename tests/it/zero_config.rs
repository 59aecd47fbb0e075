//! Zero-config on a kubeadm node: endpoint, CA and client certificate from the etcd static pod
//! manifest (the shared kubeadm fixture, rewritten to this run's etcd and certificates).

use crate::harness::{age_key, lifeboat, run, EtcdProcess, Pki, Version};

#[test]
fn save_finds_etcd_through_the_kubeadm_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate();
    let etcd = EtcdProcess::start(Version::V35, Some(pki.clone()));
    etcd.put("/registry/a", "1");
    let fixture = include_str!("../fixtures/kubeadm-etcd.yaml");
    let port = etcd.client_url.rsplit(':').next().unwrap();
    let manifest = fixture
        .replace(
            "https://127.0.0.1:2379",
            &format!("https://127.0.0.1:{port}"),
        )
        .replace("/etc/kubernetes/pki/etcd", &pki.dir().display().to_string());
    let path = dir.path().join("etcd.yaml");
    std::fs::write(&path, manifest).unwrap();
    let key = age_key(dir.path(), "key.txt");
    let m = run(lifeboat()
        .args([
            "snapshot",
            "save",
            "-w",
            "json",
            "-r",
            &key.recipient,
            "--etcd-manifest",
        ])
        .arg(&path)
        .arg("--dest")
        .arg(dir.path().join("b"))
        .arg("--work-dir")
        .arg(dir.path().join("w")))
    .ok()
    .json();
    assert_eq!(
        m["endpoint"], etcd.client_url,
        "the loopback client URL is preferred"
    );
    assert_eq!(m["hashkv"]["checked"], true);
}
