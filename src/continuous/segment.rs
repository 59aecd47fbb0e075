//! The segment format (docs/continuous.md): a segment's plain body is JSON lines — a header,
//! then records in stream order — compressed and encrypted like a snapshot. Its signed
//! manifest names the chain, the revisions it holds, the hash of its body and that of the
//! segment before it, so a chain is verified link by link without trusting the bucket.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::catalog::{Compression, Encryption, ObjectRef};
use crate::etcd::watch::Change;

/// Bumped on incompatible changes; readers refuse versions they do not know.
pub const SCHEMA_VERSION: u32 = 1;

/// One line of a segment's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Record {
    /// The first line: which link of which chain this is.
    Header(Header),
    /// A lease, with the TTL it was granted with, before any revision of this segment that
    /// attaches a key to it (`ttl` 0: it was gone before its TTL could be read). `from_rev`:
    /// the store's revision when it was first seen — the revision that first attached a key to
    /// it, or the revision a listing found it alive at — so a restore to an earlier revision
    /// leaves it out, unless a key at or before the target uses it (#22). `None` in journals
    /// written before it was recorded: granted where it stands.
    Lease {
        id: i64,
        ttl: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_rev: Option<i64>,
    },
    /// One revision: its changes in sub-revision order, and when it was received (ms since
    /// the epoch), which maps a time to a revision.
    Rev {
        rev: i64,
        at_ms: i64,
        changes: Vec<Change>,
    },
    /// A lease found gone once the store had reached `after_rev`: it was revoked (or expired)
    /// at or before that revision; its keys' deletions are in the revisions themselves.
    Revoke { id: i64, after_rev: i64 },
    /// The member's HashKV at `rev` (with its compaction at `compact_rev`): a replay must
    /// arrive at the same hash.
    Checkpoint {
        rev: i64,
        compact_rev: i64,
        hash: u32,
    },
    /// The member compacted at `rev`. `hash` is its HashKV at `rev` with the compaction before
    /// at `compact_rev` (etcd 3.5.5+ keeps that hash from the compaction itself: the state just
    /// before it); `None` where the member gave no such hash (3.4 refuses HashKV at its
    /// compaction point, 3.5 before 3.5.5 hashes after compacting): mirrored unchecked then.
    Compaction {
        rev: i64,
        compact_rev: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hash: Option<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub schema_version: u32,
    pub cluster_id: String,
    pub chain: String,
    pub seq: u64,
    pub prev_hash: String,
    pub first_rev: i64,
    pub last_rev: i64,
}

impl Header {
    /// The header a segment described by `m` must start with.
    pub fn of(m: &SegmentManifest) -> Header {
        Header {
            schema_version: m.schema_version,
            cluster_id: m.cluster_id.clone(),
            chain: m.chain.clone(),
            seq: m.seq,
            prev_hash: m.prev_hash.clone(),
            first_rev: m.first_rev,
            last_rev: m.last_rev,
        }
    }
}

/// The signed description of one segment; a segment exists once this is committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentManifest {
    pub schema_version: u32,
    /// Hex, as etcdctl prints it.
    pub cluster_id: String,
    /// The chain: the id of the full backup it starts from.
    pub chain: String,
    /// 1 for the first segment of a chain, then +1.
    pub seq: u64,
    pub first_rev: i64,
    pub last_rev: i64,
    /// Receive times of the first and last revision.
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    /// `hash` of the segment before (for seq 1: of the chain's base backup id).
    pub prev_hash: String,
    /// sha256 of the plain body (which repeats `prev_hash` in its header).
    pub hash: String,
    pub plain_size: u64,
    pub object: ObjectRef,
    pub compression: Compression,
    pub encryption: Encryption,
    pub revisions: u64,
    pub checkpoints: u64,
    pub tool_version: String,
}

/// Where a chain's segments are: `seg.<chain>.<seq>.<first rev>.<ext>`, zero-padded so that
/// names sort in chain order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentKey {
    pub chain: String,
    pub seq: u64,
    pub first_rev: i64,
}

const PREFIX: &str = "seg.";
const MANIFEST_EXT: &str = ".json";
const SIGNATURE_EXT: &str = ".json.minisig";
const DATA_EXT_AGE: &str = ".jsonl.zst.age";
const DATA_EXT_PLAIN: &str = ".jsonl.zst";

