//! `lifeboat restore --cluster`: the same command on every control-plane node brings the whole
//! cluster back. The nodes meet **through the store** (they all reach it; while etcd is down
//! they may not reach each other): the first node writes a signed cluster restore plan (the
//! backup, resolved once; the member count; the token), each node adds itself (its name and
//! peer URL from its own `etcd.yaml`) and waits until all have joined. Only then does any node
//! change anything: each restores the **same** snapshot with the **same** member list and token,
//! starts, and records its progress; the run is complete when every member answers and all
//! hash alike.
//!
//! Objects (flat names, like every object of ours), all signed envelopes:
//! `cluster-restore.<cluster>.<run>.plan.json` (created once), `….join.<node>.json` (created
//! once per node), `….progress.<node>.json` (replaced), `….complete.json` (created once).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::RestoreError;
use crate::catalog::Manifest;
use crate::etcd::health::{verify_cluster, ClusterHealth as Agreement, Wanted as Healthy};
use crate::etcd::EtcdSettings;
use crate::store::{Store, StoreError};
use crate::trust::envelope::{read_signed, write_signed, EnvelopeError, Write};
use crate::trust::{ReadPolicy, SigningKey};

mod objects;

use objects::{complete_key, join_key, progress_key, run_prefix, slot_key, slot_prefix};
pub use objects::{ClusterPlan, Joined, NodeState, Progress};

/// Where the nodes meet, and with which keys.
#[derive(Clone)]
pub struct Meeting {
    pub store: Arc<dyn Store>,
    pub policy: Arc<ReadPolicy>,
    pub signer: Option<Arc<SigningKey>>,
    /// `--members`: how many to wait for (default: the backup's voting members).
    pub members: Option<usize>,
    pub join_timeout: Duration,
    /// Between two looks at the store.
    pub poll: Duration,
}

/// What this node wants restored.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// The cluster (hex) whose backup or journal it restores.
    pub cluster_id: String,
    pub backup_id: String,
    pub target_revision: Option<i64>,
    /// The backup's voting members by name, when recorded (the default for `--members`).
    pub voting_members: Option<Vec<String>>,
    /// `latest`: an open plan's backup is taken, whichever it is.
    pub any_backup: bool,
}

impl Wanted {
    /// A backup (`latest` resolved or named).
    pub fn backup(manifest: &Manifest, any_backup: bool) -> Wanted {
        Wanted {
            cluster_id: manifest.cluster_id.clone(),
            backup_id: manifest.id.clone(),
            target_revision: None,
            voting_members: manifest.voting_members.clone(),
            any_backup,
        }
    }

    fn matches(&self, plan: &ClusterPlan) -> bool {
        plan.target_revision == self.target_revision
            && (self.any_backup || plan.backup_id == self.backup_id)
    }

    pub fn describe(&self) -> String {
        match self.target_revision {
            Some(r) => format!("revision {r} (from backup {})", self.backup_id),
            None => format!("backup {}", self.backup_id),
        }
    }
}

/// This node in the restored cluster, from its own `etcd.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub peer_url: String,
}

impl Node {
    /// From a node's `etcd.yaml`: its `--name` and first `--initial-advertise-peer-urls`.
    pub fn of(local: &crate::etcd::discovery::KubeadmEtcd) -> Option<Node> {
        let name = local.name.clone().filter(|n| !n.is_empty())?;
        let peer_url = local
            .initial_advertise_peer_urls
            .as_deref()?
            .split(',')
            .next()?
            .to_string();
        Some(Node { name, peer_url })
    }
}

/// Every member has joined: who they are.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    pub plan: ClusterPlan,
    pub joined: Vec<Joined>,
}

