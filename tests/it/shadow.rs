//! The shadow (#14), against real etcd 3.5: `lifeboat shadow` follows the journal that `serve
//! --continuous` writes, proves its checkpoints, and cuts bases that equal the production
//! cluster at their revision; a tampered segment, a forged checkpoint and a missing segment
//! each stop it with no base past them.

use std::path::PathBuf;
use std::time::Duration;

use crate::harness::data::{client, rt};
use crate::harness::journal::{
    compact, flip_a_byte, manifest_path, rewrite_checkpoint, segment_files, write_keys, Journal,
};
use crate::harness::serve::{wait_until, Serve};
use crate::harness::{lifeboat, run, test_keys, Run, Version};

/// The shadow's own signing key pair (it signs its bases; readers trust its .pub).
fn shadow_key(j: &Journal) -> (PathBuf, PathBuf) {
    let secret = j.out("shadow.key");
    let (public, _) = lifeboat::trust::generate(&secret).unwrap();
    (secret, public)
}

/// Reader flags that trust the writers' key and, as a shadow's only, `public` (#21).
fn trusting_shadow(public: &std::path::Path) -> Vec<String> {
    vec![
        "--trusted-key".into(),
        test_keys().public.display().to_string(),
        "--trusted-shadow-key".into(),
        public.display().to_string(),
    ]
}

/// `lifeboat shadow --until-revision REV`, a base at every checkpoint.
fn shadow_until(j: &Journal, rev: i64, key: &PathBuf) -> Run {
    run(&mut shadow_command(j, rev, key))
}

fn shadow_command(j: &Journal, rev: i64, key: &PathBuf) -> std::process::Command {
    let mut cmd = following(j, key, "1ms");
    cmd.arg(format!("--until-revision={rev}"));
    cmd
}

/// A shadow with no end and no base soon (`following`, 1 h), once it applied `rev`.
fn following_until_applied(j: &Journal, key: &PathBuf, rev: i64) -> Serve {
    let shadow = Serve::start(following(j, key, "1h"), j.out("shadow.log"));
    wait_until(
        "the shadow applied the journal",
        Duration::from_secs(60),
        || shadow.metric("lifeboat_shadow_applied_revision") >= rev as f64,
    );
    shadow
}

/// `lifeboat shadow` with no end, a base every `base_interval`.
fn following(j: &Journal, key: &PathBuf, base_interval: &str) -> std::process::Command {
    let mut cmd = lifeboat();
    cmd.args(["shadow", "-w", "json", "--poll-interval", "100ms"])
        .args(["--base-interval", base_interval])
        .args(["-r", &j.key.recipient])
        .arg("--signing-key")
        .arg(key);
    j.replaying(&mut cmd, "shadow");
    cmd
}

fn state(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", r.stdout, r.stderr))
}

