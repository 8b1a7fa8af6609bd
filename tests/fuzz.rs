//! Seeded fuzzing in every CI run (issue 10): each target of `tests/common/fuzz` gets a
//! fixed number of cases of random bytes from a seeded ChaCha generator, read through
//! `arbitrary::Unstructured` (the same functions the cargo-fuzz targets in `tools/fuzz/` call).
//! Each test prints one line `fuzz: TARGET: N cases in T s (seed S)` straight to stderr,
//! so it shows in the test log without `--nocapture`.
//!
//! Environment:
//! - `FUZZ_SEED` (default fixed, so CI is reproducible): another seed explores other cases;
//! - `FUZZ_SCALE` (default 1): multiplies every target's case count (0.1 for a quick run,
//!   10 for a long one);
//! - `FUZZ_CASE=N`: run only case N (what a failure message names), to reproduce it;
//! - `FUZZ_TRACE`: name each case before it runs (a stack overflow aborts silently).
//!
//! A case that runs longer than [`CASE_LIMIT`] aborts the process naming the case: every
//! case must be bounded.

#[path = "common/fuzz/mod.rs"]
mod fuzz_harness;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEFAULT_SEED: u64 = 0x7468_696e_706f_6f6c; // "thinpool"
const CASE_LIMIT: Duration = Duration::from_secs(60);

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The bytes of case `i` of target `name`.
pub fn case_bytes(name: &str, seed: u64, i: u64, max_len: usize) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ name_hash(name));
    rng.set_stream(i);
    let len = if rng.gen_ratio(1, 8) {
        rng.gen_range(0..=max_len.min(32))
    } else {
        rng.gen_range(0..=max_len)
    };
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

fn run(name: &str, default_cases: u64) {
    let t = fuzz_harness::target(name);
    let seed = env_u64("FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let scale: f64 = std::env::var("FUZZ_SCALE")
        .ok()
        .map(|s| s.parse().expect("FUZZ_SCALE is a number"))
        .unwrap_or(1.0);
    let cases: Vec<u64> = match env_u64("FUZZ_CASE") {
        Some(i) => vec![i],
        None => (0..((default_cases as f64 * scale).ceil() as u64).max(1)).collect(),
    };
    // Watchdog: a case that does not finish in time aborts the process, naming itself.
    let current = Arc::new(AtomicU64::new(u64::MAX));
    let started = Arc::new(std::sync::Mutex::new(Instant::now()));
    let done = Arc::new(AtomicBool::new(false));
    let dog = {
        let (current, started, done) = (current.clone(), started.clone(), done.clone());
        let name = name.to_string();
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                let since = started.lock().unwrap().elapsed();
                let c = current.load(Ordering::SeqCst);
                if c != u64::MAX && since > CASE_LIMIT {
                    let _ = writeln!(
                        std::io::stderr(),
                        "fuzz: {name}: case {c} (FUZZ_SEED={seed:#x} FUZZ_CASE={c}) ran for \
                         {since:?}: unbounded; aborting"
                    );
                    std::process::abort();
                }
            }
        })
    };
    let trace = std::env::var_os("FUZZ_TRACE").is_some();
    let t0 = Instant::now();
    let mut total_bytes = 0u64;
    for &i in &cases {
        let data = case_bytes(name, seed, i, t.max_len);
        total_bytes += data.len() as u64;
        *started.lock().unwrap() = Instant::now();
        current.store(i, Ordering::SeqCst);
        if trace {
            // Names the case before it runs: a stack overflow aborts without unwinding.
            let _ = writeln!(std::io::stderr(), "fuzz: {name}: case {i}");
        }
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| (t.run)(&data))) {
            let _ = writeln!(
                std::io::stderr(),
                "fuzz: {name}: case {i} failed; reproduce with FUZZ_SEED={seed:#x} FUZZ_CASE={i} \
                 cargo test --release --test fuzz {name} (input: {} bytes)",
                data.len()
            );
            done.store(true, Ordering::SeqCst);
            std::panic::resume_unwind(p);
        }
        current.store(u64::MAX, Ordering::SeqCst);
    }
    let elapsed = t0.elapsed();
    done.store(true, Ordering::SeqCst);
    let _ = dog.join();
    let _ = writeln!(
        std::io::stderr(),
        "fuzz: {name}: {} cases in {:.2} s ({} KiB of input, seed {seed:#x})",
        cases.len(),
        elapsed.as_secs_f64(),
        total_bytes / 1024
    );
}

#[test]
fn fuzz_label() {
    run("label", 50_000);
}

#[test]
fn fuzz_label_in_pool() {
    run("label_in_pool", 2_000);
}

#[test]
fn fuzz_record() {
    run("record", 50_000);
}

#[test]
fn fuzz_journal_scan() {
    run("journal_scan", 20_000);
}

#[test]
fn fuzz_journal_in_pool() {
    run("journal_in_pool", 2_000);
}

#[test]
fn fuzz_node() {
    run("node", 50_000);
}

#[test]
fn fuzz_node_in_pool() {
    run("node_in_pool", 8_000);
}

