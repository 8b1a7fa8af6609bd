//! Running a crash test: drive the workload, explore every crash point it leaves (each
//! state recovered and verified), and continue a sample of the recovered states read-write
//! to crash them again. Every random choice comes from a stream keyed by the seed, the
//! crash point and the state, so a replay explores exactly the same state.

use super::config::{CrashConfig, FaultSet};
use super::oracle::Oracle;
use super::report::{CrashReport, SecondCrash, Violation};
use super::verify::{verify_live, verify_state, StateOutcome};
use super::workload::Workload;
use crate::io::sim::{CrashImage, CrashPoint};
use crate::io::{BlockDev, SimGroup};
use crate::pool::{CreateOptions, OpenOptions, Pool};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use std::time::Instant;

/// Run one seeded crash test.
pub fn run(cfg: &CrashConfig) -> CrashReport {
    run_with_progress(cfg, &crate::progress::NoProgress)
}

/// [`run`], counting each workload operation (with every crash explored after it) as one
/// unit on `progress`. The caller sets the total.
pub fn run_with_progress(
    cfg: &CrashConfig,
    progress: &dyn crate::progress::Progress,
) -> CrashReport {
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
        progress.inc(1);
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
pub(super) struct Recovered {
    pub(super) meta: Arc<CrashImage>,
    pub(super) data: Arc<CrashImage>,
    /// What the recovered pool holds: every volume that exists, every sector as read.
    pub(super) oracle: Oracle,
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
