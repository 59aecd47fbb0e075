//! Configuration: one TOML file, `LIFEBOAT_*` environment variables and flags; flags win,
//! then env, then the file, then defaults. The example with every key:
//! config/lifeboat.example.toml.
//!
//! Each setting is defined once: a section struct (`[etcd]` → [`EtcdSection`], …) is both the
//! serde shape of the file and, flattened into a command, its clap flags (with the `env` each
//! flag reads). The CLI layers what clap parsed (flag > env) over what the file says with
//! [`FileConfig::overlay`] — that is the only merge — and then one `resolve_*` function per
//! section applies the defaults and validates, naming the key of a bad value in one line.

mod continuous;
mod copy;
mod drill;
mod etcd;
mod maintenance;
mod node;
mod restore;
mod retention;
mod serve;
mod shadow;
mod store;
mod trust;
mod upgrade;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use continuous::{resolve_continuous, ContinuousSection};
pub use copy::{
    resolve_copies, resolve_copy_to, resolve_fallback, resolve_spec, CopyJournal, CopySection,
    CopyTarget,
};
pub use drill::{resolve_drill, DrillSection};
pub use etcd::{resolve_etcd, EtcdSection, ResolvedEtcd};
pub use maintenance::{resolve_maintenance, MaintenanceSection, ResolvedMaintenance};
pub use node::{resolve_kit, resolve_node, NodeSection, DEFAULT_KUBERNETES_DIR};
pub use restore::{resolve_restore, state_dir, ResolvedRestore, RestoreSection};
pub use retention::{resolve_retention, RetentionSection};
pub use serve::{resolve_serve, ServeSection};
pub use shadow::{resolve_shadow, ShadowSection};
pub use store::{resolve_backup, resolve_store, BackupSection, S3Section};
pub use trust::{
    resolve_read_policy, resolve_read_policy_as, resolve_signer, KeyEntry, TrustSection,
};
pub use upgrade::{resolve_upgrade, ResolvedUpgrade, UpgradeSection};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/etcd-lifeboat/lifeboat.toml";
pub const DEFAULT_WORK_DIR: &str = "/var/lib/etcd-lifeboat/work";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/etcd-lifeboat";

/// Declares a section whose keys are all optional, plus `overlay`, which keeps every key set
/// in `self` and takes the rest from `lower` — the one merge rule (flag > env > file).
macro_rules! section {
    ($(#[$meta:meta])* pub struct $name:ident {
        $($(#[$fmeta:meta])* pub $field:ident : Option<$ty:ty>,)*
    }) => {
        $(#[$meta])*
        pub struct $name {
            $($(#[$fmeta])* pub $field: Option<$ty>,)*
        }

        impl $name {
            /// Every key set here wins; the others come from `lower`.
            #[must_use]
            pub fn overlay(self, lower: $name) -> $name {
                $name { $($field: self.$field.or(lower.$field),)* }
            }
        }
    };
}
pub(crate) use section;

#[derive(Debug, Default, Clone, Deserialize)]
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
    #[serde(default)]
    pub node: NodeSection,
    #[serde(default)]
    pub trust: TrustSection,
    #[serde(default)]
    pub continuous: ContinuousSection,
    #[serde(default)]
    pub shadow: ShadowSection,
    #[serde(default)]
    pub maintenance: MaintenanceSection,
    /// `[[copy]]`: second copies (#28).
    #[serde(default)]
    pub copy: Vec<CopySection>,
}

section! {
    /// `[log]`: format and level (flags `--log-format`, `--log-level` are global).
    #[derive(Debug, Default, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct LogSection {
        pub format: Option<String>,
        pub level: Option<String>,
    }
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
    Key(#[from] crate::stages::encrypt::KeyError),
    #[error(transparent)]
    Discovery(#[from] crate::etcd::discovery::DiscoveryError),
}

pub(crate) fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
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

    /// This config with every key set in `flags` (what clap parsed: flag or env) replacing
    /// the file's.
    #[must_use]
    pub fn overlay(self, flags: FileConfig) -> FileConfig {
        FileConfig {
            etcd: flags.etcd.overlay(self.etcd),
            backup: flags.backup.overlay(self.backup),
            log: flags.log.overlay(self.log),
            s3: flags.s3.overlay(self.s3),
            retention: flags.retention.overlay(self.retention),
            serve: flags.serve.overlay(self.serve),
            restore: flags.restore.overlay(self.restore),
            drill: flags.drill.overlay(self.drill),
            upgrade: flags.upgrade.overlay(self.upgrade),
            node: flags.node.overlay(self.node),
            trust: flags.trust.overlay(self.trust),
            continuous: flags.continuous.overlay(self.continuous),
            shadow: flags.shadow.overlay(self.shadow),
            maintenance: flags.maintenance.overlay(self.maintenance),
            // `--copy-to` adds to the file's copies.
            copy: [self.copy, flags.copy].concat(),
        }
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

/// A size setting in bytes, with a unit (`100MiB`, `1.5GB`, `4096`).
///
/// # Errors
/// Not a number with a known unit, naming `key`.
pub fn size(key: &'static str, v: &str) -> Result<u64, ConfigError> {
    let t = v.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(invalid(
                key,
                format!("`{v}`: unknown unit `{other}`; use a size like 20MiB"),
            ))
        }
    };
    let n: f64 = number
        .parse()
        .map_err(|_| invalid(key, format!("`{v}` is not a size like 20MiB")))?;
    Ok((n * scale) as u64)
}

/// A duration setting: the value, else `default`; zero is refused.
///
/// # Errors
/// Not a duration like `5s`, naming `key`.
pub fn duration(
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
    fn flags_overlay_the_file_key_by_key() {
        let file = FileConfig {
            backup: BackupSection {
                compression_level: Some(9),
                encryption: Some("none".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let flags = FileConfig {
            backup: BackupSection {
                compression_level: Some(5),
                ..Default::default()
            },
            ..Default::default()
        };
        let merged = file.overlay(flags);
        assert_eq!(merged.backup.compression_level, Some(5));
        assert_eq!(merged.backup.encryption.as_deref(), Some("none"));
    }

    #[test]
    fn durations_must_be_durations_and_more_than_zero() {
        let d = |v: &str| duration("k", Some(&v.to_string()), Duration::ZERO);
        assert_eq!(d("2m").unwrap(), Duration::from_secs(120));
        assert!(d("soon").unwrap_err().to_string().contains("`k`"));
        assert!(d("0s").is_err());
        assert_eq!(
            duration("k", None, Duration::from_secs(3)).unwrap(),
            Duration::from_secs(3)
        );
    }

    /// Every key the example documents exists (the example uncommented parses with
    /// unknown keys refused), so the example cannot drift from the code.
    #[test]
    fn the_example_config_documents_only_real_keys() {
        let example = include_str!("../../config/lifeboat.example.toml");
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                Some(rest) if rest.starts_with("[[") => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let parsed: FileConfig = toml::from_str(&uncommented).unwrap();
        assert_eq!(parsed.backup.compression_level, Some(1));
        assert_eq!(parsed.backup.max_rate.as_deref(), Some("50MiB"));
        assert!(parsed.etcd.endpoints.is_some() && parsed.log.level.is_some());
        assert!(parsed.backup.recipients.is_some() && parsed.etcd.stall_timeout.is_some());
        assert_eq!(parsed.trust.keys.map(|k| k.len()), Some(1));
        assert_eq!(parsed.copy.len(), 1);
        assert_eq!(
            parsed.copy[0]
                .continuous
                .as_ref()
                .and_then(|c| c.keep.as_deref()),
            Some("168h")
        );
    }
}
