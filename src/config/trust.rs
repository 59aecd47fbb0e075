//! `[trust]`: the key a writer signs every manifest with, and the keys readers trust (#11).
//! A reader refuses unsigned and foreign manifests unless `allow_unsigned`; a writer trusts
//! its own key, so `serve` prunes what it wrote without more configuration.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::{invalid, section, ConfigError};
use crate::trust::{ReadPolicy, SigningKey, TrustedKeys};

section! {
    #[derive(clap::Args, Debug, Default, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TrustSection {
        /// minisign secret key that signs every manifest (`lifeboat signing-key generate`).
        #[arg(long, env = "LIFEBOAT_SIGNING_KEY", value_name = "FILE")]
        pub signing_key: Option<PathBuf>,
        /// Public key (FILE.pub of `signing-key generate`) whose signatures readers accept;
        /// repeatable (key rotation: old and new together).
        #[arg(long = "trusted-key", env = "LIFEBOAT_TRUSTED_KEYS", value_delimiter = ',', value_name = "FILE")]
        pub trusted_keys: Option<Vec<PathBuf>>,
        /// Also accept manifests without a signature (backups written before signing) — every
        /// one is logged as unsigned.
        #[arg(
            long,
            env = "LIFEBOAT_ALLOW_UNSIGNED",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            value_parser = clap::builder::FalseyValueParser::new()
        )]
        pub allow_unsigned: Option<bool>,
    }
}

/// The signing key, loaded and checked now (0600, a minisign secret key).
///
/// # Errors
/// The key cannot be read or is not one, naming `trust.signing_key`.
pub fn resolve_signer(t: &TrustSection) -> Result<Option<Arc<SigningKey>>, ConfigError> {
    match &t.signing_key {
        None => Ok(None),
        Some(path) => SigningKey::from_file(path)
            .map(|k| Some(Arc::new(k)))
            .map_err(|e| invalid("trust.signing_key", e.to_string())),
    }
}

/// What readers of the catalog accept: the trusted keys (plus the writer's own), and whether
/// unsigned manifests pass.
///
/// # Errors
/// An unreadable key, or no key at all without `allow_unsigned` (naming the key).
pub fn resolve_read_policy(t: &TrustSection) -> Result<Arc<ReadPolicy>, ConfigError> {
    let mut keys = TrustedKeys::from_files(t.trusted_keys.as_deref().unwrap_or_default())
        .map_err(|e| invalid("trust.trusted_keys", e.to_string()))?;
    if let Some(signer) = resolve_signer(t)? {
        keys.add_own(&signer);
    }
    ReadPolicy::new(keys, t.allow_unsigned.unwrap_or(false))
        .map(Arc::new)
        .map_err(|e| invalid("trust.trusted_keys", e.to_string()))
}
