//! Carrying out a plan: the backup it needs first, then one member at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use indicatif::HumanBytes;
use serde::Serialize;

use super::plan::{Plan, Planned};
use super::survey::{survey, Survey};
use super::{MaintenanceError, Rules, NOSPACE_HEADROOM};
use crate::backup::{take_backup, BackupSettings};
use crate::catalog::Catalog;
use crate::continuous::Journal;
use crate::etcd::{EtcdSettings, EtcdSource};
use crate::progress::Observer;
use crate::store::Store;
use crate::trust::ReadPolicy;

/// What a run needs besides the plan.
pub struct Inputs<'a> {
    pub etcd: &'a EtcdSettings,
    pub store: Arc<dyn Store>,
    pub backup: &'a BackupSettings,
    pub read_policy: Arc<ReadPolicy>,
    /// A backup (or a shadow's proof) at least this recent must exist, else one is taken.
    pub max_backup_age: Duration,
    /// How long a member may take to answer again after its defragmentation.
    pub ready_timeout: Duration,
    /// The quota when the members do not report it.
    pub quota: u64,
    pub observer: &'a dyn Observer,
}

/// What stood behind the run.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BackupProof {
    /// A verified backup younger than `max_backup_age`.
    Recent {
        id: String,
        created_at: DateTime<Utc>,
    },
    /// A shadow proved the journal that recently.
    Shadow {
        revision: i64,
        proven_at: DateTime<Utc>,
    },
    /// Taken now, before anything else.
    Taken { id: String },
}

/// One thing done.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// `compact`, `move-leader`, `defragment`, `disarm`.
    pub action: &'static str,
    pub member: String,
    /// When it started.
    pub at: DateTime<Utc>,
    pub before: u64,
    pub after: u64,
    pub ms: u64,
}

/// How NOSPACE ended.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum NospaceOutcome {
    Disarmed {
        largest: u64,
        quota: u64,
    },
    /// Still too large: the alarm stays, saying why.
    Left {
        largest: u64,
        quota: u64,
        why: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub backup: BackupProof,
    pub actions: Vec<Action>,
    pub nospace: Option<NospaceOutcome>,
}

/// A backup of `cluster` verified and younger than `max_backup_age`, or a shadow's proof that
/// recent; otherwise one taken now. Nothing else runs if it cannot be had.
///
/// # Errors
/// The backup fails (any check, the store).
pub async fn ensure_backup(
    inputs: &Inputs<'_>,
    cluster_id: u64,
) -> Result<BackupProof, MaintenanceError> {
    if let Some(p) = existing_proof(inputs, cluster_id).await {
        return Ok(p);
    }
    inputs
        .observer
        .note("no backup recent enough: taking one before any maintenance");
    let mut source = EtcdSource::connect_first(inputs.etcd)
        .await
        .map_err(|e| MaintenanceError::Backup(e.into()))?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let m = take_backup(
        &mut source,
        inputs.store.clone(),
        inputs.backup,
        Arc::new(crate::progress::Silent),
        &cancel,
        None,
    )
    .await
    .map_err(MaintenanceError::Backup)?;
    Ok(BackupProof::Taken { id: m.id })
}

/// A verified backup of `cluster_id` younger than `max_backup_age`, or a shadow's proof that
/// recent (read-only: what a dry run reports).
pub async fn existing_proof(inputs: &Inputs<'_>, cluster_id: u64) -> Option<BackupProof> {
    let cluster = format!("{cluster_id:x}");
    let catalog = Catalog::new(inputs.store.clone(), inputs.read_policy.clone());
    if let Some(m) = catalog
        .recent_verified(&cluster, inputs.max_backup_age)
        .await
    {
        return Some(BackupProof::Recent {
            id: m.id,
            created_at: m.created_at,
        });
    }
    recent_proof(inputs, cluster_id).await
}

