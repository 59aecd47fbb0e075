//! What a member replace will do, decided before anything changes: this node's member (from
//! its own `etcd.yaml`), the cluster's members and which of them answer, and the refusals —
//! a member that is in fact healthy, another learner, a cluster that would lose quorum.

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::{MemberError, ReplaceOptions};
use crate::etcd::discovery::{self, KubeadmEtcd};
use crate::etcd::membership::Member;
use crate::etcd::{EtcdSettings, EtcdSource};

/// A member and whether it answered when the plan was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    #[serde(flatten)]
    pub member: Member,
    pub answers: bool,
    /// Its etcd version, when it answered.
    pub version: Option<String>,
}

/// Everything the replace will do; saved in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplacePlan {
    pub run_id: String,
    /// This node's member, from its `etcd.yaml`.
    pub name: String,
    pub peer_url: String,
    /// Where this node's etcd answers (loopback first).
    pub local_endpoint: String,
    pub manifests_dir: PathBuf,
    /// The original `etcd.yaml` is kept here.
    pub holding_dir: PathBuf,
    pub data_dir: PathBuf,
    pub aside_dir: PathBuf,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The other members' client URLs that answered: where membership changes are sent.
    pub endpoints: Vec<String>,
    pub cluster_id: u64,
    pub members: Vec<MemberView>,
    /// This node's member as the cluster knows it, to remove (`None`: already removed).
    pub stale: Option<u64>,
    /// This node's learner, added by an earlier run that stopped.
    pub learner: Option<u64>,
}

impl ReplacePlan {
    /// Client settings for the cluster (the node's health-check client certificate).
    pub fn settings(&self, endpoints: Vec<String>, timeout: Duration) -> EtcdSettings {
        EtcdSettings {
            endpoints,
            cacert: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            user: None,
            password: None,
            connect_timeout: timeout,
            request_timeout: timeout.max(Duration::from_secs(5)),
            stall_timeout: Duration::from_secs(60),
        }
    }

    /// The voting members other than this node's.
    pub fn others(&self) -> impl Iterator<Item = &MemberView> {
        self.members
            .iter()
            .filter(move |m| Some(m.member.id) != self.stale && Some(m.member.id) != self.learner)
    }
}

/// Reads this node's member and the cluster, and decides.
///
/// # Errors
/// `Refused` (healthy member without `--force`, another learner, quorum would be lost, a
/// single-member cluster); the manifest unreadable; no member answers.
pub async fn plan_replace(opts: &ReplaceOptions) -> Result<ReplacePlan, MemberError> {
    let manifest = opts.manifests_dir.join("etcd.yaml");
    let local = discovery::discover(&manifest)?.ok_or_else(|| {
        MemberError::refused(format!(
            "{} does not exist: this is not a kubeadm control-plane node, or its etcd manifest was moved (a `member replace` that stopped: --resume)",
            manifest.display()
        ))
    })?;
    let (name, peer_url) = identity(&local)?;
    let run_id = Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let mut plan = ReplacePlan {
        holding_dir: opts.state_dir.join("member-replace").join(&run_id),
        aside_dir: aside_dir(&local.data_dir, &run_id),
        run_id,
        name,
        peer_url,
        local_endpoint: local.endpoints.first().cloned().unwrap_or_default(),
        manifests_dir: opts.manifests_dir.clone(),
        data_dir: local.data_dir.clone(),
        cacert: local.cacert.clone(),
        cert: local.cert.clone(),
        key: local.key.clone(),
        endpoints: Vec::new(),
        cluster_id: 0,
        members: Vec::new(),
        stale: None,
        learner: None,
    };
    let endpoints = match opts.endpoints.is_empty() {
        true => derived_endpoints(&local),
        false => opts.endpoints.clone(),
    };
    let mut cluster = connect(&plan, endpoints, opts.connect_timeout).await?;
    plan.cluster_id = cluster.status().await.map_or(0, |s| s.cluster_id);
    let members = cluster
        .members()
        .await
        .map_err(|source| MemberError::NoCluster {
            endpoints: cluster.endpoint().to_string(),
            source: Box::new(source),
        })?;
    for m in members {
        let (answers, version) = answers(&plan, &m, opts.connect_timeout).await;
        plan.members.push(MemberView {
            member: m,
            answers,
            version,
        });
    }
    place_this_node(&mut plan)?;
    decide(&plan, opts.force)?;
    plan.endpoints = plan
        .others()
        .filter(|m| m.answers)
        .flat_map(|m| m.member.client_urls.clone())
        .collect();
    Ok(plan)
}

