//! `[[copy]]`: the stores `serve` copies every committed backup and journal segment to, and
//! where readers turn when the primary cannot be reached (#28). Each is its own store — its
//! own S3 endpoint, region, credentials and Object Lock — with its own retention; a retention
//! key left out is `[retention]`'s (`continuous.keep` likewise).

use std::path::PathBuf;

use serde::Deserialize;

use super::store::s3_settings;
use super::{
    invalid, resolve_retention, ConfigError, ContinuousSection, RetentionSection, S3Section,
};
use crate::retention::Policy;
use crate::store::{self, Dest, Spec};

/// One `[[copy]]` table (or `serve --copy-to DEST`, which has only `dest`).
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CopySection {
    /// A folder (an NFS mount, …) or `s3://BUCKET/PREFIX`.
    pub dest: String,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_path_style: Option<bool>,
    pub s3_ca_bundle: Option<PathBuf>,
    pub access_key_file: Option<PathBuf>,
    pub secret_key_file: Option<PathBuf>,
    pub sse: Option<String>,
    pub kms_key_id: Option<String>,
    pub lock_mode: Option<String>,
    pub lock_period: Option<String>,
    pub keep_last: Option<usize>,
    pub keep_hourly: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    pub manual_keep_days: Option<u32>,
    pub pre_upgrade_keep_days: Option<u32>,
    pub continuous: Option<CopyJournal>,
    /// Set by `--copy-to`, never in the file: the primary's `[s3]` connection applies.
    #[serde(skip)]
    pub from_flag: bool,
}

/// `continuous.keep` of a copy.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CopyJournal {
    pub keep: Option<String>,
}

/// A copy target, resolved.
#[derive(Debug, Clone)]
pub struct CopyTarget {
    /// The destination as configured.
    pub dest: String,
    pub spec: Spec,
    pub retention: Policy,
}

impl CopySection {
    /// A target given on the command line: a destination and nothing else.
    pub fn from_flag(dest: &str) -> CopySection {
        CopySection {
            dest: dest.to_string(),
            from_flag: true,
            ..CopySection::default()
        }
    }

    /// Its connection as an `[s3]` section: its own keys, or — for `--copy-to` — the
    /// primary's connection without its lock.
    fn s3(&self, primary: &S3Section) -> S3Section {
        if self.from_flag {
            return S3Section {
                lock_mode: None,
                lock_period: None,
                ..primary.clone()
            };
        }
        S3Section {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            path_style: self.s3_path_style,
            ca_bundle: self.s3_ca_bundle.clone(),
            access_key_file: self.access_key_file.clone(),
            secret_key_file: self.secret_key_file.clone(),
            sse: self.sse.clone(),
            kms_key_id: self.kms_key_id.clone(),
            lock_mode: self.lock_mode.clone(),
            lock_period: self.lock_period.clone(),
            ..S3Section::default()
        }
    }

    fn retention(&self, primary: &RetentionSection) -> RetentionSection {
        RetentionSection {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            manual_keep_days: self.manual_keep_days,
            pre_upgrade_keep_days: self.pre_upgrade_keep_days,
            incomplete_grace: None,
        }
        .overlay(primary.clone())
    }
}

/// The store a destination names, with the S3 settings of `s3`.
///
/// # Errors
/// A malformed destination or S3 value (naming `key`).
pub fn resolve_spec(key: &'static str, dest: &str, s3: &S3Section) -> Result<Spec, ConfigError> {
    match store::parse_dest(dest).map_err(|e| invalid(key, e.to_string()))? {
        Dest::Local(p) => {
            if s3.lock_mode.is_some() {
                return Err(invalid(
                    "copy.lock_mode",
                    format!("{dest}: Object Lock needs an s3:// destination; a folder cannot lock its files"),
                ));
            }
            Ok(Spec::Local(p))
        }
        Dest::S3 { bucket, prefix } => Ok(Spec::S3(Box::new(s3_settings(&bucket, &prefix, s3)?))),
    }
}

/// Every copy target: the file's `[[copy]]` tables, then `--copy-to`'s.
///
/// # Errors
/// A bad value of any of them, naming its key; a copy that is the primary itself.
pub fn resolve_copies(c: &super::FileConfig) -> Result<Vec<CopyTarget>, ConfigError> {
    let mut out = Vec::new();
    for copy in &c.copy {
        if c.backup.dest.as_deref() == Some(copy.dest.as_str()) {
            return Err(invalid(
                "copy.dest",
                format!("{} is the primary destination itself: a copy belongs in another failure domain (another bucket, account, region or site)", copy.dest),
            ));
        }
        let journal = ContinuousSection {
            keep: copy
                .continuous
                .as_ref()
                .and_then(|j| j.keep.clone())
                .or_else(|| c.continuous.keep.clone()),
            ..ContinuousSection::default()
        };
        out.push(CopyTarget {
            dest: copy.dest.clone(),
            spec: resolve_spec("copy.dest", &copy.dest, &copy.s3(&c.s3))?,
            retention: resolve_retention(&copy.retention(&c.retention), &journal)?,
        });
    }
    Ok(out)
}

