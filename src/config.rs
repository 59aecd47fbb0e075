//! Configuration: one TOML file, `LIFEBOAT_*` environment variables and flags; flags win,
//! then env, then the file, then defaults. Merged and validated once at start; a bad value
//! gives one line naming the key. The example with every key: config/lifeboat.example.toml.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::backup::BackupSettings;
use crate::catalog::Reason;
use crate::etcd::discovery::{self, KubeadmEtcd};
use crate::etcd::EtcdSettings;
use crate::stages::compress;
use crate::stages::encrypt::{KeyError, Recipients};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/etcd-lifeboat/lifeboat.toml";
pub const DEFAULT_ETCD_MANIFEST: &str = "/etc/kubernetes/manifests/etcd.yaml";
pub const DEFAULT_WORK_DIR: &str = "/var/lib/etcd-lifeboat/work";
pub const DEFAULT_MANIFESTS_DIR: &str = "/etc/kubernetes/manifests";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/etcd-lifeboat";

/// A secret string that never prints.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub etcd: EtcdSection,
    #[serde(default)]
    pub backup: BackupSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub s3: S3Section,
    #[serde(default)]
    pub retention: RetentionSection,
    #[serde(default)]
    pub serve: ServeSection,
    #[serde(default)]
    pub restore: RestoreSection,
    #[serde(default)]
    pub drill: DrillSection,
    #[serde(default)]
    pub upgrade: UpgradeSection,
}

/// `[upgrade]`: the tools `lifeboat upgrade` drives and its limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeSection {
    pub kubeadm: Option<PathBuf>,
    pub kubectl: Option<PathBuf>,
    pub systemctl: Option<PathBuf>,
    pub package_manager: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub kubernetes_dir: Option<PathBuf>,
    pub max_snapshot_age: Option<String>,
    pub drain_timeout: Option<String>,
    pub ready_timeout: Option<String>,
    pub command_timeout: Option<String>,
    pub keep_kubeadm_backups: Option<usize>,
}

/// `[restore]`: where the node's files are and how to restore.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreSection {
    pub manifests_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub etcdutl: Option<PathBuf>,
    pub bump_revision: Option<u64>,
    pub stop_timeout: Option<String>,
    pub start_timeout: Option<String>,
    pub apiserver_timeout: Option<String>,
}

/// `[drill]`: restore drills (`lifeboat drill`, and on a schedule in `serve`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillSection {
    /// Cron schedule for drills in `serve`; drills run only when this and an identity are set.
    pub schedule: Option<String>,
    pub identity_file: Option<PathBuf>,
    pub etcd: Option<PathBuf>,
    pub etcdutl: Option<PathBuf>,
    pub work_dir: Option<PathBuf>,
    pub start_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSection {
    pub schedule: Option<String>,
    pub jitter: Option<String>,
    pub listen: Option<String>,
    pub shutdown_deadline: Option<String>,
    pub lease_ttl: Option<String>,
}

/// Serve flags as parsed.
#[derive(Debug, Default, Clone)]
pub struct ServeOverrides {
    pub schedule: Option<String>,
    pub listen: Option<String>,
}

