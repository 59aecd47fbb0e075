//! The kit against a kubeadm-shaped node tree in a temp folder and a folder store.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use age::secrecy::ExposeSecret;

use super::*;
use crate::stages::encrypt::{Identities, Recipients};
use crate::store::{LocalStore, Store};
use crate::trust::{ReadPolicy, SigningKey, TrustedKeys};

struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
    dirs: KitDirs,
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// kubeadm's layout under a temp root; the API server's encryption config mounted from a
/// folder outside /etc/kubernetes under another path in the container, an audit policy, an
/// audit log (an output), an etcd URL.
fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let k = root.join("etc/kubernetes");
    let r = |p: &str| root.join(p).display().to_string();
    write(&k.join("pki/ca.crt"), "CA CERT", 0o644);
    write(&k.join("pki/ca.key"), "CA KEY", 0o600);
    write(&k.join("pki/sa.key"), "SA KEY", 0o600);
    write(&k.join("pki/etcd/ca.key"), "ETCD CA KEY", 0o600);
    write(&k.join("admin.conf"), "admin kubeconfig", 0o600);
    write(&k.join("manifests/etcd.yaml"), "etcd pod", 0o600);
    write(
        &root.join("srv/enc/config.yaml"),
        "EncryptionConfiguration aescbc",
        0o600,
    );
    write(&root.join("srv/audit/policy.yaml"), "audit policy", 0o644);
    write(&root.join("var/log/kubernetes/audit.log"), "a log", 0o600);
    let apiserver = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: kube-apiserver
spec:
  containers:
  - command:
    - kube-apiserver
    - --client-ca-file={pki}/ca.crt
    - --etcd-servers=https://127.0.0.1:2379
    - --encryption-provider-config=/etc/kubernetes/enc/config.yaml
    - --audit-policy-file
    - {audit}/policy.yaml
    - --audit-log-path={log}/audit.log
    - --service-account-signing-key-file={pki}/sa.key
    name: kube-apiserver
    volumeMounts:
    - mountPath: /etc/kubernetes/enc
      name: enc
    - mountPath: {pki}
      name: k8s-certs
    - mountPath: {audit}
      name: audit
    - mountPath: {log}
      name: log
  volumes:
  - hostPath:
      path: {enc}
    name: enc
  - hostPath:
      path: {pki}
    name: k8s-certs
  - hostPath:
      path: {audit}
    name: audit
  - hostPath:
      path: {log}
    name: log
"#,
        pki = r("etc/kubernetes/pki"),
        audit = r("srv/audit"),
        log = r("var/log/kubernetes"),
        enc = r("srv/enc"),
    );
    write(&k.join("manifests/kube-apiserver.yaml"), &apiserver, 0o600);
    write(
        &root.join("var/lib/kubelet/config.yaml"),
        "kubelet config",
        0o644,
    );
    write(
        &root.join("var/lib/kubelet/kubeadm-flags.env"),
        "KUBELET_KUBEADM_ARGS=",
        0o644,
    );
    write(
        &root.join("var/lib/kubelet/pki/kubelet.crt"),
        "kubelet cert",
        0o644,
    );
    Node {
        dirs: KitDirs {
            kubernetes_dir: k,
            kubelet_dir: root.join("var/lib/kubelet"),
        },
        root,
        _dir: dir,
    }
}

fn kit_of(n: &Node) -> Kit {
    let paths = collect(&n.dirs).unwrap();
    Kit {
        cluster_id: "ab12".into(),
        node: "cp1".into(),
        dirs: Some(n.dirs.clone()),
        versions: Versions {
            etcd_image: Some("registry.k8s.io/etcd:3.5.16-0".into()),
            ..Versions::default()
        },
        files: read_files(&paths).unwrap(),
    }
}

struct Ground {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    signer: SigningKey,
    policy: ReadPolicy,
    recipients: Recipients,
    identities: Identities,
    dir: PathBuf,
}

