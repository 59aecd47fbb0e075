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

/// Reads `s` natively. With `force`, a file a running etcd holds is read as it stands (a member
/// without quorum applies nothing, so its file does not change).
pub fn examine(s: &Survivor, force: bool) -> Examined {
    let refused = |why: String| Examined::Refused { why };
    let size = match std::fs::metadata(&s.db) {
        Ok(m) => m.len(),
        Err(e) => return refused(format!("{}: {e} (nothing survived here)", s.db.display())),
    };
    if crate::restore::node::db_locked(&s.db) && !force {
        return refused(format!(
            "{} is locked: its etcd still runs; stop it (its manifest out of the manifests folder), or pass --force to read it as it stands",
            s.db.display()
        ));
    }
    match crate::verify::read_snapshot_info(&s.db) {
        Ok(info) => Examined::Usable(SurvivorFacts {
            revision: info.restored_revision,
            compact_revision: info.compact_revision,
            consistent_index: info.consistent_index,
            db_size: size,
        }),
        Err(e) => refused(format!("{} fails the bbolt walk: {e}", s.db.display())),
    }
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
        match examine(&missing, false) {
            Examined::Refused { why } => assert!(why.contains("nothing survived"), "{why}"),
            other => panic!("{other:?}"),
        }
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![7u8; 8192]).unwrap();
        match examine(&Survivor::at(&junk, Origin::Given), false) {
            Examined::Refused { why } => assert!(why.contains("fails the bbolt walk"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