fn base_revisions(state: &serde_json::Value) -> Vec<i64> {
    state["bases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["revision"].as_i64().unwrap())
        .collect()
}

/// The production member's HashKV at `rev`: hash and compact revision.
fn production_hash(j: &Journal, rev: i64) -> (u32, i64) {
    rt().block_on(async {
        let c = client(&j.etcd).await;
        let r = c.maintenance_client().hash_kv(rev).await.unwrap();
        (r.hash(), r.compact_version())
    })
}

/// A backup's manifest in the folder store.
fn manifest_of(j: &Journal, id: &str) -> serde_json::Value {
    let path = j.dest().join(format!("{id}.manifest.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// A journal of `n` puts under `prefix` (60 ms apart: segments with checkpoints, one a
/// second), durable; the revision of the last put.
fn journal_of(prefix: &str, n: usize) -> (Journal, i64) {
    let j = Journal::start(Version::V35);
    let last = write_keys(&j.etcd, prefix, n, 60);
    j.wait_durable(last);
    (j, last)
}

/// The shadow with production and its sandbox on etcd `v` (#26): it follows the journal to
/// the end, verifying checkpoints, and its newest base equals production at its revision.
fn the_shadow_proves_the_journal_of(v: Version) {
    let j = Journal::start(v);
    let last = write_keys(&j.etcd, "/registry/configmaps/v/c", 20, 60);
    j.wait_durable(last);
    let (key, _) = shadow_key(&j);
    let r = shadow_until(&j, last, &key);
    assert_eq!(r.code, 0, "{v:?}: {}\n{}", r.stdout, r.stderr);
    let s = state(&r);
    assert!(s["stopped"].is_null(), "{v:?}: {s}");
    assert!(s["checkpoints_verified"].as_u64() >= Some(1), "{v:?}: {s}");
    assert!(s["applied_revision"].as_i64() >= Some(last), "{v:?}: {s}");
    let base = s["bases"].as_array().unwrap().last().cloned().unwrap();
    let m = manifest_of(&j, base["id"].as_str().unwrap());
    let (hash, _) = production_hash(&j, m["revision"].as_i64().unwrap());
    assert_eq!(
        m["hashkv"]["hash"].as_u64(),
        Some(u64::from(hash)),
        "{v:?}: {m}"
    );
}

#[test]
fn the_shadow_proves_the_journal_on_etcd_3_4() {
    the_shadow_proves_the_journal_of(Version::V34);
}

#[test]
fn the_shadow_proves_the_journal_on_etcd_3_5() {
    the_shadow_proves_the_journal_of(Version::V35);
}

#[test]
fn the_shadow_proves_the_journal_on_etcd_3_5_30() {
    the_shadow_proves_the_journal_of(Version::V3530);
}

#[test]
fn the_shadow_proves_the_journal_and_its_bases_equal_production_at_their_revision() {
    let (j, first) = journal_of("/registry/configmaps/s/c", 30);
    let (key, public) = shadow_key(&j);
    // The shadow starts on what is there and follows the segments committed after it (one
    // revision per put).
    let last = first + 30;
    let mut cmd = shadow_command(&j, last, &key);
    let shadow = std::thread::spawn(move || run(&mut cmd));
    assert_eq!(
        write_keys(&j.etcd, "/registry/configmaps/s/d", 30, 60),
        last
    );
    let r = shadow.join().unwrap();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let s = state(&r);
    assert!(s["stopped"].is_null(), "{s}");
    assert!(s["checkpoints_verified"].as_u64() >= Some(2), "{s}");
    assert!(s["applied_revision"].as_i64() >= Some(last), "{s}");
    let verified = s["verified_revision"].as_i64().unwrap();
    assert!(
        verified > s["journal_revision"].as_i64().unwrap() - 100,
        "{s}"
    );
    let bases = s["bases"].as_array().unwrap();
    assert!(!bases.is_empty(), "{s}");
    for b in bases {
        let id = b["id"].as_str().unwrap();
        let rev = b["revision"].as_i64().unwrap();
        let m = manifest_of(&j, id);
        assert_eq!(m["reason"], "shadow", "{m}");
        assert_eq!(m["revision"].as_i64(), Some(rev), "{m}");
        // #21: the time its data was written (the capture's receive time of its revision),
        // besides the time it was cut.
        let data_at = chrono::DateTime::parse_from_rfc3339(m["data_at"].as_str().unwrap()).unwrap();
        let cut_at =
            chrono::DateTime::parse_from_rfc3339(m["created_at"].as_str().unwrap()).unwrap();
        assert!(data_at <= cut_at, "{m}");
        // Same cluster as production (its first full backup names the chain), and equal to
        // it at that revision.
        let production = manifest_of(&j, segment_files(&j)[0]["chain"].as_str().unwrap());
        assert_eq!(m["cluster_id"], production["cluster_id"], "{m}");
        let (hash, compact) = production_hash(&j, rev);
        assert_eq!(m["hashkv"]["hash"].as_u64(), Some(u64::from(hash)), "{m}");
        assert_eq!(
            m["hashkv"]["compact_revision"].as_i64(),
            Some(compact),
            "{m}"
        );
    }
    let newest_base = bases.last().unwrap()["id"].as_str().unwrap().to_string();

    // The verified window: what the shadow proved, for readers that trust its key.
    let trust = trusting_shadow(&public);
    let status = |trusted: &[String]| {
        run(lifeboat()
            .args(["continuous", "status", "-w", "json"])
            .args(trusted)
            .arg("--dest")
            .arg(j.dest()))
        .ok()
        .json()
    };
    let trusting = status(&trust);
    assert_eq!(
        trusting["proven_rev"].as_i64(),
        Some(verified),
        "{trusting}"
    );
    let untrusting = status(&[
        "--trusted-key".into(),
        test_keys().public.display().to_string(),
    ]);
    assert!(untrusting["proven_rev"].is_null(), "{untrusting}");

    // A reader that trusts the shadow's key restores the base with etcd's own tool in a
    // sandbox (the drill) and finds it as its manifest says.
    let mut drill = lifeboat();
    drill
        .args(["drill", &newest_base])
        .args(&trust)
        .arg("-i")
        .arg(&j.key.identity_file)
        .arg("--dest")
        .arg(j.dest())
        .arg("--etcd")
        .arg(crate::harness::etcd_bin(Version::V35))
        .arg("--etcdutl")
        .arg(crate::harness::etcdutl_bin())
        .arg("--work-dir")
        .arg(j.out("drill"));
    let d = run(&mut drill);
    assert_eq!(d.code, 0, "{}\n{}", d.stdout, d.stderr);

    // A point in time after it replays from the shadow's base, not the journal's first one.
    let mut get = lifeboat();
    get.args(["snapshot", "get", &format!("--to-revision={last}"), "-o"])
        .arg(j.out("pitr.db"))
        .args(&trust);
    j.replaying(&mut get, "pitr");
    let g = run(&mut get);
    assert_eq!(g.code, 0, "{}\n{}", g.stdout, g.stderr);
    assert!(
        g.stderr.contains(&format!("base backup {newest_base}")),
        "{}",
        g.stderr
    );
    // Without trusting the shadow's key, its bases are not used.
    let mut untrusting = lifeboat();
    untrusting
        .args(["snapshot", "get", &format!("--to-revision={last}"), "-o"])
        .arg(j.out("pitr-untrusting.db"));
    j.replaying(&mut untrusting, "pitr2");
    let u = run(&mut untrusting);
    assert_eq!(u.code, 0, "{}\n{}", u.stdout, u.stderr);
    assert!(!u.stderr.contains(&newest_base), "{}", u.stderr);

    // #21: for a reader that trusts the shadow, `latest` is its newest base (the highest
    // revision), confirmed by the journal's writer-signed checkpoint there.
    let latest = |out: &str| {
        let mut get = lifeboat();
        get.args(["snapshot", "get", "latest", "-o"])
            .arg(j.out(out))
            .args(&trust)
            .arg("-i")
            .arg(&j.key.identity_file)
            .arg("--dest")
            .arg(j.dest());
        run(&mut get)
    };
    let l = latest("latest.db").ok();
    assert!(l.stdout.contains(&newest_base), "{}", l.stdout);
    // A base the shadow's key signed at a revision no checkpoint confirms (what a stolen
    // shadow key could make) is neither `latest` nor restorable by its id.
    let forged = forge_shadow_base(&j, &newest_base, &key);
    let l = latest("latest2.db").ok();
    assert!(l.stdout.contains(&newest_base), "{}", l.stdout);
    assert!(l.stderr.contains(&forged), "{}", l.stderr);
    let mut by_id = lifeboat();
    by_id
        .args(["snapshot", "get", &forged, "-o"])
        .arg(j.out("forged.db"))
        .args(&trust)
        .arg("-i")
        .arg(&j.key.identity_file)
        .arg("--dest")
        .arg(j.dest());
    let f = run(&mut by_id);
    assert_eq!(f.code, 4, "{}\n{}", f.stdout, f.stderr);
    assert!(f.stderr.contains("is not used"), "{}", f.stderr);
}

/// A copy of base `id` under a new id one revision later, signed with the shadow's `key`: a
/// shadow base no journal checkpoint confirms. Returns its id.
fn forge_shadow_base(j: &Journal, id: &str, key: &std::path::Path) -> String {
    let mut m = manifest_of(j, id);
    let cluster = u64::from_str_radix(m["cluster_id"].as_str().unwrap(), 16).unwrap();
    let new = lifeboat::catalog::BackupId::new(chrono::Utc::now(), cluster);
    let object = new.object_key(true);
    std::fs::copy(
        j.dest().join(m["object"]["key"].as_str().unwrap()),
        j.dest().join(&object),
    )
    .unwrap();
    m["id"] = new.to_string().into();
    m["created_at"] = new.time.to_rfc3339().into();
    m["object"]["key"] = object.into();
    m["revision"] = (m["revision"].as_i64().unwrap() + 1).into();
    m["hashkv"]["hash"] = (m["hashkv"]["hash"].as_u64().unwrap() ^ 1).into();
    let name = new.manifest_key();
    let bytes = serde_json::to_vec_pretty(&m).unwrap();
    let sig = lifeboat::trust::SigningKey::from_file(key)
        .unwrap()
        .sign(&name, &bytes)
        .unwrap();
    std::fs::write(j.dest().join(&name), bytes).unwrap();
    std::fs::write(j.dest().join(format!("{name}.minisig")), sig).unwrap();
    new.to_string()
}

/// A base streams beside the replay: while one waits before its commit (the test hold), the
/// shadow goes on proving revisions past it, and takes no second base meanwhile; the base,
/// committed once let go, equals production at its revision.
#[test]
fn the_shadow_goes_on_proving_while_a_base_is_written() {
    let (j, _) = journal_of("/registry/configmaps/h/c", 30);
    let (key, _) = shadow_key(&j);
    let release = j.out("release");
    let mut cmd = following(&j, &key, "1ms");
    cmd.env("LIFEBOAT_TEST_HOLD_BEFORE_COMMIT", &release)
        .env("LIFEBOAT_LOG_LEVEL", "info");
    let mut shadow = Serve::start(cmd, j.out("shadow.log"));
    let streaming = "shadow base streaming from the sandbox";
    shadow.wait_until(
        "a base held before its commit",
        Duration::from_secs(60),
        |shadow| {
            let log = shadow.log_text();
            log.contains("test hold before commit") && log.contains(streaming)
        },
    );
    let log = shadow.log_text();
    let line = log.lines().find(|l| l.contains(streaming)).unwrap();
    let held: i64 = line
        .split("rev=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {line}"));
    // More to replay and prove (a checkpoint a second) while the base is held.
    let last = write_keys(&j.etcd, "/registry/configmaps/h/d", 30, 60);
    j.wait_durable(last);
    shadow.wait_until(
        "proofs past the held base",
        Duration::from_secs(60),
        |shadow| shadow.metric("lifeboat_shadow_verified_revision") > held as f64,
    );
    let log = shadow.log_text();
    assert_eq!(log.matches(streaming).count(), 1, "{log}");
    assert!(!log.contains("shadow base committed"), "{log}");

    std::fs::write(&release, b"go").unwrap();
    shadow.wait_until(
        "the held base committed",
        Duration::from_secs(60),
        |shadow| shadow.log_text().contains("shadow base committed"),
    );
    assert_following(&shadow);
    shadow.stop_with(0);
    let id = shadow_bases(&j)
        .into_iter()
        .find(|m| m["revision"].as_i64() == Some(held))
        .unwrap_or_else(|| panic!("no base at {held}: {}", shadow.log_text()))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let m = manifest_of(&j, &id);
    let (hash, compact) = production_hash(&j, held);
    assert_eq!(m["hashkv"]["hash"].as_u64(), Some(u64::from(hash)), "{m}");
    assert_eq!(m["hashkv"]["compact_revision"].as_i64(), Some(compact));
}

/// The manifests of the shadow's bases in the folder store.
fn shadow_bases(j: &Journal) -> Vec<serde_json::Value> {
    std::fs::read_dir(j.dest())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let id = name.strip_suffix(".manifest.json")?.to_string();
            Some(manifest_of(j, &id))
        })
        .filter(|m| m["reason"] == "shadow")
        .collect()
}

#[test]
fn a_tampered_segment_a_forged_checkpoint_and_a_missing_segment_stop_the_shadow() {
    let (j, last) = journal_of("/registry/configmaps/t/c", 60);
    let (key, _) = shadow_key(&j);
    let segments = segment_files(&j);
    assert!(segments.len() >= 4, "{segments:?}");

    // A segment taken out of the chain (first: later runs leave bases past it).
    let missing = &segments[1];
    let manifest = manifest_path(&j, missing);
    std::fs::rename(&manifest, j.out("aside.json")).unwrap();
    let r = shadow_until(&j, last, &key);
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("is missing"), "{}", r.stderr);
    assert_eq!(state(&r)["mismatches_total"].as_u64(), Some(1));
    assert!(base_revisions(&state(&r)).is_empty());
    std::fs::rename(j.out("aside.json"), &manifest).unwrap();

    // A flipped byte in a segment's object: stopped before it, no base from it on.
    let victim = &segments[segments.len() / 2];
    let victim_first = victim["first_rev"].as_i64().unwrap();
    let object = j.dest().join(victim["object"]["key"].as_str().unwrap());
    let original = flip_a_byte(&object);
    let r = shadow_until(&j, last, &key);
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("shadow STOPPED")
            && r.stderr.contains(victim["object"]["key"].as_str().unwrap())
            && r.stderr.contains("tampered"),
        "{}",
        r.stderr
    );
    let s = state(&r);
    assert_eq!(s["mismatches_total"].as_u64(), Some(1), "{s}");
    assert!(s["verified_revision"].as_i64() < Some(victim_first), "{s}");
    assert!(
        base_revisions(&s).iter().all(|rev| *rev < victim_first),
        "{s}"
    );
    std::fs::write(&object, &original).unwrap();

    // A checkpoint the replay does not reach (re-encoded and re-signed: only the replay can
    // tell).
    let forged = segments
        .iter()
        .rev()
        .find(|m| m["checkpoints"].as_u64() > Some(0))
        .expect("a segment with a checkpoint");
    rewrite_checkpoint(&j, forged);
    // Up to the forged segment: the one after it no longer links to it (that is caught too,
    // before any replay, but this is about what only the replay can see).
    let forged_last = forged["last_rev"].as_i64().unwrap();
    let r = shadow_until(&j, forged_last, &key);
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("FAILED"), "{}", r.stderr);
    let s = state(&r);
    assert_eq!(s["mismatches_total"].as_u64(), Some(1), "{s}");
    assert!(s["stopped"].as_str().unwrap().contains("FAILED"), "{s}");
    let forged_first = forged["first_rev"].as_i64().unwrap();
    assert!(
        base_revisions(&s)
            .iter()
            .all(|rev| *rev < forged_first.max(1)),
        "no base at or past the forged checkpoint's segment (up to {forged_last}): {s}"
    );
}