/// Everything `serve` needs, validated. Reads only local files (recipients, manifest).
///
/// # Errors
/// Any invalid value, naming its key.
#[allow(clippy::too_many_arguments)]
pub fn resolve_serve(
    file: &FileConfig,
    etcd: &EtcdOverrides,
    backup: &BackupOverrides,
    dest_flag: Option<&String>,
    s3: &S3Overrides,
    serve: &ServeOverrides,
) -> Result<crate::service::ServeSettings, ConfigError> {
    let schedule_raw = serve
        .schedule
        .clone()
        .or_else(|| file.serve.schedule.clone())
        .unwrap_or_else(|| "0 * * * *".into());
    let backups_off = schedule_raw.trim() == "off";
    let (schedule, interval) = if backups_off {
        ("off".to_string(), Duration::from_secs(3600))
    } else {
        crate::service::normalize_schedule(&schedule_raw)
            .map_err(|m| invalid("serve.schedule", m))?
    };
    let drill = resolve_drill_plan(file)?;
    if backups_off && drill.is_none() {
        return Err(invalid(
            "serve.schedule",
            "\"off\" takes no backups, and without [drill] schedule and identity_file there is nothing left to do",
        ));
    }
    let listen_raw = serve
        .listen
        .clone()
        .or_else(|| file.serve.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:9464".into());
    let listen = listen_raw.parse().map_err(|_| {
        invalid(
            "serve.listen",
            format!("`{listen_raw}` is not an address like 127.0.0.1:9464"),
        )
    })?;
    let default_jitter =
        if !backups_off && file.serve.schedule.is_none() && serve.schedule.is_none() {
            Duration::from_secs(300)
        } else {
            Duration::ZERO
        };
    let jitter = match file.serve.jitter.as_deref() {
        Some("0") | Some("0s") => Duration::ZERO,
        other => duration(
            "serve.jitter",
            other.map(String::from).as_ref(),
            default_jitter,
        )?,
    };
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
    Ok(crate::service::ServeSettings {
        schedule,
        interval,
        jitter,
        listen,
        shutdown_deadline: duration(
            "serve.shutdown_deadline",
            file.serve.shutdown_deadline.as_ref(),
            Duration::from_secs(120),
        )?,
        lease_ttl: duration(
            "serve.lease_ttl",
            file.serve.lease_ttl.as_ref(),
            Duration::from_secs(15),
        )?,
        etcd: resolve_etcd(&file.etcd, etcd)?.settings,
        store: resolve_store(&file.backup, &file.s3, dest_flag, s3)?,
        backup: if backups_off {
            None
        } else {
            Some(resolve_backup(&file.backup, backup, Reason::Scheduled)?)
        },
        retention: resolve_retention(&file.retention, &RetentionSection::default())?,
        drill,
    })
}

/// How drills run: flags (for `lifeboat drill`) over `[drill]`, then `[restore] etcdutl` and
/// `[backup] work_dir`.
///
/// # Errors
/// A bad `drill.start_timeout`.
pub fn resolve_drill_settings(
    file: &FileConfig,
    etcd: Option<&PathBuf>,
    tool: Option<&PathBuf>,
    work_dir: Option<&PathBuf>,
) -> Result<crate::drill::DrillSettings, ConfigError> {
    let d = &file.drill;
    Ok(crate::drill::DrillSettings {
        etcd: etcd
            .or(d.etcd.as_ref())
            .cloned()
            .unwrap_or_else(|| PathBuf::from("etcd")),
        tool: tool
            .or(d.etcdutl.as_ref())
            .or(file.restore.etcdutl.as_ref())
            .cloned(),
        work_dir: work_dir
            .or(d.work_dir.as_ref())
            .or(file.backup.work_dir.as_ref())
            .cloned()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_WORK_DIR)),
        start_timeout: duration(
            "drill.start_timeout",
            d.start_timeout.as_ref(),
            Duration::from_secs(60),
        )?,
    })
}

