//! A second copy (#28): what a store holds that is ours and committed — backups (object,
//! signature, manifest), the kits they name, the upgrade gate's marks, journal segments, chain
//! heads and shadow proofs — copied to another store, each object checked on the way: its
//! manifest's signature against the trusted keys, its bytes against the digest that manifest
//! records, as they stream. What fails a check is named and skipped, never propagated; the
//! manifest still goes last on the target, so a copy interrupted anywhere leaves nothing a
//! reader would take for a backup.
//!
//! - `object.rs`: one object, streamed from one store to the other through its digest check.
//! - `pass.rs`: one pass over the source: what the target lacks, in order (backups oldest
//!   first, each kit before the backup naming it, then each chain's segments by sequence, then
//!   heads and proofs); `Copier` keeps what a long-running copier remembers between passes.

mod object;
mod pass;

pub use pass::{Copier, CopyOptions};

use serde::Serialize;

use crate::store::StoreError;

/// What kind of thing a copied or refused object belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Backup,
    Kit,
    Mark,
    Segment,
    Head,
    Proof,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Backup => "backup",
            Kind::Kit => "kit",
            Kind::Mark => "mark",
            Kind::Segment => "segment",
            Kind::Head => "head",
            Kind::Proof => "proof",
        }
    }
}

/// One thing written to the target (or, in a dry run, that would be).
#[derive(Debug, Clone, Serialize)]
pub struct Copied {
    pub kind: Kind,
    /// The backup id, kit id, or the key of the segment's manifest, head or proof.
    pub name: String,
    /// Bytes written (every object of it).
    pub bytes: u64,
}

/// One thing not copied because it failed a check on the source.
#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    pub kind: Kind,
    pub key: String,
    pub why: String,
    /// False when this copier refused it in an earlier pass already (logged and counted once).
    #[serde(skip)]
    pub first_time: bool,
}

/// What one pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    pub from: String,
    pub to: String,
    pub dry_run: bool,
    pub copied: Vec<Copied>,
    /// Backups, segments and kits the target holds already.
    pub present: usize,
    pub refused: Vec<Refused>,
    /// Backups and segments the target's own retention would delete: not copied.
    pub left_to_retention: usize,
    /// Backups and segments older than `--since`.
    pub before_since: usize,
    pub bytes: u64,
}

impl CopyReport {
    fn copied(&mut self, kind: Kind, name: &str, bytes: u64) {
        self.bytes += bytes;
        self.copied.push(Copied {
            kind,
            name: name.to_string(),
            bytes,
        });
    }
}

/// Why a pass stopped: a store failed. What was copied before stays; the next pass (serve)
/// or a second run (`lifeboat copy`) skips it and carries on.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading the store copied from failed: {0}; nothing more was copied in this pass (the next one carries on)")]
    Source(#[source] StoreError),
    #[error("reading the backups of the store copied from failed: {0}; nothing more was copied in this pass (the next one carries on)")]
    Catalog(#[source] crate::catalog::CatalogError),
    #[error("writing the copy failed: {0}; what was copied before stays, the next pass carries on from there")]
    Target(#[source] StoreError),
    #[error("{} object(s) were not copied because they fail a check on the source: {}; everything else was copied. Find out why (`lifeboat snapshot verify`, `continuous status` on the source) — never copy them by hand", .0.len(), .0.join(", "))]
    Refused(Vec<String>),
}
