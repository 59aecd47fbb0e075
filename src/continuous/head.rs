//! A chain's head: "at `caught_up_at`, every revision the member had — up to `revision` — was
//! durable in this chain". Segments carry receive times only for the revisions they hold, so
//! on a quiet cluster nothing would prove that no write happened after the last one: a restore
//! to "now" by time would have to be refused. While the journal is idle the uploader replaces
//! this one small signed object every `heartbeat_interval` instead of writing segments without
//! revisions. It is state, not history: a reader believes it only when its signature checks
//! and it names the chain's newest link exactly; otherwise it is ignored (the restorable window
//! then ends at the newest segment, as if it did not exist).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::chain::root_hash;
use super::segment::{prefix, SegmentManifest};
use super::signed::{check_signed, read_signed, write_signed, Envelope};
use super::ContinuousError;
use crate::store::Store;
use crate::trust::{ReadPolicy, SigningKey};

const HEAD_SCHEMA: u32 = 1;
const HEAD_NAME: &str = "head.json";
/// The envelope's field, and what a head is called in messages.
const FIELD: &str = "head";
const WHAT: &str = "journal head";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub schema_version: u32,
    pub cluster_id: String,
    pub chain: String,
    /// The chain's newest segment when this was written (0: none yet, only its base backup).
    pub seq: u64,
    /// That segment's hash (the chain's root hash when `seq` is 0).
    pub hash: String,
    /// Its last revision (the base backup's revision when `seq` is 0).
    pub revision: i64,
    pub caught_up_at: DateTime<Utc>,
}

impl Envelope for Head {
    const KIND: crate::trust::Kind = crate::trust::Kind::Journal;
    fn cluster(&self) -> Option<u64> {
        crate::catalog::parse_cluster_id(&self.cluster_id)
    }
    fn dated(&self) -> DateTime<Utc> {
        self.caught_up_at
    }
}

/// `seg.<chain>.head.json`.
pub fn head_key(chain: &str) -> String {
    format!("{}{HEAD_NAME}", prefix(Some(chain)))
}

/// The chain a head key belongs to.
pub fn chain_of_head_key(key: &str) -> Option<&str> {
    key.strip_prefix(&prefix(None))?
        .strip_suffix(HEAD_NAME)?
        .strip_suffix('.')
}

impl Head {
    /// A head naming the newest link: segment `seq` with `hash` ending at `revision` (for a
    /// chain with no segment yet: 0, the chain's root hash and its base backup's revision —
    /// exactly what a capture resumes from).
    pub fn new(cluster_id: u64, chain: &str, seq: u64, hash: &str, revision: i64) -> Head {
        Head {
            schema_version: HEAD_SCHEMA,
            cluster_id: format!("{cluster_id:x}"),
            chain: chain.to_string(),
            seq,
            hash: hash.to_string(),
            revision,
            caught_up_at: DateTime::<Utc>::MIN_UTC,
        }
    }

    /// Moves on to a newly committed segment.
    pub fn follow(&mut self, m: &SegmentManifest) {
        self.seq = m.seq;
        self.hash.clone_from(&m.hash);
        self.revision = m.last_rev;
    }

    /// When the journal was last known caught up, if this head speaks of the chain's newest
    /// link (`last`, or none: the base backup at `base_rev`) — else `None`: a head from
    /// before the newest segment (or one that does not fit at all) proves nothing.
    pub fn covers(&self, chain: &str, last: Option<&SegmentManifest>, base_rev: i64) -> bool {
        if self.chain != chain {
            return false;
        }
        match last {
            Some(m) => self.seq == m.seq && self.hash == m.hash && self.revision == m.last_rev,
            None => self.seq == 0 && self.hash == root_hash(chain) && self.revision == base_rev,
        }
    }
}

/// Signs `head` and replaces the chain's head object with it.
///
/// # Errors
/// Signing or the store fails.
pub async fn write_head(
    store: &dyn Store,
    signer: Option<&SigningKey>,
    head: &Head,
) -> Result<(), ContinuousError> {
    write_signed(store, signer, &head_key(&head.chain), FIELD, head).await
}

/// Reads a chain's head; `None` when there is none.
///
/// # Errors
/// Unreadable, unparsable, untrusted, or about another chain.
pub async fn read_head(
    store: &dyn Store,
    policy: &ReadPolicy,
    chain: &str,
) -> Result<Option<Head>, ContinuousError> {
    let key = head_key(chain);
    let Some(head) = read_signed::<Head>(store, policy, &key, FIELD, WHAT).await? else {
        return Ok(None);
    };
    check_head(head, chain).map(Some)
}

/// The head in `bytes`, read from `chain`'s head key: trusted and about that chain (a copy to
/// another store keeps the very bytes it checked).
///
/// # Errors
/// Unparsable, untrusted, or about another chain.
pub fn head_from_bytes(
    policy: &ReadPolicy,
    chain: &str,
    bytes: &[u8],
) -> Result<Head, ContinuousError> {
    let head = check_signed::<Head>(policy, &head_key(chain), bytes, FIELD, WHAT)?;
    check_head(head, chain)
}

fn check_head(head: Head, chain: &str) -> Result<Head, ContinuousError> {
    let invalid = |what: String| ContinuousError::Invalid {
        key: head_key(chain),
        what,
    };
    if head.schema_version != HEAD_SCHEMA {
        return Err(invalid(format!(
            "schema version {} is not one this lifeboat reads; upgrade lifeboat",
            head.schema_version
        )));
    }
    if head.chain != chain {
        return Err(invalid("it names another chain than its key".into()));
    }
    Ok(head)
}

/// [`read_head`], where a head that cannot be believed only narrows the window (warned).
pub async fn trusted_head(store: &dyn Store, policy: &ReadPolicy, chain: &str) -> Option<Head> {
    match read_head(store, policy, chain).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, chain, "the journal head is ignored: the restorable window ends at the newest segment");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_keys_name_their_chain() {
        let key = head_key("20261129T070000.000Z-00000000000000ab");
        assert_eq!(key, "seg.20261129T070000.000Z-00000000000000ab.head.json");
        assert_eq!(
            chain_of_head_key(&key),
            Some("20261129T070000.000Z-00000000000000ab")
        );
        assert_eq!(
            chain_of_head_key("seg.x.0000000001.0000000000000000002.json"),
            None
        );
        assert_eq!(chain_of_head_key("head.json"), None);
        // Journal retention (which deletes segment objects and orphans) never takes it for one.
        assert!(crate::continuous::SegmentKey::of_any_key(&key).is_none());
    }

    #[test]
    fn a_head_covers_only_the_newest_link_it_names() {
        let on_base = Head::new(0xab, "c", 0, &root_hash("c"), 10);
        assert!(on_base.covers("c", None, 10));
        assert!(!on_base.covers("c", None, 11), "another base revision");
        assert!(!on_base.covers("d", None, 10), "another chain");
        let seg = SegmentManifest {
            seq: 3,
            hash: "h3".into(),
            last_rev: 40,
            ..crate::continuous::segment::tests::manifest(30, 40)
        };
        assert!(
            !on_base.covers("c", Some(&seg), 10),
            "a segment came after it"
        );
        let mut on_seg = on_base.clone();
        on_seg.follow(&seg);
        assert!(on_seg.covers("c", Some(&seg), 10));
        let later = SegmentManifest {
            seq: 4,
            ..seg.clone()
        };
        assert!(!on_seg.covers("c", Some(&later), 10));
        let forged = SegmentManifest {
            hash: "other".into(),
            ..seg
        };
        assert!(!on_seg.covers("c", Some(&forged), 10));
    }
}
