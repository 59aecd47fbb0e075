//! A real S3 server: SeaweedFS (`weed mini`) on 127.0.0.1 with SigV4 credentials, killed by
//! PID on Drop.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::tool;

pub struct S3Server {
    child: Child,
    pub endpoint: String,
    /// `https://…` when started with TLS.
    pub tls_endpoint: Option<String>,
    pub access_key: String,
    pub secret_key: String,
    /// With `start_with_roles`: the node's and the pruner's credentials, limited by the IAM
    /// policies in deploy/iam/ (the admin keys above can do anything).
    pub node: Option<Keys>,
    pub pruner: Option<Keys>,
    /// The shadow's (deploy/iam/shadow-policy.json): its bases and proofs, nothing else.
    pub shadow: Option<Keys>,
    _dir: tempfile::TempDir,
}

#[derive(Clone)]
pub struct Keys {
    pub access_key: String,
    pub secret_key: String,
}

impl Keys {
    fn random(tag: &str) -> Keys {
        Keys {
            access_key: format!("{tag}{:016x}", rand::random::<u64>()),
            secret_key: format!("SK{:032x}", rand::random::<u128>()),
        }
    }
}

/// Which identities the server knows.
#[derive(Clone, Copy, PartialEq)]
enum Identities {
    AdminOnly,
    WithRoles,
}

fn weed_bin() -> std::path::PathBuf {
    tool(
        "LIFEBOAT_TEST_WEED_BIN",
        &["~/.cache/etcd-lifeboat-deps/seaweedfs/bin/weed"],
    )
}

/// A port P such that P-3..=P and their gRPC twins (+10000) are all free, all below the
/// ephemeral range (see `free_port`): P from 20003..22767, twins up to 32767, one counter.
fn port_block() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const BLOCKS: u32 = 690;
    let start = std::process::id().wrapping_mul(31) % BLOCKS;
    for _ in 0..BLOCKS {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = (20_003 + 4 * ((start + n) % BLOCKS)) as u16;
        let all_free = (p - 3..=p)
            .chain(p + 10_000 - 3..=p + 10_000)
            .all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok());
        if all_free {
            return p;
        }
    }
    panic!("no free block of ports for SeaweedFS");
}

impl S3Server {
    pub fn start() -> S3Server {
        S3Server::start_with(None, Identities::AdminOnly)
    }

    /// Also serves S3 over HTTPS with the server certificate of `pki`.
    pub fn start_tls(pki: &super::Pki) -> S3Server {
        S3Server::start_with(Some(pki), Identities::AdminOnly)
    }

    /// Also knows a node, a pruner and a shadow identity, each allowed what the IAM policy of its name
    /// in deploy/iam/ allows (SeaweedFS evaluates attached IAM policies).
    pub fn start_with_roles() -> S3Server {
        S3Server::start_with(None, Identities::WithRoles)
    }

    fn start_with(pki: Option<&super::Pki>, ids: Identities) -> S3Server {
        let mut last = String::new();
        for _ in 0..3 {
            match try_start(pki, ids) {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("SeaweedFS did not start: {last}");
    }

    /// The env a `lifeboat` command needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// `--s3-endpoint URL --s3-path-style`.
    pub fn flags(&self) -> Vec<String> {
        vec![
            format!("--s3-endpoint={}", self.endpoint),
            "--s3-path-style".into(),
        ]
    }

    /// The env a `lifeboat` command needs to reach this server with other credentials.
    pub fn env_as(&self, keys: &Keys) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        env[0].1 = keys.access_key.clone();
        env[1].1 = keys.secret_key.clone();
        env
    }

    pub async fn client(&self) -> aws_sdk_s3::Client {
        self.client_as(&Keys {
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
        })
        .await
    }

    pub async fn client_as(&self, keys: &Keys) -> aws_sdk_s3::Client {
        let creds = aws_credential_types::Credentials::new(
            &keys.access_key,
            &keys.secret_key,
            None,
            None,
            "test",
        );
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(creds)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Creates a bucket, retrying while the server finishes starting.
    pub async fn create_bucket(&self, name: &str) {
        self.create(name, false).await
    }

    /// Creates a bucket with S3 Object Lock enabled (and so versioning).
    pub async fn create_locked_bucket(&self, name: &str) {
        self.create(name, true).await
    }

    async fn create(&self, name: &str, object_lock: bool) {
        let client = self.client().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let req = client
                .create_bucket()
                .bucket(name)
                .set_object_lock_enabled_for_bucket(object_lock.then_some(true));
            match req.send().await {
                Ok(_) => return,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!(
                    "create bucket {name}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                ),
            }
        }
    }

    /// Unfinished multipart uploads in a bucket.
    pub async fn multipart_uploads(&self, bucket: &str) -> usize {
        let out = self
            .client()
            .await
            .list_multipart_uploads()
            .bucket(bucket)
            .send()
            .await
            .unwrap();
        out.uploads().len()
    }

    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        let out = self
            .client()
            .await
            .list_objects_v2()
            .bucket(bucket)
            .send()
            .await
            .unwrap();
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(String::from))
            .collect()
    }

