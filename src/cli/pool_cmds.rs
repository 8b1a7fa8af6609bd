//! `thinpool pool create|info|grow`: the pool as a whole.

use super::output::{pool_json, print_json, print_pool};
use super::size::{format_size, parse_size};
use crate::pool::{CreateOptions, OpenOptions, Pool};
use anyhow::Result;
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Create a pool in a new (or empty) directory
    Create(PoolCreateArgs),
    /// Show sizes, block size, used and free blocks, commit sequence
    Info(PoolInfoArgs),
    /// Grow the pool's data space
    Grow(PoolGrowArgs),
    /// Punch every data block no protected commit uses out of the data file
    Trim(PoolTrimArgs),
    /// Make one of the protected older commits the newest again, after checking it
    Rewind(PoolRewindArgs),
}

#[derive(Args, Debug)]
pub struct PoolCreateArgs {
    /// Pool directory (created with mode 0700 if missing; must be empty)
    pub pool: PathBuf,
    /// Data capacity (e.g. 10G)
    #[arg(long, short, value_parser = parse_size, allow_hyphen_values = true)]
    pub size: u64,
    /// Data block size: a power of two from 4K to 1G
    #[arg(long, default_value = "64K", value_parser = parse_size, allow_hyphen_values = true)]
    pub block_size: u64,
    /// Metadata size (default: 64 bytes per data block, at least 8M)
    #[arg(long, value_parser = parse_size, allow_hyphen_values = true)]
    pub metadata_size: Option<u64>,
}

#[derive(Args, Debug)]
pub struct PoolInfoArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
    /// Show the state of an older commit (read-only; see `thinpool check` for valid seqs)
    #[arg(long, value_name = "SEQ")]
    pub at_seq: Option<u64>,
}

#[derive(Args, Debug)]
pub struct PoolGrowArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// New data capacity (not smaller than the current one)
    #[arg(long, short, value_parser = parse_size, allow_hyphen_values = true)]
    pub size: u64,
}

#[derive(Args, Debug)]
pub struct PoolRewindArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// The commit to go back to (one of the last three: see `thinpool check`)
    #[arg(long, value_name = "SEQ")]
    pub seq: u64,
    /// Check the commit and show what the rewind would change, without changing anything
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

/// What a volume looks like in one state, for the rewind's list of changes.
type VolumeState = (String, u64, u64);

fn volume_states(pool: &mut Pool) -> Result<std::collections::BTreeMap<u64, VolumeState>> {
    Ok(pool
        .volumes()?
        .into_iter()
        .map(|(id, d)| (id.0, (d.name, d.size, d.mapped)))
        .collect())
}

/// The changes between two states, one line (and one JSON object) per volume that differs.
fn volume_changes(
    before: &std::collections::BTreeMap<u64, VolumeState>,
    after: &std::collections::BTreeMap<u64, VolumeState>,
) -> Vec<(String, serde_json::Value)> {
    let ids: std::collections::BTreeSet<u64> = before.keys().chain(after.keys()).copied().collect();
    let mut out = Vec::new();
    for id in ids {
        let state =
            |v: &VolumeState| serde_json::json!({"name": v.0, "size": v.1, "mapped_blocks": v.2});
        let line = match (before.get(&id), after.get(&id)) {
            (Some(b), None) => format!("volume '{}' (made since) goes", b.0),
            (None, Some(a)) => format!("volume '{}' (removed since) comes back", a.0),
            (Some(b), Some(a)) if b != a => {
                let mut parts = Vec::new();
                if b.0 != a.0 {
                    parts.push(format!("named '{}' again", a.0));
                }
                if b.1 != a.1 {
                    parts.push(format!("size {} -> {}", format_size(b.1), format_size(a.1)));
                }
                if b.2 != a.2 {
                    parts.push(format!("mapped blocks {} -> {}", b.2, a.2));
                }
                format!("volume '{}': {}", b.0, parts.join(", "))
            }
            _ => continue,
        };
        let v = serde_json::json!({
            "id": id,
            "before": before.get(&id).map(state),
            "after": after.get(&id).map(state),
        });
        out.push((line, v));
    }
    out
}

