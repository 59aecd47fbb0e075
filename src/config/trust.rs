//! `[trust]`: the key a writer signs every manifest with, and the keys readers trust, each in a
//! role (#11, #21). A reader refuses unsigned and foreign objects (unsigned backups dated before
//! `allow_unsigned_before` excepted); a writer trusts its own key, so `serve` prunes what it
//! wrote without more configuration.
//!
//! Roles: `trusted_keys` (`--trusted-key`) are writers' keys; `trusted_shadow_keys`
//! (`--trusted-shadow-key`) are shadows' keys, which sign only shadow bases and proofs;
//! `[[trust.keys]]` entries name a key's role and may bind it to clusters and a last date.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{invalid, section, ConfigError};
use crate::trust::{ReadPolicy, Role, SigningKey, TrustedKey, TrustedKeys};

section! {
    #[derive(clap::Args, Debug, Default, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TrustSection {
        /// minisign secret key that signs every manifest (`lifeboat signing-key generate`).
        #[arg(long, env = "LIFEBOAT_SIGNING_KEY", value_name = "FILE")]
        pub signing_key: Option<PathBuf>,
        /// Public key of a writer (FILE.pub of `signing-key generate`) whose signatures
        /// readers accept; repeatable (key rotation: old and new together).
        #[arg(long = "trusted-key", env = "LIFEBOAT_TRUSTED_KEYS", value_delimiter = ',', value_name = "FILE")]
        pub trusted_keys: Option<Vec<PathBuf>>,
        /// Public key of a shadow: trusted for its bases (`reason = shadow`, used only where a
        /// writer-signed checkpoint confirms them) and its proofs, nothing else; repeatable.
        #[arg(long = "trusted-shadow-key", env = "LIFEBOAT_TRUSTED_SHADOW_KEYS", value_delimiter = ',', value_name = "FILE")]
        pub trusted_shadow_keys: Option<Vec<PathBuf>>,
        /// Also accept backup manifests without a signature when their id is dated before this
        /// time (RFC 3339): backups written before signing was turned on. Each one is logged.
        /// Never applies to journal segments, heads or proofs.
        #[arg(long, env = "LIFEBOAT_ALLOW_UNSIGNED_BEFORE", value_name = "RFC3339")]
        pub allow_unsigned_before: Option<String>,
        /// Writers: write backups without a signature on purpose (no `signing_key`); every
        /// reader refuses them unless they are dated before its `allow_unsigned_before`.
        #[arg(
            long,
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            value_parser = clap::builder::FalseyValueParser::new()
        )]
        pub allow_unsigned: Option<bool>,
        /// `[[trust.keys]]`: a public key with its role, optional clusters and not_after.
        #[arg(skip)]
        pub keys: Option<Vec<KeyEntry>>,
    }
}

/// One `[[trust.keys]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub file: PathBuf,
    pub role: Role,
    /// Cluster ids (hex, as `snapshot list` shows them) this key may sign for; all if absent.
    pub clusters: Option<Vec<String>>,
    /// Objects dated after this (RFC 3339) are not accepted from this key: a retired key.
    pub not_after: Option<String>,
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

/// What readers on a writer accept: the trusted keys in their roles, plus the writer's own key
/// (as a writer), and whether older unsigned backups pass.
///
/// # Errors
/// An unreadable key or bad entry, or no key at all without `allow_unsigned_before` (naming
/// the key).
pub fn resolve_read_policy(t: &TrustSection) -> Result<Arc<ReadPolicy>, ConfigError> {
    resolve_read_policy_as(t, Role::Writer)
}

