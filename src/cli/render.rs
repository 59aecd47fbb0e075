//! Human output: short, aligned, the facts an SRE looks for first.

use std::path::Path;

use lifeboat::catalog::Manifest;
use lifeboat::readback::ReadBack;
use lifeboat::verify::SnapshotStatus;

pub(super) fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

pub fn status(s: &SnapshotStatus) {
    println!(
        "{:<10} {:>10} {:>12} {:>12}",
        "HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"
    );
    println!(
        "{:<10} {:>10} {:>12} {:>12}",
        format!("{:08x}", s.hash),
        s.revision,
        s.total_key,
        human_bytes(s.total_size)
    );
}

pub fn saved(m: &Manifest, location: &str) {
    println!("backup {} committed to {location}", m.id);
    println!(
        "  member     {} ({}) at {}, etcd {}",
        m.member_name, m.member_id, m.endpoint, m.etcd_version
    );
    println!(
        "  revision   {}  keys {}  db {}",
        m.revision,
        m.status.total_key,
        human_bytes(m.db_size)
    );
    println!(
        "  object     {} ({}, sha256 {})",
        m.object.key,
        human_bytes(m.object.size),
        m.object.sha256
    );
    println!(
        "  checks     trailer ok, bbolt walk ok (hash {:08x}), hashkv {}",
        m.status.hash, m.hashkv.result
    );
    println!("  encryption {}", encryption(m));
    if let Some(kit) = &m.kit {
        println!("  kit        {kit} (the node's control-plane files)");
    }
    println!("  took       {} ms", m.duration_ms);
}

fn encryption(m: &Manifest) -> String {
    if m.encryption.scheme == "none" {
        "NONE".to_string()
    } else {
        format!(
            "{} to {}",
            m.encryption.scheme,
            m.encryption.recipients.join(", ")
        )
    }
}

pub fn list(ms: &[Manifest]) {
    if ms.is_empty() {
        println!("no backups");
        return;
    }
    println!(
        "{:<52} {:<20} {:>10} {:>9} {:>10} {:<12} {:<10} {:<12}",
        "ID", "CREATED (UTC)", "REVISION", "KEYS", "SIZE", "REASON", "MEMBER", "KIT"
    );
    for m in ms {
        println!(
            "{:<52} {:<20} {:>10} {:>9} {:>10} {:<12} {:<10} {:<12}",
            m.id,
            m.created_at.format("%Y-%m-%d %H:%M:%S"),
            m.revision,
            m.status.total_key,
            human_bytes(m.object.size),
            m.reason.to_string(),
            m.member_name,
            m.kit.as_deref().map_or("-", |k| &k[..k.len().min(12)])
        );
    }
}

pub fn verified(m: &Manifest, r: &ReadBack) {
    println!("backup {} verified", m.id);
    println!(
        "  object sha256  {} ({})",
        r.object_sha256,
        human_bytes(r.object_size)
    );
    println!(
        "  plain sha256   {} ({})",
        r.plain_sha256,
        human_bytes(r.plain_size)
    );
    println!(
        "  status         hash {:08x} revision {} keys {} size {}",
        r.status.hash, r.status.revision, r.status.total_key, r.status.total_size
    );
}

pub fn got(m: &Manifest, r: &ReadBack, out: &Path) {
    println!(
        "wrote {} ({}) from backup {}",
        out.display(),
        human_bytes(r.plain_size),
        m.id
    );
    println!(
        "  verified: sha256 {}, revision {}",
        r.plain_sha256, r.status.revision
    );
    println!(
        "  restore with: etcdutl snapshot restore {} --data-dir <new dir> ...",
        out.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(2048), "2.00 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.00 GiB");
    }
}
