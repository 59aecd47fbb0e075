//! `[retention]`: which backups `lifeboat prune` (and `serve` after every backup) keeps.

use serde::Deserialize;

use super::{duration, section, ConfigError};
use crate::retention::Policy;

section! {
    #[derive(clap::Args, Debug, Default, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RetentionSection {
        /// Keep the newest N scheduled backups.
        #[arg(long, value_name = "N")]
        pub keep_last: Option<usize>,
        /// Keep the newest scheduled backup of each of the last N hours that have one.
        #[arg(long, value_name = "N")]
        pub keep_hourly: Option<usize>,
        /// … of each of the last N days.
        #[arg(long, value_name = "N")]
        pub keep_daily: Option<usize>,
        /// … of each of the last N ISO weeks.
        #[arg(long, value_name = "N")]
        pub keep_weekly: Option<usize>,
        /// … of each of the last N months.
        #[arg(long, value_name = "N")]
        pub keep_monthly: Option<usize>,
        /// Keep manual backups this many days.
        #[arg(long, value_name = "DAYS")]
        pub manual_keep_days: Option<u32>,
        /// Keep pre-upgrade backups this many days.
        #[arg(long, value_name = "DAYS")]
        pub pre_upgrade_keep_days: Option<u32>,
        /// Delete objects without manifest only when older than this (e.g. 24h).
        #[arg(long = "grace", value_name = "DURATION")]
        pub incomplete_grace: Option<String>,
    }
}

/// The retention policy: the section's keys (and `continuous.keep` for the journal), else the
/// defaults.
///
/// # Errors
/// A bad grace period.
pub fn resolve_retention(
    r: &RetentionSection,
    journal: &super::ContinuousSection,
) -> Result<Policy, ConfigError> {
    let d = Policy::default();
    Ok(Policy {
        keep_last: r.keep_last.unwrap_or(d.keep_last),
        keep_hourly: r.keep_hourly.unwrap_or(d.keep_hourly),
        keep_daily: r.keep_daily.unwrap_or(d.keep_daily),
        keep_weekly: r.keep_weekly.unwrap_or(d.keep_weekly),
        keep_monthly: r.keep_monthly.unwrap_or(d.keep_monthly),
        manual_keep_days: r.manual_keep_days.unwrap_or(d.manual_keep_days),
        pre_upgrade_keep_days: r.pre_upgrade_keep_days.unwrap_or(d.pre_upgrade_keep_days),
        incomplete_grace: duration(
            "retention.incomplete_grace",
            r.incomplete_grace.as_ref(),
            d.incomplete_grace,
        )?,
        journal_keep: duration("continuous.keep", journal.keep.as_ref(), d.journal_keep)?,
    })
}
