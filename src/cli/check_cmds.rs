//! `thinpool check` (the checker) and `thinpool crashtest` (crash injection).

use super::output::print_json;
use super::progress::Bar;
use super::size::parse_size;
use super::Mode;
use crate::check;
use crate::crash::kill::{kill_child, run_kill, KillConfig};
use crate::crash::{run_with_progress, CrashConfig, CrashReport, FaultSet};
use crate::io::{lock, FileDev};
use crate::pool::Pool;
use crate::progress::Progress;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Print one JSON document with every finding
    #[arg(long)]
    pub json: bool,
    /// Check the state of an older commit instead of the newest usable one
    #[arg(long)]
    pub seq: Option<u64>,
}

/// Check the metadata of an open pool (inside `thinpool serve`).
pub fn check(a: &CheckArgs, pool: &mut Pool, out: &mut dyn Write) -> Result<()> {
    let data_len = pool.data_len();
    report(
        a,
        check::check_with_data(pool.metadata_dev(), data_len, a.seq),
        out,
    )
}

/// Check a pool's metadata file directly, under a shared lock (so not while a process has the
/// pool open read-write), whether or not the pool still opens.
pub fn check_local(a: &CheckArgs, out: &mut dyn Write) -> Result<()> {
    let path = a.pool.join("metadata");
    if !path.exists() {
        bail!(
            "{} is not a thinpool pool (no metadata file)",
            a.pool.display()
        );
    }
    let dev = FileDev::open(&path, false).with_context(|| format!("opening {}", path.display()))?;
    if !lock::try_lock(dev.file(), false).with_context(|| format!("locking {}", path.display()))? {
        bail!(
            "pool {} is in use: another process has it open read-write (checking live metadata would race with its commits)",
            a.pool.display()
        );
    }
    let dpath = a.pool.join("data");
    let bar = Bar::counting(Mode::Local, a.json, "check", "metadata blocks");
    let r = match FileDev::open(&dpath, false) {
        Ok(d) => {
            let len = crate::io::BlockDev::len(&d);
            check::check_with_progress(Arc::new(dev), Some(len), a.seq, &bar)
        }
        Err(e) => {
            let mut r = check::check_with_progress(Arc::new(dev), None, a.seq, &bar);
            r.error(
                "data",
                None,
                "data file",
                format!("cannot open {}: {e}", dpath.display()),
            );
            r
        }
    };
    bar.finish();
    report(a, r, out)
}

