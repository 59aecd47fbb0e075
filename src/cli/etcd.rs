//! `lifeboat etcd check` (the zombie-member check) and `lifeboat etcd health` (the
//! post-flight), both read-only (#26).

use anyhow::{Context, Result};
use lifeboat::config::{resolve_etcd, ConfigError, FileConfig};
use lifeboat::etcd::health::{verify_cluster, Wanted};
use lifeboat::etcd::version::EtcdVersion;
use lifeboat::etcd::EtcdSource;
use lifeboat::verify::membership::{self, Inconsistent};
use lifeboat::verify::{LiveMember, Membership};

use super::args::{EtcdCheckArgs, EtcdCommand, EtcdHealthArgs, Output};

pub async fn run(cmd: EtcdCommand, file: FileConfig) -> Result<()> {
    match cmd {
        EtcdCommand::Check(a) => check(*a, file).await,
        EtcdCommand::Health(a) => health(*a, file).await,
    }
}

async fn health(a: EtcdHealthArgs, file: FileConfig) -> Result<()> {
    let config = file.overlay(a.flags());
    let etcd = resolve_etcd(&config.etcd)?;
    let version = match &a.etcd_version {
        Some(v) => Some(EtcdVersion::parse(v).ok_or_else(|| ConfigError::Invalid {
            key: "--etcd-version",
            message: format!("`{v}` is not an etcd version like 3.5.30"),
        })?),
        None => None,
    };
    let wanted = Wanted {
        version,
        timeout: a.timeout,
    };
    let h = verify_cluster(&etcd.settings, wanted).await?;
    let members: Vec<serde_json::Value> = h
        .answers
        .iter()
        .map(|a| {
            serde_json::json!({
                "name": a.member.name,
                "id": format!("{:x}", a.member.id),
                "endpoint": a.member.client_urls.first(),
                "version": a.status.version,
                "revision": a.status.revision,
                "hash": h.hash,
            })
        })
        .collect();
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "members": members,
                "revision": h.revision,
                "hash": h.hash,
                "compact_revision": h.compact_revision,
            }))?
        ),
        Output::Table => {
            println!(
                "{:<16} {:<32} {:<8} {:>10}",
                "MEMBER", "ENDPOINT", "VERSION", "REVISION"
            );
            for a in &h.answers {
                println!(
                    "{:<16} {:<32} {:<8} {:>10}",
                    a.member.name,
                    a.member.client_urls.first().map_or("", String::as_str),
                    a.status.version,
                    a.status.revision
                );
            }
            println!(
                "OK: {} member(s) healthy, HashKV {} at revision {} on every one (compact revision {})",
                h.answers.len(),
                h.hash,
                h.revision,
                h.compact_revision
            );
        }
    }
    Ok(())
}

async fn check(a: EtcdCheckArgs, file: FileConfig) -> Result<()> {
    let config = file.overlay(a.flags());
    let etcd = resolve_etcd(&config.etcd)?;
    let mut source = EtcdSource::connect_first(&etcd.settings)
        .await
        .context("connecting to etcd")?;
    let (what, v3_store, live) = match &a.snapshot {
        Some(path) => {
            let info = lifeboat::readback::plain_file_info(path)?;
            let live = source.members().await.context("reading the member list")?;
            let live: Vec<LiveMember> = live.iter().map(LiveMember::of).collect();
            (path.display().to_string(), info.membership, live)
        }
        None => {
            let (v3, live) = membership::read_live(&mut source).await?;
            (format!("a snapshot of {}", source.endpoint()), v3, live)
        }
    };
    let findings = v3_store.findings(&live);
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "checked": what,
                "v3_store": v3_store,
                "live": live,
                "findings": findings,
                "ok": findings.is_empty(),
            }))?
        ),
        Output::Table => print_table(&what, &v3_store, &live, &findings),
    }
    if findings.is_empty() {
        return Ok(());
    }
    Err(Inconsistent { what, findings }.into())
}

fn print_table(
    what: &str,
    v3_store: &Membership,
    live: &[LiveMember],
    findings: &[lifeboat::verify::Finding],
) {
    println!("checked      {what}");
    println!("v3 store     {}", v3_store.summary());
    let names: Vec<String> = live
        .iter()
        .map(|m| format!("{} ({:x})", m.name, m.id))
        .collect();
    println!("live         {} [{}]", live.len(), names.join(", "));
    for f in findings {
        println!("FINDING      {f}");
    }
    if findings.is_empty() {
        println!("OK: the v3 store's membership matches the live member list (safe for etcd 3.6 as far as membership goes)");
    }
}
