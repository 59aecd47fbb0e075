//! The change history of the whole keyspace, from one member, grouped by revision; and the
//! lease facts the watch does not carry (granted TTLs, which leases exist).
//!
//! Every mutating request makes exactly one revision, and the events of a revision come in
//! sub-revision order, so a revision replayed as one txn with its changes in this order comes
//! out identical (revision, create revision, version). A large revision may arrive in
//! fragments (`fragment` is requested so no single message outgrows the decode limit); a
//! revision is handed out only once its last fragment is in.

use etcd_client::{EventType, LeaseTimeToLiveOptions, WatchOptions, WatchResponse, WatchStream};
use serde::{Deserialize, Serialize};

use super::{Cause, EtcdSource, SourceError};

/// One change of one revision. A delete carries only its key (etcd sends no more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    Put {
        #[serde(with = "b64")]
        key: Vec<u8>,
        #[serde(with = "b64")]
        value: Vec<u8>,
        /// The key's create revision and version after this put, as etcd reported them.
        create: i64,
        version: i64,
        #[serde(default, skip_serializing_if = "is_zero")]
        lease: i64,
    },
    Delete {
        #[serde(with = "b64")]
        key: Vec<u8>,
    },
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// Bytes as standard base64 in JSON.
mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// All changes of one revision, in sub-revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub rev: i64,
    pub changes: Vec<Change>,
}

/// What the watch says next.
#[derive(Debug)]
pub enum WatchItem {
    /// Complete revisions, oldest first.
    Revisions(Vec<Revision>),
    /// "Every revision up to this one has been sent" (a progress notification).
    Progress(i64),
}

/// The watch on the whole keyspace.
pub struct ChangeStream {
    stream: WatchStream,
    responses: Reassembly,
}

/// Responses → items: fragments joined, revisions grouped.
struct Reassembly {
    endpoint: String,
    /// Events of a response whose last fragment has not arrived yet.
    pending: Vec<etcd_client::Event>,
}

impl EtcdSource {
    /// Watches every key from revision `from` on. `max_message` bounds one decoded message
    /// (fragments keep each under the server's request size limit).
    ///
    /// # Errors
    /// The member is unreachable or refuses the watch.
    pub async fn watch_changes(
        &mut self,
        from: i64,
        max_message: usize,
    ) -> Result<ChangeStream, SourceError> {
        let options = WatchOptions::new()
            .with_all_keys()
            .with_start_revision(from)
            .with_fragment()
            .with_progress_notify();
        let mut client = self
            .client
            .watch_client()
            .max_decoding_message_size(max_message);
        let stream = self
            .call("Watch", client.watch(vec![0u8], Some(options)))
            .await?;
        Ok(ChangeStream {
            stream,
            responses: Reassembly {
                endpoint: self.endpoint.clone(),
                pending: Vec::new(),
            },
        })
    }

    /// The TTL a lease was granted with; `None` when the lease does not exist (any more).
    ///
    /// # Errors
    /// Unreachable or refused.
    pub async fn lease_granted_ttl(&mut self, id: i64) -> Result<Option<i64>, SourceError> {
        let mut client = self.client.clone();
        let r = self
            .call(
                "LeaseTimeToLive",
                client.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new())),
            )
            .await?;
        Ok((r.ttl() >= 0).then_some(r.granted_ttl()))
    }

    /// The ids of every lease that exists now, and the store's revision when that was so.
    ///
    /// # Errors
    /// Unreachable or refused.
    pub async fn lease_ids(&mut self) -> Result<(Vec<i64>, i64), SourceError> {
        let mut client = self.client.clone();
        let r = self.call("LeaseLeases", client.leases()).await?;
        let mut ids: Vec<i64> = r.leases().iter().map(|l| l.id()).collect();
        ids.sort_unstable();
        Ok((ids, r.header().map_or(0, |h| h.revision())))
    }
}

impl ChangeStream {
    /// Asks for a progress notification (the answer comes as [`WatchItem::Progress`]).
    ///
    /// # Errors
    /// The stream is closed.
    pub async fn request_progress(&mut self) -> Result<(), SourceError> {
        self.stream
            .request_progress()
            .await
            .map_err(|e| self.responses.broken(e.into()))
    }

    /// The next complete revisions or progress notification; `None` when the server ended the
    /// stream.
    ///
    /// # Errors
    /// `Compacted` when the history asked for is gone; `Call` when the watch broke.
    pub async fn next(&mut self) -> Result<Option<WatchItem>, SourceError> {
        loop {
            let Some(resp) = self
                .stream
                .message()
                .await
                .map_err(|e| self.responses.broken(e.into()))?
            else {
                return Ok(None);
            };
            if let Some(item) = self.responses.absorb(resp)? {
                return Ok(Some(item));
            }
        }
    }
}

