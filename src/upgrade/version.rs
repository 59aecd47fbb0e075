//! Kubernetes versions and the version-skew policy kubeadm enforces: no downgrade, at most one
//! minor version per upgrade.

use std::fmt;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KubeVersion {
    /// `v1.30.2`, `1.30.2`, `v1.30.2-rc.1+abc`, `1.30.2-1.1` (a package version).
    pub fn parse(s: &str) -> Option<KubeVersion> {
        let s = s.trim().trim_start_matches('v');
        let core = s.split(['-', '+', ' ']).next()?;
        let mut parts = core.split('.');
        let v = KubeVersion {
            major: parts.next()?.parse().ok()?,
            minor: parts.next()?.parse().ok()?,
            patch: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(v)
    }

    /// The version without the leading `v`, as packages name it.
    pub fn bare(&self) -> String {
        format!("{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why an upgrade from `current` to `target` is not allowed, if it is not.
pub fn skew_violation(current: KubeVersion, target: KubeVersion) -> Option<String> {
    if target < current {
        return Some(format!(
            "{target} is older than the cluster's {current}: kubeadm cannot downgrade; restore the pre-upgrade backup instead"
        ));
    }
    if target.major != current.major {
        return Some(format!("{current} → {target} changes the major version"));
    }
    if target.minor > current.minor + 1 {
        return Some(format!(
            "{current} → {target} skips {} minor version(s): upgrade one minor at a time (first to v{}.{}.x)",
            target.minor - current.minor - 1,
            current.major,
            current.minor + 1
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> KubeVersion {
        KubeVersion::parse(s).unwrap()
    }

    #[test]
    fn versions_parse_in_every_spelling_kubernetes_uses() {
        assert_eq!(
            v("v1.30.2"),
            KubeVersion {
                major: 1,
                minor: 30,
                patch: 2
            }
        );
        assert_eq!(v("1.30.2-1.1"), v("v1.30.2"));
        assert_eq!(v("v1.31.0-rc.1+abc"), v("1.31.0"));
        assert!(KubeVersion::parse("1.30").is_none());
        assert!(KubeVersion::parse("v1.x.0").is_none());
        assert_eq!(v("1.30.2").to_string(), "v1.30.2");
        assert_eq!(v("v1.30.2").bare(), "1.30.2");
    }

    #[test]
    fn skew_allows_patches_and_one_minor_only() {
        assert!(skew_violation(v("1.30.2"), v("1.30.5")).is_none());
        assert!(skew_violation(v("1.30.2"), v("1.31.0")).is_none());
        assert!(skew_violation(v("1.30.2"), v("1.30.2")).is_none());
        assert!(skew_violation(v("1.30.2"), v("1.32.0"))
            .unwrap()
            .contains("one minor"));
        assert!(skew_violation(v("1.30.2"), v("1.29.9"))
            .unwrap()
            .contains("downgrade"));
        assert!(skew_violation(v("1.30.2"), v("1.30.1"))
            .unwrap()
            .contains("downgrade"));
    }
}
