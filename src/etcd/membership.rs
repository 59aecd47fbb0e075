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