fn report(a: &CheckArgs, r: check::Report, out: &mut dyn Write) -> Result<()> {
    if a.json {
        print_json(out, &r.to_json())?;
    } else {
        let s = &r.stats;
        writeln!(
            out,
            "checked seq {}: {} volumes, {} mappings, {} metadata nodes; {} data and {} metadata blocks in use; {} valid journal slots",
            s.seq, s.volumes, s.mappings, s.nodes, s.data_blocks_used, s.metadata_blocks_used, s.valid_slots
        )?;
        for f in &r.findings {
            writeln!(out, "{f}")?;
        }
        if r.is_clean() {
            writeln!(out, "clean: no errors, no leaked blocks")?;
        }
    }
    let n = r.errors().count();
    if n > 0 {
        bail!("check found {n} error(s) in {}", a.pool.display());
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct CrashtestArgs {
    /// First seed (runs are deterministic from it)
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of seeds to run (seed, seed+1, ...)
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Stop each seed after this many crash states (0: explore the whole run)
    #[arg(long, default_value_t = 0)]
    pub states: u64,
    /// Workload operations per seed
    #[arg(long, default_value_t = 300)]
    pub ops: usize,
    /// Most volumes alive at once
    #[arg(long, default_value_t = 4)]
    pub volumes: usize,
    /// Data block size of the simulated pool
    #[arg(long, default_value = "4K", value_parser = parse_size)]
    pub block_size: u64,
    /// Post-crash states built at each crash point
    #[arg(long, default_value_t = 8)]
    pub states_per_point: usize,
    /// Also crash between the unflushed writes of each crash point: after every write when
    /// there are at most N, else at N evenly spaced writes (0: only at flushes)
    #[arg(long, default_value_t = crate::crash::DEFAULT_WRITE_POINTS, value_name = "N")]
    pub write_points: usize,
    /// Continue one recovered state of one in N crash points read-write and crash it again (0: never)
    #[arg(long, default_value_t = crate::crash::DEFAULT_SECOND_CRASH_EVERY, value_name = "N")]
    pub second_crash_every: u64,
    /// Faults to inject: drop,reorder,torn (power loss) and eio,bitflip,misdirect (media)
    #[arg(long, default_value = "drop,reorder,torn")]
    pub faults: String,
    /// Print one JSON document
    #[arg(long)]
    pub json: bool,
    /// Re-run exactly the state a replay file records
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// Where to write the replay file of a violation (default: a new file
    /// thinpool-crash-replay-*.json in $TMPDIR, never one that exists)
    #[arg(long, value_name = "FILE")]
    pub replay_out: Option<PathBuf>,
    /// Kill mode: run the real binary on a real pool in DIR and SIGKILL it
    #[arg(long, value_name = "DIR")]
    pub kill: Option<PathBuf>,
    /// Kill mode: rounds
    #[arg(long, default_value_t = 30)]
    pub rounds: usize,
    /// Test-only: commit with the record written before the metadata is synced
    #[arg(long, hide = true)]
    pub broken_commit_order: bool,
    /// Internal: the child of kill mode
    #[arg(long, hide = true, value_name = "DIR")]
    pub kill_child: Option<PathBuf>,
    /// Internal: first write id of a kill-mode child
    #[arg(long, hide = true, default_value_t = 1)]
    pub first_id: u64,
}

pub fn crashtest(a: &CrashtestArgs, out: &mut dyn Write) -> Result<()> {
    if let Some(dir) = &a.kill_child {
        kill_child(dir, a.seed, a.first_id, 1_000_000).map_err(anyhow::Error::msg)?;
        return Ok(());
    }
    if let Some(dir) = &a.kill {
        return kill_mode(a, dir.clone(), out);
    }
    let faults = FaultSet::parse(&a.faults).map_err(anyhow::Error::msg)?;
    let configs: Vec<CrashConfig> = if let Some(file) = &a.replay {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let j: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", file.display()))?;
        vec![CrashConfig::from_replay(&j).map_err(anyhow::Error::msg)?]
    } else {
        if a.block_size < 4096 || !a.block_size.is_power_of_two() {
            bail!("--block-size must be a power of two of at least 4K");
        }
        (a.seed..a.seed.saturating_add(a.seeds.max(1)))
            .map(|seed| CrashConfig {
                seed,
                ops: a.ops,
                volumes: a.volumes.max(1),
                block_size: a.block_size,
                states_per_point: a.states_per_point.max(1),
                write_points: a.write_points,
                max_states: a.states,
                faults,
                broken_commit_order: a.broken_commit_order,
                second_crash_every: a.second_crash_every,
                ..Default::default()
            })
            .collect()
    };
    let mut reports: Vec<(CrashConfig, CrashReport)> = Vec::new();
    let bar = Bar::counting(Mode::Local, a.json, "crashtest", "ops");
    bar.set_total(configs.iter().map(|c| c.ops as u64).sum());
    for cfg in configs {
        let rep = run_with_progress(&cfg, &bar);
        // A run stops early at --states or at a violation: its remaining ops are done too.
        bar.inc((cfg.ops as u64).saturating_sub(rep.ops as u64));
        if !a.json {
            bar.suspend(|| writeln!(
                out,
                "seed {}: {} ops, {} crash points, {} states ({} between writes), {} second-crash states ({} recoveries continued, {} crash points) in {:.1}s ({:.0} states/s), {} violations{}",
                cfg.seed,
                rep.ops,
                rep.points,
                rep.states,
                rep.write_states,
                rep.second_crash_states,
                rep.second_crash_runs,
                rep.second_crash_points,
                rep.elapsed.as_secs_f64(),
                rep.states_per_sec(),
                rep.violations.len(),
                if rep.media_faults > 0 {
                    format!("; media faults: {} injected, {} detected, {} harmless", rep.media_faults, rep.media_detected, rep.media_faults - rep.media_detected)
                } else {
                    String::new()
                }
            ))?;
        }
        let failed = !rep.violations.is_empty();
        reports.push((cfg, rep));
        if failed {
            break;
        }
    }
    bar.finish();
    let total: u64 = reports.iter().map(|(_, r)| r.states).sum();
    let second: u64 = reports.iter().map(|(_, r)| r.second_crash_states).sum();
    let between: u64 = reports.iter().map(|(_, r)| r.write_states).sum();
    let violation = reports
        .iter()
        .find_map(|(c, r)| r.violations.first().map(|v| (c.clone(), v.clone())));
    let mut replay_file = None;
    if let Some((cfg, v)) = &violation {
        if a.replay.is_none() {
            let text = serde_json::to_string_pretty(&cfg.replay_json(v))?;
            replay_file = Some(write_replay(a.replay_out.as_deref(), cfg.seed, &text)?);
        }
    }
    if a.json {
        let runs: Vec<serde_json::Value> = reports
            .iter()
            .map(|(c, r)| {
                serde_json::json!({
                    "seed": c.seed,
                    "ops": r.ops,
                    "crash_points": r.points,
                    "states": r.states,
                    "write_states": r.write_states,
                    "seconds": r.elapsed.as_secs_f64(),
                    "states_per_sec": r.states_per_sec(),
                    "media_faults": r.media_faults,
                    "media_detected": r.media_detected,
                    "second_crash_runs": r.second_crash_runs,
                    "second_crash_points": r.second_crash_points,
                    "second_crash_states": r.second_crash_states,
                    "violations": r.violations.iter().map(|v| serde_json::json!({
                        "point": v.point, "state": v.state, "op": v.op, "message": v.message,
                        "second": v.second.map(|s| serde_json::json!({
                            "point": s.point, "state": s.state, "op": s.op,
                        })),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        print_json(
            out,
            &serde_json::json!({
                "states": total,
                "write_states": between,
                "second_crash_states": second,
                "runs": runs,
                "replay_file": replay_file.as_ref().map(|p| p.display().to_string()),
            }),
        )?;
    } else {
        writeln!(
            out,
            "total: {total} crash states explored ({between} of them between two writes), {second} more after a second crash during recovery"
        )?;
    }
    if let Some((_, v)) = violation {
        let replay = match &replay_file {
            None => String::new(),
            Some(p) => format!(
                "\nreproduce with `thinpool crashtest --replay {}`",
                p.display()
            ),
        };
        bail!("violation ({v}): {}{replay}", v.message);
    }
    Ok(())
}

fn kill_mode(a: &CrashtestArgs, dir: PathBuf, out: &mut dyn Write) -> Result<()> {
    let exe = std::env::current_exe().context("finding the thinpool binary")?;
    let cfg = KillConfig {
        dir,
        rounds: a.rounds,
        seed: a.seed,
        exe,
    };
    let bar = Bar::counting(Mode::Local, a.json, "crashtest --kill", "rounds");
    let rep = run_kill(&cfg, &bar);
    bar.finish();
    let rep = rep.map_err(anyhow::Error::msg)?;
    if a.json {
        print_json(
            out,
            &serde_json::json!({
                "rounds": rep.rounds,
                "writes": rep.writes,
                "acknowledged_commits": rep.acks,
                "sectors_checked": rep.sectors_checked,
                "seconds": rep.elapsed.as_secs_f64(),
                "violations": rep.violations,
            }),
        )?;
    } else {
        writeln!(
            out,
            "kill mode: {} rounds of SIGKILL, {} writes and {} acknowledged commits reported, {} sectors verified in {:.1}s, {} violations",
            rep.rounds,
            rep.writes,
            rep.acks,
            rep.sectors_checked,
            rep.elapsed.as_secs_f64(),
            rep.violations.len()
        )?;
    }
    if let Some(v) = rep.violations.first() {
        bail!("violation in kill mode (seed {}): {v}", a.seed);
    }
    Ok(())
}

/// Write a violation's replay file: to `out` when given (the user named it), else to a new
/// file in the temporary directory. A file that exists there is never overwritten.
fn write_replay(out: Option<&std::path::Path>, seed: u64, text: &str) -> Result<PathBuf> {
    if let Some(p) = out {
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
        return Ok(p.to_path_buf());
    }
    let dir = std::env::temp_dir();
    for n in 0..1000u32 {
        let p = dir.join(format!(
            "thinpool-crash-replay-{}-{seed}{}.json",
            std::process::id(),
            if n == 0 {
                String::new()
            } else {
                format!("-{n}")
            }
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(mut f) => {
                f.write_all(text.as_bytes())
                    .with_context(|| format!("writing {}", p.display()))?;
                return Ok(p);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", p.display())),
        }
    }
    bail!("no free replay file name in {}", dir.display())
}
