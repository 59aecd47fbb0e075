//! What an S3 store needs: bucket, prefix, endpoint, TLS, credentials, SSE and the upload and
//! retry tuning; and the key-file credentials provider (files re-read on every request, so a
//! rotated Kubernetes Secret is picked up without a restart).

use std::path::PathBuf;
use std::time::Duration;

use aws_credential_types::provider::{self, ProvideCredentials};
use aws_credential_types::Credentials;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    Aes256,
    Kms(String),
}

/// S3 Object Lock retention modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Deletable before the end only with `s3:BypassGovernanceRetention`.
    Governance,
    /// Deletable by nobody before the end, not even the account root.
    Compliance,
}

/// Every object written gets this retention, counted from its upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub period: Duration,
}

#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// Empty, or ending in `/`.
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub path_style: bool,
    pub ca_bundle: Option<PathBuf>,
    pub access_key_file: Option<PathBuf>,
    pub secret_key_file: Option<PathBuf>,
    pub sse: Option<Sse>,
    /// Object Lock retention for every object written (the bucket must have Object Lock on).
    pub lock: Option<ObjectLock>,
    pub part_size: usize,
    pub parts_in_flight: usize,
    pub attempt_timeout: Duration,
    pub max_attempts: u32,
    /// Multipart uploads older than this are leftovers of dead writers.
    pub incomplete_grace: Duration,
    /// Keys per listing page (S3's default, 1000, when unset).
    pub list_page_size: Option<i32>,
}

impl S3Settings {
    pub fn new(bucket: &str, prefix: &str) -> S3Settings {
        let prefix = prefix.trim_matches('/');
        S3Settings {
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            region: None,
            endpoint: None,
            path_style: false,
            ca_bundle: None,
            access_key_file: None,
            secret_key_file: None,
            sse: None,
            lock: None,
            part_size: 8 * 1024 * 1024,
            parts_in_flight: 2,
            attempt_timeout: Duration::from_secs(60),
            max_attempts: 5,
            incomplete_grace: Duration::from_secs(24 * 3600),
            list_page_size: None,
        }
    }
}

/// Credentials read from files on every request.
#[derive(Debug)]
pub(super) struct KeyFiles {
    pub(super) access_key: PathBuf,
    pub(super) secret_key: PathBuf,
}

impl KeyFiles {
    fn read(&self) -> provider::Result {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .map_err(|e| {
                    provider::error::CredentialsError::provider_error(format!(
                        "cannot read S3 key file {}: {e}",
                        p.display()
                    ))
                })
        };
        Ok(Credentials::new(
            read(&self.access_key)?,
            read(&self.secret_key)?,
            None,
            None,
            "lifeboat-key-files",
        ))
    }
}

impl ProvideCredentials for KeyFiles {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::ready(self.read())
    }
}
