//! A small signed object replaced in place (a chain's head, a shadow's proof): the object's
//! exact text and its signature in one envelope `{"<field>": text, "signature": …}`, so they
//! are replaced together, and believed only when the signature passes the reader's policy.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ContinuousError;
use crate::store::{get_small, Store, StoreError};
use crate::trust::{Claim, Kind, ReadPolicy, SigningKey};

/// What a signed envelope's content claims, for the reader's policy: which kind of object it
/// is, of which cluster, and when it was written (its writer's clock).
pub(super) trait Envelope: DeserializeOwned {
    const KIND: Kind;
    fn cluster(&self) -> Option<u64>;
    fn dated(&self) -> DateTime<Utc>;
}

/// The largest envelope a reader accepts.
const LIMIT: usize = 16 * 1024;

/// Signs `value` (under `key`) and replaces the object at `key` with it.
///
/// # Errors
/// Signing or the store fails.
pub(super) async fn write_signed<T: Serialize>(
    store: &dyn Store,
    signer: Option<&SigningKey>,
    key: &str,
    field: &str,
    value: &T,
) -> Result<(), ContinuousError> {
    let text = serde_json::to_string(value).unwrap_or_default();
    let signature = match signer {
        Some(s) => Some(s.sign(key, text.as_bytes())?),
        None => None,
    };
    let mut envelope = serde_json::Map::new();
    envelope.insert(field.into(), text.into());
    envelope.insert("signature".into(), signature.into());
    let bytes = serde_json::to_vec_pretty(&envelope).unwrap_or_default();
    store.replace(key, bytes.into()).await?;
    Ok(())
}

/// The object at `key`; `None` when there is none.
///
/// # Errors
/// Unreadable, not such an envelope, untrusted, or not a `T` (`what` names it in messages).
pub(super) async fn read_signed<T: Envelope>(
    store: &dyn Store,
    policy: &ReadPolicy,
    key: &str,
    field: &str,
    what: &str,
) -> Result<Option<T>, ContinuousError> {
    let bytes = match get_small(store, key, LIMIT).await {
        Ok(b) => b,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let invalid = |why: String| ContinuousError::Invalid {
        key: key.to_string(),
        what: format!("not a {what}: {why}"),
    };
    let envelope: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
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
    super::clock::not_in_the_future(key, claim.dated, Utc::now())?;
    Ok(Some(value))
}