    pub async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let out = self
            .client()
            .await
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        out.body.collect().await.unwrap().into_bytes().to_vec()
    }
}

/// An identity allowed what the policy `deploy/iam/<role>-policy.json` allows.
fn role_identity(role: &str, keys: &Keys) -> (serde_json::Value, serde_json::Value) {
    let policy = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/iam")
        .join(format!("{role}-policy.json"));
    let content = std::fs::read_to_string(&policy).unwrap();
    let name = format!("lifeboat-{role}");
    (
        serde_json::json!({
            "name": role,
            "credentials": [{"accessKey": keys.access_key, "secretKey": keys.secret_key}],
            "policyNames": [name],
        }),
        serde_json::json!({"name": name, "content": content}),
    )
}

fn try_start(pki: Option<&super::Pki>, ids: Identities) -> Result<S3Server, String> {
    let dir = tempfile::tempdir().unwrap();
    let p = port_block();
    let admin = Keys::random("AK");
    let mut identities = vec![serde_json::json!({
        "name": "lifeboat-test",
        "credentials": [{"accessKey": admin.access_key, "secretKey": admin.secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    })];
    let mut policies = Vec::new();
    let (node, pruner, shadow) = match ids {
        Identities::AdminOnly => (None, None, None),
        Identities::WithRoles => {
            let (node, pruner, shadow) = (
                Keys::random("NODE"),
                Keys::random("PRUNER"),
                Keys::random("SHADOW"),
            );
            for (role, keys) in [("node", &node), ("pruner", &pruner), ("shadow", &shadow)] {
                let (identity, policy) = role_identity(role, keys);
                identities.push(identity);
                policies.push(policy);
            }
            (Some(node), Some(pruner), Some(shadow))
        }
    };
    let config = dir.path().join("identities.json");
    std::fs::write(
        &config,
        serde_json::json!({"identities": identities, "policies": policies}).to_string(),
    )
    .unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let log = std::fs::File::create(dir.path().join("weed.log")).unwrap();
    let https_port = pki.map(|_| super::free_port());
    let mut cmd = Command::new(weed_bin());
    cmd.arg("mini");
    if let (Some(pki), Some(port)) = (pki, https_port) {
        cmd.arg(format!("-s3.port.https={port}"))
            .arg(format!("-s3.cert.file={}", pki.server_cert.display()))
            .arg(format!("-s3.key.file={}", pki.server_key.display()));
    }
    let child = cmd
        .arg(format!("-dir={}", data.display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
        .arg(format!("-master.port={}", p - 3))
        .arg(format!("-volume.port={}", p - 2))
        .arg(format!("-filer.port={}", p - 1))
        .arg(format!("-s3.port={p}"))
        .args([
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
        ])
        .arg(format!("-s3.config={}", config.display()))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn weed: {e}"))?;
    let mut server = S3Server {
        child,
        endpoint: format!("http://127.0.0.1:{p}"),
        tls_endpoint: https_port.map(|port| format!("https://127.0.0.1:{port}")),
        access_key: admin.access_key,
        secret_key: admin.secret_key,
        node,
        pruner,
        shadow,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!("weed exited with {status}"));
        }
        let https_up = https_port.is_none_or(|q| TcpStream::connect(("127.0.0.1", q)).is_ok());
        if TcpStream::connect(("127.0.0.1", p)).is_ok() && https_up {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("S3 port not open within 30 s".into())
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
