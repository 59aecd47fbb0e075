//! age: encryption to X25519 public recipients; decryption with identity files.
//!
//! Writing needs only public keys (`age1…`), so the service never holds a private key.
//! Identities are loaded only to read a backup back (verify, get, restore, drill).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{origin}: `{shown}` is a private age identity, not a recipient: give the public key (age1…, from `age-keygen -y KEYFILE`); private keys are only needed to read backups back")]
    PrivateKeyAsRecipient { origin: String, shown: String },
    #[error("{origin}: `{value}` is not an age X25519 recipient (age1…)")]
    BadRecipient { origin: String, value: String },
    #[error("cannot read the recipients file {path}: {source}")]
    RecipientsFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the identity file {path}: {source}; pass the age key file that `age-keygen` wrote (--identity)")]
    IdentityFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the identity file {path} holds no usable age identity ({detail})")]
    NoIdentity { path: PathBuf, detail: String },
    #[error("the identity file {path} is readable by every user of this machine: a private key that everyone can read protects nothing; `chmod 600 {path}` (and rotate the key if others had access)")]
    WorldReadable { path: PathBuf },
}

/// A set of recipients, each remembered with its text for the manifest.
#[derive(Clone)]
pub struct Recipients {
    keys: Vec<age::x25519::Recipient>,
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.public_keys()).finish()
    }
}

impl Recipients {
    /// Parses `age1…` strings; `origin` says where they came from, for messages.
    ///
    /// # Errors
    /// A private key, or anything that is not an X25519 recipient.
    pub fn parse<'a>(
        origin: &str,
        values: impl IntoIterator<Item = &'a str>,
    ) -> Result<Recipients, KeyError> {
        let mut keys = Vec::new();
        for raw in values {
            let value = raw.trim();
            if value.is_empty() || value.starts_with('#') {
                continue;
            }
            if looks_secret(value) {
                return Err(KeyError::PrivateKeyAsRecipient {
                    origin: origin.to_string(),
                    shown: "AGE-SECRET-KEY-…".into(),
                });
            }
            let key =
                age::x25519::Recipient::from_str(value).map_err(|_| KeyError::BadRecipient {
                    origin: origin.to_string(),
                    value: shown(value),
                })?;
            keys.push(key);
        }
        Ok(Recipients { keys })
    }

    /// Reads a recipients file: one `age1…` per line, `#` comments.
    ///
    /// # Errors
    /// Unreadable file or bad lines.
    pub fn from_file(path: &Path) -> Result<Recipients, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::RecipientsFile {
            path: path.to_path_buf(),
            source,
        })?;
        Recipients::parse(&path.display().to_string(), text.lines())
    }

    pub fn extend(&mut self, other: Recipients) {
        for k in other.keys {
            if !self.keys.iter().any(|x| x.to_string() == k.to_string()) {
                self.keys.push(k);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn public_keys(&self) -> Vec<String> {
        self.keys.iter().map(ToString::to_string).collect()
    }

    /// Wraps `inner` so that what is written comes out as a standard age file.
    ///
    /// # Errors
    /// Writing the header fails.
    pub fn encryptor<W: Write>(&self, inner: W) -> io::Result<age::stream::StreamWriter<W>> {
        let encryptor =
            age::Encryptor::with_recipients(self.keys.iter().map(|k| k as &dyn age::Recipient))
                .map_err(|e| io::Error::other(format!("age: {e}")))?;
        encryptor.wrap_output(inner)
    }
}

/// Private X25519 keys, loaded from an identity file for reading backups back.
pub struct Identities {
    identities: Vec<age::x25519::Identity>,
}

impl Identities {
    /// Loads an identity file as `age-keygen` writes it (`AGE-SECRET-KEY-1…` lines, `#`
    /// comments). Plugin, SSH and passphrase-protected identity files are not supported.
    ///
    /// # Errors
    /// Unreadable file, a line that is not an identity, or no identity at all.
    pub fn from_file(path: &Path) -> Result<Identities, KeyError> {
        match permissions(path) {
            Some(mode) if mode & 0o004 != 0 => {
                return Err(KeyError::WorldReadable {
                    path: path.to_path_buf(),
                })
            }
            Some(mode) if mode & 0o070 != 0 => {
                tracing::warn!(path = %path.display(), "the identity file is readable by its group: chmod 600 it");
            }
            _ => {}
        }
        crate::secret::no_core_dumps();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::IdentityFile {
            path: path.to_path_buf(),
            source,
        })?;
        let mut identities = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let id = age::x25519::Identity::from_str(line).map_err(|_| KeyError::NoIdentity {
                path: path.to_path_buf(),
                detail: format!(
                    "line {} is not an age X25519 identity (AGE-SECRET-KEY-1…)",
                    n + 1
                ),
            })?;
            identities.push(id);
        }
        if identities.is_empty() {
            return Err(KeyError::NoIdentity {
                path: path.to_path_buf(),
                detail: "the file holds no AGE-SECRET-KEY-1… line".into(),
            });
        }
        Ok(Identities { identities })
    }

    /// Wraps an age file reader into a plaintext reader.
    ///
    /// # Errors
    /// Not an age file, or none of the identities opens it.
    pub fn decryptor<R: Read>(
        &self,
        inner: R,
    ) -> Result<age::stream::StreamReader<R>, age::DecryptError> {
        let decryptor = age::Decryptor::new(inner)?;
        decryptor.decrypt(self.identities.iter().map(|i| i as &dyn age::Identity))
    }
}

