//! The sandbox: a throwaway etcd on loopback, restored from a plain snapshot with etcd's own
//! tool (no revision bump), reached with mutual TLS and throwaway certificates (`pki.rs`),
//! killed when dropped. Drills check one; point-in-time restores replay a journal into one;
//! the shadow keeps one running.

mod pki;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

pub use pki::{PkiError, SandboxPki};

use crate::etcd::{EtcdSettings, EtcdSource, MemberStatus};
use crate::restore::{MemberSpec, RestoreError, RestoreTool};

/// How a sandbox runs.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// The etcd binary the sandbox member runs.
    pub etcd: PathBuf,
    /// etcdutl (or etcdctl 3.4); `None` finds one on PATH.
    pub tool: Option<PathBuf>,
    /// The sandbox is a temp folder in here (needs about twice the database).
    pub work_dir: PathBuf,
    pub start_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("the sandbox etcd ({etcd}) did not serve within {waited:?}: {detail}")]
    EtcdStart {
        etcd: PathBuf,
        waited: Duration,
        detail: String,
    },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("sandbox {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct Sandbox {
    child: tokio::process::Child,
    log: PathBuf,
    etcd: PathBuf,
    /// A client of the sandbox member, and its status once it served.
    pub source: EtcdSource,
    pub status: MemberStatus,
    /// How to reach it (for more clients).
    pub etcd_settings: EtcdSettings,
}

impl Sandbox {
    /// Restores `snapshot` into `<dir>/data` and starts etcd on it with `extra_args`; returns
    /// once it serves with a leader.
    ///
    /// # Errors
    /// The restore tool or etcd fails, or etcd does not serve within the start timeout.
    pub async fn start(
        dir: &Path,
        snapshot: &Path,
        skip_hash_check: bool,
        tool: &RestoreTool,
        settings: &SandboxSettings,
        extra_args: &[String],
    ) -> Result<Sandbox, SandboxError> {
        let restore = Restore {
            snapshot,
            skip_hash_check,
            tool,
        };
        Sandbox::launch(dir, Some(restore), settings, extra_args).await
    }

    /// Starts etcd again on the data dir a sandbox left in `<dir>/data` (new ports, new
    /// certificates); returns once it serves with a leader.
    ///
    /// # Errors
    /// etcd fails or does not serve within the start timeout.
    pub async fn resume(
        dir: &Path,
        settings: &SandboxSettings,
        extra_args: &[String],
    ) -> Result<Sandbox, SandboxError> {
        Sandbox::launch(dir, None, settings, extra_args).await
    }

    async fn launch(
        dir: &Path,
        restore: Option<Restore<'_>>,
        settings: &SandboxSettings,
        extra_args: &[String],
    ) -> Result<Sandbox, SandboxError> {
        let data_dir = dir.join("data");
        let pki = SandboxPki::generate(dir)?;
        let log = dir.join("etcd.log");
        let mut attempt = 1;
        loop {
            match start_on_free_ports(
                &data_dir,
                restore.as_ref(),
                settings,
                extra_args,
                &pki,
                &log,
            )
            .await
            {
                Err(e) if attempt < PORT_ATTEMPTS && lost_port_race(&log) => {
                    tracing::debug!(
                        attempt,
                        "sandbox etcd lost its port to another program; retrying: {e}"
                    );
                    attempt += 1;
                }
                Err(e) => return Err(e),
                Ok((source, child, status, etcd_settings)) => {
                    return Ok(Sandbox {
                        child,
                        log,
                        etcd: settings.etcd.clone(),
                        source,
                        status,
                        etcd_settings,
                    })
                }
            }
        }
    }

    /// The last line etcd logged (for messages).
    pub fn last_log_line(&self) -> String {
        last_line(&self.log)
    }

    pub fn etcd_binary(&self) -> &Path {
        &self.etcd
    }

    pub async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A port picked free can be taken by another program before etcd binds it; etcd then exits
/// saying so, and a fresh pick almost always works.
const PORT_ATTEMPTS: u32 = 3;

fn lost_port_race(log: &Path) -> bool {
    std::fs::read_to_string(log).is_ok_and(|l| l.contains("address already in use"))
}

type Started = (
    EtcdSource,
    tokio::process::Child,
    MemberStatus,
    EtcdSettings,
);

/// What to restore a fresh data dir from.
struct Restore<'a> {
    snapshot: &'a Path,
    skip_hash_check: bool,
    tool: &'a RestoreTool,
}

