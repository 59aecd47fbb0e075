//! The etcd step of an upgrade (#26): which etcd the target Kubernetes release brings, and
//! whether every member can take it. etcd 3.6 trusts the v3 store's `members` bucket where 3.5
//! trusted the v2 store; in clusters where the two disagree, removed members come back as
//! "zombies" and the cluster stops. The maintainers' only safe path: every member on 3.5.26 or
//! later (which repairs the v3 store from the v2 store), all healthy, then 3.6.

use serde::Serialize;

pub use crate::etcd::version::EtcdVersion;

use super::version::KubeVersion;

/// The first 3.5 that repairs the v3 store's membership from the v2 store: every member must
/// run it (or later) before any member goes to 3.6.
pub const SAFE_FOR_36: EtcdVersion = EtcdVersion {
    major: 3,
    minor: 5,
    patch: 26,
};

pub const V36: EtcdVersion = EtcdVersion {
    major: 3,
    minor: 6,
    patch: 0,
};

/// The etcd line kubeadm brings with Kubernetes `to`, from kubeadm's constants
/// (`SupportedEtcdVersion`): 3.4 through 1.21, 3.5 from 1.22 to 1.33, 3.6 from 1.34. kubeadm
/// moves patches within a line in its own patch releases, so only the minor line is known here;
/// the patch is the line's `.0`. A minor newer than this table is taken as 3.6 or later.
pub fn kubeadm_line(to: KubeVersion) -> EtcdVersion {
    let minor = match (to.major, to.minor) {
        (1, m) if m <= 16 => 3,
        (1, m) if m <= 21 => 4,
        (1, m) if m <= 33 => 5,
        _ => 6,
    };
    EtcdVersion {
        major: 3,
        minor,
        patch: 0,
    }
}

/// The etcd target `kubeadm upgrade plan` prints for the upgrade to `to`: the `etcd` row
/// (`COMPONENT [NODE] CURRENT TARGET`, the target last) of the section that ends with
/// `kubeadm upgrade apply <to>`.
pub fn plan_target(plan: &str, to: KubeVersion) -> Option<EtcdVersion> {
    let mut etcd = None;
    for line in plan.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.first().is_some_and(|c| c.eq_ignore_ascii_case("etcd")) && cols.len() >= 3 {
            etcd = cols.last().and_then(|v| EtcdVersion::parse(v)).or(etcd);
        } else if let Some(v) = line.trim().strip_prefix("kubeadm upgrade apply ") {
            if KubeVersion::parse(v) == Some(to) {
                return etcd;
            }
            etcd = None;
        }
    }
    None
}

/// Where the target came from, for the check's line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSource {
    Plan,
    KubeadmConstants,
}

/// The etcd the upgrade to `to` brings: the plan's row and kubeadm's line, whichever is newer
/// (the kubeadm on the node before its own upgrade knows only the releases before it, and may
/// print its own line for a newer one; refusing on the newer is the safe side).
pub fn target(plan: Option<&str>, to: KubeVersion) -> (EtcdVersion, TargetSource) {
    let line = kubeadm_line(to);
    match plan.and_then(|p| plan_target(p, to)) {
        Some(p) if p.minor_line() >= line.minor_line() => (p, TargetSource::Plan),
        _ => (line, TargetSource::KubeadmConstants),
    }
}

/// One member as preflight saw it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberVersion {
    pub name: String,
    pub endpoint: String,
    /// What its `Status` said; `None` when unreadable.
    pub version: Option<EtcdVersion>,
}