#[test]
fn readyz_and_the_metrics_name_a_stopped_shadow_until_it_is_told_to_go() {
    let (j, first) = journal_of("/registry/configmaps/m/c", 30);
    let (key, _) = shadow_key(&j);

    let mut shadow = Serve::start(following(&j, &key, "1h"), j.out("shadow.log"));
    wait_until(
        "the shadow applied the journal",
        Duration::from_secs(60),
        || shadow.metric("lifeboat_shadow_applied_revision") >= first as f64,
    );
    assert_eq!(shadow.metric("lifeboat_shadow_up"), 1.0);
    assert_eq!(shadow.metric("lifeboat_shadow_mismatches_total"), 0.0);
    assert!(shadow.metric("lifeboat_shadow_verified_revision") > 0.0);
    assert_eq!(shadow.get("/readyz").map(|(code, _)| code), Some(200));
    shadow.stop_with(0);

    // A flipped byte in a segment after the base: a shadow that replays it (a new one: this one
    // proved that segment already and would go on from its own data) stops, and says so until
    // SIGTERM.
    std::fs::remove_dir_all(j.out("shadow")).unwrap();
    let victim = &segment_files(&j)[1];
    let object = j.dest().join(victim["object"]["key"].as_str().unwrap());
    flip_a_byte(&object);
    let mut shadow = Serve::start(following(&j, &key, "1h"), j.out("shadow2.log"));
    wait_until("the shadow stopped", Duration::from_secs(60), || {
        shadow.metric("lifeboat_shadow_up") == 0.0
    });
    assert_eq!(shadow.metric("lifeboat_shadow_mismatches_total"), 1.0);
    let (code, body) = shadow.get("/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("STOPPED") && body.contains(victim["object"]["key"].as_str().unwrap()),
        "{body}"
    );
    assert!(
        shadow.metric("lifeboat_shadow_verified_revision") < victim["first_rev"].as_f64().unwrap(),
        "{body}"
    );
    shadow.stop_with(4);
}

