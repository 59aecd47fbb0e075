//! The runbooks say what the tests do: every `lifeboat …` command line in them parses with the
//! real binary (flags and subcommands exist), and where they say a restore cannot run from the
//! DaemonSet pod, the DaemonSet indeed mounts nothing a restore must change.

use std::path::Path;

use k8s_openapi::api::apps::v1::DaemonSet;

use crate::harness::{lifeboat, run};

/// Shell lines of ```sh blocks that run `lifeboat`, comments and continuations removed.
fn lifeboat_lines(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in markdown.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_sh = !in_sh && (t == "```sh" || t == "```bash");
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = t.split(" #").next().unwrap_or("").trim();
        if let Some(rest) = code.strip_prefix("lifeboat ") {
            if !rest.contains('…') && !rest.contains("...") {
                out.push(rest.to_string());
            }
        }
    }
    out
}

/// Splits like a shell would for these lines: whitespace, single and double quotes.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => quote = Some(c),
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn every_lifeboat_command_in_the_runbooks_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for doc in [
        "README.md",
        "docs/restore.md",
        "docs/upgrade.md",
        "deploy/README.md",
    ] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for line in lifeboat_lines(&text) {
            // `--help` after the real arguments: clap checks every flag before it, and
            // prints help instead of running (a bad flag or subcommand exits 2).
            let r = run(lifeboat().args(words(&line)).arg("--help"));
            assert_eq!(
                r.code, 0,
                "{doc}: `lifeboat {line}` does not parse: {}",
                r.stderr
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} commands found: did the runbooks change shape?"
    );
}

#[test]
fn the_runbook_is_right_that_the_daemonset_cannot_restore() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docs/restore.md")).unwrap();
    assert!(
        text.contains("Run it **on the node**"),
        "the runbook's rule moved"
    );
    let ds: DaemonSet = serde_norway::from_str(
        &std::fs::read_to_string(root.join("deploy/kubernetes/daemonset.yaml")).unwrap(),
    )
    .unwrap();
    let spec = ds.spec.unwrap().template.spec.unwrap();
    let mounts = spec.containers[0].volume_mounts.clone().unwrap_or_default();
    for m in &mounts {
        let writable = m.read_only != Some(true);
        assert!(
            !(writable && m.mount_path.starts_with("/etc/kubernetes")),
            "the DaemonSet can write {}: then a restore could run there; update docs/restore.md",
            m.mount_path
        );
        assert!(
            !m.mount_path.starts_with("/var/lib/etcd/") && m.mount_path != "/var/lib/etcd",
            "the DaemonSet mounts the etcd data dir: update docs/restore.md"
        );
    }
}

#[test]
fn words_split_like_a_shell() {
    assert_eq!(
        words(r#"restore x --initial-cluster 'a=b,c=d' --name "cp 1""#),
        [
            "restore",
            "x",
            "--initial-cluster",
            "a=b,c=d",
            "--name",
            "cp 1"
        ]
    );
}

/// The README's first block under "Using it on a kubeadm control-plane node".
fn readme_quick_start() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("## Using it on a kubeadm control-plane node")
        .nth(1)
        .expect("the section");
    let start = section.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let len = section[start..].find("```").unwrap();
    section[start..start + len].to_string()
}

/// #22: the README's quick start runs as written, on a kubeadm-shaped node (its etcd found from
/// its static pod manifest, as on a real one): only the two paths on the host are swapped for
/// the test's. An unsigned `save` that every reader then refuses was the first thing a new
/// user met.
#[test]
fn the_readme_quick_start_runs_as_written() {
    use crate::harness::node::FakeNode;
    let node = FakeNode::start(crate::harness::Version::V35);
    node.put("/registry/configmaps/default/readme", "{}");
    let dir = tempfile::tempdir().unwrap();
    let block = readme_quick_start();
    assert!(block.contains("signing-key generate"), "{block}");
    let script = block
        .replace(
            "/var/backups/etcd",
            dir.path().join("backups").to_str().unwrap(),
        )
        .replace(
            "/var/lib/etcd/member/snap/db",
            node.data_dir.join("member/snap/db").to_str().unwrap(),
        );
    let bin = Path::new(env!("CARGO_BIN_EXE_lifeboat")).parent().unwrap();
    let mut cmd = std::process::Command::new("bash");
    for (k, _) in std::env::vars() {
        if k.starts_with("LIFEBOAT_") && !k.starts_with("LIFEBOAT_TEST_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("LIFEBOAT_ETCD_MANIFEST", node.etcd_manifest())
        .env("LIFEBOAT_LOG_LEVEL", "warn");
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{script}\n{}\n{}", r.stdout, r.stderr);
    assert!(dir.path().join("snapshot.db").exists());
    assert!(r.stdout.contains("revision"), "{}", r.stdout);
}
