//! The replace, one journaled step at a time. `<state-dir>/member-replace/journal.json` exists
//! while a replace is unfinished; `--resume` goes on from the step it names. Each step is safe
//! to run again: it looks at the node and the cluster before it acts.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::plan::ReplacePlan;
use super::{MemberError, ReplaceOptions};
use crate::etcd::health::{verify_cluster, Wanted};
use crate::etcd::membership::{is_not_in_sync, Member};
use crate::etcd::EtcdSource;
use crate::fsutil::{self, JournalFile};
use crate::restore::node::move_manifest;
use crate::restore::EtcdProbe;

const MANIFEST: &str = "etcd.yaml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    StopEtcd,
    RemoveStale,
    MoveDataAside,
    AddLearner,
    StartEtcd,
    Promote,
    Verify,
}

pub const STEPS: [Step; 7] = [
    Step::StopEtcd,
    Step::RemoveStale,
    Step::MoveDataAside,
    Step::AddLearner,
    Step::StartEtcd,
    Step::Promote,
    Step::Verify,
];

impl Step {
    /// As in the journal (`stop-etcd`, `add-learner`, …).
    pub fn name(self) -> &'static str {
        match self {
            Step::StopEtcd => "stop-etcd",
            Step::RemoveStale => "remove-stale",
            Step::MoveDataAside => "move-data-aside",
            Step::AddLearner => "add-learner",
            Step::StartEtcd => "start-etcd",
            Step::Promote => "promote",
            Step::Verify => "verify",
        }
    }

    pub fn describe(self, plan: &ReplacePlan) -> String {
        match self {
            Step::StopEtcd => format!(
                "stop the local etcd: move {} into {}",
                plan.manifests_dir.join(MANIFEST).display(),
                plan.holding_dir.display()
            ),
            Step::RemoveStale => match plan.stale {
                Some(id) => format!("remove the stale member {} ({id:x})", plan.name),
                None => "no stale member to remove".into(),
            },
            Step::MoveDataAside => format!(
                "move {} aside to {} (kept, never deleted)",
                plan.data_dir.display(),
                plan.aside_dir.display()
            ),
            Step::AddLearner => match plan.learner {
                Some(id) => format!("{} is a learner already ({id:x})", plan.name),
                None => format!("add {} back as a learner at {}", plan.name, plan.peer_url),
            },
            Step::StartEtcd => format!(
                "write {} back with the current members and --initial-cluster-state=existing (kubelet starts it)",
                MANIFEST
            ),
            Step::Promote => "promote it to a voting member once it has caught up".into(),
            Step::Verify => "check that every member answers and hashes alike".into(),
        }
    }
}

/// The plan and how far it got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplaceJournal {
    pub plan: ReplacePlan,
    pub done: Vec<Step>,
    /// The learner's id and the `--initial-cluster` it starts with, once added.
    pub learner: Option<u64>,
    pub initial_cluster: Option<String>,
    pub started_at: DateTime<Utc>,
}

