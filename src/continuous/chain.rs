//! Segments in the store: committing one (object, signature, manifest — the manifest last, so a
//! segment exists only once everything it names is durable), listing chains, and reading a
//! chain back link by link: signature, object digest, body digest, header, hash chain and
//! revision continuity all checked before a record is believed.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::segment::{
    decode_body, encode_body, sha256_hex, Header, Record, SegmentKey, SegmentManifest,
    SCHEMA_VERSION,
};
use super::ContinuousError;
use crate::catalog::{BackupId, Compression, Encryption, ObjectRef};
use crate::stages::encrypt::{Identities, Recipients};
use crate::store::{bytes_stream, get_small, Store, StoreError};
use crate::trust::{Claim, Kind, ReadPolicy, SigningKey};

/// The largest segment manifest a reader accepts.
const MANIFEST_LIMIT: usize = 64 * 1024;
/// The largest segment object a reader accepts (a writer seals far below it).
const OBJECT_LIMIT: usize = 1 << 30;

/// What the first segment of a chain links to: the chain's own name.
pub fn root_hash(chain: &str) -> String {
    sha256_hex(chain.as_bytes())
}

/// How segments are written.
#[derive(Clone)]
pub struct SegmentWriter {
    pub store: Arc<dyn Store>,
    pub recipients: Option<Recipients>,
    pub compression_level: i32,
    pub signer: Option<Arc<SigningKey>>,
}

/// A segment ready to commit, encoded once when sealed: a retried commit re-sends the same
/// body, and the next segment links to its hash.
pub struct Sealed {
    pub header: Header,
    pub body: Vec<u8>,
    /// sha256 of `body`: what the next segment links to.
    pub hash: String,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    pub revisions: u64,
    pub checkpoints: u64,
}

impl Sealed {
    pub fn new(
        header: Header,
        records: &[Record],
        first_at: DateTime<Utc>,
        last_at: DateTime<Utc>,
    ) -> Sealed {
        let body = encode_body(&header, records).unwrap_or_default();
        let count = |f: fn(&Record) -> bool| records.iter().filter(|r| f(r)).count() as u64;
        Sealed {
            hash: sha256_hex(&body),
            body,
            header,
            first_at,
            last_at,
            revisions: count(|r| matches!(r, Record::Rev { .. })),
            checkpoints: count(|r| matches!(r, Record::Checkpoint { .. })),
        }
    }
}

