//! Hardening, round 3 (#21), against real etcd 3.5 and the journal `serve --continuous` writes:
//! a restore by time never crosses a hole in the journal, and objects planted under a chain's
//! name (anyone who can write the bucket can) neither stop restores, status or the capture nor
//! move them off the real chain.

use crate::harness::journal::{journal_json, segment_files, write_keys, Journal};
use crate::harness::{run, Version};

#[test]
fn a_hole_in_the_journal_is_never_restored_across_and_planted_chains_are_skipped() {
    let mut j = Journal::start(Version::V35);
    // Writes 60 ms apart: a segment every half second, each with its receive times.
    let last = write_keys(&j.etcd, "/registry/configmaps/h/a", 60, 60);
    j.wait_durable(last);
    let segments = segment_files(&j);
    assert!(segments.len() >= 4, "{segments:?}");
    let victim = segments[segments.len() / 2].clone();
    let at = victim["last_at"].as_str().unwrap().to_string();
    let to_time = format!("--to-time={at}");
    let before = j.get(&to_time, &j.out("before.db"));
    assert_eq!(before.code, 0, "{}\n{}", before.stdout, before.stderr);

    // The segments received around that time are deleted: the search would land on the one
    // before and restore an earlier revision without a word.
    std::fs::remove_file(crate::harness::journal::manifest_path(&j, &victim)).unwrap();
    let r = j.get(&to_time, &j.out("after.db"));
    assert_eq!(r.code, 7, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("hole"), "{}", r.stderr);
    let status = journal_json(&j, "status");
    let holes = &status["chains"][0]["holes"];
    assert_eq!(
        holes[0]["resumes_at_seq"].as_u64(),
        victim["seq"].as_u64().map(|s| s + 1),
        "{status}"
    );

    // A chain planted under a newer name of the same cluster, with a segment that is not
    // signed: status names it, restores before the hole still work, and a restarted capture
    // goes on with the real chain.
    let cluster =
        u64::from_str_radix(status["chains"][0]["cluster_id"].as_str().unwrap(), 16).unwrap();
    let planted = lifeboat::catalog::BackupId::new(chrono::Utc::now(), cluster).to_string();
    std::fs::write(
        j.dest()
            .join(format!("seg.{planted}.{:010}.{:019}.json", 1, 2)),
        b"{\"schema_version\":1}",
    )
    .unwrap();
    let status = journal_json(&j, "status");
    assert_eq!(
        status["untrusted_chains"][0]["chain"],
        planted.as_str(),
        "{status}"
    );
    let early = segments[1]["last_rev"].as_i64().unwrap();
    let r = j.get(&format!("--to-revision={early}"), &j.out("early.db"));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    j.serve.kill();
    j.restart();
    let more = write_keys(&j.etcd, "/registry/configmaps/h/b", 3, 0);
    j.wait_durable(more);
    let listed = segment_files(&j);
    let newest = listed.last().unwrap();
    assert_eq!(newest["chain"], victim["chain"], "{newest}");
    // (The restarted serve's election writes too: at or past the test's last write.)
    assert!(newest["last_rev"].as_i64() >= Some(more), "{newest}");
    // And the journal's own listing reader is not stopped by it either.
    let out = run(crate::harness::lifeboat()
        .args(["continuous", "status", "--dest"])
        .arg(j.dest()));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("UNTRUSTED") && out.stdout.contains("HOLE"),
        "{}",
        out.stdout
    );
}
