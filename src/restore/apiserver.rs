//! After a restore, the API server's `/readyz` says whether the control plane is back. It is
//! informational: a restored etcd is the restore's result; an API server that is slow or
//! unreachable is reported, never a reason to fail.
//!
//! kubeadm's serving certificate has `kubernetes` among its names but usually not 127.0.0.1, so
//! the probe connects to loopback and verifies the certificate for `kubernetes` against the
//! cluster CA (`--client-ca-file`, which kubeadm also signs the serving certificate with).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// Why the API server did not answer ready (reported, never a reason to fail the restore).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the cluster CA {path}: {source}")]
    Ca {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("127.0.0.1:{port}: {source}")]
    Connect {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with the API server: {0}")]
    Handshake(#[source] std::io::Error),
    #[error("talking to the API server: {0}")]
    Io(#[source] std::io::Error),
    #[error("not an HTTP answer: {0:?}")]
    NotHttp(String),
    #[error("/readyz answered {0}")]
    Status(u16),
    #[error("/readyz did not answer within {0:?}")]
    Timeout(Duration),
}

/// Where to ask, read from kube-apiserver.yaml.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiServerProbe {
    pub port: u16,
    pub ca_file: PathBuf,
}

impl ApiServerProbe {
    /// From the manifest's `--secure-port` (default 6443) and `--client-ca-file`.
    pub fn from_manifest(path: &Path) -> Option<ApiServerProbe> {
        let text = std::fs::read_to_string(path).ok()?;
        let flag = |name: &str| {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix("- "))
                .find_map(|a| a.strip_prefix(&format!("--{name}=")).map(str::to_string))
        };
        Some(ApiServerProbe {
            port: flag("secure-port")
                .and_then(|p| p.parse().ok())
                .unwrap_or(6443),
            ca_file: PathBuf::from(flag("client-ca-file")?),
        })
    }

    /// Polls `/readyz` until it answers 200 or `timeout` passes; the outcome in words.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ProbeError> {
        let config = Arc::new(self.tls_config()?);
        let deadline = Instant::now() + timeout;
        let patience = Duration::from_secs(5);
        let mut last;
        loop {
            match tokio::time::timeout(patience, self.readyz(config.clone())).await {
                Ok(Ok(200)) => return Ok(()),
                Ok(Ok(code)) => last = ProbeError::Status(code),
                Ok(Err(e)) => last = e,
                Err(_) => last = ProbeError::Timeout(patience),
            }
            if Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, ProbeError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let ca = |e: Box<dyn std::error::Error + Send + Sync>| ProbeError::Ca {
            path: self.ca_file.clone(),
            source: e,
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&self.ca_file).map_err(|e| ca(Box::new(e)))?;
        for cert in certs {
            let cert = cert.map_err(|e| ca(Box::new(e)))?;
            roots.add(cert).map_err(|e| ca(Box::new(e)))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    async fn readyz(&self, config: Arc<rustls::ClientConfig>) -> Result<u16, ProbeError> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|source| ProbeError::Connect {
                port: self.port,
                source,
            })?;
        let name = rustls::pki_types::ServerName::from(
            rustls::pki_types::DnsName::try_from("kubernetes").expect("`kubernetes` is a DNS name"),
        );
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(ProbeError::Handshake)?;
        tls.write_all(b"GET /readyz HTTP/1.1\r\nHost: kubernetes\r\nConnection: close\r\n\r\n")
            .await
            .map_err(ProbeError::Io)?;
        let mut head = vec![0u8; 64];
        let n = tls.read(&mut head).await.map_err(ProbeError::Io)?;
        let line = String::from_utf8_lossy(&head[..n]);
        line.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| ProbeError::NotHttp(line.into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeadm_manifest_names_port_and_ca() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kube-apiserver.yaml");
        std::fs::write(
            &path,
            "spec:\n  containers:\n  - command:\n    - kube-apiserver\n    - --client-ca-file=/etc/kubernetes/pki/ca.crt\n    - --secure-port=6443\n",
        )
        .unwrap();
        assert_eq!(
            ApiServerProbe::from_manifest(&path),
            Some(ApiServerProbe {
                port: 6443,
                ca_file: "/etc/kubernetes/pki/ca.crt".into()
            })
        );
        assert_eq!(
            ApiServerProbe::from_manifest(&dir.path().join("none")),
            None
        );
    }
}