#[test]
fn the_shadow_goes_on_with_the_new_chain_when_the_cluster_starts_one() {
    let mut j = Journal::start(Version::V35);
    let first = write_keys(&j.etcd, "/registry/a/k", 5, 0);
    j.wait_durable(first);
    let (key, _) = shadow_key(&j);
    let shadow = following_until_applied(&j, &key, first);
    // The uploader goes away, the cluster compacts the history it missed, and the journal
    // continues in a new chain from a fresh full backup.
    assert_eq!(j.serve.stop(Duration::from_secs(30)), 0);
    let head_rev = write_keys(&j.etcd, "/registry/b/k", 10, 0);
    compact(&j.etcd, head_rev);
    j.restart();
    wait_until("a new chain", Duration::from_secs(60), || {
        j.serve.metric("lifeboat_continuous_gaps_total") >= 1.0
    });
    let after = write_keys(&j.etcd, "/registry/c/k", 3, 0);
    j.wait_durable(after);
    wait_until(
        "the shadow on the new chain",
        Duration::from_secs(60),
        || shadow.metric("lifeboat_shadow_applied_revision") >= after as f64,
    );
    assert_following(&shadow);
}

#[test]
fn a_restarted_shadow_goes_on_from_its_own_data_only_while_it_holds_what_was_proven() {
    let (j, first) = journal_of("/registry/configmaps/r/a", 30);
    let (key, _) = shadow_key(&j);
    let once = |rev: i64| {
        let mut cmd = following(&j, &key, "1h");
        cmd.arg(format!("--until-revision={rev}"));
        run(&mut cmd)
    };
    let r = once(first);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let s = state(&r);
    let chain_base = segment_files(&j)[0]["chain"].as_str().unwrap().to_string();
    assert_eq!(s["started_from"].as_str(), Some(chain_base.as_str()), "{s}");

    // Later: it goes on from its own data (no base restored), through the new revisions.
    let last = write_keys(&j.etcd, "/registry/configmaps/r/b", 30, 60);
    j.wait_durable(last);
    let r = once(last);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let s = state(&r);
    assert!(
        s["started_from"]
            .as_str()
            .unwrap()
            .starts_with(&format!("its own data at revision {first}")),
        "{s}"
    );
    assert!(s["applied_revision"].as_i64() >= Some(last), "{s}");
    assert!(s["checkpoints_verified"].as_u64() >= Some(1), "{s}");

    // Resuming reads on from where its data is, not the segments it proved before (here one
    // of them damaged since: only a replay from a base reads it again).
    let early = &segment_files(&j)[1];
    let object = j.dest().join(early["object"]["key"].as_str().unwrap());
    let original = flip_a_byte(&object);
    let r = once(last);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    std::fs::write(&object, &original).unwrap();

    // A data dir that no longer hashes as proven is not resumed: back to the base.
    let proven = j.out("shadow").join("shadow").join("proven.json");
    let mut p: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&proven).unwrap()).unwrap();
    p["hash"] = serde_json::json!(p["hash"].as_u64().unwrap() ^ 1);
    std::fs::write(&proven, serde_json::to_vec(&p).unwrap()).unwrap();
    let r = once(last);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(
        state(&r)["started_from"].as_str(),
        Some(chain_base.as_str()),
        "{}",
        r.stderr
    );
}

