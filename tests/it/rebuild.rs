//! `lifeboat rebuild` (#25): a kubeadm-shaped node with a real CA (rcgen), the API server's
//! EncryptionConfiguration at a non-standard host path named by `--encryption-provider-config`
//! through a hostPath mount, an audit policy, the kubelet's files, and a Secret stored in etcd
//! encrypted as Kubernetes does (aescbc). The node is backed up, then wiped — every folder of
//! it gone, as on a fresh machine — and `rebuild latest` brings back every file byte for byte
//! with its mode, etcd's data, and the static pods; the Secret decrypts with the rebuilt key.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::node::FakeNode;
use crate::harness::{age_key, etcdutl_bin, lifeboat, run, run_ok, Version};

const SECRET_KEY: &str = "/registry/secrets/default/db-password";
const SECRET_VALUE: &[u8] = b"k8s\x00\x0a\x0c\x0a\x02v1\x12\x06Secret password=correct-horse";

fn write(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The files a rebuild must bring back, with their modes: everything under these folders.
fn files_with_modes(roots: &[PathBuf]) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                let mode = meta.permissions().mode() & 0o7777;
                out.insert(p.clone(), (std::fs::read(&p).unwrap(), mode));
            }
        }
    }
    out
}

/// `openssl enc` as the oracle for AES-256-CBC with PKCS#7 padding.
fn aes_cbc(decrypt: bool, key: &[u8], iv: &[u8], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut cmd = Command::new("openssl");
    cmd.args([
        "enc",
        "-aes-256-cbc",
        "-K",
        &hex::encode(key),
        "-iv",
        &hex::encode(iv),
    ]);
    if decrypt {
        cmd.arg("-d");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl enc failed");
    out.stdout
}

/// The aescbc key named `key1` in an EncryptionConfiguration's text.
fn aescbc_key(config: &str) -> Vec<u8> {
    use base64::Engine;
    let v: serde_json::Value = serde_norway::from_str(config).unwrap();
    let secret = v["resources"][0]["providers"][0]["aescbc"]["keys"][0]["secret"]
        .as_str()
        .unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(secret)
        .unwrap()
}

/// Adds the encryption config and audit policy, at host paths of their own, to the API
/// server's manifest: flags with container paths, hostPath mounts mapping them.
fn name_files_in_the_apiserver_manifest(manifest: &Path, enc_dir: &Path, audit_dir: &Path) {
    let mut pod: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    let c = &mut pod["spec"]["containers"][0];
    let cmd = c["command"].as_array_mut().unwrap();
    cmd.push("--encryption-provider-config=/etc/kubernetes/enc/encryption.yaml".into());
    cmd.push("--audit-policy-file=/etc/kubernetes/audit/policy.yaml".into());
    cmd.push("--audit-log-path=/var/log/kubernetes/audit.log".into());
    let mounts = c["volumeMounts"].as_array_mut().unwrap();
    mounts.push(
        serde_json::json!({"name": "enc", "mountPath": "/etc/kubernetes/enc", "readOnly": true}),
    );
    mounts.push(serde_json::json!({"name": "audit", "mountPath": "/etc/kubernetes/audit", "readOnly": true}));
    let volumes = pod["spec"]["volumes"].as_array_mut().unwrap();
    volumes.push(serde_json::json!({"name": "enc", "hostPath": {"path": enc_dir, "type": "DirectoryOrCreate"}}));
    volumes.push(serde_json::json!({"name": "audit", "hostPath": {"path": audit_dir, "type": "DirectoryOrCreate"}}));
    std::fs::write(manifest, serde_norway::to_string(&pod).unwrap()).unwrap();
}

fn secret_in_etcd(node: &FakeNode) -> Vec<u8> {
    use base64::Engine;
    let out = run_ok(node.etcdctl().args(["get", SECRET_KEY, "-w", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let value = v["kvs"][0]["value"]
        .as_str()
        .expect("the Secret is in etcd");
    base64::engine::general_purpose::STANDARD
        .decode(value)
        .unwrap()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rebuild_latest_brings_a_wiped_control_plane_node_back_from_the_store_alone() {
    let node = FakeNode::start(Version::V35);
    let root = node
        .kubernetes_dir()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let k = node.kubernetes_dir();
    let kubelet_dir = root.join("var/lib/kubelet");
    let (enc_dir, audit_dir) = (root.join("srv/secret-config"), root.join("srv/audit"));

    // The node's files besides what the harness wrote: the service-account key pair, the
    // encryption config (0600), an audit policy, the kubelet's config.
    let sa = rcgen::KeyPair::generate().unwrap();
    write(&k.join("pki/sa.key"), sa.serialize_pem().as_bytes(), 0o600);
    write(&k.join("pki/sa.pub"), sa.public_key_pem().as_bytes(), 0o644);
    let aes_key: [u8; 32] = rand::random();
    let enc_config = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: key1\n        secret: {}\n  - identity: {{}}\n",
        { use base64::Engine; base64::engine::general_purpose::STANDARD.encode(aes_key) }
    );
    write(
        &enc_dir.join("encryption.yaml"),
        enc_config.as_bytes(),
        0o600,
    );
    write(
        &audit_dir.join("policy.yaml"),
        b"apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n",
        0o640,
    );
    write(&kubelet_dir.join("config.yaml"), b"apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nstaticPodPath: /etc/kubernetes/manifests\n", 0o644);
    write(&kubelet_dir.join("kubeadm-flags.env"), b"KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///run/containerd/containerd.sock\"\n", 0o644);
    write(
        &k.join("admin.conf"),
        b"apiVersion: v1\nkind: Config\nclusters: []\n",
        0o600,
    );
    name_files_in_the_apiserver_manifest(
        &k.join("manifests/kube-apiserver.yaml"),
        &enc_dir,
        &audit_dir,
    );

    // A Secret as the API server stores it with that config.
    let iv: [u8; 16] = rand::random();
    let mut stored = b"k8s:enc:aescbc:v1:key1:".to_vec();
    stored.extend_from_slice(&iv);
    stored.extend(aes_cbc(false, &aes_key, &iv, SECRET_VALUE));
    let mut put = node.etcdctl();
    put.args(["put", SECRET_KEY]).stdin(Stdio::piped());
    let mut child = put.stdout(Stdio::null()).spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &stored).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(secret_in_etcd(&node), stored);
    node.put("/registry/configmaps/default/app", "v1");

    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let dest = dir.path().join("backups");
    let saved = run(lifeboat()
        .args(["snapshot", "save", "-w", "json", "-r", &key.recipient])
        .arg("--etcd-manifest")
        .arg(node.etcd_manifest())
        .arg("--kubelet-dir")
        .arg(&kubelet_dir)
        .arg("--dest")
        .arg(&dest)
        .arg("--work-dir")
        .arg(dir.path().join("w")))
    .ok();
    let kit = saved.json()["kit"].as_str().expect("a kit").to_string();
    let listed = run(lifeboat()
        .args(["snapshot", "list"])
        .arg("--dest")
        .arg(&dest))
    .ok();
    assert!(
        listed.stdout.contains("KIT") && listed.stdout.contains(&kit[..12]),
        "{}",
        listed.stdout
    );

    let roots = [root.join("etc"), kubelet_dir.clone(), root.join("srv")];
    let before = files_with_modes(&roots);
    for want in [
        enc_dir.join("encryption.yaml"),
        audit_dir.join("policy.yaml"),
        k.join("pki/sa.key"),
        kubelet_dir.join("config.yaml"),
    ] {
        assert!(before.contains_key(&want), "{}", want.display());
    }

    // The machine is lost: its pods stop, every folder goes.
    for f in std::fs::read_dir(&node.manifests_dir).unwrap().flatten() {
        std::fs::remove_file(f.path()).unwrap();
    }
    wait_until("the pods stopped", || node.kubelet.running().is_empty());
    for d in [root.join("etc"), root.join("var"), root.join("srv")] {
        std::fs::remove_dir_all(&d).unwrap();
    }

    let rebuild_cmd = |dest: &Path, extra: &[&str]| {
        let mut cmd = lifeboat();
        cmd.args(["rebuild", "latest", "-i"])
            .arg(&key.identity_file)
            .arg("--dest")
            .arg(dest)
            .arg("--kubernetes-dir")
            .arg(&k)
            .arg("--kubelet-dir")
            .arg(&kubelet_dir)
            .arg("--state-dir")
            .arg(&node.state_dir)
            .arg("--etcdutl")
            .arg(etcdutl_bin())
            .args(["--stop-timeout", "30s", "--start-timeout", "60s"])
            .args(extra);
        cmd
    };
    let rebuild = |dest: &Path, extra: &[&str]| run(&mut rebuild_cmd(dest, extra));

    // A tampered kit is refused before any file is written.
    let bad = dir.path().join("tampered");
    run_ok(Command::new("cp").arg("-r").arg(&dest).arg(&bad));
    let object = std::fs::read_dir(&bad)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.to_string_lossy().ends_with(".tar.zst.age")
                && p.file_name().unwrap().to_string_lossy().starts_with("kit-")
        })
        .unwrap();
    let mut bytes = std::fs::read(&object).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&object, bytes).unwrap();
    let r = rebuild(&bad, &["--yes"]);
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    assert!(
        !root.join("etc").exists(),
        "a file was written from a tampered kit"
    );

    // --dry-run lists every file, writes none.
    let r = rebuild(&dest, &["--dry-run"]).ok();
    for path in before.keys() {
        assert!(
            r.stdout.contains(&path.display().to_string()),
            "{} not listed:\n{}",
            path.display(),
            r.stdout
        );
    }
    assert!(!root.join("etc").exists(), "the dry run wrote");

    // On the fresh machine: the kit's manifests wait beside the kubelet's folder until the
    // restore puts them in (an etcd the kubelet started from them early would run on an empty
    // data dir). Interrupted before the restore stops anything, the kubelet has nothing to run.
    // A data dir that appears after the restore's plan (made while there was none) is moved
    // aside when it resumes — never taken for the restored one, never deleted.
    let r =
        run(rebuild_cmd(&dest, &["--yes"])
            .env("LIFEBOAT_TEST_CRASH_AT", "stop-control-plane:before"));
    assert_eq!(r.code, 86, "{}\n{}", r.stdout, r.stderr);
    assert!(
        k.join("pki/ca.crt").exists() && !node.etcd_manifest().exists(),
        "the kit is in place but etcd.yaml is not in the kubelet's folder yet"
    );
    assert!(node.kubelet.running().is_empty());
    let early = node
        .data_dir
        .join("member/wal/0000000000000000-0000000000000000.wal");
    write(&early, b"an etcd that started on an empty data dir", 0o600);
    let r = run(node
        .restore()
        .args(["--resume", "--dest"])
        .arg(&dest)
        .arg("-i")
        .arg(&key.identity_file));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let kept: Vec<PathBuf> = node
        .siblings_of_data_dir("lifeboat-")
        .into_iter()
        .filter(|d| d.join("member/wal").exists())
        .collect();
    assert_eq!(kept.len(), 1, "the early data dir kept aside: {kept:?}");
    for secret in [
        "PRIVATE KEY",
        enc_config
            .lines()
            .find_map(|l| l.trim().strip_prefix("secret: "))
            .unwrap(),
    ] {
        assert!(
            !r.stdout.contains(secret) && !r.stderr.contains(secret),
            "a secret was printed"
        );
    }

    // Every file back, byte for byte, with its mode (the aside copy is the only extra).
    let after = files_with_modes(&roots);
    for (path, (bytes, mode)) in &before {
        let (b, m) = after
            .get(path)
            .unwrap_or_else(|| panic!("{} not rebuilt", path.display()));
        assert_eq!(b, bytes, "{}", path.display());
        assert_eq!(m, mode, "mode of {}", path.display());
    }
    // etcd's data, and the Secret decrypts with the rebuilt node's configuration.
    node.wait_healthy();
    let app = run_ok(node.etcdctl().args([
        "get",
        "/registry/configmaps/default/app",
        "--print-value-only",
    ]));
    assert_eq!(String::from_utf8_lossy(&app.stdout).trim(), "v1");
    let stored = secret_in_etcd(&node);
    let prefix = b"k8s:enc:aescbc:v1:key1:";
    assert!(stored.starts_with(prefix));
    let rebuilt_key =
        aescbc_key(&std::fs::read_to_string(enc_dir.join("encryption.yaml")).unwrap());
    let (iv, ciphertext) = stored[prefix.len()..].split_at(16);
    assert_eq!(aes_cbc(true, &rebuilt_key, iv, ciphertext), SECRET_VALUE);
    // The stand-in kubelet runs every static pod from the rebuilt manifests.
    wait_until("the static pods run", || {
        node.kubelet.running()
            == [
                "etcd.yaml",
                "kube-apiserver.yaml",
                "kube-controller-manager.yaml",
                "kube-scheduler.yaml",
            ]
    });

    // Back on a running node, a file that differs from the kit is refused (nothing written,
    // nothing stopped); with --force it is moved aside — never deleted — and the node rebuilt.
    let stale = k.join("pki/ca.crt");
    write(&stale, b"stale", 0o644);
    let manifests_before = node.manifests();
    let r = rebuild(&dest, &["--yes"]);
    assert_eq!(r.code, 5, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&stale.display().to_string()),
        "{}",
        r.stderr
    );
    assert_eq!(
        node.manifests(),
        manifests_before,
        "changed despite the refusal"
    );
    let r = rebuild(&dest, &["--yes", "--force"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let aside: Vec<_> = std::fs::read_dir(k.join("pki"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".ca.crt.before-rebuild-")
        })
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    assert_eq!(
        aside,
        vec![b"stale".to_vec()],
        "the file in the way was kept aside"
    );
    assert_eq!(std::fs::read(&stale).unwrap(), before[&stale].0);
    node.wait_healthy();
}

