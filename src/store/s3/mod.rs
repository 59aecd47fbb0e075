//! S3 (and MinIO, Ceph, SeaweedFS, R2 …) as a store, with aws-sdk-s3.
//!
//! `put` streams: the body is cut into parts of `part_size` and uploaded as a multipart upload
//! with at most `parts_in_flight` parts in memory at once (a body smaller than one part is a
//! single PutObject). Any failure — of the producer or of S3 — aborts the multipart upload, so
//! nothing is left behind. New objects are written with `If-None-Match: *`, so two writers can
//! never overwrite each other. Retries with backoff on 5xx, throttling and timeouts come from the
//! SDK's standard retry policy; each attempt has its own timeout.
//!
//! Credentials come from the standard AWS chain (env, shared files, web identity/IRSA, instance
//! metadata), or from two key files re-read on every request (rotation without restart).

use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, IdentityCache, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};

mod clock;
mod lock;
mod settings;

use settings::KeyFiles;
pub use settings::{LockMode, ObjectLock, S3Settings, Sse};

use super::{valid_key, ByteStream, Lock, ObjectInfo, Store, StoreError};

/// S3 part size floor (except the last part), from the S3 API.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

pub struct S3Store {
    client: Client,
    settings: S3Settings,
    /// Set once the bucket was found able to hold the configured Object Lock.
    lock_checked: tokio::sync::OnceCell<()>,
}

