//! Throwaway certificates for the drill's sandbox etcd. It holds every Secret of the cluster
//! while it runs, on a loopback port anyone on the machine could reach: with these, etcd
//! serves only a client holding the drill's own certificate (client-cert auth, client and
//! peer), and the drill talks only to the etcd holding the sandbox's server certificate — a
//! process that grabbed the port first gets nothing and is not believed. The keys live in the
//! sandbox (0700, files 0600) and die with it.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};

/// Why the sandbox's certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating the sandbox's {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// PEM files in the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl SandboxPki {
    /// A CA, a server certificate for 127.0.0.1 (also used as the peer certificate) and a
    /// client certificate, written into `dir`.
    ///
    /// # Errors
    /// Key generation or writing the files failed.
    pub fn generate(dir: &Path) -> Result<SandboxPki, PkiError> {
        let e = |what: &'static str| move |source| PkiError::Generate { what, source };
        let ca_key = KeyPair::generate().map_err(e("CA key"))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e("CA"))?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "lifeboat-drill-ca");
        let ca = ca_params.self_signed(&ca_key).map_err(e("CA"))?;
        let leaf = |cn: &str, server: bool| -> Result<(String, String), PkiError> {
            let key = KeyPair::generate().map_err(e("key"))?;
            let mut p =
                CertificateParams::new(vec!["localhost".to_string()]).map_err(e("certificate"))?;
            p.subject_alt_names
                .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = if server {
                vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ]
            } else {
                vec![ExtendedKeyUsagePurpose::ClientAuth]
            };
            let cert = p.signed_by(&key, &ca, &ca_key).map_err(e("certificate"))?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_pem, server_key_pem) = leaf("lifeboat-drill-etcd", true)?;
        let (client_pem, client_key_pem) = leaf("lifeboat-drill", false)?;
        let write = |name: &str, body: &str| -> Result<PathBuf, PkiError> {
            let path = dir.join(name);
            match crate::fsutil::write_atomic(&path, body.as_bytes()) {
                Ok(()) => Ok(path),
                Err(source) => Err(PkiError::Write { path, source }),
            }
        };
        Ok(SandboxPki {
            ca: write("ca.crt", &ca.pem())?,
            server_cert: write("server.crt", &server_pem)?,
            server_key: write("server.key", &server_key_pem)?,
            client_cert: write("client.crt", &client_pem)?,
            client_key: write("client.key", &client_key_pem)?,
        })
    }
}