/// Where a reader turns when the primary cannot be reached: `--fallback-dest` (with the
/// settings of the `[[copy]]` of that destination, else the primary's `[s3]`), else the
/// first `[[copy]]`; `None` without either.
///
/// # Errors
/// A bad value, naming its key.
pub fn resolve_fallback(c: &super::FileConfig) -> Result<Option<Spec>, ConfigError> {
    match &c.backup.fallback_dest {
        Some(dest) => resolve_spec("backup.fallback_dest", dest, &connection_of(c, dest)).map(Some),
        None => match c.copy.first() {
            Some(copy) => resolve_spec("copy.dest", &copy.dest, &copy.s3(&c.s3)).map(Some),
            None => Ok(None),
        },
    }
}

/// How to reach `dest`: the `[[copy]]` of that destination if the file has one, else the
/// primary's S3 connection without its lock.
fn connection_of(c: &super::FileConfig, dest: &str) -> S3Section {
    c.copy.iter().find(|copy| copy.dest == dest).map_or_else(
        || CopySection::from_flag(dest).s3(&c.s3),
        |copy| copy.s3(&c.s3),
    )
}

/// The target of `lifeboat copy --to DEST`: the `[[copy]]` of that destination if the file
/// has one, else the primary's S3 connection without its lock; `flags` (the --to-s3-* flags)
/// override either.
///
/// # Errors
/// A bad value, naming its key.
pub fn resolve_copy_to(
    c: &super::FileConfig,
    dest: &str,
    flags: S3Section,
) -> Result<Spec, ConfigError> {
    if c.backup.dest.as_deref() == Some(dest) {
        return Err(invalid(
            "copy.dest",
            format!("--to {dest} is the store copied from (--dest)"),
        ));
    }
    resolve_spec("copy.dest", dest, &flags.overlay(connection_of(c, dest)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;

    fn config(toml: &str) -> FileConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        FileConfig::load(&path, true).unwrap()
    }

    #[test]
    fn copies_have_their_own_store_and_retention_and_inherit_what_they_leave_out() {
        let c = config(
            r#"
            [backup]
            dest = "s3://primary/etcd"
            [s3]
            endpoint = "https://s3.eu-central-1.amazonaws.com"
            [retention]
            keep_last = 5
            keep_daily = 9
            [continuous]
            keep = "24h"

            [[copy]]
            dest = "s3://dr/etcd"
            s3_endpoint = "https://s3.us-west-2.amazonaws.com"
            s3_region = "us-west-2"
            lock_mode = "compliance"
            lock_period = "90d"
            keep_daily = 30
            continuous.keep = "7d"

            [[copy]]
            dest = "/mnt/nfs/etcd"
            "#,
        );
        let copies = resolve_copies(&c).unwrap();
        assert_eq!(copies.len(), 2);
        match &copies[0].spec {
            Spec::S3(s) => {
                assert_eq!(s.bucket, "dr");
                assert_eq!(
                    s.endpoint.as_deref(),
                    Some("https://s3.us-west-2.amazonaws.com")
                );
                assert!(s.lock.is_some());
            }
            Spec::Local(_) => panic!("s3 expected"),
        }
        assert_eq!(copies[0].retention.keep_daily, 30);
        assert_eq!(
            copies[0].retention.keep_last, 5,
            "inherited from [retention]"
        );
        assert_eq!(copies[0].retention.journal_keep.as_secs(), 7 * 86400);
        assert_eq!(copies[1].retention.journal_keep.as_secs(), 86400);
        assert!(matches!(copies[1].spec, Spec::Local(_)));
        match resolve_fallback(&c).unwrap() {
            Some(Spec::S3(s)) => assert_eq!(s.bucket, "dr"),
            other => panic!("the first copy is the fallback, got {other:?}"),
        }
    }

    #[test]
    fn bad_copies_name_the_key() {
        let err = |toml: &str| resolve_copies(&config(toml)).unwrap_err().to_string();
        assert!(
            err("[[copy]]\ndest = \"/x\"\nlock_mode = \"compliance\"\nlock_period = \"1d\"\n")
                .contains("copy.lock_mode")
        );
        assert!(err(
            "[[copy]]\ndest = \"s3://b\"\nlock_mode = \"forever\"\nlock_period = \"1d\"\n"
        )
        .contains("s3.lock_mode"));
        assert!(err("[[copy]]\ndest = \"gs://b\"\n").contains("copy.dest"));
        assert!(err("[backup]\ndest = \"/b\"\n[[copy]]\ndest = \"/b\"\n").contains("copy.dest"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[[copy]]\ndest = \"/x\"\nkeep_forever = 1\n").unwrap();
        let unknown = FileConfig::load(&path, true).unwrap_err().to_string();
        assert!(unknown.contains("keep_forever"), "{unknown}");
    }
}
