//! `lifeboat upgrade` against a real etcd and real stores, with stand-ins for kubeadm, kubectl,
//! systemctl and apt (tests/fixtures/standin.py) that record every call and keep the node's
//! state the way the real tools would change it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::node::FakeNode;
use crate::harness::s3::S3Server;
use crate::harness::{age_key, lifeboat, run, run_ok, AgeKey, Run, Version};

const STANDIN: &str = include_str!("../fixtures/standin.py");

/// The stand-in tools on a PATH of their own, their call log and state.
pub(crate) struct Standins {
    pub(crate) bin: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) state: PathBuf,
    pub(crate) kubernetes_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Standins {
    fn new(kubernetes_dir: &Path, cluster: &str) -> Standins {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let script = dir.path().join("standin.py");
        std::fs::write(&script, STANDIN).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        for tool in ["kubeadm", "kubectl", "systemctl", "apt-get", "apt-mark"] {
            std::os::unix::fs::symlink(&script, bin.join(tool)).unwrap();
        }
        let s = Standins {
            bin,
            log: dir.path().join("calls.log"),
            state: dir.path().join("state.json"),
            kubernetes_dir: kubernetes_dir.to_path_buf(),
            _dir: dir,
        };
        s.reset(cluster);
        s
    }

    /// The node as a fresh 1.x cluster at `cluster` leaves it; the call log emptied.
    fn reset(&self, cluster: &str) {
        let bare = cluster.trim_start_matches('v');
        let minor: Vec<&str> = bare.split('.').collect();
        let state = serde_json::json!({
            "cluster": cluster, "server": cluster,
            "kubeadm": bare, "kubelet": bare, "kubectl": bare, "kubelet_running": bare,
            "cordoned": false, "ready": true, "cert_days": 300,
            "latest_patch": cluster,
            "next_minor": format!("v{}.{}.0", minor[0], minor[1].parse::<u32>().unwrap() + 1),
        });
        std::fs::write(&self.state, state.to_string()).unwrap();
        std::fs::write(&self.log, "").unwrap();
    }

    pub(crate) fn set(&self, key: &str, value: serde_json::Value) {
        let mut st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&self.state).unwrap()).unwrap();
        st[key] = value;
        std::fs::write(&self.state, st.to_string()).unwrap();
    }

    pub(crate) fn state(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&self.state).unwrap()).unwrap()
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The calls that change something (everything but the read-only ones preflight makes).
    fn changing_calls(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| {
                !(c.starts_with("kubeadm version")
                    || c.starts_with("kubeadm certs check-expiration")
                    || c.starts_with("kubectl version")
                    || c.starts_with("kubectl get")
                    || c.starts_with("kubectl -n kube-system get"))
            })
            .collect()
    }

    fn command(&self, extra_env: &[(&str, &str)]) -> Command {
        let mut cmd = lifeboat();
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env("PATH", path)
            .env("LIFEBOAT_STANDIN_LOG", &self.log)
            .env("LIFEBOAT_STANDIN_STATE", &self.state)
            .env("LIFEBOAT_STANDIN_KUBERNETES_DIR", &self.kubernetes_dir);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// A control-plane node (real etcd via its kubeadm manifests) with stand-in tools.
pub(crate) struct Cp {
    pub(crate) node: FakeNode,
    pub(crate) tools: Standins,
    pub(crate) key: AgeKey,
    pub(crate) dir: tempfile::TempDir,
}

impl Cp {
    pub(crate) fn new(cluster: &str) -> Cp {
        Cp::on(cluster, Version::V35)
    }

    /// A node whose etcd is `version`.
    pub(crate) fn on(cluster: &str, version: Version) -> Cp {
        let node = FakeNode::start(version);
        node.put("/registry/a", "1");
        let tools = Standins::new(&node.kubernetes_dir(), cluster);
        let dir = tempfile::tempdir().unwrap();
        let key = age_key(dir.path(), "key.txt");
        Cp {
            node,
            tools,
            key,
            dir,
        }
    }

    fn config(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join("lifeboat.toml");
        std::fs::write(
            &path,
            format!(
                "[upgrade]\nready_timeout = \"3s\"\n{extra}\n[backup]\nwork_dir = {:?}\n",
                self.dir.path().join("work")
            ),
        )
        .unwrap();
        path
    }

    pub(crate) fn local_dest(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    /// `lifeboat upgrade` for this node, without a destination.
    pub(crate) fn upgrade_cmd(&self, env: &[(&str, &str)]) -> Command {
        self.upgrade_cmd_with(env, "")
    }

    /// As `upgrade_cmd`, with `extra` lines in the config's `[upgrade]`.
    pub(crate) fn upgrade_cmd_with(&self, env: &[(&str, &str)], extra: &str) -> Command {
        let mut cmd = self.tools.command(env);
        cmd.arg("--config")
            .arg(self.config(extra))
            .arg("upgrade")
            .arg("--kubernetes-dir")
            .arg(self.node.kubernetes_dir())
            .arg("--state-dir")
            .arg(&self.node.state_dir)
            .args(["--node", "cp1", "-r", &self.key.recipient]);
        cmd
    }

    /// `lifeboat upgrade` for this node into the local folder (allowed), with `args`.
    pub(crate) fn upgrade(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.upgrade_cmd(env);
        if !args.iter().any(|a| a.starts_with("--dest")) {
            cmd.arg("--dest")
                .arg(self.local_dest())
                .arg("--allow-local-backup");
        }
        cmd.args(args);
        run(&mut cmd)
    }

    /// An ordinary backup into the local folder, as `serve` or an SRE would have taken.
    fn save_backup(&self) {
        let mut save = lifeboat();
        save.args([
            "snapshot",
            "save",
            "-r",
            &self.key.recipient,
            "--etcd-manifest",
        ])
        .arg(self.node.etcd_manifest())
        .arg("--dest")
        .arg(self.local_dest())
        .arg("--work-dir")
        .arg(self.dir.path().join("w"));
        run(&mut save).ok();
    }

    pub(crate) fn backups(&self) -> Vec<String> {
        crate::harness::files_in(&self.local_dest())
    }
}

fn strip_paths(calls: Vec<String>) -> Vec<String> {
    calls
        .into_iter()
        .map(|c| {
            c.split(' ')
                .map(|w| w.rsplit('/').next().unwrap().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

const FIRST_CP_SEQUENCE: [&str; 11] = [
    "apt-mark unhold kubeadm",
    "apt-get update",
    "apt-get install -y --allow-change-held-packages kubeadm=1.31.2-*",
    "apt-mark hold kubeadm",
    "kubeadm upgrade plan",
    "kubeadm upgrade apply v1.31.2 --yes",
    "kubectl drain cp1 --ignore-daemonsets --delete-emptydir-data --timeout=600s",
    "apt-mark unhold kubelet kubectl",
    "apt-get update",
    "apt-get install -y --allow-change-held-packages kubelet=1.31.2-* kubectl=1.31.2-*",
    "apt-mark hold kubelet kubectl",
];

const TAIL_SEQUENCE: [&str; 3] = [
    "systemctl daemon-reload",
    "systemctl restart kubelet",
    "kubectl uncordon cp1",
];

/// What a node that runs `kubeadm upgrade node` (other control planes, workers) calls.
fn upgrade_node_sequence() -> Vec<String> {
    FIRST_CP_SEQUENCE[..4]
        .iter()
        .map(|s| s.to_string())
        .chain(std::iter::once("kubeadm upgrade node".to_string()))
        .chain(FIRST_CP_SEQUENCE[6..].iter().map(|s| s.to_string()))
        .chain(TAIL_SEQUENCE.iter().map(|s| s.to_string()))
        .collect()
}

#[test]
fn first_control_plane_upgrades_behind_an_off_node_backup_and_the_node_kit() {
    let cp = Cp::new("v1.30.2");
    let s3 = S3Server::start();
    crate::harness::data::rt().block_on(s3.create_bucket("backups"));
    let mut args = vec!["--to", "v1.31.2", "--yes", "--dest", "s3://backups/prod"];
    let flags = s3.flags();
    args.extend(flags.iter().map(String::as_str));
    let env: Vec<(&str, String)> = s3.env();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut cmd = cp.upgrade_cmd(&env_ref);
    cmd.args(&args);
    let r = run(&mut cmd).ok();
    assert!(r.stdout.contains("result: upgraded"), "{}", r.stdout);
    let changing = strip_paths(cp.tools.changing_calls());
    let expected: Vec<String> = FIRST_CP_SEQUENCE
        .iter()
        .chain(TAIL_SEQUENCE.iter())
        .map(|s| s.to_string())
        .collect();
    // `kubeadm upgrade plan` also runs read-only in preflight (latest-patch check).
    assert_eq!(&changing[1..], &expected[..], "{changing:#?}");
    assert_eq!(changing[0], "kubeadm upgrade plan");
    assert_eq!(cp.tools.state()["cordoned"], false);
    assert_eq!(cp.tools.state()["kubelet_running"], "1.31.2");
    // The pre-upgrade backup, the node's kit and the mark tying them are in S3, and the
    // backup verifies.
    let keys = crate::harness::data::rt().block_on(s3.keys("backups"));
    let manifest = keys.iter().find(|k| k.ends_with(".manifest.json")).unwrap();
    let mark = keys
        .iter()
        .find(|k| k.contains(".node-cp1.") && k.contains(".kit-"))
        .unwrap_or_else(|| panic!("no upgrade mark: {keys:?}"));
    let kit_id = mark.rsplit_once(".kit-").unwrap().1;
    let kit = keys
        .iter()
        .find(|k| k.contains(&format!("kit-{kit_id}.")) && k.ends_with(".tar.zst.age"))
        .unwrap_or_else(|| panic!("the marked kit is not there: {keys:?}"));
    let mut verify = lifeboat();
    verify
        .args([
            "snapshot",
            "verify",
            "latest",
            "-w",
            "json",
            "--dest",
            "s3://backups/prod",
        ])
        .args(&flags)
        .arg("-i")
        .arg(&cp.key.identity_file)
        .arg("--work-dir")
        .arg(cp.dir.path().join("w"));
    for (k, v) in &env {
        verify.env(k, v);
    }
    let listed = run(&mut verify).ok().json();
    assert_eq!(listed["ok"], true);
    assert!(manifest.contains(listed["id"].as_str().unwrap()));
    let mut list = lifeboat();
    list.args([
        "snapshot",
        "list",
        "-w",
        "json",
        "--dest",
        "s3://backups/prod",
    ])
    .args(&flags);
    for (k, v) in &env {
        list.env(k, v);
    }
    assert_eq!(run(&mut list).ok().json()[0]["reason"], "pre-upgrade");
    // The kit is a standard age file of a zstd'd tar with the node's pki, manifests and
    // the ClusterConfiguration (from kubectl: the node has no file of its own).
    let object = crate::harness::data::rt().block_on(s3.get("backups", kit));
    let enc = cp.dir.path().join("kit.age");
    std::fs::write(&enc, object).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "age -d -i {} {} | zstd -d | tar -t",
            cp.key.identity_file.display(),
            enc.display()
        ))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    for want in [
        "/pki/etcd/ca.crt",
        "/pki/apiserver.key",
        "/manifests/etcd.yaml",
        "/kubeadm-config.yaml",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(want)),
            "{want} missing: {listing}"
        );
    }
}

#[test]
fn another_control_plane_runs_upgrade_node_and_reuses_a_fresh_backup() {
    let cp = Cp::new("v1.30.2");
    // The first control plane already moved the cluster; this node still runs 1.30.2.
    cp.tools.set("cluster", "v1.31.2".into());
    cp.tools.set("server", "v1.31.2".into());
    cp.save_backup();
    let r = cp.upgrade(&["--to", "v1.31.2", "--yes"], &[]).ok();
    assert!(r.stderr.contains("using backup"), "{}", r.stderr);
    let changing = strip_paths(cp.tools.changing_calls());
    assert_eq!(changing, upgrade_node_sequence());
    let backups = cp.backups();
    assert_eq!(
        backups
            .iter()
            .filter(|f| f.ends_with(".manifest.json"))
            .count(),
        1,
        "the fresh backup was reused: {backups:?}"
    );
    assert!(backups.iter().any(|f| f.contains(".node-cp1.")));
}

/// Regression: the bundle key was the backup id and the node only, so a second upgrade of the
/// node that reused the same recent backup was refused ("already exists"). Each upgrade has
/// its own mark now; the unchanged kit is stored once.
#[test]
fn a_second_upgrade_of_the_node_reusing_the_backup_keeps_a_mark_each() {
    let cp = Cp::new("v1.30.2");
    cp.tools.set("cluster", "v1.31.2".into());
    cp.tools.set("server", "v1.31.2".into());
    cp.save_backup();
    cp.upgrade(&["--to", "v1.31.2", "--yes"], &[]).ok();
    cp.tools.reset("v1.30.2");
    cp.tools.set("cluster", "v1.31.2".into());
    cp.tools.set("server", "v1.31.2".into());
    let r = cp.upgrade(&["--to", "v1.31.2", "--yes"], &[]).ok();
    assert!(r.stderr.contains("using backup"), "{}", r.stderr);
    let backups = cp.backups();
    let marks = backups.iter().filter(|f| f.contains(".node-cp1.")).count();
    assert_eq!(marks, 2, "{backups:?}");
    let kits: std::collections::BTreeSet<&str> = backups
        .iter()
        .filter(|f| f.contains(".node-cp1."))
        .filter_map(|f| Some(f.rsplit_once(".kit-")?.1))
        .collect();
    assert_eq!(
        kits.len(),
        1,
        "nothing changed on the node: one kit {backups:?}"
    );
    assert_eq!(
        backups
            .iter()
            .filter(|f| f.ends_with(".manifest.json"))
            .count(),
        1,
        "{backups:?}"
    );
}

/// With `encryption = "none"` no kit is stored (it holds the CA keys and never goes up in the
/// clear): the upgrade goes on behind its backup, and says so loudly.
#[test]
fn with_encryption_off_the_gate_stores_no_kit_and_says_so() {
    let cp = Cp::new("v1.30.2");
    cp.tools.set("cluster", "v1.31.2".into());
    cp.tools.set("server", "v1.31.2".into());
    let config = cp.dir.path().join("plain.toml");
    std::fs::write(
        &config,
        format!(
            "[upgrade]\nready_timeout = \"3s\"\n[backup]\nencryption = \"none\"\nwork_dir = {:?}\n",
            cp.dir.path().join("work")
        ),
    )
    .unwrap();
    let mut cmd = cp.tools.command(&[]);
    cmd.arg("--config")
        .arg(&config)
        .arg("upgrade")
        .arg("--kubernetes-dir")
        .arg(cp.node.kubernetes_dir())
        .arg("--state-dir")
        .arg(&cp.node.state_dir)
        .args([
            "--node",
            "cp1",
            "--to",
            "v1.31.2",
            "--yes",
            "--allow-local-backup",
        ])
        .arg("--dest")
        .arg(cp.local_dest());
    let r = run(&mut cmd).ok();
    assert!(r.stderr.contains("NO control-plane kit"), "{}", r.stderr);
    assert!(r.stdout.contains("result: upgraded"), "{}", r.stdout);
    let stored = cp.backups();
    assert!(
        !stored
            .iter()
            .any(|f| f.starts_with("kit-") || f.contains(".kit-")),
        "{stored:?}"
    );
    for f in &stored {
        let bytes = std::fs::read(cp.local_dest().join(f)).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
            "{f} holds a private key in the clear"
        );
    }
}

/// A worker node (no control-plane manifests) whose cluster already runs v1.31.2.
struct Worker {
    dir: tempfile::TempDir,
    tools: Standins,
}

impl Worker {
    fn new() -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let kdir = dir.path().join("kubernetes");
        std::fs::create_dir_all(&kdir).unwrap();
        let tools = Standins::new(&kdir, "v1.30.2");
        tools.set("cluster", "v1.31.2".into());
        std::fs::write(
            dir.path().join("c.toml"),
            "[upgrade]\nready_timeout = \"60s\"\n",
        )
        .unwrap();
        Worker { dir, tools }
    }

    fn state_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    /// `lifeboat upgrade --to v1.31.2 --yes` for this node, with `extra` flags.
    fn upgrade(&self, extra: &[&str]) -> Run {
        let mut cmd = self.tools.command(&[]);
        cmd.arg("--config")
            .arg(self.dir.path().join("c.toml"))
            .arg("upgrade")
            .arg("--kubernetes-dir")
            .arg(self.dir.path().join("kubernetes"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--node", "cp1", "--to", "v1.31.2", "--yes"])
            .args(extra);
        run(&mut cmd)
    }
}

#[test]
fn a_worker_upgrades_without_the_gate() {
    let w = Worker::new();
    let tools = &w.tools;
    let r = w.upgrade(&[]).ok();
    assert!(r.stderr.contains("worker"), "{}", r.stderr);
    let changing = strip_paths(tools.changing_calls());
    assert_eq!(changing, upgrade_node_sequence());
}

/// Regression: the upgrade had no run lock; two runs on one node interleaved their steps.
#[test]
fn a_second_upgrade_is_refused_while_one_runs_on_the_node() {
    let w = Worker::new();
    let tools = &w.tools;
    let state = w.state_dir();
    let upgrade = || w.upgrade(&["--role", "worker"]);
    // The lock a running `lifeboat upgrade` holds (flock on the same file).
    std::fs::create_dir_all(state.join("upgrade")).unwrap();
    let held = std::fs::File::create(state.join("upgrade/.lock")).unwrap();
    held.try_lock().unwrap();
    let r = upgrade();
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(
        r.stderr.contains("another lifeboat upgrade is running"),
        "{}",
        r.stderr
    );
    assert!(tools.changing_calls().is_empty(), "{:?}", tools.calls());
    drop(held);
    upgrade().ok();
    assert_eq!(strip_paths(tools.changing_calls()), upgrade_node_sequence());
}

fn assert_kubeadm_never_upgraded(tools: &Standins) {
    let changing = tools.changing_calls();
    assert!(
        !changing
            .iter()
            .any(|c| c.starts_with("kubeadm upgrade apply")
                || c.starts_with("kubeadm upgrade node")
                || c.starts_with("apt")),
        "{changing:#?}"
    );
}

#[test]
fn the_gate_refuses_before_kubeadm_runs() {
    let cp = Cp::new("v1.30.2");
    // A folder on this node, without --allow-local-backup.
    let mut cmd = cp.upgrade_cmd(&[]);
    cmd.args(["--to", "v1.31.2", "--yes", "--dest"])
        .arg(cp.local_dest());
    let r = run(&mut cmd);
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(r.stderr.contains("--allow-local-backup"), "{}", r.stderr);
    assert_kubeadm_never_upgraded(&cp.tools);

    // The store is unreachable.
    cp.tools.reset("v1.30.2");
    let dead = format!("http://127.0.0.1:{}", crate::harness::free_port());
    let r = cp.upgrade(
        &[
            "--to",
            "v1.31.2",
            "--yes",
            "--dest",
            "s3://nowhere/x",
            "--s3-endpoint",
            &dead,
            "--s3-path-style",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "b"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(r.stderr.contains("gate refused"), "{}", r.stderr);
    assert_kubeadm_never_upgraded(&cp.tools);

    // Only a stale backup, and no fresh one possible (the store can be read, not written).
    cp.tools.reset("v1.30.2");
    cp.save_backup();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let read_only = ReadOnly::bind(&cp.local_dest());
    let r = cp.upgrade(
        &["--to", "v1.31.2", "--yes", "--max-snapshot-age", "1s"],
        &[],
    );
    drop(read_only);
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(
        r.stderr.contains("pre-upgrade backup failed"),
        "{}",
        r.stderr
    );
    assert_kubeadm_never_upgraded(&cp.tools);
    assert!(!cp.node.state_dir.join("upgrade/journal.json").exists());

    // etcd is down (its pod stopped; the manifest back in place for discovery).
    cp.tools.reset("v1.30.2");
    let away = cp.dir.path().join("etcd.yaml.away");
    std::fs::rename(cp.node.etcd_manifest(), &away).unwrap();
    wait_etcd_down(&cp.node);
    cp.node.kubelet.hold(true);
    std::fs::rename(&away, cp.node.etcd_manifest()).unwrap();
    let r = cp.upgrade(&["--to", "v1.31.2", "--yes"], &[]);
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(r.stderr.contains("[FAIL] etcd"), "{}", r.stderr);
    assert_kubeadm_never_upgraded(&cp.tools);
}

/// Regression: `--role worker` on a control-plane node skipped the backup gate and ran
/// `kubeadm upgrade node` and the package upgrades with no backup.
#[test]
fn a_role_the_node_contradicts_is_refused_before_anything_runs() {
    let cp = Cp::new("v1.30.2");
    let r = cp.upgrade(&["--to", "v1.31.2", "--yes", "--role", "worker"], &[]);
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(r.stderr.contains("[FAIL] role"), "{}", r.stderr);
    assert!(r.stderr.contains("control-plane node"), "{}", r.stderr);
    assert_kubeadm_never_upgraded(&cp.tools);
    assert!(
        cp.tools.changing_calls().is_empty(),
        "{:?}",
        cp.tools.calls()
    );
    assert!(
        !cp.backups()
            .iter()
            .any(|f| f.contains(".node-") || f.starts_with("kit-")),
        "no kit, no mark"
    );
}

fn wait_etcd_down(node: &FakeNode) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while node.kubelet.running().contains(&"etcd.yaml".to_string()) {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn version_skew_is_refused() {
    let cp = Cp::new("v1.30.2");
    for (to, why) in [
        ("v1.32.0", "one minor"),
        ("v1.29.9", "downgrade"),
        ("v1.30.1", "downgrade"),
    ] {
        cp.tools.reset("v1.30.2");
        let r = cp.upgrade(&["--to", to, "--yes"], &[]);
        assert_eq!(r.code, 8, "{to}: {}", r.stderr);
        assert!(r.stderr.contains(why), "{to}: {}", r.stderr);
        assert_kubeadm_never_upgraded(&cp.tools);
        assert!(cp.backups().is_empty(), "no backup for a refused upgrade");
    }
}

#[test]
fn dry_run_and_plan_change_nothing_and_warn_about_the_latest_patch_and_certificates() {
    let cp = Cp::new("v1.30.2");
    cp.tools.set("latest_patch", "v1.30.5".into());
    cp.tools.set("cert_days", 12.into());
    let r = cp
        .upgrade(&["--to", "v1.31.2", "--dry-run", "-w", "json"], &[])
        .ok();
    let report = r.json();
    assert_eq!(report["result"], "dry-run");
    let checks = report["checks"].as_array().unwrap();
    let sev = |n: &str| {
        checks
            .iter()
            .find(|c| c["name"] == n)
            .map(|c| c["severity"].clone())
    };
    assert_eq!(sev("latest-patch"), Some("warn".into()), "{report}");
    assert_eq!(sev("certificates"), Some("warn".into()));
    assert_eq!(sev("etcd-members"), Some("ok".into()));
    assert_eq!(sev("etcd-alarms"), Some("ok".into()));
    assert!(report["plan"].as_array().unwrap().len() >= 10);
    assert_eq!(
        strip_paths(cp.tools.changing_calls()),
        vec!["kubeadm upgrade plan".to_string()]
    );
    assert!(cp.backups().is_empty());
    let r = cp.upgrade(&["--to", "v1.31.2"], &[]);
    assert_eq!(r.code, 8, "without --yes: {}", r.stderr);
    assert!(r.stdout.contains("Upgrade plan"), "{}", r.stdout);
    assert!(r.stderr.contains("--yes"), "{}", r.stderr);
    assert_eq!(
        strip_paths(cp.tools.changing_calls()),
        vec!["kubeadm upgrade plan".to_string(); 2]
    );
    assert!(cp.backups().is_empty());
}

#[test]
fn a_failure_at_each_step_keeps_a_journal_and_resume_continues_from_that_step() {
    let cp = Cp::new("v1.30.2");
    // (the call that fails, its step, the first changing call a resume must make)
    let points = [
        (
            "apt-get install -y --allow-change-held-packages kubeadm",
            "upgrade-kubeadm",
            "apt-mark unhold kubeadm",
        ),
        (
            "kubeadm upgrade plan",
            "kubeadm-upgrade-plan",
            "kubeadm upgrade plan",
        ),
        (
            "kubeadm upgrade apply",
            "kubeadm-upgrade",
            "kubeadm upgrade apply",
        ),
        ("kubectl drain", "drain", "kubectl drain"),
        (
            "apt-get install -y --allow-change-held-packages kubelet",
            "upgrade-kubelet-kubectl",
            "apt-mark unhold kubelet kubectl",
        ),
        (
            "systemctl daemon-reload",
            "daemon-reload",
            "systemctl daemon-reload",
        ),
        (
            "systemctl restart kubelet",
            "restart-kubelet",
            "systemctl restart kubelet",
        ),
        ("NOT READY", "wait-ready", "kubectl uncordon"),
        ("kubectl uncordon", "uncordon", "kubectl uncordon"),
    ];
    for (prefix, step, resumes_with) in points {
        cp.tools.reset("v1.30.2");
        let not_ready = prefix == "NOT READY";
        if not_ready {
            cp.tools.set("ready", false.into());
        }
        let r = cp.upgrade(
            &["--to", "v1.31.2", "--yes"],
            &[("LIFEBOAT_STANDIN_FAIL", prefix)],
        );
        assert_ne!(r.code, 0, "{step} should fail");
        assert!(
            r.stderr.contains(&format!("step {step} failed")),
            "{step}: {}",
            r.stderr
        );
        assert!(
            r.stdout.contains("recovery: ") && r.stdout.contains("--resume"),
            "{}",
            r.stdout
        );
        assert!(
            r.stdout.contains("lifeboat restore etcd-"),
            "restore command for the pre-upgrade backup: {}",
            r.stdout
        );
        if !["upgrade-kubeadm", "kubeadm-upgrade-plan", "kubeadm-upgrade"].contains(&step) {
            assert_eq!(
                cp.tools.state()["cordoned"],
                true,
                "{step}: the node stays cordoned"
            );
        }
        let journal: serde_json::Value = serde_json::from_slice(
            &std::fs::read(cp.node.state_dir.join("upgrade/journal.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(journal["failed"], step);
        // Another upgrade is refused while the journal is unfinished.
        let again = cp.upgrade(&["--to", "v1.31.2", "--yes"], &[]);
        assert_eq!(again.code, 8, "{}", again.stderr);
        std::fs::write(&cp.tools.log, "").unwrap();
        if not_ready {
            cp.tools.set("ready", true.into());
        }
        let backups_before = cp.backups().len();
        let r = cp.upgrade(&["--resume"], &[]).ok();
        assert!(r.stdout.contains("result: upgraded"), "{}", r.stdout);
        assert_eq!(
            cp.backups().len(),
            backups_before,
            "resume does not take another backup"
        );
        let changing = strip_paths(cp.tools.changing_calls());
        let first = changing.first().cloned().unwrap_or_default();
        assert!(
            first.starts_with(resumes_with),
            "resume of {step} began with {first}: {changing:#?}"
        );
        assert!(
            !changing.iter().any(|c| c == "apt-mark unhold kubeadm") || step == "upgrade-kubeadm",
            "resume of {step} repeated earlier steps: {changing:#?}"
        );
        assert_eq!(cp.tools.state()["cordoned"], false);
        assert!(!cp.node.state_dir.join("upgrade/journal.json").exists());
        std::fs::remove_dir_all(cp.local_dest()).unwrap();
    }
}

#[test]
fn kubeadm_backup_folders_beyond_the_newest_are_offered_for_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let kdir = dir.path().join("kubernetes");
    let tmp = kdir.join("tmp");
    for day in ["2026-01-10", "2026-03-11", "2026-06-12", "2026-09-13"] {
        for kind in ["etcd", "manifests"] {
            std::fs::create_dir_all(tmp.join(format!("kubeadm-backup-{kind}-{day}-10-00-00")))
                .unwrap();
        }
    }
    std::fs::create_dir_all(tmp.join("something-else")).unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[upgrade]\nkeep_kubeadm_backups = 2\n").unwrap();
    let clean = |extra: &[&str]| {
        let mut cmd = lifeboat();
        cmd.arg("--config")
            .arg(&config)
            .args(["upgrade", "--clean-kubeadm-backups", "--kubernetes-dir"])
            .arg(&kdir)
            .args(extra);
        run(&mut cmd).ok()
    };
    let r = clean(&["--dry-run"]);
    assert_eq!(r.stdout.matches("would remove").count(), 4, "{}", r.stdout);
    assert_eq!(
        crate::harness::files_in(&tmp).len(),
        9,
        "dry run removes nothing"
    );
    clean(&["--yes"]);
    let left = crate::harness::files_in(&tmp);
    assert_eq!(left.len(), 5, "{left:?}");
    assert!(left
        .iter()
        .all(|f| !f.contains("2026-01-10") && !f.contains("2026-03-11")));
    assert!(left.contains(&"something-else".to_string()));
}

/// A folder made read-only by a read-only bind mount over itself (the tests run as root, who
/// ignores permission bits), mounted back on drop.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn bind(dir: &Path) -> ReadOnly {
        run_ok(Command::new("mount").arg("--bind").arg(dir).arg(dir));
        let guard = ReadOnly(dir.to_path_buf());
        run_ok(
            Command::new("mount")
                .args(["-o", "remount,bind,ro"])
                .arg(dir),
        );
        guard
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
