//! The v3 store's membership (#26): bucket `members` (one JSON member per id) and bucket
//! `members_removed` (ids), read from a snapshot with no etcd started. etcd 3.5 trusts its v2
//! store for membership and only writes these buckets; 3.6 trusts them. Where they disagree
//! with the live member list, a 3.6 member brings removed members back ("zombie members") or
//! loses live ones, and the cluster stops. 3.5.26+ repairs the buckets from the v2 store.

use std::fmt;

use serde::{Deserialize, Serialize};

pub(super) const MEMBERS_BUCKET: &[u8] = b"members";
pub(super) const REMOVED_BUCKET: &[u8] = b"members_removed";

/// A member as bucket `members` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketMember {
    #[serde(with = "hex_id")]
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
}

/// Both buckets of one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub members: Vec<BucketMember>,
    #[serde(with = "hex_ids")]
    pub removed: Vec<u64>,
}

/// A member of the live member list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveMember {
    #[serde(with = "hex_id")]
    pub id: u64,
    pub name: String,
}

impl LiveMember {
    pub fn of(m: &crate::etcd::membership::Member) -> LiveMember {
        LiveMember {
            id: m.id,
            name: m.name.clone(),
        }
    }
}

/// Where the buckets and the live list disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "finding", rename_all = "kebab-case")]
pub enum Finding {
    /// In bucket `members`, not live, not in `members_removed`: etcd 3.6 would bring it back.
    Zombie {
        #[serde(with = "hex_id")]
        id: u64,
        name: String,
        peer_urls: Vec<String>,
    },
    /// Live, not in bucket `members`: etcd 3.6 would not know it.
    Missing {
        #[serde(with = "hex_id")]
        id: u64,
        name: String,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Zombie { id, name, peer_urls } => write!(
                f,
                "zombie member {id:x} ({}, {}): in the v3 store's `members` bucket but not in the live member list nor in `members_removed` — etcd 3.6 would bring it back",
                if name.is_empty() { "no name" } else { name },
                peer_urls.join(",")
            ),
            Finding::Missing { id, name } => write!(
                f,
                "live member {id:x} ({name}) is missing from the v3 store's `members` bucket — etcd 3.6 would not know it"
            ),
        }
    }
}

/// The fix, for messages: what the maintainers' safe path does.
pub const FIX: &str = "upgrade every member to etcd 3.5.26+ (it repairs the v3 store from the v2 store), wait until all are healthy, take a new backup and check again";

impl Membership {
    /// Every disagreement between these buckets and the `live` member list.
    pub fn findings(&self, live: &[LiveMember]) -> Vec<Finding> {
        let is_live = |id: u64| live.iter().any(|l| l.id == id);
        let mut out: Vec<Finding> = self
            .members
            .iter()
            .filter(|m| !is_live(m.id) && !self.removed.contains(&m.id))
            .map(|m| Finding::Zombie {
                id: m.id,
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
            })
            .collect();
        out.extend(
            live.iter()
                .filter(|l| !self.members.iter().any(|m| m.id == l.id))
                .map(|l| Finding::Missing {
                    id: l.id,
                    name: l.name.clone(),
                }),
        );
        out
    }

    /// One line for `snapshot status` and the drill.
    pub fn summary(&self) -> String {
        let names: Vec<String> = self
            .members
            .iter()
            .map(|m| match m.name.as_str() {
                "" => format!("{:x}", m.id),
                n => format!("{n} ({:x})", m.id),
            })
            .collect();
        format!(
            "{} in bucket `members` [{}], {} in `members_removed`",
            self.members.len(),
            names.join(", "),
            self.removed.len()
        )
    }

    pub(super) fn record_member(&mut self, key: &[u8], value: &[u8]) {
        if let Some(id) = member_id(key) {
            self.members.push(parse_member(id, value));
        }
    }

    pub(super) fn record_removed(&mut self, key: &[u8]) {
        if let Some(id) = member_id(key) {
            self.removed.push(id);
        }
    }
}

/// The zombie-member check found disagreements: etcd 3.6 must not start on this membership.
#[derive(Debug, thiserror::Error)]
#[error("{what}: the v3 store's membership disagrees with the live member list ({} finding(s): {}); {FIX}", .findings.len(), .findings.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct Inconsistent {
    /// What was checked (a member's snapshot, a file, a backup).
    pub what: String,
    pub findings: Vec<Finding>,
}

/// Why the live cluster's membership could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("reading the member list and a snapshot of {endpoint}: {source}")]
    Source {
        endpoint: String,
        #[source]
        source: crate::etcd::SourceError,
    },
    #[error("the snapshot of {endpoint} does not read as etcd's: {source}")]
    Snapshot {
        endpoint: String,
        #[source]
        source: crate::bbolt::BoltError,
    },
}

