//! Signing keys and signatures for manifests (#11): Ed25519 in minisign's format, so a person
//! can check a manifest with the standard `minisign` CLI, without lifeboat:
//!
//! ```sh
//! minisign -V -p signing.key.pub -m <id>.manifest.json -x <id>.manifest.json.minisig
//! ```
//!
//! The signature covers the manifest's bytes exactly as stored — id, cluster, creation time,
//! revision, object key, size, sha256 and encryption scheme among them — and its trusted
//! comment names the manifest's key, so a signature cannot be moved to another name.
//!
//! The secret key is unencrypted (a service signs unattended); it lives next to the store
//! credentials, 0600. Readers hold only public keys, several of them across a key rotation.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use minisign::{KeyPair, PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};

/// A manifest's signature is stored beside it, under the manifest's key plus this.
pub const SIGNATURE_SUFFIX: &str = ".minisig";

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} exists: a signing key is never overwritten (move it away first)")]
    Exists { path: PathBuf },
    #[error("cannot read the key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a minisign {what} ({detail})")]
    BadKey {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("the signing key {path} is readable by others: `chmod 600 {path}`")]
    KeyTooOpen { path: PathBuf },
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("{key}: {detail}")]
    Untrusted { key: String, detail: String },
    #[error("no trusted signing key: pass --trusted-key FILE.pub (or [trust] trusted_keys) — the public half of the writers' signing key — or, to read backups written before signing, --allow-unsigned")]
    NoTrustedKey,
}

/// The key a writer signs with.
pub struct SigningKey {
    sk: SecretKey,
    pk: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", key_id(self.pk.keynum()))
    }
}

/// The public keys a reader trusts.
#[derive(Default)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| key_id(k.keynum())))
            .finish()
    }
}

/// The 16-hex key id minisign prints.
fn key_id(keynum: &[u8]) -> String {
    let mut le = [0u8; 8];
    le.copy_from_slice(&keynum[..8.min(keynum.len())]);
    format!("{:016X}", u64::from_le_bytes(le))
}

/// Writes a new key pair: the secret key to `path` (0600, never overwriting) and the public
/// key to `path.pub`. Returns the public key's file and id.
///
/// # Errors
/// Either file exists or cannot be written.
pub fn generate(path: &Path) -> Result<(PathBuf, String), TrustError> {
    let public = public_path(path);
    for p in [path, public.as_path()] {
        if p.exists() {
            return Err(TrustError::Exists { path: p.into() });
        }
    }
    let KeyPair { pk, sk } =
        KeyPair::generate_unencrypted_keypair().map_err(|e| TrustError::Sign(e.to_string()))?;
    let id = key_id(pk.keynum());
    let sk_text = sk
        .to_box(Some(&format!("lifeboat signing key {id}")))
        .map_err(|e| TrustError::Sign(e.to_string()))?
        .to_string();
    let pk_text = pk
        .to_box()
        .map_err(|e| TrustError::Sign(e.to_string()))?
        .to_string();
    write_new(path, &sk_text)?;
    write_new(&public, &pk_text)?;
    Ok((public, id))
}

fn public_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_os_string();
    p.push(".pub");
    PathBuf::from(p)
}

fn write_new(path: &Path, text: &str) -> Result<(), TrustError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TrustError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

