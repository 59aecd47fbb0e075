//! `[backup]` and `[s3]`: where backups go and how they are written. `--dest` and the S3 flags
//! are on every command that opens the store; the writing flags (`--recipient`,
//! `--compression-level`, `--work-dir`) on the commands that take backups.

use std::path::PathBuf;

use serde::Deserialize;

use super::{duration, invalid, section, ConfigError, TrustSection};
use crate::backup::BackupSettings;
use crate::catalog::Reason;
use crate::stages::compress;
use crate::stages::encrypt::Recipients;
use crate::store::{self, Dest, LockMode, ObjectLock, S3Settings, Spec, Sse};

section! {
    /// `[backup]`. `dest` is set by `--dest` (see `DestArgs` in the CLI), `encryption` only here.
    #[derive(clap::Args, Debug, Default, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct BackupSection {
        #[arg(skip)]
        pub dest: Option<String>,
        /// Where readers turn when `dest` cannot be reached (`--fallback-dest`; default: the
        /// first `[[copy]]`).
        #[arg(skip)]
        pub fallback_dest: Option<String>,
        /// Scratch folder of drills and point-in-time restores (their sandbox etcd, `[drill]
        /// work_dir` unless set); backups themselves write nothing there.
        #[arg(long, env = "LIFEBOAT_WORK_DIR", value_name = "DIR")]
        pub work_dir: Option<PathBuf>,
        /// zstd level, 1–19.
        #[arg(long, env = "LIFEBOAT_COMPRESSION_LEVEL", value_name = "N")]
        pub compression_level: Option<i32>,
        /// Most snapshot bytes per second read from etcd (e.g. 20MiB); default: no limit.
        #[arg(long, env = "LIFEBOAT_MAX_RATE", value_name = "BYTES_PER_S")]
        pub max_rate: Option<String>,
        #[arg(skip)]
        pub encryption: Option<String>,
        /// Age recipient (public key age1…); repeatable.
        #[arg(long = "recipient", short = 'r', env = "LIFEBOAT_RECIPIENTS", value_delimiter = ',', value_name = "AGE1…")]
        pub recipients: Option<Vec<String>>,
        /// File with one age recipient per line.
        #[arg(long, env = "LIFEBOAT_RECIPIENTS_FILE", value_name = "FILE")]
        pub recipients_file: Option<PathBuf>,
    }
}

section! {
    /// `[s3]`: used when `backup.dest` is `s3://BUCKET/PREFIX`.
    #[derive(clap::Args, Debug, Default, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct S3Section {
        /// S3 endpoint for MinIO, Ceph, SeaweedFS, R2 … (default: AWS).
        #[arg(long = "s3-endpoint", env = "LIFEBOAT_S3_ENDPOINT", value_name = "URL")]
        pub endpoint: Option<String>,
        /// S3 region (default: from the AWS config, else us-east-1).
        #[arg(long = "s3-region", env = "LIFEBOAT_S3_REGION", value_name = "REGION")]
        pub region: Option<String>,
        /// Path-style addressing (http://host/bucket/key), as most self-hosted S3 servers need.
        #[arg(
            long = "s3-path-style",
            env = "LIFEBOAT_S3_PATH_STYLE",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            value_parser = clap::builder::FalseyValueParser::new()
        )]
        pub path_style: Option<bool>,
        #[arg(skip)]
        pub ca_bundle: Option<PathBuf>,
        #[arg(skip)]
        pub access_key_file: Option<PathBuf>,
        #[arg(skip)]
        pub secret_key_file: Option<PathBuf>,
        #[arg(skip)]
        pub sse: Option<String>,
        #[arg(skip)]
        pub kms_key_id: Option<String>,
        /// S3 Object Lock for every object written: `governance` or `compliance` (the bucket
        /// must have Object Lock enabled); needs --s3-lock-period.
        #[arg(long = "s3-lock-mode", env = "LIFEBOAT_S3_LOCK_MODE", value_name = "MODE")]
        pub lock_mode: Option<String>,
        /// How long each object stays locked after its upload (e.g. 30d).
        #[arg(long = "s3-lock-period", env = "LIFEBOAT_S3_LOCK_PERIOD", value_name = "DURATION")]
        pub lock_period: Option<String>,
        #[arg(skip)]
        pub part_size_mib: Option<usize>,
        #[arg(skip)]
        pub parts_in_flight: Option<usize>,
        #[arg(skip)]
        pub request_timeout: Option<String>,
        #[arg(skip)]
        pub max_attempts: Option<u32>,
        #[arg(skip)]
        pub incomplete_grace: Option<String>,
    }
}

