//! Imports flow one way (docs/architecture.md): a module may use only modules of its own layer
//! or below. This reads every file under src/ (the library; the CLI sits on top of it all) and
//! fails on the first `crate::x` that points up.

use std::path::{Path, PathBuf};

/// Lowest first. A module not listed here is an error too, so a new one gets a place.
const LAYERS: &[&[&str]] = &[
    &[
        "error_chain",
        "secret",
        "process",
        "fsutil",
        "progress",
        "bbolt",
        "etcd",
    ],
    &["store", "verify", "trust"],
    &["stages", "catalog"],
    &["backup", "retention", "continuous", "kit"],
    &["readback", "copy"],
    &["restore", "member"],
    &["sandbox"],
    &["drill", "upgrade", "pitr", "maintenance"],
    &["shadow", "recover"],
    &["service"],
    &["config"],
    &["exit"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level module a file under src/ belongs to (`None` for lib.rs, main.rs and cli/).
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "cli")).then(|| name.to_string())
}

/// Every upward import in one file, as messages.
fn violations(relative: &Path, text: &str) -> Vec<String> {
    let Some(module) = module_of(relative) else {
        return Vec::new();
    };
    let Some(own) = layer_of(&module) else {
        return vec![format!(
            "{}: module `{module}` has no layer in tests/it/layers.rs",
            relative.display()
        )];
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.contains("crate::{") {
            out.push(format!(
                "{}:{}: `crate::{{…}}` hides what is imported; name each path",
                relative.display(),
                n + 1
            ));
        }
        for (i, _) in line.match_indices("crate::") {
            if i > 0 && line[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue; // e.g. `etcd_client::crate::`, not ours
            }
            let rest = &line[i + "crate::".len()..];
            let target: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if target.is_empty() || target == module {
                continue;
            }
            match layer_of(&target) {
                Some(l) if l <= own => {}
                Some(l) => out.push(format!(
                    "{}:{}: `{module}` (layer {own}) imports `{target}` (layer {l}), which sits above it",
                    relative.display(),
                    n + 1
                )),
                None => out.push(format!(
                    "{}:{}: `{target}` has no layer in tests/it/layers.rs",
                    relative.display(),
                    n + 1
                )),
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn imports_flow_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "src/ not found at {}", src.display());
    let mut all = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        all.extend(violations(f.strip_prefix(&src).unwrap(), &text));
    }
    assert!(all.is_empty(), "imports that point up:\n{}", all.join("\n"));
}

#[test]
fn the_check_catches_a_low_layer_importing_config_or_a_command() {
    let store = Path::new("store/mod.rs");
    assert_eq!(
        violations(store, "use crate::config::StoreSpec;").len(),
        1,
        "store → config"
    );
    assert_eq!(
        violations(Path::new("etcd/mod.rs"), "crate::service::x()").len(),
        1
    );
    assert_eq!(
        violations(Path::new("stages/pipe.rs"), "use crate::backup::Spool;").len(),
        1
    );
    assert_eq!(
        violations(Path::new("bbolt/mod.rs"), "use crate::{config, etcd};").len(),
        1
    );
    assert!(violations(Path::new("verify/mod.rs"), "use crate::bbolt::Db;").is_empty());
    assert!(violations(Path::new("cli/mod.rs"), "use crate::config;").is_empty());
    assert_eq!(
        violations(Path::new("newthing.rs"), "").len(),
        1,
        "unplaced module"
    );
}
