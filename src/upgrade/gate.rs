//! The gate: on a control-plane node, nothing that changes the node runs before a pre-upgrade
//! backup is committed off the node (a fresh one, or a recent one whose object still matches
//! its manifest) together with the node's control-plane kit (#25: the same kit every backup on
//! the node carries), and a mark tying the two so retention keeps them for the upgrade.

use std::sync::Arc;

use chrono::Utc;

use super::etcd_path::{EtcdVersion, V36};
use super::{GateInputs, GateResult, UpgradeError, UpgradeOptions};
use crate::backup::{take_backup, BackupSettings};
use crate::catalog::{Catalog, Manifest, Reason};
use crate::etcd::EtcdSource;
use crate::progress::Observer;

pub(super) async fn run_gate(
    opts: &UpgradeOptions,
    g: &GateInputs,
    etcd_target: Option<EtcdVersion>,
    observer: &dyn Observer,
) -> Result<GateResult, UpgradeError> {
    let to_36 = etcd_target.is_some_and(|t| t >= V36);
    let gate_err = |reason: String| UpgradeError::Gate { reason };
    let mut source = EtcdSource::connect_first(&g.etcd)
        .await
        .map_err(|e| gate_err(format!("cannot reach etcd for the pre-upgrade backup: {e}")))?;
    let facts = source
        .member_facts()
        .await
        .map_err(|e| gate_err(format!("etcd: {e}")))?;
    let cluster = format!("{:x}", facts.cluster_id);
    let catalog = Catalog::new(g.store.clone(), g.read_policy.clone());
    // Before etcd 3.6 the zombie check needs this moment's v3 store: no earlier backup.
    let recent = match to_36 {
        true => None,
        false => {
            catalog
                .recent_verified(&cluster, opts.max_snapshot_age)
                .await
        }
    };
    let (manifest, reused) = match recent {
        Some(m) => {
            observer.note(&format!(
                "using backup {} ({}s old, its object matches its manifest)",
                m.id,
                (Utc::now() - m.created_at).num_seconds()
            ));
            (m, true)
        }
        None => {
            observer.note("taking a fresh pre-upgrade backup");
            let settings = BackupSettings {
                reason: Reason::PreUpgrade,
                ..g.backup.clone()
            };
            let cancel = tokio_util::sync::CancellationToken::new();
            let m = take_backup(
                &mut source,
                g.store.clone(),
                &settings,
                Arc::new(crate::progress::Silent),
                &cancel,
                None,
            )
            .await
            .map_err(|e| gate_err(format!("the pre-upgrade backup failed: {e}")))?;
            (m, false)
        }
    };
    let membership_findings = zombie_check(&manifest, etcd_target, observer)?;
    let kit = node_kit(g, &cluster, &opts.node, observer)
        .await
        .map_err(|e| gate_err(format!("the node's control-plane kit: {e}")))?;
    if let Some(kit) = &kit {
        let mark = crate::catalog::upgrade_mark_key(&manifest.id, &opts.node, Utc::now(), kit);
        g.store
            .put(&mark, crate::store::bytes_stream(bytes::Bytes::new()))
            .await
            .map_err(|e| {
                gate_err(format!(
                    "marking backup {} for the upgrade: {e}",
                    manifest.id
                ))
            })?;
    }
    observer.note(&format!(
        "backup {} and kit {} are in {}",
        manifest.id,
        kit.as_deref().unwrap_or("(none)"),
        g.store.location()
    ));
    Ok(GateResult {
        backup_id: manifest.id.clone(),
        reused,
        created_at: manifest.created_at,
        kit,
        store: g.store.location(),
        membership_findings,
    })
}

/// The zombie-member check of the gate's backup (#26): its v3 store against the member list
/// of its time. Before a 3.6+ target any finding refuses (a backup that records no membership
/// too: the check could not be made); below 3.6 findings are warnings for the day it comes.
fn zombie_check(
    manifest: &Manifest,
    etcd_target: Option<EtcdVersion>,
    observer: &dyn Observer,
) -> Result<Vec<String>, UpgradeError> {
    let to_36 = etcd_target.filter(|t| *t >= V36);
    let Some(recorded) = &manifest.membership else {
        return match to_36 {
            Some(t) => Err(UpgradeError::Gate {
                reason: format!(
                    "backup {} records no member list (read from a learner?), so the zombie-member check before etcd {t} cannot be made: run the upgrade where the member list is readable",
                    manifest.id
                ),
            }),
            None => Ok(Vec::new()),
        };
    };
    let findings: Vec<String> = recorded
        .findings()
        .iter()
        .map(ToString::to_string)
        .collect();
    match (to_36, findings.is_empty()) {
        (_, true) => {
            observer.note(&format!(
                "zombie-member check of backup {}: its v3 store matches the member list",
                manifest.id
            ));
            Ok(findings)
        }
        (Some(t), false) => Err(UpgradeError::Gate {
            reason: format!(
                "zombie-member check before etcd {t}: backup {} shows {}; {}",
                manifest.id,
                findings.join("; "),
                crate::verify::membership::FIX
            ),
        }),
        (None, false) => {
            for f in &findings {
                observer.note(&format!(
                    "WARNING: {f} (backup {}): harmless on etcd 3.5, fatal on 3.6 — {}",
                    manifest.id,
                    crate::verify::membership::FIX
                ));
            }
            Ok(findings)
        }
    }
}

