//! A fake kubeadm control-plane node and a stand-in kubelet.
//!
//! The node is the shared kubeadm fixture (tests/fixtures/kubeadm-node, a copy of
//! ../shared/fixtures/kubeadm-node) rewritten to this run: 127.0.0.1, free ports, a temp data
//! dir, per-run certificates. The stand-in kubelet does what lifeboat relies on from the real
//! one: it watches the manifests folder, runs etcd.yaml's command line with the real etcd binary
//! while the file is there (SIGTERM when it leaves, restarted if it dies), and runs a
//! placeholder process for each other manifest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{etcd_bin, etcdctl_bin, free_port, lifeboat, run_ok, Pki, Version};

const FIXTURES: [(&str, &str); 4] = [
    (
        "etcd.yaml",
        include_str!("../../fixtures/kubeadm-node/etcd.yaml"),
    ),
    (
        "kube-apiserver.yaml",
        include_str!("../../fixtures/kubeadm-node/kube-apiserver.yaml"),
    ),
    (
        "kube-controller-manager.yaml",
        include_str!("../../fixtures/kubeadm-node/kube-controller-manager.yaml"),
    ),
    (
        "kube-scheduler.yaml",
        include_str!("../../fixtures/kubeadm-node/kube-scheduler.yaml"),
    ),
];

pub struct FakeNode {
    pub name: String,
    pub version: Version,
    pub manifests_dir: PathBuf,
    pub data_dir: PathBuf,
    pub state_dir: PathBuf,
    pub client_url: String,
    pub peer_url: String,
    pub pki: Pki,
    pub kubelet: Kubelet,
    _dir: tempfile::TempDir,
}

struct Ports {
    client: u16,
    peer: u16,
    metrics: u16,
}

impl FakeNode {
    /// A single-member control-plane node, its etcd started by the stand-in kubelet.
    pub fn start(version: Version) -> FakeNode {
        let ports = Ports {
            client: free_port(),
            peer: free_port(),
            metrics: free_port(),
        };
        let initial = format!("cp1=https://127.0.0.1:{}", ports.peer);
        let node = FakeNode::build(version, "cp1", ports, &initial, Pki::generate());
        node.wait_serving();
        node
    }

