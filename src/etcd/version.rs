//! etcd versions as members report them (`Status`) and kubeadm names its images.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An etcd version as `Status`, kubeadm and image tags spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EtcdVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl EtcdVersion {
    /// `3.5.16`, `v3.6.4`, `3.5.21-0` (kubeadm's image tag).
    pub fn parse(s: &str) -> Option<EtcdVersion> {
        let s = s.trim().trim_start_matches('v');
        let core = s.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let v = EtcdVersion {
            major: parts.next()?.parse().ok()?,
            minor: parts.next()?.parse().ok()?,
            patch: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(v)
    }

    /// Major and minor: what etcd's upgrade and downgrade rules speak of.
    pub fn minor_line(self) -> (u32, u32) {
        (self.major, self.minor)
    }
}

impl fmt::Display for EtcdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}
