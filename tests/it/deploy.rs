//! deploy/: every Kubernetes manifest parses into the API types, says what the issue asks
//! (control-plane placement, read-only host mounts, no privilege it does not need), the
//! ConfigMap's config passes `serve --check-config`, and the alerts use metrics we export.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec, Secret};

use crate::harness::{lifeboat, run};

fn read(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn parse<T: serde::de::DeserializeOwned>(name: &str) -> T {
    serde_norway::from_str(&read(name)).unwrap_or_else(|e| panic!("{name} does not parse: {e}"))
}

fn check_hardened(name: &str, spec: &PodSpec) -> Container {
    assert_eq!(spec.host_network, Some(true), "{name}: hostNetwork");
    let c = spec.containers[0].clone();
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
    assert_eq!(
        sc.capabilities.unwrap().drop.unwrap(),
        vec!["ALL".to_string()],
        "{name}"
    );
    assert_ne!(sc.privileged, Some(true), "{name}");
    let mounts = c.volume_mounts.clone().unwrap();
    for path in ["/etc/kubernetes/manifests", "/etc/kubernetes/pki/etcd"] {
        let m = mounts
            .iter()
            .find(|m| m.mount_path == path)
            .unwrap_or_else(|| panic!("{name}: {path} mounted"));
        assert_eq!(m.read_only, Some(true), "{name}: {path} read-only");
    }
    assert_eq!(c.args.clone().unwrap()[0], "serve");
    assert!(
        c.resources
            .clone()
            .unwrap()
            .limits
            .unwrap()
            .contains_key("memory"),
        "{name}: memory limit"
    );
    c
}

#[test]
fn the_daemonset_runs_on_control_plane_nodes_with_least_privilege() {
    let ds: DaemonSet = parse("daemonset.yaml");
    let spec = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        spec.node_selector
            .clone()
            .unwrap()
            .get("node-role.kubernetes.io/control-plane")
            .map(String::as_str),
        Some("")
    );
    let tolerations = spec.tolerations.clone().unwrap();
    assert!(tolerations
        .iter()
        .any(|t| t.key.as_deref() == Some("node-role.kubernetes.io/control-plane")));
    let c = check_hardened("daemonset.yaml", &spec);
    assert_eq!(
        c.liveness_probe.unwrap().http_get.unwrap().path.as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        c.readiness_probe.unwrap().http_get.unwrap().path.as_deref(),
        Some("/readyz")
    );
    assert_eq!(
        spec.automount_service_account_token,
        Some(false),
        "no API access needed"
    );
}

#[test]
fn the_static_pod_variant_is_a_valid_pod() {
    let pod: Pod = parse("static-pod.yaml");
    check_hardened("static-pod.yaml", &pod.spec.unwrap());
}

#[test]
fn the_secret_holds_the_key_files_the_config_names() {
    let secret: Secret = parse("secret.yaml");
    let keys: Vec<String> = secret.string_data.unwrap().into_keys().collect();
    assert_eq!(keys, vec!["access-key", "secret-key", "signing-key"]);
    let config = config_text();
    for key in keys {
        assert!(
            config.contains(&format!("/var/run/secrets/etcd-lifeboat/{key}")),
            "the config does not use {key}"
        );
    }
}

fn config_text() -> String {
    config_of("configmap.yaml")
}

fn config_of(name: &str) -> String {
    let cm: ConfigMap = parse(name);
    cm.data
        .unwrap()
        .remove("lifeboat.toml")
        .expect("lifeboat.toml in the ConfigMap")
}

#[test]
fn the_configmap_config_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lifeboat.toml");
    std::fs::write(&path, config_text()).unwrap();
    let r = run(lifeboat()
        .args(["serve", "--check-config", "--config"])
        .arg(&path))
    .ok();
    assert!(r.stdout.contains("configuration is valid"), "{}", r.stdout);
    assert!(r.stdout.contains("etcd-backups"), "{}", r.stdout);
}

