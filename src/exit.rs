//! Exit codes, documented in the README. The class comes from the first error in the chain
//! that this crate knows, so context added at the CLI edge does not change it.

use crate::backup::BackupError;
use crate::catalog::CatalogError;
use crate::config::ConfigError;
use crate::etcd::SourceError;
use crate::readback::ReadBackError;
use crate::stages::encrypt::KeyError;
use crate::store::StoreError;
use crate::verify::VerifyError;

pub const OK: u8 = 0;
/// Anything unexpected.
pub const FAILURE: u8 = 1;
/// Bad flags or configuration.
pub const USAGE: u8 = 2;
/// etcd unreachable, TLS or auth wrong, or a call failed.
pub const ETCD: u8 = 3;
/// A snapshot or backup failed verification (corrupt, mismatch).
pub const VERIFY: u8 = 4;
/// The store or a local file could not be read or written (incl. disk full).
pub const STORAGE: u8 = 5;
/// A key problem: no identity given, wrong identity, unreadable key file.
pub const KEYS: u8 = 6;
/// The backup asked for does not exist.
pub const NOT_FOUND: u8 = 7;
/// A safety check refused to go on (restore: etcd running without --force, an unfinished
/// journal, no --yes, not enough disk). Nothing was changed.
pub const REFUSED: u8 = 8;

/// The exit code for an error chain.
pub fn code_for(err: &(dyn std::error::Error + 'static)) -> u8 {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(code) = classify(e) {
            return code;
        }
        cur = e.source();
    }
    FAILURE
}

