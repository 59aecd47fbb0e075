//! Leases in a replay: those of the base adopted and kept alive, the journal's granted when
//! the replay reaches the revision they were first seen at (or a key uses one), revocations
//! applied once due — so the state at the target has exactly its leases, with their ids and
//! granted TTLs (#22).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, LeaseGrantOptions};

use super::Replayer;
use crate::etcd::watch::Change;
use crate::pitr::PitrError;

impl Replayer {
    /// Leases restored with the base backup are kept alive from the start too.
    pub(super) async fn adopt_base_leases(&mut self) -> Result<(), PitrError> {
        let leases = self
            .client
            .leases()
            .await
            .map_err(|e| self.sandbox_failed(self.current, format!("listing leases: {e}")))?;
        for l in leases.leases() {
            // Its granted TTL paces its renewals (0, renewed every tick, if it cannot be read).
            let ttl = self
                .client
                .lease_time_to_live(l.id(), None)
                .await
                .map_or(0, |t| t.granted_ttl());
            if let Ok(mut alive) = self.alive.lock() {
                alive.insert(l.id(), ttl);
            }
        }
        Ok(())
    }

    /// Whether `changes` put a key with a lease that is deferred.
    pub(super) fn attaches_deferred(&self, changes: &[Change]) -> bool {
        !self.deferred.is_empty()
            && changes.iter().any(|c| {
                matches!(c, Change::Put { lease, .. } if *lease != 0 && self.deferred.contains_key(lease))
            })
    }

    /// Grants the deferred leases `changes` attach keys to: they existed by then.
    pub(super) async fn grant_attached(&mut self, changes: &[Change]) -> Result<(), PitrError> {
        for c in changes {
            if let Change::Put { lease, .. } = c {
                if let Some((ttl, _)) = self.deferred.remove(lease) {
                    self.grant(*lease, ttl).await?;
                }
            }
        }
        Ok(())
    }

    /// Grants the deferred leases first seen at or before the revision reached.
    pub(super) async fn grant_due(&mut self) -> Result<(), PitrError> {
        let current = self.current;
        let due: Vec<(i64, i64)> = self
            .deferred
            .iter()
            .filter(|(_, (_, from))| *from <= current)
            .map(|(id, (ttl, _))| (*id, *ttl))
            .collect();
        for (id, ttl) in due {
            self.deferred.remove(&id);
            self.grant(id, ttl).await?;
        }
        Ok(())
    }

    pub(super) async fn grant(&mut self, id: i64, ttl: i64) -> Result<(), PitrError> {
        if self
            .alive
            .lock()
            .map(|a| a.contains_key(&id))
            .unwrap_or(false)
        {
            return Ok(());
        }
        // TTL 0: the lease was gone before capture could read its TTL; it is revoked later
        // in the journal, so any TTL that outlives the replay does.
        let ttl = if ttl > 0 { ttl } else { 3600 };
        match self
            .client
            .lease_grant(ttl, Some(LeaseGrantOptions::new().with_id(id)))
            .await
        {
            Ok(_) => {}
            Err(e) if e.to_string().contains("lease already exists") => {}
            Err(e) => {
                return Err(self.sandbox_failed(self.current, format!("granting lease {id:x}: {e}")))
            }
        }
        self.report.leases_granted += 1;
        if let Ok(mut alive) = self.alive.lock() {
            alive.insert(id, ttl);
        }
        Ok(())
    }

    /// Revokes the leases the journal saw gone once the replay has reached that point.
    pub(super) async fn revoke_due(&mut self) -> Result<(), PitrError> {
        let current = self.current;
        let due: Vec<(i64, i64)> = self
            .pending_revokes
            .iter()
            .copied()
            .filter(|(_, after)| *after <= current)
            .collect();
        self.pending_revokes.retain(|(_, after)| *after > current);
        for (id, _) in due {
            // Gone before it was due to be granted: never granted.
            self.deferred.remove(&id);
            if let Ok(mut alive) = self.alive.lock() {
                alive.remove(&id);
            }
            match self.client.lease_revoke(id).await {
                Ok(resp) => {
                    let rev = resp.header().map_or(self.current, |h| h.revision());
                    if rev != self.current {
                        return Err(self.failed(
                            rev,
                            format!(
                                "revoking lease {id:x} deleted keys the journal had not deleted"
                            ),
                        ));
                    }
                    self.report.leases_revoked += 1;
                }
                Err(e) if e.to_string().contains("requested lease not found") => {}
                Err(e) => {
                    return Err(
                        self.sandbox_failed(self.current, format!("revoking lease {id:x}: {e}"))
                    )
                }
            }
        }
        Ok(())
    }
}

/// Keeps every lease the replay holds alive: a replay runs faster than the cluster did, but a
/// short TTL can still end inside it.
pub(super) async fn keep_alive(client: Client, alive: Arc<std::sync::Mutex<BTreeMap<i64, i64>>>) {
    type Keeper = (
        Instant,
        etcd_client::LeaseKeeper,
        etcd_client::LeaseKeepAliveStream,
    );
    let mut keepers: BTreeMap<i64, Keeper> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let leases: BTreeMap<i64, i64> = alive.lock().map(|a| a.clone()).unwrap_or_default();
        keepers.retain(|id, _| leases.contains_key(id));
        for (id, ttl) in leases {
            if let std::collections::btree_map::Entry::Vacant(slot) = keepers.entry(id) {
                let mut c = client.clone();
                if let Ok((keeper, stream)) = c.lease_keep_alive(id).await {
                    slot.insert((Instant::now(), keeper, stream));
                }
            }
            // A third of the TTL between renewals (every tick when the TTL is unknown: a
            // lease restored with the base backup), so long leases cost nothing per tick.
            let every = Duration::from_secs(u64::try_from(ttl / 3).unwrap_or(0));
            if let Some((last, keeper, stream)) = keepers.get_mut(&id) {
                if last.elapsed() >= every && keeper.keep_alive().await.is_ok() {
                    let _ = stream.message().await;
                    *last = Instant::now();
                }
            }
        }
    }
}