impl Reassembly {
    /// Takes one response in: `None` while a fragmented response is incomplete (or for the
    /// creation notice), then its revisions; an empty response is a progress notification.
    fn absorb(&mut self, resp: WatchResponse) -> Result<Option<WatchItem>, SourceError> {
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return Err(SourceError::Compacted {
                    endpoint: self.endpoint.clone(),
                    compact_revision: resp.compact_revision(),
                });
            }
            let reason = resp.cancel_reason().to_string();
            return Err(self.broken(Cause::text(format!("the watch was cancelled: {reason}"))));
        }
        let fragment = resp.0.fragment;
        let header_rev = resp.header().map_or(0, |h| h.revision());
        let created = resp.created();
        self.pending.extend(resp.events().iter().cloned());
        if fragment {
            return Ok(None);
        }
        if self.pending.is_empty() {
            if created {
                return Ok(None);
            }
            return Ok(Some(WatchItem::Progress(header_rev)));
        }
        let events = std::mem::take(&mut self.pending);
        Ok(Some(WatchItem::Revisions(group(&events))))
    }

    fn broken(&self, cause: Cause) -> SourceError {
        SourceError::Call {
            endpoint: self.endpoint.clone(),
            call: "Watch",
            cause,
        }
    }
}

/// Events in order → revisions in order.
fn group(events: &[etcd_client::Event]) -> Vec<Revision> {
    let mut out: Vec<Revision> = Vec::new();
    for e in events {
        let Some(kv) = e.kv() else { continue };
        let change = match e.event_type() {
            EventType::Put => Change::Put {
                key: kv.key().to_vec(),
                value: kv.value().to_vec(),
                create: kv.create_revision(),
                version: kv.version(),
                lease: kv.lease(),
            },
            EventType::Delete => Change::Delete {
                key: kv.key().to_vec(),
            },
        };
        let rev = kv.mod_revision();
        match out.last_mut() {
            Some(last) if last.rev == rev => last.changes.push(change),
            _ => out.push(Revision {
                rev,
                changes: vec![change],
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::proto::{PbEvent, PbKeyValue, PbWatchResponse};

    fn put(rev: i64, key: &str) -> PbEvent {
        PbEvent {
            kv: Some(PbKeyValue {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                lease: 0,
            }),
            ..Default::default()
        }
    }

    fn response(events: Vec<PbEvent>, fragment: bool) -> WatchResponse {
        WatchResponse(PbWatchResponse {
            events,
            fragment,
            ..Default::default()
        })
    }

    #[test]
    fn fragments_are_joined_before_a_revision_is_handed_out() {
        let mut r = Reassembly {
            endpoint: "e".into(),
            pending: Vec::new(),
        };
        // One revision of three keys split over three fragments, then a second revision.
        assert!(r
            .absorb(response(vec![put(7, "a")], true))
            .unwrap()
            .is_none());
        assert!(r
            .absorb(response(vec![put(7, "b")], true))
            .unwrap()
            .is_none());
        let Some(WatchItem::Revisions(revs)) = r
            .absorb(response(vec![put(7, "c"), put(8, "d")], false))
            .unwrap()
        else {
            panic!("the last fragment completes the response");
        };
        assert_eq!(revs.len(), 2);
        assert_eq!((revs[0].rev, revs[0].changes.len()), (7, 3));
        assert_eq!((revs[1].rev, revs[1].changes.len()), (8, 1));
        // An empty, unfragmented response is a progress notification.
        let progress = PbWatchResponse {
            header: Some(etcd_client::proto::PbResponseHeader {
                revision: 8,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            r.absorb(WatchResponse(progress)).unwrap(),
            Some(WatchItem::Progress(8))
        ));
    }

    #[test]
    fn changes_round_trip_through_json_with_bytes_as_base64() {
        let changes = vec![
            Change::Put {
                key: b"/registry/a".to_vec(),
                value: vec![0, 159, 146, 150],
                create: 5,
                version: 2,
                lease: 7,
            },
            Change::Delete {
                key: b"/registry/b".to_vec(),
            },
        ];
        let text = serde_json::to_string(&changes).unwrap();
        assert!(text.contains("\"op\":\"put\"") && text.contains("L3JlZ2lzdHJ5L2E="));
        let back: Vec<Change> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, changes);
        let no_lease = serde_json::to_string(&Change::Put {
            key: vec![1],
            value: vec![],
            create: 1,
            version: 1,
            lease: 0,
        })
        .unwrap();
        assert!(!no_lease.contains("lease"), "{no_lease}");
    }
}