impl Rendezvous {
    /// `name=peer` of every member, by name: the same string on every node.
    pub fn initial_cluster(&self) -> String {
        let mut all: Vec<&Joined> = self.joined.iter().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.iter()
            .map(|j| format!("{}={}", j.name, j.peer_url))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl From<EnvelopeError> for RestoreError {
    fn from(e: EnvelopeError) -> RestoreError {
        RestoreError::Coordination(Box::new(e))
    }
}

/// How often a node tries again when another takes the slot it is writing.
const CONTENTION_TRIES: u32 = 100;

impl Meeting {
    /// Joins the open plan for `manifest`'s cluster — or opens one — and waits until every
    /// member has joined. Nothing on the node changes here.
    ///
    /// # Errors
    /// `Refused`: another plan for the cluster with another backup (when one was named), more
    /// nodes than the plan's members, the deadline passed with members missing (named); the
    /// store or a signature failing.
    pub async fn meet(&self, wanted: &Wanted, me: &Node) -> Result<Rendezvous, RestoreError> {
        let cluster = wanted.cluster_id.clone();
        let plan = self.plan_for(wanted, me).await?;
        if !wanted.matches(&plan) {
            let open = Wanted {
                backup_id: plan.backup_id.clone(),
                target_revision: plan.target_revision,
                ..wanted.clone()
            };
            return Err(RestoreError::refused(format!(
                "another cluster restore of cluster {cluster} is open (run {}: {}, members join until {}), this node asked for {}: run the same command as the other nodes, or wait until it expires",
                plan.run_id,
                open.describe(),
                plan.join_by,
                wanted.describe()
            )));
        }
        self.join(&plan, me).await?;
        tracing::info!(run = %plan.run_id, backup = %plan.backup_id, members = plan.members, "cluster restore: joined; waiting for every member");
        self.wait_for_all(plan).await
    }

    /// The open plan of `cluster`, or a new one. Plans take numbered slots, each created only
    /// if absent (the store's conditional write), so of nodes that open a plan at the same
    /// moment exactly one wins each slot and the others read it: every node ends up with the
    /// same plan whatever order their writes become visible in.
    async fn plan_for(&self, wanted: &Wanted, me: &Node) -> Result<ClusterPlan, RestoreError> {
        let cluster = &wanted.cluster_id;
        let mut slot = self.top_slot(cluster).await?;
        if let Some(top) = slot {
            if let Some(plan) = self.open_at(cluster, top).await? {
                return Ok(plan);
            }
        }
        let mut contended = 0;
        loop {
            let next = slot.map_or(1, |n| n + 1);
            match self.create(next, wanted, me).await {
                Ok(plan) => return Ok(plan),
                // Another node took this slot, or is writing it right now (a folder store says
                // so): its plan, once there, if it is open; the slot again if it stayed empty.
                Err(RestoreError::Coordination(e))
                    if matches!(*e, EnvelopeError::Store(_)) && contended < CONTENTION_TRIES =>
                {
                    contended += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if let Some(plan) = self.open_at(cluster, next).await? {
                        return Ok(plan);
                    }
                    if self.top_slot(cluster).await? < Some(next) {
                        continue;
                    }
                }
                Err(e) => return Err(e),
            }
            slot = Some(next);
        }
    }

    /// The highest plan slot of `cluster` in the store.
    async fn top_slot(&self, cluster: &str) -> Result<Option<u64>, RestoreError> {
        let prefix = slot_prefix(cluster);
        let objects = self.store.list(&prefix).await?;
        Ok(objects
            .iter()
            .filter_map(|o| {
                o.key
                    .strip_prefix(&prefix)?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .max())
    }

    /// The plan in `slot` when it is trusted, not complete, and still open to joins.
    pub(super) async fn open_at(
        &self,
        cluster: &str,
        slot: u64,
    ) -> Result<Option<ClusterPlan>, RestoreError> {
        let key = slot_key(cluster, slot);
        let plan = match read_signed::<ClusterPlan>(
            self.store.as_ref(),
            &self.policy,
            &key,
            "plan",
            "cluster restore plan",
        )
        .await
        {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(None),
            Err(e @ (EnvelopeError::Trust(_) | EnvelopeError::Invalid { .. })) => {
                tracing::warn!(key, error = %e, "a cluster restore plan that is not trusted: ignored");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let complete = complete_key(cluster, &plan.run_id);
        let done = match self.store.list(&complete).await {
            Ok(found) => found.iter().any(|o| o.key == complete),
            Err(e) => return Err(e.into()),
        };
        Ok((plan.cluster_id == cluster && !done && plan.join_by > Utc::now()).then_some(plan))
    }

    /// Writes a new plan into `slot` (only if the slot is free).
    async fn create(
        &self,
        slot: u64,
        wanted: &Wanted,
        me: &Node,
    ) -> Result<ClusterPlan, RestoreError> {
        let members = match (self.members, &wanted.voting_members) {
            (Some(n), _) => n,
            (None, Some(names)) => names.len(),
            (None, None) => {
                return Err(RestoreError::refused(format!(
                    "backup {} does not record how many members its cluster had (written before lifeboat recorded it): pass --members N",
                    wanted.backup_id
                )))
            }
        };
        let now = Utc::now();
        let run_id = format!(
            "{}-{:04x}",
            now.format("%Y%m%dT%H%M%S%.3fZ"),
            rand::random::<u16>()
        );
        let plan = ClusterPlan {
            token: format!("lifeboat-{run_id}"),
            run_id,
            cluster_id: wanted.cluster_id.clone(),
            backup_id: wanted.backup_id.clone(),
            target_revision: wanted.target_revision,
            members,
            expected: wanted.voting_members.clone().unwrap_or_default(),
            created_at: now,
            join_by: now
                + chrono::Duration::from_std(self.join_timeout)
                    .unwrap_or(chrono::Duration::minutes(10)),
            created_by: me.name.clone(),
        };
        write_signed(
            self.store.as_ref(),
            self.signer.as_deref(),
            &slot_key(&plan.cluster_id, slot),
            "plan",
            &plan,
            Write::Create,
        )
        .await?;
        tracing::info!(run = %plan.run_id, backup = %plan.backup_id, members, slot, "cluster restore: opened a plan");
        Ok(plan)
    }

    /// Adds this node to `plan` (again after a restart: its earlier join stands).
    async fn join(&self, plan: &ClusterPlan, me: &Node) -> Result<(), RestoreError> {
        let key = join_key(&plan.cluster_id, &plan.run_id, &me.name);
        let joined = Joined {
            run_id: plan.run_id.clone(),
            cluster_id: plan.cluster_id.clone(),
            name: me.name.clone(),
            peer_url: me.peer_url.clone(),
            joined_at: Utc::now(),
        };
        let written = write_signed(
            self.store.as_ref(),
            self.signer.as_deref(),
            &key,
            "joined",
            &joined,
            Write::Create,
        )
        .await;
        match written {
            Ok(()) => Ok(()),
            Err(EnvelopeError::Store(StoreError::AlreadyExists { .. })) => {
                let earlier = self.read_joined(&key).await?;
                match earlier {
                    Some(j) if j.peer_url == me.peer_url => Ok(()),
                    Some(j) => Err(RestoreError::refused(format!(
                        "another node named {} joined cluster restore {} with peer URL {} (this node's is {}): node names must differ",
                        j.name, plan.run_id, j.peer_url, me.peer_url
                    ))),
                    None => Err(RestoreError::refused(format!(
                        "{key} exists but is not a trusted join: remove it, then run again"
                    ))),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn read_joined(&self, key: &str) -> Result<Option<Joined>, RestoreError> {
        match read_signed::<Joined>(self.store.as_ref(), &self.policy, key, "joined", "join").await
        {
            Ok(j) => Ok(j),
            Err(e @ (EnvelopeError::Trust(_) | EnvelopeError::Invalid { .. })) => {
                tracing::warn!(key, error = %e, "a join that is not trusted: ignored");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The trusted joins of `plan`, by node name.
    async fn joined(&self, plan: &ClusterPlan) -> Result<Vec<Joined>, RestoreError> {
        let prefix = format!("{}join.", run_prefix(&plan.cluster_id, &plan.run_id));
        let mut out = BTreeMap::new();
        for o in self.store.list(&prefix).await? {
            if let Some(j) = self.read_joined(&o.key).await? {
                if j.run_id == plan.run_id && j.cluster_id == plan.cluster_id {
                    out.insert(j.name.clone(), j);
                }
            }
        }
        Ok(out.into_values().collect())
    }

    async fn wait_for_all(&self, plan: ClusterPlan) -> Result<Rendezvous, RestoreError> {
        loop {
            let joined = self.joined(&plan).await?;
            if joined.len() > plan.members {
                let names: Vec<&str> = joined.iter().map(|j| j.name.as_str()).collect();
                return Err(RestoreError::refused(format!(
                    "{} nodes joined cluster restore {} ({}), but its plan restores {} members: run it with --members {} on every node after this plan expires at {}, or stop the extra node",
                    joined.len(),
                    plan.run_id,
                    names.join(", "),
                    plan.members,
                    joined.len(),
                    plan.join_by
                )));
            }
            if joined.len() == plan.members {
                return Ok(Rendezvous { plan, joined });
            }
            if Utc::now() > plan.join_by {
                return Err(RestoreError::refused(expired(&plan, &joined)));
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// Records how far this node got.
    ///
    /// # Errors
    /// The store or the signature fails.
    pub async fn progress(
        &self,
        plan: &ClusterPlan,
        me: &Node,
        state: NodeState,
        agreed: Option<&Agreement>,
    ) -> Result<(), RestoreError> {
        let p = Progress {
            run_id: plan.run_id.clone(),
            cluster_id: plan.cluster_id.clone(),
            name: me.name.clone(),
            state,
            at: Utc::now(),
            revision: agreed.map(|a| a.revision),
            hash: agreed.map(|a| a.hash),
        };
        write_signed(
            self.store.as_ref(),
            self.signer.as_deref(),
            &progress_key(&plan.cluster_id, &plan.run_id, &me.name),
            "progress",
            &p,
            Write::Replace,
        )
        .await?;
        Ok(())
    }

    /// Marks the plan complete once every member says so (any node may be the one).
    ///
    /// # Errors
    /// The store or the signature fails.
    pub async fn complete_if_all(&self, rv: &Rendezvous) -> Result<bool, RestoreError> {
        let plan = &rv.plan;
        let mut complete = 0;
        for j in &rv.joined {
            let key = progress_key(&plan.cluster_id, &plan.run_id, &j.name);
            let p = read_signed::<Progress>(
                self.store.as_ref(),
                &self.policy,
                &key,
                "progress",
                "progress",
            )
            .await?;
            if p.is_some_and(|p| p.state == NodeState::Complete) {
                complete += 1;
            }
        }
        if complete < plan.members {
            return Ok(false);
        }
        let written = write_signed(
            self.store.as_ref(),
            self.signer.as_deref(),
            &complete_key(&plan.cluster_id, &plan.run_id),
            "plan",
            plan,
            Write::Create,
        )
        .await;
        match written {
            Ok(()) | Err(EnvelopeError::Store(StoreError::AlreadyExists { .. })) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }
}

/// What an expired plan says: who joined, who of the backup's members did not, what to do.
fn expired(plan: &ClusterPlan, joined: &[Joined]) -> String {
    let names: Vec<&str> = joined.iter().map(|j| j.name.as_str()).collect();
    let missing: Vec<&str> = plan
        .expected
        .iter()
        .map(String::as_str)
        .filter(|n| !names.contains(n))
        .collect();
    let missing = match missing.is_empty() {
        true => format!("{} missing", plan.members - joined.len()),
        false => format!("missing: {}", missing.join(", ")),
    };
    format!(
        "cluster restore {} expired at {}: {} of {} members joined ({}; {missing}); nothing was changed on any node. Run the command on the missing node(s) and again here, or restore with fewer members (--members {})",
        plan.run_id,
        plan.join_by,
        joined.len(),
        plan.members,
        names.join(", "),
        joined.len()
    )
}

/// Waits until every member answers as a voter and all hash alike (the restored cluster has
/// quorum once enough nodes started; until `timeout`).
///
/// # Errors
/// `NotHealthy` naming why at the deadline.
pub async fn wait_agreement(
    through: &EtcdSettings,
    timeout: Duration,
) -> Result<Agreement, RestoreError> {
    let wanted = Healthy {
        version: None,
        timeout,
    };
    verify_cluster(through, wanted)
        .await
        .map_err(|why| RestoreError::NotHealthy {
            waited: timeout,
            detail: format!("the restored cluster does not answer as one: {why}"),
        })
}

#[cfg(test)]
mod tests;
