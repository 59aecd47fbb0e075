//! Continuous backup: every revision off the node within seconds, as a hash-chained, signed
//! journal of segments that starts at a full backup (docs/continuous.md).
//!
//! - `segment.rs`: the format of a segment's body and of its signed manifest, and the keys.
//! - `journal.rs`: `Journal`, the one reader of the journal: chains, trust, links, coverage,
//!   `resolve_time`, the newest chain; `status.rs` and `confirm.rs` add to it.
//! - `chain.rs`: committing a segment; listing chains by name; reading a manifest and a body
//!   back, and checking one link.
//! - `confirm.rs`: a shadow's base is used only where a writer-signed checkpoint confirms it.
//! - `clock.rs`: journal times that never go backwards in a chain, nor beyond the allowed skew.
//! - `capture.rs`: the watch → segments → store loop that `serve` runs on the uploader;
//!   `builder.rs` the segment being filled and its sealing rules.
//! - `head.rs`: the signed "caught up to R at T" an idle journal keeps current.
//! - `proven.rs`: the signed "replaying this chain reproduces the cluster up to R" a shadow keeps.
//! - `status.rs`: what a store holds: chains, their revisions and times, the gaps between.

mod builder;
pub mod capture;
pub mod chain;
pub mod clock;
pub mod confirm;
pub mod head;
pub mod journal;
pub mod proven;
pub mod prune;
pub mod segment;
mod signed;
pub mod status;

pub use capture::{capture, CaptureObserver, CaptureSettings, CheckpointPace, Resume};
pub use chain::{check_link, read_records, ChainListing, RawSegment, Sealed, SegmentWriter};
pub use journal::{ChainEnds, Checkpoint, Coverage, Journal, NewestChain, Reach, RestorableChain};
pub use segment::{Record, SegmentKey, SegmentManifest};

use crate::catalog::CatalogError;
use crate::etcd::SourceError;
use crate::store::StoreError;
use crate::trust::TrustError;

#[derive(Debug, thiserror::Error)]
pub enum ContinuousError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("encoding segment {key}: {source}")]
    Encode {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("segment {key}: {what}; it is not used")]
    Invalid { key: String, what: String },
    #[error("chain {chain}, segment {seq}: {what}; the chain cannot be used past this point")]
    BrokenChain {
        chain: String,
        seq: u64,
        what: String,
    },
    #[error("segment object {key} is encrypted: pass the age identity (--identity)")]
    NeedIdentity { key: String },
    #[error("the watch skipped from revision {expected} to {got}: a revision is missing; the chain stops here")]
    Hole { expected: i64, got: i64 },
    #[error("the watch ended: etcd closed the stream")]
    WatchEnded,
    #[error("the segment uploader stopped")]
    UploaderStopped,
    #[error("capture stopped: {0}")]
    Fenced(#[source] crate::catalog::FenceLost),
    #[error("{target} is not restorable: {why}. Restorable: {coverage}")]
    NotCovered {
        target: String,
        why: String,
        coverage: String,
    },
    #[error("the journals of several clusters are in this store ({0}); pass --cluster-id")]
    AmbiguousCluster(String),
    #[error("shadow base {id} (revision {rev}) is not used: {why}")]
    Unconfirmed { id: String, rev: i64, why: String },
}
