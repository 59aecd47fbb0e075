//! `[serve]`: the service's schedule, endpoint and shutdown; it also pulls in `[etcd]`,
//! `[backup]`, `[s3]`, `[retention]` and `[drill]`.

use std::time::Duration;

use serde::Deserialize;

use super::{
    duration, invalid, resolve_backup, resolve_drill, resolve_etcd, resolve_retention,
    resolve_store, section, ConfigError, FileConfig,
};
use crate::catalog::Reason;
use crate::service::{normalize_schedule, DrillPlan, MaintenancePlan, ServeSettings, ShadowPlan};
use crate::stages::encrypt::Identities;

section! {
    #[derive(clap::Args, Debug, Default, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ServeSection {
        /// Cron schedule, UTC: 5 fields (min hour dom mon dow), or 6 with seconds first.
        /// Default: hourly ("0 * * * *") with up to 5 minutes of jitter. `off`: no backups (a
        /// drill-only instance, see [drill] in the config).
        #[arg(long, env = "LIFEBOAT_SCHEDULE", value_name = "CRON")]
        pub schedule: Option<String>,
        #[arg(skip)]
        pub jitter: Option<String>,
        /// Address of /healthz, /readyz and /metrics. Default 127.0.0.1:9464.
        #[arg(long, env = "LIFEBOAT_LISTEN", value_name = "ADDR")]
        pub listen: Option<String>,
        #[arg(skip)]
        pub shutdown_deadline: Option<String>,
        #[arg(skip)]
        pub lease_ttl: Option<String>,
        /// `false`: no retention after backups; a separate pruner holding the delete
        /// permission runs `lifeboat prune` (deploy/kubernetes/pruner.yaml). Default `true`.
        #[arg(skip)]
        pub prune: Option<bool>,
    }
}

const DEFAULT_SCHEDULE: &str = "0 * * * *";

/// Everything `serve` needs, validated. Reads only local files (recipients, manifest,
/// identity).
///
/// # Errors
/// Any invalid value, naming its key.
pub fn resolve_serve(c: &FileConfig) -> Result<ServeSettings, ConfigError> {
    let s = &c.serve;
    let schedule_raw = s.schedule.as_deref().unwrap_or(DEFAULT_SCHEDULE);
    let backups_off = schedule_raw.trim() == "off";
    let (schedule, interval) = if backups_off {
        ("off".to_string(), Duration::from_secs(3600))
    } else {
        normalize_schedule(schedule_raw).map_err(|e| invalid("serve.schedule", e.to_string()))?
    };
    let drill = resolve_drill_plan(c)?;
    let shadow = resolve_shadow_plan(c, backups_off)?;
    let etcd = resolve_etcd(&c.etcd)?;
    let kit = super::resolve_kit(&c.node, &etcd);
    let maintenance = resolve_maintenance_plan(c, &etcd)?;
    if backups_off && drill.is_none() && shadow.is_none() {
        return Err(invalid(
            "serve.schedule",
            "\"off\" takes no backups, and without [drill] schedule and identity_file or [shadow] enabled there is nothing left to do",
        ));
    }
    let listen_raw = s.listen.as_deref().unwrap_or("127.0.0.1:9464");
    let listen = listen_raw.parse().map_err(|_| {
        invalid(
            "serve.listen",
            format!("`{listen_raw}` is not an address like 127.0.0.1:9464"),
        )
    })?;
    let jitter = jitter(s, backups_off)?;
    if !backups_off && jitter >= interval {
        return Err(invalid(
            "serve.jitter",
            format!(
                "{} is not shorter than the schedule's interval ({} s)",
                humantime::format_duration(jitter),
                interval.as_secs()
            ),
        ));
    }
    let prune = s.prune.unwrap_or(true);
    let copies = super::resolve_copies(c)?
        .into_iter()
        .map(|t| crate::service::CopyPlan {
            name: t.dest,
            spec: t.spec,
            retention: t.retention,
            prune,
        })
        .collect();
    Ok(ServeSettings {
        copies,
        maintenance,
        schedule,
        interval,
        jitter,
        listen,
        shutdown_deadline: duration(
            "serve.shutdown_deadline",
            s.shutdown_deadline.as_ref(),
            Duration::from_secs(120),
        )?,
        lease_ttl: duration(
            "serve.lease_ttl",
            s.lease_ttl.as_ref(),
            Duration::from_secs(15),
        )?,
        etcd: etcd.settings,
        store: resolve_store(&c.backup, &c.s3)?,
        backup: if backups_off {
            None
        } else {
            let mut b = resolve_backup(&c.backup, &c.trust, Reason::Scheduled)?;
            // On a kubeadm node the uploader's backups carry its node's kit.
            b.kit = kit;
            Some(b)
        },
        retention: if s.prune.unwrap_or(true) {
            Some(resolve_retention(&c.retention, &c.continuous)?)
        } else {
            None
        },
        drill,
        shadow,
        continuous: if backups_off {
            None
        } else {
            super::resolve_continuous(&c.continuous)?
        },
        // A drill-only instance running the shadow signs with the shadow's key, which it
        // trusts as a shadow's, never as a writer's.
        read_policy: super::resolve_read_policy_as(
            &c.trust,
            if c.shadow.enabled.unwrap_or(false) {
                crate::trust::Role::Shadow
            } else {
                crate::trust::Role::Writer
            },
        )?,
    })
}

