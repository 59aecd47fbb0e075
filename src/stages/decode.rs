//! The object format, read side — the mirror of [`super::encode`]: stored bytes → age
//! decryption with the identities (when the object is encrypted) → zstd → plain bytes.

use std::io::{BufReader, Read};

use super::compress;
use super::encrypt::Identities;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("age: {0}")]
    Decrypt(#[source] age::DecryptError),
    #[error("zstd: {0}")]
    Decompress(#[source] std::io::Error),
}

/// A reader of the plain bytes of an object read from `source`; `identities` must be given
/// exactly when the object is encrypted.
///
/// # Errors
/// Not an age file, no matching identity, or zstd cannot set up.
pub fn decoder<'a, R: Read + 'a>(
    source: R,
    identities: Option<&Identities>,
) -> Result<Box<dyn Read + 'a>, DecodeError> {
    const BUF: usize = 256 * 1024;
    let decompressed: Box<dyn Read + 'a> = match identities {
        Some(ids) => {
            let plain = ids.decryptor(source).map_err(DecodeError::Decrypt)?;
            Box::new(
                compress::decompressor(BufReader::with_capacity(BUF, plain))
                    .map_err(DecodeError::Decompress)?,
            )
        }
        None => Box::new(
            compress::decompressor(BufReader::with_capacity(BUF, source))
                .map_err(DecodeError::Decompress)?,
        ),
    };
    Ok(decompressed)
}
