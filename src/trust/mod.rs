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

use chrono::{DateTime, Utc};
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
    #[error("the signing key {path} is readable by others: `chmod 600 {path}` (group-readable, as a Kubernetes Secret with fsGroup mounts it, is accepted)")]
    KeyTooOpen { path: PathBuf },
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("{key}: {detail}")]
    Untrusted { key: String, detail: String },
    #[error("no trusted signing key: pass --trusted-key FILE.pub (or [trust] trusted_keys) — the public half of the writers' signing key — or, to read backups written before signing, trust.allow_unsigned_before = <RFC 3339 time>")]
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

/// The public keys a reader trusts, each with its role and scope.
#[derive(Default)]
pub struct TrustedKeys {
    keys: Vec<TrustedKey>,
}

/// One trusted public key: what it may sign (`role`), for which clusters (all when `None`),
/// and up to when (objects dated after `not_after` are not accepted from it: a retired key).
#[derive(Clone)]
pub struct TrustedKey {
    pk: PublicKey,
    pub role: Role,
    pub clusters: Option<Vec<u64>>,
    pub not_after: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.keys
                    .iter()
                    .map(|k| format!("{} ({})", key_id(k.pk.keynum()), k.role)),
            )
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
        // As for age identities: others' bits refuse; group bits (a Kubernetes Secret mounted
        // with an fsGroup is 0440) only warn — the group is the pod's own.
        match std::fs::metadata(path).map(|m| m.permissions().mode()) {
            Ok(mode) if mode & 0o007 != 0 => {
                return Err(TrustError::KeyTooOpen { path: path.into() })
            }
            Ok(mode) if mode & 0o070 != 0 => {
                tracing::warn!(path = %path.display(), "the signing key is readable by its group: chmod 600 it where no fsGroup needs it");
            }
            _ => {}
        }
        crate::secret::no_core_dumps();
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

impl TrustedKey {
    /// Loads a minisign public key (`FILE.pub` of `signing-key generate`, or a bare key line),
    /// trusted for everything `role` may sign, any cluster, any time.
    ///
    /// # Errors
    /// A file that cannot be read or holds no public key.
    pub fn from_file(path: &Path, role: Role) -> Result<TrustedKey, TrustError> {
        let text = read(path)?;
        let pk = PublicKeyBox::from_string(&text)
            .and_then(PublicKeyBox::into_public_key)
            .or_else(|_| PublicKey::from_base64(text.trim()))
            .map_err(|e| TrustError::BadKey {
                path: path.to_path_buf(),
                what: "public key",
                detail: e.to_string(),
            })?;
        Ok(TrustedKey {
            pk,
            role,
            clusters: None,
            not_after: None,
        })
    }

    pub fn id(&self) -> String {
        key_id(self.pk.keynum())
    }
}

impl TrustedKeys {
    /// Loads public keys trusted as writers (the meaning of `--trusted-key`).
    ///
    /// # Errors
    /// A file that cannot be read or holds no public key.
    pub fn from_files(paths: &[PathBuf]) -> Result<TrustedKeys, TrustError> {
        let mut keys = TrustedKeys::default();
        for path in paths {
            keys.push(TrustedKey::from_file(path, Role::Writer)?);
        }
        Ok(keys)
    }

    /// Adds a key. The same key listed twice keeps its first entry: a key is trusted in one
    /// role and scope, never the widest of several by accident.
    pub fn push(&mut self, key: TrustedKey) {
        if !self.keys.iter().any(|k| k.pk.keynum() == key.pk.keynum()) {
            self.keys.push(key);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The public half of a signing key: a writer trusts what it writes itself, in `role`.
    pub fn add_own(&mut self, signer: &SigningKey, role: Role) {
        self.push(TrustedKey {
            pk: signer.pk.clone(),
            role,
            clusters: None,
            not_after: None,
        });
    }

    /// Checks that `signature` (a `.minisig` text) is a signature of `bytes`, made for `key`,
    /// by one of the trusted keys; returns that key's id.
    ///
    /// # Errors
    /// `Untrusted`, naming `key`: not a signature, another key's, another name's, or not of
    /// these bytes.
    pub fn verify(&self, key: &str, bytes: &[u8], signature: &str) -> Result<String, TrustError> {
        self.verify_key(key, bytes, signature).map(|(_, id)| id)
    }

    /// [`TrustedKeys::verify`], returning the trusted key that signed (its role and scope).
    fn verify_key(
        &self,
        key: &str,
        bytes: &[u8],
        signature: &str,
    ) -> Result<(&TrustedKey, String), TrustError> {
        let untrusted = |detail: String| TrustError::Untrusted {
            key: key.to_string(),
            detail,
        };
        let sig = SignatureBox::from_string(signature)
            .map_err(|e| untrusted(format!("its signature does not parse ({e})")))?;
        let signer = key_id(sig.keynum());
        let trusted = self
            .keys
            .iter()
            .find(|k| k.pk.keynum() == sig.keynum())
            .ok_or_else(|| untrusted(format!("signed by key {signer}, which is not trusted")))?;
        minisign::verify(&trusted.pk, &sig, Cursor::new(bytes), true, false, false)
            .map_err(|e| untrusted(format!("the signature by {signer} does not match ({e})")))?;
        let comment = sig
            .trusted_comment()
            .map_err(|e| untrusted(format!("no trusted comment ({e})")))?;
        if comment != trusted_comment(key) {
            return Err(untrusted(format!(
                "the signature was made for another name ({comment:?})"
            )));
        }
        Ok((trusted, signer))
    }
}

/// What a key may sign (#21): a writer (the nodes that take backups and capture the journal)
/// signs anything; a shadow (off the control plane, with its own S3 principal) signs only its
/// own bases (`reason = shadow`) and its proofs, so a stolen shadow key cannot make a backup that
/// restores as `latest`, nor a segment or head the capture or a point-in-time restore believes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Writer,
    Shadow,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Writer => "writer",
            Role::Shadow => "shadow",
        })
    }
}

