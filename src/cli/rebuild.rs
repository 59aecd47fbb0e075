//! `lifeboat rebuild`: a control-plane node on a fresh machine from the store alone — the
//! node's kit (verified before any file is written) installed where its files were, then the
//! normal restore of etcd (a backup or a point in time, one node or `--cluster`); the kubelet
//! starts the static pods from the manifests the kit put back.

use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use lifeboat::catalog::{Catalog, Manifest};
use lifeboat::config::{resolve_node, resolve_read_policy, state_dir, FileConfig};
use lifeboat::kit::install::{self, Action, Step};
use lifeboat::kit::{KitError, KitManifest};
use lifeboat::pitr::Target;
use lifeboat::stages::encrypt::Identities;
use lifeboat::store::Store;

use super::args::{Output, RebuildArgs, RestoreArgs};

pub async fn run(a: RebuildArgs, file: FileConfig) -> Result<()> {
    let config = file.clone().overlay(a.flags());
    let dirs = resolve_node(&config.node, None);
    let identities = Arc::new(Identities::from_file(&a.identity)?);
    let target = super::pitr::target(&a.point)?;
    let (store, backup) = backup_for(&a, target.as_ref(), &identities, &config).await?;
    let policy = resolve_read_policy(&config.trust)?;
    let at = match target {
        Some(Target::Time(t)) => t,
        _ => backup.created_at,
    };
    let kit_id = kit_for(&store, &policy, &backup, a.node.as_deref(), at).await?;
    let (kit, files) = lifeboat::kit::load(&store, &policy, &identities, &kit_id).await?;
    if kit.cluster_id != backup.cluster_id {
        anyhow::bail!(
            "kit {} is of cluster {}, backup {} of cluster {}: give --node of this cluster, or another backup",
            kit.id,
            kit.cluster_id,
            backup.id,
            backup.cluster_id
        );
    }
    let stamp = Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
    let mut steps = install::plan(&files, &kit.moves(&dirs), a.force, &stamp)?;
    let manifests_dir = config
        .restore
        .manifests_dir
        .clone()
        .unwrap_or_else(|| dirs.kubernetes_dir.join("manifests"));
    let etcd_yaml = manifests_dir.join("etcd.yaml");
    // The kubelet starts a manifest the moment it appears: an etcd started from the kit's
    // before the restore would run on an empty data dir. Unless the node's own etcd.yaml is in
    // place already, the manifests wait beside the kubelet's folder; the restore puts them in.
    let etcd_in_place = steps
        .iter()
        .any(|s| s.to == etcd_yaml && s.action == Action::Same);
    let held_dir = lifeboat::fsutil::parent_of(&manifests_dir).join(format!(
        "{}.lifeboat-held-rebuild-{stamp}",
        manifests_dir
            .file_name()
            .map_or("manifests".into(), |n| n.to_string_lossy())
    ));
    let held = (!etcd_in_place && install::hold_manifests(&mut steps, &manifests_dir, &held_dir))
        .then_some(held_dir);
    if !steps.iter().any(|s| s.to == etcd_yaml) {
        anyhow::bail!(
            "kit {} puts no etcd.yaml in {}: give the node's folders as they were (--kubernetes-dir; `lifeboat kit show {}` lists its files)",
            kit.id,
            manifests_dir.display(),
            &kit.id[..12]
        );
    }
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "backup": backup.id, "kit": kit.id, "node": kit.node, "files": steps,
                "carried_out": a.yes && !a.dry_run,
            })
        ),
        Output::Table => print_plan(&backup, target.as_ref(), &kit, &steps),
    }
    if !super::restore::carry_out(a.dry_run, a.yes)? {
        return Ok(());
    }
    record(&state_dir(&config.restore), &stamp, &kit, &steps)?;
    install::install(&steps, &files)?;
    eprintln!(
        "kit {}: {} files in place ({} already were)",
        &kit.id[..12],
        steps.len(),
        steps.iter().filter(|s| s.action == Action::Same).count()
    );
    let restore = restore_args(a, &backup, target.is_some(), manifests_dir);
    super::restore::run_held(restore, file, held)
        .await
        .context("the node's files are in place; the restore of etcd stopped (`lifeboat restore --resume` or `--rollback` continues from its journal)")
}

/// The backup whose data is restored: the one named, or for a point in time the newest
/// writer-signed backup at or before it (the kit in force then).
async fn backup_for(
    a: &RebuildArgs,
    target: Option<&Target>,
    identities: &Arc<Identities>,
    config: &FileConfig,
) -> Result<(Arc<dyn Store>, Manifest)> {
    let Some(target) = target else {
        let selector = a.backup.as_deref().unwrap_or("latest");
        return super::snapshot::find(selector, &a.pick, Some(identities), config).await;
    };
    let store = super::snapshot::open_store(config).await?;
    let cluster = super::snapshot::cluster_flag(a.pick.cluster_id.as_deref())?;
    let catalog = Catalog::new(store.clone(), resolve_read_policy(&config.trust)?);
    let mut backups: Vec<Manifest> = catalog
        .writer_signed()
        .await?
        .into_iter()
        .filter(|m| cluster.is_none_or(|c| format!("{c:x}") == m.cluster_id))
        .filter(|m| m.kit.is_some())
        .filter(|m| match target {
            Target::Revision(r) => m.revision <= *r,
            Target::Time(t) => m.created_at <= *t,
        })
        .collect();
    backups.sort_by_key(|m| std::cmp::Reverse(m.created_at));
    let clusters: std::collections::BTreeSet<&str> =
        backups.iter().map(|m| m.cluster_id.as_str()).collect();
    if clusters.len() > 1 {
        anyhow::bail!(
            "backups of several clusters ({}) are in {}: give --cluster-id",
            clusters.into_iter().collect::<Vec<_>>().join(", "),
            store.location()
        );
    }
    let m = backups.into_iter().next().ok_or_else(|| {
        anyhow::anyhow!(
            "no backup with a control-plane kit at or before {target} in {}: `lifeboat snapshot list` shows the KIT of each",
            store.location()
        )
    })?;
    Ok((store, m))
}

