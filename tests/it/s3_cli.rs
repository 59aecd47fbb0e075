//! Every `snapshot` subcommand with an S3 destination (a real SeaweedFS), credentials from the
//! standard AWS chain: environment variables, shared files, and a web identity (IRSA) through a
//! stand-in STS.

use crate::harness::data::{fill, rt};
use crate::harness::s3::S3Server;
use crate::harness::{age_key, files_in, lifeboat, run, EtcdProcess, Version};

/// Runs `cmd` under a shell that then prints its own I/O counters: the kernel adds a reaped
/// child's counters to its parent's, so `write_bytes` is what the command caused to be
/// written to disk (page cache included).
fn run_counting_disk_writes(cmd: &std::process::Command) -> (crate::harness::Run, u64) {
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c")
        .arg(r#""$@"; s=$?; grep '^write_bytes' /proc/$$/io >&2; exit $s"#)
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    let r = run(&mut sh);
    let written = r
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no I/O counters: {}", r.stderr));
    (r, written)
}

fn with_s3(cmd: &mut std::process::Command, server: &S3Server, dest: &str) {
    cmd.arg(format!("--dest={dest}")).args(server.flags());
    for (k, v) in server.env() {
        cmd.env(k, v);
    }
}

#[test]
fn save_list_verify_and_get_work_against_s3() {
    let server = S3Server::start();
    rt().block_on(server.create_bucket("etcd-backups"));
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let etcd = EtcdProcess::start(Version::V35, None);
    // Larger than one 8 MiB part after compression, so the upload is multipart.
    crate::harness::data::rt().block_on(async {
        let mut c = crate::harness::data::client(&etcd).await;
        for i in 0..400 {
            let v: Vec<u8> = (0..30_000).map(|_| rand::random::<u8>()).collect();
            c.put(format!("/registry/secrets/big/{i}"), v, None)
                .await
                .unwrap();
        }
    });
    fill(&etcd, 0);
    let dest = "s3://etcd-backups/clusters/prod";
    let mut save = lifeboat();
    save.args(["snapshot", "save", "-w", "json", "-r", &key.recipient])
        .args(etcd.lifeboat_flags())
        .arg("--work-dir")
        .arg(dir.path().join("w"));
    with_s3(&mut save, &server, dest);
    let (saved, written) = run_counting_disk_writes(&save);
    let m = saved.ok().json();
    assert!(
        m["object"]["size"].as_u64().unwrap() > 8 << 20,
        "multipart-sized: {m}"
    );
    let db = m["plain_size"].as_u64().unwrap();
    assert!(
        written <= db / 100,
        "an S3 backup writes at most 1 % of the database to disk: {written} of {db}"
    );
    assert_eq!(m["hashkv"]["checked"], true);
    let id = m["id"].as_str().unwrap();
    let mut keys = rt().block_on(server.keys("etcd-backups"));
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("clusters/prod/{}", m["object"]["key"].as_str().unwrap()),
            format!("clusters/prod/{id}.manifest.json"),
            format!("clusters/prod/{id}.manifest.json.minisig"),
        ]
    );
    assert_eq!(rt().block_on(server.multipart_uploads("etcd-backups")), 0);

    let mut list = lifeboat();
    list.args(["snapshot", "list", "-w", "json"]);
    with_s3(&mut list, &server, dest);
    assert_eq!(run(&mut list).ok().json()[0]["id"], id);

    let mut verify = lifeboat();
    verify
        .args(["snapshot", "verify", "latest", "-i"])
        .arg(&key.identity_file)
        .arg("--work-dir")
        .arg(dir.path().join("w"));
    with_s3(&mut verify, &server, dest);
    let (verified, written) = run_counting_disk_writes(&verify);
    verified.ok();
    assert!(
        written <= db / 100,
        "verify checks in the stream and writes nothing: {written} of {db}"
    );
    assert!(files_in(&dir.path().join("w")).is_empty());

    let out = dir.path().join("snap.db");
    let mut get = lifeboat();
    get.args(["snapshot", "get", id, "-i"])
        .arg(&key.identity_file)
        .arg("-o")
        .arg(&out);
    with_s3(&mut get, &server, dest);
    let (got, written) = run_counting_disk_writes(&get);
    got.ok();
    assert!(
        written >= db,
        "the counters see a child's writes: {written} of {db}"
    );
    let status = run(lifeboat()
        .args(["snapshot", "status", "-w", "json"])
        .arg(&out))
    .ok()
    .json();
    assert_eq!(status, m["status"]);
}

