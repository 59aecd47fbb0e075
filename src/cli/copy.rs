//! `lifeboat copy`: one pass of the second copy, from --dest to --to.

use anyhow::{Context, Result};
use lifeboat::catalog::Catalog;
use lifeboat::config::{resolve_copy_to, resolve_read_policy, ConfigError, FileConfig};
use lifeboat::copy::{Copier, CopyError, CopyOptions, CopyReport};

use super::args::{CopyArgs, Output};
use super::render::human_bytes;
use super::snapshot::open_primary;

pub async fn run(a: CopyArgs, file: FileConfig) -> Result<()> {
    let config = file.overlay(a.flags());
    let since = a.since.as_deref().map(parse_since).transpose()?;
    let target_spec = resolve_copy_to(&config, &a.to, a.to_s3())?;
    let source = open_primary(&config).await?;
    let target = lifeboat::store::open(&target_spec)
        .await
        .with_context(|| format!("opening the copy {} (nothing was copied)", a.to))?;
    let catalog = Catalog::new(source, resolve_read_policy(&config.trust)?);
    let mut copier = Copier::new(
        catalog,
        target,
        CopyOptions {
            since,
            dry_run: a.dry_run,
            retention: None,
        },
    );
    let report = copier.pass().await?;
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print(&report),
    }
    if !report.refused.is_empty() {
        let keys = report.refused.iter().map(|r| r.key.clone()).collect();
        return Err(CopyError::Refused(keys).into());
    }
    Ok(())
}

fn parse_since(raw: &str) -> Result<chrono::DateTime<chrono::Utc>, ConfigError> {
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| ConfigError::Invalid {
            key: "--since",
            message: format!("`{raw}` is not an RFC 3339 time like 2026-12-01T00:00:00Z ({e})"),
        })
}

fn print(r: &CopyReport) {
    let verb = if r.dry_run { "would copy" } else { "copied" };
    for c in &r.copied {
        println!("{verb:<11} {:<8} {}", c.kind.as_str(), c.name);
    }
    for x in &r.refused {
        println!("REFUSED     {:<8} {}: {}", x.kind.as_str(), x.key, x.why);
    }
    println!(
        "{} → {}: {} {verb} ({}), {} already there{}{}{}",
        r.from,
        r.to,
        r.copied.len(),
        human_bytes(r.bytes),
        r.present,
        if r.before_since > 0 {
            format!(", {} before --since", r.before_since)
        } else {
            String::new()
        },
        if r.left_to_retention > 0 {
            format!(", {} left to the copy's retention", r.left_to_retention)
        } else {
            String::new()
        },
        if r.refused.is_empty() {
            String::new()
        } else {
            format!(
                ", {} REFUSED (they fail a check on the source)",
                r.refused.len()
            )
        }
    );
}