    /// `n` nodes forming one etcd cluster (shared CA), like kubeadm's stacked HA topology.
    pub fn cluster(version: Version, n: usize) -> Vec<FakeNode> {
        let pki = Pki::generate();
        let ports: Vec<Ports> = (0..n)
            .map(|_| Ports {
                client: free_port(),
                peer: free_port(),
                metrics: free_port(),
            })
            .collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("cp{}=https://127.0.0.1:{}", i + 1, p.peer))
            .collect::<Vec<_>>()
            .join(",");
        let nodes: Vec<FakeNode> = ports
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                FakeNode::build(version, &format!("cp{}", i + 1), p, &initial, pki.clone())
            })
            .collect();
        for n in &nodes {
            n.wait_serving();
        }
        nodes
    }

    fn build(
        version: Version,
        name: &str,
        ports: Ports,
        initial_cluster: &str,
        pki: Pki,
    ) -> FakeNode {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let manifests_dir = root.join("etc/kubernetes/manifests");
        std::fs::create_dir_all(&manifests_dir).unwrap();
        let data_dir = root.join("var/lib/etcd");
        let pki_root = root.join("etc/kubernetes/pki");
        let pki_dir = pki_root.join("etcd");
        std::fs::create_dir_all(&pki_dir).unwrap();
        // The stand-in API server serves with the same test CA (kubeadm uses a cluster CA).
        std::fs::copy(&pki.ca_cert, pki_root.join("ca.crt")).unwrap();
        std::fs::copy(&pki.server_cert, pki_root.join("apiserver.crt")).unwrap();
        std::fs::copy(&pki.server_key, pki_root.join("apiserver.key")).unwrap();
        let apiserver_port = free_port();
        for (from, to) in [
            (&pki.ca_cert, "ca.crt"),
            (&pki.server_cert, "server.crt"),
            (&pki.server_key, "server.key"),
            (&pki.server_cert, "peer.crt"),
            (&pki.server_key, "peer.key"),
            (&pki.client_cert, "healthcheck-client.crt"),
            (&pki.client_key, "healthcheck-client.key"),
        ] {
            std::fs::copy(from, pki_dir.join(to)).unwrap();
        }
        for (file, text) in FIXTURES {
            let mut t = text
                .replace(",https://10.0.0.11:2379", "")
                .replace("10.0.0.11", "127.0.0.1")
                // Placeholders first: a port written in by one replacement must not be
                // rewritten by the next (port 12381 holds "2381", 16443 holds "6443").
                .replace(":2379", ":@client@")
                .replace(":2380", ":@peer@")
                .replace("2381", "@metrics@")
                .replace("6443", "@apiserver@")
                .replace("@client@", &ports.client.to_string())
                .replace("@peer@", &ports.peer.to_string())
                .replace("@metrics@", &ports.metrics.to_string())
                .replace("@apiserver@", &apiserver_port.to_string())
                .replace("/etc/kubernetes/pki", &pki_root.display().to_string())
                .replace("/var/lib/etcd", &data_dir.display().to_string());
            if file == "etcd.yaml" {
                t = t
                    .replace(
                        &format!("--initial-cluster=cp1=https://127.0.0.1:{}", ports.peer),
                        &format!("--initial-cluster={initial_cluster}"),
                    )
                    .replace("--name=cp1", &format!("--name={name}"))
                    .replace(
                        "- --snapshot-count=10000",
                        "- --snapshot-count=10000\n    - --initial-cluster-token=fake-node-cluster",
                    );
            }
            std::fs::write(manifests_dir.join(file), t).unwrap();
        }
        let kubelet = Kubelet::start(&manifests_dir, etcd_bin(version), &root.join("logs"));
        FakeNode {
            name: name.into(),
            version,
            manifests_dir,
            data_dir,
            state_dir: root.join("var/lib/etcd-lifeboat"),
            client_url: format!("https://127.0.0.1:{}", ports.client),
            peer_url: format!("https://127.0.0.1:{}", ports.peer),
            pki,
            kubelet,

            _dir: dir,
        }
    }

    /// The node's `/etc/kubernetes`.
    pub fn kubernetes_dir(&self) -> PathBuf {
        self.manifests_dir.parent().unwrap().to_path_buf()
    }

    pub fn etcd_manifest(&self) -> PathBuf {
        self.manifests_dir.join("etcd.yaml")
    }

    /// etcdctl of the node's version against this member, with the healthcheck client cert.
    pub fn etcdctl(&self) -> Command {
        let mut cmd = Command::new(etcdctl_bin(self.version));
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_url))
            .arg(format!("--cacert={}", self.pki.ca_cert.display()))
            .arg(format!("--cert={}", self.pki.client_cert.display()))
            .arg(format!("--key={}", self.pki.client_key.display()))
            .arg("--command-timeout=10s");
        cmd
    }

    pub fn put(&self, key: &str, value: &str) {
        run_ok(self.etcdctl().args(["put", key, value]));
    }

    /// Every key and value, in key order (values in these tests are one line).
    pub fn dump(&self) -> BTreeMap<String, String> {
        let out = run_ok(self.etcdctl().args(["get", "", "--prefix"]));
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .map(|kv| (kv[0].to_string(), kv.get(1).unwrap_or(&"").to_string()))
            .collect()
    }

    pub fn revision(&self) -> i64 {
        let out = run_ok(self.etcdctl().args(["endpoint", "status", "-w", "json"]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["Status"]["header"]["revision"].as_i64().unwrap()
    }

    /// Waits until this member answers (a leader is not required: see `wait_healthy`).
    pub fn wait_serving(&self) {
        self.wait_for(&["endpoint", "status"], "answered");
    }

    /// Waits until the member reports itself healthy (it has a leader and serves reads).
    pub fn wait_healthy(&self) {
        self.wait_for(&["endpoint", "health"], "became healthy");
    }

    fn wait_for(&self, etcdctl_args: &[&str], what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = self
                .etcdctl()
                .args(etcdctl_args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd on {} never {what}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Its etcd dies (SIGKILL) and its data is lost (the data dir stays, empty); the kubelet
    /// starts it again only once `etcd.yaml` has left the manifests folder and come back.
    pub fn lose_member(&self) {
        self.kubelet
            .kill_until_moved("etcd.yaml", self.etcd_manifest());
        std::fs::remove_dir_all(self.data_dir.join("member")).unwrap();
    }

    /// `lifeboat member replace` with this node's folders.
    pub fn member_replace(&self) -> Command {
        let mut cmd = lifeboat();
        cmd.args(["member", "replace", "--manifests-dir"])
            .arg(&self.manifests_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--stop-timeout", "30s", "--start-timeout", "60s"]);
        cmd
    }

    /// `lifeboat restore` with this node's folders and the right restore tool.
    /// `lifeboat snapshot save -w json` of this node's etcd (found through its manifest) to
    /// `dest`, encrypted to `key`; its JSON report. Fails the test when the save fails.
    pub fn save(&self, key: &super::AgeKey, dest: &Path, work: &Path) -> serde_json::Value {
        super::run(
            lifeboat()
                .args(["snapshot", "save", "-w", "json", "-r", &key.recipient])
                .arg("--etcd-manifest")
                .arg(self.etcd_manifest())
                .arg("--dest")
                .arg(dest)
                .arg("--work-dir")
                .arg(work),
        )
        .ok()
        .json()
    }

    pub fn restore(&self) -> Command {
        self.restore_in(&self.state_dir)
    }

    /// As `restore`, with another state dir.
    pub fn restore_in(&self, state_dir: &Path) -> Command {
        let mut cmd = lifeboat();
        cmd.arg("restore")
            .arg("--manifests-dir")
            .arg(&self.manifests_dir)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--etcdutl")
            .arg(super::restore_tool(self.version))
            .args(["--stop-timeout", "30s", "--start-timeout", "60s"]);
        cmd
    }

    /// Snapshot of the node's files that a restore may touch: every manifest's bytes, and a
    /// digest of every file under `dir` (a data dir or its moved-aside copy).
    pub fn manifests(&self) -> BTreeMap<String, Vec<u8>> {
        files_under(&self.manifests_dir)
    }

    pub fn journal(&self) -> PathBuf {
        self.state_dir.join("restore/journal.json")
    }

    /// Folders beside the data dir whose name starts with `data-dir-name.`+`prefix`.
    pub fn siblings_of_data_dir(&self, prefix: &str) -> Vec<PathBuf> {
        let parent = self.data_dir.parent().unwrap();
        let want = format!("etcd.{prefix}");
        let mut v: Vec<PathBuf> = std::fs::read_dir(parent)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&want))
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }
}

/// Every regular file under `dir`, relative path → bytes.
pub fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(base).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

struct Pod {
    content: Vec<u8>,
    child: Child,
}

/// The stand-in kubelet: a thread polling the manifests folder every 100 ms.
pub struct Kubelet {
    stop: Arc<AtomicBool>,
    hold: Arc<AtomicBool>,
    pods: Arc<Mutex<BTreeMap<String, Pod>>>,
    thread: Option<JoinHandle<()>>,
}

impl Kubelet {
    fn start(manifests: &Path, etcd: PathBuf, logs: &Path) -> Kubelet {
        std::fs::create_dir_all(logs).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let hold = Arc::new(AtomicBool::new(false));
        let pods: Arc<Mutex<BTreeMap<String, Pod>>> = Arc::default();
        let (m, l) = (manifests.to_path_buf(), logs.to_path_buf());
        let (s, h, p) = (stop.clone(), hold.clone(), pods.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                sync_pods(&m, &etcd, &l, &p, &h);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Kubelet {
            stop,
            hold,
            pods,
            thread: Some(thread),
        }
    }

    /// While held, the kubelet starts nothing (it still stops pods whose file left).
    pub fn hold(&self, on: bool) {
        self.hold.store(on, Ordering::SeqCst);
    }

    /// Kills pod `name` (SIGKILL, as a machine losing power would) and starts nothing more
    /// until `manifest` has left the manifests folder: a member that died and stays dead
    /// until someone acts on the node.
    pub fn kill_until_moved(&self, name: &str, manifest: PathBuf) {
        self.hold(true);
        if let Some(mut pod) = self.pods.lock().unwrap().remove(name) {
            let _ = pod.child.kill();
            let _ = pod.child.wait();
        }
        let (hold, stop) = (self.hold.clone(), self.stop.clone());
        // "Moved" is told by the file's inode and change time, not by its absence alone: a
        // command may move it out and write it back between two looks (member replace does
        // within milliseconds), and a rename changes the change time.
        let stamp = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
        };
        let before = stamp(&manifest);
        std::thread::spawn(move || {
            while before.is_some() && stamp(&manifest) == before && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            hold.store(false, Ordering::SeqCst);
        });
    }

    /// Names of the pods running now.
    pub fn running(&self) -> Vec<String> {
        self.pods.lock().unwrap().keys().cloned().collect()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for (_, mut pod) in std::mem::take(&mut *self.pods.lock().unwrap()) {
            let _ = pod.child.kill();
            let _ = pod.child.wait();
        }
    }
}

fn sync_pods(
    manifests: &Path,
    etcd: &Path,
    logs: &Path,
    pods: &Mutex<BTreeMap<String, Pod>>,
    hold: &AtomicBool,
) {
    let mut present = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(manifests) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".yaml") {
                if let Ok(bytes) = std::fs::read(e.path()) {
                    present.insert(name, bytes);
                }
            }
        }
    }
    let mut pods = pods.lock().unwrap();
    // Stop pods whose file left or changed, and forget pods that died (to restart them).
    let names: Vec<String> = pods.keys().cloned().collect();
    for name in names {
        let gone = present.get(&name) != Some(&pods[&name].content);
        let died = matches!(pods.get_mut(&name).unwrap().child.try_wait(), Ok(Some(_)));
        if gone || died {
            let mut pod = pods.remove(&name).unwrap();
            terminate(&mut pod.child);
        }
    }
    // Read under the pods' lock: `kill_until_moved` holds first, then takes the lock.
    if hold.load(Ordering::SeqCst) {
        return;
    }
    for (name, content) in present {
        if pods.contains_key(&name) {
            continue;
        }
        if let Some(child) = start_pod(&name, &content, etcd, logs) {
            pods.insert(name, Pod { content, child });
        }
    }
}

