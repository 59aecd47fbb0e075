//! `lifeboat restore`: bring a control-plane node back from a backup, one journaled step at a
//! time, so that a crash anywhere can be resumed or rolled back.
//!
//! Order (docs/restore.md): fetch and verify the backup into the state dir (nothing on the
//! node changes before it fully checks out) → move the control-plane manifests into a holding
//! folder and wait until etcd is really down → move the data dir aside (never deleted) →
//! restore with etcdutl/etcdctl into a fresh folder beside it, then rename that into place →
//! etcd's manifest back, wait for it → the other manifests back → close the journal.

pub mod apiserver;
pub mod journal;
pub mod node;
pub mod tool;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::Manifest;
use crate::etcd::discovery::{self, KubeadmEtcd};
use crate::etcd::{EtcdSettings, EtcdSource};
use crate::fsutil;
use crate::progress::Progress;
use crate::readback::{self, ReadBackError};
use crate::stages::encrypt::Identities;
use crate::store::Store;
use crate::verify::{SnapshotStatus, VerifyError};

pub use journal::{Journal, JournalDir, RunState};
pub use node::{EtcdProbe, CONTROL_PLANE_PODS};
pub use tool::{MemberSpec, RestoreTool, ToolKind, DEFAULT_BUMP_REVISION};

/// Test-only: makes the process exit (like `kill -9`: no cleanup) at a named step, as
/// `<step>` (after the step's action, before the journal records it done) or `<step>:before`.
pub const CRASH_ENV: &str = "LIFEBOAT_TEST_CRASH_AT";

