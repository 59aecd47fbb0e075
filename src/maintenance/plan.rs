//! Which members to defragment, in which order, or why not now (pure: a survey and the rules
//! in, a plan out).

use serde::Serialize;

use super::survey::{MemberState, Survey};
use super::Rules;

/// Which members the caller asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// Those over the thresholds (serve, and `defrag` without `--member`/`--all`).
    OverThresholds,
    /// Every member (`--all`).
    All,
    /// One member by name (`--member`).
    Member(String),
}

/// One defragmentation to run.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub member: MemberState,
    /// What it should give back (the free pages now).
    pub expected_reclaim: u64,
}

/// The decision.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Followers first, the leader last.
    pub order: Vec<Planned>,
    /// Members left out, and why.
    pub skipped: Vec<(String, String)>,
    /// Why nothing may run now (an unhealthy member, another alarm).
    pub blocked: Option<String>,
    /// NOSPACE is raised: compact first (when the rules say so), disarm after.
    pub nospace: bool,
    /// Move leadership away from the leader before defragmenting it.
    pub move_leader: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Decides from `survey` under `rules` for `pick`.
pub fn plan(survey: &Survey, rules: &Rules, pick: &Pick) -> Plan {
    let nospace = survey.nospace();
    let mut plan = Plan {
        order: Vec::new(),
        skipped: Vec::new(),
        blocked: blocked(survey),
        nospace,
        move_leader: rules.move_leader,
    };
    if let Pick::Member(name) = pick {
        if !survey.members.iter().any(|m| &m.name == name) {
            let known: Vec<&str> = survey.members.iter().map(|m| m.name.as_str()).collect();
            plan.blocked = Some(format!(
                "no member named {name} (the members: {})",
                known.join(", ")
            ));
            return plan;
        }
    }
    for m in &survey.members {
        match why_not(m, rules, pick, nospace) {
            Some(why) => plan.skipped.push((m.name.clone(), why)),
            None => plan.order.push(Planned {
                member: m.clone(),
                expected_reclaim: m.reclaimable(),
            }),
        }
    }
    // Followers first (the most to give back first), the leader last: a leader blocked by its
    // defragmentation stalls every write until it answers again or loses leadership.
    plan.order.sort_by_key(|p| {
        (
            p.member.is_leader,
            std::cmp::Reverse(p.expected_reclaim),
            p.member.name.clone(),
        )
    });
    plan
}

/// Nothing runs while a member is unhealthy or an alarm other than NOSPACE is raised.
fn blocked(survey: &Survey) -> Option<String> {
    let mut why: Vec<String> = survey
        .members
        .iter()
        .filter_map(|m| m.problem.as_ref().map(|p| format!("{}: {p}", m.name)))
        .collect();
    why.extend(survey.other_alarms());
    if !survey.members.iter().any(|m| m.is_leader) && why.is_empty() {
        why.push("no member is the leader".into());
    }
    (!why.is_empty()).then(|| why.join("; "))
}

fn why_not(m: &MemberState, rules: &Rules, pick: &Pick, nospace: bool) -> Option<String> {
    if m.learner {
        return Some("a learner (promote it first)".into());
    }
    match pick {
        Pick::Member(name) if &m.name != name => return Some("not asked for".into()),
        Pick::Member(_) | Pick::All => return None,
        Pick::OverThresholds if nospace => return None,
        Pick::OverThresholds => {}
    }
    if m.db_size < rules.min_db_size {
        return Some(format!(
            "{} is below min_db_size ({})",
            indicatif::HumanBytes(m.db_size),
            indicatif::HumanBytes(rules.min_db_size)
        ));
    }
    if m.fragmentation() < rules.fragmentation_ratio {
        return Some(format!(
            "{:.0} % free pages is below fragmentation_ratio ({:.0} %)",
            m.fragmentation() * 100.0,
            rules.fragmentation_ratio * 100.0
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::maintenance::Alarm;

    fn member(name: &str, id: u64, size_mib: u64, used_mib: u64, leader: bool) -> MemberState {
        MemberState {
            id,
            name: name.into(),
            endpoint: format!("https://{name}:2379"),
            db_size: size_mib << 20,
            db_size_in_use: used_mib << 20,
            is_leader: leader,
            learner: false,
            problem: None,
        }
    }

    fn survey(members: Vec<MemberState>, alarms: Vec<Alarm>) -> Survey {
        Survey {
            cluster_id: 1,
            revision: 100,
            members,
            alarms,
            quota: 2 << 30,
        }
    }

    fn rules() -> Rules {
        Rules {
            fragmentation_ratio: 0.5,
            min_db_size: 100 << 20,
            move_leader: false,
            compact_on_nospace: true,
        }
    }

    fn names(p: &Plan) -> Vec<&str> {
        p.order.iter().map(|x| x.member.name.as_str()).collect()
    }

    #[test]
    fn followers_first_the_leader_last_only_over_both_thresholds() {
        let s = survey(
            vec![
                member("a", 1, 400, 100, true),
                member("b", 2, 300, 100, false),
                member("c", 3, 500, 100, false),
                member("d", 4, 90, 10, false),   // too small
                member("e", 5, 400, 300, false), // not fragmented enough
            ],
            vec![],
        );
        let p = plan(&s, &rules(), &Pick::OverThresholds);
        assert_eq!(p.blocked, None);
        assert_eq!(names(&p), ["c", "b", "a"]);
        assert_eq!(p.order[0].expected_reclaim, 400 << 20);
        let skipped: Vec<&str> = p.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(skipped, ["d", "e"]);
        assert!(p.skipped[0].1.contains("min_db_size"), "{:?}", p.skipped);
        assert!(
            p.skipped[1].1.contains("fragmentation_ratio"),
            "{:?}",
            p.skipped
        );
        // --all takes every member (the most to give back first); --member one.
        assert_eq!(
            names(&plan(&s, &rules(), &Pick::All)),
            ["c", "b", "e", "d", "a"]
        );
        assert_eq!(names(&plan(&s, &rules(), &Pick::Member("d".into()))), ["d"]);
        let unknown = plan(&s, &rules(), &Pick::Member("z".into()));
        assert!(unknown.blocked.unwrap().contains("no member named z"));
    }

    #[test]
    fn an_unhealthy_member_or_another_alarm_blocks_and_nospace_takes_every_member() {
        let mut down = member("b", 2, 300, 100, false);
        down.problem = Some("connection refused".into());
        let s = survey(vec![member("a", 1, 400, 100, true), down], vec![]);
        assert!(plan(&s, &rules(), &Pick::OverThresholds)
            .blocked
            .unwrap()
            .contains("b: connection refused"));
        let corrupt = Alarm {
            member_id: 1,
            kind: "CORRUPT".into(),
        };
        let s = survey(vec![member("a", 1, 400, 100, true)], vec![corrupt]);
        assert!(plan(&s, &rules(), &Pick::OverThresholds)
            .blocked
            .unwrap()
            .contains("CORRUPT on member 1"));
        // NOSPACE: small, unfragmented members too (the compaction frees what they hold).
        let nospace = Alarm {
            member_id: 1,
            kind: "NOSPACE".into(),
        };
        let s = survey(
            vec![member("a", 1, 20, 19, true), member("b", 2, 20, 19, false)],
            vec![nospace],
        );
        let p = plan(&s, &rules(), &Pick::OverThresholds);
        assert_eq!(p.blocked, None);
        assert!(p.nospace);
        assert_eq!(names(&p), ["b", "a"]);
    }
}
