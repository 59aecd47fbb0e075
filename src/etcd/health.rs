//! The post-flight (#26), the one check that a cluster is whole: after an upgrade, a cluster
//! restore or a member replace, every member is a voter that answers with a leader and serves
//! a linearizable read (`endpoint health --cluster`), belongs to the one cluster, runs the
//! version wanted, and has the same HashKV at one revision — etcd's own corruption check, made
//! from outside.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::membership::Member;
use super::version::EtcdVersion;
use super::{EtcdSettings, EtcdSource, LiveHashKv, MemberStatus};

/// One member as the post-flight saw it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub member: Member,
    pub status: MemberStatus,
}

/// A cluster that passed: every member, and the HashKV they all have at `revision`.
#[derive(Debug, Clone)]
pub struct ClusterHealth {
    pub answers: Vec<Answer>,
    /// The lowest revision every member has.
    pub revision: i64,
    pub hash: u32,
    pub compact_revision: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("etcd did not pass the post-flight within {}s: {}", .waited.as_secs(), .problems.join("; "))]
    NotHealthy {
        waited: Duration,
        problems: Vec<String>,
        /// A member's HashKV differs from the others' at the same revision (its data is not
        /// the cluster's), besides whatever else is wrong.
        diverged: bool,
    },
}

/// What the post-flight asks.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    /// Every member on this version or a newer patch of its line (a member on an older one is
    /// still being upgraded, or was not).
    pub version: Option<EtcdVersion>,
    /// How long the members may take to get there.
    pub timeout: Duration,
}