/// Room the restore needs beside the snapshot: etcd preallocates a 64 MB WAL segment.
const WAL_PREALLOCATION: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("restore refused: {reason}")]
    Refused { reason: String },
    #[error(transparent)]
    ReadBack(#[from] ReadBackError),
    #[error("{path}: {detail}")]
    Node { path: PathBuf, detail: String },
    #[error("journal {path}: {detail}")]
    Journal { path: PathBuf, detail: String },
    #[error("restore tool: {detail}")]
    Tool { detail: String },
    #[error("etcd did not stop within {waited:?} after its manifest left the manifests folder: {why}; is the kubelet running? `lifeboat restore --rollback` puts everything back")]
    StillRunning { waited: Duration, why: String },
    #[error("etcd did not come back within {waited:?}: {detail}; check its logs (crictl logs, journalctl -u kubelet), then `lifeboat restore --resume` retries, `lifeboat restore --rollback` returns to the old data")]
    NotHealthy { waited: Duration, detail: String },
    #[error("the plain snapshot {path} does not check out: {source}")]
    BadFile {
        path: PathBuf,
        #[source]
        source: VerifyError,
    },
    #[error("{0}")]
    Discovery(#[from] discovery::DiscoveryError),
}

impl RestoreError {
    pub(crate) fn node(path: &Path, detail: impl Into<String>) -> RestoreError {
        RestoreError::Node {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }

    pub(crate) fn journal(path: &Path, detail: impl Into<String>) -> RestoreError {
        RestoreError::Journal {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }

    fn refused(reason: impl Into<String>) -> RestoreError {
        RestoreError::Refused {
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Fetch,
    StopControlPlane,
    MoveDataDir,
    Restore,
    StartEtcd,
    StartControlPlane,
    Finish,
}

impl Step {
    pub const ALL: [Step; 7] = [
        Step::Fetch,
        Step::StopControlPlane,
        Step::MoveDataDir,
        Step::Restore,
        Step::StartEtcd,
        Step::StartControlPlane,
        Step::Finish,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Fetch => "fetch",
            Step::StopControlPlane => "stop-control-plane",
            Step::MoveDataDir => "move-data-dir",
            Step::Restore => "restore",
            Step::StartEtcd => "start-etcd",
            Step::StartControlPlane => "start-control-plane",
            Step::Finish => "finish",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the snapshot comes from.
pub enum SnapshotSource {
    Backup {
        store: Arc<dyn Store>,
        manifest: Box<Manifest>,
        identities: Option<Arc<Identities>>,
    },
    File(PathBuf),
}

/// What the plan says about the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFacts {
    /// Backup id, or `file` for a plain snapshot file.
    pub id: String,
    /// Store location or file path.
    pub source: String,
    pub created_at: Option<DateTime<Utc>>,
    pub revision: i64,
    pub member_name: Option<String>,
    pub cluster_id: Option<String>,
    pub plain_sha256: String,
    pub plain_size: u64,
    /// etcd's sha256 trailer is present (else the tool needs `--skip-hash-check`).
    pub has_trailer: bool,
    pub status: SnapshotStatus,
}

/// The etcd client settings for health checks on this node (no secrets: file paths only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalClient {
    pub endpoint: String,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Everything a restore will do, decided before anything changes; saved in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub run_id: String,
    pub backup: BackupFacts,
    /// The verified plain copy the tool restores from (removed when the run ends).
    pub snapshot_path: PathBuf,
    pub manifests_dir: PathBuf,
    pub holding_dir: PathBuf,
    /// Control-plane manifests present now, etcd first: stopped and brought back in order.
    pub static_pods: Vec<String>,
    pub data_dir: PathBuf,
    pub data_dir_existed: bool,
    pub aside_dir: PathBuf,
    pub restoring_dir: PathBuf,
    /// Owner the restored data dir gets (the old data dir's, or its parent's).
    pub owner: (u32, u32),
    pub tool: RestoreTool,
    pub member: MemberSpec,
    pub bump_revision: Option<u64>,
    pub restore_argv: Vec<String>,
    pub client: LocalClient,
    /// The lowest revision the restored member may report.
    pub expected_min_revision: i64,
    pub local_cluster_id: Option<String>,
    /// Where to ask the API server for readiness once its manifest is back.
    pub apiserver: Option<apiserver::ApiServerProbe>,
    pub warnings: Vec<String>,
}

impl Plan {
    /// Members in `--initial-cluster`: more than one means an HA restore.
    pub fn member_count(&self) -> usize {
        self.member
            .initial_cluster
            .split(',')
            .filter(|s| !s.is_empty())
            .count()
    }
}

/// Overrides for the restored member (HA restores pass the same cluster and token everywhere).
#[derive(Debug, Clone, Default)]
pub struct MemberOverrides {
    pub name: Option<String>,
    pub initial_advertise_peer_urls: Option<String>,
    pub initial_cluster: Option<String>,
    pub initial_cluster_token: Option<String>,
}

/// How to restore on this node.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub manifests_dir: PathBuf,
    pub state_dir: PathBuf,
    pub tool: Option<PathBuf>,
    pub member: MemberOverrides,
    /// `None`: the default bump when the tool supports it; `Some(0)`: no bump.
    pub bump_revision: Option<u64>,
    /// Restore although etcd is running on this node (it is stopped first).
    pub force: bool,
    pub stop_timeout: Duration,
    pub start_timeout: Duration,
    /// Wait for etcd to answer after its manifest goes back.
    pub wait: bool,
    /// Connect/request timeouts for the health checks.
    pub connect_timeout: Duration,
    /// How long to wait for the API server's `/readyz` (informational, never fails).
    pub apiserver_timeout: Duration,
}

/// Reports steps as they run (the CLI prints them).
pub trait Observer: Send + Sync {
    fn step_started(&self, _step: Step, _what: &str) {}
    fn step_done(&self, _step: Step, _took: Duration) {}
    fn note(&self, _message: &str) {}
}

/// Observes nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// Decides the plan and runs every check that can refuse before anything changes.
///
/// # Errors
/// A refusal (unfinished journal, etcd running without `force`, not enough disk), an
/// unreadable etcd manifest, no restore tool, a plain file that does not check out.
pub async fn plan(source: &SnapshotSource, opts: &RestoreOptions) -> Result<Plan, RestoreError> {
    let journals = JournalDir::new(&opts.state_dir);
    if let Some(j) = journals.load()? {
        return Err(RestoreError::refused(format!(
            "an unfinished restore (run {}, backup {}, stopped in step {}) has its journal at {}: finish it with `lifeboat restore --resume` or undo it with `lifeboat restore --rollback`",
            j.plan.run_id,
            j.plan.backup.id,
            j.interrupted_step().or(j.next_step()).map_or("none", Step::name),
            journals.path().display()
        )));
    }
    let etcd_manifest = opts.manifests_dir.join("etcd.yaml");
    let local = discovery::discover(&etcd_manifest)?.ok_or_else(|| {
        RestoreError::node(
            &etcd_manifest,
            "no etcd static pod manifest here: is this a kubeadm control-plane node? pass --manifests-dir",
        )
    })?;
    if let Some(wal) = local.flags.get("wal-dir") {
        return Err(RestoreError::node(
            &etcd_manifest,
            format!("etcd uses a separate --wal-dir ({wal}), which lifeboat does not restore yet: restore by hand with etcdutl (docs/restore.md)"),
        ));
    }
    let backup = backup_facts(source)?;
    let tool = RestoreTool::find(opts.tool.as_deref())?;
    let run_id = Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let run_dir = journals.run_dir(&run_id);
    let data_dir = local.data_dir.clone();
    let data_dir_existed = data_dir.exists();
    let mut warnings = Vec::new();

    let probe = EtcdProbe::new(local.endpoints.first().map(String::as_str), &data_dir);
    let client = local_client(&local);
    let running = probe.running();
    let local_cluster_id = match &running {
        Some(_) => local_cluster_id(&client, opts.connect_timeout).await,
        None => None,
    };
    if let Some(why) = &running {
        if !opts.force {
            return Err(RestoreError::refused(format!(
                "etcd is running on this node ({why}); a restore replaces its data with the backup's — if that is what you want, add --force (lifeboat stops it by moving the static pod manifests first)"
            )));
        }
    }
    if let (Some(local_id), Some(backup_id)) = (&local_cluster_id, &backup.cluster_id) {
        if local_id != backup_id {
            warnings.push(format!(
                "the backup is from cluster {backup_id} but this member belongs to cluster {local_id}: make sure this is the right backup"
            ));
        }
    }
    let member = member_spec(&local, &opts.member, &backup, &mut warnings)?;
    let bump_revision = match opts.bump_revision {
        Some(0) => None,
        Some(n) if tool.can_bump_revision() => Some(n),
        None if tool.can_bump_revision() => Some(DEFAULT_BUMP_REVISION),
        _ => {
            warnings.push(format!(
                "{} {} cannot bump the revision (etcdutl 3.5.10+ can): Kubernetes clients that saw newer resourceVersions may need a restart (kube-controller-manager, kube-scheduler, operators)",
                match tool.kind { ToolKind::Etcdutl => "etcdutl", ToolKind::Etcdctl => "etcdctl" },
                tool.version_string()
            ));
            None
        }
    };
    let snapshot_path = run_dir.join("snapshot.db");
    let restoring_dir = sibling(&data_dir, &format!("lifeboat-restoring-{run_id}"));
    let restore_argv = tool.restore_argv(
        &snapshot_path,
        &restoring_dir,
        &member,
        !backup.has_trailer,
        bump_revision,
    );
    check_disk(&opts.state_dir, &data_dir, backup.plain_size)?;
    let static_pods = CONTROL_PLANE_PODS
        .iter()
        .filter(|p| opts.manifests_dir.join(p).exists())
        .map(|p| (*p).to_string())
        .collect();
    let owner = owner_of(&data_dir);
    Ok(Plan {
        expected_min_revision: backup.revision + bump_revision.map_or(0, |b| b as i64),
        holding_dir: sibling(&opts.manifests_dir, &format!("lifeboat-held-{run_id}")),
        aside_dir: sibling(&data_dir, &format!("lifeboat-{run_id}")),
        manifests_dir: opts.manifests_dir.clone(),
        run_id,
        backup,
        snapshot_path,
        static_pods,
        data_dir,
        data_dir_existed,
        restoring_dir,
        owner,
        tool,
        member,
        bump_revision,
        restore_argv,
        client,
        local_cluster_id,
        apiserver: apiserver::ApiServerProbe::from_manifest(
            &opts.manifests_dir.join("kube-apiserver.yaml"),
        ),
        warnings,
    })
}

/// Carries out a plan from the start.
///
/// # Errors
/// The first step that fails; the journal then says where to resume or roll back from.
pub async fn execute(
    plan: Plan,
    source: &SnapshotSource,
    opts: &RestoreOptions,
    observer: &dyn Observer,
    progress: Arc<dyn Progress>,
) -> Result<Journal, RestoreError> {
    let journals = JournalDir::new(&opts.state_dir);
    let _lock = journals.lock()?;
    if journals.load()?.is_some() {
        return Err(RestoreError::refused(
            "an unfinished restore journal appeared meanwhile: run `lifeboat restore --resume` or `--rollback`",
        ));
    }
    let mut journal = Journal::new(plan);
    journals.save(&journal)?;
    run_steps(
        &journals,
        &mut journal,
        Some(source),
        opts,
        observer,
        progress,
    )
    .await?;
    Ok(journal)
}

/// Continues an interrupted restore from its journal. `source` is needed only when the
/// fetch step has to be redone.
///
/// # Errors
/// No unfinished restore, or the step that fails again.
pub async fn resume(
    source: Option<&SnapshotSource>,
    opts: &RestoreOptions,
    observer: &dyn Observer,
    progress: Arc<dyn Progress>,
) -> Result<Journal, RestoreError> {
    let journals = JournalDir::new(&opts.state_dir);
    let _lock = journals.lock()?;
    let mut journal = unfinished(&journals)?;
    if journal.state == RunState::RolledBack {
        return Err(RestoreError::refused(
            "this restore was being rolled back: finish that with `lifeboat restore --rollback`",
        ));
    }
    run_steps(&journals, &mut journal, source, opts, observer, progress).await?;
    Ok(journal)
}

/// The unfinished journal, or a refusal saying there is none.
///
/// # Errors
/// No journal, or an unreadable one.
pub fn unfinished(journals: &JournalDir) -> Result<Journal, RestoreError> {
    journals.load()?.ok_or_else(|| {
        RestoreError::refused(format!(
            "there is no unfinished restore on this node (no {})",
            journals.path().display()
        ))
    })
}

async fn run_steps(
    journals: &JournalDir,
    journal: &mut Journal,
    source: Option<&SnapshotSource>,
    opts: &RestoreOptions,
    observer: &dyn Observer,
    progress: Arc<dyn Progress>,
) -> Result<(), RestoreError> {
    while let Some(step) = journal.next_step() {
        let plan = journal.plan.clone();
        observer.step_started(step, &describe_step(step, &plan));
        journal.mark_started(step);
        journals.save(journal)?;
        crash_point(step, true);
        let started = Instant::now();
        let result = match step {
            Step::Fetch => fetch(&plan, source, progress.clone()).await,
            Step::StopControlPlane => stop_control_plane(&plan, opts),
            Step::MoveDataDir => move_data_dir(&plan),
            Step::Restore => restore_data_dir(&plan),
            Step::StartEtcd => start_etcd(&plan, opts, observer).await,
            Step::StartControlPlane => start_control_plane(&plan, opts, observer).await,
            Step::Finish => finish(&plan),
        };
        if let Err(e) = result {
            if step == Step::Fetch {
                // Nothing on the node changed: drop the journal so a new attempt may start.
                discard_unstarted(journals, &plan);
            }
            return Err(e);
        }
        crash_point(step, false);
        journal.mark_done(step);
        if step == Step::Finish {
            journal.state = RunState::Finished;
            journals.close(journal)?;
        } else {
            journals.save(journal)?;
        }
        observer.step_done(step, started.elapsed());
    }
    Ok(())
}

fn discard_unstarted(journals: &JournalDir, plan: &Plan) {
    let _ = std::fs::remove_file(journals.path());
    let _ = std::fs::remove_dir_all(journals.run_dir(&plan.run_id));
}

/// Returns the node to its state before the restore: restored data moved aside (never
/// deleted), the old data dir and the manifests back, byte for byte.
///
/// # Errors
/// No unfinished restore, or a file operation that fails (rerun: every step is idempotent).
pub async fn rollback(
    opts: &RestoreOptions,
    observer: &dyn Observer,
) -> Result<Journal, RestoreError> {
    let journals = JournalDir::new(&opts.state_dir);
    let _lock = journals.lock()?;
    let mut journal = unfinished(&journals)?;
    journal.state = RunState::RolledBack;
    journals.save(&journal)?;
    let plan = journal.plan.clone();
    let started = Instant::now();
    let touched_node = journal
        .steps
        .iter()
        .any(|r| r.step == Step::StopControlPlane);
    if touched_node {
        // Whatever came back (the restored etcd) stops again before the data dirs swap.
        observer.note("stopping the control plane");
        for pod in &plan.static_pods {
            if plan.manifests_dir.join(pod).exists() {
                node::move_manifest(pod, &plan.manifests_dir, &plan.holding_dir)?;
            }
        }
        EtcdProbe::new(Some(&plan.client.endpoint), &plan.data_dir)
            .wait_stopped(opts.stop_timeout)?;
    }
    remove_partial_restore(&plan)?;
    let data_dir_is_restored = if plan.data_dir_existed {
        plan.aside_dir.exists() && plan.data_dir.exists()
    } else {
        plan.data_dir.exists() && journal.steps.iter().any(|r| r.step == Step::Restore)
    };
    if data_dir_is_restored {
        let discarded = sibling(
            &plan.data_dir,
            &format!("lifeboat-discarded-{}", plan.run_id),
        );
        observer.note(&format!(
            "moving the restored data dir aside to {}",
            discarded.display()
        ));
        fsutil::durable_rename(&plan.data_dir, &discarded)
            .map_err(|e| RestoreError::node(&plan.data_dir, e.to_string()))?;
    }
    if plan.data_dir_existed && plan.aside_dir.exists() && !plan.data_dir.exists() {
        observer.note(&format!(
            "moving the original data dir back from {}",
            plan.aside_dir.display()
        ));
        fsutil::durable_rename(&plan.aside_dir, &plan.data_dir)
            .map_err(|e| RestoreError::node(&plan.aside_dir, e.to_string()))?;
    }
    if touched_node {
        observer.note("putting the static pod manifests back");
        for pod in &plan.static_pods {
            node::move_manifest(pod, &plan.holding_dir, &plan.manifests_dir)?;
        }
        let _ = std::fs::remove_dir(&plan.holding_dir);
    }
    if touched_node && opts.wait && plan.static_pods.iter().any(|p| p == "etcd.yaml") {
        wait_healthy(&plan, opts, 0, observer).await?;
    }
    remove_snapshot_copy(&plan);
    journals.close(&journal)?;
    observer.note(&format!(
        "rolled back in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(journal)
}

fn crash_point(step: Step, before: bool) {
    if before {
        crash_point_named(&format!("{}:before", step.name()));
    } else {
        crash_point_named(step.name());
    }
}

fn describe_step(step: Step, plan: &Plan) -> String {
    match step {
        Step::Fetch => format!(
            "fetch and verify {} into {}",
            plan.backup.id,
            plan.snapshot_path.display()
        ),
        Step::StopControlPlane => format!(
            "move {} to {} and wait for etcd to stop",
            plan.static_pods.join(", "),
            plan.holding_dir.display()
        ),
        Step::MoveDataDir => {
            if plan.data_dir_existed {
                format!(
                    "move {} aside to {}",
                    plan.data_dir.display(),
                    plan.aside_dir.display()
                )
            } else {
                format!(
                    "{} does not exist: nothing to move",
                    plan.data_dir.display()
                )
            }
        }
        Step::Restore => format!("{}, then rename into place", plan.restore_argv.join(" ")),
        Step::StartEtcd => "put etcd.yaml back and wait for etcd".into(),
        Step::StartControlPlane => "put the other control-plane manifests back".into(),
        Step::Finish => "remove the plain snapshot copy and close the journal".into(),
    }
}

async fn fetch(
    plan: &Plan,
    source: Option<&SnapshotSource>,
    progress: Arc<dyn Progress>,
) -> Result<(), RestoreError> {
    let run_dir = fsutil::parent_of(&plan.snapshot_path);
    fsutil::create_private_dir(&run_dir)
        .map_err(|e| RestoreError::node(&run_dir, e.to_string()))?;
    match source {
        Some(SnapshotSource::Backup {
            store,
            manifest,
            identities,
        }) => {
            readback::get_backup(
                store.clone(),
                manifest,
                identities.as_ref(),
                &plan.snapshot_path,
                true,
                progress,
            )
            .await?;
        }
        Some(SnapshotSource::File(path)) => copy_checked(path, &plan.snapshot_path, &plan.backup)?,
        None => {
            return Err(RestoreError::refused(format!(
                "the snapshot must be fetched again: pass the backup ({}) with --dest and --identity as for the first run",
                plan.backup.id
            )))
        }
    }
    Ok(())
}

fn copy_checked(from: &Path, to: &Path, facts: &BackupFacts) -> Result<(), RestoreError> {
    let part = to.with_extension("db.part");
    let copy = || -> std::io::Result<()> {
        std::fs::copy(from, &part)?;
        std::fs::File::open(&part)?.sync_all()?;
        std::fs::rename(&part, to)?;
        fsutil::sync_dir(&fsutil::parent_of(to))
    };
    copy().map_err(|e| RestoreError::node(to, format!("cannot copy {}: {e}", from.display())))?;
    let status = readback::plain_file_info(to)
        .map_err(|source| RestoreError::BadFile {
            path: from.to_path_buf(),
            source,
        })?
        .status;
    if status != facts.status {
        return Err(RestoreError::node(
            from,
            "the file changed since the plan was made: run the restore again",
        ));
    }
    Ok(())
}

fn stop_control_plane(plan: &Plan, opts: &RestoreOptions) -> Result<(), RestoreError> {
    for (i, pod) in plan.static_pods.iter().enumerate() {
        node::move_manifest(pod, &plan.manifests_dir, &plan.holding_dir)?;
        if i == 0 {
            crash_point_named("stop-control-plane:midway");
        }
    }
    EtcdProbe::new(Some(&plan.client.endpoint), &plan.data_dir).wait_stopped(opts.stop_timeout)
}

fn crash_point_named(name: &str) {
    if std::env::var(CRASH_ENV).is_ok_and(|v| v == name) {
        eprintln!("lifeboat: test crash at {name}");
        std::process::exit(86);
    }
}

fn move_data_dir(plan: &Plan) -> Result<(), RestoreError> {
    if !plan.data_dir_existed {
        return Ok(());
    }
    match (plan.data_dir.exists(), plan.aside_dir.exists()) {
        (true, false) => fsutil::durable_rename(&plan.data_dir, &plan.aside_dir)
            .map_err(|e| RestoreError::node(&plan.data_dir, format!("cannot move it aside: {e}"))),
        (false, true) => Ok(()),
        (true, true) => Err(RestoreError::node(
            &plan.aside_dir,
            "both the data dir and its moved-aside copy exist: inspect them, then `lifeboat restore --rollback`",
        )),
        (false, false) => Err(RestoreError::node(
            &plan.data_dir,
            "the data dir vanished during the restore: inspect the node before going on",
        )),
    }
}

fn restore_data_dir(plan: &Plan) -> Result<(), RestoreError> {
    let in_place = plan.data_dir.join("member").exists();
    let old_is_aside = !plan.data_dir_existed || plan.aside_dir.exists();
    if in_place && old_is_aside && !plan.restoring_dir.exists() {
        return Ok(()); // renamed into place before a crash
    }
    if plan.data_dir.exists() {
        return Err(RestoreError::node(
            &plan.data_dir,
            "the data dir exists although it was moved aside: something else recreated it; stop that and `lifeboat restore --rollback`",
        ));
    }
    remove_partial_restore(plan)?;
    tool::run_restore(&plan.restore_argv)?;
    set_owner_and_mode(&plan.restoring_dir, plan.owner)?;
    fsutil::durable_rename(&plan.restoring_dir, &plan.data_dir).map_err(|e| {
        RestoreError::node(
            &plan.restoring_dir,
            format!("cannot rename into place: {e}"),
        )
    })
}

/// The temp folder of an interrupted restore is ours and incomplete: it goes.
fn remove_partial_restore(plan: &Plan) -> Result<(), RestoreError> {
    if !plan.restoring_dir.exists() {
        return Ok(());
    }
    std::fs::remove_dir_all(&plan.restoring_dir).map_err(|e| {
        RestoreError::node(
            &plan.restoring_dir,
            format!("cannot remove the partial restore: {e}"),
        )
    })
}

fn set_owner_and_mode(dir: &Path, owner: (u32, u32)) -> Result<(), RestoreError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| RestoreError::node(dir, e.to_string()))?;
    let meta = std::fs::metadata(dir).map_err(|e| RestoreError::node(dir, e.to_string()))?;
    if (meta.uid(), meta.gid()) == owner {
        return Ok(());
    }
    chown_tree(dir, owner).map_err(|e| {
        RestoreError::node(
            dir,
            format!("cannot give it to uid {} gid {}: {e}", owner.0, owner.1),
        )
    })
}

fn chown_tree(path: &Path, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), (uid, gid))?;
        }
    }
    Ok(())
}

