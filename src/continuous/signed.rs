//! The journal's small signed objects replaced in place (a chain's head, a shadow's proof):
//! `trust::envelope`, with the journal's clock rule (nothing dated in the future is believed).

use chrono::Utc;
use serde::Serialize;

use super::ContinuousError;
use crate::store::Store;
pub(super) use crate::trust::envelope::Envelope;
use crate::trust::envelope::{self, EnvelopeError, Write};
use crate::trust::{ReadPolicy, SigningKey};

impl From<EnvelopeError> for ContinuousError {
    fn from(e: EnvelopeError) -> ContinuousError {
        match e {
            EnvelopeError::Store(e) => ContinuousError::Store(e),
            EnvelopeError::Trust(e) => ContinuousError::Trust(e),
            EnvelopeError::Invalid { key, what, why } => ContinuousError::Invalid {
                key,
                what: format!("not {what}: {why}"),
            },
        }
    }
}

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
    Ok(envelope::write_signed(store, signer, key, field, value, Write::Replace).await?)
}

/// The object at `key`; `None` when there is none.
///
/// # Errors
/// Unreadable, not such an envelope, untrusted, dated in the future, or not a `T`.
pub(super) async fn read_signed<T: Envelope>(
    store: &dyn Store,
    policy: &ReadPolicy,
    key: &str,
    field: &str,
    what: &str,
) -> Result<Option<T>, ContinuousError> {
    let Some(value) = envelope::read_signed::<T>(store, policy, key, field, what).await? else {
        return Ok(None);
    };
    super::clock::not_in_the_future(key, value.dated(), Utc::now())?;
    Ok(Some(value))
}

/// The value in an envelope's exact `bytes` read from `key`: trusted, and not dated in the
/// future.
///
/// # Errors
/// Not such an envelope, untrusted, dated in the future, or not a `T`.
pub(super) fn check_signed<T: Envelope>(
    policy: &ReadPolicy,
    key: &str,
    bytes: &[u8],
    field: &str,
    what: &str,
) -> Result<T, ContinuousError> {
    let value = envelope::check_bytes::<T>(policy, key, bytes, field, what)?;
    super::clock::not_in_the_future(key, value.dated(), Utc::now())?;
    Ok(value)
}