/// What a signed object claims to be, from its (already checked) name and content: what the
/// signing key's role and scope must allow.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// The object's key in the store.
    pub key: &'a str,
    pub kind: Kind,
    /// The cluster it belongs to, when its name says.
    pub cluster: Option<u64>,
    /// When it was made, by its name or content: a key's `not_after` applies to it.
    pub dated: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A full backup's manifest; `shadow`: its reason is `shadow`.
    Backup { shadow: bool },
    /// A segment manifest or a chain's head: what restores replay and the capture resumes on.
    Journal,
    /// A shadow's proof of a chain (`proven.json`).
    Proof,
    /// A cluster restore's plan, a node's joining it or its progress.
    Coordination,
    /// A control-plane kit's manifest (the files a rebuilt node needs besides etcd).
    Kit,
}

impl Kind {
    fn allows(self, role: Role) -> bool {
        match (self, role) {
            (_, Role::Writer) => true,
            (Kind::Backup { shadow }, Role::Shadow) => shadow,
            (Kind::Proof, Role::Shadow) => true,
            (Kind::Journal | Kind::Coordination | Kind::Kit, Role::Shadow) => false,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Backup { shadow: true } => "a shadow base",
            Kind::Backup { shadow: false } => "a backup that is not a shadow base",
            Kind::Journal => "a journal segment or head",
            Kind::Proof => "a shadow proof",
            Kind::Coordination => "a cluster restore's plan or a node's part in it",
            Kind::Kit => "a control-plane kit",
        }
    }
}

/// Who signed an object the policy accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub id: String,
    pub role: Role,
}

/// What a reader accepts: objects signed by a trusted key whose role and scope allow them;
/// with `unsigned_before`, also backup manifests without a signature dated before that time
/// (backups written before signing — said loudly). Segments, heads and proofs are never
/// accepted unsigned: they are written only by versions that sign.
pub struct ReadPolicy {
    keys: TrustedKeys,
    unsigned_before: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for ReadPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadPolicy")
            .field("keys", &self.keys)
            .field("unsigned_before", &self.unsigned_before)
            .finish()
    }
}

impl ReadPolicy {
    /// # Errors
    /// `NoTrustedKey`: no key and unsigned backups not allowed would refuse everything.
    pub fn new(
        keys: TrustedKeys,
        unsigned_before: Option<DateTime<Utc>>,
    ) -> Result<ReadPolicy, TrustError> {
        if keys.is_empty() && unsigned_before.is_none() {
            return Err(TrustError::NoTrustedKey);
        }
        Ok(ReadPolicy {
            keys,
            unsigned_before,
        })
    }

    /// For a catalog that only commits: it reads nothing, so it trusts nothing.
    pub fn refuse_all() -> ReadPolicy {
        ReadPolicy {
            keys: TrustedKeys::default(),
            unsigned_before: None,
        }
    }

    /// Decides on the object `claim` describes, stored with `bytes` and its `.minisig` text, if
    /// any. Returns who signed it; `None` for an unsigned backup let through.
    ///
    /// # Errors
    /// `Untrusted`, naming the object's key: unsigned, signed by a key not trusted, not
    /// matching, or signed by a key whose role or scope does not cover it.
    pub fn check(
        &self,
        claim: &Claim<'_>,
        bytes: &[u8],
        signature: Option<&str>,
    ) -> Result<Option<Signer>, TrustError> {
        let untrusted = |detail: String| TrustError::Untrusted {
            key: claim.key.to_string(),
            detail,
        };
        let Some(signature) = signature else {
            return match (claim.kind, self.unsigned_before) {
                (Kind::Backup { .. }, Some(before)) if claim.dated < before => {
                    tracing::warn!(key = claim.key, "UNSIGNED manifest accepted (trust.allow_unsigned_before): nothing proves who wrote it");
                    Ok(None)
                }
                (Kind::Backup { .. }, Some(before)) => Err(untrusted(format!(
                    "it is not signed, and it is dated {} — not before trust.allow_unsigned_before ({before}); only backups older than that may be unsigned",
                    claim.dated
                ))),
                (Kind::Backup { .. }, None) => Err(untrusted(
                    "it is not signed; a backup counts only with a signature by a trusted key (trust.allow_unsigned_before = <time> reads older unsigned ones)".into(),
                )),
                _ => Err(untrusted(
                    "it is not signed; journal objects are never accepted without a signature".into(),
                )),
            };
        };
        let (key, id) = self.keys.verify_key(claim.key, bytes, signature)?;
        if !claim.kind.allows(key.role) {
            return Err(untrusted(format!(
                "signed by key {id}, trusted as {} only, which may not sign {}",
                key.role,
                claim.kind.name()
            )));
        }
        if let Some(clusters) = &key.clusters {
            if !claim.cluster.is_some_and(|c| clusters.contains(&c)) {
                return Err(untrusted(format!(
                    "signed by key {id}, which is trusted only for clusters {}",
                    clusters
                        .iter()
                        .map(|c| format!("{c:x}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        if let Some(not_after) = key.not_after {
            if claim.dated > not_after {
                return Err(untrusted(format!(
                    "signed by key {id}, which is trusted only for objects dated up to {not_after} (this one: {})",
                    claim.dated
                )));
            }
        }
        Ok(Some(Signer { id, role: key.role }))
    }
}

pub mod envelope;

#[cfg(test)]
mod tests;
