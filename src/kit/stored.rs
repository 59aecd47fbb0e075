//! Kits in the store: `kit-<id>.json` (the signed manifest: the commit point, created once)
//! and `kit-<id>.<nonce>.tar.zst.age` (the files, age-encrypted; the nonce keeps a leftover of
//! an interrupted save from ever being taken for the object a manifest names).

use std::io::Read;
use std::sync::Arc;

use chrono::Utc;
use sha2::{Digest, Sha256};

use super::{Kit, KitError, KitFile, KitManifest, SCHEMA_VERSION};
use crate::catalog::ObjectRef;
use crate::stages::encrypt::{Identities, Recipients};
use crate::store::{bytes_stream, get_small, Store, StoreError};
use crate::trust::envelope::{read_signed, write_signed, Write};
use crate::trust::{ReadPolicy, SigningKey};

/// The envelope field holding the manifest's text.
const FIELD: &str = "kit";
/// A kit's object, at most (certificates and YAML: a few hundred KiB).
const LARGEST_OBJECT: usize = 256 << 20;
/// Small text: the level hardly matters.
const LEVEL: i32 = 3;

pub fn manifest_key(id: &str) -> String {
    format!("kit-{id}.json")
}

fn object_key(id: &str, nonce: &str) -> String {
    format!("kit-{id}.{nonce}.tar.zst.age")
}

/// What `save` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub id: String,
    /// False: a kit with this content was there already.
    pub uploaded: bool,
}