/// The node's kit, stored unless its content is there. Never in the clear: with encryption
/// off the upgrade goes on without one, loudly (the backup itself still gates it).
async fn node_kit(
    g: &GateInputs,
    cluster: &str,
    node: &str,
    observer: &dyn Observer,
) -> Result<Option<String>, crate::kit::KitError> {
    let Some(plan) = &g.backup.kit else {
        return Ok(None);
    };
    if g.backup.recipients.is_none() {
        observer.note("WARNING: encryption is off (backup.encryption = \"none\"): NO control-plane kit is stored — it holds the cluster's CA keys and is never stored in the clear; set backup.recipients to keep /etc/kubernetes/pki and the files the manifests name with every backup");
        tracing::warn!("no control-plane kit: encryption is off");
        return Ok(None);
    }
    let saved = crate::kit::take(
        plan,
        cluster,
        node,
        &g.store,
        g.backup.signer.as_deref(),
        g.backup.recipients.as_ref(),
    )
    .await?;
    Ok(Some(saved.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::RecordedMembership;
    use crate::verify::{LiveMember, Membership};

    fn manifest(membership: Option<RecordedMembership>) -> Manifest {
        let text = r#"{"schema_version":1,"id":"etcd-20261205T030405.000Z-00000000000000ab","created_at":"2026-12-05T03:04:05Z","cluster_id":"ab","member_id":"1","member_name":"m","endpoint":"e","etcd_version":"3.5.16","revision":1,"raft_index":1,"db_size":1,"status":{"hash":1,"revision":1,"totalKey":1,"totalSize":1},"hashkv":{"hash":1,"compact_revision":0,"checked":true,"result":"equal"},"plain_sha256":"00","plain_size":1,"object":{"key":"k","size":1,"sha256":"00"},"compression":{"algorithm":"zstd","level":3},"encryption":{"scheme":"age","recipients":[]},"reason":"pre-upgrade","tool_version":"t","duration_ms":1}"#;
        let mut m = Manifest::parse("t", text.as_bytes()).unwrap();
        m.membership = membership;
        m
    }

    /// Bucket `members` holds `bucket` (hex ids), the live list `live`.
    fn recorded(bucket: &[u64], live: &[u64]) -> RecordedMembership {
        let v3: Membership = serde_json::from_value(serde_json::json!({
            "members": bucket.iter().map(|id| serde_json::json!({
                "id": format!("{id:x}"), "name": "n", "peer_urls": [], "is_learner": false
            })).collect::<Vec<_>>(),
            "removed": [],
        }))
        .unwrap();
        RecordedMembership {
            v3_store: v3,
            live: live
                .iter()
                .map(|id| LiveMember {
                    id: *id,
                    name: "n".into(),
                })
                .collect(),
        }
    }

    fn v(s: &str) -> Option<EtcdVersion> {
        EtcdVersion::parse(s)
    }

    #[test]
    fn a_zombie_refuses_a_3_6_target_and_warns_below_it() {
        let silent = crate::progress::Silent;
        let zombie = manifest(Some(recorded(&[0xa, 0xc], &[0xa])));
        let err = zombie_check(&zombie, v("3.6.4"), &silent).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("zombie member c") && text.contains("3.5.26+"),
            "{text}"
        );
        assert!(matches!(err, UpgradeError::Gate { .. }));
        let warned = zombie_check(&zombie, v("3.5.24"), &silent).unwrap();
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(zombie_check(&zombie, None, &silent).is_ok());
        let clean = manifest(Some(recorded(&[0xa], &[0xa])));
        assert!(zombie_check(&clean, v("3.6.4"), &silent)
            .unwrap()
            .is_empty());
        // No member list recorded: the check cannot be made, so 3.6 is refused.
        let unknown = manifest(None);
        assert!(zombie_check(&unknown, v("3.6.0"), &silent)
            .unwrap_err()
            .to_string()
            .contains("records no member list"));
        assert!(zombie_check(&unknown, v("3.5.24"), &silent)
            .unwrap()
            .is_empty());
    }
}
