//! One uploader per cluster, coordinated through etcd itself: every instance campaigns in an
//! etcd election with a leased key; the holder uploads. When the holder's node (or its etcd)
//! dies, its lease is not renewed and expires after `ttl`, and the next candidate wins.
//! Learners never campaign: they cannot serve a consistent snapshot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, LeaderKey};
use tokio_util::sync::CancellationToken;

/// Shared flag: true while this instance holds the election.
#[derive(Clone, Default)]
pub struct Leadership(Arc<AtomicBool>);

impl Leadership {
    pub fn is_leader(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn set(&self, v: bool) {
        self.0.store(v, Ordering::SeqCst);
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
            leadership.set(false);
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
    let lease = c.lease_grant(ttl_secs, None).await?.id();
    let (mut keeper, mut responses) = c.lease_keep_alive(lease).await?;
    let interval = Duration::from_secs((ttl_secs as u64 / 3).max(1));
    // Keep the lease alive while campaigning too: the campaign may wait a long time.
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
        }
    };
    tokio::pin!(keep);
    let mut campaign_client = c.clone();
    let campaign = campaign_client.campaign(election, me, lease);
    let leader_key: LeaderKey = tokio::select! {
        r = campaign => r?.leader().cloned().ok_or_else(|| etcd_client::Error::ElectError("no leader key".into()))?,
        r = &mut keep => { r?; return Ok(()) }
        () = shutdown.cancelled() => { let _ = c.lease_revoke(lease).await; return Ok(()) }
    };
    leadership.set(true);
    on_change(true);
    tracing::info!(election, "this instance is now the uploader");
    let result = tokio::select! {
        r = &mut keep => r,
        () = shutdown.cancelled() => Ok(()),
    };
    leadership.set(false);
    on_change(false);
    let _ = c
        .resign(Some(
            etcd_client::ResignOptions::new().with_leader(leader_key),
        ))
        .await;
    let _ = c.lease_revoke(lease).await;
    result
}