/// A shadow's proof of this cluster's journal within `max_backup_age` (the shadow proves
/// checkpoints seconds behind the capture, so the proof's time bounds the proven state's age).
async fn recent_proof(inputs: &Inputs<'_>, cluster_id: u64) -> Option<BackupProof> {
    let journal = Journal::new(inputs.store.clone(), inputs.read_policy.clone());
    let status = journal.status(Some(cluster_id)).await.ok()?;
    let (revision, proven_at) = (status.proven_rev?, status.proven_at?);
    let age = (Utc::now() - proven_at).to_std().ok()?;
    (age <= inputs.max_backup_age).then_some(BackupProof::Shadow {
        revision,
        proven_at,
    })
}

/// Carries out `plan` (made from `before`): NOSPACE's compaction, each member in order — the
/// leader's leadership handed over first when asked — then NOSPACE's disarm when the database
/// is under the quota with headroom. The backup must have been ensured.
///
/// # Errors
/// A call fails, or a member does not come back; what was done before is in the log.
pub async fn execute(
    plan: &Plan,
    before: &Survey,
    rules: &Rules,
    inputs: &Inputs<'_>,
    backup: BackupProof,
) -> Result<Report, MaintenanceError> {
    if let Some(why) = &plan.blocked {
        return Err(MaintenanceError::Blocked { why: why.clone() });
    }
    let mut actions = Vec::new();
    if plan.nospace && rules.compact_on_nospace {
        actions.push(compact(inputs, before.revision).await?);
    }
    for p in &plan.order {
        if p.member.is_leader && plan.move_leader {
            if let Some(a) = hand_over(inputs, before, p).await? {
                actions.push(a);
            }
        }
        actions.push(defragment(inputs, p).await?);
    }
    let nospace = match plan.nospace {
        true => Some(disarm_if_under(inputs, &mut actions).await?),
        false => None,
    };
    Ok(Report {
        backup,
        actions,
        nospace,
    })
}

fn etcd_err<'a>(
    what: &'static str,
    member: &'a str,
) -> impl Fn(crate::etcd::SourceError) -> MaintenanceError + 'a {
    move |source| MaintenanceError::Etcd {
        what,
        member: member.to_string(),
        source,
    }
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Compacts the whole history up to `revision` (already compacted there: nothing to do).
async fn compact(inputs: &Inputs<'_>, revision: i64) -> Result<Action, MaintenanceError> {
    let (at, started) = (Utc::now(), Instant::now());
    let mut source = EtcdSource::connect_first(inputs.etcd)
        .await
        .map_err(etcd_err("compacting", "the cluster"))?;
    match source.compact(revision).await {
        Ok(()) => {}
        Err(e) if e.to_string().contains("compacted") => {}
        Err(e) => return Err(etcd_err("compacting", "the cluster")(e)),
    }
    inputs.observer.note(&format!(
        "compacted the history up to revision {revision} (NOSPACE)"
    ));
    Ok(Action {
        action: "compact",
        member: "cluster".into(),
        at,
        before: 0,
        after: 0,
        ms: millis(started),
    })
}

/// Hands leadership to the first healthy follower, so the leader's defragmentation stalls no
/// write. `None` when there is no follower to take it.
async fn hand_over(
    inputs: &Inputs<'_>,
    before: &Survey,
    leader: &Planned,
) -> Result<Option<Action>, MaintenanceError> {
    let Some(to) = before
        .members
        .iter()
        .find(|m| !m.is_leader && !m.learner && m.problem.is_none())
    else {
        return Ok(None);
    };
    let (at, started) = (Utc::now(), Instant::now());
    let name = &leader.member.name;
    let mut source = EtcdSource::connect(inputs.etcd, &leader.member.endpoint)
        .await
        .map_err(etcd_err("moving leadership", name))?;
    source
        .move_leader(to.id)
        .await
        .map_err(etcd_err("moving leadership", name))?;
    inputs
        .observer
        .note(&format!("moved leadership from {name} to {}", to.name));
    Ok(Some(Action {
        action: "move-leader",
        member: name.clone(),
        at,
        before: 0,
        after: 0,
        ms: millis(started),
    }))
}

