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
    check_plaintext(&endpoints, s)?;
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

/// An explicit `http://` endpoint: TLS files given for it are not used (warned), and a user's
/// password would cross the network in clear (refused, unless the endpoint is this machine's
/// loopback, where nothing leaves the host).
fn check_plaintext(endpoints: &[String], s: &EtcdSection) -> Result<(), ConfigError> {
    for e in endpoints.iter().filter(|e| e.starts_with("http://")) {
        if let Some(user) = &s.user {
            if !is_loopback(e) {
                return Err(invalid(
                    "etcd.endpoints",
                    format!("{e} is plain http: the password of user `{user}` would cross the network in clear; use https:// with --cacert (etcd with TLS)"),
                ));
            }
            tracing::warn!(endpoint = %e, user = %user, "the etcd password goes over plain http (loopback only)");
        }
        if s.cacert.is_some() || s.cert.is_some() || s.key.is_some() {
            tracing::warn!(endpoint = %e, "the endpoint is plain http: --cacert/--cert/--key are not used for it; use https:// to have TLS");
        }
    }
    Ok(())
}

fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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

    /// Regression: an explicit http:// endpoint with a user sent the password in clear with
    /// no word.
    #[test]
    fn a_password_over_plain_http_off_this_machine_is_refused() {
        let with = |endpoint: &str| EtcdSection {
            user: Some("root".into()),
            password: Some(Secret::new("pw")),
            endpoints: Some(vec![endpoint.into()]),
            manifest: Some(PathBuf::from("/nonexistent/etcd.yaml")),
            ..Default::default()
        };
        let err = resolve_etcd(&with("http://10.0.0.5:2379")).unwrap_err();
        assert!(err.to_string().contains("etcd.endpoints"), "{err}");
        assert!(err.to_string().contains("in clear"), "{err}");
        assert!(resolve_etcd(&with("http://127.0.0.1:2379")).is_ok());
        assert!(resolve_etcd(&with("http://[::1]:2379")).is_ok());
        assert!(resolve_etcd(&with("http://localhost:2379")).is_ok());
        assert!(resolve_etcd(&with("https://10.0.0.5:2379")).is_ok());
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