fn ground() -> Ground {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(&dir.path().join("store")).unwrap());
    let (public, _) = crate::trust::generate(&dir.path().join("signing.key")).unwrap();
    let signer = SigningKey::from_file(&dir.path().join("signing.key")).unwrap();
    let policy = ReadPolicy::new(TrustedKeys::from_files(&[public]).unwrap(), None).unwrap();
    let id = age::x25519::Identity::generate();
    let recipients = Recipients::parse("test", [id.to_public().to_string().as_str()]).unwrap();
    let key = dir.path().join("key.txt");
    write(&key, id.to_string().expose_secret(), 0o600);
    let identities = Identities::from_file(&key).unwrap();
    Ground {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        store,
        signer,
        policy,
        recipients,
        identities,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_kit_holds_every_file_the_manifests_name_found_through_their_mounts() {
    let n = node();
    let got: Vec<String> = collect(&n.dirs)
        .unwrap()
        .iter()
        .map(|p| p.strip_prefix(&n.root).unwrap().display().to_string())
        .collect();
    assert_eq!(
        got,
        vec![
            "etc/kubernetes/admin.conf",
            "etc/kubernetes/manifests/etcd.yaml",
            "etc/kubernetes/manifests/kube-apiserver.yaml",
            "etc/kubernetes/pki/ca.crt",
            "etc/kubernetes/pki/ca.key",
            "etc/kubernetes/pki/etcd/ca.key",
            "etc/kubernetes/pki/sa.key",
            "srv/audit/policy.yaml",
            // Named as /etc/kubernetes/enc/config.yaml in the container: on the host here.
            "srv/enc/config.yaml",
            "var/lib/kubelet/config.yaml",
            "var/lib/kubelet/kubeadm-flags.env",
            "var/lib/kubelet/pki/kubelet.crt",
        ],
        "the audit log is an output, the etcd URL no file"
    );
    let files = read_files(&collect(&n.dirs).unwrap()).unwrap();
    let key = files
        .iter()
        .find(|(f, _)| f.path.ends_with("pki/ca.key"))
        .unwrap();
    assert_eq!(
        (key.0.mode, key.1.as_slice()),
        (0o600, b"CA KEY".as_slice())
    );
}

#[test]
fn an_unchanged_kit_is_stored_once_and_a_changed_file_makes_a_new_one() {
    let n = node();
    let g = ground();
    let rt = rt();
    let save = |kit: &Kit| {
        rt.block_on(save(&g.store, Some(&g.signer), Some(&g.recipients), kit))
            .unwrap()
    };
    let first = save(&kit_of(&n));
    assert!(first.uploaded);
    let again = save(&kit_of(&n));
    assert_eq!(
        again,
        Saved {
            id: first.id.clone(),
            uploaded: false
        }
    );
    write(
        &n.dirs.kubernetes_dir.join("pki/ca.crt"),
        "RENEWED CA CERT",
        0o644,
    );
    let renewed = save(&kit_of(&n));
    assert!(renewed.uploaded);
    assert_ne!(renewed.id, first.id);
    let objects: Vec<String> = std::fs::read_dir(g.dir.join("store"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        objects
            .iter()
            .filter(|k| k.ends_with(".tar.zst.age"))
            .count(),
        2,
        "{objects:?}"
    );
    let listed = rt.block_on(list(&g.store, &g.policy)).unwrap();
    assert_eq!(listed.len(), 2);
}

#[test]
fn a_kit_is_never_stored_in_plaintext_and_reads_back_byte_for_byte() {
    let n = node();
    let g = ground();
    let rt = rt();
    let kit = kit_of(&n);
    let refused = rt.block_on(save(&g.store, Some(&g.signer), None, &kit));
    assert!(matches!(refused, Err(KitError::Plaintext)), "{refused:?}");
    let saved = rt
        .block_on(save(&g.store, Some(&g.signer), Some(&g.recipients), &kit))
        .unwrap();
    for e in std::fs::read_dir(g.dir.join("store")).unwrap().flatten() {
        let bytes = std::fs::read(e.path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("CA KEY") && !text.contains("aescbc"),
            "{} holds plaintext",
            e.path().display()
        );
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", e.path().display());
    }
    let (manifest, files) = rt
        .block_on(load(&g.store, &g.policy, &g.identities, &saved.id))
        .unwrap();
    assert_eq!(manifest.files.len(), kit.files.len());
    assert_eq!(files, kit.files);
}

#[test]
fn a_tampered_or_untrusted_kit_is_refused() {
    let n = node();
    let g = ground();
    let rt = rt();
    let kit = kit_of(&n);
    let saved = rt
        .block_on(save(&g.store, Some(&g.signer), Some(&g.recipients), &kit))
        .unwrap();
    // Signed by a key the reader does not trust.
    let (other, _) = crate::trust::generate(&g.dir.join("other.key")).unwrap();
    let stranger = ReadPolicy::new(TrustedKeys::from_files(&[other]).unwrap(), None).unwrap();
    let err = rt
        .block_on(load(&g.store, &stranger, &g.identities, &saved.id))
        .unwrap_err();
    assert!(matches!(err, KitError::Envelope(_)), "{err}");
    // One byte of the object changed.
    let manifest = rt.block_on(list(&g.store, &g.policy)).unwrap().remove(0);
    let object = g.dir.join("store").join(&manifest.object.key);
    let mut bytes = std::fs::read(&object).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&object, bytes).unwrap();
    let err = rt
        .block_on(load(&g.store, &g.policy, &g.identities, &saved.id))
        .unwrap_err();
    assert!(matches!(err, KitError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("digest"), "{err}");
}