/// What stands in the way of `target`, one line per member (its name, why): to 3.6 or later,
/// every member on [`SAFE_FOR_36`] or later; never a minor older than a member runs.
pub fn blocked_members(members: &[MemberVersion], target: EtcdVersion) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in members {
        let who = format!("{} ({})", m.name, m.endpoint);
        let why = match m.version {
            None => format!(
                "{who}: its version cannot be read; every member's must be known before etcd {target}"
            ),
            Some(v) if target.minor_line() < v.minor_line() => format!(
                "{who} runs {v}: etcd {target} would downgrade its minor, which etcd does not support; restore the pre-upgrade backup instead"
            ),
            Some(v) if target >= V36 && v < SAFE_FOR_36 => format!(
                "{who} runs {v}: upgrade etcd to {SAFE_FOR_36}+ first, wait until all are healthy, then upgrade to {target} (below {SAFE_FOR_36}, members removed long ago can come back as zombies)"
            ),
            Some(_) => continue,
        };
        out.push((m.name.clone(), why));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> EtcdVersion {
        EtcdVersion::parse(s).unwrap()
    }

    fn k(s: &str) -> KubeVersion {
        KubeVersion::parse(s).unwrap()
    }

    #[test]
    fn versions_parse_as_status_and_kubeadm_spell_them() {
        assert_eq!(v("3.5.21-0"), v("3.5.21"));
        assert_eq!(v("v3.6.4"), v("3.6.4"));
        assert!(v("3.5.26") > v("3.5.9"));
        assert!(EtcdVersion::parse("3.5").is_none());
        assert_eq!(v("3.5.16").to_string(), "3.5.16");
    }

    #[test]
    fn the_plan_row_of_the_section_of_the_target_is_read() {
        let plan = "\
Upgrade to the latest version in the v1.33 series:

COMPONENT                 NODE      CURRENT    TARGET
kube-apiserver            cp1       v1.33.0    v1.33.5
etcd                      cp1       3.5.21-0   3.5.24-0

You can now apply the upgrade by executing the following command:

\tkubeadm upgrade apply v1.33.5

_____________________________________________________________________

Upgrade to the latest stable version:

COMPONENT                 NODE      CURRENT    TARGET
etcd                      cp1       3.5.21-0   3.6.4-0

You can now apply the upgrade by executing the following command:

\tkubeadm upgrade apply v1.34.1
";
        assert_eq!(plan_target(plan, k("1.33.5")), Some(v("3.5.24")));
        assert_eq!(plan_target(plan, k("1.34.1")), Some(v("3.6.4")));
        assert_eq!(plan_target(plan, k("1.34.2")), None);
        // Older kubeadm: no NODE column.
        let old = "Etcd  3.5.15-0  3.5.16-0\n\n\tkubeadm upgrade apply v1.32.1\n";
        assert_eq!(plan_target(old, k("1.32.1")), Some(v("3.5.16")));
    }

    #[test]
    fn the_newer_of_the_plan_and_kubeadms_line_is_the_target() {
        assert_eq!(kubeadm_line(k("1.33.4")), v("3.5.0"));
        assert_eq!(kubeadm_line(k("1.34.0")), v("3.6.0"));
        assert_eq!(kubeadm_line(k("1.40.0")), v("3.6.0"));
        assert_eq!(kubeadm_line(k("1.21.0")), v("3.4.0"));
        // A plan printed by the old kubeadm that still says 3.5 for 1.34: 3.6 is assumed.
        let stale = "etcd cp1 3.5.21-0 3.5.21-0\n\tkubeadm upgrade apply v1.34.0\n";
        assert_eq!(
            target(Some(stale), k("1.34.0")),
            (v("3.6.0"), TargetSource::KubeadmConstants)
        );
        let exact = "etcd cp1 3.5.21-0 3.6.4-0\n\tkubeadm upgrade apply v1.34.0\n";
        assert_eq!(
            target(Some(exact), k("1.34.0")),
            (v("3.6.4"), TargetSource::Plan)
        );
        assert_eq!(
            target(None, k("1.33.2")),
            (v("3.5.0"), TargetSource::KubeadmConstants)
        );
    }

    #[test]
    fn members_below_3_5_26_block_3_6_and_no_minor_goes_back() {
        let m = |name: &str, ver: Option<&str>| MemberVersion {
            name: name.into(),
            endpoint: format!("https://{name}:2379"),
            version: ver.map(v),
        };
        let members = [
            m("a", Some("3.5.16")),
            m("b", Some("3.5.30")),
            m("c", Some("3.6.4")),
        ];
        let to36 = blocked_members(&members, v("3.6.4"));
        assert_eq!(to36.len(), 1, "{to36:?}");
        assert_eq!(to36[0].0, "a");
        assert!(to36[0]
            .1
            .starts_with("a (https://a:2379) runs 3.5.16: upgrade etcd to 3.5.26+ first"));
        let to35 = blocked_members(&members, v("3.5.24"));
        assert_eq!(to35.len(), 1, "{to35:?}");
        assert!(
            to35[0].1.contains("c (https://c:2379) runs 3.6.4") && to35[0].1.contains("downgrade")
        );
        assert!(blocked_members(&members[..2], v("3.5.24")).is_empty());
        assert!(blocked_members(&[m("b", Some("3.5.26"))], v("3.6.0")).is_empty());
        let unknown = blocked_members(&[m("d", None)], v("3.5.24"));
        assert!(unknown[0].1.contains("cannot be read"), "{unknown:?}");
    }
}