/// A drill-only `serve` (`schedule = "off"`) that runs the shadow from its `[shadow]` section.
struct ShadowServe<'a> {
    dir: &'a std::path::Path,
    age: &'a crate::harness::AgeKey,
    /// A folder, or an S3 URL with `flags` and `env` to reach it.
    dest: String,
    key: PathBuf,
    flags: Vec<String>,
    env: Vec<(&'static str, String)>,
}

impl ShadowServe<'_> {
    /// Starts it; its work dir and log are named `name`.
    fn start(&self, name: &str) -> Serve {
        let config = self.dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"[backup]
dest = "{dest}"
work_dir = "{work}"
recipients = ["{recipient}"]

[s3]
max_attempts = 2
request_timeout = "5s"

[serve]
schedule = "off"

[drill]
# Drills are scheduled (once a year: never during the test): their worker shares the face.
schedule = "0 0 1 1 *"
identity_file = "{identity}"
etcd = "{etcd}"
etcdutl = "{etcdutl}"

[shadow]
enabled = true
base_interval = "1s"
poll_interval = "100ms"
"#,
                dest = self.dest,
                work = self.dir.join(name).display(),
                recipient = self.age.recipient,
                identity = self.age.identity_file.display(),
                etcd = crate::harness::etcd_bin(Version::V35).display(),
                etcdutl = crate::harness::etcdutl_bin().display(),
            ),
        )
        .unwrap();
        let mut cmd = lifeboat();
        cmd.arg("--config")
            .arg(&config)
            .arg("serve")
            .arg("--signing-key")
            .arg(&self.key)
            .args(&self.flags)
            .envs(self.env.iter().cloned());
        Serve::start(cmd, self.dir.join(format!("{name}.log")))
    }
}

