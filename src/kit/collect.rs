//! Which files a rebuilt control-plane node needs besides etcd: kubeadm's pki, kubeconfigs and
//! static pod manifests; every file a flag of the API server, controller manager or scheduler
//! names (taken from the manifests, not a list of known paths), found on the host through the
//! pod's hostPath mounts; the kubelet's config, kubeadm flags and client certificates.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{KitError, KitFile};

/// Where a control-plane node keeps its files.
#[derive(Debug, Clone)]
pub struct KitDirs {
    /// `/etc/kubernetes`.
    pub kubernetes_dir: PathBuf,
    /// `/var/lib/kubelet`.
    pub kubelet_dir: PathBuf,
}

/// The control-plane components whose flags name files.
const COMPONENTS: [&str; 3] = [
    "kube-apiserver.yaml",
    "kube-controller-manager.yaml",
    "kube-scheduler.yaml",
];

/// Flags that name what a component *writes* (logs, generated certificates): never inputs.
const OUTPUT_FLAGS: [&str; 4] = ["audit-log-path", "log-file", "log-dir", "cert-dir"];

/// A file larger than this is not configuration (a log a flag points at): left out, warned.
const LARGEST_FILE: u64 = 4 << 20;

/// Files under one folder a flag names, at most (a flag pointing at `/etc` must not pack it).
const MOST_FILES_PER_FOLDER: usize = 256;

#[derive(Deserialize)]
struct Pod {
    spec: PodSpec,
}

