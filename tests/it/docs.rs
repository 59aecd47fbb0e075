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
