//! The etcd source: one member, one client.
//!
//! etcd-client load-balances over every endpoint it is given, so a snapshot, its status and
//! its HashKV could come from different members. Every `EtcdSource` therefore talks to exactly
//! one endpoint, and records which member that is.

mod compaction;
pub mod discovery;
pub mod health;
pub mod maintenance;
pub mod membership;
pub mod version;
pub mod watch;

pub use compaction::CompactionState;

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::error_chain::one_line;
use crate::secret::Secret;

/// How to reach etcd: endpoints, TLS files, optional user.
#[derive(Clone, Debug, Default)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// How long the snapshot stream may send nothing before it counts as dead.
    pub stall_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("no etcd endpoint is configured: pass --endpoints, set `etcd.endpoints`, or run on a kubeadm node (--etcd-manifest)")]
    NoEndpoints,
    #[error("cannot read {what} {path}: {source}; check the path and that this user may read it")]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--cert and --key go together: give both or neither")]
    HalfIdentity,
    #[error("cannot reach etcd at {endpoint}: {cause}; check the endpoint, that etcd runs, and the TLS files (--cacert/--cert/--key)")]
    Unreachable {
        endpoint: String,
        #[source]
        cause: Cause,
    },
    #[error("etcd at {endpoint} refused the credentials of user `{user}`: {cause}; check --user and the password (LIFEBOAT_PASSWORD or etcd.password_file)")]
    Auth {
        endpoint: String,
        user: String,
        #[source]
        cause: Cause,
    },
    #[error("none of the endpoints answered ({0}); check that etcd runs and the TLS files")]
    NoneReachable(String),
    #[error("etcd at {endpoint} failed {call}: {cause}")]
    Call {
        endpoint: String,
        call: &'static str,
        #[source]
        cause: Cause,
    },
    #[error("the snapshot stream from {endpoint} broke after {bytes} bytes: {cause}; etcd may have restarted; take the snapshot again")]
    StreamBroken {
        endpoint: String,
        bytes: u64,
        #[source]
        cause: Cause,
    },
    #[error("etcd at {endpoint} has compacted its history up to revision {compact_revision}: the revisions asked for are gone")]
    Compacted {
        endpoint: String,
        compact_revision: i64,
    },
    #[error("the snapshot stream from {endpoint} sent nothing for {secs} s after {bytes} bytes; etcd is stuck or overloaded")]
    Stalled {
        endpoint: String,
        bytes: u64,
        secs: u64,
    },
}

/// Why an etcd call failed: the client's error, kept as the source, and its whole chain on one
/// line (tonic's top-level "transport error" says too little) for messages and logs; or just
/// a sentence, when lifeboat itself gave up (a deadline).
#[derive(Debug)]
pub struct Cause {
    line: String,
    error: Option<etcd_client::Error>,
}

impl Cause {
    pub fn text(line: impl Into<String>) -> Cause {
        Cause {
            line: line.into(),
            error: None,
        }
    }
}