/// The prefix every segment key starts with; with a chain, that chain's.
pub fn prefix(chain: Option<&str>) -> String {
    match chain {
        Some(c) => format!("{PREFIX}{c}."),
        None => PREFIX.to_string(),
    }
}

impl SegmentKey {
    fn stem(&self) -> String {
        format!(
            "{PREFIX}{}.{:010}.{:019}",
            self.chain, self.seq, self.first_rev
        )
    }

    pub fn manifest_key(&self) -> String {
        format!("{}{MANIFEST_EXT}", self.stem())
    }

    /// The signature of the manifest written by the attempt `nonce`. Each attempt writes its
    /// own object and signature and only the manifest (written last, never overwritten) decides
    /// which attempt is the segment: a writer that died after its signature cannot block the
    /// next one, and the manifest names the nonce (in its object key) that its signature has.
    pub fn signature_key(&self, nonce: &str) -> String {
        format!("{}.{nonce}{SIGNATURE_EXT}", self.stem())
    }

    /// The nonce of the attempt that wrote `object_key` (a key of this segment).
    pub fn nonce_of(&self, object_key: &str) -> Option<String> {
        let rest = object_key.strip_prefix(&self.stem_prefix())?;
        let nonce = rest.split('.').next()?;
        valid_nonce(nonce).then(|| nonce.to_string())
    }

    /// The data object's key; `nonce` (16 hex digits) tells the attempts of writers apart.
    pub fn data_key(&self, encrypted: bool, nonce: &str) -> String {
        let ext = if encrypted {
            DATA_EXT_AGE
        } else {
            DATA_EXT_PLAIN
        };
        format!("{}.{nonce}{ext}", self.stem())
    }

    /// What every object of this segment starts with.
    pub fn stem_prefix(&self) -> String {
        format!("{}.", self.stem())
    }

    /// The segment a manifest key names; `None` for any other key.
    pub fn of_manifest_key(key: &str) -> Option<SegmentKey> {
        Self::parse_stem(key.strip_suffix(MANIFEST_EXT)?)
    }

    /// The segment any of its objects belongs to.
    pub fn of_any_key(key: &str) -> Option<SegmentKey> {
        if let Some(with_nonce) = [SIGNATURE_EXT, DATA_EXT_AGE, DATA_EXT_PLAIN]
            .iter()
            .find_map(|ext| key.strip_suffix(ext))
        {
            let (stem, nonce) = with_nonce.rsplit_once('.')?;
            return valid_nonce(nonce).then(|| Self::parse_stem(stem)).flatten();
        }
        Self::of_manifest_key(key)
    }

    fn parse_stem(stem: &str) -> Option<SegmentKey> {
        let rest = stem.strip_prefix(PREFIX)?;
        let mut parts = rest.rsplitn(3, '.');
        let first = parts.next()?;
        let seq = parts.next()?;
        let chain = parts.next()?;
        let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(first, 19)
            || !digits(seq, 10)
            || crate::catalog::BackupId::parse(chain).is_none()
        {
            return None;
        }
        Some(SegmentKey {
            chain: chain.to_string(),
            seq: seq.parse().ok()?,
            first_rev: first.parse().ok()?,
        })
    }
}