/// The backups carry the uploader's node's kit; `serve` on every other control-plane node
/// stores that node's own, so `rebuild --node` can bring back any of them.
#[test]
fn serve_on_every_control_plane_node_stores_its_own_kit_for_rebuild_node() {
    use crate::harness::serve::Serve;
    let nodes = FakeNode::cluster(Version::V35, 2);
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let dest = dir.path().join("backups");
    let serves: Vec<Serve> = nodes
        .iter()
        .map(|n| {
            let mut cmd = lifeboat();
            cmd.args(["serve", "--schedule", "*/1 * * * * *", "-r", &key.recipient])
                .arg("--etcd-manifest")
                .arg(n.etcd_manifest())
                .arg("--dest")
                .arg(&dest)
                .arg("--work-dir")
                .arg(dir.path().join(format!("w-{}", n.name)));
            Serve::start(cmd, dir.path().join(format!("{}.log", n.name)))
        })
        .collect();
    let kit_nodes = || {
        let r = run(lifeboat()
            .args(["kit", "list", "-w", "json"])
            .arg("--dest")
            .arg(&dest));
        if r.code != 0 {
            return Vec::new();
        }
        let mut v: Vec<String> = r
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["node"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    serves[0].wait_until("a kit of each node", Duration::from_secs(60), |_| {
        kit_nodes() == ["cp1", "cp2"]
    });
    drop(serves);

    let second = &nodes[1];
    let k = second.kubernetes_dir();
    let plan = |node: &str| {
        run(lifeboat()
            .args(["rebuild", "latest", "--dry-run", "--node", node, "-i"])
            .arg(&key.identity_file)
            .arg("--dest")
            .arg(&dest)
            .arg("--kubernetes-dir")
            .arg(&k)
            .arg("--state-dir")
            .arg(&second.state_dir))
    };
    let r = plan("cp2").ok();
    assert!(r.stdout.contains("of node cp2"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains(&second.etcd_manifest().display().to_string()),
        "{}",
        r.stdout
    );
    let r = plan("cp3");
    assert_eq!(r.code, 7, "{}\n{}", r.stdout, r.stderr);
}
