//! `lifeboat kit list|show|get`: the control-plane kits in the store, without rebuilding.

use std::path::Path;

use anyhow::{bail, Context, Result};
use lifeboat::config::{resolve_read_policy, FileConfig};
use lifeboat::kit::{self, KitManifest};

use super::args::{KitCommand, KitGetArgs, KitShowArgs, Output};
use super::snapshot::{load_identities, open_store};

pub async fn run(cmd: KitCommand, file: FileConfig) -> Result<()> {
    match cmd {
        KitCommand::List(a) => {
            let config = file.overlay(a.dest.flags());
            let store = open_store(&config).await?;
            let kits = kit::list(&store, resolve_read_policy(&config.trust)?.as_ref()).await?;
            match a.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&kits)?),
                Output::Table => print_list(&kits, &store.location()),
            }
            Ok(())
        }
        KitCommand::Show(a) => show(a, file).await,
        KitCommand::Get(a) => get(a, file).await,
    }
}

fn print_list(kits: &[KitManifest], location: &str) {
    if kits.is_empty() {
        println!("no control-plane kit in {location}");
        return;
    }
    println!(
        "{:<18} {:<24} {:<16} {:<18} {:>6} {:>10}",
        "KIT", "CREATED", "NODE", "CLUSTER", "FILES", "BYTES"
    );
    for k in kits {
        println!(
            "{:<18} {:<24} {:<16} {:<18} {:>6} {:>10}",
            &k.id[..16],
            k.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            k.node,
            k.cluster_id,
            k.files.len(),
            k.files.iter().map(|f| f.size).sum::<u64>()
        );
    }
}

/// The one trusted kit whose id starts with `prefix`.
async fn find(
    prefix: &str,
    store: &std::sync::Arc<dyn lifeboat::store::Store>,
    config: &FileConfig,
) -> Result<KitManifest> {
    let kits = kit::list(store, resolve_read_policy(&config.trust)?.as_ref()).await?;
    let mut hits = kits.into_iter().filter(|k| k.id.starts_with(prefix));
    match (hits.next(), hits.next()) {
        (Some(k), None) => Ok(k),
        (None, _) => Err(kit::KitError::NotFound {
            id: prefix.to_string(),
            location: store.location(),
        }
        .into()),
        (Some(_), Some(_)) => {
            bail!("several kits start with {prefix}: give more of its id (`lifeboat kit list`)")
        }
    }
}

async fn show(a: KitShowArgs, file: FileConfig) -> Result<()> {
    let config = file.overlay(a.dest.flags());
    let store = open_store(&config).await?;
    let k = find(&a.id, &store, &config).await?;
    if a.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&k)?);
        return Ok(());
    }
    println!("kit {} of node {} (cluster {})", k.id, k.node, k.cluster_id);
    println!(
        "  created {}; etcd image {}; kubeadm {}; kubelet {}",
        k.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        k.versions.etcd_image.as_deref().unwrap_or("-"),
        k.versions.kubeadm.as_deref().unwrap_or("-"),
        k.versions.kubelet.as_deref().unwrap_or("-")
    );
    println!(
        "{:<6} {:>6} {:>6} {:>8}  {:<16} PATH",
        "MODE", "UID", "GID", "BYTES", "SHA256"
    );
    for f in &k.files {
        println!(
            "{:04o}   {:>6} {:>6} {:>8}  {:<16} {}",
            f.mode,
            f.uid,
            f.gid,
            f.size,
            &f.sha256[..16],
            f.path
        );
    }
    Ok(())
}

/// Every file of a kit, checked, under `-o DIR` at its own path (the folder private).
async fn get(a: KitGetArgs, file: FileConfig) -> Result<()> {
    let config = file.overlay(a.dest.flags());
    let store = open_store(&config).await?;
    let k = find(&a.id, &store, &config).await?;
    let Some(identities) = load_identities(Some(&a.identity))? else {
        bail!("--identity is needed to decrypt a kit");
    };
    let (_, files) = kit::load(
        &store,
        resolve_read_policy(&config.trust)?.as_ref(),
        &identities,
        &k.id,
    )
    .await?;
    if a.out.exists()
        && std::fs::read_dir(&a.out)
            .with_context(|| format!("reading {}", a.out.display()))?
            .next()
            .is_some()
    {
        return Err(kit::KitError::OutputNotEmpty(a.out.clone()).into());
    }
    lifeboat::fsutil::create_private_dir(&a.out)
        .with_context(|| format!("creating {}", a.out.display()))?;
    for (f, bytes) in &files {
        let to = a.out.join(f.path.trim_start_matches('/'));
        write_private(&to, bytes, f.mode)?;
    }
    println!(
        "wrote the {} files of kit {} under {} (checked: signature, digests)",
        files.len(),
        k.id,
        a.out.display()
    );
    Ok(())
}

fn write_private(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = to.parent() {
        lifeboat::fsutil::create_private_dir(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o600)
        .open(to)
        .with_context(|| format!("writing {}", to.display()))?;
    std::io::Write::write_all(&mut f, bytes)
        .with_context(|| format!("writing {}", to.display()))?;
    f.sync_all()
        .with_context(|| format!("writing {}", to.display()))?;
    Ok(())
}
