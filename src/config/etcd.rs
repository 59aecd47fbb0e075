//! `[etcd]`: how to reach the one member a snapshot comes from; flags on every command that
//! talks to etcd (`snapshot save`, `serve`, `upgrade`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, invalid, section, ConfigError};
use crate::etcd::discovery::{self, KubeadmEtcd};
use crate::etcd::EtcdSettings;
use crate::secret::Secret;

pub const DEFAULT_ETCD_MANIFEST: &str = "/etc/kubernetes/manifests/etcd.yaml";

section! {
    #[derive(clap::Args, Debug, Default, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct EtcdSection {
        /// etcd client URLs, comma-separated; the first that answers is used (one member only).
        #[arg(long, env = "LIFEBOAT_ENDPOINTS", value_delimiter = ',', value_name = "URLS")]
        pub endpoints: Option<Vec<String>>,
        /// CA bundle that signed etcd's server certificate.
        #[arg(long, env = "LIFEBOAT_CACERT", value_name = "FILE")]
        pub cacert: Option<PathBuf>,
        /// Client certificate (PEM).
        #[arg(long, env = "LIFEBOAT_CERT", value_name = "FILE")]
        pub cert: Option<PathBuf>,
        /// Client key (PEM).
        #[arg(long, env = "LIFEBOAT_KEY", value_name = "FILE")]
        pub key: Option<PathBuf>,
        /// etcd user (when etcd auth is on).
        #[arg(long, env = "LIFEBOAT_USER")]
        pub user: Option<String>,
        /// etcd password (prefer LIFEBOAT_PASSWORD or etcd.password_file: flags show in `ps`).
        #[arg(long, env = "LIFEBOAT_PASSWORD", hide_env_values = true)]
        #[serde(skip)]
        pub password: Option<Secret>,
        #[arg(skip)]
        pub password_file: Option<PathBuf>,
        /// kubeadm's etcd static pod manifest, read for endpoint, certificates and member name
        /// when no endpoint is given.
        #[arg(long = "etcd-manifest", env = "LIFEBOAT_ETCD_MANIFEST", value_name = "FILE")]
        pub manifest: Option<PathBuf>,
        /// Connect timeout, e.g. 5s.
        #[arg(long, env = "LIFEBOAT_CONNECT_TIMEOUT", value_name = "DURATION")]
        pub connect_timeout: Option<String>,
        /// Timeout of unary calls (status, HashKV), e.g. 60s.
        #[arg(long, env = "LIFEBOAT_REQUEST_TIMEOUT", value_name = "DURATION")]
        pub request_timeout: Option<String>,
        #[arg(skip)]
        pub stall_timeout: Option<String>,
    }
}

/// The etcd connection after merging, with kubeadm discovery.
#[derive(Debug, Clone)]
pub struct ResolvedEtcd {
    pub settings: EtcdSettings,
    /// Present on a kubeadm node: the manifest it was read from and what it said.
    pub kubeadm: Option<KubeadmEtcd>,
}

/// Resolves the connection and reads the kubeadm manifest when no endpoint was given:
/// discovery fills only what flags, env and file left open.
///
/// # Errors
/// Bad durations, an unreadable manifest or password file, `user` without password.
pub fn resolve_etcd(s: &EtcdSection) -> Result<ResolvedEtcd, ConfigError> {
    let manifest_path = s
        .manifest
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ETCD_MANIFEST));
    let kubeadm = discovery::discover(&manifest_path)?;
    let mut endpoints = s.endpoints.clone().unwrap_or_default();
    let explicit = !endpoints.is_empty();
    if !explicit {
        if let Some(k) = &kubeadm {
            endpoints = k.endpoints.iter().take(1).cloned().collect();
        }
    }
    let wants_tls_defaults = !explicit || endpoints.iter().any(|e| e.starts_with("https://"));
    let from_kubeadm = |f: fn(&KubeadmEtcd) -> Option<PathBuf>| {
        kubeadm.as_ref().filter(|_| wants_tls_defaults).and_then(f)
    };
    let password = match (&s.password, &s.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(path)) => Some(Secret::new(
            std::fs::read_to_string(path)
                .map_err(|e| invalid("etcd.password_file", format!("{}: {e}", path.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        )),
        (None, None) => None,
    };
    if s.user.is_some() && password.is_none() {
        return Err(invalid(
            "etcd.user",
            "a user needs a password: --password, LIFEBOAT_PASSWORD or etcd.password_file",
        ));
    }
    let settings = EtcdSettings {
        endpoints,
        cacert: s
            .cacert
            .clone()
            .or_else(|| from_kubeadm(|k| k.cacert.clone())),
        cert: s.cert.clone().or_else(|| from_kubeadm(|k| k.cert.clone())),
        key: s.key.clone().or_else(|| from_kubeadm(|k| k.key.clone())),
        user: s.user.clone(),
        password,
        connect_timeout: duration(
            "etcd.connect_timeout",
            s.connect_timeout.as_ref(),
            Duration::from_secs(5),
        )?,
        request_timeout: duration(
            "etcd.request_timeout",
            s.request_timeout.as_ref(),
            Duration::from_secs(60),
        )?,
        stall_timeout: duration(
            "etcd.stall_timeout",
            s.stall_timeout.as_ref(),
            Duration::from_secs(60),
        )?,
    };
    Ok(ResolvedEtcd { settings, kubeadm })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_durations_name_their_key() {
        let s = EtcdSection {
            connect_timeout: Some("soon".into()),
            manifest: Some(PathBuf::from("/nonexistent/etcd.yaml")),
            ..Default::default()
        };
        let err = resolve_etcd(&s).unwrap_err();
        assert!(err.to_string().contains("etcd.connect_timeout"), "{err}");
    }

    #[test]
    fn a_user_without_a_password_is_refused() {
        let s = EtcdSection {
            user: Some("root".into()),
            endpoints: Some(vec!["http://127.0.0.1:2379".into()]),
            manifest: Some(PathBuf::from("/nonexistent/etcd.yaml")),
            ..Default::default()
        };
        assert!(resolve_etcd(&s)
            .unwrap_err()
            .to_string()
            .contains("etcd.user"));
    }
}