/// Stores `kit` unless a kit with its content is there: the files as an age-encrypted
/// tar, then the signed manifest (created only if absent).
///
/// # Errors
/// No recipients (a kit is never stored in plaintext); packing or the store fails.
pub async fn save(
    store: &Arc<dyn Store>,
    signer: Option<&SigningKey>,
    recipients: Option<&Recipients>,
    kit: &Kit,
) -> Result<Saved, KitError> {
    let recipients = recipients
        .filter(|r| !r.is_empty())
        .ok_or(KitError::Plaintext)?;
    let id = kit.id();
    // Its name is the digest of what it holds — the CA key among it — so nobody without the
    // files can have put an object there first: one that exists is this content.
    let key = manifest_key(&id);
    if store.list(&key).await?.iter().any(|o| o.key == key) {
        return Ok(Saved {
            id,
            uploaded: false,
        });
    }
    let sealed = seal(kit, recipients)?;
    let nonce = hex::encode(rand::random::<[u8; 6]>());
    let key = object_key(&id, &nonce);
    let size = sealed.len() as u64;
    let sha256 = hex::encode(Sha256::digest(&sealed));
    store.put(&key, bytes_stream(sealed.into())).await?;
    let manifest = KitManifest {
        schema_version: SCHEMA_VERSION,
        id: id.clone(),
        created_at: Utc::now(),
        cluster_id: kit.cluster_id.clone(),
        node: kit.node.clone(),
        versions: kit.versions.clone(),
        files: kit.files.iter().map(|(f, _)| f.clone()).collect(),
        kubernetes_dir: kit.dirs.as_ref().map(|d| d.kubernetes_dir.clone()),
        kubelet_dir: kit.dirs.as_ref().map(|d| d.kubelet_dir.clone()),
        object: ObjectRef { key, size, sha256 },
        recipients: recipients.public_keys(),
    };
    match write_signed(
        store.as_ref(),
        signer,
        &manifest_key(&id),
        FIELD,
        &manifest,
        Write::Create,
    )
    .await
    {
        Ok(()) => Ok(Saved { id, uploaded: true }),
        // Another writer stored the same content just now: ours is an orphan object.
        Err(crate::trust::envelope::EnvelopeError::Store(StoreError::AlreadyExists { .. })) => {
            Ok(Saved {
                id,
                uploaded: false,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// The files as a tar, in the kit's order, compressed and encrypted.
fn seal(kit: &Kit, recipients: &Recipients) -> Result<Vec<u8>, KitError> {
    let mut tar = tar::Builder::new(Vec::new());
    for (f, bytes) in &kit.files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(f.mode);
        header.set_uid(u64::from(f.uid));
        header.set_gid(u64::from(f.gid));
        header.set_cksum();
        tar.append_data(
            &mut header,
            f.path.trim_start_matches('/'),
            bytes.as_slice(),
        )
        .map_err(KitError::Pack)?;
    }
    let tarball = tar.into_inner().map_err(KitError::Pack)?;
    crate::stages::encode::encode_all(&tarball, LEVEL, Some(recipients)).map_err(KitError::Pack)
}

/// Kit `id` with every file, checked: the manifest trusted and its content giving `id`, the
/// object's digest, every file's digest and the set of files.
///
/// # Errors
/// No trusted kit with that id; damage anywhere (nothing of it is returned then).
pub async fn load(
    store: &Arc<dyn Store>,
    policy: &ReadPolicy,
    identities: &Identities,
    id: &str,
) -> Result<(KitManifest, Vec<(KitFile, Vec<u8>)>), KitError> {
    let key = manifest_key(id);
    let manifest = read_signed::<KitManifest>(store.as_ref(), policy, &key, FIELD, "kit manifest")
        .await?
        .ok_or_else(|| KitError::NotFound {
            id: id.to_string(),
            location: store.location(),
        })?;
    let manifest = check_content(manifest, id)?;
    let damaged = |why: String| KitError::Damaged {
        id: id.to_string(),
        why,
    };
    let sealed = get_small(store.as_ref(), &manifest.object.key, LARGEST_OBJECT).await?;
    if hex::encode(Sha256::digest(&sealed)) != manifest.object.sha256 {
        return Err(damaged(format!(
            "object {} does not have the digest its manifest records",
            manifest.object.key
        )));
    }
    let files = unseal(&sealed, identities, &manifest.files).map_err(damaged)?;
    Ok((manifest, files))
}

/// Kit `id`'s manifest from the exact `bytes` of its envelope: trusted, and describing the
/// content its name says (a copy to another store keeps the very bytes it checked).
///
/// # Errors
/// Untrusted, not a kit manifest, or not about the content `id` names.
pub fn manifest_from_bytes(
    policy: &ReadPolicy,
    id: &str,
    bytes: &[u8],
) -> Result<KitManifest, KitError> {
    let manifest = crate::trust::envelope::check_bytes::<KitManifest>(
        policy,
        &manifest_key(id),
        bytes,
        FIELD,
        "kit manifest",
    )?;
    check_content(manifest, id)
}

/// A kit manifest's name is the digest of its content: one that says otherwise is refused.
fn check_content(manifest: KitManifest, id: &str) -> Result<KitManifest, KitError> {
    if manifest.id != id || manifest.content_id() != id {
        return Err(KitError::Damaged {
            id: id.to_string(),
            why: "its manifest does not describe the content its name says".into(),
        });
    }
    Ok(manifest)
}

/// The kit id a key of a kit's manifest names.
pub fn id_of_manifest_key(key: &str) -> Option<&str> {
    let id = key.strip_prefix("kit-")?.strip_suffix(".json")?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The files of a sealed kit, each checked against `expected` (same order, same digests).
fn unseal(
    sealed: &[u8],
    identities: &Identities,
    expected: &[KitFile],
) -> Result<Vec<(KitFile, Vec<u8>)>, String> {
    let plain =
        crate::stages::decode::decoder(sealed, Some(identities)).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(plain);
    let mut out = Vec::with_capacity(expected.len());
    let entries = archive.entries().map_err(|e| e.to_string())?;
    for entry in entries {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let Some(want) = expected.get(out.len()) else {
            return Err("it holds more files than its manifest lists".into());
        };
        let name = entry
            .path()
            .map_err(|e| e.to_string())?
            .display()
            .to_string();
        if name != want.path.trim_start_matches('/') {
            return Err(format!("{name} is where {} should be", want.path));
        }
        let mut bytes = Vec::with_capacity(want.size as usize);
        entry.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        if hex::encode(Sha256::digest(&bytes)) != want.sha256 {
            return Err(format!(
                "{} does not have the digest its manifest records",
                want.path
            ));
        }
        out.push((want.clone(), bytes));
    }
    if out.len() != expected.len() {
        return Err(format!(
            "it holds {} of the {} files its manifest lists",
            out.len(),
            expected.len()
        ));
    }
    Ok(out)
}

/// Every trusted kit in the store, newest first; others are skipped, warned.
///
/// # Errors
/// The store cannot be listed.
pub async fn list(
    store: &Arc<dyn Store>,
    policy: &ReadPolicy,
) -> Result<Vec<KitManifest>, KitError> {
    let mut out = Vec::new();
    for o in store.list("kit-").await? {
        if !o.key.ends_with(".json") {
            continue;
        }
        match read_signed::<KitManifest>(store.as_ref(), policy, &o.key, FIELD, "kit manifest")
            .await
        {
            Ok(Some(m)) if manifest_key(&m.id) == o.key => out.push(m),
            Ok(_) => tracing::warn!(key = %o.key, "not a kit manifest for its name: skipped"),
            Err(e) => tracing::warn!(key = %o.key, error = %e, "kit skipped"),
        }
    }
    out.sort_by_key(|m| std::cmp::Reverse(m.created_at));
    Ok(out)
}
