//! `[maintenance]`: defragmentation, quota and NOSPACE (#27), by `serve` (off by default) and
//! `lifeboat defrag`.

use std::time::Duration;

use serde::Deserialize;

use super::{duration, invalid, section, ConfigError};
use crate::maintenance::Rules;

section! {
    #[derive(clap::Args, Debug, Default, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct MaintenanceSection {
        /// `serve` maintains the cluster (the elected instance). Default false.
        #[arg(skip)]
        pub enabled: Option<bool>,
        /// Defragment a member whose free pages are at least this share of its file (0–1;
        /// default 0.5).
        #[arg(long, value_name = "RATIO")]
        pub fragmentation_ratio: Option<f64>,
        /// Leave members whose file is smaller than this alone (default 100MiB).
        #[arg(long, value_name = "SIZE")]
        pub min_db_size: Option<String>,
        /// Cron (UTC) of the times `serve` may start maintenance; default: every 5 minutes.
        #[arg(skip)]
        pub window: Option<String>,
        /// A backup (or a shadow's proof) at least this recent must stand behind maintenance,
        /// else one is taken first (default 15m).
        #[arg(long, value_name = "DURATION")]
        pub max_backup_age: Option<String>,
        /// Hand leadership to a follower before defragmenting the leader (default true).
        #[arg(skip)]
        pub move_leader: Option<bool>,
        /// Under NOSPACE, compact to the current revision first (default true; false when
        /// etcd's --auto-compaction or the API server's compactor is left to do it).
        #[arg(skip)]
        pub compact_on_nospace: Option<bool>,
        /// How long a member may take to answer again after its defragmentation (default 5m).
        #[arg(skip)]
        pub ready_timeout: Option<String>,
        /// The members' --quota-backend-bytes, where lifeboat cannot read it (etcd 3.6 reports
        /// it, a kubeadm etcd.yaml names it; else etcd's default, 2GiB).
        #[arg(long, value_name = "SIZE")]
        pub quota_backend_bytes: Option<String>,
    }
}

/// `[maintenance]`, checked.
#[derive(Debug, Clone)]
pub struct ResolvedMaintenance {
    pub enabled: bool,
    pub rules: Rules,
    /// Six-field cron of the start times, when limited.
    pub window: Option<String>,
    pub max_backup_age: Duration,
    pub ready_timeout: Duration,
    /// The quota given, if any (else the manifest's or etcd's default).
    pub quota: Option<u64>,
}

/// # Errors
/// A value out of range or unparsable, naming its key.
pub fn resolve_maintenance(m: &MaintenanceSection) -> Result<ResolvedMaintenance, ConfigError> {
    let ratio = m.fragmentation_ratio.unwrap_or(0.5);
    if !(ratio > 0.0 && ratio < 1.0) {
        return Err(invalid(
            "maintenance.fragmentation_ratio",
            format!("{ratio} is not between 0 and 1 (the share of free pages, e.g. 0.5)"),
        ));
    }
    let min_db_size = match &m.min_db_size {
        Some(v) => super::size("maintenance.min_db_size", v)?,
        None => 100 << 20,
    };
    let window = match &m.window {
        Some(w) => Some(
            crate::service::normalize_schedule(w)
                .map_err(|e| invalid("maintenance.window", e.to_string()))?
                .0,
        ),
        None => None,
    };
    Ok(ResolvedMaintenance {
        enabled: m.enabled.unwrap_or(false),
        rules: Rules {
            fragmentation_ratio: ratio,
            min_db_size,
            move_leader: m.move_leader.unwrap_or(true),
            compact_on_nospace: m.compact_on_nospace.unwrap_or(true),
        },
        window,
        max_backup_age: duration(
            "maintenance.max_backup_age",
            m.max_backup_age.as_ref(),
            Duration::from_secs(15 * 60),
        )?,
        ready_timeout: duration(
            "maintenance.ready_timeout",
            m.ready_timeout.as_ref(),
            Duration::from_secs(300),
        )?,
        quota: m
            .quota_backend_bytes
            .as_ref()
            .map(|q| super::size("maintenance.quota_backend_bytes", q))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bad_values_name_their_key() {
        let r = resolve_maintenance(&MaintenanceSection::default()).unwrap();
        assert!(!r.enabled);
        assert_eq!(r.rules.min_db_size, 100 << 20);
        assert!((r.rules.fragmentation_ratio - 0.5).abs() < f64::EPSILON);
        assert!(r.rules.move_leader && r.rules.compact_on_nospace);
        assert_eq!(r.max_backup_age, Duration::from_secs(900));
        let bad = |m: MaintenanceSection| resolve_maintenance(&m).unwrap_err().to_string();
        assert!(bad(MaintenanceSection {
            fragmentation_ratio: Some(1.5),
            ..Default::default()
        })
        .contains("maintenance.fragmentation_ratio"));
        assert!(bad(MaintenanceSection {
            min_db_size: Some("lots".into()),
            ..Default::default()
        })
        .contains("maintenance.min_db_size"));
        assert!(bad(MaintenanceSection {
            window: Some("every night".into()),
            ..Default::default()
        })
        .contains("maintenance.window"));
        let r = resolve_maintenance(&MaintenanceSection {
            min_db_size: Some("10MiB".into()),
            window: Some("0 2 * * *".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.rules.min_db_size, 10 << 20);
        assert_eq!(r.window.as_deref(), Some("0 0 2 * * *"));
    }
}
