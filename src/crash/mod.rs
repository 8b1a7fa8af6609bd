//! Crash injection (docs/design.md §6): a seeded random workload runs against a pool on
//! [`SimDev`](crate::io::SimDev)s; at every flush the devices' state is captured, and
//! post-crash images are built from the durable state plus subsets of the unflushed writes
//! (dropped, reordered, torn at 512 bytes). Besides those, a crash point also yields crashes
//! between its unflushed writes (a crash just after write *n*: writes 1..n land whole and in
//! order, see [`CrashPoint::write_boundaries`]), so every write of a short run is a crash
//! point of its own. Each image is recovered (opened), checked, and every 512-byte sector of
//! every volume is compared with the [`oracle`].
//!
//! A crash during recovery: for a sample of the states (one in `second_crash_every` crash
//! points, one state each), once the state has recovered and verified, the pool is reopened
//! read-write on a new [`SimGroup`] whose devices start from that post-crash image, and runs
//! a short continuation (writes, discards, snapshots and commits; the first commit after
//! recovery reuses the journal slot and the blocks of the torn transaction). Every flush of
//! the continuation is a crash point again, explored like the first ones against an oracle
//! whose durable values are what the first recovery read.
//!
//! Runs are deterministic from the seed: the workload's random choices and each state's fault
//! choices come from ChaCha streams keyed by the seed (and the crash point and state index).

pub mod kill;
pub mod oracle;

use crate::check;
use crate::io::sim::{CrashFaults, CrashImage, CrashPoint};
use crate::io::{BlockDev, SimGroup};
use crate::pool::{CreateOptions, OpenOptions, Pool, PoolError, VolumeId};
use oracle::{decode_sector, sector_content, Exists, Oracle, SecState, VolOracle, SECTOR};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct CrashConfig {
    pub seed: u64,
    /// Workload operations.
    pub ops: usize,
    /// Most volumes alive at once.
    pub volumes: usize,
    pub block_size: u64,
    pub pool_size: u64,
    /// Post-crash states explored per crash point.
    pub states_per_point: usize,
    /// Besides those, crashes between the unflushed writes of a crash point, each write
    /// landing whole and in order up to the crash: after every write when there are at most
    /// this many, else this many evenly spaced (0: none).
    pub write_points: usize,
    /// Stop after this many states (0: no limit).
    pub max_states: u64,
    pub faults: FaultSet,
    /// Test-only: write the commit record before syncing the new metadata.
    pub broken_commit_order: bool,
    /// Test-only: the same, only in the continuations after a recovery (so only a second
    /// crash can catch it).
    pub broken_commit_order_after_recovery: bool,
    /// Only explore this (crash point, state) pair (replay).
    pub only: Option<(u64, usize)>,
    /// Continue one recovered state of one in this many crash points and crash it again
    /// (0: never).
    pub second_crash_every: u64,
    /// Post-crash states built at each crash point of a continuation.
    pub second_states_per_point: usize,
    /// Replay: continue the state `only` names and explore only this (second crash point,
    /// state) pair of its continuation (point 0: no crash, the continuation itself failed).
    pub only_second: Option<(u64, usize)>,
}

impl Default for CrashConfig {
    fn default() -> Self {
        CrashConfig {
            seed: 1,
            ops: 300,
            volumes: 4,
            block_size: 4096,
            pool_size: 16 << 20,
            states_per_point: 8,
            write_points: DEFAULT_WRITE_POINTS,
            max_states: 0,
            faults: FaultSet::default(),
            broken_commit_order: false,
            broken_commit_order_after_recovery: false,
            only: None,
            second_crash_every: DEFAULT_SECOND_CRASH_EVERY,
            second_states_per_point: 4,
            only_second: None,
        }
    }
}

/// Default sampling of states continued after recovery (one in this many crash points).
pub const DEFAULT_SECOND_CRASH_EVERY: u64 = 4;

/// Default number of crashes between the unflushed writes of one crash point.
pub const DEFAULT_WRITE_POINTS: usize = 64;

/// Which faults a run injects. `drop`, `reorder` and `torn` are what a power loss does and are
/// inside the promise: every state must recover exactly. `eio` (a metadata read fails),
/// `bitflip` (one bit of a written metadata block flips) and `misdirect` (one unflushed
/// metadata write lands on another block) are media faults beyond it, at most one per state:
/// for those the promise is that they are *detected* (recovery fails cleanly, falls back to
/// an older record and says so, the checker reports them, or the read fails) and never turn
/// into silently wrong data or a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultSet {
    pub drop: bool,
    pub reorder: bool,
    pub torn: bool,
    pub eio: bool,
    pub bitflip: bool,
    pub misdirect: bool,
}

