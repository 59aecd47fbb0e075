//! The object format, write side: plain bytes → zstd (one standard frame with a checksum) →
//! age to the recipients (or nothing, when encryption is explicitly off) → sha256 and size of
//! what is stored. Readable by `age -d | zstd -d`. Its mirror is [`super::decode`]; changing
//! the format means changing these two files.

use std::io::{self, Write};

use super::compress;
use super::encrypt::Recipients;
use super::hash::HashingWriter;

/// Compresses, encrypts and hashes into `W`.
pub struct Encoder<W: Write> {
    zstd: zstd::Encoder<'static, Sealer<HashingWriter<W>>>,
}

/// What the encoder produced: the writer back, and the stored object's sha256 and size.
pub struct Encoded<W> {
    pub out: W,
    pub sha256: [u8; 32],
    pub size: u64,
}

impl<W: Write> Encoder<W> {
    /// # Errors
    /// zstd or age cannot set up (out of memory, no recipient).
    pub fn new(out: W, level: i32, recipients: Option<&Recipients>) -> io::Result<Encoder<W>> {
        let object = HashingWriter::new(out);
        let sealer = match recipients {
            Some(r) => Sealer::Age(r.encryptor(object)?),
            None => Sealer::Plain(object),
        };
        Ok(Encoder {
            zstd: compress::compressor(sealer, level)?,
        })
    }

    /// Ends the zstd frame and the age stream.
    ///
    /// # Errors
    /// Writing the last bytes failed.
    pub fn finish(self) -> io::Result<Encoded<W>> {
        let (out, sha256, size) = self.zstd.finish()?.finish()?.finish();
        Ok(Encoded { out, sha256, size })
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.zstd.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.zstd.flush()
    }
}

/// age, or nothing when encryption is explicitly off.
enum Sealer<W: Write> {
    Age(age::stream::StreamWriter<W>),
    Plain(W),
}

impl<W: Write> Sealer<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Sealer::Age(w) => w.finish(),
            Sealer::Plain(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealer::Age(w) => w.write(buf),
            Sealer::Plain(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealer::Age(w) => w.flush(),
            Sealer::Plain(w) => w.flush(),
        }
    }
}

/// Encodes a small buffer whole (the node bundle).
///
/// # Errors
/// As [`Encoder::new`] and [`Encoder::finish`].
pub fn encode_all(
    plain: &[u8],
    level: i32,
    recipients: Option<&Recipients>,
) -> io::Result<Vec<u8>> {
    let mut e = Encoder::new(Vec::new(), level, recipients)?;
    e.write_all(plain)?;
    Ok(e.finish()?.out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::decode;
    use crate::stages::encrypt::Identities;
    use sha2::{Digest, Sha256};
    use std::io::Read;

    fn key_pair(dir: &std::path::Path) -> (Recipients, Identities) {
        let id = age::x25519::Identity::generate();
        let path = dir.join("key.txt");
        crate::fsutil::write_atomic(
            &path,
            format!(
                "{}\n",
                age::secrecy::ExposeSecret::expose_secret(&id.to_string())
            )
            .as_bytes(),
        )
        .unwrap();
        let r = Recipients::parse("test", [id.to_public().to_string().as_str()]).unwrap();
        (r, Identities::from_file(&path).unwrap())
    }

    #[test]
    fn what_is_encoded_decodes_back_and_the_digest_is_of_the_stored_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (recipients, identities) = key_pair(dir.path());
        let plain = b"/registry/pods/default/p0 ".repeat(10_000);
        for (r, i) in [(Some(&recipients), Some(&identities)), (None, None)] {
            let mut e = Encoder::new(Vec::new(), 3, r).unwrap();
            e.write_all(&plain).unwrap();
            let done = e.finish().unwrap();
            assert_eq!(done.size, done.out.len() as u64);
            assert_eq!(done.sha256.as_slice(), Sha256::digest(&done.out).as_slice());
            let mut back = Vec::new();
            decode::decoder(&done.out[..], i)
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, plain);
        }
    }

    #[test]
    fn an_encrypted_object_does_not_decode_without_the_identity_or_with_another() {
        let dir = tempfile::tempdir().unwrap();
        let (recipients, _) = key_pair(dir.path());
        let other = tempfile::tempdir().unwrap();
        let (_, stranger) = key_pair(other.path());
        let object = encode_all(b"secret", 3, Some(&recipients)).unwrap();
        assert!(matches!(
            decode::decoder(&object[..], Some(&stranger)),
            Err(decode::DecodeError::Decrypt(
                age::DecryptError::NoMatchingKeys
            ))
        ));
        let mut out = Vec::new();
        assert!(decode::decoder(&object[..], None)
            .unwrap()
            .read_to_end(&mut out)
            .is_err());
    }
}