impl SegmentWriter {
    /// Writes the object, then the signature, then the manifest (the commit point: never
    /// overwritten, so of two writers of one link exactly one wins).
    ///
    /// # Errors
    /// The store refuses a write; `AlreadyExists` means another writer committed this link
    /// first.
    pub async fn commit(&self, sealed: &Sealed) -> Result<SegmentManifest, ContinuousError> {
        let body = &sealed.body;
        let h = &sealed.header;
        let key = SegmentKey {
            chain: h.chain.clone(),
            seq: h.seq,
            first_rev: h.first_rev,
        };
        let encrypted = self.recipients.is_some();
        // A fresh name per attempt: a retry after a failed manifest write must not collide
        // with (or overwrite) the object of the attempt before.
        let nonce = super::segment::new_nonce();
        let data_key = key.data_key(encrypted, &nonce);
        let stored = crate::stages::encode::encode_all(
            body,
            self.compression_level,
            self.recipients.as_ref(),
        )
        .map_err(|source| ContinuousError::Encode {
            key: data_key.clone(),
            source,
        })?;
        let object = ObjectRef {
            key: data_key.clone(),
            size: stored.len() as u64,
            sha256: sha256_hex(&stored),
        };
        self.store
            .put(&data_key, bytes_stream(Bytes::from(stored)))
            .await?;
        let manifest = SegmentManifest {
            schema_version: SCHEMA_VERSION,
            cluster_id: h.cluster_id.clone(),
            chain: h.chain.clone(),
            seq: h.seq,
            first_rev: h.first_rev,
            last_rev: h.last_rev,
            first_at: sealed.first_at,
            last_at: sealed.last_at,
            prev_hash: h.prev_hash.clone(),
            hash: sealed.hash.clone(),
            plain_size: body.len() as u64,
            object,
            compression: Compression {
                algorithm: "zstd".into(),
                level: self.compression_level,
            },
            encryption: Encryption::for_recipients(self.recipients.as_ref()),
            revisions: sealed.revisions,
            checkpoints: sealed.checkpoints,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        let manifest_key = key.manifest_key();
        if let Some(signer) = &self.signer {
            let signature = signer.sign(&manifest_key, &text)?;
            self.store
                .put(
                    &key.signature_key(&nonce),
                    bytes_stream(Bytes::from(signature.into_bytes())),
                )
                .await?;
        }
        self.store
            .put(&manifest_key, bytes_stream(Bytes::from(text)))
            .await?;
        Ok(manifest)
    }
}

/// The segments of one chain, by their names (nothing read yet).
#[derive(Debug, Clone)]
pub struct ChainListing {
    pub chain: String,
    pub cluster_id: u64,
    /// In chain order.
    pub segments: Vec<SegmentKey>,
    /// A head object exists (not read yet).
    pub has_head: bool,
}

/// Every chain in the store, oldest first (by the time of their base backup).
///
/// # Errors
/// The listing fails.
pub(super) async fn list_chains(store: &dyn Store) -> Result<Vec<ChainListing>, StoreError> {
    let mut chains: BTreeMap<String, (Vec<SegmentKey>, bool)> = BTreeMap::new();
    for o in store.list(&super::segment::prefix(None)).await? {
        if let Some(k) = SegmentKey::of_manifest_key(&o.key) {
            chains.entry(k.chain.clone()).or_default().0.push(k);
        } else if let Some(chain) = super::head::chain_of_head_key(&o.key) {
            chains.entry(chain.to_string()).or_default().1 = true;
        }
    }
    let mut out: Vec<ChainListing> = chains
        .into_iter()
        .filter_map(|(chain, (mut segments, has_head))| {
            let id = BackupId::parse(&chain)?;
            segments.sort_by_key(|s| s.seq);
            Some(ChainListing {
                chain,
                cluster_id: id.cluster_id,
                segments,
                has_head,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        let time = |c: &ChainListing| BackupId::parse(&c.chain).map(|id| id.time);
        time(a).cmp(&time(b))
    });
    Ok(out)
}

/// Reads and checks one segment manifest: trusted signature, consistent with its name.
///
/// # Errors
/// Unreadable, untrusted, unparsable, or not what its name says.
pub(super) async fn read_manifest(
    store: &dyn Store,
    policy: &ReadPolicy,
    key: &SegmentKey,
) -> Result<SegmentManifest, ContinuousError> {
    Ok(read_for_copy(store, policy, key).await?.manifest)
}

/// A trusted segment manifest with the exact bytes its signature covers, and that signature
/// (its key, its bytes): what a copy to another store writes there, never read twice.
#[derive(Debug, Clone)]
pub struct RawSegment {
    pub manifest: SegmentManifest,
    pub bytes: Vec<u8>,
    pub signature: Option<(String, Vec<u8>)>,
}

/// [`read_manifest`], keeping the bytes and the signature.
///
/// # Errors
/// Unreadable, untrusted, unparsable, or not what its name says.
pub async fn read_for_copy(
    store: &dyn Store,
    policy: &ReadPolicy,
    key: &SegmentKey,
) -> Result<RawSegment, ContinuousError> {
    let manifest_key = key.manifest_key();
    let bytes = get_small(store, &manifest_key, MANIFEST_LIMIT).await?;
    // The signature's name comes from the manifest (its attempt's nonce); nothing else in it is
    // believed before the signature over these exact bytes checks out.
    let nonce = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["object"]["key"].as_str().and_then(|k| key.nonce_of(k)));
    let signature = match &nonce {
        Some(nonce) => match get_small(store, &key.signature_key(nonce), 4096).await {
            Ok(s) => Some((key.signature_key(nonce), s)),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let text = signature
        .as_ref()
        .map(|(_, s)| String::from_utf8_lossy(s).into_owned());
    // Parsed before it is trusted only to learn what it claims (cluster, time); nothing in it
    // is used unless a writer's signature over these exact bytes passes for that claim.
    let m: SegmentManifest =
        serde_json::from_slice(&bytes).map_err(|e| ContinuousError::Invalid {
            key: manifest_key.clone(),
            what: format!("not a segment manifest: {e}"),
        })?;
    let claim = Claim {
        key: &manifest_key,
        kind: Kind::Journal,
        cluster: BackupId::parse(&key.chain).map(|id| id.cluster_id),
        dated: m.last_at,
    };
    policy.check(&claim, &bytes, text.as_deref())?;
    super::clock::not_in_the_future(&manifest_key, m.last_at, Utc::now())?;
    let invalid = |what: String| ContinuousError::Invalid {
        key: manifest_key.clone(),
        what,
    };
    if m.schema_version != SCHEMA_VERSION {
        return Err(invalid(format!(
            "schema version {} is not one this lifeboat reads; upgrade lifeboat",
            m.schema_version
        )));
    }
    if m.chain != key.chain || m.seq != key.seq || m.first_rev != key.first_rev {
        return Err(invalid(
            "it says another chain, sequence number or revision than its name".into(),
        ));
    }
    if m.last_rev < m.first_rev || !m.object.key.starts_with(&key.stem_prefix()) {
        return Err(invalid(
            "its revisions or object key are inconsistent".into(),
        ));
    }
    Ok(RawSegment {
        manifest: m,
        bytes,
        signature,
    })
}

/// Reads a segment's records, checking the object's digest, the body's hash and the body
/// against the manifest.
///
/// # Errors
/// Unreadable, tampered, or undecryptable.
pub async fn read_records(
    store: &dyn Store,
    m: &SegmentManifest,
    identities: Option<&Identities>,
) -> Result<Vec<Record>, ContinuousError> {
    // At most what the signed manifest says the object holds: a larger object (swapped in by
    // whoever can write the bucket) is refused as it streams, not buffered whole first.
    let limit = usize::try_from(m.object.size).map_or(OBJECT_LIMIT, |n| n.min(OBJECT_LIMIT));
    let stored = get_small(store, &m.object.key, limit).await?;
    let invalid = |what: String| ContinuousError::Invalid {
        key: m.object.key.clone(),
        what,
    };
    if sha256_hex(&stored) != m.object.sha256 || stored.len() as u64 != m.object.size {
        return Err(invalid(
            "its bytes do not match the digest in its signed manifest (tampered or damaged)".into(),
        ));
    }
    let encrypted = m.encryption.scheme == "age";
    if encrypted && identities.is_none() {
        return Err(ContinuousError::NeedIdentity {
            key: m.object.key.clone(),
        });
    }
    let mut body = Vec::new();
    let reader = crate::stages::decode::decoder(
        std::io::Cursor::new(stored),
        identities.filter(|_| encrypted),
    )
    .map_err(|e| invalid(format!("cannot decode: {e}")))?;
    // A small object may still decompress to a great deal: read one byte past the signed
    // plain size, enough to tell it is wrong, and no more.
    std::io::Read::read_to_end(
        &mut std::io::Read::take(reader, m.plain_size.saturating_add(1)),
        &mut body,
    )
    .map_err(|e| invalid(format!("cannot decode: {e}")))?;
    if body.len() as u64 != m.plain_size {
        return Err(invalid(format!(
            "it decodes to {} bytes or more where its manifest says {}",
            body.len(),
            m.plain_size
        )));
    }
    if sha256_hex(&body) != m.hash {
        return Err(invalid("its content does not match its hash".into()));
    }
    decode_body(&body, m).map_err(|e| invalid(e.to_string()))
}

/// Checks that `next` follows `prev` (or, for the first link, the chain's root; for the first
/// segment left after retention pruned the head, nothing).
///
/// # Errors
/// A broken link, named.
pub fn check_link(
    prev: Option<&SegmentManifest>,
    next: &SegmentManifest,
) -> Result<(), ContinuousError> {
    let (expected_hash, expected_seq, expected_rev) = match prev {
        Some(p) => (p.hash.clone(), p.seq + 1, Some(p.last_rev + 1)),
        None if next.seq == 1 => (root_hash(&next.chain), 1, None),
        // Retention removed the head of the chain: the first segment left starts it (its
        // signature vouches for it; every later one must link to it).
        None => return Ok(()),
    };
    let broken = |what: String| ContinuousError::BrokenChain {
        chain: next.chain.clone(),
        seq: next.seq,
        what,
    };
    if next.seq != expected_seq {
        return Err(broken(format!("segment {expected_seq} is missing")));
    }
    if next.prev_hash != expected_hash {
        return Err(broken(
            "it does not link to the segment before it (hash chain broken)".into(),
        ));
    }
    if let Some(rev) = expected_rev {
        if next.first_rev != rev {
            return Err(broken(format!(
                "it starts at revision {} where {rev} was due",
                next.first_rev
            )));
        }
    }
    Ok(())
}