impl S3Store {
    /// Builds the client. Nothing is sent until the first call.
    ///
    /// # Errors
    /// An unreadable CA bundle, or key files given one without the other.
    pub async fn open(settings: S3Settings) -> Result<S3Store, StoreError> {
        let location = location(&settings);
        let other = |what: &str, detail: String| StoreError::Other {
            location: location.clone(),
            what: what.to_string(),
            source: std::io::Error::other(detail),
        };
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        match (&settings.access_key_file, &settings.secret_key_file) {
            (Some(a), Some(s)) => {
                loader = loader.credentials_provider(KeyFiles {
                    access_key: a.clone(),
                    secret_key: s.clone(),
                });
                // Key files are re-read on every request: no caching.
                loader = loader.identity_cache(IdentityCache::no_cache());
            }
            (None, None) => {}
            _ => {
                return Err(other(
                    "configuring credentials",
                    "s3.access_key_file and s3.secret_key_file go together".into(),
                ))
            }
        }
        if let Some(ca) = &settings.ca_bundle {
            let pem = std::fs::read(ca)
                .map_err(|e| other("reading the CA bundle", format!("{}: {e}", ca.display())))?;
            let trust = aws_smithy_http_client::tls::TrustStore::empty()
                .with_native_roots(false)
                .with_pem_certificate(pem);
            let tls = aws_smithy_http_client::tls::TlsContext::builder()
                .with_trust_store(trust)
                .build()
                .map_err(|e| other("configuring TLS", e.to_string()))?;
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::AwsLc,
                ))
                .tls_context(tls)
                .build_https();
            loader = loader.http_client(http);
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.path_style)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(settings.max_attempts)
                    .with_initial_backoff(Duration::from_millis(200)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(settings.attempt_timeout)
                    .build(),
            );
        if shared.region().is_none() {
            config = config.region(Region::new("us-east-1"));
        }
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        config = config.interceptor(clock::ClockCheck::default());
        Ok(S3Store {
            client: Client::from_conf(config.build()),
            settings,
            lock_checked: tokio::sync::OnceCell::new(),
        })
    }

    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        if !valid_key(key) {
            return Err(StoreError::BadKey {
                location: self.location(),
                key: key.to_string(),
            });
        }
        Ok(format!("{}{key}", self.settings.prefix))
    }

    fn sdk_err<E, R>(&self, what: String, e: SdkError<E, R>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        StoreError::Other {
            location: self.location(),
            what,
            source: std::io::Error::other(describe_sdk_error(&e)),
        }
    }

    async fn exists(&self, full: &str) -> Result<bool, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(full)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(false),
            Err(e) => Err(self.sdk_err(format!("checking {full}"), e)),
        }
    }

    /// One PUT; unless `overwrite`, only where no object exists yet.
    async fn put_single(
        &self,
        full: &str,
        key: &str,
        body: Bytes,
        overwrite: bool,
    ) -> Result<u64, StoreError> {
        let len = body.len() as u64;
        let mut req = self
            .client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(full)
            .set_if_none_match((!overwrite).then(|| "*".to_string()))
            .body(SdkStream::from(body));
        req = match &self.settings.sse {
            Some(Sse::Aes256) => req.server_side_encryption(ServerSideEncryption::Aes256),
            Some(Sse::Kms(id)) => req
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(id),
            None => req,
        };
        // An object replaced in place (a journal head, a shadow's proof: state, not history)
        // is not locked (#21): every replacement would leave one more locked version, ~20,000
        // a day per chain, that nothing could delete before its lock ends.
        if let Some(lock) = self.settings.lock.as_ref().filter(|_| !overwrite) {
            let (mode, until) = lock::retention(lock);
            req = req
                .object_lock_mode(mode)
                .object_lock_retain_until_date(until);
        }
        match req.send().await {
            Ok(_) => Ok(len),
            Err(e) if is_precondition_failed(&e) => Err(StoreError::AlreadyExists {
                location: self.location(),
                key: key.to_string(),
            }),
            Err(e) => Err(self.sdk_err(format!("uploading {key}"), e)),
        }
    }

    async fn put_multipart(
        &self,
        full: &str,
        key: &str,
        first: Bytes,
        body: &mut ByteStream,
    ) -> Result<u64, StoreError> {
        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(full);
        create = match &self.settings.sse {
            Some(Sse::Aes256) => create.server_side_encryption(ServerSideEncryption::Aes256),
            Some(Sse::Kms(id)) => create
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(id),
            None => create,
        };
        if let Some(lock) = &self.settings.lock {
            let (mode, until) = lock::retention(lock);
            create = create
                .object_lock_mode(mode)
                .object_lock_retain_until_date(until);
        }
        let upload = create
            .send()
            .await
            .map_err(|e| self.sdk_err(format!("starting the upload of {key}"), e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_string();
        let result = self.upload_parts(full, key, &upload_id, first, body).await;
        match result {
            Ok(size) => Ok(size),
            Err(e) => {
                self.abort(full, &upload_id).await;
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &self,
        full: &str,
        key: &str,
        upload_id: &str,
        first: Bytes,
        body: &mut ByteStream,
    ) -> Result<u64, StoreError> {
        let mut in_flight = FuturesUnordered::new();
        let mut done: Vec<CompletedPart> = Vec::new();
        let mut next_part = Some(first);
        let mut number = 0i32;
        let mut total = 0u64;
        loop {
            while in_flight.len() < self.settings.parts_in_flight.max(1) {
                let part = match next_part.take() {
                    Some(p) => p,
                    None => match read_part(body, self.settings.part_size, self, key).await? {
                        Some(p) => p,
                        None => break,
                    },
                };
                number += 1;
                total += part.len() as u64;
                in_flight.push(self.upload_part(full, key, upload_id, number, part));
            }
            match in_flight.next().await {
                Some(part) => done.push(part?),
                None => break,
            }
        }
        done.sort_by_key(|p| p.part_number());
        // Never over an existing object (#21), as for single PUTs: a bucket policy can then
        // deny every unconditional write (deploy/iam).
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(full)
            .upload_id(upload_id)
            .if_none_match("*")
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await;
        match completed {
            Ok(_) => Ok(total),
            Err(e) if is_precondition_failed(&e) => Err(StoreError::AlreadyExists {
                location: self.location(),
                key: key.to_string(),
            }),
            Err(e) => Err(self.sdk_err(format!("completing the upload of {key}"), e)),
        }
    }

    async fn upload_part(
        &self,
        full: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        part: Bytes,
    ) -> Result<CompletedPart, StoreError> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.settings.bucket)
            .key(full)
            .upload_id(upload_id)
            .part_number(number)
            .body(SdkStream::from(part))
            .send()
            .await
            .map_err(|e| self.sdk_err(format!("uploading part {number} of {key}"), e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(String::from))
            .set_checksum_crc32(out.checksum_crc32().map(String::from))
            .set_checksum_crc32_c(out.checksum_crc32_c().map(String::from))
            .set_checksum_crc64_nvme(out.checksum_crc64_nvme().map(String::from))
            .set_checksum_sha1(out.checksum_sha1().map(String::from))
            .set_checksum_sha256(out.checksum_sha256().map(String::from))
            .build())
    }

    async fn abort(&self, full: &str, upload_id: &str) {
        if let Err(e) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(full)
            .upload_id(upload_id)
            .send()
            .await
        {
            tracing::error!(key = full, error = %describe_sdk_error(&e), "could not abort a failed multipart upload; the next run's cleanup removes it");
        }
    }
}

/// Reads up to `size` bytes of the body into one part; `None` at the end.
async fn read_part(
    body: &mut ByteStream,
    size: usize,
    store: &S3Store,
    key: &str,
) -> Result<Option<Bytes>, StoreError> {
    // Sized once (plus one pipe chunk of overshoot): growing by doubling would end at twice the
    // part size, with a copy per doubling.
    let mut buf = BytesMut::with_capacity(size + 256 * 1024);
    while buf.len() < size {
        match body.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(source)) => {
                return Err(StoreError::Write {
                    location: store.location(),
                    key: key.to_string(),
                    source,
                })
            }
            None => break,
        }
    }
    Ok((!buf.is_empty()).then(|| buf.freeze()))
}