/// The shadow follows the journal: up, nothing failed (its log when not).
fn assert_following(shadow: &Serve) {
    assert_eq!(
        shadow.metric("lifeboat_shadow_up"),
        1.0,
        "{}",
        shadow.log_text()
    );
    assert_eq!(shadow.metric("lifeboat_shadow_mismatches_total"), 0.0);
}

/// `etcdctl get` of every key, as JSON key-values (key, value, create and mod revision,
/// version, lease).
fn every_kv(cmd: &mut std::process::Command) -> serde_json::Value {
    let out = crate::harness::run_ok(cmd.args(["get", "", "--prefix", "-w", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["kvs"].clone()
}

/// The newest base the shadow committed to the folder store.
fn newest_shadow_base(j: &Journal) -> serde_json::Value {
    let mut bases: Vec<serde_json::Value> = std::fs::read_dir(j.dest())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".manifest.json"))
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .filter(|m: &serde_json::Value| m["reason"] == "shadow")
        .collect();
    bases.sort_by_key(|m| m["revision"].as_i64());
    bases.pop().expect("a base from the shadow")
}

#[test]
fn serve_runs_the_shadow_off_the_control_plane_and_its_base_restores_on_a_kubeadm_node() {
    use crate::harness::node::FakeNode;
    let (j, first) = journal_of("/registry/configmaps/v/a", 30);
    let (key, public) = shadow_key(&j);
    let trust = trusting_shadow(&public);
    let plan = ShadowServe {
        dir: j.dir.path(),
        age: &j.key,
        dest: j.dest().display().to_string(),
        key,
        flags: Vec::new(),
        env: Vec::new(),
    };
    let mut shadow = plan.start("serve-shadow");
    // Writes go on, as in a Kubernetes cluster (leases renewed every few seconds): checkpoints
    // come with segments, and bases with proven checkpoints.
    let mut n = 0;
    shadow.wait_until(
        "the shadow proved the journal and wrote a base",
        Duration::from_secs(90),
        |shadow| {
            n += 1;
            j.etcd
                .put(&format!("/registry/leases/v/{}", n % 5), &n.to_string());
            shadow.metric("lifeboat_shadow_bases_total") >= 1.0
                && shadow.metric("lifeboat_shadow_verified_revision") >= first as f64
        },
    );
    assert_eq!(shadow.metric("lifeboat_shadow_up"), 1.0);
    assert_eq!(shadow.metric("lifeboat_shadow_mismatches_total"), 0.0);
    // The drills' metrics are there too, in the same exposition.
    let (_, metrics) = shadow.get("/metrics").unwrap();
    assert!(
        metrics.contains("lifeboat_drill_failures_total"),
        "{metrics}"
    );
    assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");
    let (code, body) = shadow.get("/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    shadow.stop_with(0);

    // The base, restored with the normal `lifeboat restore` on a kubeadm node (of another
    // cluster: --force), serves what production held at its revision.
    let base = newest_shadow_base(&j);
    let rev = base["revision"].as_i64().unwrap();
    let expected = every_kv(j.etcd.etcdctl().arg(format!("--rev={rev}")));
    let node = FakeNode::start(Version::V35);
    let mut restore = node.restore();
    restore
        .arg(base["id"].as_str().unwrap())
        .arg("--dest")
        .arg(j.dest())
        .arg("--identity")
        .arg(&j.key.identity_file)
        .args(&trust)
        .args(["--yes", "--force"]);
    let r = run(&mut restore);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    node.wait_healthy();
    // The keys as they were (create and mod revisions too); the member's revision is bumped
    // past the old one, as every restore does so watchers cannot miss the change.
    assert_eq!(every_kv(&mut node.etcdctl()), expected);
    assert_eq!(
        node.revision(),
        rev + lifeboat::restore::DEFAULT_BUMP_REVISION as i64
    );

    // A segment after the newest base that no longer reads as written: a new shadow (it
    // starts from that base) stops at it, /readyz names it while serve goes on (its drills,
    // its metrics), and SIGTERM ends it normally.
    let after = write_keys(&j.etcd, "/registry/configmaps/v/c", 10, 0);
    j.wait_durable(after);
    let segments = segment_files(&j);
    let victim = segments.last().unwrap();
    assert!(victim["first_rev"].as_i64().unwrap() > rev, "{victim}");
    flip_a_byte(&j.dest().join(victim["object"]["key"].as_str().unwrap()));
    std::fs::remove_dir_all(j.out("serve-shadow")).unwrap();
    let mut shadow = plan.start("serve-shadow");
    shadow.wait_until("the shadow stopped", Duration::from_secs(60), |shadow| {
        shadow.metric("lifeboat_shadow_up") == 0.0
    });
    assert_eq!(shadow.metric("lifeboat_shadow_mismatches_total"), 1.0);
    let (code, body) = shadow.get("/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("shadow: STOPPED")
            && body.contains(victim["object"]["key"].as_str().unwrap()),
        "{body}"
    );
    shadow.stop_with(0);
}

/// The shadow in serve before any journal exists, on S3 behind a proxy that refuses the bases'
/// uploads for a while: it waits for the journal (not ready, trying again), follows it once
/// the capture starts, counts the bases that fail and goes on proving; once uploads pass, a
/// base is written.
#[test]
fn serve_waits_for_the_journal_and_a_failing_base_is_counted_while_the_shadow_goes_on() {
    use crate::harness::EtcdProcess;
    // The bases' uploads (data objects: `<id>.db.zst.age`) are refused at first.
    let store = crate::harness::http_fault::FlakyS3::start("shadow", true, |line| {
        let upload = line.starts_with("PUT ") || line.starts_with("POST ");
        upload && line.contains(".db.zst")
    });
    let (server, proxy) = (&store.server, &store.proxy);
    let dir = tempfile::tempdir().unwrap();
    let age = crate::harness::age_key(dir.path(), "key.txt");
    let secret = dir.path().join("shadow.key");
    lifeboat::trust::generate(&secret).unwrap();
    let dest = "s3://shadow/c1".to_string();
    let plan = ShadowServe {
        dir: dir.path(),
        age: &age,
        dest: dest.clone(),
        key: secret,
        flags: vec![
            format!("--s3-endpoint={}", proxy.endpoint),
            "--s3-path-style".to_string(),
        ],
        env: server.env(),
    };
    let shadow = plan.start("shadow");
    shadow.wait_until(
        "the shadow waiting for a journal",
        Duration::from_secs(60),
        |shadow| {
            shadow
                .get("/readyz")
                .is_some_and(|(code, body)| code == 503 && body.contains("shadow"))
        },
    );
    assert_eq!(
        shadow.metric("lifeboat_shadow_up"),
        1.0,
        "waiting is not a stop"
    );

    // Production starts capturing into the bucket (directly, not through the proxy).
    let etcd = EtcdProcess::start(Version::V35, None);
    let mut cmd = crate::harness::journal::capturing(dir.path(), &age, &dest);
    cmd.args(etcd.lifeboat_flags())
        .args(server.flags())
        .envs(server.env());
    let production = Serve::start(cmd, dir.path().join("serve.log"));
    let last = write_keys(&etcd, "/registry/configmaps/f/a", 30, 60);
    production.wait_until("durable", Duration::from_secs(60), |p| {
        p.metric("lifeboat_continuous_last_revision") >= last as f64
    });
    // Writes go on, as in a Kubernetes cluster: checkpoints keep coming.
    let mut n = 0;
    let mut writing = || {
        n += 1;
        etcd.put(&format!("/registry/leases/f/{}", n % 5), &n.to_string());
    };
    shadow.wait_until(
        "the shadow proving while its bases fail",
        Duration::from_secs(90),
        |shadow| {
            writing();
            shadow.metric("lifeboat_shadow_base_failures_total") >= 2.0
                && shadow.metric("lifeboat_shadow_verified_revision") >= (last - 29) as f64
        },
    );
    assert_eq!(shadow.metric("lifeboat_shadow_bases_total"), 0.0);
    assert_following(&shadow);

    // Uploads pass again: the next proven checkpoint gets its base.
    store.fail(false);
    let more = write_keys(&etcd, "/registry/configmaps/f/b", 10, 100);
    shadow.wait_until("a base", Duration::from_secs(60), |shadow| {
        writing();
        shadow.metric("lifeboat_shadow_bases_total") >= 1.0
    });
    shadow.wait_until(
        "proven through the new writes",
        Duration::from_secs(60),
        |shadow| shadow.metric("lifeboat_shadow_verified_revision") >= (more - 9) as f64,
    );
    shadow.wait_until("ready", Duration::from_secs(30), |shadow| {
        shadow.get("/readyz").is_some_and(|(code, _)| code == 200)
    });
}

/// The PIDs of the processes whose command line names `path` (the shadow's private etcd runs
/// with its data dir under the shadow's work dir).
fn processes_under(path: &std::path::Path) -> Vec<u32> {
    let needle = path.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains(needle) && c.contains("--data-dir")
            })
        })
        .collect()
}

