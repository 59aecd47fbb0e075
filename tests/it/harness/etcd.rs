//! Real etcd processes on 127.0.0.1 with free ports; killed by PID on Drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{etcd_bin, etcdctl_bin, free_port, run_ok, Pki};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// 3.4.23 (Debian bookworm).
    V34,
    /// 3.5.16 (Debian trixie).
    V35,
    /// 3.5.30 (Debian sid): the current 3.5, past the 3.5.26 line a 3.6 upgrade needs.
    V3530,
}

impl Version {
    /// Every version the suite runs: the tests of the version-sensitive paths (save, the
    /// stream's checks, status, drill, point-in-time restore, the shadow) run on each.
    pub const ALL: [Version; 3] = [Version::V34, Version::V35, Version::V3530];

    /// The 3.5 line, as far as command-line tools and on-disk formats go.
    pub fn is_35(self) -> bool {
        self != Version::V34
    }
}

pub struct EtcdProcess {
    child: Child,
    pub version: Version,
    pub client_url: String,
    pub data_dir: PathBuf,
    pub tls: Option<Pki>,
    _dir: Option<tempfile::TempDir>,
    _shared: Option<Arc<tempfile::TempDir>>,
}

impl EtcdProcess {
    /// A fresh single-member etcd in its own temp dir.
    pub fn start(version: Version, tls: Option<Pki>) -> EtcdProcess {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut p = EtcdProcess::start_on(version, tls, &data_dir, None);
        p._dir = Some(dir);
        p
    }

    /// A fresh single-member etcd (a new cluster) on a given client port: what a client that
    /// keeps its endpoint sees after the cluster behind it was replaced.
    pub fn start_at_port(version: Version, client_port: u16) -> EtcdProcess {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut last_err = String::new();
        for _ in 0..3 {
            match try_start_at(version, None, &data_dir, None, client_port, &[]) {
                Ok(mut p) => {
                    p._dir = Some(dir);
                    return p;
                }
                Err(e) => last_err = e,
            }
        }
        panic!("etcd {version:?} did not start on port {client_port}: {last_err}");
    }

    /// A fresh single-member etcd started with `extra` flags too (e.g. a small quota).
    pub fn start_with(version: Version, extra: &[&str]) -> EtcdProcess {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut last_err = String::new();
        for _ in 0..3 {
            match try_start_at(version, None, &data_dir, None, free_port(), extra) {
                Ok(mut p) => {
                    p._dir = Some(dir);
                    return p;
                }
                Err(e) => last_err = e,
            }
        }
        panic!("etcd {version:?} did not start with {extra:?}: {last_err}");
    }

    /// An etcd on an existing (e.g. restored) data dir. `name`/`peer_url` must match what the
    /// data dir was restored with, when given.
    pub fn start_on(
        version: Version,
        tls: Option<Pki>,
        data_dir: &Path,
        member: Option<(&str, &str)>,
    ) -> EtcdProcess {
        let mut last_err = String::new();
        for _ in 0..3 {
            match try_start(version, tls.clone(), data_dir, member) {
                Ok(p) => return p,
                Err(e) => last_err = e,
            }
        }
        panic!("etcd {version:?} did not start: {last_err}");
    }

    /// etcdctl (of the same version) pointed at this member.
    pub fn etcdctl(&self) -> Command {
        let mut cmd = Command::new(etcdctl_bin(self.version));
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_url));
        if let Some(pki) = &self.tls {
            cmd.arg(format!("--cacert={}", pki.ca_cert.display()))
                .arg(format!("--cert={}", pki.client_cert.display()))
                .arg(format!("--key={}", pki.client_key.display()));
        }
        cmd
    }

    /// The connection flags of `lifeboat` for this member.
    pub fn lifeboat_flags(&self) -> Vec<String> {
        let mut v = vec![format!("--endpoints={}", self.client_url)];
        if let Some(pki) = &self.tls {
            v.push(format!("--cacert={}", pki.ca_cert.display()));
            v.push(format!("--cert={}", pki.client_cert.display()));
            v.push(format!("--key={}", pki.client_key.display()));
        }
        v
    }

    pub fn put(&self, key: &str, value: &str) {
        run_ok(self.etcdctl().args(["put", key, value]));
    }

    /// Stops etcd with SIGTERM and waits, so its data dir is consistent on disk.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster of `n` members on 127.0.0.1, started together (they need each other for quorum).
pub fn start_cluster(version: Version, n: usize) -> Vec<EtcdProcess> {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
        .collect();
    let mut members = Vec::new();
    for (i, (c, p)) in ports.iter().enumerate() {
        let data_dir = dir.path().join(format!("m{i}"));
        let client_url = format!("http://127.0.0.1:{c}");
        let peer = format!("http://127.0.0.1:{p}");
        let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
        let child = Command::new(etcd_bin(version))
            .arg(format!("--name=m{i}"))
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg("--initial-cluster-token=lifeboat-test")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        members.push(EtcdProcess {
            child,
            version,
            client_url,
            data_dir,
            tls: None,
            _dir: None,
            _shared: Some(dir.clone()),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for m in &members {
        loop {
            let ok = m
                .etcdctl()
                .args(["endpoint", "health", "--command-timeout=1s"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cluster member {} not healthy",
                m.client_url
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    members
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn try_start(
    version: Version,
    tls: Option<Pki>,
    data_dir: &Path,
    member: Option<(&str, &str)>,
) -> Result<EtcdProcess, String> {
    try_start_at(version, tls, data_dir, member, free_port(), &[])
}

fn try_start_at(
    version: Version,
    tls: Option<Pki>,
    data_dir: &Path,
    member: Option<(&str, &str)>,
    client_port: u16,
    extra: &[&str],
) -> Result<EtcdProcess, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let client_url = format!("{scheme}://127.0.0.1:{client_port}");
    let (name, peer_url) = match member {
        Some((n, p)) => (n.to_string(), p.to_string()),
        None => (
            "default".to_string(),
            format!("http://127.0.0.1:{}", free_port()),
        ),
    };
    let log = std::fs::File::create(data_dir.with_extension(format!("{client_port}.log")))
        .map_err(|e| e.to_string())?;
    let mut cmd = Command::new(etcd_bin(version));
    cmd.arg(format!("--name={name}"))
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster={name}={peer_url}"))
        .arg("--quota-backend-bytes=4294967296")
        // Later flags win (Go's flag package): `extra` may set the quota again.
        .args(extra)
        .env("ETCD_UNSUPPORTED_ARCH", "")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    if let Some(pki) = &tls {
        cmd.arg(format!("--cert-file={}", pki.server_cert.display()))
            .arg(format!("--key-file={}", pki.server_key.display()))
            .arg(format!("--trusted-ca-file={}", pki.ca_cert.display()))
            .arg("--client-cert-auth=true");
    }
    let child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let mut p = EtcdProcess {
        child,
        version,
        client_url,
        data_dir: data_dir.to_path_buf(),
        tls,
        _dir: None,
        _shared: None,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = p.child.try_wait() {
            return Err(format!("exited early with {status}"));
        }
        let health = p
            .etcdctl()
            .args(["endpoint", "health", "--command-timeout=1s"])
            .output();
        if matches!(health, Ok(ref o) if o.status.success()) {
            return Ok(p);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("not healthy within 20 s".into())
}
