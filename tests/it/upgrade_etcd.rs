//! etcd versions in `lifeboat upgrade` (#26): the etcd step, the gate's zombie-member check and
//! the post-flight, with the upgrade tests' stand-ins (tests/it/upgrade.rs) and real etcd.

use std::process::Command;

use crate::harness::node::FakeNode;
use crate::harness::{lifeboat, run, run_ok, Version};
use crate::upgrade::Cp;

/// #26: Kubernetes 1.34 brings etcd 3.6, which trusts the v3 store's membership; below 3.5.26
/// a member can bring removed members back as zombies. The stand-in kubeadm's plan says 3.6.
#[test]
fn an_etcd_3_6_target_is_refused_below_3_5_26_and_accepted_on_3_5_30() {
    for (version, refused) in [(Version::V35, true), (Version::V3530, false)] {
        let cp = Cp::on("v1.33.4", version);
        cp.tools.set("etcd_next_target", "3.6.4-0".into());
        let r = cp.upgrade(&["--to", "v1.34.0", "--dry-run", "-w", "json"], &[]);
        let report = r.json();
        let checks = report["checks"].as_array().unwrap().clone();
        let path: Vec<&serde_json::Value> = checks
            .iter()
            .filter(|c| c["name"].as_str().unwrap().starts_with("etcd-path"))
            .collect();
        if refused {
            assert_eq!(r.code, 8, "{}\n{}", r.stdout, r.stderr);
            assert_eq!(path.len(), 1, "{report}");
            let member = &cp.node.name;
            assert_eq!(path[0]["name"], format!("etcd-path {member}"), "{report}");
            assert_eq!(path[0]["severity"], "fail", "{report}");
            let detail = path[0]["detail"].as_str().unwrap();
            assert!(
                detail.contains("runs 3.5.16")
                    && detail.contains("upgrade etcd to 3.5.26+ first, wait until all are healthy"),
                "{detail}"
            );
            assert!(
                r.stderr.contains(&format!("etcd-path {member}")),
                "{}",
                r.stderr
            );
        } else {
            assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
            assert_eq!(report["result"], "dry-run", "{report}");
            assert_eq!(path.len(), 1, "{report}");
            assert_eq!(path[0]["severity"], "ok", "{report}");
            let detail = path[0]["detail"].as_str().unwrap();
            assert!(
                detail.contains("brings etcd 3.6.4 (kubeadm upgrade plan)")
                    && detail.contains("3.5.30"),
                "{detail}"
            );
            let failed: Vec<&serde_json::Value> =
                checks.iter().filter(|c| c["severity"] == "fail").collect();
            assert!(failed.is_empty(), "{report}");
        }
        assert!(cp.backups().is_empty());
    }
}

/// Without an etcd row in the plan, kubeadm's own line for the release decides: 1.34 is 3.6.
#[test]
fn without_the_plans_etcd_row_kubeadms_line_for_the_release_decides() {
    let cp = Cp::new("v1.33.4");
    let r = cp.upgrade(&["--to", "v1.34.0", "--dry-run", "-w", "json"], &[]);
    assert_eq!(r.code, 8, "{}\n{}", r.stdout, r.stderr);
    let report = r.json();
    let path = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().unwrap().starts_with("etcd-path"))
        .cloned()
        .unwrap();
    assert!(
        path["detail"]
            .as_str()
            .unwrap()
            .contains("then upgrade to 3.6.0"),
        "{path}"
    );
    // A patch upgrade within 1.33 stays on 3.5: nothing in the way.
    let r = cp.upgrade(&["--to", "v1.33.4", "--dry-run", "-w", "json"], &[]);
    let report = r.json();
    let path = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "etcd-path")
        .cloned();
    assert_eq!(
        path.map(|p| p["severity"].clone()),
        Some("ok".into()),
        "{report}"
    );
}

