//! The meeting against a real (local) store: plans, joins, refusals — without etcd.

use super::objects::join_key;
use super::*;

#[test]
fn every_node_computes_the_same_member_list() {
    let j = |name: &str, port| Joined {
        run_id: "r".into(),
        cluster_id: "ab".into(),
        name: name.into(),
        peer_url: format!("https://10.0.0.{port}:2380"),
        joined_at: Utc::now(),
    };
    let plan = ClusterPlan {
        run_id: "r".into(),
        cluster_id: "ab".into(),
        backup_id: "b".into(),
        target_revision: None,
        members: 3,
        expected: Vec::new(),
        token: "t".into(),
        created_at: Utc::now(),
        join_by: Utc::now(),
        created_by: "cp2".into(),
    };
    let a = Rendezvous {
        plan: plan.clone(),
        joined: vec![j("cp3", 13), j("cp1", 11), j("cp2", 12)],
    };
    let b = Rendezvous {
        plan,
        joined: vec![j("cp2", 12), j("cp3", 13), j("cp1", 11)],
    };
    assert_eq!(a.initial_cluster(), b.initial_cluster());
    assert_eq!(
        a.initial_cluster(),
        "cp1=https://10.0.0.11:2380,cp2=https://10.0.0.12:2380,cp3=https://10.0.0.13:2380"
    );
    assert_eq!(
        join_key("ab", "r", "cp 1/x"),
        "cluster-restore.ab.r.join.cp_1_x.json"
    );
}

mod meeting {
    use std::time::Duration;

    use super::super::objects::slot_key;
    use super::*;
    use crate::store::LocalStore;
    use crate::trust::{generate, TrustedKeys};

    const CLUSTER: &str = "6d9780159c4d479d";

    struct Ground {
        _dir: tempfile::TempDir,
        meeting: Meeting,
    }

    fn ground(members: usize, join_timeout: Duration) -> Ground {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("signing.key");
        let (public, _) = generate(&key).unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::open(&dir.path().join("store")).unwrap());
        let trusted = TrustedKeys::from_files(&[public]).unwrap();
        Ground {
            meeting: Meeting {
                store,
                policy: Arc::new(ReadPolicy::new(trusted, None).unwrap()),
                signer: Some(Arc::new(SigningKey::from_file(&key).unwrap())),
                members: Some(members),
                join_timeout,
                poll: Duration::from_millis(20),
            },
            _dir: dir,
        }
    }

    fn wanted(backup: &str, any_backup: bool) -> Wanted {
        Wanted {
            cluster_id: CLUSTER.into(),
            backup_id: backup.into(),
            target_revision: None,
            voting_members: None,
            any_backup,
        }
    }

    fn node(n: u8) -> Node {
        Node {
            name: format!("cp{n}"),
            peer_url: format!("https://10.0.0.1{n}:2380"),
        }
    }

    async fn wait_for_a_plan(m: &Meeting) -> ClusterPlan {
        for _ in 0..500 {
            if let Some(p) = m.open_at(CLUSTER, 1).await.unwrap() {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no plan was opened");
    }

    #[tokio::test]
    async fn another_backup_is_refused_while_a_plan_is_open_and_latest_joins_it() {
        let g = ground(2, Duration::from_secs(30));
        let m = g.meeting.clone();
        let first = tokio::spawn(async move { m.meet(&wanted("b1", false), &node(1)).await });
        let plan = wait_for_a_plan(&g.meeting).await;
        assert_eq!(plan.backup_id, "b1");
        let err = g
            .meeting
            .meet(&wanted("b2", false), &node(2))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("another cluster restore") && err.contains(&plan.run_id),
            "{err}"
        );
        // `latest` on the second node takes the plan's backup, and both meet.
        let second = g.meeting.meet(&wanted("b2", true), &node(2)).await.unwrap();
        let first = first.await.unwrap().unwrap();
        assert_eq!(second.plan, first.plan);
        assert_eq!(second.plan.backup_id, "b1");
        assert_eq!(second.initial_cluster(), first.initial_cluster());
        assert_eq!(
            first.initial_cluster(),
            "cp1=https://10.0.0.11:2380,cp2=https://10.0.0.12:2380"
        );
    }

    #[tokio::test]
    async fn a_member_that_never_joins_fails_the_run_naming_who_did_and_who_did_not() {
        let g = ground(2, Duration::from_millis(300));
        let named = Meeting {
            members: None,
            ..g.meeting.clone()
        };
        let with_names = Wanted {
            voting_members: Some(vec!["cp1".into(), "cp2".into()]),
            ..wanted("b1", false)
        };
        let err = named
            .meet(&with_names, &node(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1 of 2 members joined (cp1; missing: cp2)"),
            "{err}"
        );
        let err = g
            .meeting
            .meet(&wanted("b1", false), &node(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1 of 2 members joined (cp1; 1 missing)"),
            "{err}"
        );
        assert!(err.contains("--members 1"), "{err}");
        // Expired: the next run opens a plan of its own.
        let g2 = Ground {
            meeting: Meeting {
                members: Some(1),
                ..g.meeting.clone()
            },
            ..g
        };
        let rv = g2
            .meeting
            .meet(&wanted("b1", false), &node(1))
            .await
            .unwrap();
        assert_eq!(rv.joined.len(), 1);
    }

    #[tokio::test]
    async fn nodes_that_open_a_plan_at_once_all_take_the_same_one() {
        for _ in 0..10 {
            let g = ground(3, Duration::from_secs(30));
            let meets: Vec<_> = (1..=3)
                .map(|n| {
                    let m = g.meeting.clone();
                    tokio::spawn(async move { m.meet(&wanted("b1", false), &node(n)).await })
                })
                .collect();
            let mut runs = Vec::new();
            for m in meets {
                runs.push(m.await.unwrap().unwrap().plan.run_id);
            }
            runs.dedup();
            assert_eq!(runs.len(), 1, "the nodes took different plans: {runs:?}");
        }
    }

    #[tokio::test]
    async fn an_unsigned_plan_is_ignored() {
        let g = ground(1, Duration::from_secs(30));
        let planted = ClusterPlan {
            run_id: "20260101T000000.000Z-0000".into(),
            cluster_id: CLUSTER.into(),
            backup_id: "evil".into(),
            target_revision: None,
            members: 1,
            expected: Vec::new(),
            token: "t".into(),
            created_at: Utc::now(),
            join_by: Utc::now() + chrono::Duration::minutes(5),
            created_by: "x".into(),
        };
        write_signed(
            g.meeting.store.as_ref(),
            None,
            &slot_key(CLUSTER, 1),
            "plan",
            &planted,
            Write::Create,
        )
        .await
        .unwrap();
        let rv = g
            .meeting
            .meet(&wanted("b1", false), &node(1))
            .await
            .unwrap();
        assert_eq!(rv.plan.backup_id, "b1");
        assert_ne!(rv.plan.run_id, planted.run_id);
    }
}
