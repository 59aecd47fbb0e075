//! Random damage to a real snapshot, in the test suite and bounded: opening, walking, `status`,
//! HashKV and the key count must end in an error or a result — never a panic, an overflow or
//! an allocation that aborts. A fixed seed keeps every run the same; a failure prints the
//! iteration, whose mutation can be replayed.

use std::panic::AssertUnwindSafe;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::bbolt::{BoltError, Db};
use crate::verify;

/// bbolt's layout as the fixture has it (etcd writes 4 KiB pages; the page header is 16
/// bytes, then the meta struct).
const MIN_PAGE_SIZE: usize = 4096;
const PAGE_HEADER_SIZE: usize = 16;

const FIXTURE: &[u8] = include_bytes!("../../tests/fixtures/snapshot-etcd-3.5.16.db");
const ROUNDS: usize = 1500;

/// Everything a reader does with a file: each may fail, none may panic.
fn read_everything(path: &std::path::Path) {
    if let Ok(info) = verify::read_snapshot_info(path) {
        let rev = info.restored_revision;
        let _ = verify::hash_kv(path, rev, info.compact_revision);
        let _ = verify::hash_kv(path, rev, 0);
        let _ = verify::live_keys(path, rev);
    }
}

/// Rewrites the meta page's checksum so that a damaged meta is taken at its word: the
/// checksum protects against accidents, not against a crafted file.
fn reseal_meta(file: &mut [u8], page_start: usize) {
    let m = page_start + PAGE_HEADER_SIZE;
    if file.len() < m + 64 {
        return;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &file[m..m + 56] {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    file[m + 56..m + 64].copy_from_slice(&h.to_le_bytes());
}

fn mutate(rng: &mut StdRng, data: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    match rng.random_range(0..7) {
        // Flip some bits anywhere.
        0 => {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..data.len());
                data[i] ^= 1 << rng.random_range(0..8);
            }
        }
        // Random bytes over a random run.
        1 => {
            let at = rng.random_range(0..data.len());
            let len = rng.random_range(1..64).min(data.len() - at);
            rng.fill(&mut data[at..at + len]);
        }
        // Truncate.
        2 => {
            let len = rng.random_range(0..data.len());
            data.truncate(len);
        }
        // A huge or wild field in a meta page (page size, root, pgid), checksum resealed.
        3 => {
            let page = if rng.random_bool(0.5) {
                0
            } else {
                MIN_PAGE_SIZE
            };
            let field = [8usize, 16, 40][rng.random_range(0..3)];
            let at = page + PAGE_HEADER_SIZE + field;
            if at + 8 > data.len() {
                return;
            }
            let value: u64 = match rng.random_range(0..3) {
                0 => u64::MAX,
                1 => u64::MAX / 4096 + 1,
                _ => rng.random(),
            };
            if field == 8 {
                data[at..at + 4].copy_from_slice(&(value as u32).to_le_bytes());
            } else {
                data[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            reseal_meta(data, page);
        }
        // A wild page header (id, count, overflow) on a data page.
        4 => {
            let pages = data.len() / MIN_PAGE_SIZE;
            if pages > 2 {
                let at = rng.random_range(2..pages) * MIN_PAGE_SIZE;
                let field = [0usize, 10, 12][rng.random_range(0..3)];
                let value: u64 = rng.random();
                let width = if field == 0 {
                    8
                } else if field == 10 {
                    2
                } else {
                    4
                };
                data[at + field..at + field + width].copy_from_slice(&value.to_le_bytes()[..width]);
            }
        }
        // Wild element fields (pos, ksize, vsize) in a leaf or branch page.
        5 => {
            let pages = data.len() / MIN_PAGE_SIZE;
            if pages > 2 {
                let at = rng.random_range(2..pages) * MIN_PAGE_SIZE + PAGE_HEADER_SIZE;
                let elem = rng.random_range(0..8) * 16;
                let off = [4usize, 8, 12][rng.random_range(0..3)];
                let value: u32 = rng.random();
                if at + elem + off + 4 <= data.len() {
                    data[at + elem + off..at + elem + off + 4]
                        .copy_from_slice(&value.to_le_bytes());
                }
            }
        }
        // Two mutations at once.
        _ => {
            mutate(rng, data);
            mutate(rng, data);
        }
    }
}

#[test]
fn damaged_snapshots_give_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.db");
    let mut rng = StdRng::seed_from_u64(0x5eed_11fe_b0a7);
    for round in 0..ROUNDS {
        let mut data = FIXTURE[..FIXTURE.len() - 32].to_vec();
        mutate(&mut rng, &mut data);
        if data.is_empty() {
            continue;
        }
        std::fs::write(&path, &data).unwrap();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| read_everything(&path)));
        assert!(outcome.is_ok(), "round {round} panicked");
    }
}

/// The overflow the review found: a meta page (resealed) claiming more pages than fit in a
/// u64 byte count wrapped `pgid × page size` and sized an allocation from it.
#[test]
fn a_page_count_that_overflows_is_an_error() {
    let mut data = FIXTURE[..FIXTURE.len() - 32].to_vec();
    for page in [0, MIN_PAGE_SIZE] {
        let at = page + PAGE_HEADER_SIZE + 40;
        data[at..at + 8].copy_from_slice(&(u64::MAX / 4096 + 2).to_le_bytes());
        reseal_meta(&mut data, page);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("overflow.db");
    std::fs::write(&path, &data).unwrap();
    assert!(matches!(Db::open(&path), Err(BoltError::Truncated { .. })));
}