/// The destination and, for `s3://`, the S3 settings.
///
/// # Errors
/// A missing or malformed destination, or a bad `[s3]` value (naming the key).
pub fn resolve_store(backup: &BackupSection, s3: &S3Section) -> Result<Spec, ConfigError> {
    let raw = backup.dest.as_ref().ok_or_else(|| {
        invalid(
            "backup.dest",
            "no destination: pass --dest DIR or set backup.dest",
        )
    })?;
    match store::parse_dest(raw).map_err(|e| invalid("backup.dest", e.to_string()))? {
        Dest::Local(p) => {
            if s3.lock_mode.is_some() {
                return Err(invalid(
                    "s3.lock_mode",
                    "Object Lock needs an s3:// destination; a folder cannot lock its files",
                ));
            }
            Ok(Spec::Local(p))
        }
        Dest::S3 { bucket, prefix } => Ok(Spec::S3(Box::new(s3_settings(&bucket, &prefix, s3)?))),
    }
}

/// An `http://` endpoint whose host is not this machine's loopback (#21).
fn plain_http_off_this_machine(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !loopback
}

pub(super) fn s3_settings(
    bucket: &str,
    prefix: &str,
    s3: &S3Section,
) -> Result<S3Settings, ConfigError> {
    let mut st = S3Settings::new(bucket, prefix);
    st.endpoint = s3.endpoint.clone();
    if let Some(e) = s3
        .endpoint
        .as_deref()
        .filter(|e| plain_http_off_this_machine(e))
    {
        tracing::warn!(endpoint = %e, "the S3 endpoint is plain http: backups are encrypted, but the credentials' signatures, object names and sizes cross the network in clear and a man in the middle can refuse or replay writes; use https:// (s3.ca_bundle for a private CA)");
    }
    st.region = s3.region.clone();
    st.path_style = s3.path_style.unwrap_or(false);
    st.ca_bundle = s3.ca_bundle.clone();
    st.access_key_file = s3.access_key_file.clone();
    st.secret_key_file = s3.secret_key_file.clone();
    if st.access_key_file.is_some() != st.secret_key_file.is_some() {
        return Err(invalid(
            "s3.access_key_file",
            "s3.access_key_file and s3.secret_key_file go together",
        ));
    }
    st.sse = sse(s3)?;
    st.lock = object_lock(s3)?;
    if let Some(mib) = s3.part_size_mib {
        st.part_size = in_range("s3.part_size_mib", mib, 5, 5120)? * 1024 * 1024;
    }
    if let Some(n) = s3.parts_in_flight {
        st.parts_in_flight = in_range("s3.parts_in_flight", n, 1, 16)?;
    }
    if let Some(n) = s3.max_attempts {
        st.max_attempts = in_range("s3.max_attempts", n, 1, 20)?;
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
    Ok(st)
}

fn sse(s3: &S3Section) -> Result<Option<Sse>, ConfigError> {
    match (s3.sse.as_deref(), &s3.kms_key_id) {
        (None, None) => Ok(None),
        (Some("AES256"), None) => Ok(Some(Sse::Aes256)),
        (Some("aws:kms"), Some(id)) => Ok(Some(Sse::Kms(id.clone()))),
        (Some("aws:kms"), None) => Err(invalid(
            "s3.kms_key_id",
            "sse = \"aws:kms\" needs kms_key_id",
        )),
        (None, Some(_)) => Err(invalid("s3.sse", "kms_key_id needs sse = \"aws:kms\"")),
        (Some(other), _) => Err(invalid(
            "s3.sse",
            format!("`{other}` is not one of AES256, aws:kms"),
        )),
    }
}

/// The longest lock we accept: a typo such as `30y` for `30d` would make objects undeletable
/// for decades in compliance mode, with no way back.
const MAX_LOCK_DAYS: u64 = 3660;

fn object_lock(s3: &S3Section) -> Result<Option<ObjectLock>, ConfigError> {
    let Some(raw) = s3.lock_mode.as_deref() else {
        if s3.lock_period.is_some() {
            return Err(invalid(
                "s3.lock_period",
                "needs s3.lock_mode (governance or compliance)",
            ));
        }
        return Ok(None);
    };
    let mode = match raw.to_ascii_lowercase().as_str() {
        "governance" => LockMode::Governance,
        "compliance" => LockMode::Compliance,
        _ => {
            return Err(invalid(
                "s3.lock_mode",
                format!("`{raw}` is not one of governance, compliance"),
            ))
        }
    };
    let Some(period_raw) = &s3.lock_period else {
        return Err(invalid(
            "s3.lock_period",
            "s3.lock_mode needs a period, e.g. lock_period = \"30d\"",
        ));
    };
    let period = duration(
        "s3.lock_period",
        Some(period_raw),
        std::time::Duration::ZERO,
    )?;
    if period.as_secs() < 1 || period.as_secs() > MAX_LOCK_DAYS * 86400 {
        return Err(invalid(
            "s3.lock_period",
            format!("`{period_raw}` is outside 1s..={MAX_LOCK_DAYS}d"),
        ));
    }
    Ok(Some(ObjectLock { mode, period }))
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &'static str,
    v: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if v < min || v > max {
        return Err(invalid(key, format!("{v} is outside {min}..={max}")));
    }
    Ok(v)
}

/// Everything a backup run needs.
///
/// # Errors
/// A bad level, encryption mode, recipient or recipients file.
pub fn resolve_backup(
    b: &BackupSection,
    t: &TrustSection,
    reason: Reason,
) -> Result<BackupSettings, ConfigError> {
    let level = b.compression_level.unwrap_or(compress::DEFAULT_LEVEL);
    if !compress::valid_level(level) {
        return Err(invalid(
            "backup.compression_level",
            format!("{level} is outside 1..=19"),
        ));
    }
    let recipients = match b.encryption.as_deref().unwrap_or("age") {
        "age" => Some(recipients(b)?),
        "none" => None,
        other => {
            return Err(invalid(
                "backup.encryption",
                format!("`{other}` is not one of age, none"),
            ))
        }
    };
    let signer = super::trust::resolve_signer(t)?;
    // Readers accept only signed backups: an unsigned one would be written only to be refused
    // by every reader — the README's first commands did exactly that (#22).
    if signer.is_none() && !t.allow_unsigned.unwrap_or(false) {
        return Err(invalid(
            "trust.signing_key",
            "no signing key: every reader refuses unsigned backups. Generate one (`lifeboat signing-key generate -o signing.key`) and pass --signing-key signing.key (readers trust signing.key.pub with --trusted-key), or pass --allow-unsigned to write an unsigned backup on purpose",
        ));
    }
    Ok(BackupSettings {
        compression_level: level,
        recipients,
        reason,
        signer,
        max_rate: b
            .max_rate
            .as_deref()
            .map(|v| rate("backup.max_rate", v))
            .transpose()?,
        kit: None,
    })
}

/// Bytes per second: a number with an optional KiB/MiB/GiB (or KB/MB/GB) suffix. No crate
/// for this is among the dependencies, and it is one setting.
fn rate(key: &'static str, v: &str) -> Result<u64, ConfigError> {
    let bytes = super::size(key, v).map_err(|_| {
        invalid(
            key,
            format!("`{v}` is not a rate like 20MiB (bytes per second)"),
        )
    })?;
    if bytes < 64 * 1024 {
        return Err(invalid(
            key,
            format!("`{v}` is below 64KiB per second: a backup would take days"),
        ));
    }
    Ok(bytes)
}

fn recipients(b: &BackupSection) -> Result<Recipients, ConfigError> {
    let mut r = Recipients::parse(
        "backup.recipients",
        b.recipients.iter().flatten().map(String::as_str),
    )?;
    if let Some(path) = &b.recipients_file {
        r.extend(Recipients::from_file(path)?);
    }
    if r.is_empty() {
        return Err(invalid(
            "backup.recipients",
            "backups are encrypted and no age recipient is configured: pass --recipient age1… (or --recipients-file), or set encryption = \"none\" explicitly",
        ));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_noticed_off_this_machine_only() {
        assert!(plain_http_off_this_machine("http://minio.storage.svc:9000"));
        assert!(plain_http_off_this_machine("http://10.0.0.5/"));
        assert!(!plain_http_off_this_machine("http://127.0.0.1:8333"));
        assert!(!plain_http_off_this_machine("http://[::1]:8333"));
        assert!(!plain_http_off_this_machine("http://localhost:9000"));
        assert!(!plain_http_off_this_machine("https://s3.example.com"));
    }

    #[test]
    fn rates_take_units_and_bad_ones_name_the_key() {
        assert_eq!(rate("k", "20MiB").unwrap(), 20 << 20);
        assert_eq!(rate("k", "1.5 MB").unwrap(), 1_500_000);
        assert_eq!(rate("k", "100000").unwrap(), 100_000);
        for bad in ["fast", "20 parsecs", "1KiB", ""] {
            assert!(rate("backup.max_rate", bad)
                .unwrap_err()
                .to_string()
                .contains("backup.max_rate"));
        }
    }

    /// #22: a writer without a signing key refuses, unless told to write unsigned.
    #[test]
    fn a_writer_without_a_signing_key_refuses_unless_told() {
        let b = BackupSection {
            recipients: Some(vec![
                "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p".into(),
            ]),
            ..BackupSection::default()
        };
        let err = resolve_backup(&b, &TrustSection::default(), Reason::Manual)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("trust.signing_key") && err.contains("signing-key generate"),
            "{err}"
        );
        let unsigned = TrustSection {
            allow_unsigned: Some(true),
            ..TrustSection::default()
        };
        assert!(resolve_backup(&b, &unsigned, Reason::Manual)
            .unwrap()
            .signer
            .is_none());
    }

    #[test]
    fn encryption_without_recipients_is_refused_naming_the_key() {
        let err = resolve_backup(
            &BackupSection::default(),
            &TrustSection::default(),
            Reason::Manual,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("backup.recipients"), "{err}");
    }

    #[test]
    fn bad_levels_and_modes_name_their_key() {
        let bad = |b: BackupSection| {
            resolve_backup(&b, &TrustSection::default(), Reason::Manual)
                .err()
                .unwrap()
                .to_string()
        };
        assert!(bad(BackupSection {
            compression_level: Some(42),
            ..Default::default()
        })
        .contains("backup.compression_level"));
        assert!(bad(BackupSection {
            encryption: Some("rot13".into()),
            ..Default::default()
        })
        .contains("backup.encryption"));
    }

    #[test]
    fn s3_values_are_validated_naming_the_key() {
        let backup = BackupSection {
            dest: Some("s3://b/p".into()),
            ..Default::default()
        };
        let bad = |s3: S3Section| resolve_store(&backup, &s3).err().unwrap().to_string();
        let sse = |v: &str| S3Section {
            sse: Some(v.into()),
            ..Default::default()
        };
        assert!(bad(sse("rot13")).contains("s3.sse"));
        assert!(bad(sse("aws:kms")).contains("s3.kms_key_id"));
        let lock = |mode: Option<&str>, period: Option<&str>| S3Section {
            lock_mode: mode.map(String::from),
            lock_period: period.map(String::from),
            ..Default::default()
        };
        assert!(bad(lock(Some("forever"), Some("1d"))).contains("s3.lock_mode"));
        assert!(bad(lock(Some("compliance"), None)).contains("s3.lock_period"));
        assert!(bad(lock(None, Some("1d"))).contains("s3.lock_period"));
        assert!(bad(lock(Some("compliance"), Some("30y"))).contains("s3.lock_period"));
        match resolve_store(&backup, &lock(Some("Governance"), Some("30d"))).unwrap() {
            Spec::S3(s) => assert_eq!(
                s.lock,
                Some(ObjectLock {
                    mode: LockMode::Governance,
                    period: std::time::Duration::from_secs(30 * 86400)
                })
            ),
            Spec::Local(_) => panic!("s3 expected"),
        }
        let local = BackupSection {
            dest: Some("/backups".into()),
            ..Default::default()
        };
        let err = resolve_store(&local, &lock(Some("compliance"), Some("1d"))).unwrap_err();
        assert!(err.to_string().contains("s3.lock_mode"), "{err}");
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
        let flags = S3Section {
            path_style: Some(true),
            ..Default::default()
        };
        match resolve_store(&backup, &flags).unwrap() {
            Spec::S3(s) => assert!(s.path_style && s.prefix == "p/"),
            Spec::Local(_) => panic!("s3 expected"),
        }
    }

    #[test]
    fn a_missing_destination_names_the_key() {
        let err = resolve_store(&BackupSection::default(), &S3Section::default()).unwrap_err();
        assert!(err.to_string().contains("backup.dest"), "{err}");
    }
}
