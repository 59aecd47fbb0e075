//! deploy/: every Kubernetes manifest parses into the API types, says what the issue asks
//! (control-plane placement, read-only host mounts, no privilege it does not need), the
//! ConfigMap's config passes `serve --check-config`, and the alerts use metrics we export.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
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
    let cm: ConfigMap = parse("configmap.yaml");
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
    let exported = lifeboat::service::metrics::Metrics::new().render();
    let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    let alerts: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    assert!(alerts.contains(&"EtcdBackupStale") && alerts.contains(&"EtcdBackupFailing"));
    for r in rules {
        let expr = r["expr"].as_str().unwrap();
        let metric = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find(|w| w.starts_with("lifeboat_"))
            .unwrap_or_else(|| panic!("{expr} uses no lifeboat metric"));
        assert!(exported.contains(metric), "{metric} is not exported");
    }
}

#[test]
fn the_drill_instance_runs_off_the_control_plane_unprivileged_with_a_valid_config() {
    let d: Deployment = parse("drill.yaml");
    let pod = d.spec.unwrap().template.spec.unwrap();
    assert_ne!(pod.host_network, Some(true), "no host network");
    assert!(
        pod.volumes
            .as_ref()
            .unwrap()
            .iter()
            .all(|v| v.host_path.is_none()),
        "no host mounts"
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
    let c = &pod.containers[0];
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.unwrap().drop.unwrap(),
        vec!["ALL".to_string()]
    );
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
