//! `thinpool pool create|info|grow`: the pool as a whole.

use super::output::{pool_json, print_json, print_pool};
use super::size::{format_size, parse_size};
use crate::pool::{CreateOptions, Pool};
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
