//! One function per restore step. Each is idempotent: run again after a crash anywhere inside
//! it, it finishes the job or refuses with what to inspect.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::node::{client_settings, probe_status};
use super::plan::{BackupFacts, Plan, RestoreOptions, SnapshotSource};
use super::{crash, node, tool, EtcdProbe, RestoreError, Step};
use crate::fsutil;
use crate::progress::Observer;
use crate::readback;

/// What a step does, for the log and the terminal.
pub(super) fn describe(step: Step, plan: &Plan) -> String {
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

pub(super) async fn fetch(
    plan: &Plan,
    source: Option<&SnapshotSource>,
    progress: Arc<dyn Observer>,
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

pub(super) fn copy_checked(
    from: &Path,
    to: &Path,
    facts: &BackupFacts,
) -> Result<(), RestoreError> {
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

/// Before etcd's tool reads a snapshot fetched by an earlier run: it is still what the plan
/// fetched (etcd's trailer, the bbolt walk, the status), since it has sat on disk meanwhile.
pub(super) fn recheck_staged(plan: &Plan) -> Result<(), RestoreError> {
    let path = &plan.snapshot_path;
    if restored_in_place(plan) {
        return Ok(()); // etcd's tool ran before the crash; nothing will read the file
    }
    let status = readback::plain_file_info(path)
        .map_err(|source| RestoreError::BadFile {
            path: path.clone(),
            source,
        })?
        .status;
    if status != plan.backup.status {
        return Err(RestoreError::node(
            path,
            "the fetched snapshot changed since it was fetched: `lifeboat restore --rollback`, then restore again",
        ));
    }
    Ok(())
}

pub(super) fn stop_control_plane(plan: &Plan, opts: &RestoreOptions) -> Result<(), RestoreError> {
    for (i, pod) in plan.static_pods.iter().enumerate() {
        node::move_manifest(pod, &plan.manifests_dir, &plan.holding_dir)?;
        if i == 0 {
            crash::point("stop-control-plane:midway");
        }
    }
    EtcdProbe::new(Some(&plan.client.endpoint), &plan.data_dir).wait_stopped(opts.stop_timeout)
}

pub(super) fn move_data_dir(plan: &Plan) -> Result<(), RestoreError> {
    if !plan.data_dir_existed {
        // Made after the plan: on a fresh machine (`rebuild`) the kubelet starts etcd from the
        // manifest just written, on an empty data dir, before the restore stops it. Left in
        // place, it would pass for the restored one; it goes aside like any old data dir.
        if plan.data_dir.exists() && !plan.aside_dir.exists() {
            tracing::warn!(data_dir = %plan.data_dir.display(), aside = %plan.aside_dir.display(), "the data dir appeared after the plan was made (an etcd started from the manifest?): moved aside");
            return fsutil::durable_rename(&plan.data_dir, &plan.aside_dir).map_err(|e| {
                RestoreError::node(&plan.data_dir, format!("cannot move it aside: {e}"))
            });
        }
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

/// The restored data dir was renamed into place (by a run that then crashed).
fn restored_in_place(plan: &Plan) -> bool {
    let in_place = plan.data_dir.join("member").exists();
    let old_is_aside = !plan.data_dir_existed || plan.aside_dir.exists();
    in_place && old_is_aside && !plan.restoring_dir.exists()
}

pub(super) fn restore_data_dir(plan: &Plan) -> Result<(), RestoreError> {
    if restored_in_place(plan) {
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
pub(super) fn remove_partial_restore(plan: &Plan) -> Result<(), RestoreError> {
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

pub(super) async fn start_etcd(
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

pub(super) async fn start_control_plane(
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

pub(super) fn finish(plan: &Plan) -> Result<(), RestoreError> {
    remove_snapshot_copy(plan);
    Ok(())
}

/// The plain copy holds every Secret of the cluster unencrypted: it goes as soon as possible.
pub(super) fn remove_snapshot_copy(plan: &Plan) {
    let _ = std::fs::remove_file(&plan.snapshot_path);
}

/// Waits until the member answers `Status` at a revision ≥ `min_revision` (and, for a
/// single-member cluster, knows a leader). A member of a multi-member restore cannot get a
/// leader before the others are restored, so only its answering is awaited there.
pub(super) async fn wait_healthy(
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
            Err(e) => e.to_string(),
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
    let addr = wait_port(plan, opts).await?;
    observer.note(&format!(
        "etcd listens on {addr}; it serves once a quorum of the {} members is restored: restore the other members now",
        plan.member_count()
    ));
    Ok(())
}

/// Waits until etcd's client port accepts connections (it may not serve: no quorum).
pub(super) async fn wait_port(
    plan: &Plan,
    opts: &RestoreOptions,
) -> Result<std::net::SocketAddr, RestoreError> {
    let addr = node::socket_addr_of_url(&plan.client.endpoint).ok_or_else(|| {
        RestoreError::node(
            &plan.manifests_dir,
            format!("cannot parse the client URL {}", plan.client.endpoint),
        )
    })?;
    let deadline = Instant::now() + opts.start_timeout;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(addr);
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