fn valid_nonce(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A new attempt's nonce.
pub fn new_nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// sha256 as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The plain body: the header line, then one line per record.
///
/// # Errors
/// Only if serde_json fails on our own types, which it does not.
pub fn encode_body(header: &Header, records: &[Record]) -> serde_json::Result<Vec<u8>> {
    let mut out = serde_json::to_vec(&Record::Header(header.clone()))?;
    out.push(b'\n');
    for r in records {
        serde_json::to_writer(&mut out, r)?;
        out.push(b'\n');
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("line {line}: {source}")]
    Json {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Parses a plain body and checks it against its manifest: the header repeats the manifest,
/// revisions run from `first_rev` to `last_rev` without a hole, each with at least one change.
///
/// # Errors
/// Any line that does not parse, or any disagreement, named.
pub fn decode_body(body: &[u8], m: &SegmentManifest) -> Result<Vec<Record>, BodyError> {
    let mut records = Vec::new();
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let r: Record = serde_json::from_slice(line).map_err(|source| BodyError::Json {
            line: n + 1,
            source,
        })?;
        records.push(r);
    }
    let invalid = |what: String| Err(BodyError::Invalid(what));
    let Some(Record::Header(h)) = records.first() else {
        return invalid("the first line is not a header".into());
    };
    let expected = Header::of(m);
    if *h != expected {
        return invalid(format!(
            "its header {h:?} does not match the manifest {expected:?}"
        ));
    }
    let mut next = m.first_rev;
    for r in &records[1..] {
        match r {
            Record::Header(_) => return invalid("a second header".into()),
            Record::Rev { rev, changes, .. } => {
                if *rev != next {
                    return invalid(format!("revision {rev} where {next} was due"));
                }
                if changes.is_empty() {
                    return invalid(format!("revision {rev} has no change"));
                }
                next += 1;
            }
            _ => {}
        }
    }
    if next != m.last_rev + 1 {
        return invalid(format!(
            "revisions end at {} but the manifest says {}",
            next - 1,
            m.last_rev
        ));
    }
    Ok(records.split_off(1))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn manifest(first: i64, last: i64) -> SegmentManifest {
        SegmentManifest {
            schema_version: SCHEMA_VERSION,
            cluster_id: "abc".into(),
            chain: "etcd-20261129T042350.934Z-6d9780159c4d479d-c5f1".into(),
            seq: 3,
            first_rev: first,
            last_rev: last,
            first_at: Utc::now(),
            last_at: Utc::now(),
            prev_hash: "00".into(),
            hash: String::new(),
            plain_size: 0,
            object: ObjectRef {
                key: "k".into(),
                size: 0,
                sha256: String::new(),
            },
            compression: Compression {
                algorithm: "zstd".into(),
                level: 3,
            },
            encryption: Encryption {
                scheme: "none".into(),
                recipients: vec![],
            },
            revisions: 0,
            checkpoints: 0,
            tool_version: "t".into(),
        }
    }

    fn header(m: &SegmentManifest) -> Header {
        Header::of(m)
    }

    fn rev(rev: i64) -> Record {
        Record::Rev {
            rev,
            at_ms: 1,
            changes: vec![Change::Delete { key: vec![1] }],
        }
    }

    #[test]
    fn keys_round_trip_and_sort_in_chain_order() {
        let k = SegmentKey {
            chain: manifest(1, 1).chain,
            seq: 12,
            first_rev: 345,
        };
        assert_eq!(
            SegmentKey::of_manifest_key(&k.manifest_key()),
            Some(k.clone())
        );
        for key in [
            k.signature_key("0badcafe0badcafe"),
            k.data_key(true, "0badcafe0badcafe"),
            k.data_key(false, "1234567812345678"),
        ] {
            assert_eq!(SegmentKey::of_any_key(&key), Some(k.clone()), "{key}");
            assert_eq!(SegmentKey::of_manifest_key(&key), None, "{key}");
        }
        let later = SegmentKey {
            seq: 13,
            first_rev: 400,
            ..k.clone()
        };
        assert!(k.manifest_key() < later.manifest_key());
        assert!(SegmentKey::of_manifest_key("seg.nonsense.1.2.json").is_none());
        assert!(SegmentKey::of_manifest_key("etcd-x.manifest.json").is_none());
    }

    #[test]
    fn a_body_decodes_only_when_it_matches_its_manifest_without_holes() {
        let m = manifest(10, 12);
        let good = encode_body(
            &header(&m),
            &[
                rev(10),
                Record::Lease {
                    id: 5,
                    ttl: 60,
                    from_rev: Some(11),
                },
                rev(11),
                rev(12),
            ],
        )
        .unwrap();
        assert_eq!(decode_body(&good, &m).unwrap().len(), 4);
        let hole = encode_body(&header(&m), &[rev(10), rev(12)]).unwrap();
        assert!(decode_body(&hole, &m)
            .unwrap_err()
            .to_string()
            .contains("11 was due"));
        let short = encode_body(&header(&m), &[rev(10), rev(11)]).unwrap();
        assert!(decode_body(&short, &m).is_err());
        let mut other = header(&m);
        other.prev_hash = "ff".into();
        let relinked = encode_body(&other, &[rev(10), rev(11), rev(12)]).unwrap();
        assert!(decode_body(&relinked, &m)
            .unwrap_err()
            .to_string()
            .contains("header"));
        assert!(decode_body(b"not json\n", &m).is_err());
    }
}
