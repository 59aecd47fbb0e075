//! `lifeboat upgrade`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use lifeboat::catalog::Reason;
use lifeboat::config::{
    resolve_backup, resolve_duration, resolve_etcd, resolve_store, FileConfig, StoreSpec,
    DEFAULT_STATE_DIR,
};
use lifeboat::upgrade::tools::{ToolPaths, Tools};
use lifeboat::upgrade::version::KubeVersion;
use lifeboat::upgrade::{
    self, Check, GateInputs, Mode, Observer, Report, Role, Severity, Step, UpgradeOptions,
};

use super::args::{Output, RoleArg, UpgradeArgs};
use super::snapshot::{backup_overrides, etcd_overrides, s3_overrides};

pub async fn run(a: UpgradeArgs, config: &FileConfig) -> Result<()> {
    let u = &config.upgrade;
    let kubernetes_dir = a
        .kubernetes_dir
        .clone()
        .or_else(|| u.kubernetes_dir.clone())
        .unwrap_or_else(|| PathBuf::from("/etc/kubernetes"));
    let state_dir = a
        .state_dir
        .clone()
        .or_else(|| config.restore.state_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let to = match (&a.to, upgrade::load_journal(&state_dir)?) {
        (Some(t), _) => {
            KubeVersion::parse(t).ok_or_else(|| lifeboat::config::ConfigError::Invalid {
                key: "--to",
                message: format!("`{t}` is not a version like v1.31.2"),
            })?
        }
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
        kubernetes_dir: kubernetes_dir.clone(),
        state_dir,
        max_snapshot_age: resolve_duration(
            "upgrade.max_snapshot_age",
            a.max_snapshot_age.as_ref().or(u.max_snapshot_age.as_ref()),
            Duration::from_secs(15 * 60),
        )?,
        allow_local_backup: a.allow_local_backup,
        drain_timeout: resolve_duration(
            "upgrade.drain_timeout",
            u.drain_timeout.as_ref(),
            Duration::from_secs(600),
        )?,
        ready_timeout: resolve_duration(
            "upgrade.ready_timeout",
            u.ready_timeout.as_ref(),
            Duration::from_secs(600),
        )?,
        command_timeout: resolve_duration(
            "upgrade.command_timeout",
            u.command_timeout.as_ref(),
            Duration::from_secs(1800),
        )?,
        keep_kubeadm_backups: u.keep_kubeadm_backups.unwrap_or(2),
    };
    if a.clean_kubeadm_backups {
        return clean(&opts, a.dry_run || !a.yes);
    }
    let admin_conf = kubernetes_dir.join("admin.conf");
    let tools = Tools::find(&ToolPaths {
        kubeadm: u.kubeadm.clone(),
        kubectl: u.kubectl.clone(),
        systemctl: u.systemctl.clone(),
        package_manager: u.package_manager.clone(),
        kubeconfig: u
            .kubeconfig
            .clone()
            .or_else(|| admin_conf.exists().then_some(admin_conf)),
    })?;
    let gate = gate_inputs(&a, config, &kubernetes_dir).await?;
    let mode = if a.dry_run {
        Mode::DryRun
    } else if a.yes || a.resume {
        Mode::Execute
    } else {
        Mode::PlanOnly
    };
    let mut report = Report::default();
    let printer = Printer {
        quiet: a.output == Output::Json,
    };
    let result = upgrade::upgrade(
        &opts,
        &tools,
        gate.as_ref(),
        mode,
        a.resume,
        &printer,
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
    let mut eo = etcd_overrides(&a.etcd);
    eo.manifest = eo.manifest.or(Some(etcd_manifest));
    let etcd = resolve_etcd(&config.etcd, &eo)?;
    let spec = resolve_store(
        &config.backup,
        &config.s3,
        a.dest.dest.as_ref(),
        &s3_overrides(&a.dest),
    )?;
    let store_is_local = matches!(spec, StoreSpec::Local(_));
    let store = lifeboat::store::open(&spec).await?;
    let backup = resolve_backup(
        &config.backup,
        &backup_overrides(&a.backup),
        Reason::PreUpgrade,
    )?;
    Ok(Some(GateInputs {
        etcd: etcd.settings,
        store,
        store_is_local,
        backup,
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

struct Printer {
    quiet: bool,
}

impl Observer for Printer {
    fn check(&self, c: &Check) {
        if !self.quiet {
            let mark = match c.severity {
                Severity::Ok => "ok  ",
                Severity::Warn => "WARN",
                Severity::Fail => "FAIL",
            };
            eprintln!("[{mark}] {:<16} {}", c.name, c.detail);
        }
    }

    fn step_started(&self, step: Step, commands: &[String]) {
        if !self.quiet {
            eprintln!("==> {}", step.name());
            for c in commands {
                eprintln!("    $ {c}");
            }
        }
    }

    fn step_done(&self, step: Step, took: Duration) {
        if !self.quiet {
            eprintln!("    {} done in {:.1}s", step.name(), took.as_secs_f64());
        }
    }

    fn note(&self, message: &str) {
        if !self.quiet {
            eprintln!("    {message}");
        }
    }
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
            "pre-upgrade backup {} ({}), node bundle {} in {}",
            g.backup_id,
            if g.reused {
                "recent, verified"
            } else {
                "taken now"
            },
            g.bundle_key,
            g.store
        );
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