/// `[drill]` for `serve`: present only when a schedule is set, which then needs an identity
/// file that reads as one (checked now, read again at every drill).
fn resolve_drill_plan(file: &FileConfig) -> Result<Option<crate::service::DrillPlan>, ConfigError> {
    let d = &file.drill;
    let Some(raw) = &d.schedule else {
        return Ok(None);
    };
    let (schedule, _) =
        crate::service::normalize_schedule(raw).map_err(|m| invalid("drill.schedule", m))?;
    let identity_file = d.identity_file.clone().ok_or_else(|| {
        invalid(
            "drill.identity_file",
            "drills need the age identity (private key) that decrypts the backups",
        )
    })?;
    crate::stages::encrypt::Identities::from_file(&identity_file)
        .map_err(|e| invalid("drill.identity_file", e.to_string()))?;
    Ok(Some(crate::service::DrillPlan {
        schedule,
        identity_file,
        settings: resolve_drill_settings(file, None, None, None)?,
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    pub keep_last: Option<usize>,
    pub keep_hourly: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    pub manual_keep_days: Option<u32>,
    pub pre_upgrade_keep_days: Option<u32>,
    pub incomplete_grace: Option<String>,
}

/// Merges the retention policy: `flags` (the same keys, from the command line) > file > default.
///
/// # Errors
/// A bad grace period.
pub fn resolve_retention(
    file: &RetentionSection,
    o: &RetentionSection,
) -> Result<crate::retention::Policy, ConfigError> {
    let d = crate::retention::Policy::default();
    Ok(crate::retention::Policy {
        keep_last: o.keep_last.or(file.keep_last).unwrap_or(d.keep_last),
        keep_hourly: o.keep_hourly.or(file.keep_hourly).unwrap_or(d.keep_hourly),
        keep_daily: o.keep_daily.or(file.keep_daily).unwrap_or(d.keep_daily),
        keep_weekly: o.keep_weekly.or(file.keep_weekly).unwrap_or(d.keep_weekly),
        keep_monthly: o
            .keep_monthly
            .or(file.keep_monthly)
            .unwrap_or(d.keep_monthly),
        manual_keep_days: o
            .manual_keep_days
            .or(file.manual_keep_days)
            .unwrap_or(d.manual_keep_days),
        pre_upgrade_keep_days: o
            .pre_upgrade_keep_days
            .or(file.pre_upgrade_keep_days)
            .unwrap_or(d.pre_upgrade_keep_days),
        incomplete_grace: duration(
            "retention.incomplete_grace",
            o.incomplete_grace
                .as_ref()
                .or(file.incomplete_grace.as_ref()),
            d.incomplete_grace,
        )?,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    pub ca_bundle: Option<PathBuf>,
    pub access_key_file: Option<PathBuf>,
    pub secret_key_file: Option<PathBuf>,
    pub sse: Option<String>,
    pub kms_key_id: Option<String>,
    pub part_size_mib: Option<usize>,
    pub parts_in_flight: Option<usize>,
    pub request_timeout: Option<String>,
    pub max_attempts: Option<u32>,
    pub incomplete_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    pub endpoints: Option<Vec<String>>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub manifest: Option<PathBuf>,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub stall_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSection {
    pub dest: Option<String>,
    pub work_dir: Option<PathBuf>,
    pub compression_level: Option<i32>,
    pub encryption: Option<String>,
    pub recipients: Option<Vec<String>>,
    pub recipients_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("`{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Discovery(#[from] discovery::DiscoveryError),
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl FileConfig {
    /// Reads `path`; `required` says whether a missing file is an error (an explicit
    /// `--config`) or means "no file" (the default path).
    ///
    /// # Errors
    /// Unreadable file, TOML errors, unknown keys (each naming the key and line).
    pub fn load(path: &Path, required: bool) -> Result<FileConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(FileConfig::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: one_line(&e.to_string()),
        })
    }
}

/// toml's messages span several lines with a source excerpt; keep them to one.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^' || c == ' ')
        })
        .collect();
    lines.join(" ")
}

/// The connection flags as the CLI parsed them (flag or env), before merging.
#[derive(Debug, Default, Clone)]
pub struct EtcdOverrides {
    pub endpoints: Vec<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub manifest: Option<PathBuf>,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
}

/// The etcd connection after merging flags, env, file and kubeadm discovery.
#[derive(Debug, Clone)]
pub struct ResolvedEtcd {
    pub settings: EtcdSettings,
    /// Present on a kubeadm node: the manifest it was read from and what it said.
    pub kubeadm: Option<KubeadmEtcd>,
}

/// Merges the etcd connection settings and reads the kubeadm manifest when no endpoint was
/// given. Discovery fills only what flags, env and file left open.
///
/// # Errors
/// Bad durations, an unreadable manifest or password file, `--user` without password.
pub fn resolve_etcd(file: &EtcdSection, o: &EtcdOverrides) -> Result<ResolvedEtcd, ConfigError> {
    let manifest_path = o
        .manifest
        .clone()
        .or_else(|| file.manifest.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ETCD_MANIFEST));
    let kubeadm = discovery::discover(&manifest_path)?;
    let mut endpoints = if o.endpoints.is_empty() {
        file.endpoints.clone().unwrap_or_default()
    } else {
        o.endpoints.clone()
    };
    let explicit = !endpoints.is_empty();
    if !explicit {
        if let Some(k) = &kubeadm {
            endpoints = k.endpoints.iter().take(1).cloned().collect();
        }
    }
    let wants_tls_defaults = !explicit || endpoints.iter().any(|e| e.starts_with("https://"));
    let from_kubeadm = |f: fn(&KubeadmEtcd) -> Option<PathBuf>| {
        kubeadm.as_ref().filter(|_| wants_tls_defaults).and_then(f)
    };
    let password = match (&o.password, &file.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(path)) => Some(Secret::new(
            std::fs::read_to_string(path)
                .map_err(|e| invalid("etcd.password_file", format!("{}: {e}", path.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        )),
        (None, None) => None,
    };
    let user = o.user.clone().or_else(|| file.user.clone());
    if user.is_some() && password.is_none() {
        return Err(invalid(
            "etcd.user",
            "a user needs a password: --password, LIFEBOAT_PASSWORD or etcd.password_file",
        ));
    }
    let settings = EtcdSettings {
        endpoints,
        cacert: o
            .cacert
            .clone()
            .or_else(|| file.cacert.clone())
            .or_else(|| from_kubeadm(|k| k.cacert.clone())),
        cert: o
            .cert
            .clone()
            .or_else(|| file.cert.clone())
            .or_else(|| from_kubeadm(|k| k.cert.clone())),
        key: o
            .key
            .clone()
            .or_else(|| file.key.clone())
            .or_else(|| from_kubeadm(|k| k.key.clone())),
        user,
        password,
        connect_timeout: duration(
            "etcd.connect_timeout",
            o.connect_timeout.as_ref().or(file.connect_timeout.as_ref()),
            Duration::from_secs(5),
        )?,
        request_timeout: duration(
            "etcd.request_timeout",
            o.request_timeout.as_ref().or(file.request_timeout.as_ref()),
            Duration::from_secs(60),
        )?,
        stall_timeout: duration(
            "etcd.stall_timeout",
            file.stall_timeout.as_ref(),
            Duration::from_secs(60),
        )?,
    };
    Ok(ResolvedEtcd { settings, kubeadm })
}

fn duration(
    key: &'static str,
    value: Option<&String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => {
            let d = humantime::parse_duration(v).map_err(|e| {
                invalid(key, format!("`{v}` is not a duration like 5s or 2m ({e})"))
            })?;
            if d.is_zero() {
                return Err(invalid(key, "must be more than zero"));
            }
            Ok(d)
        }
    }
}

/// A duration setting: flag or file value, else `default`; zero is refused.
///
/// # Errors
/// Not a duration, naming `key`.
pub fn resolve_duration(
    key: &'static str,
    value: Option<&String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    duration(key, value, default)
}

/// Restore flags as parsed (flag or env).
#[derive(Debug, Default, Clone)]
pub struct RestoreOverrides {
    pub manifests_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub etcdutl: Option<PathBuf>,
    pub bump_revision: Option<u64>,
    pub stop_timeout: Option<String>,
    pub start_timeout: Option<String>,
    pub apiserver_timeout: Option<String>,
}

/// The restore settings after merging.
#[derive(Debug, Clone)]
pub struct ResolvedRestore {
    pub manifests_dir: PathBuf,
    pub state_dir: PathBuf,
    pub etcdutl: Option<PathBuf>,
    pub bump_revision: Option<u64>,
    pub stop_timeout: Duration,
    pub start_timeout: Duration,
    pub apiserver_timeout: Duration,
}

/// # Errors
/// A bad duration, naming its key.
pub fn resolve_restore(
    file: &RestoreSection,
    o: &RestoreOverrides,
) -> Result<ResolvedRestore, ConfigError> {
    Ok(ResolvedRestore {
        manifests_dir: o
            .manifests_dir
            .clone()
            .or_else(|| file.manifests_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MANIFESTS_DIR)),
        state_dir: o
            .state_dir
            .clone()
            .or_else(|| file.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        etcdutl: o.etcdutl.clone().or_else(|| file.etcdutl.clone()),
        bump_revision: o.bump_revision.or(file.bump_revision),
        // kubelet notices a removed manifest within its file-check period (20 s) and then
        // gives the pod its grace period (30 s by default).
        stop_timeout: duration(
            "restore.stop_timeout",
            o.stop_timeout.as_ref().or(file.stop_timeout.as_ref()),
            Duration::from_secs(120),
        )?,
        start_timeout: duration(
            "restore.start_timeout",
            o.start_timeout.as_ref().or(file.start_timeout.as_ref()),
            Duration::from_secs(300),
        )?,
        apiserver_timeout: duration(
            "restore.apiserver_timeout",
            o.apiserver_timeout
                .as_ref()
                .or(file.apiserver_timeout.as_ref()),
            Duration::from_secs(180),
        )?,
    })
}

/// Backup flags as parsed (flag or env).
#[derive(Debug, Default, Clone)]
pub struct BackupOverrides {
    pub work_dir: Option<PathBuf>,
    pub compression_level: Option<i32>,
    pub recipients: Vec<String>,
    pub recipients_file: Option<PathBuf>,
}

/// Where backups go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

/// S3 flags as parsed (flag or env).
#[derive(Debug, Default, Clone)]
pub struct S3Overrides {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
}

/// A destination with everything needed to open its store.
#[derive(Debug, Clone)]
pub enum StoreSpec {
    Local(PathBuf),
    S3(Box<crate::store::S3Settings>),
}

/// Merges the destination and, for `s3://`, the S3 settings.
///
/// # Errors
/// A missing or malformed destination, or a bad `[s3]` value (naming the key).
pub fn resolve_store(
    backup: &BackupSection,
    s3: &S3Section,
    dest_flag: Option<&String>,
    o: &S3Overrides,
) -> Result<StoreSpec, ConfigError> {
    match resolve_dest(backup, dest_flag)? {
        Dest::Local(p) => Ok(StoreSpec::Local(p)),
        Dest::S3 { bucket, prefix } => {
            let mut st = crate::store::S3Settings::new(&bucket, &prefix);
            st.endpoint = o.endpoint.clone().or_else(|| s3.endpoint.clone());
            st.region = o.region.clone().or_else(|| s3.region.clone());
            st.path_style = o.path_style || s3.path_style.unwrap_or(false);
            st.ca_bundle = s3.ca_bundle.clone();
            st.access_key_file = s3.access_key_file.clone();
            st.secret_key_file = s3.secret_key_file.clone();
            if st.access_key_file.is_some() != st.secret_key_file.is_some() {
                return Err(invalid(
                    "s3.access_key_file",
                    "s3.access_key_file and s3.secret_key_file go together",
                ));
            }
            st.sse = match (s3.sse.as_deref(), &s3.kms_key_id) {
                (None, None) => None,
                (Some("AES256"), None) => Some(crate::store::Sse::Aes256),
                (Some("aws:kms"), Some(id)) => Some(crate::store::Sse::Kms(id.clone())),
                (Some("aws:kms"), None) => {
                    return Err(invalid(
                        "s3.kms_key_id",
                        "sse = \"aws:kms\" needs kms_key_id",
                    ))
                }
                (None, Some(_)) => {
                    return Err(invalid("s3.sse", "kms_key_id needs sse = \"aws:kms\""))
                }
                (Some(other), _) => {
                    return Err(invalid(
                        "s3.sse",
                        format!("`{other}` is not one of AES256, aws:kms"),
                    ))
                }
            };
            if let Some(mib) = s3.part_size_mib {
                if !(5..=5120).contains(&mib) {
                    return Err(invalid(
                        "s3.part_size_mib",
                        format!("{mib} is outside 5..=5120"),
                    ));
                }
                st.part_size = mib * 1024 * 1024;
            }
            if let Some(n) = s3.parts_in_flight {
                if !(1..=16).contains(&n) {
                    return Err(invalid(
                        "s3.parts_in_flight",
                        format!("{n} is outside 1..=16"),
                    ));
                }
                st.parts_in_flight = n;
            }
            if let Some(n) = s3.max_attempts {
                if !(1..=20).contains(&n) {
                    return Err(invalid("s3.max_attempts", format!("{n} is outside 1..=20")));
                }
                st.max_attempts = n;
            }
            st.attempt_timeout = duration(
                "s3.request_timeout",
                s3.request_timeout.as_ref(),
                st.attempt_timeout,
            )?;
            st.incomplete_grace = duration(
                "s3.incomplete_grace",
                s3.incomplete_grace.as_ref(),
                st.incomplete_grace,
            )?;
            Ok(StoreSpec::S3(Box::new(st)))
        }
    }
}

/// Parses a destination.
///
/// # Errors
/// Missing, or a scheme this build does not support.
pub fn resolve_dest(file: &BackupSection, flag: Option<&String>) -> Result<Dest, ConfigError> {
    let raw = flag.or(file.dest.as_ref()).ok_or_else(|| {
        invalid(
            "backup.dest",
            "no destination: pass --dest DIR or set backup.dest",
        )
    })?;
    parse_dest(raw)
}

fn parse_dest(raw: &str) -> Result<Dest, ConfigError> {
    if let Some(rest) = raw.strip_prefix("file://") {
        return Ok(Dest::Local(PathBuf::from(rest)));
    }
    if let Some(rest) = raw.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid(
                "backup.dest",
                format!("`{raw}` names no bucket (s3://BUCKET/PREFIX)"),
            ));
        }
        return Ok(Dest::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        });
    }
    if raw.contains("://") {
        return Err(invalid(
            "backup.dest",
            format!("`{raw}`: use a folder path or s3://BUCKET/PREFIX"),
        ));
    }
    if raw.is_empty() {
        return Err(invalid("backup.dest", "is empty"));
    }
    Ok(Dest::Local(PathBuf::from(raw)))
}

