//! `lifeboat restore --cluster`: meet the other nodes through the store, then the normal
//! journaled restore with the member list and token every node computed alike, then wait until
//! the whole cluster answers and hashes alike.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use lifeboat::config::{resolve_read_policy, resolve_signer, FileConfig};
use lifeboat::continuous::Journal;
use lifeboat::etcd::discovery;
use lifeboat::pitr::{self, Target};
use lifeboat::restore::cluster::{wait_agreement, Meeting, Node, NodeState, Rendezvous, Wanted};
use lifeboat::restore::{self, ClusterRun, Plan, RestoreError, RestoreOptions, SnapshotSource};
use lifeboat::stages::encrypt::Identities;

use super::args::{MeetArgs, Output, RestoreArgs};
use super::{progress, snapshot};

/// The whole flow on this node.
pub(super) async fn restore(
    a: &RestoreArgs,
    config: &FileConfig,
    mut opts: RestoreOptions,
) -> Result<()> {
    let me = this_node(&opts)?;
    let identities = snapshot::load_identities(a.identity.as_ref())?;
    let wanted = wanted(a, config, identities.as_ref()).await?;
    if a.dry_run || !a.yes {
        eprintln!(
            "cluster restore of {} (cluster {}) as member {} ({}): with --yes this node joins the open cluster restore plan (or opens one for {} members), waits until every member has joined, then restores",
            wanted.describe(),
            wanted.cluster_id,
            me.name,
            me.peer_url,
            a.meet
                .members
                .or(wanted.voting_members.as_ref().map(Vec::len))
                .map_or("--members N".to_string(), |n| n.to_string())
        );
        if a.dry_run {
            eprintln!("dry run: nothing changed");
            return Ok(());
        }
        return Err(RestoreError::refused(
            "nothing changed: add --yes to join the cluster restore",
        )
        .into());
    }
    // Every node meets in the one store named: no node turns to a copy on its own.
    let store = snapshot::open_primary(config).await?;
    let meeting = meeting(&a.meet, config, store.clone())?;
    let rv = meeting
        .meet(&wanted, &me)
        .await
        .context("cluster restore: meeting the other nodes")?;
    eprintln!(
        "cluster restore {}: every member joined ({}); restoring {}",
        rv.plan.run_id,
        rv.initial_cluster(),
        match rv.plan.target_revision {
            Some(r) => format!("revision {r} of the journal"),
            None => format!("backup {}", rv.plan.backup_id),
        }
    );
    // Every node restores what the plan says: `latest` and times were resolved once, by the
    // node that opened it.
    let source = match rv.plan.target_revision {
        Some(rev) => {
            super::restore::point_in_time(Target::Revision(rev), a, config, &opts.state_dir).await?
        }
        None => {
            let (store, m) =
                snapshot::find(&rv.plan.backup_id, &a.pick, identities.as_ref(), config).await?;
            SnapshotSource::Backup {
                store,
                manifest: Box::new(m),
                identities,
            }
        }
    };
    opts.member.initial_cluster = Some(rv.initial_cluster());
    opts.member.initial_cluster_token = Some(rv.plan.token.clone());
    let mut plan = restore::plan(&source, &opts).await?;
    plan.cluster = Some(ClusterRun {
        plan: rv.plan.clone(),
        joined: rv.joined.clone(),
        node: me.name.clone(),
        peer_url: me.peer_url.clone(),
    });
    // The plan, as any restore prints it (--yes was given for the whole cluster restore).
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({ "plan": plan, "carried_out": true })
        ),
        Output::Table => super::restore::print_plan(&plan),
    }
    let journal = restore::execute(plan, &source, &opts, progress::for_terminal())
        .await
        .context("restore stopped")?;
    finish(&journal.plan, &meeting, &opts, a.output).await
}

/// The backup (`latest` or named) or the journal revision (`--to-revision`, `--to-time`
/// resolved here) this node asks for.
async fn wanted(
    a: &RestoreArgs,
    config: &FileConfig,
    identities: Option<&Arc<Identities>>,
) -> Result<Wanted> {
    let Some(target) = super::pitr::target(&a.point)? else {
        let selector = a.backup.clone().unwrap_or_default();
        let (_, manifest) = snapshot::find(&selector, &a.pick, identities, config).await?;
        return Ok(Wanted::backup(&manifest, selector == "latest"));
    };
    let store = snapshot::open_store(config).await?;
    let journal = Journal::new(store, resolve_read_policy(&config.trust)?);
    let cluster = snapshot::cluster_flag(a.pick.cluster_id.as_deref())?;
    let ids = identities.map(Arc::as_ref);
    let rev = match target {
        Target::Revision(r) => r,
        Target::Time(at) => journal.resolve_time(ids, cluster, at).await?,
    };
    let plan = pitr::plan(&journal, ids, cluster, rev).await?;
    Ok(Wanted {
        cluster_id: plan.cluster_id.clone(),
        backup_id: plan.base.id.clone(),
        target_revision: Some(rev),
        voting_members: plan.base.voting_members.clone(),
        any_backup: true,
    })
}

