//! `thinpool iostat POOL [INTERVAL [COUNT]]`: what a running `thinpool serve` is doing, from
//! its counters (`nbd::stats`), read through the control socket without pausing its I/O.
//! Like `zpool iostat`: without INTERVAL one report of everything since the server started;
//! with it, a report per interval of what happened in that interval.

use super::size::{format_size, parse_duration};
use crate::histogram::Counts;
use crate::nbd::stats::{OpSample, Sample, SAMPLE_VERSION, STATS_REQUEST};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct IostatArgs {
    /// Pool directory (served by a running `thinpool serve`)
    pub pool: PathBuf,
    /// Report every INTERVAL (e.g. 1, 500ms, 2s) what happened in it; without it, one
    /// report of everything since the server started
    #[arg(value_parser = parse_interval)]
    pub interval: Option<Duration>,
    /// Stop after COUNT reports (default: until interrupted)
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// One JSON object per report, one per line
    #[arg(long)]
    pub json: bool,
}

fn parse_interval(s: &str) -> std::result::Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err(format!("'{s}' is too short an interval (at least 10ms)"));
    }
    Ok(d)
}

/// One sample from the server on `dir`.
fn sample(dir: &Path) -> Result<Sample> {
    if !dir.is_dir() {
        bail!("{} is not a pool directory", dir.display());
    }
    let argv = ["thinpool".to_string(), STATS_REQUEST.to_string()];
    let reply = crate::nbd::forward(dir, &argv)
        .with_context(|| format!("cannot reach the server of pool {}", dir.display()))?;
    let Some(f) = reply else {
        bail!(
            "no `thinpool serve` is running on pool {}: iostat reads a running server's counters",
            dir.display()
        );
    };
    if f.code != 0 {
        bail!(
            "the server of pool {} did not give its counters: {}",
            dir.display(),
            String::from_utf8_lossy(&f.stderr).trim()
        );
    }
    let s: Sample = serde_json::from_slice(&f.stdout)
        .context("the server's counters are not what this thinpool reads (another version?)")?;
    if s.version != SAMPLE_VERSION {
        bail!(
            "the server speaks counter version {}, this thinpool {SAMPLE_VERSION}",
            s.version
        );
    }
    Ok(s)
}

pub fn iostat(a: &IostatArgs, out: &mut dyn Write) -> Result<()> {
    let first = sample(&a.pool)?;
    let Some(every) = a.interval else {
        let zero = Sample {
            uptime_s: 0.0,
            volumes: Vec::new(),
            commits: Default::default(),
            ..first.clone()
        };
        return report(&zero, &first, true, a.json, out);
    };
    crate::io::sys::install_stop_signals()?;
    let mut prev = first;
    let mut done = 0;
    while a.count.is_none_or(|c| done < c) {
        let due = Instant::now() + every;
        while Instant::now() < due {
            if crate::io::sys::stop_requested() {
                return Ok(());
            }
            std::thread::sleep((due - Instant::now()).min(Duration::from_millis(50)));
        }
        let now = sample(&a.pool)?;
        report(&prev, &now, false, a.json, out)?;
        out.flush()?;
        prev = now;
        done += 1;
    }
    Ok(())
}

/// Rates and latency quantiles of one kind of request between two samples.
struct Rates {
    ops: f64,
    bytes: f64,
    lat: Counts,
}

fn rates(a: &OpSample, b: &OpSample, secs: f64) -> Result<Rates> {
    let lat = b
        .latency()
        .and_then(|l| Ok(l.since(&a.latency()?)))
        .map_err(anyhow::Error::msg)?;
    Ok(Rates {
        ops: b.ops.saturating_sub(a.ops) as f64 / secs,
        bytes: b.bytes.saturating_sub(a.bytes) as f64 / secs,
        lat,
    })
}

/// p50/p90/p99/max in milliseconds (null when nothing was timed).
fn quantiles(c: &Counts) -> Value {
    let q = |p: f64| c.quantile_us(p).map(|us| us as f64 / 1000.0);
    json!({"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": q(1.0)})
}

fn ms(c: &Counts, p: f64) -> String {
    c.quantile_us(p)
        .map_or_else(|| "-".into(), |us| format!("{:.2}", us as f64 / 1000.0))
}

fn pct(used: u64, total: u64) -> f64 {
    used as f64 * 100.0 / total.max(1) as f64
}