#[test]
fn the_alerts_use_metrics_that_serve_exports() {
    let rule: serde_json::Value = serde_norway::from_str(&read("prometheusrule.yaml")).unwrap();
    assert_eq!(rule["kind"], "PrometheusRule");
    let exported = lifeboat::service::every_metric();
    let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    let alerts: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    assert!(alerts.contains(&"EtcdBackupStale") && alerts.contains(&"EtcdBackupFailing"));
    assert!(
        alerts.contains(&"EtcdJournalLagging"),
        "the live RPO is alerted on"
    );
    assert!(
        alerts.contains(&"EtcdShadowMismatch") && alerts.contains(&"EtcdShadowLagging"),
        "the shadow's stop and lag are alerted on"
    );
    for r in rules {
        let expr = r["expr"].as_str().unwrap();
        let metric = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find(|w| w.starts_with("lifeboat_"))
            .unwrap_or_else(|| panic!("{expr} uses no lifeboat metric"));
        assert!(exported.contains(metric), "{metric} is not exported");
    }
}

/// The Deployment's pod: off the control plane, no host network or mounts, non-root, read-only
/// root, no capabilities. Its container.
fn off_control_plane_unprivileged(name: &str) -> Container {
    let d: Deployment = parse(name);
    let pod = d.spec.unwrap().template.spec.unwrap();
    assert_ne!(pod.host_network, Some(true), "{name}: no host network");
    assert!(
        pod.volumes
            .as_ref()
            .unwrap()
            .iter()
            .all(|v| v.host_path.is_none()),
        "{name}: no host mounts"
    );
    let terms = pod
        .affinity
        .unwrap()
        .node_affinity
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .unwrap()
        .node_selector_terms;
    assert_eq!(
        terms[0].match_expressions.as_ref().unwrap()[0].operator,
        "DoesNotExist"
    );
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    let c = pod.containers[0].clone();
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.unwrap().drop.unwrap(),
        vec!["ALL".to_string()]
    );
    c
}

#[test]
fn the_drill_instance_runs_off_the_control_plane_unprivileged_with_a_valid_config() {
    let c = &off_control_plane_unprivileged("drill.yaml");
    // The config is valid once its identity file exists (here: a real key in a temp dir).
    let cm: ConfigMap = parse("drill-config.yaml");
    let text = cm.data.unwrap().remove("lifeboat.toml").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = crate::harness::age_key(dir.path(), "identity.txt");
    let config = dir.path().join("lifeboat.toml");
    std::fs::write(
        &config,
        text.replace(
            "/var/run/secrets/etcd-lifeboat-drill/identity.txt",
            key.identity_file.to_str().unwrap(),
        ),
    )
    .unwrap();
    let r = run(lifeboat()
        .args(["serve", "--check-config", "--config"])
        .arg(&config))
    .ok();
    assert!(r.stdout.contains("DrillPlan"), "{}", r.stdout);
    assert!(
        !r.stdout.contains("AGE-SECRET-KEY"),
        "the identity is never printed"
    );
    let mounted = c.volume_mounts.as_ref().unwrap();
    assert!(mounted
        .iter()
        .any(|m| m.mount_path == "/var/run/secrets/etcd-lifeboat-drill"));
}

/// The immutable variant the node ConfigMap describes in comments (Object Lock on, no pruning
/// by the node) is a valid config once uncommented.
#[test]
fn the_configmaps_immutable_variant_passes_check_config() {
    let text = config_text();
    let variant = text
        .replace("# lock_mode = ", "lock_mode = ")
        .replace("# lock_period = ", "lock_period = ")
        .replace("# prune = false", "prune = false");
    assert_ne!(variant, text);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lifeboat.toml");
    std::fs::write(&path, &variant).unwrap();
    let r = run(lifeboat()
        .args(["serve", "--check-config", "--config"])
        .arg(&path))
    .ok();
    assert!(r.stdout.contains("Compliance"), "{}", r.stdout);
    assert!(r.stdout.contains("retention: None"), "{}", r.stdout);
}