/// The etcd binary of an image the suite can run (`registry.k8s.io/etcd:3.5.30-0`).
fn image_binary(image: &str) -> Option<PathBuf> {
    let tag = image.rsplit(':').next()?;
    let version = [
        ("3.4.23", Version::V34),
        ("3.5.16", Version::V35),
        ("3.5.30", Version::V3530),
    ]
    .into_iter()
    .find_map(|(v, version)| tag.starts_with(v).then_some(version))?;
    Some(etcd_bin(version))
}

fn start_pod(name: &str, content: &[u8], etcd: &Path, logs: &Path) -> Option<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("{name}.log")))
        .ok()?;
    if name == "etcd.yaml" {
        let pod: serde_json::Value = serde_norway::from_slice(content).ok()?;
        let command: Vec<String> = pod["spec"]["containers"][0]["command"]
            .as_array()?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        // The image's tag picks the binary where the suite has that version (kubeadm's upgrade
        // rewrites it); any other tag runs the node's own etcd, as an image the node already
        // has would.
        let binary = pod["spec"]["containers"][0]["image"]
            .as_str()
            .and_then(image_binary)
            .unwrap_or_else(|| etcd.to_path_buf());
        Command::new(binary)
            .args(&command[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().ok()?)
            .stderr(log)
            .spawn()
            .ok()
    } else if name == "kube-apiserver.yaml" {
        let pod: serde_json::Value = serde_norway::from_slice(content).ok()?;
        let flag = |f: &str| -> Option<String> {
            pod["spec"]["containers"][0]["command"]
                .as_array()?
                .iter()
                .filter_map(|v| v.as_str())
                .find_map(|a| a.strip_prefix(&format!("--{f}=")).map(str::to_string))
        };
        Command::new("python3")
            .arg("-c")
            .arg(APISERVER_STAND_IN)
            .arg(flag("secure-port")?)
            .arg(flag("tls-cert-file")?)
            .arg(flag("tls-private-key-file")?)
            .stdin(Stdio::null())
            .stdout(log.try_clone().ok()?)
            .stderr(log)
            .spawn()
            .ok()
    } else {
        Command::new("sleep")
            .arg("100000")
            .stdin(Stdio::null())
            .stdout(log.try_clone().ok()?)
            .stderr(log)
            .spawn()
            .ok()
    }
}

/// What lifeboat relies on from kube-apiserver: HTTPS on `--secure-port` with the serving
/// certificate from the manifest, answering `/readyz`.
const APISERVER_STAND_IN: &str = r#"
import http.server, ssl, sys
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path.split("?")[0] in ("/readyz", "/livez", "/healthz")
        body = b"ok" if ok else b"not found"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

/// SIGTERM, then SIGKILL after 10 s, like the kubelet's grace period.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
