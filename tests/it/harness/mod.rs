//! Test harness: real etcd processes, per-run certificates, a fault-injecting TCP proxy, and
//! helpers to run the real `lifeboat` binary. Every process started here is killed by PID on
//! Drop; everything binds 127.0.0.1 only.

pub mod data;
pub mod etcd;
pub mod http_fault;
pub mod journal;
pub mod node;
pub mod pki;
pub mod proxy;
pub mod s3;
pub mod serve;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub use etcd::{EtcdProcess, Version};
pub use pki::Pki;

/// A binary the tests need, from `scripts/test-deps --print-env`, or its known install path.
pub fn tool(env: &str, fallbacks: &[&str]) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    for f in fallbacks {
        let p = PathBuf::from(f.replace("~", &home));
        if p.exists() {
            return p;
        }
    }
    panic!("{env} is not set and none of {fallbacks:?} exists: run scripts/test-deps first");
}

const CACHE: &str = "~/.cache/etcd-lifeboat-deps";

/// One of a 3.5 version's binaries, from its env variable or the test-deps cache.
fn bin35(v: Version, name: &str) -> PathBuf {
    let (env, dir) = match v {
        Version::V3530 => ("3530", "etcd3530"),
        _ => ("35", "etcd35"),
    };
    tool(
        &format!("LIFEBOAT_TEST_{}{env}_BIN", name.to_uppercase()),
        &[&format!("{CACHE}/{dir}/root/usr/bin/{name}")],
    )
}

pub fn etcd_bin(v: Version) -> PathBuf {
    match v {
        Version::V34 => tool("LIFEBOAT_TEST_ETCD34_BIN", &["/usr/bin/etcd"]),
        _ => bin35(v, "etcd"),
    }
}

pub fn etcdctl_bin(v: Version) -> PathBuf {
    match v {
        Version::V34 => tool("LIFEBOAT_TEST_ETCDCTL34_BIN", &["/usr/bin/etcdctl"]),
        _ => bin35(v, "etcdctl"),
    }
}

/// 3.5.16's etcdutl.
pub fn etcdutl_bin() -> PathBuf {
    bin35(Version::V35, "etcdutl")
}

/// The offline restore tool of `v`: etcdctl for 3.4, etcdutl from 3.5.
pub fn restore_tool(v: Version) -> PathBuf {
    match v {
        Version::V34 => etcdctl_bin(Version::V34),
        _ => bin35(v, "etcdutl"),
    }
}

/// A command of `v`'s offline tool, ready for `snapshot restore` / `snapshot status`.
pub fn restore_tool_command(v: Version) -> Command {
    let mut c = Command::new(restore_tool(v));
    if v == Version::V34 {
        c.env("ETCDCTL_API", "3");
    }
    c
}

/// Runs a command, panicking with its stderr when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The real `lifeboat` binary, with no config file or env leaking in from the machine.
pub fn lifeboat() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    for (k, _) in std::env::vars() {
        if k.starts_with("LIFEBOAT_") && !k.starts_with("LIFEBOAT_TEST_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("LIFEBOAT_LOG_LEVEL", "warn");
    // Every writer signs and every reader checks, as in production (#11); tests of the
    // trust model override these with flags.
    let keys = test_keys();
    cmd.env("LIFEBOAT_SIGNING_KEY", &keys.secret)
        .env("LIFEBOAT_TRUSTED_KEYS", &keys.public);
    cmd
}

/// `lifeboat snapshot verify latest --dest DEST --identity IDENTITY`: the read-back check many
/// tests end with.
pub fn verify_latest(dest: &Path, identity: &Path) -> Command {
    let mut cmd = lifeboat();
    cmd.args(["snapshot", "verify", "latest", "--dest"])
        .arg(dest)
        .arg("--identity")
        .arg(identity);
    cmd
}

/// The test run's signing key pair (generated once per test binary).
pub struct TestKeys {
    pub secret: PathBuf,
    pub public: PathBuf,
}

pub fn test_keys() -> &'static TestKeys {
    static KEYS: std::sync::OnceLock<TestKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        // In cargo's scratch folder for integration tests (target/tmp), one per run.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("signing-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("signing.key");
        let (public, _) = lifeboat::trust::generate(&secret).unwrap();
        TestKeys { secret, public }
    })
}

/// Signs a manifest file again with the run's key, after a test changed it on purpose (as a
/// writer's bug would): the reader must then catch the change by its own checks.
pub fn resign(manifest: &Path) {
    let name = manifest.file_name().unwrap().to_str().unwrap();
    let bytes = std::fs::read(manifest).unwrap();
    let key = lifeboat::trust::SigningKey::from_file(&test_keys().secret).unwrap();
    let sig = key.sign(name, &bytes).unwrap();
    std::fs::write(format!("{}.minisig", manifest.display()), sig).unwrap();
}

/// A read policy that accepts unsigned manifests: for tests that commit through the library.
pub fn lenient_trust() -> std::sync::Arc<lifeboat::trust::ReadPolicy> {
    std::sync::Arc::new(
        lifeboat::trust::ReadPolicy::new(
            lifeboat::trust::TrustedKeys::default(),
            Some(chrono::Utc::now() + chrono::Duration::days(1)),
        )
        .unwrap(),
    )
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().expect("spawn lifeboat");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "lifeboat failed:\n{}\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// An age identity made by the real `age-keygen`, 0600.
pub struct AgeKey {
    pub identity_file: PathBuf,
    pub recipient: String,
}

pub fn age_key(dir: &Path, name: &str) -> AgeKey {
    let identity_file = dir.join(name);
    run_ok(Command::new("age-keygen").arg("-o").arg(&identity_file));
    let out = run_ok(Command::new("age-keygen").arg("-y").arg(&identity_file));
    AgeKey {
        identity_file,
        recipient: String::from_utf8(out.stdout).unwrap().trim().to_string(),
    }
}

/// Files in a folder, sorted, without dotfiles.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A free TCP port on 127.0.0.1 for a server a test starts.
///
/// Not the OS's pick (`bind(0)`): that comes from the ephemeral range (32768–60999), where any
/// outgoing connection of a parallel test can take the port between our pick and the server's
/// bind — which once left a cluster member unable to start. These come from below that range,
/// from one counter (no two tests of this run share a port), each checked free at the pick.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 12_000;
    const COUNT: u32 = 8_000;
    let start = std::process::id().wrapping_mul(97) % COUNT;
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % COUNT) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT);
}

/// `lifeboat snapshot save` of `etcd` into `<dir>/b` (scratch in `<dir>/w`), encrypted to
/// `recipient`; panics unless it succeeds.
pub fn save_into(etcd: &EtcdProcess, dir: &Path, recipient: &str) {
    let mut save = lifeboat();
    save.args(["snapshot", "save", "-r", recipient])
        .args(etcd.lifeboat_flags())
        .arg("--dest")
        .arg(dir.join("b"))
        .arg("--work-dir")
        .arg(dir.join("w"));
    run(&mut save).ok();
}
