//! The node side of a restore: kubelet's static pod manifests and the local etcd member.
//!
//! The kubelet stops a static pod when its file leaves the manifests folder and starts it when
//! the file comes back, so stopping the control plane is a rename into a holding folder beside
//! it (same filesystem: the rename is atomic and the bytes stay identical for a rollback).

use std::fs::File;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::plan::LocalClient;
use super::RestoreError;
use crate::etcd::{EtcdSettings, EtcdSource};
use crate::fsutil;

/// The control-plane static pods a restore stops, etcd first; other files stay.
pub const CONTROL_PLANE_PODS: [&str; 4] = [
    "etcd.yaml",
    "kube-apiserver.yaml",
    "kube-controller-manager.yaml",
    "kube-scheduler.yaml",
];

/// Moves `name` from `from` to `to` unless it is already there (idempotent, for resume).
///
/// # Errors
/// The file is in neither folder, or the rename fails.
pub fn move_manifest(name: &str, from: &Path, to: &Path) -> Result<(), RestoreError> {
    let src = from.join(name);
    let dst = to.join(name);
    if !src.exists() && dst.exists() {
        return Ok(());
    }
    fsutil::create_private_dir(to).map_err(|e| RestoreError::node(to, e.to_string()))?;
    fsutil::durable_rename(&src, &dst)
        .map_err(|e| RestoreError::node(&src, format!("cannot move it to {}: {e}", to.display())))
}

/// What says whether the local member is running.
#[derive(Debug, Clone)]
pub struct EtcdProbe {
    /// Loopback (or first) client address from the manifest.
    pub client_addr: Option<SocketAddr>,
    /// `<data-dir>/member/snap/db`, which a running etcd holds an flock on.
    pub db: PathBuf,
}

impl EtcdProbe {
    pub fn new(client_url: Option<&str>, data_dir: &Path) -> EtcdProbe {
        EtcdProbe {
            client_addr: client_url.and_then(socket_addr_of_url),
            db: data_dir.join("member").join("snap").join("db"),
        }
    }

    /// Why etcd looks alive, or `None` when the port is closed and the db is not locked.
    pub fn running(&self) -> Option<String> {
        if let Some(addr) = self.client_addr {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return Some(format!("its client port {addr} accepts connections"));
            }
        }
        if db_locked(&self.db) {
            return Some(format!("{} is locked by a process", self.db.display()));
        }
        if let Some(why) = crictl_reports_etcd() {
            return Some(why);
        }
        None
    }

    /// Waits until etcd is down, polling; `Err` after `timeout` with what still looks alive.
    ///
    /// # Errors
    /// etcd still runs at the deadline.
    pub fn wait_stopped(&self, timeout: Duration) -> Result<(), RestoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(why) = self.running() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(RestoreError::StillRunning {
                    waited: timeout,
                    why,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// bbolt takes `flock(LOCK_EX)` on the db for as long as etcd has it open.
pub(crate) fn db_locked(db: &Path) -> bool {
    let Ok(file) = File::open(db) else {
        return false;
    };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}

/// With a container runtime, `crictl ps` is the last word on whether the container runs.
/// Absent or failing crictl says nothing (tests and non-CRI hosts).
fn crictl_reports_etcd() -> Option<String> {
    let crictl = crate::process::on_path("crictl")?;
    let out = std::process::Command::new(crictl)
        .args(["ps", "--name", "^etcd$", "--state", "running", "-q"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let ids = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!ids.is_empty()).then(|| format!("crictl still lists a running etcd container ({ids})"))
}

/// `https://127.0.0.1:2379` → 127.0.0.1:2379.
pub fn socket_addr_of_url(url: &str) -> Option<SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next()?;
    hostport.to_socket_addrs().ok()?.next()
}

pub(super) async fn probe_status(
    settings: &EtcdSettings,
    endpoint: &str,
) -> Result<crate::etcd::MemberStatus, crate::etcd::SourceError> {
    let mut source = EtcdSource::connect(settings, endpoint).await?;
    source.status().await
}

pub fn client_settings(client: &LocalClient, connect_timeout: Duration) -> EtcdSettings {
    EtcdSettings {
        endpoints: vec![client.endpoint.clone()],
        cacert: client.cacert.clone(),
        cert: client.cert.clone(),
        key: client.key.clone(),
        user: None,
        password: None,
        connect_timeout,
        request_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_secs(60),
    }
}

pub(super) async fn local_cluster_id(
    client: &LocalClient,
    connect_timeout: Duration,
) -> Option<String> {
    let settings = client_settings(client, connect_timeout);
    probe_status(&settings, &client.endpoint)
        .await
        .ok()
        .map(|s| format!("{:x}", s.cluster_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_addresses() {
        assert_eq!(
            socket_addr_of_url("https://127.0.0.1:2379"),
            Some("127.0.0.1:2379".parse().unwrap())
        );
        assert_eq!(
            socket_addr_of_url("http://127.0.0.1:2381/metrics"),
            Some("127.0.0.1:2381".parse().unwrap())
        );
        assert_eq!(socket_addr_of_url("garbage"), None);
    }

    #[test]
    fn a_held_flock_counts_as_running_and_a_released_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("member/snap");
        std::fs::create_dir_all(&snap).unwrap();
        let db = snap.join("db");
        std::fs::write(&db, b"x").unwrap();
        let probe = EtcdProbe::new(None, dir.path());
        assert!(probe.running().is_none());
        let holder = File::open(&db).unwrap();
        holder.lock().unwrap();
        assert!(probe.running().unwrap().contains("locked"));
        holder.unlock().unwrap();
        assert!(probe.running().is_none());
    }

    #[test]
    fn moving_a_manifest_twice_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("etcd.yaml"), b"pod").unwrap();
        move_manifest("etcd.yaml", &a, &b).unwrap();
        move_manifest("etcd.yaml", &a, &b).unwrap();
        assert_eq!(std::fs::read(b.join("etcd.yaml")).unwrap(), b"pod");
        assert!(move_manifest("missing.yaml", &a, &b).is_err());
    }
}
