//! Putting a kit's files back on a node (`lifeboat rebuild`): each file where it was, with its
//! mode and owner, written as `.part`, fsynced, renamed, its folder fsynced. A file already
//! there with the same content, mode and owner is left as it is; any other file there is
//! refused unless forced, and then moved aside under a hidden name beside it (a kubelet
//! ignores hidden files in its manifests folder) — never deleted.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{KitError, KitFile};

/// What installing one file does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum Action {
    /// Nothing is there: written.
    Write,
    /// The same content, mode and owner are there: left.
    Same,
    /// Something else is there: moved to `aside`, then written.
    MoveAside { aside: PathBuf },
}

/// One file of the plan: where it goes and what happens there.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub file: KitFile,
    /// Where it belongs (the kit's path, or moved with the node's folders).
    pub to: PathBuf,
    /// Written here instead, for another step to put in place: a static pod manifest held from
    /// the kubelet until the restore (`hold_manifests`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<PathBuf>,
    #[serde(flatten)]
    pub action: Action,
}

/// Holds every manifest the steps write into `manifests_dir` in `held` instead, so that the
/// kubelet starts none before the restore puts them in place; true when any is held.
pub fn hold_manifests(steps: &mut [Step], manifests_dir: &Path, held: &Path) -> bool {
    let mut any = false;
    for s in steps.iter_mut() {
        let in_kubelet_dir = s.to.parent() == Some(manifests_dir);
        if in_kubelet_dir && s.action != Action::Same {
            s.held = s.to.file_name().map(|n| held.join(n));
            any |= s.held.is_some();
        }
    }
    any
}

/// Where each file of the kit goes: files under the folders the kit was taken from go under
/// this node's (`from` → `to` pairs); every other file back at its absolute path.
pub fn destination(path: &str, moves: &[(PathBuf, PathBuf)]) -> PathBuf {
    let path = Path::new(path);
    moves
        .iter()
        .find_map(|(from, to)| Some(to.join(path.strip_prefix(from).ok()?)))
        .unwrap_or_else(|| path.to_path_buf())
}

/// Plans the install: refuses (listing them) files that are there and differ, unless
/// `force`, when they are moved aside with `stamp` in their new name.
///
/// # Errors
/// `Occupied` naming every such file; a file that cannot be read to compare.
pub fn plan(
    files: &[(KitFile, Vec<u8>)],
    moves: &[(PathBuf, PathBuf)],
    force: bool,
    stamp: &str,
) -> Result<Vec<Step>, KitError> {
    let mut steps = Vec::with_capacity(files.len());
    let mut occupied = Vec::new();
    for (file, _) in files {
        let to = destination(&file.path, moves);
        let action = match std::fs::symlink_metadata(&to) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Action::Write,
            Err(source) => return Err(KitError::Read { path: to, source }),
            Ok(meta) if same(&to, &meta, file)? => Action::Same,
            Ok(_) => {
                occupied.push(to.clone());
                Action::MoveAside {
                    aside: aside_name(&to, stamp),
                }
            }
        };
        steps.push(Step {
            file: file.clone(),
            to,
            held: None,
            action,
        });
    }
    if !occupied.is_empty() && !force {
        return Err(KitError::Occupied(occupied));
    }
    Ok(steps)
}

/// `dir/.name.before-rebuild-<stamp>`.
fn aside_name(path: &Path, stamp: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::fsutil::parent_of(path).join(format!(".{name}.before-rebuild-{stamp}"))
}

fn same(path: &Path, meta: &std::fs::Metadata, want: &KitFile) -> Result<bool, KitError> {
    if !meta.file_type().is_file()
        || meta.mode() & 0o7777 != want.mode
        || meta.uid() != want.uid
        || meta.gid() != want.gid
        || meta.len() != want.size
    {
        return Ok(false);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| KitError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(hex::encode(Sha256::digest(&bytes)) == want.sha256)
}

/// Carries out `steps` with the kit's contents (in the kit's order, as `plan` was given).
///
/// # Errors
/// A folder, file, mode or owner that cannot be set; what was done before stays done (the
/// plan can be carried out again: what is in place is `Same`).
pub fn install(steps: &[Step], files: &[(KitFile, Vec<u8>)]) -> Result<(), KitError> {
    for (step, (_, bytes)) in steps.iter().zip(files) {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KitError::Write { path, source }
        };
        match &step.action {
            Action::Same => continue,
            Action::MoveAside { aside } => {
                crate::fsutil::durable_rename(&step.to, aside).map_err(err(&step.to))?;
                tracing::warn!(path = %step.to.display(), aside = %aside.display(), "moved aside");
            }
            Action::Write => {}
        }
        let at = step.held.as_ref().unwrap_or(&step.to);
        let dir = crate::fsutil::parent_of(at);
        crate::fsutil::create_private_dir(&dir).map_err(err(&dir))?;
        write_file(at, &step.file, bytes).map_err(err(at))?;
    }
    Ok(())
}

