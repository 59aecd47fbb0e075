//! Kubernetes-shaped data with the history a real cluster has: overwrites, deletes, leases,
//! a compaction, and writes after it.

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use lifeboat::etcd::{EtcdSettings, EtcdSource};

use super::EtcdProcess;

pub fn settings(etcd: &EtcdProcess) -> EtcdSettings {
    EtcdSettings {
        endpoints: vec![etcd.client_url.clone()],
        cacert: etcd.tls.as_ref().map(|p| p.ca_cert.clone()),
        cert: etcd.tls.as_ref().map(|p| p.client_cert.clone()),
        key: etcd.tls.as_ref().map(|p| p.client_key.clone()),
        connect_timeout: std::time::Duration::from_secs(5),
        request_timeout: std::time::Duration::from_secs(30),
        stall_timeout: std::time::Duration::from_secs(30),
        ..Default::default()
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub async fn client(etcd: &EtcdProcess) -> Client {
    EtcdSource::connect(&settings(etcd), &etcd.client_url)
        .await
        .unwrap()
        .client()
}

fn object(kind: &str, ns: &str, name: &str, generation: u32, pad: usize) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"{kind}","metadata":{{"name":"{name}","namespace":"{ns}","generation":{generation},"labels":{{"app":"{name}"}}}},"data":{{"payload":"{}"}}}}"#,
        "x".repeat(pad)
    )
}

/// Fills etcd; `extra_bytes` adds large values (for tests that need a snapshot of some size).
/// Returns the revision after the last write.
pub fn fill(etcd: &EtcdProcess, extra_bytes: usize) -> i64 {
    rt().block_on(async {
        let mut c = client(etcd).await;
        for i in 0..40 {
            let ns = format!("ns{}", i % 4);
            let key = format!("/registry/configmaps/{ns}/cm{i}");
            c.put(
                key,
                object("ConfigMap", &ns, &format!("cm{i}"), 1, 200 + i * 37),
                None,
            )
            .await
            .unwrap();
        }
        for i in 0..15 {
            let key = format!("/registry/secrets/kube-system/s{i}");
            c.put(
                key,
                object("Secret", "kube-system", &format!("s{i}"), 1, 64),
                None,
            )
            .await
            .unwrap();
        }
        for round in 2..4 {
            for i in (0..40).step_by(2) {
                let ns = format!("ns{}", i % 4);
                let key = format!("/registry/configmaps/{ns}/cm{i}");
                c.put(
                    key,
                    object("ConfigMap", &ns, &format!("cm{i}"), round, 300),
                    None,
                )
                .await
                .unwrap();
            }
        }
        for i in 0..5 {
            c.delete(format!("/registry/secrets/kube-system/s{i}"), None)
                .await
                .unwrap();
        }
        let lease = c.lease_grant(600, None).await.unwrap().id();
        for i in 0..6 {
            c.put(
                format!("/registry/events/default/ev{i}"),
                object("Event", "default", &format!("ev{i}"), 1, 90),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();
        }
        // A transaction with several puts gives revisions with sub > 0.
        let txn = Txn::new()
            .when([Compare::version(
                "/registry/leases/kube-system/lock",
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put("/registry/leases/kube-system/lock", "holder-a", None),
                TxnOp::put("/registry/leases/kube-system/lock2", "holder-b", None),
            ]);
        c.txn(txn).await.unwrap();
        let rev = c.get("/", None).await.unwrap().header().unwrap().revision();
        c.compact(rev - 20, None).await.unwrap();
        for i in 0..3 {
            c.put(
                format!("/registry/secrets/kube-system/s{i}"),
                object("Secret", "kube-system", &format!("s{i}"), 2, 64),
                None,
            )
            .await
            .unwrap();
        }
        c.delete("/registry/configmaps/ns1/cm1", None)
            .await
            .unwrap();
        let mut chunk = 0;
        let mut added = 0;
        while added < extra_bytes {
            let v = format!("{chunk:08}").repeat(2500); // 20 KB
            added += v.len();
            c.put(format!("/registry/pods/big/p{chunk}"), v, None)
                .await
                .unwrap();
            chunk += 1;
        }
        c.get("/", None).await.unwrap().header().unwrap().revision()
    })
}

/// key, value, create revision, mod revision, version.
pub type Kv = (Vec<u8>, Vec<u8>, i64, i64, i64);

/// Every key of the member with value and revisions, and the member's revision.
pub fn dump(etcd: &EtcdProcess) -> (Vec<Kv>, i64) {
    rt().block_on(async {
        let mut c = client(etcd).await;
        let r = c
            .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
            .await
            .unwrap();
        let rev = r.header().unwrap().revision();
        let kvs = r
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key().to_vec(),
                    kv.value().to_vec(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                )
            })
            .collect();
        (kvs, rev)
    })
}
