//! What maintenance decides from: every member's sizes, role and health, and the alarms.

use serde::Serialize;

use crate::etcd::maintenance::Alarm;
use crate::etcd::{EtcdSettings, EtcdSource, SourceError};

/// One member as the survey saw it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberState {
    #[serde(serialize_with = "hex")]
    pub id: u64,
    pub name: String,
    pub endpoint: String,
    pub db_size: u64,
    pub db_size_in_use: u64,
    pub is_leader: bool,
    pub learner: bool,
    /// Why it cannot take part (unreachable, no leader, never started), if so.
    pub problem: Option<String>,
}

impl MemberState {
    /// The share of the file that is free pages: what a defragmentation gives back.
    pub fn fragmentation(&self) -> f64 {
        if self.db_size == 0 {
            return 0.0;
        }
        self.db_size.saturating_sub(self.db_size_in_use) as f64 / self.db_size as f64
    }

    pub fn reclaimable(&self) -> u64 {
        self.db_size.saturating_sub(self.db_size_in_use)
    }
}

fn hex<S: serde::Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{id:x}"))
}

/// The cluster, as one look found it.
#[derive(Debug, Clone, Serialize)]
pub struct Survey {
    #[serde(serialize_with = "hex")]
    pub cluster_id: u64,
    pub revision: i64,
    pub members: Vec<MemberState>,
    #[serde(skip)]
    pub alarms: Vec<Alarm>,
    /// The quota every member runs with (the largest a member reports, else the one given).
    pub quota: u64,
}

impl Survey {
    pub fn nospace(&self) -> bool {
        self.alarms.iter().any(Alarm::is_nospace)
    }

    /// Alarms maintenance must not act under (anything but NOSPACE, e.g. CORRUPT).
    pub fn other_alarms(&self) -> Vec<String> {
        self.alarms
            .iter()
            .filter(|a| !a.is_nospace())
            .map(|a| format!("{} on member {:x}", a.kind, a.member_id))
            .collect()
    }

    pub fn member(&self, id: u64) -> Option<&MemberState> {
        self.members.iter().find(|m| m.id == id)
    }
}

/// Looks at every member of the cluster `settings` reaches. `quota`: the quota when the
/// members do not report it (before etcd 3.6): the node's `--quota-backend-bytes`, else etcd's
/// default of 2 GiB.
///
/// # Errors
/// No member answers, or the member list or alarms cannot be read (no quorum).
pub async fn survey(settings: &EtcdSettings, quota: u64) -> Result<Survey, SourceError> {
    let mut first = EtcdSource::connect_first(settings).await?;
    let head = first.status().await?;
    let alarms = first.alarms().await?;
    let mut members = Vec::new();
    let mut reported_quota = 0u64;
    for m in first.members().await? {
        let endpoint = m.client_urls.first().cloned().unwrap_or_default();
        let mut state = MemberState {
            id: m.id,
            name: if m.name.is_empty() {
                format!("{:x}", m.id)
            } else {
                m.name.clone()
            },
            endpoint: endpoint.clone(),
            db_size: 0,
            db_size_in_use: 0,
            is_leader: false,
            learner: m.learner,
            problem: None,
        };
        if endpoint.is_empty() {
            state.problem = Some("added but never started".into());
            members.push(state);
            continue;
        }
        let status = match EtcdSource::connect(settings, &endpoint).await {
            Ok(mut s) => s.status().await,
            Err(e) => Err(e),
        };
        match status {
            Ok(st) => {
                state.db_size = st.db_size;
                state.db_size_in_use = st.db_size_in_use;
                state.is_leader = st.leader == m.id;
                reported_quota = reported_quota.max(st.quota);
                if st.leader == 0 {
                    state.problem = Some("knows no leader".into());
                }
            }
            Err(e) => state.problem = Some(e.to_string()),
        }
        members.push(state);
    }
    Ok(Survey {
        cluster_id: head.cluster_id,
        revision: head.revision,
        members,
        alarms,
        quota: if reported_quota > 0 {
            reported_quota
        } else {
            quota
        },
    })
}