fn classify(e: &(dyn std::error::Error + 'static)) -> Option<u8> {
    if let Some(e) = e.downcast_ref::<BackupError>() {
        return match e {
            BackupError::Source(_) => Some(ETCD),
            BackupError::Verify(_) => Some(VERIFY),
            BackupError::Store(_) => Some(STORAGE),
            BackupError::Catalog(c) => classify(c),
            BackupError::Stage(_)
            | BackupError::Internal(_)
            | BackupError::Cancelled
            | BackupError::Fenced(_) => Some(FAILURE),
        };
    }
    if let Some(e) = e.downcast_ref::<crate::copy::CopyError>() {
        return match e {
            crate::copy::CopyError::Refused(_) => Some(VERIFY),
            crate::copy::CopyError::Source(_) | crate::copy::CopyError::Target(_) => Some(STORAGE),
            crate::copy::CopyError::Catalog(c) => classify(c),
        };
    }
    if let Some(e) = e.downcast_ref::<CatalogError>() {
        return match e {
            CatalogError::Empty { .. } | CatalogError::NoSuchBackup { .. } => Some(NOT_FOUND),
            CatalogError::AmbiguousLatest { .. } => Some(USAGE),
            CatalogError::Store(_) => Some(STORAGE),
            CatalogError::Manifest(_) | CatalogError::NewerUntrusted { .. } => Some(VERIFY),
            CatalogError::Trust(t) => classify(t),
        };
    }
    if let Some(e) = e.downcast_ref::<ReadBackError>() {
        return match e {
            ReadBackError::Store(StoreError::NotFound { .. }) => Some(VERIFY),
            ReadBackError::Store(_)
            | ReadBackError::Output { .. }
            | ReadBackError::NoSpace { .. }
            | ReadBackError::Exists(_) => Some(STORAGE),
            ReadBackError::IdentityNeeded { .. } | ReadBackError::WrongIdentity { .. } => {
                Some(KEYS)
            }
            ReadBackError::Damaged { .. }
            | ReadBackError::Verify(_)
            | ReadBackError::Unencrypted { .. } => Some(VERIFY),
            ReadBackError::Internal(_) => Some(FAILURE),
        };
    }
    if let Some(e) = e.downcast_ref::<crate::restore::RestoreError>() {
        use crate::restore::RestoreError as R;
        return match e {
            R::Refused { .. } => Some(REFUSED),
            R::ReadBack(r) => classify(r),
            R::BadFile { .. } => Some(VERIFY),
            R::StillRunning { .. } | R::NotHealthy { .. } => Some(ETCD),
            R::Journal(crate::fsutil::JournalError::Locked { .. }) => Some(REFUSED),
            R::Node { .. } | R::Journal(_) => Some(STORAGE),
            R::Discovery(_) => Some(USAGE),
            R::Store(_) => Some(STORAGE),
            R::Coordination(c) => match c.as_ref() {
                crate::trust::envelope::EnvelopeError::Store(_) => Some(STORAGE),
                _ => Some(VERIFY),
            },
            R::Tool { .. } | R::ToolRun(_) => Some(FAILURE),
        };
    }
    if let Some(e) = e.downcast_ref::<crate::member::MemberError>() {
        use crate::member::MemberError as M;
        return match e {
            M::Refused { .. } | M::Journal(crate::fsutil::JournalError::Locked { .. }) => {
                Some(REFUSED)
            }
            M::Discovery(_) => Some(USAGE),
            M::NoCluster { .. } | M::Membership { .. } => Some(ETCD),
            M::Node(r) => classify(r),
            M::Journal(_) | M::Io { .. } => Some(STORAGE),
            M::CatchUp { .. } => Some(FAILURE),
            M::Disagree(_) => Some(VERIFY),
        };
    }
    if let Some(e) = e.downcast_ref::<crate::upgrade::UpgradeError>() {
        use crate::upgrade::UpgradeError as U;
        return match e {
            U::Refused { .. } | U::Gate { .. } => Some(REFUSED),
            U::Journal(crate::fsutil::JournalError::Locked { .. }) => Some(REFUSED),
            U::Journal(_) => Some(STORAGE),
            U::Command(_) | U::Tool { .. } | U::Step { .. } => Some(FAILURE),
        };
    }
    if let Some(crate::etcd::health::HealthError::NotHealthy { diverged, .. }) = e.downcast_ref() {
        return Some(if *diverged { VERIFY } else { ETCD });
    }
    if let Some(e) = e.downcast_ref::<crate::maintenance::MaintenanceError>() {
        use crate::maintenance::MaintenanceError as M;
        return match e {
            M::Blocked { .. } => Some(REFUSED),
            M::Backup(b) => classify(b),
            M::Etcd { .. } | M::NotBack { .. } | M::NospaceLeft { .. } => Some(ETCD),
        };
    }
    if e.is::<crate::verify::membership::Inconsistent>() {
        return Some(VERIFY);
    }
    if let Some(e) = e.downcast_ref::<crate::verify::membership::LiveError>() {
        use crate::verify::membership::LiveError as L;
        return match e {
            L::Source { .. } => Some(ETCD),
            L::Snapshot { .. } => Some(VERIFY),
        };
    }
    if let Some(e) = e.downcast_ref::<crate::drill::DrillError>() {
        use crate::drill::DrillError as D;
        return match e {
            D::Mismatch { .. } | D::Offline { .. } => Some(VERIFY),
            D::ReadBack(r) => classify(r),
            D::Restore(r) => classify(r),
            D::Sandbox(s) => classify(s),
        };
    }
    if let Some(e) = e.downcast_ref::<crate::sandbox::SandboxError>() {
        use crate::sandbox::SandboxError as S;
        return match e {
            S::Restore(r) => classify(r),
            S::EtcdStart { .. } | S::Dir { .. } | S::Pki(_) => Some(FAILURE),
        };
    }
    if let Some(e) = e.downcast_ref::<crate::continuous::ContinuousError>() {
        use crate::continuous::ContinuousError as C;
        return match e {
            C::Source(_) => Some(ETCD),
            C::Store(_) => Some(STORAGE),
            C::Catalog(c) => classify(c),
            C::NotCovered { .. } => Some(NOT_FOUND),
            C::AmbiguousCluster(_) => Some(USAGE),
            C::Trust(_)
            | C::Invalid { .. }
            | C::BrokenChain { .. }
            | C::Hole { .. }
            | C::Unconfirmed { .. } => Some(VERIFY),
            C::NeedIdentity { .. } => Some(KEYS),
            C::Encode { .. } | C::WatchEnded | C::UploaderStopped | C::Fenced(_) => Some(FAILURE),
        };
    }
    if let Some(e) = e.downcast_ref::<crate::pitr::PitrError>() {
        use crate::pitr::PitrError as P;
        return match e {
            P::Journal(j) => classify(j),
            P::Catalog(c) => classify(c),
            P::ReadBack(r) => classify(r),
            P::Sandbox(d) => classify(d),
            P::Tool(r) => classify(r),
            P::Store(_) | P::Output { .. } => Some(STORAGE),
            P::Etcd(_) | P::SandboxFailed { .. } => Some(FAILURE),
            P::Replay { .. } | P::CheckpointMismatch { .. } => Some(VERIFY),
        };
    }
    if let Some(e) = e.downcast_ref::<crate::kit::KitError>() {
        use crate::kit::KitError as K;
        return match e {
            K::Read { .. }
            | K::Write { .. }
            | K::Pack(_)
            | K::OutputNotEmpty(_)
            | K::Occupied(_)
            | K::Store(_) => Some(STORAGE),
            K::Manifest { .. } => Some(USAGE),
            K::Plaintext => Some(KEYS),
            K::Damaged { .. } => Some(VERIFY),
            K::NotFound { .. } => Some(NOT_FOUND),
            K::Envelope(crate::trust::envelope::EnvelopeError::Store(_)) => Some(STORAGE),
            K::Envelope(_) => Some(VERIFY),
        };
    }
    if let Some(e) = e.downcast_ref::<crate::recover::RecoverError>() {
        use crate::recover::RecoverError as R;
        return match e {
            R::Disagree { .. } | R::Read { .. } => Some(VERIFY),
            R::NoSource(_) => Some(NOT_FOUND),
            R::Journal(j) => classify(j),
            R::Replay(p) => classify(p),
        };
    }
    if let Some(e) = e.downcast_ref::<crate::shadow::ShadowError>() {
        use crate::shadow::ShadowError as S;
        return match e {
            S::Setup(p) => classify(p),
            S::Mismatch { .. } => Some(VERIFY),
        };
    }
    if let Some(e) = e.downcast_ref::<crate::retention::PruneError>() {
        return match e {
            crate::retention::PruneError::Catalog(c) => classify(c),
            crate::retention::PruneError::Store(_) => Some(STORAGE),
            crate::retention::PruneError::Kit(k) => classify(k),
            crate::retention::PruneError::Fenced(_) => Some(FAILURE),
        };
    }
    if let Some(e) = e.downcast_ref::<crate::service::ServeError>() {
        return match e {
            crate::service::ServeError::Listen { .. } => Some(USAGE),
            crate::service::ServeError::Store(_) => Some(STORAGE),
            crate::service::ServeError::Scheduler(_) => Some(FAILURE),
        };
    }
    if e.is::<SourceError>() {
        return Some(ETCD);
    }
    if e.is::<VerifyError>() || e.is::<crate::bbolt::BoltError>() {
        return Some(VERIFY);
    }
    if e.is::<StoreError>() {
        return Some(STORAGE);
    }
    if let Some(k) = e.downcast_ref::<KeyError>() {
        return match k {
            KeyError::IdentityFile { .. }
            | KeyError::NoIdentity { .. }
            | KeyError::WorldReadable { .. } => Some(KEYS),
            _ => Some(USAGE),
        };
    }
    if let Some(t) = e.downcast_ref::<crate::trust::TrustError>() {
        return match t {
            crate::trust::TrustError::Write { .. } | crate::trust::TrustError::Exists { .. } => {
                Some(STORAGE)
            }
            crate::trust::TrustError::Untrusted { .. } => Some(VERIFY),
            _ => Some(KEYS),
        };
    }
    if let Some(c) = e.downcast_ref::<ConfigError>() {
        return match c {
            ConfigError::Key(k) => classify(k),
            _ => Some(USAGE),
        };
    }
    None
}