#[test]
fn wrong_credentials_and_a_missing_bucket_are_one_clear_line_with_exit_5() {
    let server = S3Server::start();
    rt().block_on(server.create_bucket("bkt"));
    let mut cmd = lifeboat();
    cmd.args(["snapshot", "list"]);
    with_s3(&mut cmd, &server, "s3://bkt/x");
    cmd.env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let r = run(&mut cmd);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(
        r.stderr.contains("SignatureDoesNotMatch")
            || r.stderr.contains("AccessDenied")
            || r.stderr.contains("InvalidAccessKeyId"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("credentials"), "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(!r.stderr.contains("not-the-secret"));

    let mut cmd = lifeboat();
    cmd.args(["snapshot", "list"]);
    with_s3(&mut cmd, &server, "s3://missing-bucket/x");
    let r = run(&mut cmd);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(
        r.stderr.contains("NoSuchBucket") && r.stderr.contains("missing-bucket"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
}

#[test]
fn credentials_come_from_the_shared_files_of_the_standard_chain() {
    let server = S3Server::start();
    rt().block_on(server.create_bucket("shared"));
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let etcd = EtcdProcess::start(Version::V35, None);
    etcd.put("/registry/a", "1");
    // ~/.aws/credentials and ~/.aws/config, as an SRE's workstation or an instance has them.
    let credentials = dir.path().join("credentials");
    let config = dir.path().join("config");
    std::fs::write(
        &credentials,
        format!(
            "[backups]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            server.access_key, server.secret_key
        ),
    )
    .unwrap();
    std::fs::write(&config, "[profile backups]\nregion = us-east-1\n").unwrap();
    let mut save = lifeboat();
    save.args(["snapshot", "save", "-w", "json", "-r", &key.recipient])
        .args(etcd.lifeboat_flags())
        .arg("--work-dir")
        .arg(dir.path().join("w"))
        .arg("--dest=s3://shared/x")
        .args(server.flags())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_REGION")
        .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_PROFILE", "backups")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let m = run(&mut save).ok().json();
    assert_eq!(m["hashkv"]["checked"], true);
    assert_eq!(
        rt().block_on(server.keys("shared")).len(),
        3,
        "object, manifest, signature"
    );
    // The same files with a wrong secret: refused by the server, one clear line.
    std::fs::write(
        &credentials,
        format!(
            "[backups]\naws_access_key_id = {}\naws_secret_access_key = wrong\n",
            server.access_key
        ),
    )
    .unwrap();
    let r = run(&mut save);
    assert_eq!(r.code, 5, "{}", r.stderr);
}

/// A stand-in for AWS STS (cannot run here): answers AssumeRoleWithWebIdentity with the S3
/// server's keys, and records the form it was sent.
const STS_STAND_IN: &str = r#"
import http.server, sys, urllib.parse
port, ak, sk, log = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        form = urllib.parse.parse_qs(body)
        with open(log, "a") as f:
            f.write(form.get("Action", [""])[0] + " " + form.get("RoleArn", [""])[0] + " " + form.get("WebIdentityToken", [""])[0] + "\n")
        xml = f'''<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>{ak}</AccessKeyId><SecretAccessKey>{sk}</SecretAccessKey><SessionToken>session-token</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials><AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/lifeboat/s</Arn><AssumedRoleId>AROA:s</AssumedRoleId></AssumedRoleUser></AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>'''.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(xml)))
        self.end_headers()
        self.wfile.write(xml)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

#[test]
fn credentials_come_from_a_web_identity_as_with_irsa() {
    let server = S3Server::start();
    rt().block_on(server.create_bucket("irsa"));
    // SeaweedFS does not know STS sessions, so it refuses the temporary keys; what is checked
    // is that the standard chain fetched them from STS and signed the S3 requests with them.
    let proxy = crate::harness::http_fault::FaultProxy::start(&server.endpoint, |_, _| None);
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    let etcd = EtcdProcess::start(Version::V35, None);
    etcd.put("/registry/a", "1");
    let port = crate::harness::free_port();
    let log = dir.path().join("sts.log");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _sts = Kill(
        std::process::Command::new("python3")
            .args([
                "-c",
                STS_STAND_IN,
                &port.to_string(),
                &server.access_key,
                &server.secret_key,
            ])
            .arg(&log)
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "STS stand-in did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // What EKS injects into a pod with IRSA.
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJ-projected-service-account-token").unwrap();
    let mut save = lifeboat();
    save.args(["snapshot", "save", "-w", "json", "-r", &key.recipient])
        .args(etcd.lifeboat_flags())
        .arg("--work-dir")
        .arg(dir.path().join("w"))
        .arg("--dest=s3://irsa/x")
        .arg(format!("--s3-endpoint={}", proxy.endpoint))
        .arg("--s3-path-style")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/lifeboat")
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token)
        .env("AWS_ENDPOINT_URL_STS", format!("http://127.0.0.1:{port}"))
        .env("AWS_CONFIG_FILE", dir.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let r = run(&mut save);
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        calls.starts_with(
            "AssumeRoleWithWebIdentity arn:aws:iam::123456789012:role/lifeboat eyJ-projected-service-account-token"
        ),
        "{calls}"
    );
    let heads = proxy.heads();
    assert!(!heads.is_empty());
    for h in &heads {
        let lower = h.to_ascii_lowercase();
        assert!(
            lower.contains(&format!(
                "credential={}/",
                server.access_key.to_ascii_lowercase()
            )) && lower.contains("x-amz-security-token: session-token"),
            "an S3 request not signed with the STS credentials: {h}"
        );
    }
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert_eq!(
        r.stderr
            .lines()
            .filter(|l| l.starts_with("lifeboat: error"))
            .count(),
        1
    );
}