async fn start_etcd(
    plan: &Plan,
    opts: &RestoreOptions,
    observer: &dyn Observer,
) -> Result<(), RestoreError> {
    if plan.static_pods.iter().any(|p| p == "etcd.yaml") {
        node::move_manifest("etcd.yaml", &plan.holding_dir, &plan.manifests_dir)?;
    }
    if opts.wait {
        wait_healthy(plan, opts, plan.expected_min_revision, observer).await?;
    }
    Ok(())
}

async fn start_control_plane(
    plan: &Plan,
    opts: &RestoreOptions,
    observer: &dyn Observer,
) -> Result<(), RestoreError> {
    for pod in plan.static_pods.iter().filter(|p| *p != "etcd.yaml") {
        node::move_manifest(pod, &plan.holding_dir, &plan.manifests_dir)?;
    }
    let _ = std::fs::remove_dir(&plan.holding_dir);
    let restarted_apiserver = plan.static_pods.iter().any(|p| p == "kube-apiserver.yaml");
    if let (true, true, Some(probe)) = (opts.wait, restarted_apiserver, &plan.apiserver) {
        match probe.wait_ready(opts.apiserver_timeout).await {
            Ok(()) => observer.note("the API server is ready (/readyz answered 200)"),
            Err(why) => observer.note(&format!(
                "the API server is not ready after {}s ({why}): etcd is restored; check `kubectl get --raw /readyz` and the kube-apiserver logs",
                opts.apiserver_timeout.as_secs()
            )),
        }
    }
    Ok(())
}