/// The live member list and the v3 store's membership of the member `source` is bound to,
/// from its snapshot streamed through the verifier (nothing on disk; memory stays flat).
///
/// # Errors
/// The member does not answer or its snapshot is not a bbolt file.
pub async fn read_live(
    source: &mut crate::etcd::EtcdSource,
) -> Result<(Membership, Vec<LiveMember>), LiveError> {
    use crate::etcd::{SnapshotPiece, Source};
    use futures::StreamExt;
    let endpoint = source.endpoint().to_string();
    let failed = |source| LiveError::Source {
        endpoint: endpoint.clone(),
        source,
    };
    let live: Vec<LiveMember> = source
        .members()
        .await
        .map_err(failed)?
        .iter()
        .map(LiveMember::of)
        .collect();
    let mut verifier = super::StreamVerifier::new(std::path::Path::new(&endpoint), None);
    let mut pieces = Source::snapshot(source).await.map_err(failed)?;
    while let Some(piece) = pieces.next().await {
        match piece.map_err(failed)? {
            SnapshotPiece::Data(bytes) => verifier.feed(&bytes),
            SnapshotPiece::Trailer(_) => break,
        }
    }
    let checked = verifier.finish().map_err(|source| LiveError::Snapshot {
        endpoint: endpoint.clone(),
        source,
    })?;
    Ok((checked.info.membership, live))
}

/// etcd's key in both buckets: the id in lowercase hex, unpadded (`types.ID.String()`).
pub(super) fn member_id(key: &[u8]) -> Option<u64> {
    if key.is_empty() || key.len() > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(key).ok()?, 16).ok()
}

/// The JSON etcd stores (`{"id":…,"peerURLs":[…],"name":…,"clientURLs":[…],"isLearner":…}`);
/// the key's id wins, as in etcd 3.6's reader. An unreadable value keeps the id only.
fn parse_member(id: u64, value: &[u8]) -> BucketMember {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Stored {
        name: String,
        #[serde(rename = "peerURLs")]
        peer_urls: Vec<String>,
        #[serde(rename = "isLearner")]
        is_learner: bool,
    }
    let s: Stored = serde_json::from_slice(value).unwrap_or_default();
    BucketMember {
        id,
        name: s.name,
        peer_urls: s.peer_urls,
        is_learner: s.is_learner,
    }
}

/// Member ids as etcd prints them: hex.
mod hex_id {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{id:x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
    }
}

mod hex_ids {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ids: &[u64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(ids.iter().map(|id| format!("{id:x}")))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| u64::from_str_radix(s, 16).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(members: &[(u64, &str)], removed: &[u64]) -> Membership {
        let mut m = Membership::default();
        for (id, name) in members {
            let json = format!(
                r#"{{"id":{id},"peerURLs":["https://{name}:2380"],"name":"{name}","clientURLs":["https://{name}:2379"]}}"#
            );
            m.record_member(format!("{id:x}").as_bytes(), json.as_bytes());
        }
        for id in removed {
            m.record_removed(format!("{id:x}").as_bytes());
        }
        m
    }

    fn live(members: &[(u64, &str)]) -> Vec<LiveMember> {
        members
            .iter()
            .map(|(id, name)| LiveMember {
                id: *id,
                name: (*name).into(),
            })
            .collect()
    }

    #[test]
    fn keys_are_etcds_unpadded_hex_ids() {
        assert_eq!(member_id(b"8e9e05c52164694d"), Some(0x8e9e_05c5_2164_694d));
        assert_eq!(member_id(b"2a"), Some(0x2a));
        assert_eq!(member_id(b"clusterVersion"), None);
        assert_eq!(member_id(b""), None);
        assert_eq!(member_id(b"12345678901234567"), None);
    }

    #[test]
    fn a_removed_member_left_in_the_bucket_is_a_zombie_and_a_live_one_missing_is_named() {
        let (a, b, c) = (0xa1, 0xb2, 0xc3);
        // Consistent: c removed and recorded as removed.
        let clean = bucket(&[(a, "a"), (b, "b")], &[c]);
        assert!(clean.findings(&live(&[(a, "a"), (b, "b")])).is_empty());
        // c still in `members`, not in `members_removed`: the blog's zombie.
        let zombie = bucket(&[(a, "a"), (b, "b"), (c, "c")], &[]);
        let f = zombie.findings(&live(&[(a, "a"), (b, "b")]));
        assert_eq!(
            f,
            vec![Finding::Zombie {
                id: c,
                name: "c".into(),
                peer_urls: vec!["https://c:2380".into()]
            }]
        );
        assert!(f[0]
            .to_string()
            .starts_with("zombie member c3 (c, https://c:2380)"));
        // Recorded as removed too: etcd 3.6 skips it.
        assert!(bucket(&[(a, "a"), (c, "c")], &[c])
            .findings(&live(&[(a, "a")]))
            .is_empty());
        // A live member the bucket lacks.
        let f = bucket(&[(a, "a")], &[]).findings(&live(&[(a, "a"), (b, "b")]));
        assert_eq!(
            f,
            vec![Finding::Missing {
                id: b,
                name: "b".into()
            }]
        );
    }

    #[test]
    fn the_summary_and_json_use_hex_ids() {
        let m = bucket(&[(0xa1, "a")], &[0xc3]);
        assert_eq!(
            m.summary(),
            "1 in bucket `members` [a (a1)], 1 in `members_removed`"
        );
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["members"][0]["id"], "a1");
        assert_eq!(json["removed"][0], "c3");
        assert_eq!(serde_json::from_value::<Membership>(json).unwrap(), m);
        // A value that is not JSON keeps the id.
        let mut odd = Membership::default();
        odd.record_member(b"ff", b"\x00garbage");
        assert_eq!(odd.members[0].id, 0xff);
        assert_eq!(odd.members[0].name, "");
    }
}
