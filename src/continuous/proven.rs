//! What the shadow has proven of a chain: "replaying this chain reproduces the cluster's HashKV
//! at `revision`" — the newest revision a point-in-time restore is known to give back exactly.
//! One small object per chain, replaced by the shadow at each checkpoint it proves and signed
//! with the shadow's key; `continuous status` shows it when its signature is trusted.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::segment::prefix;
use super::signed::{check_signed, read_signed, write_signed, Envelope};
use super::ContinuousError;
use crate::store::Store;
use crate::trust::{ReadPolicy, SigningKey};

const SCHEMA: u32 = 1;
const NAME: &str = "proven.json";
const FIELD: &str = "proven";
const WHAT: &str = "shadow proof";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proven {
    pub schema_version: u32,
    pub chain: String,
    pub revision: i64,
    pub hash: u32,
    pub compact_revision: i64,
    pub proven_at: DateTime<Utc>,
}

impl Proven {
    pub fn new(chain: &str, revision: i64, hash: u32, compact_revision: i64) -> Proven {
        Proven {
            schema_version: SCHEMA,
            chain: chain.to_string(),
            revision,
            hash,
            compact_revision,
            proven_at: Utc::now(),
        }
    }
}

impl Envelope for Proven {
    const KIND: crate::trust::Kind = crate::trust::Kind::Proof;
    fn cluster(&self) -> Option<u64> {
        crate::catalog::BackupId::parse(&self.chain).map(|id| id.cluster_id)
    }
    fn dated(&self) -> DateTime<Utc> {
        self.proven_at
    }
}

/// `seg.<chain>.proven.json` (not a segment, not a head: journal retention leaves it alone).
pub fn proven_key(chain: &str) -> String {
    format!("{}{NAME}", prefix(Some(chain)))
}

/// The chain a proven key belongs to.
pub fn chain_of_proven_key(key: &str) -> Option<String> {
    key.strip_prefix(&prefix(None))?
        .strip_suffix(NAME)?
        .strip_suffix('.')
        .map(str::to_string)
}

/// Signs `p` and replaces the chain's proven object with it.
///
/// # Errors
/// Signing or the store fails.
pub async fn write_proven(
    store: &dyn Store,
    signer: Option<&SigningKey>,
    p: &Proven,
) -> Result<(), ContinuousError> {
    write_signed(store, signer, &proven_key(&p.chain), FIELD, p).await
}

/// The chain's proven object when there is one and its signature is trusted; anything else is
/// `None` (logged when it exists but cannot be believed).
pub async fn trusted_proven(store: &dyn Store, policy: &ReadPolicy, chain: &str) -> Option<Proven> {
    let key = proven_key(chain);
    match read_signed::<Proven>(store, policy, &key, FIELD, WHAT).await {
        Ok(Some(p)) if is_about(&p, chain) => Some(p),
        Ok(Some(_)) => {
            tracing::debug!(
                key,
                "a shadow proof of another schema or chain than its key says: ignored"
            );
            None
        }
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(key, error = %e, "a shadow proof that is not believed (untrusted or unreadable): ignored");
            None
        }
    }
}

/// The proof in `bytes`, read from `chain`'s proven key: trusted and about that chain (a copy
/// to another store keeps the very bytes it checked).
///
/// # Errors
/// Unparsable, untrusted, or about another chain or schema.
pub fn proven_from_bytes(
    policy: &ReadPolicy,
    chain: &str,
    bytes: &[u8],
) -> Result<Proven, ContinuousError> {
    let key = proven_key(chain);
    let p = check_signed::<Proven>(policy, &key, bytes, FIELD, WHAT)?;
    if !is_about(&p, chain) {
        return Err(ContinuousError::Invalid {
            key,
            what: "a shadow proof of another schema or chain than its key says".into(),
        });
    }
    Ok(p)
}

fn is_about(p: &Proven, chain: &str) -> bool {
    p.schema_version == SCHEMA && p.chain == chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proven_key_is_neither_a_segment_nor_a_head() {
        let key = proven_key("20261129T070000.000Z-00000000000000ab");
        assert_eq!(key, "seg.20261129T070000.000Z-00000000000000ab.proven.json");
        assert!(crate::continuous::SegmentKey::of_any_key(&key).is_none());
        assert!(crate::continuous::head::chain_of_head_key(&key).is_none());
        assert_eq!(
            chain_of_proven_key(&key).as_deref(),
            Some("20261129T070000.000Z-00000000000000ab")
        );
    }
}