/// Defragments one member on its own endpoint, then waits until it answers with a leader.
async fn defragment(inputs: &Inputs<'_>, p: &Planned) -> Result<Action, MaintenanceError> {
    let (at, started) = (Utc::now(), Instant::now());
    let name = &p.member.name;
    inputs.observer.note(&format!(
        "defragmenting {name}: {}, {} in use",
        HumanBytes(p.member.db_size),
        HumanBytes(p.member.db_size_in_use)
    ));
    let mut source = EtcdSource::connect(inputs.etcd, &p.member.endpoint)
        .await
        .map_err(etcd_err("connecting", name))?;
    // As long as the member may take to come back: its defragmentation is that pause.
    source
        .defragment(inputs.ready_timeout)
        .await
        .map_err(etcd_err("defragmenting", name))?;
    let after = wait_back(inputs, p).await?;
    inputs.observer.note(&format!(
        "defragmented {name}: {} → {} in {} ms",
        HumanBytes(p.member.db_size),
        HumanBytes(after),
        millis(started)
    ));
    Ok(Action {
        action: "defragment",
        member: name.clone(),
        at,
        before: p.member.db_size,
        after,
        ms: millis(started),
    })
}

/// Until the member answers `Status` with a leader; its database size then.
async fn wait_back(inputs: &Inputs<'_>, p: &Planned) -> Result<u64, MaintenanceError> {
    let started = Instant::now();
    loop {
        let last = match EtcdSource::connect(inputs.etcd, &p.member.endpoint).await {
            Ok(mut s) => match s.status().await {
                Ok(st) if st.leader != 0 => return Ok(st.db_size),
                Ok(_) => "no leader yet".to_string(),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if started.elapsed() >= inputs.ready_timeout {
            return Err(MaintenanceError::NotBack {
                member: p.member.name.clone(),
                waited: started.elapsed(),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// After NOSPACE's defragmentations: disarm when every member is under the quota with
/// headroom; else leave the alarm and say why (never loop).
async fn disarm_if_under(
    inputs: &Inputs<'_>,
    actions: &mut Vec<Action>,
) -> Result<NospaceOutcome, MaintenanceError> {
    let now = survey(inputs.etcd, inputs.quota)
        .await
        .map_err(etcd_err("surveying", "the cluster"))?;
    let largest = now.members.iter().map(|m| m.db_size).max().unwrap_or(0);
    let limit = (now.quota as f64 * NOSPACE_HEADROOM) as u64;
    if largest >= limit {
        let why = format!(
            "the largest member holds {} MiB after compaction and defragmentation, over {:.0} % of the {} MiB quota: the data itself is too large — raise --quota-backend-bytes on every member, or delete data, then disarm (`etcdctl alarm disarm`)",
            largest >> 20,
            NOSPACE_HEADROOM * 100.0,
            now.quota >> 20
        );
        tracing::error!("{why}");
        inputs.observer.note(&format!("NOSPACE left raised: {why}"));
        return Ok(NospaceOutcome::Left {
            largest,
            quota: now.quota,
            why,
        });
    }
    let mut source = EtcdSource::connect_first(inputs.etcd)
        .await
        .map_err(etcd_err("disarming NOSPACE", "the cluster"))?;
    for a in now.alarms.iter().filter(|a| a.is_nospace()) {
        let (at, started) = (Utc::now(), Instant::now());
        let member = now
            .member(a.member_id)
            .map_or(format!("{:x}", a.member_id), |m| m.name.clone());
        source
            .disarm_nospace(a.member_id)
            .await
            .map_err(etcd_err("disarming NOSPACE", &member))?;
        actions.push(Action {
            action: "disarm",
            member,
            at,
            before: largest,
            after: largest,
            ms: millis(started),
        });
    }
    inputs.observer.note(&format!(
        "NOSPACE disarmed: the largest member holds {} MiB of a {} MiB quota",
        largest >> 20,
        now.quota >> 20
    ));
    Ok(NospaceOutcome::Disarmed {
        largest,
        quota: now.quota,
    })
}
