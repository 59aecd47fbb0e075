//! Retention: which backups to keep, decided by a pure function of the catalog and a clock,
//! then applied to a store.
//!
//! Scheduled backups are kept by `keep_last` and by tiers (`keep_hourly`, `keep_daily`,
//! `keep_weekly`, `keep_monthly`): the newest backup of each of the last N periods that have
//! one, as restic and kops do. Manual and pre-upgrade backups are kept for their own number of
//! days. Whatever the rules say, the newest backup of each cluster is never deleted. Only
//! backups with a readable manifest named as ours are candidates; deletion removes the manifest
//! first, then the object, so a crash mid-prune never leaves a manifest without its object.
//! Objects named as ours without a manifest (interrupted uploads) are removed once older than a
//! grace period.
//!
//! Object Lock: before deleting, retention asks the store whether a lock still holds any
//! object of the backup; if one does, the backup is reported as locked and not touched (a plain
//! delete of a locked object in a versioned bucket would only hide it behind a delete marker).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;

use crate::catalog::{cluster_of, Manifest, Reason};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub keep_last: usize,
    pub keep_hourly: usize,
    pub keep_daily: usize,
    pub keep_weekly: usize,
    pub keep_monthly: usize,
    pub manual_keep_days: u32,
    pub pre_upgrade_keep_days: u32,
    /// Data objects without a manifest younger than this may still be being written.
    #[serde(with = "humantime_serde_secs")]
    pub incomplete_grace: Duration,
    /// How far back point-in-time restore reaches: journal segments no kept backup needs to
    /// reach a point in this window are deleted (`continuous.keep`).
    #[serde(with = "humantime_serde_secs")]
    pub journal_keep: Duration,
}

mod humantime_serde_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

