//! Cluster membership through one member: list, remove, add as a learner, promote. Member
//! changes go through raft, so they need quorum; the member asked forwards them to the leader.

use super::{EtcdSource, SourceError};

/// One member as the cluster lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub id: u64,
    /// Empty while an added member has not started yet.
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Empty while an added member has not started yet.
    pub client_urls: Vec<String>,
    pub learner: bool,
}

impl Member {
    pub(super) fn of(m: &etcd_client::Member) -> Member {
        Member {
            id: m.id(),
            name: m.name().to_string(),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
            learner: m.is_learner(),
        }
    }
}

impl EtcdSource {
    /// Every member, learners included.
    ///
    /// # Errors
    /// Unreachable or refused (a member without quorum cannot answer: the list is linearized).
    pub async fn members(&mut self) -> Result<Vec<Member>, SourceError> {
        let mut client = self.client.clone();
        let r = self.call("MemberList", client.member_list()).await?;
        Ok(r.members().iter().map(Member::of).collect())
    }

    /// # Errors
    /// Unreachable, refused, or no quorum.
    pub async fn remove_member(&mut self, id: u64) -> Result<(), SourceError> {
        let mut client = self.client.clone();
        self.call("MemberRemove", client.member_remove(id)).await?;
        Ok(())
    }

    /// Adds a learner with `peer_urls`; its id and the members after the change.
    ///
    /// # Errors
    /// Unreachable, refused (a learner already there, a peer URL in use), or no quorum.
    pub async fn add_learner(
        &mut self,
        peer_urls: &[String],
    ) -> Result<(u64, Vec<Member>), SourceError> {
        let mut client = self.client.clone();
        let options = etcd_client::MemberAddOptions::new().with_is_learner();
        let r = self
            .call("MemberAdd", client.member_add(peer_urls, Some(options)))
            .await?;
        let id = r.member().map_or(0, |m| m.id());
        Ok((id, r.member_list().iter().map(Member::of).collect()))
    }

    /// # Errors
    /// Unreachable, or refused: etcd promotes a learner only once it is in sync with the
    /// leader (`is_not_in_sync` tells that one apart).
    pub async fn promote_member(&mut self, id: u64) -> Result<(), SourceError> {
        let mut client = self.client.clone();
        self.call("MemberPromote", client.member_promote(id))
            .await?;
        Ok(())
    }
}

/// etcd refused a promotion because the learner has not caught up yet: try again later.
pub fn is_not_in_sync(e: &SourceError) -> bool {
    let text = crate::error_chain::one_line(e);
    text.contains("in sync with leader") || text.contains("learner member not ready")
}

/// One member's answer in an agreement check.
#[derive(Debug, Clone)]
pub struct Answer {
    pub member: Member,
    pub status: super::MemberStatus,
}

/// Every member answers as a voter, and all hash alike at `revision`.
#[derive(Debug, Clone)]
pub struct Agreement {
    pub answers: Vec<Answer>,
    /// The lowest revision every member has.
    pub revision: i64,
    pub hash: u32,
    pub compact_revision: i64,
}

/// Why the members do not (yet) agree.
#[derive(Debug, thiserror::Error)]
pub enum Disagreement {
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("member {0} is still a learner")]
    Learner(String),
    #[error("member {0:x} has not started (it has no client URL yet)")]
    NotStarted(u64),
    #[error("{name} has compacted past revision {revision}")]
    Compacted { name: String, revision: i64 },
    #[error("{name} hashes to {hash} (compacted at {compact}) at revision {revision}, {other} to {other_hash} (compacted at {other_compact})")]
    Differ {
        name: String,
        hash: u32,
        compact: i64,
        other: String,
        other_hash: u32,
        other_compact: i64,
        revision: i64,
    },
}

/// Asks the cluster (through `through.endpoints`) for its members, then each member on its own
/// client URL for its status and its HashKV at the lowest revision all of them have.
///
/// # Errors
/// Why they do not agree (yet): a member unreachable, a learner, a different hash.
pub async fn agreement(through: &super::EtcdSettings) -> Result<Agreement, Disagreement> {
    let mut cluster = EtcdSource::connect_first(through).await?;
    let members = cluster.members().await?;
    let mut asked = Vec::new();
    for m in members {
        if m.learner {
            return Err(Disagreement::Learner(m.name));
        }
        let url = m
            .client_urls
            .first()
            .cloned()
            .ok_or(Disagreement::NotStarted(m.id))?;
        let settings = super::EtcdSettings {
            endpoints: vec![url.clone()],
            ..through.clone()
        };
        let mut source = EtcdSource::connect(&settings, &url).await?;
        let status = source.status().await?;
        asked.push((Answer { member: m, status }, source));
    }
    let revision = asked
        .iter()
        .map(|(a, _)| a.status.revision)
        .min()
        .unwrap_or(0);
    let mut seen: Option<(String, u32, i64)> = None;
    for (answer, source) in &mut asked {
        let name = answer.member.name.clone();
        let super::LiveHashKv::Hash {
            hash,
            compact_revision,
        } = source.hash_kv(revision).await?
        else {
            return Err(Disagreement::Compacted { name, revision });
        };
        match &seen {
            None => seen = Some((name, hash, compact_revision)),
            Some((_, h, c)) if (*h, *c) == (hash, compact_revision) => {}
            Some((other, h, c)) => {
                return Err(Disagreement::Differ {
                    name,
                    hash,
                    compact: compact_revision,
                    other: other.clone(),
                    other_hash: *h,
                    other_compact: *c,
                    revision,
                })
            }
        }
    }
    let (_, hash, compact_revision) = seen.unwrap_or_default();
    Ok(Agreement {
        answers: asked.into_iter().map(|(a, _)| a).collect(),
        revision,
        hash,
        compact_revision,
    })
}

/// [`agreement`], asked again every 200 ms until the members agree or `timeout` passes (a
/// member that just started, or the last to start, answers within a moment).
///
/// # Errors
/// Why they did not agree, from the last look.
pub async fn agreement_within(
    through: &super::EtcdSettings,
    timeout: std::time::Duration,
) -> Result<Agreement, Disagreement> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match agreement(through).await {
            Ok(a) => return Ok(a),
            Err(why) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(why = %why, "the members do not agree yet");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(why) => return Err(why),
        }
    }
}