/// The kit to install: the one the backup names, or with `--node` the newest kit of that node
/// of the backup's cluster stored at or before `at` (else the earliest after it).
async fn kit_for(
    store: &Arc<dyn Store>,
    policy: &lifeboat::trust::ReadPolicy,
    backup: &Manifest,
    node: Option<&str>,
    at: DateTime<Utc>,
) -> Result<String> {
    let Some(node) = node else {
        return backup.kit.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "backup {} has no control-plane kit (taken off a kubeadm node, or before kits): give --node NAME, or a backup whose KIT `lifeboat snapshot list` shows",
                backup.id
            )
        });
    };
    let kits: Vec<KitManifest> = lifeboat::kit::list(store, policy)
        .await?
        .into_iter()
        .filter(|k| k.node == node && k.cluster_id == backup.cluster_id)
        .collect();
    let before = kits
        .iter()
        .filter(|k| k.created_at <= at)
        .max_by_key(|k| k.created_at);
    // A node whose kit was first stored after the point (its `serve` started later): the
    // earliest after it is the nearest record of its files.
    let after = || {
        kits.iter()
            .filter(|k| k.created_at > at)
            .min_by_key(|k| k.created_at)
    };
    match before.or_else(after) {
        Some(k) => {
            if k.created_at > at {
                eprintln!(
                    "note: node {node} has no kit stored at or before {}; using the earliest after it ({})",
                    at.to_rfc3339(),
                    k.created_at.to_rfc3339()
                );
            }
            Ok(k.id.clone())
        }
        None => Err(KitError::NotFound {
            id: format!("of node {node} in cluster {}", backup.cluster_id),
            location: store.location(),
        }
        .into()),
    }
}

fn print_plan(backup: &Manifest, target: Option<&Target>, kit: &KitManifest, steps: &[Step]) {
    println!("Rebuild plan (nothing has changed yet)");
    println!(
        "  kit      {} of node {} ({} files, stored {})",
        kit.id,
        kit.node,
        kit.files.len(),
        kit.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    for v in [
        ("etcd", &kit.versions.etcd_image),
        ("kubeadm", &kit.versions.kubeadm),
        ("kubelet", &kit.versions.kubelet),
    ] {
        if let (name, Some(version)) = v {
            println!("  {name:<8} {version} (install it before the kubelet starts the pods)");
        }
    }
    for s in steps {
        let mut what = match &s.action {
            Action::Write => "write".to_string(),
            Action::Same => "in place".to_string(),
            Action::MoveAside { aside } => format!("move aside to {}, write", aside.display()),
        };
        if let Some(held) = &s.held {
            what.push_str(&format!(
                " into {}; the restore puts it in place",
                lifeboat::fsutil::parent_of(held).display()
            ));
        }
        println!(
            "  {:04o} {:>5}:{:<5} {:>8}  {}  ({what})",
            s.file.mode,
            s.file.uid,
            s.file.gid,
            s.file.size,
            s.to.display()
        );
    }
    match target {
        Some(t) => println!(
            "  then     restore etcd to {t} (replayed from backup {} and the journal)",
            backup.id
        ),
        None => println!(
            "  then     restore etcd from backup {} (revision {})",
            backup.id, backup.revision
        ),
    }
}

/// What is about to change, before it does: the kit and every file with its action (where a
/// file in the way goes), in the state dir.
fn record(
    state_dir: &std::path::Path,
    stamp: &str,
    kit: &KitManifest,
    steps: &[Step],
) -> Result<()> {
    let dir = state_dir.join("rebuild");
    lifeboat::fsutil::create_private_dir(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("rebuild-{stamp}.json"));
    let text = serde_json::to_vec_pretty(&serde_json::json!({ "kit": kit.id, "files": steps }))?;
    lifeboat::fsutil::write_atomic(&path, &text)
        .with_context(|| format!("writing {}", path.display()))
}

/// The restore that follows, on the exact backup chosen (not `latest` again: a backup taken
/// meanwhile must not change what is restored under the kit).
fn restore_args(
    a: RebuildArgs,
    backup: &Manifest,
    point: bool,
    manifests_dir: std::path::PathBuf,
) -> RestoreArgs {
    RestoreArgs {
        backup: (!point).then(|| backup.id.clone()),
        point: a.point,
        etcd: a.etcd,
        dest: a.dest,
        identity: Some(a.identity),
        pick: super::args::PickArgs {
            cluster_id: Some(backup.cluster_id.clone()),
            ..a.pick
        },
        restore: lifeboat::config::RestoreSection {
            manifests_dir: Some(manifests_dir),
            ..a.restore
        },
        name: None,
        initial_advertise_peer_urls: None,
        initial_cluster: None,
        initial_cluster_token: None,
        cluster: a.cluster,
        meet: a.meet,
        no_wait: a.no_wait,
        force: a.force,
        yes: true,
        dry_run: false,
        resume: false,
        rollback: false,
        detach: false,
        output: a.output,
    }
}