fn actions(policy: &str) -> Vec<String> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/iam")
        .join(policy);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    doc["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Effect"] == "Allow")
        .flat_map(|s| s["Action"].as_array().unwrap().clone())
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// What each policy must not allow (SeaweedFS enforces them in tests/it/object_lock.rs; this
/// keeps a permission from creeping in that no test exercises).
#[test]
fn the_node_cannot_delete_and_the_pruner_cannot_write_or_bypass_a_lock() {
    let node = actions("node-policy.json");
    assert!(node.contains(&"s3:PutObject".to_string()));
    assert!(
        node.iter()
            .all(|a| !a.contains("Delete") && !a.contains("Bypass") && !a.contains('*')),
        "{node:?}"
    );
    let pruner = actions("pruner-policy.json");
    assert!(pruner.contains(&"s3:DeleteObjectVersion".to_string()));
    assert!(
        pruner
            .iter()
            .all(|a| !a.starts_with("s3:Put") && !a.contains("Bypass") && !a.contains('*')),
        "{pruner:?}"
    );
}

/// #21: the shadow's principal deletes nothing and writes only its bases and proofs; the
/// bucket policy denies the writers and the shadow every unconditional overwrite but of the
/// objects replaced in place, and locks longer than the retention period. (SeaweedFS cannot
/// evaluate these conditions; AWS does: checked here for shape.)
#[test]
fn the_shadow_writes_only_its_own_objects_and_nothing_is_overwritten_unconditionally() {
    let shadow = actions("shadow-policy.json");
    assert!(
        shadow
            .iter()
            .all(|a| !a.contains("Delete") && !a.contains("Bypass") && !a.contains('*')),
        "{shadow:?}"
    );
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/iam");
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join(name)).unwrap()).unwrap()
    };
    let policy = read("shadow-policy.json");
    for s in policy["Statement"].as_array().unwrap() {
        if s["Action"].to_string().contains("s3:PutObject") {
            for r in s["Resource"].as_array().unwrap() {
                let r = r.as_str().unwrap();
                assert!(
                    r.ends_with("/etcd-*") || r.ends_with(".proven.json"),
                    "the shadow writes {r}"
                );
            }
        }
    }
    let bucket = read("bucket-policy.json");
    let statements = bucket["Statement"].as_array().unwrap();
    let overwrite = statements
        .iter()
        .find(|s| s["Effect"] == "Deny" && s["Condition"]["Null"]["s3:if-none-match"] == "true")
        .expect("a deny of unconditional writes");
    assert_eq!(
        overwrite["Condition"]["Bool"]["s3:ObjectCreationOperation"], "true",
        "multipart parts carry no condition header: only PutObject/CompleteMultipartUpload"
    );
    let spared = overwrite["NotResource"].to_string();
    assert!(
        spared.contains(".head.json")
            && spared.contains(".proven.json")
            && !spared.contains("etcd-*")
    );
    assert!(statements.iter().any(|s| s["Effect"] == "Deny"
        && !s["Condition"]["NumericGreaterThan"]["s3:object-lock-remaining-retention-days"]
            .is_null()));
}

#[test]
fn the_pruner_runs_off_the_control_plane_unprivileged_with_only_its_secret() {
    let job: CronJob = parse("pruner.yaml");
    let spec = job.spec.unwrap();
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    let pod = spec.job_template.spec.unwrap().template.spec.unwrap();
    assert_ne!(pod.host_network, Some(true));
    assert_eq!(pod.automount_service_account_token, Some(false));
    let terms = pod
        .affinity
        .unwrap()
        .node_affinity
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .unwrap()
        .node_selector_terms;
    let term = &terms[0].match_expressions.as_ref().unwrap()[0];
    assert_eq!(
        (term.key.as_str(), term.operator.as_str()),
        ("node-role.kubernetes.io/control-plane", "DoesNotExist")
    );
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    let c = &pod.containers[0];
    assert_eq!(c.args.as_ref().unwrap()[0], "prune");
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let volumes = pod.volumes.unwrap();
    assert!(volumes.iter().all(|v| v.host_path.is_none()));
    let secrets: Vec<String> = volumes
        .iter()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect();
    assert_eq!(secrets, vec!["etcd-lifeboat-pruner".to_string()]);
    // The Secret holds exactly what the pruner's config reads.
    let secret: Secret = parse("pruner-secret.yaml");
    let config = config_of("pruner-config.yaml");
    let keys: Vec<String> = secret.string_data.unwrap().into_keys().collect();
    assert_eq!(keys, vec!["access-key", "secret-key", "signing.key.pub"]);
    for key in keys {
        assert!(
            config.contains(&format!("/var/run/secrets/etcd-lifeboat-pruner/{key}")),
            "the pruner config does not use {key}"
        );
    }
    assert!(!config.contains("signing_key"), "the pruner signs nothing");
}

