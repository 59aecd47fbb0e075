//! One conformance suite for every `Store`: the local folder and S3 (a real SeaweedFS).

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use lifeboat::store::{
    bytes_stream, ByteStream, LocalStore, S3Settings, S3Store, Store, StoreError,
};
use sha2::{Digest, Sha256};

use crate::harness::data::rt;
use crate::harness::s3::S3Server;

async fn read_all(store: &dyn Store, key: &str) -> Vec<u8> {
    let mut s = store.get(key).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

/// `n` bytes of a seeded pattern, delivered in uneven chunks.
fn patterned(n: usize, seed: u8) -> (Vec<u8>, ByteStream) {
    let data: Vec<u8> = (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(100_003)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    (data, Box::pin(futures::stream::iter(chunks)))
}

fn failing_after(n: usize) -> ByteStream {
    let (_, ok) = patterned(n, 9);
    Box::pin(ok.chain(futures::stream::once(async {
        Err(std::io::Error::other("producer died"))
    })))
}

async fn conformance(store: Arc<dyn Store>, large: usize) {
    // Small objects round-trip.
    store
        .put("etcd-a.obj", bytes_stream(Bytes::from_static(b"hello")))
        .await
        .unwrap();
    assert_eq!(read_all(store.as_ref(), "etcd-a.obj").await, b"hello");
    // Large objects (several parts on S3) round-trip byte for byte.
    let (data, body) = patterned(large, 1);
    assert_eq!(store.put("etcd-b.obj", body).await.unwrap(), large as u64);
    let back = read_all(store.as_ref(), "etcd-b.obj").await;
    assert_eq!(Sha256::digest(&back), Sha256::digest(&data));
    // Never overwritten.
    let again = store
        .put("etcd-a.obj", bytes_stream(Bytes::from_static(b"other")))
        .await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists { .. })),
        "{again:?}"
    );
    assert_eq!(read_all(store.as_ref(), "etcd-a.obj").await, b"hello");
    // State objects (a journal head) are replaced in place, the last write wins.
    for body in [&b"first"[..], b"second, longer"] {
        store
            .replace("state-h.json", Bytes::copy_from_slice(body))
            .await
            .unwrap();
        assert_eq!(read_all(store.as_ref(), "state-h.json").await, body);
    }
    store.delete("state-h.json").await.unwrap();
    // A failing producer leaves nothing, small or large.
    for (key, n) in [("etcd-c.obj", 10), ("etcd-d.obj", large)] {
        let err = store.put(key, failing_after(n)).await.unwrap_err();
        assert!(err.to_string().contains("producer died"), "{err}");
        assert!(matches!(
            store.get(key).await,
            Err(StoreError::NotFound { .. })
        ));
    }
    // Listing: prefix filter, sorted, sizes.
    store
        .put("other-x", bytes_stream(Bytes::from_static(b"x")))
        .await
        .unwrap();
    let listed: Vec<(String, u64)> = store
        .list("etcd-")
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("etcd-a.obj".to_string(), 5),
            ("etcd-b.obj".to_string(), large as u64)
        ]
    );
    assert_eq!(store.list("").await.unwrap().len(), 3);
    // Delete; deleting what is gone is fine; reading it is NotFound.
    store.delete("etcd-a.obj").await.unwrap();
    store.delete("etcd-a.obj").await.unwrap();
    assert!(matches!(
        store.get("etcd-a.obj").await,
        Err(StoreError::NotFound { .. })
    ));
    // Keys cannot escape.
    assert!(matches!(
        store.put("../x", bytes_stream(Bytes::new())).await,
        Err(StoreError::BadKey { .. })
    ));
    assert!(store.clean_incomplete().await.unwrap().is_empty());
}

#[test]
fn the_local_folder_conforms() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(conformance(
        Arc::new(LocalStore::open(dir.path()).unwrap()),
        12 << 20,
    ));
}

fn s3_settings(server: &S3Server, dir: &std::path::Path, bucket: &str, prefix: &str) -> S3Settings {
    let (ak, sk) = (dir.join("access-key"), dir.join("secret-key"));
    std::fs::write(&ak, &server.access_key).unwrap();
    std::fs::write(&sk, &server.secret_key).unwrap();
    let mut s = S3Settings::new(bucket, prefix);
    s.endpoint = Some(server.endpoint.clone());
    s.path_style = true;
    s.region = Some("us-east-1".into());
    s.access_key_file = Some(ak);
    s.secret_key_file = Some(sk);
    s.part_size = lifeboat::store::MIN_PART_SIZE;
    s.list_page_size = Some(2);
    s
}

#[test]
fn s3_on_seaweedfs_conforms_and_leaves_no_multipart_upload() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        server.create_bucket("backups").await;
        let store = S3Store::open(s3_settings(&server, dir.path(), "backups", "cluster-a"))
            .await
            .unwrap();
        conformance(Arc::new(store), 12 << 20).await;
        assert_eq!(server.multipart_uploads("backups").await, 0);
        for key in server.keys("backups").await {
            assert!(key.starts_with("cluster-a/"), "{key}");
        }
    });
}

#[test]
fn s3_key_files_are_reread_so_credentials_rotate_without_restart() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        server.create_bucket("rot").await;
        let settings = s3_settings(&server, dir.path(), "rot", "");
        std::fs::write(settings.secret_key_file.as_ref().unwrap(), "wrong-secret").unwrap();
        let store = S3Store::open(settings.clone()).await.unwrap();
        let err = store.list("").await.unwrap_err().to_string();
        assert!(
            err.contains("SignatureDoesNotMatch") || err.contains("credentials"),
            "{err}"
        );
        std::fs::write(
            settings.secret_key_file.as_ref().unwrap(),
            &server.secret_key,
        )
        .unwrap();
        store
            .put("etcd-r", bytes_stream(Bytes::from_static(b"ok")))
            .await
            .unwrap();
    });
}