impl Default for FaultSet {
    fn default() -> Self {
        FaultSet {
            drop: true,
            reorder: true,
            torn: true,
            eio: false,
            bitflip: false,
            misdirect: false,
        }
    }
}

impl FaultSet {
    /// Parse `drop,reorder,torn,eio,bitflip,misdirect` (any subset).
    pub fn parse(s: &str) -> Result<FaultSet, String> {
        let mut f = FaultSet {
            drop: false,
            reorder: false,
            torn: false,
            eio: false,
            bitflip: false,
            misdirect: false,
        };
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "drop" => f.drop = true,
                "reorder" => f.reorder = true,
                "torn" => f.torn = true,
                "eio" => f.eio = true,
                "bitflip" => f.bitflip = true,
                "misdirect" => f.misdirect = true,
                other => {
                    return Err(format!(
                    "unknown fault '{other}' (known: drop, reorder, torn, eio, bitflip, misdirect)"
                ))
                }
            }
        }
        Ok(f)
    }

    pub fn names(&self) -> String {
        let all = [
            ("drop", self.drop),
            ("reorder", self.reorder),
            ("torn", self.torn),
            ("eio", self.eio),
            ("bitflip", self.bitflip),
            ("misdirect", self.misdirect),
        ];
        all.iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn media(&self) -> bool {
        self.eio || self.bitflip || self.misdirect
    }
}

/// A broken promise, with what is needed to reproduce it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub point: u64,
    pub state: usize,
    pub op: usize,
    /// Set when the promise broke after a second crash (or in the continuation itself).
    pub second: Option<SecondCrash>,
    pub message: String,
}

