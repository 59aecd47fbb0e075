//! S3 faults through a proxy in front of SeaweedFS: transient errors, cut bodies and stalls are
//! retried and the backup succeeds; a persistent failure fails the backup cleanly, with no
//! manifest, no object and no multipart upload left behind.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::harness::data::rt;
use crate::harness::http_fault::{FaultProxy, HttpFault};
use crate::harness::s3::S3Server;
use crate::harness::{age_key, lifeboat, run, EtcdProcess, Run, Version};

struct Setup {
    server: S3Server,
    etcd: EtcdProcess,
    dir: tempfile::TempDir,
    recipient: String,
    identity: std::path::PathBuf,
}

/// etcd with ~12 MiB of incompressible values: three 5 MiB parts.
fn setup() -> Setup {
    let server = S3Server::start();
    rt().block_on(server.create_bucket("faulty"));
    let etcd = EtcdProcess::start(Version::V35, None);
    rt().block_on(async {
        let mut c = crate::harness::data::client(&etcd).await;
        for i in 0..12 {
            let v: Vec<u8> = (0..1_000_000).map(|_| rand::random::<u8>()).collect();
            c.put(format!("/registry/secrets/big/{i}"), v, None)
                .await
                .unwrap();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let key = age_key(dir.path(), "key.txt");
    Setup {
        server,
        etcd,
        recipient: key.recipient,
        identity: key.identity_file,
        dir,
    }
}

impl Setup {
    fn save_through(&self, proxy: &FaultProxy) -> Run {
        let config = self.dir.path().join("lifeboat.toml");
        std::fs::write(
            &config,
            format!(
                "[backup]\ndest = \"s3://faulty/p\"\nwork_dir = \"{}\"\n[s3]\nendpoint = \"{}\"\npath_style = true\npart_size_mib = 5\nrequest_timeout = \"3s\"\nmax_attempts = 4\n",
                self.dir.path().join("w").display(),
                proxy.endpoint
            ),
        )
        .unwrap();
        let mut cmd = lifeboat();
        cmd.args([
            "snapshot",
            "save",
            "-w",
            "json",
            "-r",
            &self.recipient,
            "--config",
        ])
        .arg(&config)
        .args(self.etcd.lifeboat_flags());
        for (k, v) in self.server.env() {
            cmd.env(k, v);
        }
        run(&mut cmd)
    }

    fn verify_direct(&self) {
        let mut cmd = lifeboat();
        cmd.args([
            "snapshot",
            "verify",
            "latest",
            "--dest",
            "s3://faulty/p",
            "-i",
        ])
        .arg(&self.identity)
        .arg("--work-dir")
        .arg(self.dir.path().join("w"))
        .args(self.server.flags());
        for (k, v) in self.server.env() {
            cmd.env(k, v);
        }
        run(&mut cmd).ok();
    }

    fn assert_bucket_clean(&self) {
        assert!(rt().block_on(self.server.keys("faulty")).is_empty());
        assert_eq!(rt().block_on(self.server.multipart_uploads("faulty")), 0);
    }
}

fn is_part_upload(line: &str) -> bool {
    line.starts_with("PUT ") && line.contains("partNumber=")
}

#[test]
fn transient_5xx_answers_are_retried_and_the_backup_succeeds() {
    let s = setup();
    let injected = Arc::new(AtomicUsize::new(0));
    let counter = injected.clone();
    let proxy = FaultProxy::start(&s.server.endpoint, move |_, line| {
        // The first two part uploads get 503, the completion's first attempt 500.
        let failed = counter.load(Ordering::SeqCst);
        let completion = line.starts_with("POST ") && line.contains("uploadId=");
        if (is_part_upload(line) && failed < 2) || (completion && failed == 2) {
            counter.fetch_add(1, Ordering::SeqCst);
            return Some(HttpFault::Status(if failed < 2 { 503 } else { 500 }));
        }
        None
    });
    let m = s.save_through(&proxy).ok().json();
    assert_eq!(
        injected.load(Ordering::SeqCst),
        3,
        "all three faults were injected"
    );
    assert!(m["object"]["size"].as_u64().unwrap() > 10 << 20);
    s.verify_direct();
    assert_eq!(rt().block_on(s.server.multipart_uploads("faulty")), 0);
}

#[test]
fn a_body_cut_off_mid_part_is_retried() {
    let s = setup();
    let injected = Arc::new(AtomicUsize::new(0));
    let counter = injected.clone();
    let proxy = FaultProxy::start(&s.server.endpoint, move |_, line| {
        (is_part_upload(line) && counter.fetch_add(1, Ordering::SeqCst) == 0)
            .then_some(HttpFault::CutBody(1 << 20))
    });
    s.save_through(&proxy).ok();
    assert!(
        injected.load(Ordering::SeqCst) > 3,
        "the cut part was sent again"
    );
    s.verify_direct();
}

#[test]
fn a_stalled_request_times_out_and_is_retried() {
    let s = setup();
    let injected = Arc::new(AtomicUsize::new(0));
    let counter = injected.clone();
    let proxy = FaultProxy::start(&s.server.endpoint, move |_, line| {
        (is_part_upload(line) && counter.fetch_add(1, Ordering::SeqCst) == 0)
            .then_some(HttpFault::Stall)
    });
    s.save_through(&proxy).ok();
    assert!(
        injected.load(Ordering::SeqCst) > 3,
        "the stalled part was sent again"
    );
    s.verify_direct();
}

#[test]
fn a_persistent_failure_fails_cleanly_without_manifest_or_multipart_upload() {
    let s = setup();
    let proxy = FaultProxy::start(&s.server.endpoint, move |_, line| {
        // Part 2 never goes through; everything else (including the abort) does.
        (is_part_upload(line) && line.contains("partNumber=2")).then_some(HttpFault::Status(500))
    });
    let r = s.save_through(&proxy);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("part 2"), "{}", r.stderr);
    assert!(proxy.requests() > 4, "retried");
    s.assert_bucket_clean();
    assert!(crate::harness::files_in(&s.dir.path().join("w")).is_empty());
}
