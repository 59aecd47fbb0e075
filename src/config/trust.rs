//! `[trust]`: the key a writer signs every manifest with (#11). Readers' trusted keys come
//! next, with the verification that refuses unsigned and foreign manifests.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::{invalid, section, ConfigError};
use crate::trust::SigningKey;

section! {
    #[derive(clap::Args, Debug, Default, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TrustSection {
        /// minisign secret key that signs every manifest (`lifeboat signing-key generate`).
        #[arg(long, env = "LIFEBOAT_SIGNING_KEY", value_name = "FILE")]
        pub signing_key: Option<PathBuf>,
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