/// #21: the private etcd killed (as the OOM killer would) is the machine, not the journal: no
/// mismatch, the shadow's data is kept, and it goes on proving once it has started it again.
#[test]
fn a_killed_sandbox_etcd_is_not_a_mismatch_and_the_shadow_goes_on() {
    let (j, first) = journal_of("/registry/configmaps/k/c", 20);
    let (key, _) = shadow_key(&j);
    let shadow = following_until_applied(&j, &key, first);
    let sandbox = processes_under(&j.out("shadow"));
    assert_eq!(sandbox.len(), 1, "{sandbox:?}");
    crate::harness::run_ok(
        std::process::Command::new("kill").args(["-9", &sandbox[0].to_string()]),
    );
    let more = write_keys(&j.etcd, "/registry/configmaps/k/d", 30, 60);
    j.wait_durable(more);
    wait_until(
        "the shadow proving again past the kill",
        Duration::from_secs(120),
        || {
            shadow.metric("lifeboat_shadow_verified_revision") > first as f64
                && shadow.metric("lifeboat_shadow_applied_revision") >= more as f64
        },
    );
    assert_eq!(
        shadow.metric("lifeboat_shadow_mismatches_total"),
        0.0,
        "{}",
        shadow.log_text()
    );
    assert_eq!(shadow.metric("lifeboat_shadow_up"), 1.0);
    assert!(
        shadow.log_text().contains("not the journal"),
        "{}",
        shadow.log_text()
    );
}