/// Merges and validates everything a backup run needs.
///
/// # Errors
/// A bad level, encryption mode, recipient or recipients file.
pub fn resolve_backup(
    file: &BackupSection,
    o: &BackupOverrides,
    reason: Reason,
) -> Result<BackupSettings, ConfigError> {
    let level = o
        .compression_level
        .or(file.compression_level)
        .unwrap_or(compress::DEFAULT_LEVEL);
    if !compress::valid_level(level) {
        return Err(invalid(
            "backup.compression_level",
            format!("{level} is outside 1..=19"),
        ));
    }
    let encryption = file.encryption.as_deref().unwrap_or("age");
    let recipients = match encryption {
        "age" => {
            let mut r = Recipients::parse("--recipient", o.recipients.iter().map(String::as_str))?;
            if o.recipients.is_empty() {
                r.extend(Recipients::parse(
                    "backup.recipients",
                    file.recipients.iter().flatten().map(String::as_str),
                )?);
            }
            if let Some(path) = o.recipients_file.as_ref().or(file.recipients_file.as_ref()) {
                r.extend(Recipients::from_file(path)?);
            }
            if r.is_empty() {
                return Err(invalid(
                    "backup.recipients",
                    "backups are encrypted and no age recipient is configured: pass --recipient age1… (or --recipients-file), or set encryption = \"none\" explicitly",
                ));
            }
            Some(r)
        }
        "none" => None,
        other => {
            return Err(invalid(
                "backup.encryption",
                format!("`{other}` is not one of age, none"),
            ))
        }
    };
    Ok(BackupSettings {
        work_dir: o
            .work_dir
            .clone()
            .or_else(|| file.work_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_WORK_DIR)),
        compression_level: level,
        recipients,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_with_their_name_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[backup]\ncompresion_level = 3\n").unwrap();
        let msg = FileConfig::load(&p, true).unwrap_err().to_string();
        assert!(msg.contains("compresion_level"), "{msg}");
        assert_eq!(msg.lines().count(), 1, "{msg}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[backup]\ncompression_level = \"high\"\n").unwrap();
        let msg = FileConfig::load(&p, true).unwrap_err().to_string();
        assert!(msg.contains("compression_level"), "{msg}");
    }

    #[test]
    fn a_missing_default_config_is_fine_but_an_explicit_one_is_not() {
        let p = Path::new("/nonexistent/lifeboat.toml");
        assert!(FileConfig::load(p, false).is_ok());
        assert!(FileConfig::load(p, true).is_err());
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = BackupSection {
            compression_level: Some(9),
            encryption: Some("none".into()),
            ..Default::default()
        };
        let o = BackupOverrides {
            compression_level: Some(5),
            ..Default::default()
        };
        let s = resolve_backup(&file, &o, Reason::Manual).unwrap();
        assert_eq!(s.compression_level, 5);
        assert!(s.recipients.is_none());
    }

    #[test]
    fn encryption_without_recipients_is_refused_naming_the_key() {
        let err = resolve_backup(
            &BackupSection::default(),
            &BackupOverrides::default(),
            Reason::Manual,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("backup.recipients"), "{err}");
    }

    #[test]
    fn bad_levels_and_modes_name_their_key() {
        let file = BackupSection {
            compression_level: Some(42),
            ..Default::default()
        };
        let err = resolve_backup(&file, &BackupOverrides::default(), Reason::Manual)
            .err()
            .unwrap();
        assert!(err.to_string().contains("backup.compression_level"));
        let file = BackupSection {
            encryption: Some("rot13".into()),
            ..Default::default()
        };
        let err = resolve_backup(&file, &BackupOverrides::default(), Reason::Manual)
            .err()
            .unwrap();
        assert!(err.to_string().contains("backup.encryption"));
    }

    #[test]
    fn durations_are_parsed_and_bad_ones_named() {
        let file = EtcdSection {
            connect_timeout: Some("soon".into()),
            manifest: Some(PathBuf::from("/nonexistent/etcd.yaml")),
            ..Default::default()
        };
        let err = resolve_etcd(&file, &EtcdOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("etcd.connect_timeout"), "{err}");
    }

    /// Every key the example documents exists (the example uncommented parses with
    /// unknown keys refused), so the example cannot drift from the code.
    #[test]
    fn the_example_config_documents_only_real_keys() {
        let example = include_str!("../config/lifeboat.example.toml");
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let parsed: FileConfig = toml::from_str(&uncommented).unwrap();
        assert_eq!(parsed.backup.compression_level, Some(3));
        assert!(parsed.etcd.endpoints.is_some() && parsed.log.level.is_some());
        assert!(parsed.backup.recipients.is_some() && parsed.etcd.stall_timeout.is_some());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn destinations_parse() {
        assert_eq!(
            parse_dest("s3://bucket/some/prefix/").unwrap(),
            Dest::S3 {
                bucket: "bucket".into(),
                prefix: "some/prefix".into()
            }
        );
        assert_eq!(
            parse_dest("s3://bucket").unwrap(),
            Dest::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            }
        );
        assert!(parse_dest("s3:///x").is_err());
        assert!(parse_dest("gs://x").is_err());
        assert_eq!(
            parse_dest("/backups").unwrap(),
            Dest::Local("/backups".into())
        );
    }

    #[test]
    fn s3_values_are_validated_naming_the_key() {
        let backup = BackupSection {
            dest: Some("s3://b/p".into()),
            ..Default::default()
        };
        let bad = |s3: S3Section| {
            resolve_store(&backup, &s3, None, &S3Overrides::default())
                .err()
                .unwrap()
                .to_string()
        };
        let sse = |v: &str| S3Section {
            sse: Some(v.into()),
            ..Default::default()
        };
        assert!(bad(sse("rot13")).contains("s3.sse"));
        assert!(bad(sse("aws:kms")).contains("s3.kms_key_id"));
        assert!(bad(S3Section {
            part_size_mib: Some(1),
            ..Default::default()
        })
        .contains("s3.part_size_mib"));
        assert!(bad(S3Section {
            access_key_file: Some("/a".into()),
            ..Default::default()
        })
        .contains("s3.access_key_file"));
        let flags = S3Overrides {
            path_style: true,
            ..Default::default()
        };
        match resolve_store(&backup, &S3Section::default(), None, &flags).unwrap() {
            StoreSpec::S3(s) => assert!(s.path_style && s.prefix == "p/"),
            StoreSpec::Local(_) => panic!("s3 expected"),
        }
    }
}