impl From<etcd_client::Error> for Cause {
    fn from(error: etcd_client::Error) -> Cause {
        Cause {
            line: one_line(&error),
            error: Some(error),
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.line)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// What the member says about itself just before a snapshot.
#[derive(Clone, Debug)]
pub struct MemberFacts {
    pub endpoint: String,
    pub member_id: u64,
    pub member_name: String,
    pub cluster_id: u64,
    pub etcd_version: String,
    pub db_size: u64,
    pub raft_index: u64,
    pub revision: i64,
    pub is_learner: bool,
    /// The names of the cluster's voting members (empty when the member list was not
    /// readable): whom a cluster restore of this backup waits for by default.
    pub voting_members: Vec<String>,
    /// Every member, learners included (empty when the member list was not readable).
    pub members: Vec<membership::Member>,
    /// When the data's newest revision was written, where the source knows it better than
    /// "now" (a shadow's sandbox replays the past: the capture's receive time of its revision).
    pub data_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The member's `HashKV(rev)` answer.
#[derive(Clone, Copy, Debug)]
pub enum LiveHashKv {
    Hash {
        hash: u32,
        compact_revision: i64,
    },
    /// The member has compacted past the revision asked for (etcd does not say to where).
    Compacted,
}

/// What `Status` says about one member.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub revision: i64,
    pub cluster_id: u64,
    pub member_id: u64,
    /// 0 while the member knows no leader.
    pub leader: u64,
    pub version: String,
    /// The database file's size, and how much of it holds data (the rest is free pages a
    /// defragmentation gives back).
    pub db_size: u64,
    pub db_size_in_use: u64,
    /// `--quota-backend-bytes` as the member reports it (etcd 3.6+; 0 before).
    pub quota: u64,
    pub is_learner: bool,
}

/// The snapshot as a stream of pieces; ends after the trailer (or when the server closes).
pub type PieceStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<SnapshotPiece, SourceError>> + Send>>;

/// What a backup needs from the member it backs up. [`EtcdSource`] is the real one; tests of
/// the backup run use fakes.
#[async_trait::async_trait]
pub trait Source: Send {
    /// Status and member list, just before the snapshot.
    async fn member_facts(&mut self) -> Result<MemberFacts, SourceError>;
    /// The `Maintenance.Snapshot` stream.
    async fn snapshot(&mut self) -> Result<PieceStream, SourceError>;
    /// The member's `HashKV(revision)`.
    async fn hash_kv(&mut self, revision: i64) -> Result<LiveHashKv, SourceError>;
    /// The member's compaction point (0: never compacted), `current` being its revision.
    async fn compaction_point(&mut self, current: i64) -> Result<i64, SourceError>;
}

#[async_trait::async_trait]
impl Source for EtcdSource {
    async fn member_facts(&mut self) -> Result<MemberFacts, SourceError> {
        EtcdSource::member_facts(self).await
    }

    async fn snapshot(&mut self) -> Result<PieceStream, SourceError> {
        let stream = self.open_snapshot().await?;
        Ok(Box::pin(futures::stream::try_unfold(
            stream,
            |mut s| async move { Ok(s.next().await?.map(|piece| (piece, s))) },
        )))
    }

    async fn hash_kv(&mut self, revision: i64) -> Result<LiveHashKv, SourceError> {
        EtcdSource::hash_kv(self, revision).await
    }

    async fn compaction_point(&mut self, current: i64) -> Result<i64, SourceError> {
        EtcdSource::compaction_point(self, current).await
    }
}

/// A client bound to exactly one member.
pub struct EtcdSource {
    client: Client,
    endpoint: String,
    settings: EtcdSettings,
}

impl EtcdSource {
    /// Connects to the first endpoint that answers `Status`, in the order given.
    ///
    /// # Errors
    /// `NoEndpoints`, TLS file errors, or `NoneReachable` listing why each endpoint failed.
    pub async fn connect_first(settings: &EtcdSettings) -> Result<EtcdSource, SourceError> {
        if settings.endpoints.is_empty() {
            return Err(SourceError::NoEndpoints);
        }
        let mut failures = Vec::new();
        for endpoint in &settings.endpoints {
            match EtcdSource::connect(settings, endpoint).await {
                Ok(mut source) => match source.status().await {
                    Ok(_) => return Ok(source),
                    Err(e) => failures.push(e),
                },
                Err(e @ (SourceError::TlsFile { .. } | SourceError::HalfIdentity)) => {
                    return Err(e)
                }
                Err(e) => failures.push(e),
            }
        }
        if failures.len() == 1 {
            return Err(failures.remove(0));
        }
        Err(SourceError::NoneReachable(
            failures
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        ))
    }

    /// Connects to one endpoint (lazily: the first call reports an unreachable member).
    ///
    /// # Errors
    /// TLS file errors and malformed endpoints.
    pub async fn connect(
        settings: &EtcdSettings,
        endpoint: &str,
    ) -> Result<EtcdSource, SourceError> {
        let endpoint = normalise_endpoint(endpoint, settings.uses_tls());
        let options = connect_options(settings)?;
        let connect = Client::connect([endpoint.as_str()], Some(options));
        let client = tokio::time::timeout(settings.connect_timeout, connect)
            .await
            .map_err(|_| SourceError::Unreachable {
                endpoint: endpoint.clone(),
                cause: Cause::text(format!("no answer within {:?}", settings.connect_timeout)),
            })?
            .map_err(|e| match (&settings.user, is_auth_failure(&e)) {
                (Some(user), true) => SourceError::Auth {
                    endpoint: endpoint.clone(),
                    user: user.clone(),
                    cause: e.into(),
                },
                _ => SourceError::Unreachable {
                    endpoint: endpoint.clone(),
                    cause: e.into(),
                },
            })?;
        Ok(EtcdSource {
            client,
            endpoint,
            settings: settings.clone(),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The member's own view, without needing quorum (Status is answered locally).
    ///
    /// # Errors
    /// Unreachable or refused.
    pub async fn status(&mut self) -> Result<MemberStatus, SourceError> {
        let s = self.call("Status", self.client.clone().status()).await?;
        let header = s.header();
        Ok(MemberStatus {
            revision: header.map_or(0, |h| h.revision()),
            cluster_id: header.map_or(0, |h| h.cluster_id()),
            member_id: header.map_or(0, |h| h.member_id()),
            leader: s.leader(),
            version: s.version().to_string(),
            db_size: u64::try_from(s.db_size()).unwrap_or(0),
            db_size_in_use: u64::try_from(s.raft_used_db_size()).unwrap_or(0),
            quota: u64::try_from(s.db_size_quota()).unwrap_or(0),
            is_learner: s.is_learner(),
        })
    }

    async fn call<T>(
        &self,
        call: &'static str,
        fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, SourceError> {
        self.call_within(call, self.settings.request_timeout, fut)
            .await
    }

    /// As `call`, with a deadline of its own (a defragmentation takes as long as copying the
    /// member's live data).
    async fn call_within<T>(
        &self,
        call: &'static str,
        within: Duration,
        fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, SourceError> {
        match tokio::time::timeout(within, fut).await {
            Err(_) => Err(SourceError::Unreachable {
                endpoint: self.endpoint.clone(),
                cause: Cause::text(format!("{call} got no answer within {within:?}")),
            }),
            Ok(Err(e)) if is_unreachable(&e) => Err(SourceError::Unreachable {
                endpoint: self.endpoint.clone(),
                cause: e.into(),
            }),
            Ok(Err(e)) => Err(SourceError::Call {
                endpoint: self.endpoint.clone(),
                call,
                cause: e.into(),
            }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Status and member list of this member.
    ///
    /// # Errors
    /// The member is unreachable or refuses the calls.
    pub async fn member_facts(&mut self) -> Result<MemberFacts, SourceError> {
        let mut client = self.client.clone();
        let status = self.call("Status", client.status()).await?;
        let header = status.header().cloned();
        let member_id = header.as_ref().map(|h| h.member_id()).unwrap_or_default();
        // Learners refuse MemberList; their name is then unknown, which only matters for a
        // manifest, and learners do not upload in `serve`.
        let members: Vec<membership::Member> =
            match self.call("MemberList", client.member_list()).await {
                Ok(list) => list.members().iter().map(membership::Member::of).collect(),
                Err(_) if status.is_learner() => Vec::new(),
                Err(e) => return Err(e),
            };
        let member_name = members
            .iter()
            .find(|m| m.id == member_id)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let mut voting_members: Vec<String> = members
            .iter()
            .filter(|m| !m.learner)
            .map(|m| m.name.clone())
            .collect();
        voting_members.sort();
        Ok(MemberFacts {
            endpoint: self.endpoint.clone(),
            member_id,
            member_name,
            cluster_id: header.as_ref().map(|h| h.cluster_id()).unwrap_or_default(),
            etcd_version: status.version().to_string(),
            db_size: u64::try_from(status.db_size()).unwrap_or(0),
            raft_index: status.raft_index(),
            revision: header.as_ref().map(|h| h.revision()).unwrap_or_default(),
            is_learner: status.is_learner(),
            voting_members,
            members,
            data_at: None,
        })
    }

    /// Opens the `Maintenance.Snapshot` stream.
    ///
    /// # Errors
    /// The member is unreachable or refuses.
    pub async fn open_snapshot(&mut self) -> Result<SnapshotStream, SourceError> {
        let stream = self
            .call("Snapshot", self.client.clone().snapshot())
            .await?;
        Ok(SnapshotStream {
            inner: stream,
            endpoint: self.endpoint.clone(),
            stall_timeout: self.settings.stall_timeout,
            bytes: 0,
            finished_data: false,
            done: false,
        })
    }

    /// The live member's `HashKV(revision)`.
    ///
    /// # Errors
    /// The member is unreachable or fails the call for another reason than compaction.
    pub async fn hash_kv(&mut self, revision: i64) -> Result<LiveHashKv, SourceError> {
        let mut client = self.client.clone();
        match self.call("HashKV", client.hash_kv(revision)).await {
            Ok(r) => Ok(LiveHashKv::Hash {
                hash: r.hash(),
                compact_revision: r.compact_version(),
            }),
            Err(SourceError::Call { cause, .. }) if cause.to_string().contains("compacted") => {
                Ok(LiveHashKv::Compacted)
            }
            Err(e) => Err(e),
        }
    }
}

/// One piece of the snapshot stream.
pub enum SnapshotPiece {
    Data(bytes::Bytes),
    /// The 32-byte sha256 etcd sends after the last data chunk.
    Trailer(bytes::Bytes),
}

/// The snapshot stream, with etcd's framing made explicit (data, then one trailer message).
pub struct SnapshotStream {
    inner: etcd_client::SnapshotStreaming,
    endpoint: String,
    stall_timeout: Duration,
    bytes: u64,
    finished_data: bool,
    done: bool,
}

impl SnapshotStream {
    /// The next piece, or `None` once the trailer has been delivered (or the server closed).
    ///
    /// # Errors
    /// The stream broke or stalled.
    pub async fn next(&mut self) -> Result<Option<SnapshotPiece>, SourceError> {
        if self.done {
            return Ok(None);
        }
        let message = tokio::time::timeout(self.stall_timeout, self.inner.message())
            .await
            .map_err(|_| SourceError::Stalled {
                endpoint: self.endpoint.clone(),
                bytes: self.bytes,
                secs: self.stall_timeout.as_secs(),
            })?
            .map_err(|e| SourceError::StreamBroken {
                endpoint: self.endpoint.clone(),
                bytes: self.bytes,
                cause: e.into(),
            })?;
        let Some(message) = message else {
            self.done = true;
            return Ok(None);
        };
        let blob = bytes::Bytes::copy_from_slice(message.blob());
        self.bytes += blob.len() as u64;
        if self.finished_data {
            self.done = true;
            return Ok(Some(SnapshotPiece::Trailer(blob)));
        }
        if message.remaining_bytes() == 0 {
            self.finished_data = true;
        }
        Ok(Some(SnapshotPiece::Data(blob)))
    }
}

impl EtcdSettings {
    pub fn uses_tls(&self) -> bool {
        self.cacert.is_some() || self.cert.is_some()
    }
}

/// Adds the scheme etcdctl would assume: https when TLS files are configured.
fn normalise_endpoint(endpoint: &str, tls: bool) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

fn read_tls_file(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, SourceError> {
    std::fs::read(path).map_err(|source| SourceError::TlsFile {
        what,
        path: path.clone(),
        source,
    })
}

fn connect_options(settings: &EtcdSettings) -> Result<ConnectOptions, SourceError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(settings.connect_timeout)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10))
        .with_keep_alive_while_idle(true);
    if settings.uses_tls() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &settings.cacert {
            tls = tls.ca_certificate(Certificate::from_pem(read_tls_file("CA certificate", ca)?));
        }
        match (&settings.cert, &settings.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read_tls_file("client certificate", cert)?,
                    read_tls_file("client key", key)?,
                ));
            }
            (None, None) => {}
            _ => return Err(SourceError::HalfIdentity),
        }
        options = options.with_tls(tls);
    }
    if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
        options = options
            .with_user(user.clone(), password.expose().to_string())
            .with_auto_token_refresh(true);
    }
    Ok(options)
}

fn is_auth_failure(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::InvalidArgument
                | tonic::Code::Unauthenticated
                | tonic::Code::PermissionDenied
        ),
        _ => false,
    }
}

fn is_unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_without_scheme_follow_tls() {
        assert_eq!(
            normalise_endpoint("127.0.0.1:2379", true),
            "https://127.0.0.1:2379"
        );
        assert_eq!(
            normalise_endpoint("127.0.0.1:2379", false),
            "http://127.0.0.1:2379"
        );
        assert_eq!(normalise_endpoint("http://a:1", true), "http://a:1");
    }
}
