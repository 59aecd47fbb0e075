//! The maintenance calls of one member (#27): alarms, defragmentation, leadership, compaction.
//! A defragmentation blocks the member it is sent to while it rewrites the file; the other
//! calls go through raft and need quorum.

use etcd_client::{AlarmAction, AlarmType, CompactionOptions};

use super::{EtcdSource, SourceError};

/// One raised alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    pub member_id: u64,
    /// `NOSPACE`, `CORRUPT`.
    pub kind: String,
}

impl Alarm {
    pub fn is_nospace(&self) -> bool {
        self.kind == "NOSPACE"
    }
}

fn kind_of(a: AlarmType) -> &'static str {
    match a {
        AlarmType::Nospace => "NOSPACE",
        AlarmType::Corrupt => "CORRUPT",
        AlarmType::None => "NONE",
    }
}

impl EtcdSource {
    /// The alarms raised anywhere in the cluster.
    ///
    /// # Errors
    /// The member does not answer.
    pub async fn alarms(&mut self) -> Result<Vec<Alarm>, SourceError> {
        let mut c = self.client.clone();
        let r = self
            .call("Alarm", c.alarm(AlarmAction::Get, AlarmType::None, None))
            .await?;
        Ok(r.alarms()
            .iter()
            .map(|a| Alarm {
                member_id: a.member_id(),
                kind: kind_of(a.alarm()).to_string(),
            })
            .collect())
    }

    /// Disarms the NOSPACE alarm of `member_id`.
    ///
    /// # Errors
    /// The cluster refuses or does not answer.
    pub async fn disarm_nospace(&mut self, member_id: u64) -> Result<(), SourceError> {
        let mut c = self.client.clone();
        let mut options = etcd_client::AlarmOptions::new();
        options.with_member(member_id);
        self.call(
            "Alarm",
            c.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options)),
        )
        .await?;
        Ok(())
    }

    /// Defragments the member this source is bound to (it blocks that member meanwhile, for
    /// as long as copying its live data takes), waiting up to `within`.
    ///
    /// # Errors
    /// The member fails or does not answer within `within`.
    pub async fn defragment(&mut self, within: std::time::Duration) -> Result<(), SourceError> {
        let mut c = self.client.clone();
        self.call_within("Defragment", within, c.defragment())
            .await?;
        Ok(())
    }

    /// Hands leadership to `to` (asked of the leader).
    ///
    /// # Errors
    /// This member is not the leader, or the transfer fails.
    pub async fn move_leader(&mut self, to: u64) -> Result<(), SourceError> {
        let mut c = self.client.clone();
        self.call("MoveLeader", c.move_leader(to)).await?;
        Ok(())
    }

    /// Compacts the cluster's history up to `revision` (physical: the freed pages are reused).
    ///
    /// # Errors
    /// The cluster refuses (already compacted past it) or does not answer.
    pub async fn compact(&mut self, revision: i64) -> Result<(), SourceError> {
        let mut c = self.client.clone();
        self.call(
            "Compact",
            c.compact(revision, Some(CompactionOptions::new().with_physical())),
        )
        .await?;
        Ok(())
    }
}