/// This node's member name and peer URL, from its manifest.
fn identity(local: &KubeadmEtcd) -> Result<(String, String), MemberError> {
    match crate::restore::cluster::Node::of(local) {
        Some(n) => Ok((n.name, n.peer_url)),
        None => Err(MemberError::refused(format!(
            "{} names no --name or --initial-advertise-peer-urls: it is not a manifest kubeadm writes",
            local.manifest.display()
        ))),
    }
}

fn aside_dir(data_dir: &std::path::Path, run_id: &str) -> PathBuf {
    let name = data_dir
        .file_name()
        .map_or("etcd".into(), |n| n.to_string_lossy().into_owned());
    data_dir.with_file_name(format!("{name}.replaced-{run_id}"))
}

/// kubeadm's layout: every member listens for clients on the same port on its own host, so the
/// others are the `--initial-cluster` hosts with this node's client port.
fn derived_endpoints(local: &KubeadmEtcd) -> Vec<String> {
    let Some(port) = local
        .endpoints
        .first()
        .and_then(|u| u.rsplit(':').next())
        .map(str::to_string)
    else {
        return Vec::new();
    };
    let own = local
        .initial_advertise_peer_urls
        .clone()
        .unwrap_or_default();
    local
        .flags
        .get("initial-cluster")
        .map(|v| {
            v.split(',')
                .filter_map(|entry| entry.split_once('=').map(|(_, url)| url))
                .filter(|url| !own.split(',').any(|o| o == *url))
                .filter_map(|url| {
                    let (scheme, rest) = url.split_once("://")?;
                    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
                    Some(format!("{scheme}://{host}:{port}"))
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn connect(
    plan: &ReplacePlan,
    endpoints: Vec<String>,
    timeout: Duration,
) -> Result<EtcdSource, MemberError> {
    let listed = endpoints.join(",");
    if endpoints.is_empty() {
        return Err(MemberError::refused(
            "no other member to talk to: this node's --initial-cluster names only itself (a single-member cluster is restored, not replaced); pass --endpoints",
        ));
    }
    EtcdSource::connect_first(&plan.settings(endpoints, timeout))
        .await
        .map_err(|source| MemberError::NoCluster {
            endpoints: listed,
            source: Box::new(source),
        })
}

/// Whether `m` answers on one of its client URLs (this node's member: on the local endpoint),
/// as a member of this cluster with its own id; and its version.
async fn answers(plan: &ReplacePlan, m: &Member, timeout: Duration) -> (bool, Option<String>) {
    let mut urls = m.client_urls.clone();
    if m.name == plan.name || m.peer_urls.contains(&plan.peer_url) {
        urls.insert(0, plan.local_endpoint.clone());
    }
    for url in urls {
        let settings = plan.settings(vec![url.clone()], timeout);
        let Ok(mut source) = EtcdSource::connect(&settings, &url).await else {
            continue;
        };
        match source.status().await {
            Ok(s) if s.member_id == m.id && s.cluster_id == plan.cluster_id => {
                return (true, Some(s.version))
            }
            _ => continue,
        }
    }
    (false, None)
}

/// Finds this node's member (by name or peer URL): the stale voter to remove, or the learner
/// an earlier run added.
fn place_this_node(plan: &mut ReplacePlan) -> Result<(), MemberError> {
    let mine: Vec<&MemberView> = plan
        .members
        .iter()
        .filter(|m| m.member.name == plan.name || m.member.peer_urls.contains(&plan.peer_url))
        .collect();
    match mine.as_slice() {
        [] => {}
        [one] if one.member.learner => plan.learner = Some(one.member.id),
        [one] => plan.stale = Some(one.member.id),
        many => {
            let ids: Vec<String> = many.iter().map(|m| format!("{:x}", m.member.id)).collect();
            return Err(MemberError::refused(format!(
                "several members match this node's name {} or peer URL {} ({}): remove the extra ones with `etcdctl member remove` first",
                plan.name,
                plan.peer_url,
                ids.join(", ")
            )));
        }
    }
    Ok(())
}

/// The refusals: nothing changes when any applies.
fn decide(plan: &ReplacePlan, force: bool) -> Result<(), MemberError> {
    if let Some(other) = plan
        .members
        .iter()
        .find(|m| m.member.learner && Some(m.member.id) != plan.learner)
    {
        return Err(MemberError::refused(format!(
            "member {} ({:x}, {}) is already a learner: etcd allows one learner at a time; let it be promoted or remove it first",
            display_name(&other.member),
            other.member.id,
            other.member.peer_urls.join(",")
        )));
    }
    if let Some(stale) = plan
        .members
        .iter()
        .find(|m| Some(m.member.id) == plan.stale)
    {
        if stale.answers && !force {
            return Err(MemberError::refused(format!(
                "member {} ({:x}) answers at {} as a healthy member of this cluster: there is nothing to replace; pass --force to replace it anyway (its data is moved aside and it rejoins empty)",
                plan.name, stale.member.id, plan.local_endpoint
            )));
        }
    }
    let voting = plan.members.iter().filter(|m| !m.member.learner).count();
    let answering = plan.others().filter(|m| m.answers).count();
    // The cluster must have quorum now, and keep it once the stale member is gone.
    let needed = voting / 2 + 1;
    if answering < needed {
        return Err(MemberError::refused(format!(
            "only {answering} of the {voting} voting members answer besides this node's, and {needed} are needed for quorum: changing the membership would fail or lose the cluster; with a majority lost this is quorum recovery (a restore), not a member replace"
        )));
    }
    Ok(())
}

fn display_name(m: &Member) -> &str {
    if m.name.is_empty() {
        "(not started)"
    } else {
        &m.name
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn view(id: u64, name: &str, learner: bool, answers: bool) -> MemberView {
        MemberView {
            member: Member {
                id,
                name: name.into(),
                peer_urls: vec![format!("https://10.0.0.{id}:2380")],
                client_urls: vec![format!("https://10.0.0.{id}:2379")],
                learner,
            },
            answers,
            version: None,
        }
    }

    pub(in crate::member) fn plan(members: Vec<MemberView>) -> ReplacePlan {
        let mut p = ReplacePlan {
            run_id: "r".into(),
            name: "cp3".into(),
            peer_url: "https://10.0.0.3:2380".into(),
            local_endpoint: "https://127.0.0.1:2379".into(),
            manifests_dir: "/m".into(),
            holding_dir: "/h".into(),
            data_dir: "/var/lib/etcd".into(),
            aside_dir: "/var/lib/etcd.replaced-r".into(),
            cacert: None,
            cert: None,
            key: None,
            endpoints: Vec::new(),
            cluster_id: 1,
            members,
            stale: None,
            learner: None,
        };
        place_this_node(&mut p).unwrap();
        p
    }

    fn refusal(p: &ReplacePlan, force: bool) -> String {
        decide(p, force).unwrap_err().to_string()
    }

    #[test]
    fn a_dead_member_of_three_is_replaced_and_a_healthy_one_only_with_force() {
        let dead = plan(vec![
            view(1, "cp1", false, true),
            view(2, "cp2", false, true),
            view(3, "cp3", false, false),
        ]);
        assert_eq!(dead.stale, Some(3));
        assert!(decide(&dead, false).is_ok());
        let healthy = plan(vec![
            view(1, "cp1", false, true),
            view(2, "cp2", false, true),
            view(3, "cp3", false, true),
        ]);
        assert!(refusal(&healthy, false).contains("nothing to replace"));
        assert!(decide(&healthy, true).is_ok());
    }

    #[test]
    fn quorum_and_a_second_learner_are_refused_and_our_own_learner_is_resumed() {
        let two_dead = plan(vec![
            view(1, "cp1", false, true),
            view(2, "cp2", false, false),
            view(3, "cp3", false, false),
        ]);
        assert!(refusal(&two_dead, false).contains("quorum"));
        let pair = plan(vec![
            view(1, "cp1", false, true),
            view(3, "cp3", false, false),
        ]);
        assert!(refusal(&pair, false).contains("1 of the 2 voting members"));
        let other_learner = plan(vec![
            view(1, "cp1", false, true),
            view(2, "cp2", false, true),
            view(3, "cp3", false, false),
            view(4, "", true, false),
        ]);
        assert!(refusal(&other_learner, false).contains("already a learner"));
        // Removed and re-added as a learner by a run that stopped: it is ours, not refused.
        let ours = plan(vec![
            view(1, "cp1", false, true),
            view(2, "cp2", false, true),
            view(3, "", true, false),
        ]);
        assert_eq!((ours.stale, ours.learner), (None, Some(3)));
        assert!(decide(&ours, false).is_ok());
    }

    #[test]
    fn the_other_members_are_found_as_kubeadm_lays_them_out() {
        let text = "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: etcd\n    command:\n    - etcd\n    - --name=cp2\n    - --initial-advertise-peer-urls=https://10.0.0.12:2380\n    - --initial-cluster=cp1=https://10.0.0.11:2380,cp2=https://10.0.0.12:2380,cp3=https://10.0.0.13:2380\n    - --listen-client-urls=https://127.0.0.1:2379,https://10.0.0.12:2379\n";
        let local = discovery::parse_manifest(std::path::Path::new("etcd.yaml"), text).unwrap();
        assert_eq!(
            derived_endpoints(&local),
            ["https://10.0.0.11:2379", "https://10.0.0.13:2379"]
        );
        assert_eq!(
            identity(&local).unwrap(),
            ("cp2".to_string(), "https://10.0.0.12:2380".to_string())
        );
    }
}
