//! Per-run certificates: a CA, an etcd server certificate for 127.0.0.1, and a client
//! certificate (like kubeadm's healthcheck-client), written as PEM files.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};

#[derive(Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    _dir: Arc<tempfile::TempDir>,
}

impl Pki {
    /// Writes the files into `dir_name` under a fresh temp dir; with the kubeadm names
    /// (`ca.crt`, `server.crt`, `healthcheck-client.crt`, …).
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "etcd-ca");
        let ca = ca_params.self_signed(&ca_key).unwrap();

        let leaf = |cn: &str, server: bool| {
            let key = KeyPair::generate().unwrap();
            let mut p =
                CertificateParams::new(vec!["localhost".to_string(), "kubernetes".to_string()])
                    .unwrap();
            p.subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = if server {
                vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ]
            } else {
                vec![ExtendedKeyUsagePurpose::ClientAuth]
            };
            let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key_pem) = leaf("etcd-server", true);
        let (client_pem, client_key_pem) = leaf("kube-etcd-healthcheck-client", false);
        let write = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            p
        };
        Pki {
            ca_cert: write("ca.crt", &ca.pem()),
            server_cert: write("server.crt", &server_pem),
            server_key: write("server.key", &server_key_pem),
            client_cert: write("healthcheck-client.crt", &client_pem),
            client_key: write("healthcheck-client.key", &client_key_pem),
            _dir: Arc::new(dir),
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.ca_cert.parent().unwrap().to_path_buf()
    }
}