/// Where a violation happened in the continuation of the recovered state `(point, state)`
/// of a [`Violation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecondCrash {
    /// Crash point of the continuation (0: no crash: reopening read-write, an operation of
    /// the continuation or its live reads failed).
    pub point: u64,
    pub state: usize,
    /// Operation of the continuation (0: reopening, the last one: a crash after it).
    pub op: usize,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}, crash point {}, state {}, after operation {}",
            self.seed, self.point, self.state, self.op
        )?;
        if let Some(s) = self.second {
            write!(
                f,
                "; recovered, continued, then second crash point {}, state {}, in continuation operation {}",
                s.point, s.state, s.op
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
pub struct CrashReport {
    pub states: u64,
    /// Of `states`, those that crashed between two unflushed writes (`write_points`).
    pub write_states: u64,
    pub points: u64,
    /// States with a media fault injected, and how many of those were detected (the rest
    /// did not matter: the damaged block was not needed and every byte read back right).
    pub media_faults: u64,
    pub media_detected: u64,
    /// Recovered states that were continued read-write, the crash points of those
    /// continuations and the states explored there (after a second crash).
    pub second_crash_runs: u64,
    pub second_crash_points: u64,
    pub second_crash_states: u64,
    pub ops: usize,
    pub elapsed: Duration,
    pub violations: Vec<Violation>,
}

impl CrashReport {
    /// Recovered and verified states per second (after a first or a second crash).
    pub fn states_per_sec(&self) -> f64 {
        (self.states + self.second_crash_states) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Run one seeded crash test.
pub fn run(cfg: &CrashConfig) -> CrashReport {
    let start = Instant::now();
    let mut rep = CrashReport::default();
    let group = SimGroup::new();
    let meta = Arc::new(group.add(64 << 20));
    let data = Arc::new(group.add(cfg.pool_size));
    let mut o = CreateOptions::new(cfg.pool_size);
    o.block_size = cfg.block_size;
    o.metadata_size = Some(8 << 20);
    o.cache_blocks = 256;
    let mut pool = match Pool::create_on(meta, data, &o) {
        Ok(p) => p,
        Err(e) => {
            rep.violations.push(Violation {
                seed: cfg.seed,
                point: 0,
                state: 0,
                op: 0,
                second: None,
                message: format!("pool creation failed: {e}"),
            });
            return rep;
        }
    };
    pool.set_broken_commit_order(cfg.broken_commit_order);
    group.take_points();
    let mut w = Workload {
        rng: ChaCha8Rng::seed_from_u64(cfg.seed),
        oracle: Oracle::default(),
        next_write: 1,
        next_name: 0,
        cfg: cfg.clone(),
        log: Vec::new(),
    };
    for op in 0..cfg.ops {
        let during = w.step(&mut pool);
        let points = group.take_points();
        // The live pool must read exactly the latest values before any crash is explored.
        if let Err(message) = verify_live(&mut pool, &w.oracle) {
            rep.violations.push(Violation {
                seed: cfg.seed,
                point: 0,
                state: 0,
                op,
                second: None,
                message: format!("live pool differs from the model: {message}"),
            });
        }
        explore(cfg, &points, &during, op, &mut rep);
        if let Some(v) = rep.violations.last_mut() {
            let from = w.log.len().saturating_sub(
                std::env::var("THINPOOL_CRASH_LOG")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(12),
            );
            v.message = format!(
                "{}\nlast operations:\n  {}",
                v.message,
                w.log[from..].join("\n  ")
            );
        }
        rep.ops = op + 1;
        let states = rep.states + rep.second_crash_states;
        if (cfg.max_states > 0 && states >= cfg.max_states) || !rep.violations.is_empty() {
            break;
        }
    }
    // A crash after the last operation, with whatever is still unflushed.
    if rep.violations.is_empty() {
        let last = group.current_point();
        explore(cfg, &[last], &w.oracle, cfg.ops, &mut rep);
    }
    rep.elapsed = start.elapsed();
    rep
}

fn explore(
    cfg: &CrashConfig,
    points: &[CrashPoint],
    oracle: &Oracle,
    op: usize,
    rep: &mut CrashReport,
) {
    for p in points {
        rep.points += 1;
        let continued = continued_state(cfg, p.seq);
        let cuts = p.write_boundaries(cfg.write_points);
        for k in 0..cfg.states_per_point + cuts.len() {
            if let Some((ps, ks)) = cfg.only {
                if (ps, ks) != (p.seq, k) {
                    continue;
                }
            }
            // A replay continues the state only when the violation came after a second crash.
            let keep = match (cfg.only, cfg.only_second) {
                (Some(_), second) => second.is_some(),
                (None, _) => continued == Some(k),
            };
            let mut rng = state_rng(cfg.seed, p.seq, k);
            let upto = k.checked_sub(cfg.states_per_point).map(|j| cuts[j]);
            rep.states += 1;
            rep.write_states += upto.is_some() as u64;
            let outcome = guarded(|| verify_state(p, cfg.faults, k, upto, &mut rng, oracle, keep));
            let violation = |message| Violation {
                seed: cfg.seed,
                point: p.seq,
                state: k,
                op,
                second: None,
                message,
            };
            match outcome {
                Ok((StateOutcome::Exact, recovered)) => {
                    if let Some(rec) = recovered {
                        if let Err(v) = second_crash(cfg, (p.seq, k), op, rec, rep) {
                            rep.violations.push(v);
                            return;
                        }
                    }
                }
                Ok((StateOutcome::Injected { detected }, _)) => {
                    rep.media_faults += 1;
                    rep.media_detected += detected as u64;
                }
                Err(message) => {
                    rep.violations.push(violation(message));
                    return;
                }
            }
        }
    }
}

/// Run `f`, turning a panic into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panic during recovery or verification: {what}"))
        }
    }
}

/// Which state of crash point `seq` is continued after recovery, if any: one in
/// `second_crash_every` points (a hash of the seed and the point, so a replay agrees), and
/// a state chosen by the same hash (all writes kept, all dropped, or a random subset).
fn continued_state(cfg: &CrashConfig, seq: u64) -> Option<usize> {
    if cfg.second_crash_every == 0 || cfg.states_per_point == 0 {
        return None;
    }
    let mut h =
        (cfg.seed ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 31;
    let every = cfg.second_crash_every;
    (h % every == 0).then(|| ((h / every) % cfg.states_per_point as u64) as usize)
}

fn state_rng(seed: u64, point: u64, k: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ point.wrapping_mul(0x9e37_79b9) ^ ((k as u64) << 48))
}

/// The seed of the random streams of the continuation of state `k` of crash point `point`.
fn continuation_seed(seed: u64, (point, k): (u64, usize)) -> u64 {
    seed ^ 0x5ec0_0d00_0000_0000 ^ point.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ ((k as u64) << 40)
}

/// First write id of a continuation (the first run's ids stay far below).
const CONTINUATION_WRITES: u64 = 1 << 40;
/// First volume number of a continuation (its volumes are `v1000000`, ...).
const CONTINUATION_NAMES: u64 = 1_000_000;

/// A state that recovered and verified exactly, kept for a continuation.
struct Recovered {
    meta: Arc<CrashImage>,
    data: Arc<CrashImage>,
    /// What the recovered pool holds: every volume that exists, every sector as read.
    oracle: Oracle,
}

/// Reopen the recovered state `first` read-write on devices whose durable state is its
/// image, run a short continuation, crash it at every flush and verify each second crash.
fn second_crash(
    cfg: &CrashConfig,
    first: (u64, usize),
    op: usize,
    rec: Recovered,
    rep: &mut CrashReport,
) -> Result<(), Violation> {
    rep.second_crash_runs += 1;
    let cseed = continuation_seed(cfg.seed, first);
    let group = SimGroup::new();
    let meta: Arc<dyn BlockDev> = Arc::new(group.add_image(&rec.meta));
    let data: Arc<dyn BlockDev> = Arc::new(group.add_image(&rec.data));
    drop((rec.meta, rec.data));
    // Second crashes are power losses only (a media fault was never continued).
    let faults = FaultSet {
        eio: false,
        bitflip: false,
        misdirect: false,
        ..cfg.faults
    };
    let mut w = Workload {
        rng: ChaCha8Rng::seed_from_u64(cseed),
        oracle: rec.oracle,
        next_write: CONTINUATION_WRITES,
        next_name: CONTINUATION_NAMES,
        cfg: cfg.clone(),
        log: Vec::new(),
    };
    let ops = w.rng.gen_range(3..=8usize);
    let fail = |w: &Workload, point: u64, state: usize, cop: usize, message: String| Violation {
        seed: cfg.seed,
        point: first.0,
        state: first.1,
        op,
        second: Some(SecondCrash {
            point,
            state,
            op: cop,
        }),
        message: format!(
            "{message}\nthe pool recovered from crash point {} state {} and then ran:\n  {}",
            first.0,
            first.1,
            if w.log.is_empty() {
                "(nothing: it was reopened)".to_string()
            } else {
                w.log.join("\n  ")
            }
        ),
    };
    let opts = OpenOptions {
        read_only: false,
        cache_blocks: 256,
        ..OpenOptions::default()
    };
    let mut pool = match guarded(|| Pool::open_on(meta, data, &opts).map_err(|e| e.to_string())) {
        Ok(p) => p,
        Err(e) => {
            return Err(fail(
                &w,
                0,
                0,
                0,
                format!("reopening read-write failed: {e}"),
            ))
        }
    };
    pool.set_broken_commit_order(cfg.broken_commit_order || cfg.broken_commit_order_after_recovery);
    // Operation 0 is the reopening (it may write); the last one commits, so the
    // continuation always reaches a commit after recovery.
    for cop in 0..=ops + 1 {
        let during = match cop {
            0 => Ok(w.oracle.clone()),
            c if c <= ops => guarded(|| Ok(w.step(&mut pool))),
            _ => guarded(|| Ok(w.commit(&mut pool))),
        };
        let during =
            during.map_err(|e| fail(&w, 0, 0, cop, format!("the continuation failed: {e}")))?;
        let points = group.take_points();
        if let Err(message) = verify_live(&mut pool, &w.oracle) {
            return Err(fail(
                &w,
                0,
                0,
                cop,
                format!("live pool differs from the model after recovery: {message}"),
            ));
        }
        explore_second(cfg, first, faults, &points, &during, rep)
            .map_err(|(p, k, m)| fail(&w, p, k, cop, m))?;
    }
    let last = group.current_point();
    if last.pending() > 0 {
        explore_second(cfg, first, faults, &[last], &w.oracle, rep)
            .map_err(|(p, k, m)| fail(&w, p, k, ops + 2, m))?;
    }
    Ok(())
}

/// Explore the crash points of a continuation; a violation is `(point, state, message)`.
fn explore_second(
    cfg: &CrashConfig,
    first: (u64, usize),
    faults: FaultSet,
    points: &[CrashPoint],
    oracle: &Oracle,
    rep: &mut CrashReport,
) -> Result<(), (u64, usize, String)> {
    let cseed = continuation_seed(cfg.seed, first);
    for p in points {
        rep.second_crash_points += 1;
        let cuts = p.write_boundaries(cfg.write_points);
        for k in 0..cfg.second_states_per_point + cuts.len() {
            if let Some((ps, ks)) = cfg.only_second {
                if (ps, ks) != (p.seq, k) {
                    continue;
                }
            }
            let mut rng = state_rng(cseed, p.seq, k);
            let upto = k.checked_sub(cfg.second_states_per_point).map(|j| cuts[j]);
            rep.second_crash_states += 1;
            match guarded(|| verify_state(p, faults, k, upto, &mut rng, oracle, false)) {
                Ok(_) => {}
                Err(message) => return Err((p.seq, k, message)),
            }
        }
    }
    Ok(())
}

enum StateOutcome {
    /// Recovered and every sector matched the oracle.
    Exact,
    /// A media fault was injected; `detected` when recovery, the checker or a read said so.
    Injected { detected: bool },
}

/// Recover state `k` of crash point `p` (read-only), check it and compare every sector with
/// the oracle. With `keep`, a state that verified exactly is returned for a continuation.
/// `upto`: the state is a crash just before that write (see [`CrashFaults::upto`]).
fn verify_state(
    p: &CrashPoint,
    fs: FaultSet,
    k: usize,
    upto: Option<u64>,
    rng: &mut ChaCha8Rng,
    oracle: &Oracle,
    keep: bool,
) -> Result<(StateOutcome, Option<Recovered>), String> {
    // State 0 keeps every unflushed write, state 1 drops them all; the rest are random,
    // or crashes between two writes.
    let faults = match k {
        _ if upto.is_some() => CrashFaults {
            upto,
            ..Default::default()
        },
        0 => CrashFaults::default(),
        1 => CrashFaults {
            drop: 1.0,
            ..Default::default()
        },
        _ => CrashFaults {
            drop: if fs.drop { 0.5 } else { 0.0 },
            reorder: fs.reorder,
            torn: if fs.torn { 0.3 } else { 0.0 },
            misdirect: false,
            upto: None,
        },
    };
    // At most one media fault per state (the fault budget), never in states 0 and 1.
    let media = if k >= 2 && upto.is_none() && fs.media() {
        let kinds: Vec<u8> = [(fs.eio, 0u8), (fs.bitflip, 1), (fs.misdirect, 2)]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        Some(kinds[rng.gen_range(0..kinds.len())])
    } else {
        None
    };
    let meta_faults = CrashFaults {
        misdirect: media == Some(2),
        ..faults
    };
    let mut meta_img = CrashImage::build(p, 0, meta_faults, rng);
    let data_img = Arc::new(CrashImage::build(p, 1, faults, rng));
    let data: Arc<dyn BlockDev> = data_img.clone();
    match media {
        Some(0) => {
            let secs = meta_img.written_sectors();
            let s = secs[rng.gen_range(0..secs.len())];
            meta_img.fail_reads(s / 8 * 4096, 4096);
        }
        Some(1) => {
            let secs = meta_img.written_sectors();
            let s = secs[rng.gen_range(0..secs.len())];
            meta_img.flip_bit(s * 512 + rng.gen_range(0..512), rng.gen_range(0..8));
        }
        _ => {}
    }
    let meta_img = Arc::new(meta_img);
    let meta: Arc<dyn BlockDev> = meta_img.clone();
    let injected = media.is_some();
    let detected = |why: String| -> Result<(StateOutcome, Option<Recovered>), String> {
        if injected {
            Ok((StateOutcome::Injected { detected: true }, None))
        } else {
            Err(why)
        }
    };
    let opts = OpenOptions {
        read_only: true,
        cache_blocks: 256,
        ..OpenOptions::default()
    };
    let mut pool = match Pool::open_on(meta.clone(), data, &opts) {
        Ok(p) => p,
        Err(e) => return detected(format!("recovery failed: {e}")),
    };
    if let Some(r) = pool.open_report() {
        if r.chosen_seq != r.newest_valid_seq {
            return detected(format!(
                "recovery fell back from seq {} to {} with no media fault: {:?}",
                r.newest_valid_seq, r.chosen_seq, r.skipped
            ));
        }
    }
    let r = check::check(meta, None);
    if !r.is_clean() {
        let errs: Vec<String> = r.errors().take(5).map(|f| f.to_string()).collect();
        return detected(format!("checker found errors after recovery: {errs:?}"));
    }
    let vols = match pool.volumes() {
        Ok(v) => v,
        Err(e) => return detected(format!("listing volumes failed: {e}")),
    };
    for (_, d) in &vols {
        if !oracle.vols.contains_key(&d.name) {
            return Err(format!(
                "volume '{}' exists, but it was never created or its removal was acknowledged",
                d.name
            ));
        }
    }
    let keep = keep && !injected;
    let mut recovered = Oracle::default();
    for (name, vo) in &oracle.vols {
        let id = match vols.iter().find(|(_, d)| &d.name == name) {
            Some((id, _)) => *id,
            None if vo.exists == Exists::Maybe => continue,
            None => return Err(format!("volume '{name}' is missing after recovery")),
        };
        let mut now = VolOracle::new(vo.sectors, Exists::Yes);
        match verify_volume(&mut pool, id, name, vo, keep.then_some(&mut now)) {
            Ok(()) => {
                if keep {
                    recovered.vols.insert(name.clone(), now);
                }
            }
            Err(VerifyError::Read(e)) => return detected(e),
            Err(VerifyError::Wrong(e)) => {
                let r = pool
                    .open_report()
                    .map(|r| {
                        format!(
                            "recovered seq {} (newest valid {})",
                            r.chosen_seq, r.newest_valid_seq
                        )
                    })
                    .unwrap_or_default();
                return Err(format!("{e} [{r}]"));
            }
        }
    }
    if injected {
        return Ok((StateOutcome::Injected { detected: false }, None));
    }
    let recovered = keep.then_some(Recovered {
        meta: meta_img,
        data: data_img,
        oracle: recovered,
    });
    Ok((StateOutcome::Exact, recovered))
}

fn verify_live(pool: &mut Pool, oracle: &Oracle) -> Result<(), String> {
    for (name, vo) in &oracle.vols {
        let id = pool.volume_id(name).map_err(|e| e.to_string())?;
        let size = vo.sectors * SECTOR as u64;
        let mut buf = vec![0u8; size as usize];
        pool.read(id, 0, &mut buf).map_err(|e| e.to_string())?;
        for s in 0..vo.sectors {
            let got = decode_sector(&buf[s as usize * SECTOR..(s as usize + 1) * SECTOR], s)
                .map_err(|why| format!("'{name}' sector {s} {why}"))?;
            let want = vo.get(s).latest();
            if got != want {
                return Err(format!(
                    "'{name}' sector {s} reads write {got}, expected {want}"
                ));
            }
        }
    }
    Ok(())
}

enum VerifyError {
    /// The pool refused to read (an error, not wrong data).
    Read(String),
    /// A sector holds a value the oracle does not allow.
    Wrong(String),
}

fn verify_volume(
    pool: &mut Pool,
    id: VolumeId,
    name: &str,
    vo: &VolOracle,
    mut now: Option<&mut VolOracle>,
) -> Result<(), VerifyError> {
    let size = vo.sectors * SECTOR as u64;
    let mut buf = vec![0u8; size as usize];
    pool.read(id, 0, &mut buf)
        .map_err(|e| VerifyError::Read(format!("reading '{name}' failed: {e}")))?;
    for s in 0..vo.sectors {
        let sec = &buf[s as usize * SECTOR..(s as usize + 1) * SECTOR];
        match decode_sector(sec, s) {
            Err(why) => return Err(VerifyError::Wrong(format!("'{name}' sector {s} {why}"))),
            Ok(w) if !vo.allows(s, w) => {
                let st = vo.get(s);
                let vb = s * SECTOR as u64 / pool.block_size();
                let mut maps = Vec::new();
                for (vid, d) in pool.volumes().unwrap_or_default() {
                    maps.push(format!(
                        "{}:{:?}",
                        d.name,
                        pool.mappings(vid, vb, vb + 1, 1).unwrap_or_default()
                    ));
                }
                return Err(VerifyError::Wrong(format!(
                    "'{name}' sector {s} reads write {w}; allowed: durable {} or newer {:?}; block {vb} is mapped as {maps:?}",
                    st.durable, st.newer
                )));
            }
            Ok(w) => {
                if let (Some(now), true) = (now.as_deref_mut(), w != 0) {
                    // What recovery reads is on the medium: the continuation's durable value.
                    now.map.insert(
                        s,
                        SecState {
                            durable: w,
                            newer: Vec::new(),
                        },
                    );
                }
            }
        }
    }
    Ok(())
}

struct Workload {
    rng: ChaCha8Rng,
    oracle: Oracle,
    next_write: u64,
    next_name: u64,
    cfg: CrashConfig,
    /// What each operation did, for violation reports.
    log: Vec<String>,
}

impl Workload {
    fn certain(&self) -> Vec<String> {
        self.oracle
            .vols
            .iter()
            .filter(|(_, v)| v.exists == Exists::Yes)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Run one operation; returns the oracle that holds while it is in flight.
    fn step(&mut self, pool: &mut Pool) -> Oracle {
        let names = self.certain();
        let roll = self.rng.gen_range(0..100);
        if names.is_empty() || (roll < 6 && names.len() < self.cfg.volumes) {
            return self.create(pool);
        }
        let pick = names[self.rng.gen_range(0..names.len())].clone();
        match roll {
            0..=54 => self.write(pool, &pick),
            55..=69 => self.commit(pool),
            70..=77 if names.len() < self.cfg.volumes => self.snapshot(pool, &pick),
            78..=87 => self.discard(pool, &pick),
            88..=91 if names.len() > 1 => self.remove(pool, &pick),
            _ => self.write(pool, &pick),
        }
    }

    fn manage(
        &mut self,
        during: Oracle,
        r: Result<(), PoolError>,
        post: impl FnOnce(&mut Oracle),
    ) -> Oracle {
        match r {
            Ok(()) => {
                self.oracle.ack();
                post(&mut self.oracle);
            }
            // Out of space: nothing changed.
            Err(PoolError::Meta(_)) => {}
            Err(e) => panic!("workload operation failed unexpectedly: {e}"),
        }
        during
    }

    fn create(&mut self, pool: &mut Pool) -> Oracle {
        let name = format!("v{}", self.next_name);
        self.next_name += 1;
        let sectors = self.rng.gen_range(64..=512u64);
        let mut during = self.oracle.clone();
        during
            .vols
            .insert(name.clone(), VolOracle::new(sectors, Exists::Maybe));
        self.log.push(format!("create {name} ({sectors} sectors)"));
        let r = pool
            .create_volume(&name, sectors * SECTOR as u64, false)
            .map(|_| ());
        self.manage(during, r, |o| {
            o.vols.insert(name, VolOracle::new(sectors, Exists::Yes));
        })
    }

    fn snapshot(&mut self, pool: &mut Pool, src: &str) -> Oracle {
        let name = format!("v{}", self.next_name);
        self.next_name += 1;
        let mut during = self.oracle.clone();
        let maybe = during.snapshot_of(src, Exists::Maybe);
        during.vols.insert(name.clone(), maybe);
        self.log.push(format!("snapshot {src} -> {name}"));
        let r = pool.snapshot(src, &name, false).map(|_| ());
        let src = src.to_string();
        self.manage(during, r, move |o| {
            let v = o.snapshot_of(&src, Exists::Yes);
            o.vols.insert(name, v);
        })
    }

    fn remove(&mut self, pool: &mut Pool, name: &str) -> Oracle {
        let mut during = self.oracle.clone();
        during.vols.get_mut(name).unwrap().exists = Exists::Maybe;
        self.log.push(format!("remove {name}"));
        let r = pool.remove_volume(name);
        let name = name.to_string();
        self.manage(during, r, move |o| {
            o.vols.remove(&name);
        })
    }

    fn commit(&mut self, pool: &mut Pool) -> Oracle {
        let during = self.oracle.clone();
        self.log.push("commit".into());
        pool.commit().expect("commit failed");
        self.oracle.ack();
        during
    }

    fn range(&mut self, name: &str, max: u64) -> (u64, u64) {
        let sectors = self.oracle.vols[name].sectors;
        let len = self.rng.gen_range(1..=max.min(sectors));
        let start = self.rng.gen_range(0..=sectors - len);
        (start, len)
    }

    fn write(&mut self, pool: &mut Pool, name: &str) -> Oracle {
        let (start, len) = self.range(name, 24);
        let w = self.next_write;
        self.next_write += 1;
        let mut buf = vec![0u8; (len as usize) * SECTOR];
        for i in 0..len {
            let at = i as usize * SECTOR;
            sector_content(w, start + i, &mut buf[at..at + SECTOR]);
        }
        let id = pool.volume_id(name).expect("volume exists");
        let mut during = self.oracle.clone();
        for i in 0..len {
            during.vols.get_mut(name).unwrap().write(start + i, w);
        }
        self.log
            .push(format!("write {w} to {name} sectors {start}+{len}"));
        match pool.write(id, start * SECTOR as u64, &buf) {
            Ok(()) => self.oracle = during.clone(),
            Err(PoolError::Meta(_)) => {} // out of space: the write changed nothing
            Err(e) => panic!("write failed unexpectedly: {e}"),
        }
        during
    }

    fn discard(&mut self, pool: &mut Pool, name: &str) -> Oracle {
        let (start, len) = self.range(name, 64);
        let id = pool.volume_id(name).expect("volume exists");
        let mut during = self.oracle.clone();
        for i in 0..len {
            during.vols.get_mut(name).unwrap().write(start + i, 0);
        }
        self.log
            .push(format!("discard {name} sectors {start}+{len}"));
        match pool.discard(id, start * SECTOR as u64, len * SECTOR as u64) {
            Ok(()) => self.oracle = during.clone(),
            Err(PoolError::Meta(_)) => {}
            Err(e) => panic!("discard failed unexpectedly: {e}"),
        }
        during
    }
}

impl CrashConfig {
    /// A replay file for `v`: the whole configuration plus the one state to explore.
    pub fn replay_json(&self, v: &Violation) -> serde_json::Value {
        let mut j = serde_json::json!({
            "thinpool_crash_replay": 1,
            "seed": self.seed,
            "ops": self.ops,
            "volumes": self.volumes,
            "block_size": self.block_size,
            "pool_size": self.pool_size,
            "states_per_point": self.states_per_point,
            "write_points": self.write_points,
            "faults": self.faults.names(),
            "broken_commit_order": self.broken_commit_order,
            "broken_commit_order_after_recovery": self.broken_commit_order_after_recovery,
            "point": v.point,
            "state": v.state,
            "second_crash_every": self.second_crash_every,
            "second_states_per_point": self.second_states_per_point,
            "message": v.message,
        });
        if let Some(s) = v.second {
            j["second_point"] = s.point.into();
            j["second_state"] = s.state.into();
        }
        j
    }

    /// The configuration a replay file describes (it explores only the recorded state).
    pub fn from_replay(j: &serde_json::Value) -> Result<CrashConfig, String> {
        if j.get("thinpool_crash_replay").and_then(|v| v.as_u64()) != Some(1) {
            return Err(
                "not a thinpool crash replay file (missing \"thinpool_crash_replay\": 1)".into(),
            );
        }
        let num = |k: &str| -> Result<u64, String> {
            j.get(k)
                .and_then(|v| v.as_u64())
                .ok_or_else(|| format!("replay file: \"{k}\" is missing or not a number"))
        };
        let faults = j
            .get("faults")
            .and_then(|v| v.as_str())
            .unwrap_or("drop,reorder,torn");
        Ok(CrashConfig {
            seed: num("seed")?,
            ops: num("ops")? as usize,
            volumes: num("volumes")? as usize,
            block_size: num("block_size")?,
            pool_size: num("pool_size")?,
            states_per_point: num("states_per_point")? as usize,
            // Replay files written before write points existed had none.
            write_points: j.get("write_points").and_then(|v| v.as_u64()).unwrap_or(0) as usize,
            max_states: 0,
            faults: FaultSet::parse(faults)?,
            broken_commit_order: j
                .get("broken_commit_order")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            broken_commit_order_after_recovery: j
                .get("broken_commit_order_after_recovery")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            only: Some((num("point")?, num("state")? as usize)),
            second_crash_every: j
                .get("second_crash_every")
                .and_then(|v| v.as_u64())
                .unwrap_or(DEFAULT_SECOND_CRASH_EVERY),
            second_states_per_point: j
                .get("second_states_per_point")
                .and_then(|v| v.as_u64())
                .unwrap_or(4) as usize,
            only_second: match j.get("second_point") {
                None => None,
                Some(_) => Some((num("second_point")?, num("second_state")? as usize)),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_names_round_trip_and_reject_unknown() {
        let f = FaultSet::parse("drop,torn,bitflip").unwrap();
        assert!(f.drop && f.torn && f.bitflip && !f.reorder && !f.eio && !f.misdirect);
        assert_eq!(FaultSet::parse(&f.names()).unwrap(), f);
        assert!(FaultSet::parse("drop,melt").unwrap_err().contains("melt"));
    }
}