#[test]
fn fuzz_bitmap_page() {
    run("bitmap_page", 30_000);
}

#[test]
fn fuzz_bitmap_in_pool() {
    run("bitmap_in_pool", 4_000);
}

#[test]
fn fuzz_rbd_diff() {
    run("rbd_diff", 6_000);
}

#[test]
fn fuzz_nbd_handshake() {
    run("nbd_handshake", 50_000);
}

#[test]
fn fuzz_nbd_request() {
    run("nbd_request", 6_000);
}

#[test]
fn fuzz_nbd_connection() {
    run("nbd_connection", 2_000);
}

#[test]
fn fuzz_faulty_ops() {
    run("faulty_ops", 2_000);
}

/// Every target has a test above (a new target without one would silently never run).
#[test]
fn fuzz_every_target_runs() {
    let src = include_str!("fuzz.rs");
    for t in fuzz_harness::TARGETS {
        assert!(
            src.contains(&format!("run(\"{}\",", t.name)),
            "target {} has no test in tests/fuzz.rs",
            t.name
        );
    }
}

/// The bugs these targets found, each as the plain scenario it reduces to.
mod regressions {
    use super::fuzz_harness::meta::{fix_root_crcs, fixture, read_volume};
    use super::fuzz_harness::{read_block, reseal, OverlayDev};
    use std::sync::Arc;
    use thinpool::meta::block::{self, HEADER_SIZE};
    use thinpool::meta::btree::Node;
    use thinpool::meta::journal::encode_ref;
    use thinpool::meta::journal::{BlockRef, RootId};
    use thinpool::meta::{MetaBlock, BLOCK_SIZE};
    use thinpool::pool::trees::MAPPING;
    use thinpool::pool::{OpenOptions, Pool, PoolError};

    fn ro() -> OpenOptions {
        OpenOptions {
            read_only: true,
            cache_blocks: 64,
            ..OpenOptions::default()
        }
    }

    /// A live mapping-tree node of volume "a" with at least two entries.
    fn mapping_node(leaf: bool) -> u64 {
        let f = fixture();
        let (meta, _) = f.devs();
        *f.live_nodes
            .iter()
            .find(|&&b| {
                let buf = read_block(meta.as_ref(), b);
                let n = Node(&buf);
                n.kind_id() == MAPPING.id && n.is_leaf() == leaf && n.nr() >= 2
            })
            .expect("the fixture has such a node")
    }

    fn rewrite(meta: &OverlayDev, b: u64, edit: impl FnOnce(&mut Vec<u8>)) {
        let mut buf = read_block(meta, b);
        edit(&mut buf);
        reseal(&mut buf);
        meta.poke(b * BLOCK_SIZE as u64, &buf);
        fix_root_crcs(fixture(), meta, b);
    }

    /// node_in_pool: a mapping leaf whose keys are out of order (checksum valid) made a
    /// read index out of bounds in `read_data` (a panic); now the walk reports corruption.
    #[test]
    fn keys_out_of_order_are_corruption_not_a_panic() {
        let (meta, data) = fixture().devs();
        let b = mapping_node(true);
        rewrite(&meta, b, |buf| {
            let k0 = block::get_u64(buf, HEADER_SIZE);
            block::put_u64(buf, HEADER_SIZE + 8, k0);
        });
        assert!(!thinpool::check::check(meta.clone(), None).is_clean());
        let mut p = Pool::open_on(meta, data, &ro()).unwrap();
        assert!(damaged_read(&mut p), "no read saw the damage");
    }

    /// Reads of the volumes sharing the fixture's big tree: true when one fails as
    /// corrupt (the other may not reach the damaged node).
    fn damaged_read(p: &mut Pool) -> bool {
        ["a", "snap"]
            .iter()
            .any(|n| matches!(read_volume(p, n), Err(PoolError::Meta(_))))
    }

    /// node_in_pool: an internal node whose child pointer leads back to itself overflowed
    /// the checker's stack (and looped in lookups); now both report a loop.
    #[test]
    fn a_looping_child_pointer_is_corruption_not_a_stack_overflow() {
        let (meta, data) = fixture().devs();
        let b = mapping_node(false);
        rewrite(&meta, b, |buf| {
            let (max, gen) = (Node(buf).max(), block::generation(buf));
            let me = BlockRef {
                block: MetaBlock(b),
                gen,
            };
            let o = HEADER_SIZE + max * 8 + 16;
            buf[o..o + 16].copy_from_slice(&encode_ref(me));
        });
        let rep = thinpool::check::check(meta.clone(), None);
        assert!(
            rep.errors().any(|e| e.message.contains("loops")),
            "{:?}",
            rep.findings
        );
        let mut p = Pool::open_on(meta.clone(), data.clone(), &ro()).unwrap();
        assert!(damaged_read(&mut p), "no read saw the loop");
        drop(p);
        let rw = OpenOptions {
            rewind: true,
            cache_blocks: 64,
            ..OpenOptions::default()
        };
        let mut p = Pool::open_on(meta, data, &rw).unwrap();
        // Keys of the second child's range go round the loop.
        let mut hit = false;
        for name in ["a", "snap"] {
            let (v, _) = p.find(name).unwrap();
            for vb in (0..384u64).step_by(7) {
                hit |= p.write(v, vb * 4096, &[7u8; 10]).is_err();
            }
            let _ = p.remove_volume(name);
        }
        assert!(hit, "no write took the looping path");
    }