/// Checks the cluster `settings` reaches until it passes or `wanted.timeout` ends.
///
/// # Errors
/// The problems of the last look, one per member (named) or per cluster-wide failure.
pub async fn verify_cluster(
    settings: &EtcdSettings,
    wanted: Wanted,
) -> Result<ClusterHealth, HealthError> {
    let started = Instant::now();
    loop {
        let problems = match look(settings, wanted.version).await {
            Ok(health) => return Ok(health),
            Err(problems) => problems,
        };
        if started.elapsed() >= wanted.timeout {
            return Err(HealthError::NotHealthy {
                waited: started.elapsed(),
                diverged: problems.iter().any(|p| p.contains(DIFFERS)),
                problems,
            });
        }
        tracing::debug!(problems = %problems.join("; "), "post-flight: not yet");
        // A member that just started answers within a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How a HashKV difference is worded (the error's `diverged` looks for it).
const DIFFERS: &str = "its data differs";

/// A member that answered `Status`.
struct Answered {
    name: String,
    member: Member,
    status: MemberStatus,
    source: EtcdSource,
}

/// One look at every member; the problems if it did not pass.
async fn look(
    settings: &EtcdSettings,
    want: Option<EtcdVersion>,
) -> Result<ClusterHealth, Vec<String>> {
    let mut first = EtcdSource::connect_first(settings)
        .await
        .map_err(|e| vec![format!("no member answers: {e}")])?;
    let cluster_id = first
        .status()
        .await
        .map_err(|e| vec![e.to_string()])?
        .cluster_id;
    let members = first
        .members()
        .await
        .map_err(|e| vec![format!("member list: {e} (no quorum?)")])?;
    let mut problems = Vec::new();
    let mut answered = Vec::new();
    for m in &members {
        let who = if m.name.is_empty() {
            format!("{:x}", m.id)
        } else {
            m.name.clone()
        };
        let Some(url) = m.client_urls.first() else {
            problems.push(format!("{who}: added but never started"));
            continue;
        };
        if m.learner {
            problems.push(format!("{who} ({url}) is still a learner"));
            continue;
        }
        match member(settings, m, &who, url, cluster_id, want).await {
            Ok((a, None)) => answered.push(a),
            Ok((a, Some(problem))) => {
                problems.push(problem);
                answered.push(a);
            }
            Err(problem) => problems.push(problem),
        }
    }
    match compare_hashes(&mut answered).await {
        Ok(health) if problems.is_empty() => Ok(health),
        Ok(_) => Err(problems),
        Err(more) => {
            problems.extend(more);
            Err(problems)
        }
    }
}

/// One member: reachable, with a leader, serving a linearizable read, in `cluster_id`, on the
/// version wanted. A member that answered `Status` comes back (with its problem, if any) so
/// that its HashKV is compared too.
async fn member(
    settings: &EtcdSettings,
    m: &Member,
    who: &str,
    url: &str,
    cluster_id: u64,
    want: Option<EtcdVersion>,
) -> Result<(Answered, Option<String>), String> {
    let mut source = EtcdSource::connect(settings, url)
        .await
        .map_err(|e| format!("{who} ({url}): {e}"))?;
    let st = source
        .status()
        .await
        .map_err(|e| format!("{who} ({url}): {e}"))?;
    // Every problem of the member, each on its own: the version is named even while the
    // member still elects a leader.
    let mut problems = Vec::new();
    if st.cluster_id != cluster_id {
        problems.push(format!(
            "answers for cluster {:x}, not {cluster_id:x}: another etcd is on its address",
            st.cluster_id
        ));
    } else if st.leader == 0 {
        problems.push("knows no leader".to_string());
    } else if let Err(e) = linearizable_read(&source, settings.request_timeout).await {
        problems.push(format!("cannot serve a linearizable read: {e}"));
    }
    if let Some(want) = want {
        match EtcdVersion::parse(&st.version) {
            Some(v) if v >= want => {}
            Some(v) => problems.push(format!(
                "runs etcd {v}, not yet {want} (its static pod not upgraded, or not restarted?)"
            )),
            None => problems.push(format!("reports version `{}`", st.version)),
        }
    }
    let problem = (!problems.is_empty()).then(|| format!("{who} ({url}) {}", problems.join(", ")));
    let answered = Answered {
        name: who.to_string(),
        member: m.clone(),
        status: st,
        source,
    };
    Ok((answered, problem))
}

/// What `etcdctl endpoint health` does: a read that needs the cluster's quorum.
async fn linearizable_read(source: &EtcdSource, within: Duration) -> Result<(), String> {
    match tokio::time::timeout(within, source.client().get("health", None)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", within.as_secs())),
    }
}

/// HashKV of every member at the lowest revision they all reached: equal, or the members
/// that differ from the most common answer named.
async fn compare_hashes(answered: &mut [Answered]) -> Result<ClusterHealth, Vec<String>> {
    let Some(revision) = answered.iter().map(|a| a.status.revision).min() else {
        return Err(vec!["no member answered".into()]);
    };
    let mut problems = Vec::new();
    let mut hashes: Vec<Option<(u32, i64)>> = Vec::new();
    for a in answered.iter_mut() {
        hashes.push(match a.source.hash_kv(revision).await {
            Ok(LiveHashKv::Hash {
                hash,
                compact_revision,
            }) => Some((hash, compact_revision)),
            Ok(LiveHashKv::Compacted) => {
                problems.push(format!("{}: compacted past revision {revision}", a.name));
                None
            }
            Err(e) => {
                problems.push(format!("{}: HashKV at {revision}: {e}", a.name));
                None
            }
        });
    }
    let mut counts: BTreeMap<(u32, i64), usize> = BTreeMap::new();
    for h in hashes.iter().flatten() {
        *counts.entry(*h).or_default() += 1;
    }
    let Some((&common, _)) = counts.iter().max_by_key(|(_, n)| **n) else {
        return Err(problems);
    };
    for (a, h) in answered.iter().zip(&hashes) {
        if let Some((hash, compact)) = h {
            if (*hash, *compact) != common {
                problems.push(format!(
                    "{} ({}): HashKV at revision {revision} is {hash} (compact revision {compact}), the others' {} (compact revision {}): {DIFFERS}",
                    a.name,
                    a.member.client_urls.first().map_or("", String::as_str),
                    common.0,
                    common.1
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(ClusterHealth {
        answers: answered
            .iter()
            .map(|a| Answer {
                member: a.member.clone(),
                status: a.status.clone(),
            })
            .collect(),
        revision,
        hash: common.0,
        compact_revision: common.1,
    })
}
