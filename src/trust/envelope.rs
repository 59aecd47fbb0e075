//! A small signed object: its exact text and its signature in one envelope
//! `{"<field>": text, "signature": …}`, written or replaced together, and believed only when
//! the signature passes the reader's policy for what the text claims to be (a chain's head, a
//! shadow's proof, a cluster restore's plan or a node's part in it).

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Claim, Kind, ReadPolicy, SigningKey, TrustError};
use crate::store::{bytes_stream, get_small, Store, StoreError};

/// What a signed envelope's content claims, for the reader's policy: which kind of object it
/// is, of which cluster, and when it was written (its writer's clock).
pub trait Envelope: DeserializeOwned {
    const KIND: Kind;
    /// The largest such envelope a reader accepts.
    const LIMIT: usize = 16 * 1024;
    fn cluster(&self) -> Option<u64>;
    fn dated(&self) -> DateTime<Utc>;
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("{key} is not {what}: {why}")]
    Invalid {
        key: String,
        what: String,
        why: String,
    },
}

/// How an envelope is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Replaces what is there (a head, a proof, a node's progress).
    Replace,
    /// Only if nothing is there (`StoreError::AlreadyExists` otherwise): the first writer wins.
    Create,
}

/// Signs `value` (under `key`) and writes it at `key`.
///
/// # Errors
/// Signing or the store fails; `Create` over an existing object.
pub async fn write_signed<T: Serialize>(
    store: &dyn Store,
    signer: Option<&SigningKey>,
    key: &str,
    field: &str,
    value: &T,
    how: Write,
) -> Result<(), EnvelopeError> {
    let text = serde_json::to_string(value).unwrap_or_default();
    let signature = match signer {
        Some(s) => Some(s.sign(key, text.as_bytes())?),
        None => None,
    };
    let mut envelope = serde_json::Map::new();
    envelope.insert(field.into(), text.into());
    envelope.insert("signature".into(), signature.into());
    let bytes = serde_json::to_vec_pretty(&envelope).unwrap_or_default();
    match how {
        Write::Replace => store.replace(key, bytes.into()).await?,
        Write::Create => {
            store.put(key, bytes_stream(bytes.into())).await?;
        }
    }
    Ok(())
}

/// The object at `key`; `None` when there is none.
///
/// # Errors
/// Unreadable, not such an envelope, untrusted, or not a `T` (`what` names it in messages).
pub async fn read_signed<T: Envelope>(
    store: &dyn Store,
    policy: &ReadPolicy,
    key: &str,
    field: &str,
    what: &str,
) -> Result<Option<T>, EnvelopeError> {
    let bytes = match get_small(store, key, T::LIMIT).await {
        Ok(b) => b,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    check_bytes(policy, key, &bytes, field, what).map(Some)
}

/// The value in an envelope's exact `bytes` (as read from `key`), once its signature passes
/// `policy`: what a reader that must keep the very bytes it checked (a copy to another store)
/// calls instead of reading twice.
///
/// # Errors
/// Not such an envelope, untrusted, or not a `T`.
pub fn check_bytes<T: Envelope>(
    policy: &ReadPolicy,
    key: &str,
    bytes: &[u8],
    field: &str,
    what: &str,
) -> Result<T, EnvelopeError> {
    let invalid = |why: String| EnvelopeError::Invalid {
        key: key.to_string(),
        what: format!("a {what}"),
        why,
    };
    let envelope: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let text = envelope[field]
        .as_str()
        .ok_or_else(|| invalid(format!("no `{field}`")))?;
    // Parsed before it is trusted only to learn what it claims to be; nothing is used unless
    // the signature over these exact bytes passes for that claim.
    let value: T = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let claim = Claim {
        key,
        kind: T::KIND,
        cluster: value.cluster(),
        dated: value.dated(),
    };
    policy.check(&claim, text.as_bytes(), envelope["signature"].as_str())?;
    Ok(value)
}
