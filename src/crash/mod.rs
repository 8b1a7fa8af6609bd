//! Crash injection (DESIGN.md §6): a seeded random workload runs against a pool on
//! [`SimDev`](crate::io::SimDev)s; at every flush the devices' state is captured, and
//! post-crash images are built from the durable state plus subsets of the unflushed writes
//! (dropped, reordered, torn at 512 bytes). Each image is recovered (opened), checked, and
//! every 512-byte sector of every volume is compared with the [`oracle`].
//!
//! Runs are deterministic from the seed: the workload's random choices and each state's fault
//! choices come from ChaCha streams keyed by the seed (and the crash point and state index).

pub mod oracle;

use crate::check;
use crate::io::sim::{CrashFaults, CrashImage, CrashPoint};
use crate::io::{BlockDev, SimGroup};
use crate::pool::{CreateOptions, OpenOptions, Pool, PoolError, VolumeId};
use oracle::{decode_sector, sector_content, Exists, Oracle, VolOracle, SECTOR};
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
    /// Stop after this many states (0: no limit).
    pub max_states: u64,
    pub faults: CrashFaults,
    /// Test-only: write the commit record before syncing the new metadata.
    pub broken_commit_order: bool,
    /// Only explore this (crash point, state) pair (replay).
    pub only: Option<(u64, usize)>,
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
            max_states: 0,
            faults: CrashFaults {
                drop: 0.5,
                reorder: true,
                torn: 0.3,
            },
            broken_commit_order: false,
            only: None,
        }
    }
}

/// A broken promise, with what is needed to reproduce it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub point: u64,
    pub state: usize,
    pub op: usize,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct CrashReport {
    pub states: u64,
    pub points: u64,
    pub ops: usize,
    pub elapsed: Duration,
    pub violations: Vec<Violation>,
}

impl CrashReport {
    pub fn states_per_sec(&self) -> f64 {
        self.states as f64 / self.elapsed.as_secs_f64().max(1e-9)
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
        if (cfg.max_states > 0 && rep.states >= cfg.max_states) || !rep.violations.is_empty() {
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
        for k in 0..cfg.states_per_point {
            if let Some((ps, ks)) = cfg.only {
                if (ps, ks) != (p.seq, k) {
                    continue;
                }
            }
            let mut rng = ChaCha8Rng::seed_from_u64(
                cfg.seed ^ p.seq.wrapping_mul(0x9e37_79b9) ^ ((k as u64) << 48),
            );
            // State 0 keeps every write, state 1 drops every write; the rest are random.
            let faults = match k {
                0 => CrashFaults {
                    drop: 0.0,
                    reorder: false,
                    torn: 0.0,
                },
                1 => CrashFaults {
                    drop: 1.0,
                    reorder: false,
                    torn: 0.0,
                },
                _ => cfg.faults,
            };
            rep.states += 1;
            if let Err(message) = verify_state(p, faults, &mut rng, oracle) {
                rep.violations.push(Violation {
                    seed: cfg.seed,
                    point: p.seq,
                    state: k,
                    op,
                    message,
                });
                return;
            }
        }
    }
}

fn verify_state(
    p: &CrashPoint,
    faults: CrashFaults,
    rng: &mut ChaCha8Rng,
    oracle: &Oracle,
) -> Result<(), String> {
    let meta: Arc<dyn BlockDev> = Arc::new(CrashImage::build(p, 0, faults, rng));
    let data: Arc<dyn BlockDev> = Arc::new(CrashImage::build(p, 1, faults, rng));
    let opts = OpenOptions {
        read_only: true,
        cache_blocks: 256,
        at_seq: None,
    };
    let mut pool =
        Pool::open_on(meta.clone(), data, &opts).map_err(|e| format!("recovery failed: {e}"))?;
    let r = check::check(meta, None);
    if !r.is_clean() {
        let errs: Vec<String> = r.errors().take(5).map(|f| f.to_string()).collect();
        return Err(format!("checker found errors after recovery: {errs:?}"));
    }
    let vols = pool.volumes().map_err(|e| e.to_string())?;
    for (_, d) in &vols {
        if !oracle.vols.contains_key(&d.name) {
            return Err(format!(
                "volume '{}' exists, but it was never created or its removal was acknowledged",
                d.name
            ));
        }
    }
    for (name, vo) in &oracle.vols {
        let id = match vols.iter().find(|(_, d)| &d.name == name) {
            Some((id, _)) => *id,
            None if vo.exists == Exists::Maybe => continue,
            None => return Err(format!("volume '{name}' is missing after recovery")),
        };
        verify_volume(&mut pool, id, name, vo).map_err(|e| {
            let r = pool
                .open_report()
                .map(|r| {
                    format!(
                        "recovered seq {} (newest valid {}, skipped {:?})",
                        r.chosen_seq, r.newest_valid_seq, r.skipped
                    )
                })
                .unwrap_or_default();
            format!("{e} [{r}]")
        })?;
    }
    Ok(())
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

fn verify_volume(pool: &mut Pool, id: VolumeId, name: &str, vo: &VolOracle) -> Result<(), String> {
    let size = vo.sectors * SECTOR as u64;
    let mut buf = vec![0u8; size as usize];
    pool.read(id, 0, &mut buf)
        .map_err(|e| format!("reading '{name}' failed: {e}"))?;
    for s in 0..vo.sectors {
        let sec = &buf[s as usize * SECTOR..(s as usize + 1) * SECTOR];
        let st = vo.get(s);
        match decode_sector(sec, s) {
            Err(why) => return Err(format!("'{name}' sector {s} {why}")),
            Ok(w) if !st.allows(w) => {
                let vb = s * SECTOR as u64 / pool.block_size();
                let mut maps = Vec::new();
                for (vid, d) in pool.volumes().unwrap_or_default() {
                    maps.push(format!(
                        "{}:{:?}",
                        d.name,
                        pool.mappings(vid, vb, vb + 1, 1).unwrap_or_default()
                    ));
                }
                return Err(format!(
                    "'{name}' sector {s} reads write {w}; allowed: durable {} or newer {:?}; block {vb} mappings {maps:?} roots {:?}",
                    st.durable, st.newer, debug_roots(pool)
                ));
            }
            Ok(_) => {}
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

/// Debug helper: root of each volume's mapping tree (live).
#[doc(hidden)]
pub fn debug_roots(pool: &mut Pool) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for (id, d) in pool.volumes().unwrap_or_default() {
        if let Ok(r) = pool.debug_vol_root(id) {
            out.push((d.name, r.block.0, r.gen));
        }
    }
    out
}
