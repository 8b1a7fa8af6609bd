//! A concurrency model of the served write path (issue 10): the REAL `SharedPool`
//! (`src/pool/shared.rs`: range lock, gate, group commit, presync) runs under shuttle's
//! deterministic schedulers, which pick at every lock, wait, notify and device yield which
//! thread runs next, and try thousands of interleavings per scenario. Build with the `shuttle`
//! feature (`src/pool/sync.rs` swaps std's locks for shuttle's):
//!
//! ```text
//! cargo test --release --features shuttle --test shuttle_model -- --nocapture
//! ```
//!
//! The pool runs on model devices (`ModelDev`): each keeps what was written and, apart, what is
//! *durable*, a copy that only `flush` updates (a crash keeps exactly that). Every data block
//! a test writes carries a stamp (virtual block, write id), and the data device logs, per
//! virtual block, the order in which stamps reached it. Invariants, checked on every run:
//!
//! - (a) when `commit()` returns Ok, a pool re-opened from the durable metadata and data copies
//!   reads, for every block, a stamp that was written to that block (never garbage: a block
//!   mapped by committed metadata whose data is not durable reads zeros), and no older than
//!   the last write to it that had completed before that `commit()` call began;
//! - (b) two writes to one block are never in their data I/O at once (the range lock:
//!   overlapping writes do not interleave plan, I/O and finish);
//! - (c) no deadlock: shuttle fails a run in which every thread is blocked;
//! - at the end: every block reads its last write, live and from the durable copies after a
//!   last commit, and `check` finds the durable metadata clean.
//!
//! Each seeded bug (`SeededBug`, settable only in this feature's build) must be found.
#![cfg(feature = "shuttle")]

use shuttle::scheduler::{PctScheduler, RandomScheduler, Scheduler};
use shuttle::{Config, Runner};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use thinpool::io::BlockDev;
use thinpool::pool::{CreateOptions, OpenOptions, Pool, SeededBug, SharedPool, VolumeId};

const BS: u64 = 4096;
/// Blocks in the test volume.
const BLOCKS: u64 = 4;

/// Sparse 4 KiB pages.
type Pages = HashMap<u64, Box<[u8]>>;

#[derive(Default)]
struct DevState {
    cur: Pages,
    durable: Pages,
    len: u64,
    durable_len: u64,
    /// Data device only: per virtual block, the write ids in the order they reached the
    /// device, and the blocks in a write's I/O right now.
    history: BTreeMap<u64, Vec<u64>>,
    in_io: HashSet<u64>,
}

/// A block device in memory whose `flush` makes everything written so far durable.
struct ModelDev {
    st: Mutex<DevState>,
    /// Parse the stamps (the data device).
    stamps: bool,
}

const CAPACITY: u64 = 64 << 20;

impl ModelDev {
    fn new(stamps: bool) -> Arc<ModelDev> {
        Arc::new(ModelDev {
            st: Mutex::new(DevState::default()),
            stamps,
        })
    }

    /// A device holding what `self` holds durably (the state a crash now leaves).
    fn crash_copy(&self) -> Arc<ModelDev> {
        let s = self.st.lock().unwrap();
        Arc::new(ModelDev {
            st: Mutex::new(DevState {
                cur: s.durable.clone(),
                durable: s.durable.clone(),
                len: s.durable_len,
                durable_len: s.durable_len,
                ..Default::default()
            }),
            stamps: false,
        })
    }

    fn history(&self) -> BTreeMap<u64, Vec<u64>> {
        self.st.lock().unwrap().history.clone()
    }

    fn apply(s: &mut DevState, buf: &[u8], offset: u64) {
        let mut pos = 0usize;
        while pos < buf.len() {
            let at = offset + pos as u64;
            let (page, within) = (at / BS, (at % BS) as usize);
            let n = (BS as usize - within).min(buf.len() - pos);
            let p = s
                .cur
                .entry(page)
                .or_insert_with(|| vec![0u8; BS as usize].into_boxed_slice());
            p[within..within + n].copy_from_slice(&buf[pos..pos + n]);
            pos += n;
        }
        s.len = s.len.max(offset + buf.len() as u64);
    }
}

fn stamp(vb: u64, id: u64) -> Vec<u8> {
    let mut b = vec![0xA5u8; BS as usize];
    b[..8].copy_from_slice(&(vb + 1).to_le_bytes());
    b[8..16].copy_from_slice(&id.to_le_bytes());
    b
}

/// (virtual block, write id) of a block's contents; None for anything not a stamp.
fn parse(b: &[u8]) -> Option<(u64, u64)> {
    let vb1 = u64::from_le_bytes(b[..8].try_into().unwrap());
    let id = u64::from_le_bytes(b[8..16].try_into().unwrap());
    (vb1 > 0 && b[16..].iter().all(|&x| x == 0xA5)).then(|| (vb1 - 1, id))
}