/// [`resolve_read_policy`] for a process whose own signing key has `own` role: a shadow trusts
/// its own key as a shadow's, never as a writer's.
///
/// # Errors
/// As [`resolve_read_policy`].
pub fn resolve_read_policy_as(t: &TrustSection, own: Role) -> Result<Arc<ReadPolicy>, ConfigError> {
    let mut keys = TrustedKeys::default();
    for e in t.keys.as_deref().unwrap_or_default() {
        keys.push(entry(e)?);
    }
    let load = |key: &'static str, paths: &Option<Vec<PathBuf>>, role: Role| {
        paths
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|p| TrustedKey::from_file(p, role).map_err(|e| invalid(key, e.to_string())))
            .collect::<Result<Vec<_>, _>>()
    };
    for k in load("trust.trusted_keys", &t.trusted_keys, Role::Writer)? {
        keys.push(k);
    }
    for k in load(
        "trust.trusted_shadow_keys",
        &t.trusted_shadow_keys,
        Role::Shadow,
    )? {
        keys.push(k);
    }
    if let Some(signer) = resolve_signer(t)? {
        keys.add_own(&signer, own);
    }
    let before = t
        .allow_unsigned_before
        .as_deref()
        .map(|raw| time("trust.allow_unsigned_before", raw))
        .transpose()?;
    ReadPolicy::new(keys, before)
        .map(Arc::new)
        .map_err(|e| invalid("trust.trusted_keys", e.to_string()))
}

fn entry(e: &KeyEntry) -> Result<TrustedKey, ConfigError> {
    let mut key = TrustedKey::from_file(&e.file, e.role)
        .map_err(|err| invalid("trust.keys", err.to_string()))?;
    if let Some(clusters) = &e.clusters {
        let parsed = clusters
            .iter()
            .map(|c| {
                crate::catalog::parse_cluster_id(c).ok_or_else(|| {
                    invalid(
                        "trust.keys.clusters",
                        format!("`{c}` is not a hex cluster id (as `snapshot list` shows it)"),
                    )
                })
            })
            .collect::<Result<Vec<u64>, _>>()?;
        key.clusters = Some(parsed);
    }
    key.not_after = e
        .not_after
        .as_deref()
        .map(|raw| time("trust.keys.not_after", raw))
        .transpose()?;
    Ok(key)
}

fn time(key: &'static str, raw: &str) -> Result<DateTime<Utc>, ConfigError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| invalid(key, format!("`{raw}` is not an RFC 3339 time ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> TrustSection {
        #[derive(Deserialize)]
        struct F {
            trust: TrustSection,
        }
        toml::from_str::<F>(text).unwrap().trust
    }

    #[test]
    fn bad_entries_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let (public, _) = crate::trust::generate(&dir.path().join("k")).unwrap();
        let p = public.display();
        let err = |text: &str| resolve_read_policy(&section(text)).unwrap_err().to_string();
        assert!(err(&format!(
            "[trust]\n[[trust.keys]]\nfile = \"{p}\"\nrole = \"shadow\"\nclusters = [\"xyz\"]\n"
        ))
        .contains("trust.keys.clusters"));
        assert!(err(&format!(
            "[trust]\n[[trust.keys]]\nfile = \"{p}\"\nrole = \"writer\"\nnot_after = \"soon\"\n"
        ))
        .contains("trust.keys.not_after"));
        assert!(err("[trust]\nallow_unsigned_before = \"yesterday\"\n")
            .contains("trust.allow_unsigned_before"));
        assert!(
            err("[trust]\nallow_unsigned = true\n").contains("no trusted signing key"),
            "a writer's switch: reads nothing unsigned"
        );
        assert!(err("[trust]\n").contains("no trusted signing key"));
        assert!(resolve_read_policy(&section(&format!(
            "[trust]\n[[trust.keys]]\nfile = \"{p}\"\nrole = \"shadow\"\nclusters = [\"ab\"]\nnot_after = \"2030-01-01T00:00:00Z\"\n"
        )))
        .is_ok());
        assert!(resolve_read_policy(&section(
            "[trust]\nallow_unsigned_before = \"2026-01-01T00:00:00Z\"\n"
        ))
        .is_ok());
    }
}
