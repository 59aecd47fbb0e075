//! `lifeboat upgrade`.

use anyhow::Result;
use lifeboat::catalog::Reason;
use lifeboat::config::{
    resolve_backup, resolve_etcd, resolve_read_policy, resolve_store, resolve_upgrade, state_dir,
    ConfigError, FileConfig,
};
use lifeboat::upgrade::tools::Tools;
use lifeboat::upgrade::version::KubeVersion;
use lifeboat::upgrade::{self, GateInputs, Mode, Report, Role, UpgradeOptions};

use super::args::{Output, RoleArg, UpgradeArgs};

pub async fn run(a: UpgradeArgs, file: FileConfig) -> Result<()> {
    let config = &file.overlay(a.flags());
    let resolved = resolve_upgrade(&config.upgrade, &config.node)?;
    let state_dir = state_dir(&config.restore);
    let to = match (&a.to, upgrade::load_journal(&state_dir)?) {
        (Some(t), _) => KubeVersion::parse(t).ok_or_else(|| ConfigError::Invalid {
            key: "--to",
            message: format!("`{t}` is not a version like v1.31.2"),
        })?,
        (None, Some(j)) => j.to,
        (None, None) => KubeVersion {
            major: 0,
            minor: 0,
            patch: 0,
        },
    };
    let opts = UpgradeOptions {
        to,
        role: match a.role {
            RoleArg::Auto => None,
            RoleArg::FirstControlPlane => Some(Role::FirstControlPlane),
            RoleArg::ControlPlane => Some(Role::ControlPlane),
            RoleArg::Worker => Some(Role::Worker),
        },
        node: a
            .node
            .clone()
            .unwrap_or_else(|| lifeboat::service::hostname().to_lowercase()),
        kubernetes_dir: resolved.kubernetes_dir.clone(),
        state_dir,
        max_snapshot_age: resolved.max_snapshot_age,
        allow_local_backup: a.allow_local_backup,
        drain_timeout: resolved.drain_timeout,
        ready_timeout: resolved.ready_timeout,
        etcd_ready_timeout: resolved.etcd_ready_timeout,
        command_timeout: resolved.command_timeout,
        keep_kubeadm_backups: resolved.keep_kubeadm_backups,
    };
    if a.clean_kubeadm_backups {
        return clean(&opts, a.dry_run || !a.yes);
    }
    let tools = Tools::find(&resolved.tools)?;
    let gate = gate_inputs(&a, config, &opts.kubernetes_dir, &tools).await?;
    let mode = if a.dry_run {
        Mode::DryRun
    } else if a.yes || a.resume {
        Mode::Execute
    } else {
        Mode::PlanOnly
    };
    let mut report = Report::default();
    let printer = super::progress::Printer::new(a.output == Output::Json);
    let result = upgrade::upgrade(
        &opts,
        &tools,
        gate.as_ref(),
        mode,
        a.resume,
        printer.as_ref(),
        &mut report,
    )
    .await;
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => summary(&report),
    }
    Ok(result?)
}

/// The gate's inputs on a node that may be a control plane (etcd manifest present or a
/// control-plane role asked for); workers need none.
async fn gate_inputs(
    a: &UpgradeArgs,
    config: &FileConfig,
    kubernetes_dir: &std::path::Path,
    tools: &Tools,
) -> Result<Option<GateInputs>> {
    let etcd_manifest = kubernetes_dir.join("manifests/etcd.yaml");
    let may_be_control_plane = a.role != RoleArg::Worker
        && (a.role != RoleArg::Auto
            || kubernetes_dir
                .join("manifests/kube-apiserver.yaml")
                .exists());
    if !may_be_control_plane {
        return Ok(None);
    }
    let mut etcd_section = config.etcd.clone();
    etcd_section.manifest = etcd_section.manifest.or(Some(etcd_manifest));
    let etcd = resolve_etcd(&etcd_section)?;
    let spec = resolve_store(&config.backup, &config.s3)?;
    let store_is_local = spec.is_local();
    let store = lifeboat::store::open(&spec).await?;
    let mut backup = resolve_backup(&config.backup, &config.trust, Reason::PreUpgrade)?;
    backup.kit = lifeboat::config::resolve_kit(&config.node, &etcd).map(|mut k| {
        // The ClusterConfiguration through the upgrade's own kubectl and kubeconfig.
        k.cluster_configuration = Some(tools.cluster_configuration());
        k
    });
    Ok(Some(GateInputs {
        etcd: etcd.settings,
        store,
        store_is_local,
        backup,
        read_policy: resolve_read_policy(&config.trust)?,
    }))
}

fn clean(opts: &UpgradeOptions, dry_run: bool) -> Result<()> {
    let stale = upgrade::clean_kubeadm_backups(opts, dry_run)?;
    for p in &stale {
        println!(
            "{} {}",
            if dry_run { "would remove" } else { "removed" },
            p.display()
        );
    }
    if stale.is_empty() {
        println!(
            "nothing to remove: at most {} kubeadm backup folders of each kind",
            opts.keep_kubeadm_backups
        );
    } else if dry_run {
        println!("nothing removed: add --yes");
    }
    Ok(())
}

fn summary(r: &Report) {
    if !r.plan.is_empty() && r.steps.is_empty() {
        println!(
            "Upgrade plan for {} ({}) to {}:",
            r.node,
            r.role.map_or("unknown role", Role::name),
            r.to.map_or(String::new(), |v| v.to_string())
        );
        for (i, line) in r.plan.iter().enumerate() {
            println!("  {} {line}", i + 1);
        }
    }
    for s in &r.steps {
        println!(
            "{:<24} {:>8.1}s  {}",
            s.step.name(),
            s.duration_ms as f64 / 1000.0,
            s.status
        );
    }
    if let Some(g) = &r.gate {
        println!(
            "pre-upgrade backup {} ({}), control-plane kit {} in {}",
            g.backup_id,
            if g.reused {
                "recent, verified"
            } else {
                "taken now"
            },
            g.kit.as_deref().unwrap_or("NONE"),
            g.store
        );
        for f in &g.membership_findings {
            println!("WARNING: {f} — fix it before any upgrade to etcd 3.6");
        }
    }
    if !r.result.is_empty() {
        println!("result: {}", r.result);
    }
    for line in &r.recovery {
        println!("recovery: {line}");
    }
    for line in &r.notes {
        println!("note: {line}");
    }
}