/// `.part` (0600 while written), content, mode, owner, fsync, rename, folder fsync.
fn write_file(path: &Path, file: &KitFile, bytes: &[u8]) -> std::io::Result<()> {
    let mut part = path.as_os_str().to_os_string();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut f = crate::fsutil::create_private_file(&part)?;
    f.write_all(bytes)?;
    if f.metadata()?.uid() != file.uid || f.metadata()?.gid() != file.gid {
        std::os::unix::fs::fchown(&f, Some(file.uid), Some(file.gid))?;
    }
    f.set_permissions(std::fs::Permissions::from_mode(file.mode))?;
    f.sync_all()?;
    drop(f);
    crate::fsutil::durable_rename(&part, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &Path, bytes: &[u8], mode: u32) -> (KitFile, Vec<u8>) {
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        (
            KitFile {
                path: path.display().to_string(),
                mode,
                uid,
                gid,
                size: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(bytes)),
            },
            bytes.to_vec(),
        )
    }

    #[test]
    fn a_second_install_finds_everything_in_place_and_a_changed_file_is_moved_aside_only_when_forced(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old/etc/kubernetes");
        let new = dir.path().join("new/etc/kubernetes");
        let elsewhere = dir.path().join("srv/enc.yaml");
        let files = vec![
            file(&old.join("pki/ca.key"), b"key", 0o600),
            file(&old.join("manifests/etcd.yaml"), b"pod", 0o644),
            file(&elsewhere, b"enc", 0o400),
        ];
        let moves = vec![(old.clone(), new.clone())];
        let steps = plan(&files, &moves, false, "s1").unwrap();
        assert!(steps.iter().all(|s| s.action == Action::Write));
        assert_eq!(steps[0].to, new.join("pki/ca.key"));
        assert_eq!(
            steps[2].to, elsewhere,
            "a flag's file goes back where it was"
        );
        install(&steps, &files).unwrap();
        let mode = std::fs::metadata(&elsewhere).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o400);

        let again = plan(&files, &moves, false, "s2").unwrap();
        assert!(again.iter().all(|s| s.action == Action::Same), "{again:?}");

        std::fs::write(new.join("manifests/etcd.yaml"), b"other").unwrap();
        match plan(&files, &moves, false, "s3") {
            Err(KitError::Occupied(paths)) => {
                assert_eq!(paths, vec![new.join("manifests/etcd.yaml")])
            }
            other => panic!("{other:?}"),
        }
        let forced = plan(&files, &moves, true, "s4").unwrap();
        let aside = new.join("manifests/.etcd.yaml.before-rebuild-s4");
        assert_eq!(
            forced[1].action,
            Action::MoveAside {
                aside: aside.clone()
            }
        );
        install(&forced, &files).unwrap();
        assert_eq!(std::fs::read(&aside).unwrap(), b"other");
        assert_eq!(
            std::fs::read(new.join("manifests/etcd.yaml")).unwrap(),
            b"pod"
        );
    }

    #[test]
    fn manifests_written_into_the_kubelets_folder_are_held_until_the_restore() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("etc/kubernetes");
        let files = vec![
            file(&k.join("manifests/etcd.yaml"), b"pod", 0o600),
            file(&k.join("pki/ca.crt"), b"ca", 0o644),
        ];
        let mut steps = plan(&files, &[], false, "s").unwrap();
        let held = k.join("manifests.held");
        assert!(hold_manifests(&mut steps, &k.join("manifests"), &held));
        assert_eq!(steps[0].held, Some(held.join("etcd.yaml")));
        assert_eq!(steps[1].held, None);
        install(&steps, &files).unwrap();
        assert!(
            !k.join("manifests/etcd.yaml").exists(),
            "the kubelet would run it"
        );
        assert_eq!(std::fs::read(held.join("etcd.yaml")).unwrap(), b"pod");
        assert_eq!(std::fs::read(k.join("pki/ca.crt")).unwrap(), b"ca");
    }
}