/// After `--resume` of a node whose restore was part of a cluster run (`restore` or
/// `recover --cluster`): the rest of the run, as if it had not stopped.
pub(super) async fn finish_resumed(
    plan: &Plan,
    config: &FileConfig,
    opts: &RestoreOptions,
    output: Output,
) -> Result<()> {
    if plan.cluster.is_none() {
        return Ok(());
    }
    let store = snapshot::open_primary(config).await?;
    // Everyone joined long ago: only the store and the keys matter now.
    let meeting = meeting(
        &MeetArgs {
            members: None,
            join_timeout: "10m".into(),
        },
        config,
        store,
    )?;
    finish(plan, &meeting, opts, output).await
}

/// Where the nodes meet: the store, its trust, `--members` and `--join-timeout`.
pub(super) fn meeting(
    meet: &MeetArgs,
    config: &FileConfig,
    store: Arc<dyn lifeboat::store::Store>,
) -> Result<Meeting> {
    Ok(Meeting {
        store,
        policy: resolve_read_policy(&config.trust)?,
        signer: resolve_signer(&config.trust)?,
        members: meet.members,
        join_timeout: lifeboat::config::duration(
            "--join-timeout",
            Some(&meet.join_timeout),
            Duration::from_secs(600),
        )?,
        poll: Duration::from_millis(200),
    })
}

pub(super) fn this_node(opts: &RestoreOptions) -> Result<Node> {
    let manifest = opts.manifest("etcd.yaml");
    let local = discovery::discover(&manifest)?.ok_or_else(|| {
        RestoreError::refused(format!(
            "{} does not exist: --cluster needs each node's own etcd.yaml (pass --manifests-dir)",
            manifest.display()
        ))
    })?;
    Node::of(&local).ok_or_else(|| {
        RestoreError::refused(format!(
            "{} names no --name or --initial-advertise-peer-urls",
            manifest.display()
        ))
        .into()
    })
}

/// Records this node restored, waits until every member answers and hashes alike, records it
/// complete (and the plan, when it is the last), and prints the cluster.
pub(super) async fn finish(
    plan: &Plan,
    meeting: &Meeting,
    opts: &RestoreOptions,
    output: Output,
) -> Result<()> {
    let Some(run) = &plan.cluster else {
        return Ok(());
    };
    let me = Node {
        name: run.node.clone(),
        peer_url: run.peer_url.clone(),
    };
    let rv = Rendezvous {
        plan: run.plan.clone(),
        joined: run.joined.clone(),
    };
    meeting
        .progress(&rv.plan, &me, NodeState::Restored, None)
        .await?;
    let through = restore::node::client_settings(&plan.client, Duration::from_secs(3));
    eprintln!(
        "waiting until all {} members answer and hash alike",
        rv.plan.members
    );
    let agreed = wait_agreement(&through, opts.start_timeout).await?;
    meeting
        .progress(&rv.plan, &me, NodeState::Complete, Some(&agreed))
        .await?;
    let complete = meeting.complete_if_all(&rv).await?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "run_id": rv.plan.run_id,
                "backup": rv.plan.backup_id,
                "members": agreed.answers.iter().map(|a| serde_json::json!({
                    "name": a.member.name, "id": format!("{:x}", a.member.id), "version": a.status.version
                })).collect::<Vec<_>>(),
                "revision": agreed.revision,
                "hash": agreed.hash,
                "complete": complete,
                "old_data_dir": plan.aside_dir,
            })
        ),
        Output::Table => {
            println!(
                "cluster restore {} of backup {}: {} members answer",
                rv.plan.run_id,
                rv.plan.backup_id,
                agreed.answers.len()
            );
            for a in &agreed.answers {
                println!(
                    "  {:<16} {:x}  etcd {}",
                    a.member.name, a.member.id, a.status.version
                );
            }
            println!(
                "every member hashes to {} at revision {}",
                agreed.hash, agreed.revision
            );
            if plan.data_dir_existed {
                println!("old data of this node: {}", plan.aside_dir.display());
            }
            if complete {
                println!("the cluster restore plan is complete");
            }
        }
    }
    Ok(())
}
