//! Zero-config on a kubeadm node: read the etcd static pod manifest.
//!
//! The manifest's command line gives the client URLs, the CA, the data dir and the member
//! name; the client certificate for tools is `healthcheck-client.crt/.key` next to the CA.
//! `--initial-cluster` is deliberately ignored: it is stale on members that joined later (ask
//! etcd's member list instead).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What a kubeadm etcd manifest tells about the local member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeadmEtcd {
    pub manifest: PathBuf,
    /// Client URLs, loopback first.
    pub endpoints: Vec<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub name: Option<String>,
    pub initial_advertise_peer_urls: Option<String>,
    /// The whole command line, flag name → value, for restore.
    pub flags: BTreeMap<String, String>,
    pub image: Option<String>,
}

/// etcd's default `--quota-backend-bytes`.
pub const DEFAULT_QUOTA: u64 = 2 << 30;

impl KubeadmEtcd {
    /// The member's `--quota-backend-bytes`, else etcd's default (0 in the flag means it too).
    pub fn quota(&self) -> u64 {
        self.flags
            .get("quota-backend-bytes")
            .and_then(|q| q.parse::<u64>().ok())
            .filter(|q| *q > 0)
            .unwrap_or(DEFAULT_QUOTA)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read the etcd manifest {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a static pod manifest kubeadm would write: {reason}; pass --endpoints and the TLS flags instead, or fix --etcd-manifest")]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Deserialize)]
struct Pod {
    metadata: Option<PodMeta>,
    spec: PodSpec,
}

#[derive(Deserialize)]
struct PodMeta {
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct PodSpec {
    containers: Vec<Container>,
}

#[derive(Deserialize)]
struct Container {
    name: Option<String>,
    image: Option<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
}

const ADVERTISE_ANNOTATION: &str = "kubeadm.kubernetes.io/etcd.advertise-client-urls";

/// Reads `path` when it exists: `Ok(None)` when there is no manifest (not a kubeadm node).
///
/// # Errors
/// The file exists but cannot be read or parsed.
pub fn discover(path: &Path) -> Result<Option<KubeadmEtcd>, DiscoveryError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_manifest(path, &text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DiscoveryError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses the text of an etcd static pod manifest.
///
/// # Errors
/// `Invalid` naming what is missing.
pub fn parse_manifest(path: &Path, text: &str) -> Result<KubeadmEtcd, DiscoveryError> {
    let invalid = |reason: String| DiscoveryError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let pod: Pod = serde_norway::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let container = pod
        .spec
        .containers
        .iter()
        .find(|c| c.name.as_deref() == Some("etcd"))
        .or_else(|| pod.spec.containers.first())
        .ok_or_else(|| invalid("no container".into()))?;
    let flags = parse_flags(container.command.iter().chain(&container.args));
    let mut endpoints = split_urls(flags.get("listen-client-urls"));
    endpoints.sort_by_key(|u| !is_loopback_url(u));
    let annotated = pod
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.get(ADVERTISE_ANNOTATION).cloned());
    for url in split_urls(flags.get("advertise-client-urls").or(annotated.as_ref())) {
        if !endpoints.contains(&url) {
            endpoints.push(url);
        }
    }
    // etcd listening on 0.0.0.0 is reached on loopback.
    for url in &mut endpoints {
        *url = url.replace("://0.0.0.0:", "://127.0.0.1:");
    }
    if endpoints.is_empty() {
        return Err(invalid(
            "no --listen-client-urls or --advertise-client-urls".into(),
        ));
    }
    let cacert = flags.get("trusted-ca-file").map(PathBuf::from);
    let certs_dir = cacert
        .as_ref()
        .and_then(|c| c.parent().map(Path::to_path_buf));
    Ok(KubeadmEtcd {
        manifest: path.to_path_buf(),
        endpoints,
        cert: certs_dir.as_ref().map(|d| d.join("healthcheck-client.crt")),
        key: certs_dir.as_ref().map(|d| d.join("healthcheck-client.key")),
        cacert,
        data_dir: flags
            .get("data-dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/etcd")),
        name: flags.get("name").cloned(),
        initial_advertise_peer_urls: flags.get("initial-advertise-peer-urls").cloned(),
        image: container.image.clone(),
        flags,
    })
}

fn parse_flags<'a>(args: impl Iterator<Item = &'a String>) -> BTreeMap<String, String> {
    let mut flags = BTreeMap::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            continue;
        };
        match flag.split_once('=') {
            Some((k, v)) => {
                flags.insert(k.to_string(), v.to_string());
            }
            None => {
                let value = match args.peek() {
                    Some(next) if !next.starts_with("--") => args.next().cloned(),
                    _ => None,
                };
                flags.insert(flag.to_string(), value.unwrap_or_else(|| "true".into()));
            }
        }
    }
    flags
}

fn split_urls(value: Option<&String>) -> Vec<String> {
    value
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn is_loopback_url(url: &str) -> bool {
    let host = url.split("://").nth(1).unwrap_or(url);
    host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/kubeadm-etcd.yaml");

    #[test]
    fn the_kubeadm_fixture_yields_loopback_endpoint_certs_data_dir_and_name() {
        let found = parse_manifest(Path::new("etcd.yaml"), FIXTURE).unwrap();
        assert_eq!(
            found.endpoints,
            vec!["https://127.0.0.1:2379", "https://10.0.0.11:2379"]
        );
        assert_eq!(
            found.cacert.as_deref(),
            Some(Path::new("/etc/kubernetes/pki/etcd/ca.crt"))
        );
        assert_eq!(
            found.cert.as_deref(),
            Some(Path::new("/etc/kubernetes/pki/etcd/healthcheck-client.crt"))
        );
        assert_eq!(
            found.key.as_deref(),
            Some(Path::new("/etc/kubernetes/pki/etcd/healthcheck-client.key"))
        );
        assert_eq!(found.data_dir, PathBuf::from("/var/lib/etcd"));
        assert_eq!(found.name.as_deref(), Some("cp1"));
        assert_eq!(
            found.flags.get("snapshot-count").map(String::as_str),
            Some("10000")
        );
    }

    #[test]
    fn a_manifest_without_client_urls_is_refused_with_its_path() {
        let text = "spec:\n  containers:\n  - name: etcd\n    command: [etcd, --name=x]\n";
        let err = parse_manifest(Path::new("/m/etcd.yaml"), text).unwrap_err();
        assert!(err.to_string().contains("/m/etcd.yaml"), "{err}");
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        assert!(parse_manifest(Path::new("x"), "::: not yaml [").is_err());
        assert!(parse_manifest(Path::new("x"), "").is_err());
    }

    #[test]
    fn space_separated_flags_and_wildcard_listen_are_understood() {
        let text = "spec:\n  containers:\n  - name: etcd\n    command: [etcd, --listen-client-urls, 'http://0.0.0.0:2379']\n";
        let found = parse_manifest(Path::new("x"), text).unwrap();
        assert_eq!(found.endpoints, vec!["http://127.0.0.1:2379"]);
    }
}