#[derive(Deserialize)]
struct PodSpec {
    #[serde(default)]
    containers: Vec<Container>,
    #[serde(default)]
    volumes: Vec<Volume>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    volume_mounts: Vec<VolumeMount>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeMount {
    name: String,
    mount_path: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Volume {
    name: String,
    host_path: Option<HostPath>,
}

#[derive(Deserialize)]
struct HostPath {
    path: String,
}

/// Every file the kit holds, as absolute host paths, sorted.
///
/// # Errors
/// A control-plane manifest that cannot be read or parsed; a folder that cannot be listed.
pub fn collect(dirs: &KitDirs) -> Result<Vec<PathBuf>, KitError> {
    let mut out = BTreeSet::new();
    let k = &dirs.kubernetes_dir;
    files_under(&k.join("pki"), usize::MAX, &mut out)?;
    for entry in list(k)? {
        if entry.extension().is_some_and(|e| e == "conf") && entry.is_file() {
            out.insert(entry);
        }
    }
    let own_cluster_configuration = k.join(super::CLUSTER_CONFIGURATION_FILE);
    if own_cluster_configuration.is_file() {
        out.insert(own_cluster_configuration);
    }
    for entry in list(&k.join("manifests"))? {
        if entry.extension().is_some_and(|e| e == "yaml") && entry.is_file() {
            out.insert(entry);
        }
    }
    for component in COMPONENTS {
        let manifest = k.join("manifests").join(component);
        if manifest.is_file() {
            for path in named_by_flags(&manifest)? {
                if path.is_dir() {
                    files_under(&path, MOST_FILES_PER_FOLDER, &mut out)?;
                } else if path.is_file() {
                    out.insert(path);
                }
            }
        }
    }
    for name in ["config.yaml", "kubeadm-flags.env"] {
        let path = dirs.kubelet_dir.join(name);
        if path.is_file() {
            out.insert(path);
        }
    }
    files_under(&dirs.kubelet_dir.join("pki"), usize::MAX, &mut out)?;
    Ok(out
        .into_iter()
        .filter(|p| match std::fs::metadata(p) {
            Ok(m) if m.len() > LARGEST_FILE => {
                tracing::warn!(path = %p.display(), size = m.len(), "left out of the kit: larger than a configuration file");
                false
            }
            Ok(_) => true,
            Err(_) => false,
        })
        .collect())
}

/// Reads `paths` with their mode, owner and sha256.
///
/// # Errors
/// A file that cannot be read.
pub fn read_files(paths: &[PathBuf]) -> Result<Vec<(KitFile, Vec<u8>)>, KitError> {
    paths
        .iter()
        .map(|p| {
            let err = |source| KitError::Read {
                path: p.clone(),
                source,
            };
            let mut file = std::fs::File::open(p).map_err(err)?;
            let meta = file.metadata().map_err(err)?;
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            file.read_to_end(&mut bytes).map_err(err)?;
            Ok((
                KitFile {
                    path: p.display().to_string(),
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    size: bytes.len() as u64,
                    sha256: hex::encode(Sha256::digest(&bytes)),
                },
                bytes,
            ))
        })
        .collect()
}

/// The host paths of the absolute paths a manifest's flags give (outputs left out).
fn named_by_flags(manifest: &Path) -> Result<Vec<PathBuf>, KitError> {
    let text = std::fs::read_to_string(manifest).map_err(|source| KitError::Read {
        path: manifest.to_path_buf(),
        source,
    })?;
    let pod: Pod = serde_norway::from_str(&text).map_err(|e| KitError::Manifest {
        path: manifest.to_path_buf(),
        why: e.to_string(),
    })?;
    let hosts: BTreeMap<&str, &str> = pod
        .spec
        .volumes
        .iter()
        .filter_map(|v| Some((v.name.as_str(), v.host_path.as_ref()?.path.as_str())))
        .collect();
    let mut out = Vec::new();
    for c in &pod.spec.containers {
        // Mount path → host path, longest first: the most specific mount wins.
        let mut mounts: Vec<(&str, &str)> = c
            .volume_mounts
            .iter()
            .filter_map(|m| Some((m.mount_path.as_str(), *hosts.get(m.name.as_str())?)))
            .collect();
        mounts.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
        for (flag, value) in flags(c.command.iter().chain(&c.args)) {
            if OUTPUT_FLAGS.contains(&flag.as_str()) {
                continue;
            }
            for path in paths_in(&value) {
                match on_host(&path, &mounts) {
                    Some(host) => out.push(host),
                    None => {
                        tracing::debug!(flag, path = %path.display(), "not mounted from the host: not in the kit")
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `--name=value` and `--name value` pairs.
fn flags<'a>(args: impl Iterator<Item = &'a String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            continue;
        };
        match flag.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), v.to_string())),
            None => {
                if let Some(v) = args.next_if(|next| !next.starts_with("--")) {
                    out.push((flag.to_string(), v.clone()));
                }
            }
        }
    }
    out
}

/// The absolute paths in a flag's value: comma-separated lists, and `path:sni` pairs
/// (`--tls-sni-cert-key`).
fn paths_in(value: &str) -> Vec<PathBuf> {
    value
        .split(',')
        .filter(|t| t.starts_with('/'))
        .map(|t| PathBuf::from(t.split(':').next().unwrap_or(t)))
        .filter(|p| p.components().all(|c| !matches!(c, Component::ParentDir)))
        .collect()
}

/// Where the container's `path` is on the host: through the mount that holds it.
fn on_host(path: &Path, mounts: &[(&str, &str)]) -> Option<PathBuf> {
    mounts.iter().find_map(|(mount, host)| {
        let rest = path.strip_prefix(mount).ok()?;
        Some(if rest.as_os_str().is_empty() {
            PathBuf::from(host)
        } else {
            Path::new(host).join(rest)
        })
    })
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, KitError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.flatten().map(|e| e.path()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(KitError::Read {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Regular files under `dir` (following symlinks to files, as kubelet's `-current.pem` are),
/// at most `most`.
fn files_under(dir: &Path, most: usize, out: &mut BTreeSet<PathBuf>) -> Result<(), KitError> {
    let mut stack = vec![dir.to_path_buf()];
    let mut taken = 0;
    while let Some(d) = stack.pop() {
        let mut entries = list(&d)?;
        entries.sort();
        for e in entries {
            let Ok(kind) = std::fs::symlink_metadata(&e).map(|m| m.file_type()) else {
                continue;
            };
            if kind.is_dir() {
                stack.push(e);
            } else if e.is_file() {
                if taken >= most {
                    tracing::warn!(dir = %dir.display(), most, "more files than a configuration folder holds: the rest left out of the kit");
                    return Ok(());
                }
                taken += 1;
                out.insert(e);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_give_absolute_paths_only() {
        assert_eq!(paths_in("https://10.0.0.1:6443"), Vec::<PathBuf>::new());
        assert_eq!(
            paths_in("/a/cert.pem,/a/key.pem:*.example.com"),
            vec![PathBuf::from("/a/cert.pem"), PathBuf::from("/a/key.pem")]
        );
        assert_eq!(paths_in("/etc/../root/x"), Vec::<PathBuf>::new());
        let args: Vec<String> = ["kube-apiserver", "--a=/x", "--b", "/y", "--c", "--d=v"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            flags(args.iter()),
            vec![
                ("a".into(), "/x".into()),
                ("b".into(), "/y".into()),
                ("d".into(), "v".into())
            ]
        );
    }

    #[test]
    fn a_container_path_is_found_on_the_host_through_its_mount() {
        let mounts = [
            ("/etc/kubernetes/enc", "/srv/enc"),
            ("/etc/kubernetes", "/etc/kubernetes"),
        ];
        assert_eq!(
            on_host(Path::new("/etc/kubernetes/enc/config.yaml"), &mounts),
            Some(PathBuf::from("/srv/enc/config.yaml"))
        );
        assert_eq!(
            on_host(Path::new("/etc/kubernetes/audit.yaml"), &mounts),
            Some(PathBuf::from("/etc/kubernetes/audit.yaml"))
        );
        assert_eq!(on_host(Path::new("/opt/x"), &mounts), None);
    }
}
