//! One uploader per cluster, coordinated through etcd itself: every instance campaigns in an
//! etcd election with a leased key; the holder uploads. When the holder's node (or its etcd)
//! dies, its lease is not renewed and expires after `ttl`, and the next candidate wins.
//! Learners never campaign: they cannot serve a consistent snapshot. The raft leader's
//! instance campaigns only when no follower's does, and hands the election over when its member
//! becomes the leader while a follower's instance waits: a backup reads the whole database and
//! compresses it, and the leader already carries every write (#13).

use crate::catalog::FenceLost;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, LeaderKey, Txn};
use tokio_util::sync::CancellationToken;

/// Shared: the election key this instance holds, while it holds it.
#[derive(Clone, Default)]
pub struct Leadership(Arc<Mutex<Option<Held>>>);

/// The key the campaign created (`<election>/<lease>`) and its create revision: as long as
/// that key exists with that revision, nobody else holds the election.
#[derive(Clone, Debug)]
struct Held {
    key: Vec<u8>,
    revision: i64,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        self.held().is_some()
    }

    fn held(&self) -> Option<Held> {
        self.0.lock().ok().and_then(|h| h.clone())
    }

    fn set(&self, v: Option<Held>) {
        if let Ok(mut h) = self.0.lock() {
            *h = v;
        }
    }
}

/// Fences catalog writes on still holding the election — asked of etcd itself, not of the
/// local flag, which a paused process cannot have updated: a transaction that succeeds only
/// while the election key exists with the revision this instance created it at.
pub struct LeaseFence {
    pub client: Client,
    pub leadership: Leadership,
}

#[async_trait::async_trait]
impl crate::catalog::Fence for LeaseFence {
    async fn check(&self) -> Result<(), FenceLost> {
        let held = self.leadership.held().ok_or(FenceLost::NotHeld)?;
        let txn = Txn::new().when([Compare::create_revision(
            held.key.clone(),
            CompareOp::Equal,
            held.revision,
        )]);
        let mut client = self.client.clone();
        let patience = Duration::from_secs(5);
        let answer = tokio::time::timeout(patience, client.txn(txn)).await;
        match answer {
            Ok(Ok(r)) if r.succeeded() => Ok(()),
            Ok(Ok(_)) => {
                self.leadership.set(None);
                Err(FenceLost::TakenOver)
            }
            Ok(Err(e)) => Err(FenceLost::Unconfirmed(Box::new(e))),
            Err(_) => Err(FenceLost::NoAnswer(patience)),
        }
    }
}

