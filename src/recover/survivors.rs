//! The survivors' data: this node's data dir and any others given, each read natively (our
//! bbolt walk: revision, compaction, consistent index) without starting etcd. A file that fails
//! the walk, or one a running etcd still holds, is refused and named — never used as a base.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where a survivor's data was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// This node's data dir, from its etcd.yaml.
    ThisNode,
    /// Given with `--member-data`.
    Given,
}

/// One survivor's bbolt file.
#[derive(Debug, Clone, Serialize)]
pub struct Survivor {
    /// What the user gave (or this node's data dir), as printed.
    pub label: String,
    /// The bbolt file itself.
    pub db: PathBuf,
    pub origin: Origin,
}

impl Survivor {
    /// A data dir, a `member` dir, a `snap` dir, or the db file itself.
    pub fn at(path: &Path, origin: Origin) -> Survivor {
        let db = if path.is_file() {
            path.to_path_buf()
        } else {
            [
                path.join("member/snap/db"),
                path.join("snap/db"),
                path.join("db"),
            ]
            .into_iter()
            .find(|p| p.is_file())
            .unwrap_or_else(|| path.join("member/snap/db"))
        };
        Survivor {
            label: path.display().to_string(),
            db,
            origin,
        }
    }
}

/// What the walk found in a usable survivor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SurvivorFacts {
    /// The revision a member started on this file reports.
    pub revision: i64,
    pub compact_revision: i64,
    pub consistent_index: Option<u64>,
    pub db_size: u64,
}

/// A survivor, examined.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Examined {
    Usable(SurvivorFacts),
    Refused { why: String },
}

impl Examined {
    pub fn usable(&self) -> Option<&SurvivorFacts> {
        match self {
            Examined::Usable(f) => Some(f),
            Examined::Refused { .. } => None,
        }
    }
}

/// What to do with a file a running etcd holds.
#[derive(Debug, Clone, Copy)]
pub enum WhenRunning<'a> {
    /// Refuse it, naming how to stop its etcd.
    Refuse,
    /// Copy it to this path first (`--force`) and read the copy: a running member still
    /// applies the committed entries of its own WAL (without quorum too), so its file may
    /// change between the walk and the restore that reads it again.
    CopyTo(&'a Path),
}

/// Reads `s` natively; a file a running etcd holds is refused or copied as `running` says (a
/// copied survivor's `db` is then the copy).
pub fn examine(mut s: Survivor, running: WhenRunning<'_>) -> (Survivor, Examined) {
    let refused = |why: String| Examined::Refused { why };
    if let Err(e) = std::fs::metadata(&s.db) {
        let why = format!("{}: {e} (nothing survived here)", s.db.display());
        return (s, refused(why));
    }
    if crate::restore::node::db_locked(&s.db) {
        match running {
            WhenRunning::Refuse => {
                let why = format!(
                    "{} is locked: its etcd still runs; stop it (its manifest out of the manifests folder), or pass --force to read a copy of it as it stands",
                    s.db.display()
                );
                return (s, refused(why));
            }
            WhenRunning::CopyTo(copy) => match copy_settled(&s.db, copy) {
                Ok(()) => s.db = copy.to_path_buf(),
                Err(why) => return (s, refused(why)),
            },
        }
    }
    let size = std::fs::metadata(&s.db).map_or(0, |m| m.len());
    let examined = match crate::verify::read_snapshot_info(&s.db) {
        Ok(info) => Examined::Usable(SurvivorFacts {
            revision: info.restored_revision,
            compact_revision: info.compact_revision,
            consistent_index: info.consistent_index,
            db_size: size,
        }),
        Err(e) => refused(format!("{} fails the bbolt walk: {e}", s.db.display())),
    };
    (s, examined)
}

/// Copies ending with a commit in between, at most.
const COPY_ATTEMPTS: u32 = 20;

/// Copies the bbolt file `src` that an etcd may be writing to. A commit writes its pages only
/// where the tree of the newest committed meta has none, then its meta page; the commit after
/// it can only start once that meta is written. So a copy whose meta is still the file's newest
/// once the copy is done holds a whole tree; otherwise it is taken again.
///
/// # Errors
/// The file cannot be read or copied, or it kept changing (the reason, for the plan).
pub fn copy_settled(src: &Path, dst: &Path) -> Result<(), String> {
    let txid = |p: &Path| {
        crate::bbolt::Db::open(p)
            .map(|db| db.meta().txid)
            .map_err(|e| format!("{} fails the bbolt walk: {e}", p.display()))
    };
    let part = dst.with_extension("db.part");
    for _ in 0..COPY_ATTEMPTS {
        copy_once(src, &part)
            .map_err(|e| format!("copying {} to {}: {e}", src.display(), part.display()))?;
        if txid(&part)? == txid(src)? {
            return crate::fsutil::durable_rename(&part, dst)
                .map_err(|e| format!("{}: {e}", dst.display()));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = std::fs::remove_file(&part);
    Err(format!(
        "{} kept changing while it was copied ({COPY_ATTEMPTS} tries): its etcd is still applying; stop it (its manifest out of the manifests folder) and run again",
        src.display()
    ))
}

fn copy_once(src: &Path, part: &Path) -> std::io::Result<()> {
    let mut from = std::fs::File::open(src)?;
    let mut to = crate::fsutil::create_private_file(part)?;
    std::io::copy(&mut from, &mut to)?;
    to.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_a_member_dir_or_the_file_itself_names_the_same_db() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("member/snap");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("db"), b"x").unwrap();
        let db = snap.join("db");
        for given in [
            dir.path().to_path_buf(),
            dir.path().join("member"),
            snap.clone(),
            db.clone(),
        ] {
            assert_eq!(
                Survivor::at(&given, Origin::Given).db,
                db,
                "{}",
                given.display()
            );
        }
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            Survivor::at(empty.path(), Origin::ThisNode).db,
            empty.path().join("member/snap/db")
        );
    }

    #[test]
    fn a_missing_or_damaged_file_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Survivor::at(dir.path(), Origin::Given);
        match examine(missing, WhenRunning::Refuse).1 {
            Examined::Refused { why } => assert!(why.contains("nothing survived"), "{why}"),
            other => panic!("{other:?}"),
        }
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![7u8; 8192]).unwrap();
        match examine(Survivor::at(&junk, Origin::Given), WhenRunning::Refuse).1 {
            Examined::Refused { why } => assert!(why.contains("fails the bbolt walk"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