/// The drill instance reads the S3 keys of the nodes' Secret but not their signing key.
#[test]
fn the_drill_instance_does_not_mount_the_signing_key() {
    let d: Deployment = parse("drill.yaml");
    let pod = d.spec.unwrap().template.spec.unwrap();
    for v in pod.volumes.unwrap() {
        let Some(secret) = v.secret else { continue };
        if secret.secret_name.as_deref() == Some("etcd-lifeboat-s3") {
            let items: Vec<String> = secret.items.unwrap().into_iter().map(|i| i.key).collect();
            assert_eq!(items, vec!["access-key", "secret-key"]);
        }
    }
}

#[test]
fn the_shadow_runs_off_the_control_plane_unprivileged_with_a_valid_config() {
    let c = &off_control_plane_unprivileged("shadow.yaml");
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "serve");
    // Its config resolves (keys and identity swapped for real ones in a temp dir), and it
    // listens where the probes look.
    let cm: ConfigMap = parse("shadow-config.yaml");
    let text = cm.data.unwrap().remove("lifeboat.toml").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = crate::harness::age_key(dir.path(), "identity.txt");
    let signing = dir.path().join("shadow.key");
    lifeboat::trust::generate(&signing).unwrap();
    let text = text
        .replace(
            "/var/run/secrets/etcd-lifeboat-shadow/identity.txt",
            key.identity_file.to_str().unwrap(),
        )
        .replace(
            "/var/run/secrets/etcd-lifeboat-shadow/shadow.key",
            signing.to_str().unwrap(),
        )
        .replace(
            "/var/run/secrets/etcd-lifeboat-shadow/signing.key.pub",
            crate::harness::test_keys().public.to_str().unwrap(),
        );
    // The Secret's files as the kubelet mounts them: defaultMode, plus group read with an
    // fsGroup (#21: 0440 made the shipped shadow refuse its own key).
    let deployment: k8s_openapi::api::apps::v1::Deployment = parse("shadow.yaml");
    let spec = deployment.spec.unwrap();
    assert_eq!(
        spec.strategy.and_then(|s| s.type_).as_deref(),
        Some("Recreate"),
        "two shadows must never overlap"
    );
    let pod = spec.template.spec.unwrap();
    let default_mode = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "identity")
        .and_then(|v| v.secret)
        .and_then(|s| s.default_mode)
        .unwrap_or(0o644) as u32;
    let fs_group = pod.security_context.and_then(|s| s.fs_group).is_some();
    let mode = default_mode | if fs_group { 0o040 } else { 0 };
    assert_eq!(mode, 0o440, "as the kubelet mounts it");
    for f in [&signing, &key.identity_file] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let config: lifeboat::config::FileConfig = toml::from_str(&text).unwrap();
    let serve = lifeboat::config::resolve_serve(&config).unwrap();
    assert!(serve.backup.is_none(), "a drill-only instance");
    assert!(serve.drill.is_some(), "it still drills the newest backup");
    let settings = serve.shadow.expect("[shadow] enabled").settings;
    assert_eq!(
        settings.base_interval,
        std::time::Duration::from_secs(15 * 60)
    );
    assert!(settings.backup.signer.is_some() && settings.backup.recipients.is_some());
    let port = c.ports.as_ref().unwrap()[0].container_port;
    assert_eq!(serve.listen.port(), port as u16);
    let mounted = c.volume_mounts.as_ref().unwrap();
    assert!(mounted
        .iter()
        .any(|m| m.mount_path == "/var/run/secrets/etcd-lifeboat-shadow"));
}