/// Edits this node's v3 store so that bucket `members` holds a member the live list does not
/// know (its own key with the last hex digit changed; etcd 3.5.16 re-adds its own record when it
/// starts and keeps the other, as an old cluster's buckets do), its etcd stopped meanwhile. The
/// zombie's id.
fn plant_zombie(node: &FakeNode) -> String {
    let out = run_ok(node.etcdctl().args(["member", "list"]));
    let id = String::from_utf8_lossy(&out.stdout)
        .split(", ")
        .next()
        .unwrap()
        .to_string();
    let zombie = format!(
        "{}{}",
        &id[..id.len() - 1],
        if id.ends_with('0') { '1' } else { '0' }
    );
    node.kubelet
        .kill_until_moved("etcd.yaml", node.etcd_manifest());
    let db = node.data_dir.join("member/snap/db");
    let bytes = std::fs::read(&db).unwrap();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(id.as_bytes()) {
            out.extend_from_slice(zombie.as_bytes());
            i += id.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    assert_ne!(out, bytes, "the member's key is in its file");
    std::fs::write(&db, out).unwrap();
    // Out of the manifests folder and back: the kubelet starts it again.
    let manifest = node.etcd_manifest();
    let aside = manifest.with_extension("yaml.aside");
    std::fs::rename(&manifest, &aside).unwrap();
    std::fs::rename(&aside, &manifest).unwrap();
    node.wait_healthy();
    zombie
}

/// #26: the gate's fresh backup shows a zombie in the v3 store. Below etcd 3.6 the upgrade goes
/// on with the zombie named as a warning (and recorded with the backup, whose drill shows it);
/// `lifeboat etcd check` names it too.
#[test]
fn the_gate_names_a_zombie_in_its_fresh_backup_and_the_drill_shows_it() {
    let cp = Cp::on("v1.33.4", Version::V35);
    let zombie = plant_zombie(&cp.node);
    let check = run(lifeboat()
        .args(["etcd", "check", "--etcd-manifest"])
        .arg(cp.node.etcd_manifest()));
    assert_eq!(check.code, 4, "{}\n{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains(&format!("zombie member {zombie}")),
        "{}",
        check.stdout
    );
    // kubeadm brings etcd 3.5.30 with this release (its image in etcd.yaml; the stand-in
    // kubelet runs that binary).
    cp.tools.set("latest_patch", "v1.33.5".into());
    cp.tools.set("etcd_patch_target", "3.5.30-0".into());
    let r = cp.upgrade(&["--to", "v1.33.5", "--yes"], &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("result: upgraded"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains(&format!("WARNING: zombie member {zombie}"))
            && r.stdout.contains("before any upgrade to etcd 3.6"),
        "{}",
        r.stdout
    );
    let id = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("pre-upgrade backup "))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .to_string();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(cp.local_dest().join(format!("{id}.manifest.json"))).unwrap(),
    )
    .unwrap();
    let members = manifest["membership"]["v3_store"]["members"]
        .as_array()
        .unwrap();
    assert!(members.iter().any(|m| m["id"] == zombie), "{manifest}");
    assert_eq!(manifest["membership"]["live"].as_array().unwrap().len(), 1);
    let mut drill = lifeboat();
    drill
        .args(["drill", &id, "-i"])
        .arg(&cp.key.identity_file)
        .arg("--dest")
        .arg(cp.local_dest())
        .arg("--etcd")
        .arg(crate::harness::etcd_bin(Version::V35))
        .arg("--etcdutl")
        .arg(crate::harness::restore_tool(Version::V35))
        .arg("--work-dir")
        .arg(cp.dir.path().join("drill"));
    let d = run(&mut drill);
    assert_eq!(d.code, 0, "{}\n{}", d.stdout, d.stderr);
    assert!(
        d.stdout
            .contains(&format!("WARNING    zombie member {zombie}")),
        "{}",
        d.stdout
    );
}

/// #26: after kubeadm's upgrade the post-flight waits for the member on the etcd the plan named
/// and HashKV equal; the member moved to 3.5.30 (3.5.26+ repairs the v3 store: the planted
/// zombie is gone after it). A member left on the old version fails the step, naming it, and the
/// node stays cordoned with the pre-upgrade backup named for the way back.
#[test]
fn the_post_flight_waits_for_the_new_etcd_and_fails_naming_a_member_left_behind() {
    let cp = Cp::on("v1.33.4", Version::V35);
    let zombie = plant_zombie(&cp.node);
    cp.tools.set("latest_patch", "v1.33.5".into());
    // An etcd image the node cannot run: its etcd stays on 3.5.16.
    cp.tools.set("etcd_patch_target", "3.5.24-0".into());
    // Long enough for the member to answer again after kubeadm's manifest change restarted it:
    // its last look names the version it runs.
    let mut cmd = cp.upgrade_cmd_with(&[], "etcd_ready_timeout = \"15s\"");
    cmd.args(["--to", "v1.33.5", "--yes", "--dest"])
        .arg(cp.local_dest())
        .arg("--allow-local-backup");
    let r = run(&mut cmd);
    assert_ne!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("etcd-postflight") && r.stdout.contains("failed"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr
            .contains(&format!("{} (https://127.0.0.1:", cp.node.name))
            && r.stderr.contains("runs etcd 3.5.16, not yet 3.5.24"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.contains(
            "recovery: to return etcd to its state before the upgrade: lifeboat restore etcd-"
        ),
        "{}",
        r.stdout
    );
    assert_eq!(cp.tools.state()["cordoned"], true);
    // The plan moves on to 3.5.30; kubeadm is run again by hand, as the operator would after
    // fixing the image: the resume's post-flight sees the member on it, and the zombie gone.
    cp.tools.set("etcd_patch_target", "3.5.30-0".into());
    run_ok(
        Command::new(cp.tools.bin.join("kubeadm"))
            .args(["upgrade", "apply", "v1.33.5"])
            .env("LIFEBOAT_STANDIN_LOG", &cp.tools.log)
            .env("LIFEBOAT_STANDIN_STATE", &cp.tools.state)
            .env("LIFEBOAT_STANDIN_KUBERNETES_DIR", &cp.tools.kubernetes_dir),
    );
    let mut resume = cp.upgrade_cmd(&[]);
    resume
        .args(["--resume", "--dest"])
        .arg(cp.local_dest())
        .arg("--allow-local-backup");
    let r = run(&mut resume);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("result: upgraded"), "{}", r.stdout);
    assert_eq!(cp.tools.state()["cordoned"], false);
    let check = run(lifeboat()
        .args(["etcd", "check", "--etcd-manifest"])
        .arg(cp.node.etcd_manifest()));
    assert_eq!(
        check.code, 0,
        "zombie {zombie}: {}\n{}",
        check.stdout, check.stderr
    );
}