fn read(path: &Path) -> Result<String, TrustError> {
    std::fs::read_to_string(path).map_err(|source| TrustError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl SigningKey {
    /// Loads an unencrypted minisign secret key (as `lifeboat signing-key generate` writes it).
    ///
    /// # Errors
    /// Unreadable, readable by others, or not a minisign secret key.
    pub fn from_file(path: &Path) -> Result<SigningKey, TrustError> {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            return Err(TrustError::KeyTooOpen { path: path.into() });
        }
        let bad = |detail: String| TrustError::BadKey {
            path: path.to_path_buf(),
            what: "secret key",
            detail,
        };
        let sk = SecretKeyBox::from_string(&read(path)?)
            .and_then(SecretKeyBox::into_unencrypted_secret_key)
            .map_err(|e| bad(e.to_string()))?;
        let pk = PublicKey::from_secret_key(&sk).map_err(|e| bad(e.to_string()))?;
        Ok(SigningKey { sk, pk })
    }

    /// The signature of `bytes` stored under `key`, as the text of a `.minisig` file.
    ///
    /// # Errors
    /// The signature cannot be made (never with a key that loaded).
    pub fn sign(&self, key: &str, bytes: &[u8]) -> Result<String, TrustError> {
        let sig = minisign::sign(
            Some(&self.pk),
            &self.sk,
            Cursor::new(bytes),
            Some(&trusted_comment(key)),
            Some(&format!("signature from lifeboat key {}", self.id())),
        )
        .map_err(|e| TrustError::Sign(e.to_string()))?;
        Ok(sig.into_string())
    }

    pub fn id(&self) -> String {
        key_id(self.pk.keynum())
    }
}

/// The signed comment: binds a signature to the name it was made for.
fn trusted_comment(key: &str) -> String {
    format!("lifeboat {key}")
}

impl TrustedKeys {
    /// Loads minisign public keys (`FILE.pub` of `signing-key generate`, or a bare key line).
    ///
    /// # Errors
    /// A file that cannot be read or holds no public key.
    pub fn from_files(paths: &[PathBuf]) -> Result<TrustedKeys, TrustError> {
        let mut keys = Vec::new();
        for path in paths {
            let text = read(path)?;
            let key = PublicKeyBox::from_string(&text)
                .and_then(PublicKeyBox::into_public_key)
                .or_else(|_| PublicKey::from_base64(text.trim()))
                .map_err(|e| TrustError::BadKey {
                    path: path.clone(),
                    what: "public key",
                    detail: e.to_string(),
                })?;
            keys.push(key);
        }
        Ok(TrustedKeys { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The public half of a signing key: a writer trusts what it writes itself.
    pub fn add_own(&mut self, signer: &SigningKey) {
        if !self.keys.iter().any(|k| k.keynum() == signer.pk.keynum()) {
            self.keys.push(signer.pk.clone());
        }
    }

    /// Checks that `signature` (a `.minisig` text) is a signature of `bytes`, made for `key`,
    /// by one of the trusted keys; returns that key's id.
    ///
    /// # Errors
    /// `Untrusted`, naming `key`: not a signature, another key's, another name's, or not of
    /// these bytes.
    pub fn verify(&self, key: &str, bytes: &[u8], signature: &str) -> Result<String, TrustError> {
        let untrusted = |detail: String| TrustError::Untrusted {
            key: key.to_string(),
            detail,
        };
        let sig = SignatureBox::from_string(signature)
            .map_err(|e| untrusted(format!("its signature does not parse ({e})")))?;
        let signer = key_id(sig.keynum());
        let pk = self
            .keys
            .iter()
            .find(|k| k.keynum() == sig.keynum())
            .ok_or_else(|| untrusted(format!("signed by key {signer}, which is not trusted")))?;
        minisign::verify(pk, &sig, Cursor::new(bytes), true, false, false)
            .map_err(|e| untrusted(format!("the signature by {signer} does not match ({e})")))?;
        let comment = sig
            .trusted_comment()
            .map_err(|e| untrusted(format!("no trusted comment ({e})")))?;
        if comment != trusted_comment(key) {
            return Err(untrusted(format!(
                "the signature was made for another name ({comment:?})"
            )));
        }
        Ok(signer)
    }
}

/// What a reader accepts: manifests signed by one of `keys`; with `allow_unsigned`, also
/// manifests without a signature (backups written before signing — said loudly).
pub struct ReadPolicy {
    keys: TrustedKeys,
    allow_unsigned: bool,
}

impl std::fmt::Debug for ReadPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadPolicy")
            .field("keys", &self.keys)
            .field("allow_unsigned", &self.allow_unsigned)
            .finish()
    }
}

impl ReadPolicy {
    /// # Errors
    /// `NoTrustedKey`: no key and unsigned backups not allowed would refuse everything.
    pub fn new(keys: TrustedKeys, allow_unsigned: bool) -> Result<ReadPolicy, TrustError> {
        if keys.is_empty() && !allow_unsigned {
            return Err(TrustError::NoTrustedKey);
        }
        Ok(ReadPolicy {
            keys,
            allow_unsigned,
        })
    }

    /// For a catalog that only commits: it reads nothing, so it trusts nothing.
    pub fn refuse_all() -> ReadPolicy {
        ReadPolicy {
            keys: TrustedKeys::default(),
            allow_unsigned: false,
        }
    }

    /// Decides on a manifest stored under `key` with `bytes` and its `.minisig` text, if any.
    /// Returns the signer's key id when it was checked.
    ///
    /// # Errors
    /// `Untrusted`, naming `key`.
    pub fn check(
        &self,
        key: &str,
        bytes: &[u8],
        signature: Option<&str>,
    ) -> Result<Option<String>, TrustError> {
        match signature {
            Some(sig) if !self.keys.is_empty() => self.keys.verify(key, bytes, sig).map(Some),
            None if self.allow_unsigned => {
                tracing::warn!(key, "UNSIGNED manifest accepted (--allow-unsigned): nothing proves who wrote it");
                Ok(None)
            }
            Some(_) if self.allow_unsigned => {
                tracing::warn!(key, "signature NOT checked: no trusted key is configured (--allow-unsigned)");
                Ok(None)
            }
            _ => Err(TrustError::Untrusted {
                key: key.to_string(),
                detail: "it is not signed; a backup counts only with a signature by a trusted key (--allow-unsigned reads unsigned ones)".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (SigningKey, TrustedKeys) {
        let path = dir.join(name);
        let (public, _) = generate(&path).unwrap();
        (
            SigningKey::from_file(&path).unwrap(),
            TrustedKeys::from_files(&[public]).unwrap(),
        )
    }

    #[test]
    fn a_signature_verifies_with_its_key_only_for_its_bytes_and_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, trusted) = pair(dir.path(), "a.key");
        let (_, stranger) = pair(dir.path(), "b.key");
        let sig = signer.sign("x.manifest.json", b"{\"id\":1}").unwrap();
        assert_eq!(
            trusted
                .verify("x.manifest.json", b"{\"id\":1}", &sig)
                .unwrap(),
            signer.id()
        );
        let msg = |r: Result<String, TrustError>| r.unwrap_err().to_string();
        assert!(
            msg(trusted.verify("x.manifest.json", b"{\"id\":2}", &sig)).contains("does not match")
        );
        assert!(
            msg(trusted.verify("y.manifest.json", b"{\"id\":1}", &sig)).contains("another name")
        );
        assert!(
            msg(stranger.verify("x.manifest.json", b"{\"id\":1}", &sig)).contains("not trusted")
        );
        assert!(msg(trusted.verify("x.manifest.json", b"{}", "garbage")).contains("does not parse"));
    }

    #[test]
    fn a_reader_refuses_unsigned_manifests_unless_told() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, trusted) = pair(dir.path(), "a.key");
        assert!(matches!(
            ReadPolicy::new(TrustedKeys::default(), false),
            Err(TrustError::NoTrustedKey)
        ));
        let strict = ReadPolicy::new(trusted, false).unwrap();
        let sig = signer.sign("k", b"m").unwrap();
        assert_eq!(
            strict.check("k", b"m", Some(&sig)).unwrap(),
            Some(signer.id())
        );
        assert!(strict.check("k", b"m", None).is_err());
        assert!(strict.check("k", b"x", Some(&sig)).is_err());
        let lenient = ReadPolicy::new(TrustedKeys::default(), true).unwrap();
        assert_eq!(lenient.check("k", b"m", None).unwrap(), None);
        assert!(ReadPolicy::refuse_all()
            .check("k", b"m", Some(&sig))
            .is_err());
    }

    #[test]
    fn rotation_trusts_old_and_new_keys_together() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.key");
        let new = dir.path().join("new.key");
        let (old_pub, _) = generate(&old).unwrap();
        let (new_pub, _) = generate(&new).unwrap();
        let both = TrustedKeys::from_files(&[old_pub, new_pub]).unwrap();
        for k in [&old, &new] {
            let s = SigningKey::from_file(k).unwrap();
            let sig = s.sign("k", b"m").unwrap();
            assert_eq!(both.verify("k", b"m", &sig).unwrap(), s.id());
        }
    }

    #[test]
    fn keys_are_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(generate(&path), Err(TrustError::Exists { .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SigningKey::from_file(&path),
            Err(TrustError::KeyTooOpen { .. })
        ));
    }
}