#[test]
fn a_missing_bucket_is_one_clear_error() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = S3Store::open(s3_settings(&server, dir.path(), "no-such-bucket", ""))
            .await
            .unwrap();
        let err = store.list("").await.unwrap_err().to_string();
        assert!(err.contains("NoSuchBucket"), "{err}");
        assert!(err.contains("s3://no-such-bucket/"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    });
}

#[test]
fn s3_over_tls_with_a_private_ca_bundle() {
    let pki = crate::harness::Pki::generate();
    let server = S3Server::start_tls(&pki);
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        server.create_bucket("tls").await;
        let mut settings = s3_settings(&server, dir.path(), "tls", "p");
        settings.endpoint = server.tls_endpoint.clone();
        // Without the CA the server is not trusted.
        let untrusted = S3Store::open(settings.clone()).await.unwrap();
        let err = untrusted.list("").await.unwrap_err().to_string();
        eprintln!("UNTRUSTED: {err}");
        assert!(
            err.to_lowercase().contains("certificate")
                || err.contains("tls")
                || err.contains("dispatch"),
            "{err}"
        );
        settings.ca_bundle = Some(pki.ca_cert.clone());
        let store = S3Store::open(settings).await.unwrap();
        store
            .put(
                "etcd-tls.obj",
                bytes_stream(Bytes::from_static(b"over tls")),
            )
            .await
            .unwrap();
        assert_eq!(read_all(&store, "etcd-tls.obj").await, b"over tls");
    });
}

#[test]
fn s3_server_side_encryption_is_requested_when_configured() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        server.create_bucket("sse").await;
        let mut settings = s3_settings(&server, dir.path(), "sse", "");
        settings.sse = Some(lifeboat::store::Sse::Aes256);
        let store = S3Store::open(settings).await.unwrap();
        let (data, body) = patterned(12 << 20, 3);
        store.put("etcd-big.obj", body).await.unwrap();
        store
            .put("etcd-small.obj", bytes_stream(Bytes::from_static(b"small")))
            .await
            .unwrap();
        let client = server.client().await;
        for key in ["etcd-big.obj", "etcd-small.obj"] {
            let head = client
                .head_object()
                .bucket("sse")
                .key(key)
                .send()
                .await
                .unwrap();
            assert_eq!(
                head.server_side_encryption(),
                Some(&aws_sdk_s3::types::ServerSideEncryption::Aes256),
                "{key}"
            );
        }
        assert_eq!(
            Sha256::digest(read_all(&store, "etcd-big.obj").await),
            Sha256::digest(&data)
        );
    });
}

#[test]
fn s3_sse_kms_sends_the_key_id_on_single_and_multipart_uploads() {
    // No KMS can run here: what is checked is what reaches the wire — the headers AWS S3 acts
    // on — for both upload paths, through a recording proxy in front of SeaweedFS.
    let server = S3Server::start();
    let proxy = crate::harness::http_fault::FaultProxy::start(&server.endpoint, |_, _| None);
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        server.create_bucket("kms").await;
        let mut settings = s3_settings(&server, dir.path(), "kms", "");
        settings.endpoint = Some(proxy.endpoint.clone());
        settings.sse = Some(lifeboat::store::Sse::Kms("alias/etcd-backups".into()));
        let store = S3Store::open(settings).await.unwrap();
        let (_, body) = patterned(12 << 20, 5);
        let _ = store.put("etcd-big.obj", body).await;
        let _ = store
            .put("etcd-small.obj", bytes_stream(Bytes::from_static(b"small")))
            .await;
    });
    let heads = proxy.heads();
    let with_sse = |pred: &dyn Fn(&str) -> bool| {
        heads.iter().filter(|h| pred(h)).all(|h| {
            let h = h.to_ascii_lowercase();
            h.contains("x-amz-server-side-encryption: aws:kms")
                && h.contains("x-amz-server-side-encryption-aws-kms-key-id: alias/etcd-backups")
        }) && heads.iter().any(|h| pred(h))
    };
    assert!(
        with_sse(&|h: &str| h.starts_with("PUT ") && h.contains("etcd-small.obj")),
        "single PUT without SSE-KMS headers: {heads:#?}"
    );
    assert!(
        with_sse(
            &|h: &str| h.starts_with("POST ") && h.lines().next().unwrap_or("").contains("uploads")
        ),
        "CreateMultipartUpload without SSE-KMS headers: {heads:#?}"
    );
}

/// #21: with an Object Lock, every new object is locked, but an object replaced in place (a
/// journal head, a shadow's proof) is not: each locked replacement would be one more version
/// nobody could delete before its lock ends.
#[test]
fn s3_locks_new_objects_but_not_the_ones_it_replaces() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        server.create_locked_bucket("locked").await;
        let mut settings = s3_settings(&server, dir.path(), "locked", "c");
        settings.lock = Some(lifeboat::store::ObjectLock {
            mode: lifeboat::store::LockMode::Governance,
            period: std::time::Duration::from_secs(3600),
        });
        let store = S3Store::open(settings).await.unwrap();
        store
            .put("etcd-new.db", bytes_stream(bytes::Bytes::from_static(b"x")))
            .await
            .unwrap();
        store
            .replace("seg.c.head.json", bytes::Bytes::from_static(b"{}"))
            .await
            .unwrap();
        store
            .replace("seg.c.head.json", bytes::Bytes::from_static(b"{ }"))
            .await
            .unwrap();
        assert!(store.lock_of("etcd-new.db").await.unwrap().is_some());
        assert_eq!(store.lock_of("seg.c.head.json").await.unwrap(), None);
    });
}
