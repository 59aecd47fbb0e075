//! A real S3 server: SeaweedFS (`weed mini`) on 127.0.0.1 with SigV4 credentials, killed by
//! PID on Drop.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tool;

pub struct S3Server {
    child: Child,
    pub endpoint: String,
    /// `https://…` when started with TLS.
    pub tls_endpoint: Option<String>,
    pub access_key: String,
    pub secret_key: String,
    _dir: tempfile::TempDir,
}

fn weed_bin() -> std::path::PathBuf {
    tool(
        "LIFEBOAT_TEST_WEED_BIN",
        &["~/.cache/etcd-lifeboat-deps/seaweedfs/bin/weed"],
    )
}

/// A port P such that P-3..=P and their gRPC twins (+10000) are all free.
fn port_block() -> u16 {
    for _ in 0..200 {
        let p = 20_000 + (rand::random::<u16>() % 20_000);
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
        S3Server::start_with(None)
    }

    /// Also serves S3 over HTTPS with the server certificate of `pki`.
    pub fn start_tls(pki: &super::Pki) -> S3Server {
        S3Server::start_with(Some(pki))
    }

    fn start_with(pki: Option<&super::Pki>) -> S3Server {
        let mut last = String::new();
        for _ in 0..3 {
            match try_start(pki) {
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

    pub async fn client(&self) -> aws_sdk_s3::Client {
        let creds = aws_credential_types::Credentials::new(
            &self.access_key,
            &self.secret_key,
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
        let client = self.client().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client.create_bucket().bucket(name).send().await {
                Ok(_) => return,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
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

fn try_start(pki: Option<&super::Pki>) -> Result<S3Server, String> {
    let dir = tempfile::tempdir().unwrap();
    let p = port_block();
    let access_key = format!("AK{:016x}", rand::random::<u64>());
    let secret_key = format!("SK{:032x}", rand::random::<u128>());
    let identities = serde_json::json!({"identities": [{
        "name": "lifeboat-test",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]});
    let config = dir.path().join("identities.json");
    std::fs::write(&config, identities.to_string()).unwrap();
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
        access_key,
        secret_key,
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
