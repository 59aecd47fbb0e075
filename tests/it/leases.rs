//! Exact leases in point-in-time restores (#22, part 3), against real etcd 3.5: a restore to
//! revision R holds the leases of the state at R — none granted after it — with their ids and
//! granted TTLs, whether a lease was first seen through its first key or, unused, by a listing;
//! and a short lease the cluster keeps alive outlives a replay longer than its TTL.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use etcd_client::{Client, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions};

use crate::harness::data::{client, rt};
use crate::harness::journal::{assert_same, expect_at, head, observed, write_keys, Journal};
use crate::harness::{etcdutl_bin, free_port, run_ok, EtcdProcess, Version};

/// Every live lease of the restored file and its granted TTL.
fn leases_in(snapshot: &Path, dir: &Path) -> BTreeMap<i64, i64> {
    let data = tempfile::tempdir_in(dir).unwrap().keep().join("data");
    let peer = format!("http://127.0.0.1:{}", free_port());
    run_ok(
        std::process::Command::new(etcdutl_bin())
            .args(["snapshot", "restore"])
            .arg(snapshot)
            .arg(format!("--data-dir={}", data.display()))
            .arg("--name=default")
            .arg(format!("--initial-cluster=default={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}")),
    );
    let back = EtcdProcess::start_on(Version::V35, None, &data, Some(("default", &peer)));
    rt().block_on(async {
        let mut c = client(&back).await;
        live_leases(&mut c).await
    })
}

async fn live_leases(c: &mut Client) -> BTreeMap<i64, i64> {
    let mut out = BTreeMap::new();
    for l in c.leases().await.unwrap().leases() {
        let t = c
            .lease_time_to_live(l.id(), Some(LeaseTimeToLiveOptions::new()))
            .await
            .unwrap();
        out.insert(l.id(), t.granted_ttl());
    }
    out
}

async fn put(c: &mut Client, key: &str, lease: Option<i64>) -> i64 {
    let opts = lease.map(|l| PutOptions::new().with_lease(l));
    c.put(key, "v", opts)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

#[test]
fn a_restore_holds_no_lease_granted_after_its_revision() {
    let j = Journal::start(Version::V35);
    let (before_all, points) = rt().block_on(async {
        let mut c = client(&j.etcd).await;
        // What was there before the load (lifeboat's own election lease): in every state.
        let before_all = live_leases(&mut c).await;
        let mut points = Vec::new();
        for i in 0..3i64 {
            // R0: before the grant; the grant comes after R0 + 1 is written; R2: its first key.
            let r0 = put(&mut c, &format!("/registry/pods/l/filler-a{i}"), None).await;
            put(&mut c, &format!("/registry/pods/l/filler-b{i}"), None).await;
            let id = 0x7000 + i;
            c.lease_grant(600 + i, Some(LeaseGrantOptions::new().with_id(id)))
                .await
                .unwrap();
            let r2 = put(&mut c, &format!("/registry/pods/l/held{i}"), Some(id)).await;
            points.push((r0, id, 600 + i, r2));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // A lease granted and never used: only a listing at a segment's seal finds it.
        let unused_before = put(&mut c, "/registry/pods/l/filler-c", None).await;
        put(&mut c, "/registry/pods/l/filler-d", None).await;
        c.lease_grant(900, Some(LeaseGrantOptions::new().with_id(0x7100)))
            .await
            .unwrap();
        points.push((unused_before, 0x7100, 900, i64::MAX));
        (before_all, points)
    });
    // Writes go on so that segments seal (and list the unused lease) after every grant.
    let last = write_keys(&j.etcd, "/registry/pods/l/after", 20, 100);
    j.wait_durable(last);

    for (i, (r0, id, ttl, r2)) in points.iter().enumerate() {
        for (rev, present) in [
            (*r0, false),
            (if *r2 == i64::MAX { last } else { *r2 }, true),
        ] {
            let out = j.out(&format!("at-{i}-{rev}.db"));
            let r = j.get(&format!("--to-revision={rev}"), &out);
            assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
            let got = leases_in(&out, j.dir.path());
            assert_eq!(
                got.get(id),
                present.then_some(ttl),
                "lease {id:x} at revision {rev}: {got:x?}"
            );
            // Nothing but the leases of that state: what was there before, and the load's
            // leases granted before it.
            let allowed: BTreeSet<i64> = before_all
                .keys()
                .copied()
                .chain(points.iter().filter(|p| p.3 <= rev).map(|p| p.1))
                .chain((rev == last).then_some(0x7100))
                .collect();
            for lease in got.keys() {
                assert!(
                    allowed.contains(lease),
                    "lease {lease:x} from the future at revision {rev}: {got:x?}"
                );
            }
        }
    }
}

#[test]
fn a_short_lease_kept_alive_by_the_cluster_outlives_a_longer_replay() {
    let j = Journal::start(Version::V35);
    // A 2 s lease the cluster keeps alive while 15,000 revisions go by: replaying them takes
    // several seconds here (about 2,500/s), so the sandbox would expire the lease — a revision
    // the cluster never had, which stops the replay — unless the replay keeps it alive too.
    let (lease, last) = rt().block_on(async {
        let mut c = client(&j.etcd).await;
        let lease = c.lease_grant(2, None).await.unwrap().id();
        c.put(
            "/registry/leases/kube-system/holder",
            "me",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
        let (mut keeper, mut stream) = c.lease_keep_alive(lease).await.unwrap();
        let keeping = tokio::spawn(async move {
            loop {
                keeper.keep_alive().await.unwrap();
                let _ = stream.message().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        for i in 0..15_000 {
            c.put(
                format!("/registry/pods/churn/p{}", i % 50),
                format!("{i}"),
                None,
            )
            .await
            .unwrap();
        }
        let last = head(&mut c).await;
        keeping.abort();
        (lease, last)
    });
    j.wait_durable(last);
    let expected = rt().block_on(async {
        let mut c = client(&j.etcd).await;
        expect_at(&mut c, last, &BTreeMap::from([(lease, 2)])).await
    });
    let out = j.out("kept-alive.db");
    let r = j.get(&format!("--to-revision={last}"), &out);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_same(
        &expected,
        &observed(Version::V35, &out, j.dir.path(), last),
        "kept alive",
    );
}