impl Default for Policy {
    /// A day of hourly backups, a week of dailies, a month of weeklies, a quarter of monthlies,
    /// and the last 3 whatever their age; manual and pre-upgrade backups for 30 days.
    fn default() -> Policy {
        Policy {
            keep_last: 3,
            keep_hourly: 24,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 3,
            manual_keep_days: 30,
            pre_upgrade_keep_days: 30,
            incomplete_grace: Duration::from_secs(24 * 3600),
            journal_keep: Duration::from_secs(72 * 3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Keep,
    Delete,
    /// The rules would delete it, an S3 Object Lock still holds it: left alone.
    Locked,
}

/// The verdict on one backup and the rules behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: String,
    pub cluster_id: String,
    pub created_at: DateTime<Utc>,
    pub reason: Reason,
    pub action: Action,
    /// The rules that keep it (`last #1`, `daily 2026-11-20`, `newest`, `manual < 30 days`),
    /// or why it goes (`no rule keeps it`).
    pub rules: Vec<String>,
}

/// Decides, for every backup of every cluster (or of `only_cluster`), whether it stays.
/// Clusters are told apart by the id in each backup's name (the catalog has checked that the
/// manifest says the same), so `0abc` and `abc` are one cluster.
///
/// `bundled` names the backups the upgrade gate attached a node bundle to (the cluster's CA
/// keys, needed to undo an upgrade): whatever their reason, they are kept like pre-upgrade
/// backups, since the gate may reuse a recent scheduled one.
pub fn plan(
    backups: &[Manifest],
    bundled: &HashSet<String>,
    now: DateTime<Utc>,
    policy: &Policy,
    only_cluster: Option<u64>,
) -> Vec<Decision> {
    let mut clusters: Vec<u64> = backups.iter().filter_map(cluster_of).collect();
    clusters.sort_unstable();
    clusters.dedup();
    let mut out = Vec::new();
    for cluster in clusters {
        if only_cluster.is_some_and(|c| c != cluster) {
            continue;
        }
        let mut mine: Vec<&Manifest> = backups
            .iter()
            .filter(|m| cluster_of(m) == Some(cluster))
            .collect();
        mine.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        out.extend(plan_cluster(&mine, bundled, now, policy));
    }
    out
}

/// How long shadow bases are kept.
const SHADOW_BASE_KEEP_DAYS: u32 = 1;

fn plan_cluster(
    newest_first: &[&Manifest],
    bundled: &HashSet<String>,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Vec<Decision> {
    let mut rules: Vec<Vec<String>> = vec![Vec::new(); newest_first.len()];
    if let Some(first) = rules.first_mut() {
        first.push("newest".into());
    }
    let scheduled: Vec<usize> = (0..newest_first.len())
        .filter(|&i| newest_first[i].reason == Reason::Scheduled)
        .collect();
    for (n, &i) in scheduled.iter().take(policy.keep_last).enumerate() {
        rules[i].push(format!("last #{}", n + 1));
    }
    type PeriodOf = fn(&DateTime<Utc>) -> String;
    let tiers: [(&str, usize, PeriodOf); 4] = [
        ("hourly", policy.keep_hourly, |t| {
            t.format("%Y-%m-%dT%H").to_string()
        }),
        ("daily", policy.keep_daily, |t| {
            t.format("%Y-%m-%d").to_string()
        }),
        ("weekly", policy.keep_weekly, |t| {
            let w = t.iso_week();
            format!("{}-W{:02}", w.year(), w.week())
        }),
        ("monthly", policy.keep_monthly, |t| {
            format!("{}-{:02}", t.year(), t.month())
        }),
    ];
    for (name, keep, period_of) in tiers {
        let mut seen = HashSet::new();
        for &i in &scheduled {
            if seen.len() >= keep {
                break;
            }
            let period = period_of(&newest_first[i].created_at);
            if seen.insert(period.clone()) {
                rules[i].push(format!("{name} {period}"));
            }
        }
    }
    let younger_than = |m: &Manifest, days: u32| {
        now.signed_duration_since(m.created_at) < chrono::Duration::days(i64::from(days))
    };
    for (i, m) in newest_first.iter().enumerate() {
        let days = match m.reason {
            Reason::Manual => policy.manual_keep_days,
            Reason::PreUpgrade => policy.pre_upgrade_keep_days,
            // A shadow base shortens the replay of any point after it; a day of them keeps
            // every point of the last 24 h within one base interval (docs/decisions.md).
            Reason::Shadow => SHADOW_BASE_KEEP_DAYS,
            Reason::Scheduled => 0,
        };
        if days > 0 && younger_than(m, days) {
            rules[i].push(format!("{} < {days} days", m.reason));
        }
        let upgrade_days = policy.pre_upgrade_keep_days;
        if m.reason != Reason::PreUpgrade
            && bundled.contains(&m.id)
            && younger_than(m, upgrade_days)
        {
            rules[i].push(format!("node bundle < {upgrade_days} days"));
        }
    }
    newest_first
        .iter()
        .zip(rules)
        .map(|(m, rules)| {
            let action = if rules.is_empty() {
                Action::Delete
            } else {
                Action::Keep
            };
            Decision {
                id: m.id.clone(),
                cluster_id: m.cluster_id.clone(),
                created_at: m.created_at,
                reason: m.reason,
                action,
                rules: if rules.is_empty() {
                    vec!["no rule keeps it".into()]
                } else {
                    rules
                },
            }
        })
        .collect()
}

mod kits;
mod prune;

pub use prune::{bundled_backups, prune, Orphan, PruneError, PruneReport, SkippedManifest};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::BackupId;
    use chrono::TimeZone;

    pub(super) fn manifest_at(t: DateTime<Utc>, reason: Reason, cluster: u64) -> Manifest {
        let id = BackupId::new(t, cluster);
        let text = format!(
            r#"{{"schema_version":1,"id":"{id}","created_at":"{}","cluster_id":"{cluster:x}","member_id":"1","member_name":"m","endpoint":"e","etcd_version":"3.5.16","revision":1,"raft_index":1,"db_size":1,"status":{{"hash":1,"revision":1,"totalKey":1,"totalSize":1}},"hashkv":{{"hash":1,"compact_revision":0,"checked":true,"result":"equal"}},"plain_sha256":"00","plain_size":1,"object":{{"key":"{}","size":1,"sha256":"00"}},"compression":{{"algorithm":"zstd","level":3}},"encryption":{{"scheme":"age","recipients":[]}},"reason":"{reason}","tool_version":"t","duration_ms":1}}"#,
            id.time.to_rfc3339(),
            id.object_key(true)
        );
        Manifest::parse("t", text.as_bytes()).unwrap()
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
    }

    fn hours_ago(h: i64) -> DateTime<Utc> {
        now() - chrono::Duration::hours(h)
    }

    fn kept(ds: &[Decision]) -> Vec<DateTime<Utc>> {
        ds.iter()
            .filter(|d| d.action == Action::Keep)
            .map(|d| d.created_at)
            .collect()
    }

    fn zero() -> Policy {
        Policy {
            keep_last: 0,
            keep_hourly: 0,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            manual_keep_days: 0,
            pre_upgrade_keep_days: 0,
            incomplete_grace: Duration::from_secs(3600),
            journal_keep: Duration::from_secs(3600),
        }
    }

    /// Regression: the upgrade gate attaches the node bundle to a recent scheduled backup,
    /// which retention then deleted (bundle included) after hours instead of days.
    #[test]
    fn a_backup_with_a_node_bundle_is_kept_like_a_pre_upgrade_backup() {
        let all = vec![
            manifest_at(hours_ago(1), Reason::Scheduled, 1),
            manifest_at(hours_ago(48), Reason::Scheduled, 1),
            manifest_at(hours_ago(24 * 40), Reason::Scheduled, 1),
        ];
        let policy = Policy {
            pre_upgrade_keep_days: 30,
            ..zero()
        };
        let bundled: HashSet<String> = [all[1].id.clone(), all[2].id.clone()].into();
        let ds = plan(&all, &bundled, now(), &policy, None);
        assert_eq!(kept(&ds), vec![all[0].created_at, all[1].created_at]);
        assert!(
            ds[1].rules.contains(&"node bundle < 30 days".to_string()),
            "{:?}",
            ds[1]
        );
        let ds = plan(&all, &HashSet::new(), now(), &policy, None);
        assert_eq!(
            kept(&ds),
            vec![all[0].created_at],
            "no bundle: scheduled rules only"
        );
    }

    #[test]
    fn tiers_keep_the_newest_of_each_period_table() {
        // Scheduled backups every 6 hours over 40 days.
        let all: Vec<Manifest> = (0..160)
            .map(|i| manifest_at(hours_ago(i * 6), Reason::Scheduled, 7))
            .collect();
        struct Case {
            name: &'static str,
            policy: Policy,
            expect_kept: usize,
            must_keep: Vec<i64>,
        }
        let cases = [
            Case {
                name: "nothing but the newest",
                policy: zero(),
                expect_kept: 1,
                must_keep: vec![0],
            },
            Case {
                name: "keep_last 5",
                policy: Policy {
                    keep_last: 5,
                    ..zero()
                },
                expect_kept: 5,
                must_keep: vec![0, 6, 12, 18, 24],
            },
            Case {
                name: "hourly 24 = 24 distinct hours",
                policy: Policy {
                    keep_hourly: 24,
                    ..zero()
                },
                expect_kept: 24,
                must_keep: vec![0, 138],
            },
            // 12:00 today is the newest of 2026-11-22; then 18:00 of each earlier day.
            Case {
                name: "daily 3",
                policy: Policy {
                    keep_daily: 3,
                    ..zero()
                },
                expect_kept: 3,
                must_keep: vec![0, 18, 42],
            },
            Case {
                name: "monthly 2",
                policy: Policy {
                    keep_monthly: 2,
                    ..zero()
                },
                expect_kept: 2,
                must_keep: vec![0],
            },
            Case {
                name: "weekly 6 over 40 days",
                policy: Policy {
                    keep_weekly: 6,
                    ..zero()
                },
                expect_kept: 6,
                must_keep: vec![0],
            },
        ];
        for c in cases {
            let ds = plan(&all, &HashSet::new(), now(), &c.policy, None);
            let k = kept(&ds);
            assert_eq!(k.len(), c.expect_kept, "{}", c.name);
            for h in c.must_keep {
                assert!(
                    k.contains(&all[(h / 6) as usize].created_at),
                    "{}: {h}h ago",
                    c.name
                );
            }
        }
    }

    #[test]
    fn daily_keeps_the_newest_backup_of_each_day() {
        let all = vec![
            manifest_at(hours_ago(1), Reason::Scheduled, 7), // 11:00 on the 22nd
            manifest_at(hours_ago(13), Reason::Scheduled, 7), // 23:00 on the 21st
            manifest_at(hours_ago(20), Reason::Scheduled, 7), // 16:00 on the 21st
        ];
        let ds = plan(
            &all,
            &HashSet::new(),
            now(),
            &Policy {
                keep_daily: 5,
                ..zero()
            },
            None,
        );
        assert_eq!(kept(&ds), vec![all[0].created_at, all[1].created_at]);
        let dropped = ds.iter().find(|d| d.action == Action::Delete).unwrap();
        assert_eq!(dropped.rules, vec!["no rule keeps it"]);
    }

    #[test]
    fn shadow_bases_are_kept_for_a_day_and_never_count_as_scheduled() {
        let all = vec![
            manifest_at(hours_ago(1), Reason::Scheduled, 7),
            manifest_at(hours_ago(2), Reason::Shadow, 7),
            manifest_at(hours_ago(30), Reason::Shadow, 7),
            manifest_at(hours_ago(40), Reason::Scheduled, 7),
        ];
        let policy = Policy {
            keep_last: 2,
            ..zero()
        };
        let ds = plan(&all, &HashSet::new(), now(), &policy, None);
        let k = kept(&ds);
        assert!(
            k.contains(&all[1].created_at),
            "a shadow base of the last day"
        );
        assert!(!k.contains(&all[2].created_at), "an older shadow base");
        assert!(
            k.contains(&all[3].created_at),
            "keep_last counts scheduled backups only: {k:?}"
        );
    }

    #[test]
    fn manual_and_pre_upgrade_backups_follow_their_own_days() {
        let all = vec![
            manifest_at(hours_ago(1), Reason::Scheduled, 7),
            manifest_at(hours_ago(24 * 10), Reason::Manual, 7),
            manifest_at(hours_ago(24 * 40), Reason::Manual, 7),
            manifest_at(hours_ago(24 * 5), Reason::PreUpgrade, 7),
            manifest_at(hours_ago(24 * 8), Reason::PreUpgrade, 7),
        ];
        let policy = Policy {
            manual_keep_days: 30,
            pre_upgrade_keep_days: 7,
            keep_last: 10,
            ..zero()
        };
        let ds = plan(&all, &HashSet::new(), now(), &policy, None);
        let k = kept(&ds);
        assert!(k.contains(&all[1].created_at) && k.contains(&all[3].created_at));
        assert!(!k.contains(&all[2].created_at) && !k.contains(&all[4].created_at));
        assert_eq!(k.len(), 3, "keep_last counts scheduled backups only");
    }

    #[test]
    fn the_newest_backup_of_each_cluster_is_never_deleted() {
        let all = vec![
            manifest_at(hours_ago(24 * 400), Reason::Manual, 1),
            manifest_at(hours_ago(24 * 300), Reason::Scheduled, 2),
            manifest_at(hours_ago(24 * 301), Reason::Scheduled, 2),
        ];
        let ds = plan(&all, &HashSet::new(), now(), &zero(), None);
        assert_eq!(kept(&ds), vec![all[0].created_at, all[1].created_at]);
        let ds = plan(&all, &HashSet::new(), now(), &zero(), Some(2));
        assert_eq!(ds.len(), 2, "only the named cluster is considered");
    }

    /// Regression: clusters were told apart (and `--cluster-id` matched) as strings, so a
    /// zero-padded id as backup names show it matched no backup.
    #[test]
    fn a_cluster_is_one_cluster_however_its_id_is_written() {
        let mut padded = manifest_at(hours_ago(2), Reason::Scheduled, 0xab);
        padded.cluster_id = "00000000000000ab".into();
        let all = vec![manifest_at(hours_ago(1), Reason::Scheduled, 0xab), padded];
        let ds = plan(
            &all,
            &HashSet::new(),
            now(),
            &zero(),
            crate::catalog::parse_cluster_id("00000000000000ab"),
        );
        assert_eq!(ds.len(), 2);
        assert_eq!(kept(&ds).len(), 1, "one cluster, one newest");
    }
}