    /// node_in_pool: damage to the previous commit's space-map index (which the allocator
    /// reads to protect that state) left `check` clean while every write failed; now
    /// `check` reports it.
    #[test]
    fn a_damaged_previous_space_map_is_reported() {
        let f = fixture();
        let (meta, data) = f.devs();
        let rw = OpenOptions {
            cache_blocks: 64,
            ..OpenOptions::default()
        };
        // A commit that changes the data space map: the previous index is then a block
        // only the previous state reaches.
        let mut p = Pool::open_on(meta.clone(), data.clone(), &rw).unwrap();
        let (b, _) = p.find("b").unwrap();
        p.write(b, 30 * 4096, &[9u8; 3 * 4096]).unwrap();
        p.commit().unwrap();
        drop(p);
        let lbuf = read_block(meta.as_ref(), 0);
        let label = thinpool::meta::label::Label::decode(&lbuf).unwrap();
        let newest = thinpool::meta::journal::scan(meta.as_ref(), &f.uuid, label.ring_slots)
            .unwrap()
            .into_iter()
            .filter_map(|s| s.result.ok())
            .max_by_key(|r| r.seq)
            .unwrap();
        let prev = newest.root(RootId::PrevDataIndex).r.block.0;
        assert!(prev != 0 && prev != newest.root(RootId::DataIndex).r.block.0);
        let mut buf = read_block(meta.as_ref(), prev);
        buf[200] ^= 1;
        meta.poke(prev * BLOCK_SIZE as u64, &buf);
        let rep = thinpool::check::check(meta.clone(), None);
        assert!(
            rep.errors()
                .any(|e| e.message.contains("previous commit's space map")),
            "{:?}",
            rep.findings
        );
        let mut p = Pool::open_on(meta, data, &rw).unwrap();
        let (b, _) = p.find("b").unwrap();
        assert!(
            p.write(b, 40 * 4096, &[1u8; 4096]).is_err(),
            "the allocator reads it"
        );
    }

    /// rbd_diff: a diff whose to-snapshot name is invalid was applied and committed, then
    /// the snapshot failed: an error, with the target changed. Now it is refused first.
    #[test]
    fn import_diff_with_a_bad_to_snapshot_name_changes_nothing() {
        let (meta, data) = fixture().devs();
        let meta: Arc<OverlayDev> = meta;
        let o = OpenOptions {
            cache_blocks: 64,
            ..OpenOptions::default()
        };
        let mut p = Pool::open_on(meta, data, &o).unwrap();
        let before = read_volume(&mut p, "b").unwrap();
        let mut s = thinpool::export::rbd::HEADER.to_vec();
        s.push(b't');
        s.extend_from_slice(&3u32.to_le_bytes());
        s.extend_from_slice(b"a/b");
        s.push(b'w');
        s.extend_from_slice(&0u64.to_le_bytes());
        s.extend_from_slice(&5u64.to_le_bytes());
        s.extend_from_slice(b"hello");
        s.push(b'e');
        let r = thinpool::export::import_diff(
            &mut p,
            "b",
            &mut &s[..],
            &Default::default(),
            &thinpool::export::NoProgress,
        );
        assert!(r.is_err());
        assert_eq!(read_volume(&mut p, "b").unwrap(), before);
    }
    /// journal_in_pool (debug build: "attempt to add with overflow" in open): a valid record
    /// with seq u64::MAX made the next commit's number wrap to 0. Such records are invalid.
    #[test]
    fn a_record_with_an_exhausted_seq_is_invalid() {
        use thinpool::meta::journal::{slot_blocks, Record, MAX_SEQ};
        let f = fixture();
        for seq in [u64::MAX, u64::MAX - 1, MAX_SEQ + 1] {
            let mut r = f.newest.clone();
            r.seq = seq;
            r.slot = 0;
            let b = slot_blocks(f.label.ring_slots, 0)[0];
            assert!(Record::decode(&r.encode(&f.uuid, b), &f.uuid, b, 0).is_err());
        }
    }

    /// label_in_pool (debug build: "attempt to multiply with overflow"): a label whose
    /// metadata size in bytes overflows u64 wrapped to a small size and passed open's
    /// truncation check. It is refused now.
    #[test]
    fn a_label_size_that_overflows_is_refused() {
        let f = fixture();
        let (meta, data) = f.devs();
        let mut l = f.label.clone();
        l.meta_blocks = (1 << 52) + 256; // * 4096 wraps to 1 MiB
        meta.poke(0, &l.encode());
        let e = Pool::open_on(meta, data, &ro()).err().expect("refused");
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