/// Campaigns until `shutdown`, re-campaigning after any loss. Resigns on shutdown so another
/// instance takes over at once instead of after the lease TTL.
pub async fn campaign_forever(
    client: Client,
    election: String,
    me: String,
    ttl: Duration,
    leadership: Leadership,
    on_change: impl Fn(bool) + Send + Sync + 'static,
    shutdown: CancellationToken,
) {
    let ttl_secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(15);
    while !shutdown.is_cancelled() {
        match hold_once(
            &client,
            &election,
            &me,
            ttl_secs,
            &leadership,
            &on_change,
            &shutdown,
        )
        .await
        {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %crate::error_chain::one_line(&e), "leader election: lost or could not campaign; retrying")
            }
        }
        if leadership.is_leader() {
            leadership.set(None);
            on_change(false);
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn hold_once(
    client: &Client,
    election: &str,
    me: &str,
    ttl_secs: i64,
    leadership: &Leadership,
    on_change: &(impl Fn(bool) + Send + Sync),
    shutdown: &CancellationToken,
) -> Result<(), etcd_client::Error> {
    let mut c = client.clone();
    if c.status().await?.is_learner() {
        tracing::info!("this member is a learner: not campaigning to upload");
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        return Ok(());
    }
    if !wait_for_followers(&mut c, election, ttl_secs, shutdown).await? {
        return Ok(());
    }
    let lease = c.lease_grant(ttl_secs, None).await?.id();
    let (mut keeper, mut responses) = c.lease_keep_alive(lease).await?;
    let interval = Duration::from_secs((ttl_secs as u64 / 3).max(1));
    // Keep the lease alive while campaigning too: the campaign may wait a long time. While
    // holding, step aside when this member has become the raft leader and a follower's
    // instance is waiting to take over.
    let mut watcher = c.clone();
    let keep = async {
        loop {
            tokio::time::sleep(interval).await;
            keeper.keep_alive().await?;
            match responses.message().await? {
                Some(r) if r.ttl() > 0 => {}
                _ => {
                    return Err::<(), _>(etcd_client::Error::LeaseKeepAliveError(
                        "lease expired".into(),
                    ))
                }
            }
            if leadership.is_leader()
                && is_raft_leader(&mut watcher).await?
                && candidates(&mut watcher, election).await? > 1
            {
                tracing::info!("this member became the raft leader: handing the uploader election to a follower's instance");
                return Ok(());
            }
        }
    };
    tokio::pin!(keep);
    let mut campaign_client = c.clone();
    let campaign = campaign_client.campaign(election, me, lease);
    let leader_key: LeaderKey = tokio::select! {
        r = campaign => r?.leader().cloned().ok_or_else(|| etcd_client::Error::ElectError("no leader key".into()))?,
        r = &mut keep => { r?; return Ok(()) }
        () = shutdown.cancelled() => { revoke(&mut c, lease).await; return Ok(()) }
    };
    leadership.set(Some(Held {
        key: leader_key.key().to_vec(),
        revision: leader_key.rev(),
    }));
    on_change(true);
    tracing::info!(election, "this instance is now the uploader");
    let result = tokio::select! {
        r = &mut keep => r,
        () = shutdown.cancelled() => Ok(()),
    };
    leadership.set(None);
    on_change(false);
    let resign = c.resign(Some(
        etcd_client::ResignOptions::new().with_leader(leader_key),
    ));
    if tokio::time::timeout(GOODBYE_WITHIN, resign).await.is_err() {
        tracing::warn!(
            "leader election: etcd did not answer the resignation; the lease expires after its TTL"
        );
    }
    revoke(&mut c, lease).await;
    result
}

/// How long a resignation or a lease revocation may take. Both only speed up the handover
/// (the lease expires after its TTL anyway): an etcd that does not answer must not hold up
/// the service's stop.
const GOODBYE_WITHIN: Duration = Duration::from_secs(5);

async fn revoke(c: &mut Client, lease: i64) {
    if tokio::time::timeout(GOODBYE_WITHIN, c.lease_revoke(lease))
        .await
        .is_err()
    {
        tracing::warn!("leader election: etcd did not answer the lease revocation; the lease expires after its TTL");
    }
}

/// Whether this instance may campaign now: at once on a follower or a single-voter cluster;
/// on the raft leader only once no other instance has been a candidate for a whole lease TTL
/// (the snapshot stream and the compression then load a member that is not also ordering every
/// write). `false` when shut down while waiting.
async fn wait_for_followers(
    c: &mut Client,
    election: &str,
    ttl_secs: i64,
    shutdown: &CancellationToken,
) -> Result<bool, etcd_client::Error> {
    let grace = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(15));
    let mut alone_since = tokio::time::Instant::now();
    loop {
        if !is_raft_leader(c).await? || voters(c).await? <= 1 {
            return Ok(true);
        }
        if candidates(c, election).await? > 0 {
            alone_since = tokio::time::Instant::now();
        } else if alone_since.elapsed() >= grace {
            tracing::info!("no follower's instance campaigns: the raft leader's instance takes the uploader election");
            return Ok(true);
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(false),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn is_raft_leader(c: &mut Client) -> Result<bool, etcd_client::Error> {
    let status = c.status().await?;
    let me = status.header().map(|h| h.member_id());
    Ok(me == Some(status.leader()))
}

/// Voting members (learners cannot lead or upload).
async fn voters(c: &mut Client) -> Result<usize, etcd_client::Error> {
    let members = c.member_list().await?;
    Ok(members.members().iter().filter(|m| !m.is_learner()).count())
}

/// Instances holding or waiting in the election (one key each).
async fn candidates(c: &mut Client, election: &str) -> Result<i64, etcd_client::Error> {
    // etcd's election keys are `<election>/<lease>`.
    let r = c
        .get(
            format!("{election}/"),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await?;
    Ok(r.count())
}