fn finish(plan: &Plan) -> Result<(), RestoreError> {
    remove_snapshot_copy(plan);
    Ok(())
}

/// The plain copy holds every Secret of the cluster unencrypted: it goes as soon as possible.
fn remove_snapshot_copy(plan: &Plan) {
    let _ = std::fs::remove_file(&plan.snapshot_path);
}

/// Waits until the member answers `Status` at a revision ≥ `min_revision` (and, for a
/// single-member cluster, knows a leader). A member of a multi-member restore cannot get a
/// leader before the others are restored, so only its answering is awaited there.
async fn wait_healthy(
    plan: &Plan,
    opts: &RestoreOptions,
    min_revision: i64,
    observer: &dyn Observer,
) -> Result<(), RestoreError> {
    let settings = client_settings(&plan.client, opts.connect_timeout);
    let deadline = Instant::now() + opts.start_timeout;
    if plan.member_count() > 1 {
        return wait_listening(plan, opts, observer).await;
    }
    loop {
        let last = match probe_status(&settings, &plan.client.endpoint).await {
            Ok(s) if s.revision >= min_revision && s.leader != 0 => {
                observer.note(&format!(
                    "etcd answers: revision {}, member {:x}, cluster {:x}",
                    s.revision, s.member_id, s.cluster_id
                ));
                return Ok(());
            }
            Ok(s) if s.revision < min_revision => format!(
                "it answers at revision {} but the restore should give ≥ {min_revision}: is the old data dir back in place?",
                s.revision
            ),
            Ok(_) => "it answers but has no leader yet".to_string(),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(RestoreError::NotHealthy {
                waited: opts.start_timeout,
                detail: last,
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A member of a multi-member restore serves no client request until a quorum of restored
/// members runs (it cannot publish itself), so only its client port coming up is awaited.
async fn wait_listening(
    plan: &Plan,
    opts: &RestoreOptions,
    observer: &dyn Observer,
) -> Result<(), RestoreError> {
    let addr = node::socket_addr_of_url(&plan.client.endpoint).ok_or_else(|| {
        RestoreError::node(
            &plan.manifests_dir,
            format!("cannot parse the client URL {}", plan.client.endpoint),
        )
    })?;
    let deadline = Instant::now() + opts.start_timeout;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            observer.note(&format!(
                "etcd listens on {addr}; it serves once a quorum of the {} members is restored: restore the other members now",
                plan.member_count()
            ));
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(RestoreError::NotHealthy {
                waited: opts.start_timeout,
                detail: format!("nothing listens on {addr}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn probe_status(
    settings: &EtcdSettings,
    endpoint: &str,
) -> Result<crate::etcd::MemberStatus, String> {
    let mut source = EtcdSource::connect(settings, endpoint)
        .await
        .map_err(|e| e.to_string())?;
    source.status().await.map_err(|e| e.to_string())
}

fn client_settings(client: &LocalClient, connect_timeout: Duration) -> EtcdSettings {
    EtcdSettings {
        endpoints: vec![client.endpoint.clone()],
        cacert: client.cacert.clone(),
        cert: client.cert.clone(),
        key: client.key.clone(),
        user: None,
        password: None,
        connect_timeout,
        request_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_secs(60),
    }
}

async fn local_cluster_id(client: &LocalClient, connect_timeout: Duration) -> Option<String> {
    let settings = client_settings(client, connect_timeout);
    probe_status(&settings, &client.endpoint)
        .await
        .ok()
        .map(|s| format!("{:x}", s.cluster_id))
}

fn local_client(local: &KubeadmEtcd) -> LocalClient {
    let endpoint = local.endpoints.first().cloned().unwrap_or_default();
    let tls = endpoint.starts_with("https://");
    LocalClient {
        endpoint,
        cacert: local.cacert.clone().filter(|_| tls),
        cert: local.cert.clone().filter(|_| tls),
        key: local.key.clone().filter(|_| tls),
    }
}

fn backup_facts(source: &SnapshotSource) -> Result<BackupFacts, RestoreError> {
    match source {
        SnapshotSource::Backup {
            store, manifest, ..
        } => Ok(BackupFacts {
            id: manifest.id.clone(),
            source: store.location(),
            created_at: Some(manifest.created_at),
            revision: manifest.revision,
            member_name: Some(manifest.member_name.clone()).filter(|n| !n.is_empty()),
            cluster_id: Some(manifest.cluster_id.clone()),
            plain_sha256: manifest.plain_sha256.clone(),
            plain_size: manifest.plain_size,
            has_trailer: crate::bbolt::has_sha256_trailer(manifest.plain_size),
            status: manifest.status,
        }),
        SnapshotSource::File(path) => {
            let bad = |source| RestoreError::BadFile {
                path: path.clone(),
                source,
            };
            let info = readback::plain_file_info(path).map_err(bad)?;
            let status = info.status;
            let (sha, size) = sha256_file(path)
                .map_err(|e| RestoreError::node(path, format!("cannot read it: {e}")))?;
            Ok(BackupFacts {
                id: "file".into(),
                source: path.display().to_string(),
                created_at: None,
                revision: info.restored_revision,
                member_name: None,
                cluster_id: None,
                plain_sha256: sha,
                plain_size: size,
                has_trailer: crate::bbolt::has_sha256_trailer(size),
                status,
            })
        }
    }
}

fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

fn member_spec(
    local: &KubeadmEtcd,
    o: &MemberOverrides,
    backup: &BackupFacts,
    warnings: &mut Vec<String>,
) -> Result<MemberSpec, RestoreError> {
    let name = o
        .name
        .clone()
        .or_else(|| local.name.clone())
        .ok_or_else(|| {
            RestoreError::node(
                &local.manifest,
                "the etcd manifest has no --name: pass --name",
            )
        })?;
    let peer_urls = o
        .initial_advertise_peer_urls
        .clone()
        .or_else(|| local.initial_advertise_peer_urls.clone())
        .ok_or_else(|| {
            RestoreError::node(
                &local.manifest,
                "the etcd manifest has no --initial-advertise-peer-urls: pass --initial-advertise-peer-urls",
            )
        })?;
    let initial_cluster = match &o.initial_cluster {
        Some(c) => {
            if !c
                .split(',')
                .any(|m| m.split_once('=').is_some_and(|(n, _)| n == name))
            {
                return Err(RestoreError::refused(format!(
                    "--initial-cluster {c} does not name this member ({name}): list every member as name=peer-url"
                )));
            }
            c.clone()
        }
        None => {
            let manifest_members = local
                .flags
                .get("initial-cluster")
                .map_or(1, |c| c.split(',').count());
            if manifest_members > 1
                || local.flags.get("initial-cluster-state").map(String::as_str) == Some("existing")
            {
                warnings.push(format!(
                    "this node's etcd was part of a multi-member cluster: restoring it alone makes a new single-member cluster; for an HA restore pass the same --initial-cluster and --initial-cluster-token on every control-plane node ({})",
                    "docs/restore.md"
                ));
            }
            format!("{name}={peer_urls}")
        }
    };
    // Same default on every node restoring the same backup, and different from the old
    // cluster's, so a restored member can never rejoin a member of the old cluster.
    let token = o.initial_cluster_token.clone().unwrap_or_else(|| {
        format!(
            "lifeboat-{}",
            &backup.plain_sha256[..16.min(backup.plain_sha256.len())]
        )
    });
    Ok(MemberSpec {
        name,
        initial_advertise_peer_urls: peer_urls,
        initial_cluster,
        initial_cluster_token: token,
    })
}

fn check_disk(state_dir: &Path, data_dir: &Path, plain_size: u64) -> Result<(), RestoreError> {
    use std::os::unix::fs::MetadataExt;
    let existing = |p: &Path| -> PathBuf {
        let mut cur = p.to_path_buf();
        while !cur.exists() {
            match cur.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => cur = parent.to_path_buf(),
                _ => return PathBuf::from("."),
            }
        }
        cur
    };
    let state = existing(state_dir);
    let data_parent = existing(&fsutil::parent_of(data_dir));
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let restore_needs = plain_size + WAL_PREALLOCATION + plain_size / 10;
    let copy_needs = plain_size + (1 << 20);
    let mut needs = vec![(data_parent.clone(), restore_needs)];
    if dev(&state) == dev(&data_parent) {
        needs[0].1 += copy_needs;
    } else {
        needs.push((state, copy_needs));
    }
    for (dir, needed) in needs {
        let free = fsutil::free_bytes(&dir)
            .map_err(|e| RestoreError::node(&dir, format!("cannot stat it: {e}")))?;
        if free < needed {
            return Err(RestoreError::refused(format!(
                "not enough disk on {}: {} MiB free, the restore needs {} MiB (snapshot copy, restored data dir and WAL); free space or use --state-dir on another disk",
                dir.display(),
                free >> 20,
                needed.div_ceil(1 << 20)
            )));
        }
    }
    Ok(())
}

fn owner_of(data_dir: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(data_dir)
        .or_else(|_| std::fs::metadata(fsutil::parent_of(data_dir)))
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or((0, 0))
}

/// `/var/lib/etcd` + `x` → `/var/lib/etcd.x` (beside it: same filesystem, atomic renames).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// What to run on the other control-plane nodes after this one.
pub fn next_steps(plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    if plan.member_count() > 1 {
        let id = if plan.backup.id == "file" {
            "FILE".to_string()
        } else {
            plan.backup.id.clone()
        };
        out.push(format!(
            "On every other control-plane node, restore the same backup with the same cluster and token (each node's own name and peer URL come from its etcd.yaml):\n  lifeboat restore {id} --identity KEYFILE --initial-cluster '{}' --initial-cluster-token '{}' --yes --force",
            plan.member.initial_cluster, plan.member.initial_cluster_token
        ));
        out.push("Once all are restored: etcdctl member list and endpoint health --cluster show every member started and healthy.".into());
    } else {
        out.push("This node now runs a single-member etcd. Any other control-plane node still has the old cluster's data: `kubeadm reset` it and join it again (`kubeadm join --control-plane`), one at a time.".into());
    }
    if plan.bump_revision.is_none() {
        out.push("The revision was not bumped: restart kube-controller-manager, kube-scheduler and controllers that watch the API so their caches relist.".into());
    }
    out.push(format!(
        "The old data dir is kept at {}: remove it once the cluster is confirmed good.",
        plan.aside_dir.display()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_stay_in_the_same_folder() {
        assert_eq!(
            sibling(Path::new("/var/lib/etcd"), "lifeboat-1"),
            PathBuf::from("/var/lib/etcd.lifeboat-1")
        );
        assert_eq!(
            sibling(Path::new("/etc/kubernetes/manifests"), "lifeboat-held-1"),
            PathBuf::from("/etc/kubernetes/manifests.lifeboat-held-1")
        );
    }
}