fn is_precondition_failed<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    match e {
        SdkError::ServiceError(s) => {
            s.err().code() == Some("PreconditionFailed") || s.raw().status().as_u16() == 412
        }
        _ => false,
    }
}

/// One line: the S3 error code and message when the service sent one, else the SDK's chain.
fn describe_sdk_error<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if let SdkError::ServiceError(s) = e {
        let err = s.err();
        if let Some(code) = err.code() {
            let hint = match code {
                "NoSuchBucket" => "; create the bucket or fix the destination",
                "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" => {
                    "; check the S3 credentials and their permissions"
                }
                _ => "",
            };
            return format!("{code}: {}{hint}", err.message().unwrap_or(""));
        }
    }
    let chain = crate::error_chain::one_line(e);
    if chain.contains("invalid peer certificate") || chain.contains("UnknownIssuer") {
        return format!("{chain}; if the endpoint uses a private CA, set s3.ca_bundle to it");
    }
    chain
}

fn location(s: &S3Settings) -> String {
    format!("s3://{}/{}", s.bucket, s.prefix)
}

#[async_trait::async_trait]
impl Store for S3Store {
    fn location(&self) -> String {
        location(&self.settings)
    }

    async fn put(&self, key: &str, body: ByteStream) -> Result<u64, StoreError> {
        let mut body: ByteStream = Box::pin(body.fuse());
        let full = self.full_key(key)?;
        if self.settings.lock.is_some() {
            self.lock_checked
                .get_or_try_init(|| self.check_bucket_lock())
                .await?;
        }
        if self.exists(&full).await? {
            return Err(StoreError::AlreadyExists {
                location: self.location(),
                key: key.to_string(),
            });
        }
        let part_size = self.settings.part_size.max(MIN_PART_SIZE);
        let first = read_part(&mut body, part_size, self, key)
            .await?
            .unwrap_or_default();
        if first.len() < part_size {
            return self.put_single(&full, key, first, false).await;
        }
        self.put_multipart(&full, key, first, &mut body).await
    }

    async fn replace(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        if self.settings.lock.is_some() {
            self.lock_checked
                .get_or_try_init(|| self.check_bucket_lock())
                .await?;
        }
        self.put_single(&full, key, body, true).await.map(|_| ())
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StoreError> {
        let full = self.full_key(key)?;
        let out = match self
            .client
            .get_object()
            .bucket(&self.settings.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(o) => o,
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => {
                return Err(StoreError::NotFound {
                    location: self.location(),
                    key: key.to_string(),
                })
            }
            Err(e) => return Err(self.sdk_err(format!("reading {key}"), e)),
        };
        let reader = out.body.into_async_read();
        Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
            reader,
            256 * 1024,
        )))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.settings.bucket)
            .prefix(format!("{}{prefix}", self.settings.prefix))
            .set_max_keys(self.settings.list_page_size)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.sdk_err("listing objects".into(), e))?;
            for o in page.contents() {
                let Some(key) = o.key().and_then(|k| k.strip_prefix(&self.settings.prefix)) else {
                    continue;
                };
                if !valid_key(key) {
                    continue;
                }
                out.push(ObjectInfo {
                    key: key.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified: o
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok()),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .delete_object()
            .bucket(&self.settings.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.sdk_err(format!("deleting {key}"), e))?;
        // A versioned bucket (every Object Lock bucket is one) answered with a delete marker.
        if out.delete_marker() == Some(true) {
            self.purge_versions(&full).await;
        }
        Ok(())
    }

    async fn lock_of(&self, key: &str) -> Result<Option<Lock>, StoreError> {
        let full = self.full_key(key)?;
        self.read_lock(&full).await
    }

    async fn hidden_locked(&self, prefix: &str) -> Vec<String> {
        let Ok(full) = self.full_key(prefix) else {
            return Vec::new();
        };
        let root = full.strip_suffix(prefix).unwrap_or_default().to_string();
        match self.locked_behind_markers(&full).await {
            Ok(keys) => keys
                .into_iter()
                .filter_map(|k| k.strip_prefix(&root).map(String::from))
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot list object versions: hidden backups are not looked for");
                Vec::new()
            }
        }
    }

    async fn clean_incomplete(&self) -> Result<Vec<String>, StoreError> {
        let cutoff = SystemTime::now() - self.settings.incomplete_grace;
        let mut removed = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.settings.bucket)
                .prefix(&self.settings.prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| self.sdk_err("listing unfinished uploads".into(), e))?;
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let ours = key
                    .strip_prefix(&self.settings.prefix)
                    .is_some_and(valid_key);
                let stale = u
                    .initiated()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .is_some_and(|t| t < cutoff);
                if ours && stale {
                    self.abort(key, id).await;
                    removed.push(format!("{key} (upload {id})"));
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(String::from);
            id_marker = page.next_upload_id_marker().map(String::from);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        Ok(removed)
    }
}