/// Restores the snapshot (if any: else the data dir is there already) into `data_dir` for a
/// member on two newly picked ports and starts etcd on it.
async fn start_on_free_ports(
    data_dir: &Path,
    restore: Option<&Restore<'_>>,
    settings: &SandboxSettings,
    extra_args: &[String],
    pki: &SandboxPki,
    log: &Path,
) -> Result<Started, SandboxError> {
    let (client_port, peer_port) = (free_port()?, free_port()?);
    let peer = format!("https://127.0.0.1:{peer_port}");
    let member = MemberSpec {
        name: "drill".into(),
        initial_advertise_peer_urls: peer.clone(),
        initial_cluster: format!("drill={peer}"),
        initial_cluster_token: "lifeboat-drill".into(),
    };
    if let Some(r) = restore {
        remove_earlier_attempt(data_dir)?;
        // No revision bump: revisions must stay those of the backup.
        let argv = r
            .tool
            .restore_argv(r.snapshot, data_dir, &member, r.skip_hash_check, None);
        crate::restore::tool::run_restore(&argv)?;
    }
    let client_url = format!("https://127.0.0.1:{client_port}");
    let etcd_settings = EtcdSettings {
        endpoints: vec![client_url.clone()],
        cacert: Some(pki.ca.clone()),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
        user: None,
        password: None,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(60),
        stall_timeout: Duration::from_secs(60),
    };
    let child = spawn(
        settings,
        log,
        data_dir,
        &member,
        &client_url,
        pki,
        extra_args,
    )?;
    let ((source, child), status) = wait_ready(child, log, &etcd_settings, settings).await?;
    Ok((source, child, status, etcd_settings))
}

/// The data dir of an attempt that lost its port race (the restore tool refuses an existing one).
fn remove_earlier_attempt(data_dir: &Path) -> Result<(), SandboxError> {
    match std::fs::remove_dir_all(data_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SandboxError::Dir {
            path: data_dir.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn spawn(
    settings: &SandboxSettings,
    log: &Path,
    data_dir: &Path,
    member: &MemberSpec,
    client_url: &str,
    pki: &SandboxPki,
    extra_args: &[String],
) -> Result<tokio::process::Child, SandboxError> {
    let sandbox_err = |source| SandboxError::Dir {
        path: log.to_path_buf(),
        source,
    };
    let out = std::fs::File::create(log).map_err(sandbox_err)?;
    let err = out.try_clone().map_err(sandbox_err)?;
    tokio::process::Command::new(&settings.etcd)
        .arg(format!("--name={}", member.name))
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!(
            "--listen-peer-urls={}",
            member.initial_advertise_peer_urls
        ))
        .arg(format!(
            "--initial-advertise-peer-urls={}",
            member.initial_advertise_peer_urls
        ))
        .arg(format!("--initial-cluster={}", member.initial_cluster))
        .arg("--client-cert-auth")
        .arg(format!("--trusted-ca-file={}", pki.ca.display()))
        .arg(format!("--cert-file={}", pki.server_cert.display()))
        .arg(format!("--key-file={}", pki.server_key.display()))
        .arg("--peer-client-cert-auth")
        .arg(format!("--peer-trusted-ca-file={}", pki.ca.display()))
        .arg(format!("--peer-cert-file={}", pki.server_cert.display()))
        .arg(format!("--peer-key-file={}", pki.server_key.display()))
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SandboxError::EtcdStart {
            etcd: settings.etcd.clone(),
            waited: Duration::ZERO,
            detail: format!("cannot run it: {e}; pass --etcd PATH"),
        })
}

async fn wait_ready(
    mut child: tokio::process::Child,
    log: &Path,
    etcd_settings: &EtcdSettings,
    settings: &SandboxSettings,
) -> Result<((EtcdSource, tokio::process::Child), MemberStatus), SandboxError> {
    let deadline = Instant::now() + settings.start_timeout;
    let endpoint = etcd_settings.endpoints[0].clone();
    let fail = |what: String| SandboxError::EtcdStart {
        etcd: settings.etcd.clone(),
        waited: settings.start_timeout,
        detail: format!("{what}; last log line: {}", last_line(log)),
    };
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(fail(format!("it exited ({status})")));
        }
        if let Ok(mut source) = EtcdSource::connect(etcd_settings, &endpoint).await {
            if let Ok(s) = source.status().await {
                if s.leader != 0 {
                    return Ok(((source, child), s));
                }
            }
        }
        if Instant::now() >= deadline {
            let _ = child.start_kill();
            return Err(fail("no answer with a leader".into()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn last_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|l| l.lines().last().map(str::to_string))
        .unwrap_or_default()
}

fn free_port() -> Result<u16, SandboxError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| SandboxError::Dir {
            path: PathBuf::from("127.0.0.1 (no free port)"),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_port_race_is_recognised_from_etcds_own_words_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("etcd.log");
        assert!(!lost_port_race(&log), "no log yet");
        // What etcd 3.5 logs when its listener cannot bind.
        std::fs::write(
            &log,
            r#"{"level":"fatal","msg":"discovery failed","error":"listen tcp 127.0.0.1:41234: bind: address already in use"}"#,
        )
        .unwrap();
        assert!(lost_port_race(&log));
        std::fs::write(
            &log,
            r#"{"level":"fatal","msg":"member has already been bootstrapped"}"#,
        )
        .unwrap();
        assert!(!lost_port_race(&log));
    }
}