/// What the cluster looks like at the end.
#[derive(Debug, Clone, Serialize)]
pub struct ReplaceReport {
    pub members: Vec<MemberReport>,
    pub revision: i64,
    /// Every member's HashKV at `revision` (and the compaction it was taken at) agrees.
    pub hash: u32,
    pub compact_revision: i64,
    pub aside_dir: Option<std::path::PathBuf>,
    pub original_manifest: std::path::PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberReport {
    pub name: String,
    pub id: String,
    pub version: String,
    pub learner: bool,
}

fn journal_file(state_dir: &Path) -> JournalFile {
    JournalFile::new(state_dir.join("member-replace"), "member replace")
}

/// The unfinished replace on this node, if any.
///
/// # Errors
/// The journal cannot be read.
pub fn unfinished(state_dir: &Path) -> Result<Option<ReplaceJournal>, MemberError> {
    Ok(journal_file(state_dir).load()?)
}

/// Runs `plan` from its first step.
///
/// # Errors
/// A step failed (the journal says where; `--resume` goes on).
pub async fn replace(
    plan: ReplacePlan,
    opts: &ReplaceOptions,
) -> Result<ReplaceReport, MemberError> {
    let file = journal_file(&opts.state_dir);
    let _lock = file.lock()?;
    if let Some(j) = file.load::<ReplaceJournal>()? {
        return Err(MemberError::refused(format!(
            "a member replace ({}) is unfinished on this node, stopped before `{}`: `lifeboat member replace --resume` goes on with it",
            j.plan.run_id,
            next_step(&j).map_or("the end".into(), |s| s.describe(&j.plan))
        )));
    }
    let journal = ReplaceJournal {
        learner: plan.learner,
        plan,
        done: Vec::new(),
        initial_cluster: None,
        started_at: Utc::now(),
    };
    file.save(&journal)?;
    run(&file, journal, opts).await
}

/// Goes on with the unfinished replace.
///
/// # Errors
/// None is unfinished; a step failed.
pub async fn resume(opts: &ReplaceOptions) -> Result<ReplaceReport, MemberError> {
    let file = journal_file(&opts.state_dir);
    let _lock = file.lock()?;
    let Some(journal) = file.load::<ReplaceJournal>()? else {
        return Err(MemberError::refused(format!(
            "no unfinished member replace in {}",
            file.dir().display()
        )));
    };
    run(&file, journal, opts).await
}

fn next_step(j: &ReplaceJournal) -> Option<Step> {
    STEPS.into_iter().find(|s| !j.done.contains(s))
}

async fn run(
    file: &JournalFile,
    mut j: ReplaceJournal,
    opts: &ReplaceOptions,
) -> Result<ReplaceReport, MemberError> {
    while let Some(step) = next_step(&j) {
        tracing::info!(step = %step.describe(&j.plan), "member replace");
        if step == Step::Verify {
            let report = verify(&j, opts).await?;
            j.done.push(step);
            let archive = j.plan.holding_dir.join("journal.json");
            file.archive(&j, &archive)?;
            return Ok(report);
        }
        do_step(step, &mut j, opts).await?;
        // Test-only: die here, before the journal records the step done.
        crate::restore::crash::point(&format!("member:{}", step.name()));
        j.done.push(step);
        file.save(&j)?;
    }
    Err(MemberError::refused("the journal has no step left to run"))
}

async fn do_step(
    step: Step,
    j: &mut ReplaceJournal,
    opts: &ReplaceOptions,
) -> Result<(), MemberError> {
    let plan = &j.plan;
    match step {
        Step::StopEtcd => {
            move_manifest(MANIFEST, &plan.manifests_dir, &plan.holding_dir)?;
            let probe = EtcdProbe::new(Some(&plan.local_endpoint), &plan.data_dir);
            let timeout = opts.stop_timeout;
            tokio::task::spawn_blocking(move || probe.wait_stopped(timeout))
                .await
                .map_err(|e| MemberError::refused(format!("waiting for etcd to stop: {e}")))??;
        }
        Step::RemoveStale => {
            if let Some(id) = plan.stale {
                remove(plan, opts, id).await?;
            }
        }
        Step::MoveDataAside => move_data_aside(plan)?,
        Step::AddLearner => {
            let mut cluster = cluster(plan, opts).await?;
            let (id, members) = match j.learner {
                Some(id) => (
                    id,
                    cluster
                        .members()
                        .await
                        .map_err(membership("listing members"))?,
                ),
                None => ours_or_add(&mut cluster, plan).await?,
            };
            j.initial_cluster = Some(initial_cluster(&members, id, plan));
            j.learner = Some(id);
        }
        Step::StartEtcd => {
            let initial = j.initial_cluster.clone().unwrap_or_default();
            let original = plan.holding_dir.join(MANIFEST);
            let text = std::fs::read_to_string(&original).map_err(|source| MemberError::Io {
                path: original.clone(),
                source,
            })?;
            let rewritten = rejoin_manifest(&text, &initial).ok_or_else(|| {
                MemberError::refused(format!(
                    "{} has no `- --initial-cluster=` line to rewrite: not a manifest kubeadm writes",
                    original.display()
                ))
            })?;
            let target = plan.manifests_dir.join(MANIFEST);
            fsutil::write_atomic(&target, rewritten.as_bytes()).map_err(|source| {
                MemberError::Io {
                    path: target.clone(),
                    source,
                }
            })?;
        }
        Step::Promote => promote(j, opts).await?,
        Step::Verify => {}
    }
    Ok(())
}

fn membership(what: &'static str) -> impl Fn(crate::etcd::SourceError) -> MemberError {
    move |source| MemberError::Membership {
        what: what.into(),
        source: Box::new(source),
    }
}

/// A client of the members that answered when the plan was made.
async fn cluster(plan: &ReplacePlan, opts: &ReplaceOptions) -> Result<EtcdSource, MemberError> {
    let mut settings = plan.settings(plan.endpoints.clone(), opts.connect_timeout);
    // A membership change waits for raft to apply it: on a busy cluster, or right after the
    // dead member was the leader (an election first), that takes longer than a read.
    settings.request_timeout = MEMBERSHIP_TIMEOUT;
    EtcdSource::connect_first(&settings)
        .await
        .map_err(|source| MemberError::NoCluster {
            endpoints: plan.endpoints.join(","),
            source: Box::new(source),
        })
}

/// This node's learner when a run that stopped already added it (the add is not journaled
/// until it returns); else a new one.
async fn ours_or_add(
    cluster: &mut EtcdSource,
    plan: &ReplacePlan,
) -> Result<(u64, Vec<Member>), MemberError> {
    let deadline = Instant::now() + CHANGE_PATIENCE;
    loop {
        // Looked for first, every time: an add that timed out may have been applied.
        let members = cluster
            .members()
            .await
            .map_err(membership("listing members"))?;
        if let Some(m) = members
            .iter()
            .find(|m| m.learner && m.peer_urls.contains(&plan.peer_url))
        {
            return Ok((m.id, members));
        }
        match cluster
            .add_learner(std::slice::from_ref(&plan.peer_url))
            .await
        {
            Err(e) if is_passing(&e) && Instant::now() < deadline => {
                tracing::info!(error = %e, "etcd does not take the new member yet; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other.map_err(membership("adding this node as a learner")),
        }
    }
}

/// Removes member `id` unless it is gone already; a removal that timed out is looked for and
/// asked again.
async fn remove(plan: &ReplacePlan, opts: &ReplaceOptions, id: u64) -> Result<(), MemberError> {
    let mut cluster = cluster(plan, opts).await?;
    let deadline = Instant::now() + CHANGE_PATIENCE;
    loop {
        let members = cluster
            .members()
            .await
            .map_err(|e| MemberError::NoCluster {
                endpoints: plan.endpoints.join(","),
                source: Box::new(e),
            })?;
        if !members.iter().any(|m| m.id == id) {
            return Ok(());
        }
        match cluster.remove_member(id).await {
            Ok(()) => return Ok(()),
            Err(e) if is_passing(&e) && Instant::now() < deadline => {
                tracing::info!(error = %e, "etcd did not apply the removal yet; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(source) => {
                return Err(MemberError::Membership {
                    what: format!("removing member {} ({id:x})", plan.name),
                    source: Box::new(source),
                })
            }
        }
    }
}

/// How long a membership change is asked again while etcd answers with a passing condition.
const CHANGE_PATIENCE: Duration = Duration::from_secs(60);

/// How long one membership call (remove, add, promote, list) may take.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(10);

/// A refusal or silence that passes: etcd accepts a new member only from a member connected
/// to every voter for its health interval (5 s: "unhealthy cluster" just after the stale member
/// left, or a peer link flapped); a leader drops a membership change proposed before it has
/// applied its first entry (right after an election — the dead member may have been the
/// leader), which the caller sees as no answer; "leader changed" during an election.
fn is_passing(e: &crate::etcd::SourceError) -> bool {
    if matches!(e, crate::etcd::SourceError::Unreachable { .. }) {
        return true;
    }
    let text = crate::error_chain::one_line(e);
    [
        "unhealthy cluster",
        "leader changed",
        "request timed out",
        "no leader",
    ]
    .iter()
    .any(|t| text.contains(t))
}

fn move_data_aside(plan: &ReplacePlan) -> Result<(), MemberError> {
    if !plan.data_dir.exists() {
        return Ok(());
    }
    fsutil::durable_rename(&plan.data_dir, &plan.aside_dir).map_err(|source| MemberError::Io {
        path: plan.data_dir.clone(),
        source,
    })
}

/// `name=peer` for every member; the learner (not started: no name yet) is this node.
fn initial_cluster(members: &[Member], learner: u64, plan: &ReplacePlan) -> String {
    members
        .iter()
        .flat_map(|m| {
            let name = if m.id == learner {
                plan.name.clone()
            } else {
                m.name.clone()
            };
            m.peer_urls
                .iter()
                .map(move |u| format!("{name}={u}"))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The manifest with `--initial-cluster` set to `initial` and `--initial-cluster-state=existing`
/// (added after it when missing); `None` without an `--initial-cluster` line.
pub(super) fn rejoin_manifest(text: &str, initial: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut found = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("- --initial-cluster=") {
            found = true;
            out.push(format!("{indent}- --initial-cluster={initial}"));
            if !text.contains("- --initial-cluster-state=") {
                out.push(format!("{indent}- --initial-cluster-state=existing"));
            }
        } else if trimmed.starts_with("- --initial-cluster-state=") {
            out.push(format!("{indent}- --initial-cluster-state=existing"));
        } else {
            out.push(line.to_string());
        }
    }
    found.then(|| out.join("\n") + "\n")
}

/// Promotes the learner once etcd says it is in sync; until `catch_up_timeout`.
async fn promote(j: &ReplaceJournal, opts: &ReplaceOptions) -> Result<(), MemberError> {
    let plan = &j.plan;
    let Some(id) = j.learner else {
        return Err(MemberError::refused(
            "no learner was recorded in the journal",
        ));
    };
    let deadline = Instant::now() + opts.catch_up_timeout;
    // A refused promotion costs the leader nothing; asking twice a second promotes the learner
    // within half a second of being in sync (a growing back-off left it waiting for seconds).
    let pause = Duration::from_millis(500);
    loop {
        let mut cluster = cluster(plan, opts).await?;
        let last = match cluster.promote_member(id).await {
            Ok(()) => return Ok(()),
            Err(e) if is_not_in_sync(&e) || is_passing(&e) => e.to_string(),
            // Promoted already (a resumed run): nothing to do.
            Err(e) if is_voting(&mut cluster, id).await => {
                tracing::debug!(error = %e, "already a voting member");
                return Ok(());
            }
            Err(source) => {
                return Err(MemberError::Membership {
                    what: format!("promoting {} ({id:x})", plan.name),
                    source: Box::new(source),
                })
            }
        };
        if Instant::now() >= deadline {
            return Err(MemberError::CatchUp {
                name: plan.name.clone(),
                waited: opts.catch_up_timeout,
                last,
            });
        }
        tokio::time::sleep(pause).await;
    }
}

async fn is_voting(cluster: &mut EtcdSource, id: u64) -> bool {
    cluster
        .members()
        .await
        .is_ok_and(|ms| ms.iter().any(|m| m.id == id && !m.learner))
}

/// Every member answers, as a voter, and all hash alike at one revision.
async fn verify(j: &ReplaceJournal, opts: &ReplaceOptions) -> Result<ReplaceReport, MemberError> {
    let plan = &j.plan;
    let settings = plan.settings(plan.endpoints.clone(), opts.connect_timeout);
    let wanted = Wanted {
        version: None,
        timeout: opts.catch_up_timeout,
    };
    let a = verify_cluster(&settings, wanted)
        .await
        .map_err(MemberError::Disagree)?;
    Ok(ReplaceReport {
        members: a
            .answers
            .iter()
            .map(|x| MemberReport {
                name: x.member.name.clone(),
                id: format!("{:x}", x.member.id),
                version: x.status.version.clone(),
                learner: x.member.learner,
            })
            .collect(),
        revision: a.revision,
        hash: a.hash,
        compact_revision: a.compact_revision,
        aside_dir: Some(plan.aside_dir.clone()).filter(|d| d.exists()),
        original_manifest: plan.holding_dir.join(MANIFEST),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_rejoins_the_existing_cluster_and_keeps_everything_else() {
        let text = "spec:\n  containers:\n  - command:\n    - etcd\n    - --initial-cluster=cp3=https://10.0.0.13:2380\n    - --initial-cluster-state=new\n    - --name=cp3\n";
        let out = rejoin_manifest(
            text,
            "cp1=https://10.0.0.11:2380,cp3=https://10.0.0.13:2380",
        )
        .unwrap();
        assert_eq!(
            out,
            "spec:\n  containers:\n  - command:\n    - etcd\n    - --initial-cluster=cp1=https://10.0.0.11:2380,cp3=https://10.0.0.13:2380\n    - --initial-cluster-state=existing\n    - --name=cp3\n"
        );
        // kubeadm's first node has no state flag: it is added.
        let first = "    - --initial-cluster=cp1=https://a:2380\n    - --name=cp1\n";
        assert_eq!(
            rejoin_manifest(first, "x=y").unwrap(),
            "    - --initial-cluster=x=y\n    - --initial-cluster-state=existing\n    - --name=cp1\n"
        );
        assert_eq!(rejoin_manifest("    - --name=cp1\n", "x=y"), None);
    }

    #[test]
    fn step_names_are_the_journals() {
        for step in STEPS {
            assert_eq!(serde_json::to_value(step).unwrap(), step.name());
        }
    }

    #[test]
    fn passing_refusals_are_asked_again_and_real_ones_are_not() {
        use crate::etcd::{Cause, SourceError};
        let call = |text: &str| SourceError::Call {
            endpoint: "http://127.0.0.1:2379".into(),
            call: "MemberRemove",
            cause: Cause::text(text),
        };
        let silent = SourceError::Unreachable {
            endpoint: "http://127.0.0.1:2379".into(),
            cause: Cause::text("MemberRemove got no answer within 10s"),
        };
        assert!(is_passing(&silent));
        assert!(is_passing(&call("etcdserver: unhealthy cluster")));
        assert!(is_passing(&call("etcdserver: leader changed")));
        assert!(!is_passing(&call("etcdserver: member not found")));
        assert!(!is_passing(&call("etcdserver: Peer URLs already exists")));
    }

    #[test]
    fn the_learner_is_named_for_this_node_in_its_initial_cluster() {
        let m = |id, name: &str, port| Member {
            id,
            name: name.into(),
            peer_urls: vec![format!("https://h:{port}")],
            client_urls: vec![],
            learner: id == 9,
        };
        let plan = crate::member::plan::tests::plan(Vec::new());
        let members = [m(1, "cp1", 1), m(2, "cp2", 2), m(9, "", 3)];
        assert_eq!(
            initial_cluster(&members, 9, &plan),
            "cp1=https://h:1,cp2=https://h:2,cp3=https://h:3"
        );
    }
}