/// What a message may show of a rejected recipient: a public key's text, never more than 80
/// characters of it; anything else only by its length (it might be a mangled secret).
fn shown(value: &str) -> String {
    if value.starts_with("age1") && value.bytes().all(|b| b.is_ascii_alphanumeric()) {
        value.chars().take(80).collect()
    } else {
        format!("<{} characters, not shown>", value.chars().count())
    }
}

/// The permission bits of a file (after following links, as a reader sees it).
fn permissions(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
}

/// Does `value` look like any kind of age private key? Such text is never echoed.
fn looks_secret(value: &str) -> bool {
    let upper = value.to_ascii_uppercase();
    upper.contains("AGE-SECRET-KEY-")
        || upper.contains("SECRET")
        || upper.starts_with("AGE-PLUGIN-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[test]
    fn a_private_key_given_as_recipient_is_refused_without_echoing_it() {
        let id = age::x25519::Identity::generate();
        let secret = id.to_string();
        let err = Recipients::parse("--recipient", [secret.expose_secret()])
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(msg.contains("private age identity"), "{msg}");
        assert!(
            !msg.contains(&secret.expose_secret()[16..]),
            "must not echo the key"
        );
    }

    /// Regression: a quoted private key slipped past the prefix check and was echoed into
    /// the log as a "bad recipient".
    #[test]
    fn a_mangled_private_key_is_never_echoed() {
        let id = age::x25519::Identity::generate();
        let secret = id.to_string();
        let body = &secret.expose_secret()[16..];
        for mangled in [
            format!("\"{}\"", secret.expose_secret()),
            format!("'{}'", secret.expose_secret().to_lowercase()),
            format!("key={}", secret.expose_secret()),
            body.to_string(),
        ] {
            let msg = Recipients::parse("backup.recipients", [mangled.as_str()])
                .err()
                .unwrap()
                .to_string();
            assert!(
                !msg.to_lowercase().contains(&body.to_lowercase()),
                "echoed: {msg}"
            );
        }
        let msg = Recipients::parse("r", ["age1notavalidkey"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            msg.contains("age1notavalidkey"),
            "public keys are shown: {msg}"
        );
    }

    #[test]
    fn a_world_readable_identity_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.txt");
        let id = age::x25519::Identity::generate();
        std::fs::write(&path, format!("{}\n", id.to_string().expose_secret())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identities::from_file(&path).err().unwrap();
        assert!(matches!(err, KeyError::WorldReadable { .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(
            Identities::from_file(&path).is_ok(),
            "group-readable only warns"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Identities::from_file(&path).is_ok());
    }

    #[test]
    fn loading_an_identity_makes_the_process_not_dumpable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.txt");
        let id = age::x25519::Identity::generate();
        crate::fsutil::write_atomic(&path, id.to_string().expose_secret().as_bytes()).unwrap();
        Identities::from_file(&path).unwrap();
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            rustix::process::DumpableBehavior::NotDumpable
        );
    }

    #[test]
    fn round_trip_through_age() {
        let id = age::x25519::Identity::generate();
        let recipients = Recipients::parse("test", [id.to_public().to_string().as_str()]).unwrap();
        let mut w = recipients.encryptor(Vec::new()).unwrap();
        w.write_all(b"secret etcd data").unwrap();
        let sealed = w.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.txt");
        crate::fsutil::write_atomic(&key, id.to_string().expose_secret().as_bytes()).unwrap();
        let ids = Identities::from_file(&key).unwrap();
        let mut out = Vec::new();
        ids.decryptor(&sealed[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"secret etcd data");
    }

    #[test]
    fn garbage_recipients_are_named() {
        let err = Recipients::parse("config recipients", ["age1nope"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("age1nope"));
    }
}