/// Up to 5 minutes with the default schedule (spreading clusters that share a bucket), none
/// with an explicit one unless set.
fn jitter(s: &super::ServeSection, backups_off: bool) -> Result<Duration, ConfigError> {
    let default = if !backups_off && s.schedule.is_none() {
        Duration::from_secs(300)
    } else {
        Duration::ZERO
    };
    match s.jitter.as_deref() {
        Some("0") | Some("0s") => Ok(Duration::ZERO),
        other => duration("serve.jitter", other.map(String::from).as_ref(), default),
    }
}

/// `[drill]` for `serve`: present only when a schedule is set, which then needs an identity
/// file that reads as one (checked now, read again at every drill).
fn resolve_drill_plan(c: &FileConfig) -> Result<Option<DrillPlan>, ConfigError> {
    let d = &c.drill;
    let Some(raw) = &d.schedule else {
        return Ok(None);
    };
    let (schedule, _) =
        normalize_schedule(raw).map_err(|e| invalid("drill.schedule", e.to_string()))?;
    let identity_file = d.identity_file.clone().ok_or_else(|| {
        invalid(
            "drill.identity_file",
            "drills need the age identity (private key) that decrypts the backups",
        )
    })?;
    Identities::from_file(&identity_file)
        .map_err(|e| invalid("drill.identity_file", e.to_string()))?;
    Ok(Some(DrillPlan {
        schedule,
        identity_file,
        settings: resolve_drill(c)?,
    }))
}

/// `[shadow]` for `serve`: only on a drill-only instance (the shadow and its private etcd
/// belong off the control plane), with the identity that reads the journal when one is set.
fn resolve_shadow_plan(
    c: &FileConfig,
    backups_off: bool,
) -> Result<Option<ShadowPlan>, ConfigError> {
    if !c.shadow.enabled.unwrap_or(false) {
        return Ok(None);
    }
    if !backups_off {
        return Err(invalid(
            "shadow.enabled",
            "the shadow runs off the control plane, in a drill-only serve: set serve.schedule = \"off\" on that instance (deploy/kubernetes/shadow.yaml)",
        ));
    }
    let identity_file = c.drill.identity_file.clone();
    if let Some(path) = &identity_file {
        Identities::from_file(path).map_err(|e| invalid("drill.identity_file", e.to_string()))?;
    }
    Ok(Some(ShadowPlan {
        identity_file,
        settings: super::resolve_shadow(c, None)?,
    }))
}

/// The members' metrics always; maintenance itself when `[maintenance] enabled`.
fn resolve_maintenance_plan(
    c: &FileConfig,
    etcd: &super::ResolvedEtcd,
) -> Result<Option<MaintenancePlan>, ConfigError> {
    let m = super::resolve_maintenance(&c.maintenance)?;
    let quota = m
        .quota
        .or(etcd.kubeadm.as_ref().map(|k| k.quota()))
        .unwrap_or(crate::etcd::discovery::DEFAULT_QUOTA);
    Ok(Some(MaintenancePlan {
        enabled: m.enabled,
        rules: m.rules,
        window: m.window.unwrap_or_else(|| DEFAULT_WINDOW.to_string()),
        max_backup_age: m.max_backup_age,
        ready_timeout: m.ready_timeout,
        quota,
    }))
}

/// Without a window, maintenance may start every 5 minutes (6 fields, seconds first).
const DEFAULT_WINDOW: &str = "0 */5 * * * *";