pub fn rewind(a: &PoolRewindArgs, engine: crate::io::Engine, out: &mut dyn Write) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(a.pool.join("control.sock")).is_ok() {
        anyhow::bail!(
            "pool {} is being served; stop `thinpool serve` to rewind it",
            a.pool.display()
        );
    }
    let ro = OpenOptions {
        read_only: true,
        engine,
        ..OpenOptions::default()
    };
    // The newest state, and the data blocks that neither it nor the commit before it uses:
    // those may be punched already, so the commit to go back to must not map any.
    let (newest, before, unprotected) = {
        let mut p = Pool::open(&a.pool, &ro)?;
        (p.seq(), volume_states(&mut p)?, p.unused_data_runs()?)
    };
    let rw = OpenOptions {
        engine,
        ..OpenOptions::default()
    };
    let mut pool = Pool::open_for_rewind(&a.pool, a.seq, &rw)?;
    if pool.open_report().map(|r| r.newest_valid_seq) != Some(newest) {
        anyhow::bail!(
            "pool {} changed while it was being read; run again",
            a.pool.display()
        );
    }
    // The state to rewind to is checked whole, as it is on disk (nothing is written yet).
    let report = crate::check::check_with_data(pool.metadata_dev(), pool.data_len(), Some(a.seq));
    if !report.is_clean() {
        let first = report
            .errors()
            .next()
            .map(|f| f.message.clone())
            .unwrap_or_default();
        anyhow::bail!(
            "commit {} is not intact ({} errors, the first: {first}); nothing was changed \
             (`thinpool check {} --seq {}` lists them)",
            a.seq,
            report.errors().count(),
            a.pool.display(),
            a.seq
        );
    }
    let lost = pool.mapped_in_runs(&unprotected)?;
    if !lost.is_empty() {
        let what: Vec<String> = lost
            .iter()
            .map(|(_, name, n)| format!("{n} blocks of '{name}'"))
            .collect();
        anyhow::bail!(
            "commit {} maps data that later commits freed and may already have given back to \
             the filesystem ({}): rewound, those blocks would read as zeros; nothing was \
             changed (commit {} and later keep all their data)",
            a.seq,
            what.join(", "),
            newest.saturating_sub(1)
        );
    }
    let after = volume_states(&mut pool)?;
    let changes = volume_changes(&before, &after);
    if !a.dry_run {
        pool.commit_rewind()?;
    }
    if a.json {
        print_json(
            out,
            &serde_json::json!({
                "from_seq": newest,
                "to_seq": a.seq,
                "dry_run": a.dry_run,
                "seq": if a.dry_run { None } else { Some(pool.seq()) },
                "changes": changes.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
            }),
        )?;
        return Ok(());
    }
    if a.dry_run {
        writeln!(
            out,
            "commit {} of pool {} is intact; rewinding from seq {newest} would change:",
            a.seq,
            a.pool.display()
        )?;
    } else {
        writeln!(
            out,
            "rewound pool {} from seq {newest} to the state of seq {} (recorded as seq {}):",
            a.pool.display(),
            a.seq,
            pool.seq()
        )?;
    }
    if changes.is_empty() {
        writeln!(
            out,
            "  no volume differs (only data written in place, if anything)"
        )?;
    }
    for (line, _) in &changes {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct PoolTrimArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

pub fn trim(a: &PoolTrimArgs, pool: &mut Pool, out: &mut dyn Write) -> Result<()> {
    let t = pool.trim()?;
    let bs = pool.block_size();
    if a.json {
        print_json(
            out,
            &serde_json::json!({
                "unused_blocks": t.blocks,
                "runs": t.runs,
                "allocated_before": t.allocated_before,
                "allocated_after": t.allocated_after,
            }),
        )?;
        return Ok(());
    }
    let alloc = match (t.allocated_before, t.allocated_after) {
        (Some(b), Some(a)) => format!(
            "; the data file held {} on disk, now {} ({} returned)",
            format_size(b),
            format_size(a),
            format_size(b.saturating_sub(a))
        ),
        _ => String::new(),
    };
    writeln!(
        out,
        "trimmed pool {}: {} unused blocks ({}) in {} runs punched{alloc}",
        a.pool.display(),
        t.blocks,
        format_size(t.blocks * bs),
        t.runs
    )?;
    Ok(())
}

pub fn create(a: &PoolCreateArgs, out: &mut dyn Write) -> Result<()> {
    let mut opts = CreateOptions::new(a.size);
    opts.block_size = a.block_size;
    opts.metadata_size = a.metadata_size;
    let mut pool = Pool::create(&a.pool, &opts)?;
    let i = pool.info()?;
    writeln!(
        out,
        "created pool {}: {} of data in {} blocks of {}, {} of metadata",
        a.pool.display(),
        format_size(i.data_blocks_total * i.block_size),
        i.data_blocks_total,
        format_size(i.block_size),
        format_size(i.metadata_blocks_total * 4096),
    )?;
    Ok(())
}

pub fn info(a: &PoolInfoArgs, pool: &mut Pool, out: &mut dyn Write) -> Result<()> {
    let i = pool.info()?;
    if a.json {
        print_json(out, &pool_json(&i))?;
    } else {
        print_pool(out, &a.pool.display().to_string(), &i)?;
    }
    Ok(())
}

pub fn grow(a: &PoolGrowArgs, pool: &mut Pool, out: &mut dyn Write) -> Result<()> {
    let before = pool.info()?;
    pool.grow(a.size)?;
    let after = pool.info()?;
    let bs = after.block_size;
    if after.data_blocks_total == before.data_blocks_total {
        writeln!(
            out,
            "pool {} already has {} of data; nothing to do",
            a.pool.display(),
            format_size(after.data_blocks_total * bs)
        )?;
    } else {
        writeln!(
            out,
            "grew pool {} from {} to {} ({} blocks)",
            a.pool.display(),
            format_size(before.data_blocks_total * bs),
            format_size(after.data_blocks_total * bs),
            after.data_blocks_total
        )?;
    }
    Ok(())
}