fn report(
    a: &Sample,
    b: &Sample,
    since_start: bool,
    as_json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let secs = (b.uptime_s - a.uptime_s).max(1e-3);
    let before: BTreeMap<u64, _> = a.volumes.iter().map(|v| (v.id, v)).collect();
    let mut vols = Vec::new();
    for v in &b.volumes {
        let zero = Default::default();
        let old = before.get(&v.id);
        let pick = |f: fn(&crate::nbd::stats::VolumeSample) -> &OpSample| -> &OpSample {
            old.map_or(&zero, |o| f(o))
        };
        vols.push((
            v,
            rates(pick(|s| &s.read), &v.read, secs)?,
            rates(pick(|s| &s.write), &v.write, secs)?,
            rates(pick(|s| &s.discard), &v.discard, secs)?,
            rates(pick(|s| &s.flush), &v.flush, secs)?,
        ));
    }
    vols.sort_by(|x, y| x.0.name.cmp(&y.0.name));
    let commit_lat = Counts::from_sparse(&b.commits.latency_us)
        .and_then(|l| Ok(l.since(&Counts::from_sparse(&a.commits.latency_us)?)))
        .map_err(anyhow::Error::msg)?;
    let commits = b.commits.count.saturating_sub(a.commits.count) as f64 / secs;
    let syncs = b.commits.data_syncs.saturating_sub(a.commits.data_syncs) as f64 / secs;
    let sp = &b.space;
    let data_pct = pct(sp.data_used_blocks, sp.data_total_blocks);
    let meta_pct = pct(sp.metadata_used_blocks, sp.metadata_total_blocks);
    let above = sp
        .warn_at_pct
        .is_some_and(|w| data_pct >= f64::from(w) || meta_pct >= f64::from(w));
    const META_BLOCK: u64 = crate::meta::BLOCK_SIZE as u64;
    if as_json {
        let op = |r: &Rates| json!({"ops_per_s": r.ops, "bytes_per_s": r.bytes, "latency_ms": quantiles(&r.lat)});
        let volumes: Vec<Value> = vols
            .iter()
            .map(|(v, r, w, d, f)| {
                json!({"id": v.id, "name": v.name, "read": op(r), "write": op(w),
                       "discard": op(d), "flush": op(f)})
            })
            .collect();
        let doc = json!({
            "interval_s": secs,
            "since_start": since_start,
            "volumes": volumes,
            "commits": {"per_s": commits, "data_syncs_per_s": syncs,
                        "latency_ms": quantiles(&commit_lat)},
            "space": {
                "data_used_bytes": sp.data_used_blocks * sp.block_size,
                "data_total_bytes": sp.data_total_blocks * sp.block_size,
                "data_used_pct": data_pct,
                "metadata_used_bytes": sp.metadata_used_blocks * META_BLOCK,
                "metadata_total_bytes": sp.metadata_total_blocks * META_BLOCK,
                "metadata_used_pct": meta_pct,
                "warn_at_pct": sp.warn_at_pct,
                "above_warn_at": above,
            },
        });
        // One line per report, so a script can read them as they come.
        writeln!(out, "{}", serde_json::to_string(&doc)?)?;
        return Ok(());
    }
    let what = if since_start {
        format!("since the server started, {secs:.0} s ago")
    } else {
        format!("over {secs:.2} s")
    };
    writeln!(out, "{what}")?;
    writeln!(
        out,
        "{:<16} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "VOLUME",
        "r/s",
        "w/s",
        "rMiB/s",
        "wMiB/s",
        "r p50ms",
        "r p99ms",
        "w p50ms",
        "w p99ms",
        "trim/s",
        "flush/s"
    )?;
    for (v, r, w, d, f) in &vols {
        writeln!(
            out,
            "{:<16} {:>9.1} {:>9.1} {:>9.2} {:>9.2} {:>8} {:>8} {:>8} {:>8} {:>8.1} {:>8.1}",
            v.name,
            r.ops,
            w.ops,
            r.bytes / (1 << 20) as f64,
            w.bytes / (1 << 20) as f64,
            ms(&r.lat, 0.5),
            ms(&r.lat, 0.99),
            ms(&w.lat, 0.5),
            ms(&w.lat, 0.99),
            d.ops,
            f.ops
        )?;
    }
    if vols.is_empty() {
        writeln!(out, "(no client has attached a volume yet)")?;
    }
    writeln!(
        out,
        "commits {commits:.1}/s (p50 {} ms, p99 {} ms, max {} ms), data file synced {syncs:.1}/s",
        ms(&commit_lat, 0.5),
        ms(&commit_lat, 0.99),
        ms(&commit_lat, 1.0)
    )?;
    let warn = match sp.warn_at_pct {
        Some(w) if above => format!(" -- at or above --warn-at {w}%"),
        _ => String::new(),
    };
    writeln!(
        out,
        "data {data_pct:.1}% of {}, metadata {meta_pct:.1}% of {}{warn}",
        format_size(sp.data_total_blocks * sp.block_size),
        format_size(sp.metadata_total_blocks * META_BLOCK),
    )?;
    writeln!(out)?;
    Ok(())
}
