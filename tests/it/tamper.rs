//! A journal that was tampered with is never restored from: a flipped byte in a segment, a
//! segment gone from the middle of a chain, a checkpoint whose hash was changed (and the
//! segment re-signed, as whoever holds the signing key could) each stop the restore, naming
//! the segment, and nothing is written.

use crate::harness::journal::{
    flip_a_byte, manifest_path, rewrite_checkpoint, segment_files, write_keys, Journal,
};
use crate::harness::Version;

#[test]
fn a_tampered_segment_a_broken_chain_and_a_checkpoint_mismatch_stop_the_restore() {
    let j = Journal::start(Version::V35);
    // Segments with checkpoints: writes over a few seconds (checkpoint_interval 1s).
    let last = write_keys(&j.etcd, "/registry/configmaps/t/c", 60, 60);
    j.wait_durable(last);
    let segments = segment_files(&j);
    assert!(segments.len() >= 3, "{segments:?}");
    let target = format!("--to-revision={last}");

    // A flipped byte in a segment object.
    let victim = &segments[1];
    let object = j.dest().join(victim["object"]["key"].as_str().unwrap());
    let original = flip_a_byte(&object);
    let r = j.get(&target, &j.out("tampered.db"));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr.contains(victim["object"]["key"].as_str().unwrap())
            && r.stderr.contains("tampered"),
        "{}",
        r.stderr
    );
    assert!(!j.out("tampered.db").exists(), "nothing written");
    std::fs::write(&object, &original).unwrap();

    // A segment taken out of the chain.
    let manifest = manifest_path(&j, victim);
    let aside = j.out("aside.json");
    std::fs::rename(&manifest, &aside).unwrap();
    let r = j.get(&target, &j.out("broken.db"));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("is missing"), "{}", r.stderr);
    std::fs::rename(&aside, &manifest).unwrap();

    // A segment whose recorded checkpoint the replay does not reach (as a writer bug would
    // make it: re-encoded and re-signed, so only the replay can tell).
    let with_checkpoint = segments
        .iter()
        .rev()
        .find(|m| m["checkpoints"].as_u64() > Some(0))
        .expect("a segment with a checkpoint");
    rewrite_checkpoint(&j, with_checkpoint);
    let rev = with_checkpoint["last_rev"].as_i64().unwrap();
    let r = j.get(&format!("--to-revision={rev}"), &j.out("mismatch.db"));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("checkpoint at revision {rev} FAILED")),
        "{}",
        r.stderr
    );
    assert!(!j.out("mismatch.db").exists(), "nothing written");
    // A drill of that point fails the same way.
    let d = j.drill(&format!("--to-revision={rev}"));
    assert_eq!(d.code, 4, "{}", d.stderr);
    assert!(
        d.stderr.contains("point-in-time drill FAILED"),
        "{}",
        d.stderr
    );
}