impl BlockDev for ModelDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.st.lock().unwrap();
        let mut pos = 0usize;
        while pos < buf.len() {
            let at = offset + pos as u64;
            let (page, within) = (at / BS, (at % BS) as usize);
            let n = (BS as usize - within).min(buf.len() - pos);
            match s.cur.get(&page) {
                Some(p) => buf[pos..pos + n].copy_from_slice(&p[within..within + n]),
                None => buf[pos..pos + n].fill(0),
            }
            pos += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if offset + buf.len() as u64 > CAPACITY {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if !self.stamps {
            Self::apply(&mut self.st.lock().unwrap(), buf, offset);
            return Ok(());
        }
        // A data write: which virtual blocks it carries, in I/O from here to the end.
        let vbs: Vec<(u64, u64)> = buf.chunks(BS as usize).filter_map(parse).collect();
        let clash = {
            let mut s = self.st.lock().unwrap();
            let clash = vbs.iter().find(|&&(vb, _)| s.in_io.contains(&vb)).copied();
            for &(vb, id) in &vbs {
                s.in_io.insert(vb);
                s.history.entry(vb).or_default().push(id);
            }
            clash
        };
        // (Outside the lock: a panic must not poison the device for the other threads.)
        if let Some((vb, id)) = clash {
            panic!(
                "invariant (b): two writes to virtual block {vb} in their data I/O at once \
                 (write {id} is the second)"
            );
        }
        // The I/O takes time: let other threads run in the middle of it.
        shuttle::thread::yield_now();
        let mut s = self.st.lock().unwrap();
        Self::apply(&mut s, buf, offset);
        for &(vb, _) in &vbs {
            s.in_io.remove(&vb);
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        // A sync takes time too, and writes that complete during it may or may not be in it:
        // this model makes durable what was written when it ends.
        shuttle::thread::yield_now();
        let mut s = self.st.lock().unwrap();
        s.durable = s.cur.clone();
        s.durable_len = s.len;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.st.lock().unwrap().len
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut s = self.st.lock().unwrap();
        // Punching is immediate on a real file (and durable at the next sync at the latest);
        // only whole pages are dropped here.
        let first = offset.div_ceil(BS);
        let end = (offset + len) / BS;
        for p in first..end {
            s.cur.remove(&p);
        }
        Ok(())
    }

    fn ensure_len(&self, len: u64) -> io::Result<()> {
        if len > CAPACITY {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let mut s = self.st.lock().unwrap();
        s.len = s.len.max(len);
        Ok(())
    }
}

/// What the test threads share: the pool, its devices, and the writes that completed.
struct World {
    sp: SharedPool,
    meta: Arc<ModelDev>,
    data: Arc<ModelDev>,
    id: VolumeId,
    /// Per virtual block, the ids of writes whose `write()` returned.
    completed: Mutex<BTreeMap<u64, Vec<u64>>>,
}

/// The ops a scenario's threads run.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// Write blocks `[lo, hi)`.
    Write(u64, u64),
    /// `commit()` (NBD FLUSH), then check invariant (a).
    Commit,
    /// The timer's commit.
    Periodic,
    /// Read blocks `[lo, hi)` (each must hold a stamp of its own block).
    Read(u64, u64),
}

fn setup(bug: Option<SeededBug>) -> Arc<World> {
    let meta = ModelDev::new(false);
    let data = ModelDev::new(true);
    let mut o = CreateOptions::new(16 << 20);
    o.block_size = BS;
    o.metadata_size = Some(4 << 20);
    o.cache_blocks = 64;
    let mut p = Pool::create_on(meta.clone(), data.clone(), &o).unwrap();
    let id = p.create_volume("v", BLOCKS * BS, false).unwrap();
    // Every block starts as write 0 and is shared with a snapshot: a block's first write
    // copies it to a newly allocated block (a new mapping, committed by the next commit),
    // later ones write in place. A committed mapping to a block whose data is not durable
    // reads zeros from the crash copy, which no write ever stored.
    for vb in 0..BLOCKS {
        p.write(id, vb * BS, &stamp(vb, 0)).unwrap();
    }
    p.commit().unwrap();
    p.snapshot("v", "snap", true).unwrap();
    p.commit().unwrap();
    let mut sp = SharedPool::new(p);
    if let Some(b) = bug {
        sp.seed_bug(b);
    }
    Arc::new(World {
        sp,
        meta,
        data,
        id,
        completed: Mutex::new(BTreeMap::new()),
    })
}

/// Invariant (a): the state a crash leaves now has, for every block, a stamp of that block
/// written by some write, at least as new as `need` (per block: the newest write completed
/// before the commit call).
fn check_durable(w: &World, need: &BTreeMap<u64, u64>, what: &str) {
    let meta = w.meta.crash_copy();
    let data = w.data.crash_copy();
    let history = w.data.history();
    let opts = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    let mut p = Pool::open_on(meta, data, &opts).unwrap();
    let mut b = vec![0u8; BS as usize];
    for vb in 0..BLOCKS {
        p.read(w.id, vb * BS, &mut b).unwrap();
        let got = parse(&b).filter(|&(v, _)| v == vb);
        let Some((_, id)) = got else {
            panic!(
                "invariant (a) after {what}: block {vb} of the crash copy holds no write of it \
                 (committed metadata maps data that is not durable): {:?}",
                &b[..16]
            );
        };
        let pos = |id: u64| {
            if id == 0 {
                Some(0)
            } else {
                history
                    .get(&vb)?
                    .iter()
                    .position(|&x| x == id)
                    .map(|p| p + 1)
            }
        };
        let have = pos(id).expect("a stamp no write wrote");
        if let Some(&n) = need.get(&vb) {
            let want = pos(n).unwrap();
            assert!(
                have >= want,
                "invariant (a) after {what}: block {vb} of the crash copy holds write {id}, \
                 older than write {n}, which completed before the commit was called \
                 (an acknowledged write lost)"
            );
        }
    }
}

fn run_ops(w: &World, t: u64, ops: &[Op]) {
    for (i, &op) in ops.iter().enumerate() {
        match op {
            Op::Write(lo, hi) => {
                let id = (t + 1) * 1000 + i as u64;
                let mut buf = Vec::new();
                for vb in lo..hi {
                    buf.extend(stamp(vb, id));
                }
                w.sp.write(w.id, lo * BS, &buf).unwrap();
                let mut c = w.completed.lock().unwrap();
                for vb in lo..hi {
                    c.entry(vb).or_default().push(id);
                }
            }
            Op::Commit | Op::Periodic => {
                // The newest completed write per block, by the order they reached the device
                // (overlapping writes are serialized, so that is their completion order).
                let need: BTreeMap<u64, u64> = {
                    let c = w.completed.lock().unwrap();
                    let h = w.data.history();
                    c.iter()
                        .map(|(&vb, ids)| {
                            let order = &h[&vb];
                            let newest = ids
                                .iter()
                                .max_by_key(|&&id| order.iter().position(|&x| x == id))
                                .unwrap();
                            (vb, *newest)
                        })
                        .collect()
                };
                if let Op::Commit = op {
                    w.sp.commit().unwrap();
                    check_durable(w, &need, &format!("thread {t}'s commit (op {i})"));
                } else {
                    // The timer promises nothing for writes in place; only no garbage.
                    w.sp.periodic_commit().unwrap();
                    check_durable(w, &BTreeMap::new(), &format!("thread {t}'s timer (op {i})"));
                }
            }
            Op::Read(lo, hi) => {
                let mut b = vec![0u8; ((hi - lo) * BS) as usize];
                w.sp.read(w.id, lo * BS, &mut b).unwrap();
                for (k, chunk) in b.chunks(BS as usize).enumerate() {
                    let vb = lo + k as u64;
                    assert!(
                        parse(chunk).is_some_and(|(v, _)| v == vb),
                        "thread {t} read garbage in block {vb}"
                    );
                }
            }
        }
    }
}

/// One execution: the threads run their ops at once; then the final checks.
fn scenario(bug: Option<SeededBug>, threads: &'static [&'static [Op]]) {
    let w = setup(bug);
    let hs: Vec<_> = threads
        .iter()
        .enumerate()
        .map(|(t, ops)| {
            let w = w.clone();
            shuttle::thread::spawn(move || run_ops(&w, t as u64, ops))
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    // Everything is done: a last commit makes each block's last write durable.
    w.sp.commit().unwrap();
    let history = w.data.history();
    let last: BTreeMap<u64, u64> = history
        .iter()
        .map(|(&vb, ids)| (vb, *ids.last().unwrap()))
        .collect();
    let mut b = vec![0u8; BS as usize];
    for (&vb, &id) in &last {
        w.sp.read(w.id, vb * BS, &mut b).unwrap();
        assert_eq!(parse(&b), Some((vb, id)), "block {vb} lost its last write");
    }
    check_durable(&w, &last, "the final commit");
    let r = thinpool::check::check(w.meta.crash_copy(), None);
    assert!(
        r.is_clean(),
        "{:?}",
        r.errors().map(|f| f.to_string()).collect::<Vec<_>>()
    );
}

use Op::*;

/// Overlapping and disjoint ranges from two writers, each flushing, and a third thread
/// committing and running the timer.
const MIXED: &[&[Op]] = &[
    &[Write(0, 2), Commit, Write(1, 2), Write(3, 4), Commit],
    &[Write(1, 3), Write(0, 1), Commit, Read(0, 4), Write(2, 4)],
    &[Commit, Periodic, Commit],
];

/// Two writers contending for the same blocks (the range lock) with FLUSHes in between.
const CONTENDED: &[&[Op]] = &[
    &[Write(0, 2), Write(0, 2), Commit, Write(1, 2)],
    &[Write(1, 2), Write(0, 1), Write(0, 2), Commit],
];

/// Group commit: writers that flush while another thread's commit runs.
const FLUSHES: &[&[Op]] = &[
    &[Write(0, 1), Commit, Write(0, 1), Commit],
    &[Write(1, 2), Commit, Write(1, 2), Commit],
    &[Commit, Commit, Commit],
];

fn config() -> Config {
    let mut c = Config::new();
    // The pool's B-tree code wants more than shuttle's default coroutine stack.
    c.stack_size = 1 << 20;
    c.silence_warnings = true;
    c
}

fn run<S: Scheduler + 'static>(
    name: &str,
    s: S,
    bug: Option<SeededBug>,
    threads: &'static [&'static [Op]],
) -> usize {
    let t0 = Instant::now();
    let n = Runner::new(s, config()).run(move || scenario(bug, threads));
    println!(
        "shuttle: {name}: {n} iterations in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    n
}

/// Iterations per scheduler and scenario (`THINPOOL_SHUTTLE_ITERS` overrides).
fn iters(default: usize) -> usize {
    std::env::var("THINPOOL_SHUTTLE_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn check_scenario(name: &str, threads: &'static [&'static [Op]], n: usize) {
    let n = iters(n);
    run(
        &format!("{name} random"),
        RandomScheduler::new_from_seed(1, n),
        None,
        threads,
    );
    run(
        &format!("{name} pct depth 3"),
        PctScheduler::new_from_seed(2, 3, n),
        None,
        threads,
    );
}

#[test]
fn mixed_writes_and_commits_keep_the_invariants() {
    check_scenario("mixed", MIXED, 2000);
}

#[test]
fn contended_writes_keep_the_invariants() {
    check_scenario("contended", CONTENDED, 2000);
}

#[test]
fn group_commits_keep_the_invariants() {
    check_scenario("flushes", FLUSHES, 2000);
}

/// With `bug` seeded, some schedule of `threads` must fail (shuttle stops at the first);
/// prints at which iteration and the failure.
fn finds(bug: SeededBug, threads: &'static [&'static [Op]], n: usize) {
    let n = iters(n);
    let t0 = Instant::now();
    let tried = Arc::new(Mutex::new(0usize));
    let counted = tried.clone();
    let r = catch_unwind(AssertUnwindSafe(|| {
        Runner::new(RandomScheduler::new_from_seed(7, n), config()).run(move || {
            *counted.lock().unwrap() += 1;
            scenario(Some(bug), threads)
        })
    }));
    let tried = *tried.lock().unwrap();
    let msg = match &r {
        Ok(_) => panic!("seeded bug {bug:?} not found in {n} iterations"),
        Err(e) => e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    };
    println!(
        "shuttle: seeded bug {bug:?} found at iteration {tried} of {n} in {:.1} s: {}",
        t0.elapsed().as_secs_f64(),
        msg.lines().next().unwrap_or("")
    );
}

#[test]
fn finds_a_skipped_second_sync() {
    finds(SeededBug::SkipSecondSync, MIXED, 20_000);
}

#[test]
fn finds_a_range_lock_that_does_not_recheck() {
    finds(SeededBug::RangeLockNoRecheck, CONTENDED, 20_000);
}

/// Replays a failing schedule that a run printed: `THINPOOL_SHUTTLE_REPLAY=<schedule>
/// THINPOOL_SHUTTLE_CASE=<scenario>:<bug or none>` (e.g. `mixed:SkipSecondSync`).
#[test]
fn replay_a_schedule() {
    let (Ok(schedule), Ok(case)) = (
        std::env::var("THINPOOL_SHUTTLE_REPLAY"),
        std::env::var("THINPOOL_SHUTTLE_CASE"),
    ) else {
        return;
    };
    let (name, bug) = case.split_once(':').expect("scenario:bug");
    let threads = match name {
        "mixed" => MIXED,
        "contended" => CONTENDED,
        "flushes" => FLUSHES,
        _ => panic!("no scenario {name}"),
    };
    let bug = match bug {
        "SkipSecondSync" => Some(SeededBug::SkipSecondSync),
        "RangeLockNoRecheck" => Some(SeededBug::RangeLockNoRecheck),
        _ => None,
    };
    let s = shuttle::scheduler::ReplayScheduler::new_from_encoded(&schedule);
    Runner::new(s, config()).run(move || scenario(bug, threads));
}
