//! Volume management: create, snapshot, list, info, remove, resize, rename, rollback.
//! Each is one library transaction, durable when the library call returns.

use super::output::{print_json, print_volume, print_volumes, volume_json};
use super::size::{format_size, parse_size};
use crate::pool::Pool;
use anyhow::Result;
use clap::Args;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Name of the new volume (1 to 127 bytes; no '/', control characters or bidi overrides)
    pub name: String,
    /// Virtual size (may exceed the pool's capacity)
    #[arg(long, short, value_parser = parse_size, allow_hyphen_values = true)]
    pub size: u64,
    /// Refuse writes to the volume
    #[arg(long)]
    pub read_only: bool,
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Volume (or snapshot) to snapshot
    pub source: String,
    /// Name of the new snapshot (1 to 127 bytes; no '/', control characters or bidi overrides)
    pub name: String,
    /// Make the snapshot read-only
    #[arg(long)]
    pub read_only: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Print a JSON array
    #[arg(long)]
    pub json: bool,
    /// Show the state of an older commit (read-only; see `thinpool check` for valid seqs)
    #[arg(long, value_name = "SEQ")]
    pub at_seq: Option<u64>,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Volume name
    pub volume: String,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
    /// Show the state of an older commit (read-only; see `thinpool check` for valid seqs)
    #[arg(long, value_name = "SEQ")]
    pub at_seq: Option<u64>,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Volume or snapshot to remove
    pub volume: String,
    /// Remove it even while an NBD client of `thinpool serve` has it attached
    #[arg(long, short)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct ResizeArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Volume name
    pub volume: String,
    /// New virtual size; shrinking drops the data past the new end
    #[arg(long, short, value_parser = parse_size, allow_hyphen_values = true)]
    pub size: u64,
}

#[derive(Args, Debug)]
pub struct RenameArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Current name
    pub old: String,
    /// New name (1 to 127 bytes; no '/', control characters or bidi overrides)
    pub new: String,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Volume to roll back
    pub volume: String,
    /// Snapshot of that volume to return to
    pub snapshot: String,
    /// Roll back even while an NBD client of `thinpool serve` has the volume attached
    #[arg(long, short)]
    pub force: bool,
}

pub fn create(a: &CreateArgs, pool: &mut Pool, out: &mut dyn Write) -> Result<()> {
    let id = pool.create_volume(&a.name, a.size, a.read_only)?;
    let ro = if a.read_only { ", read-only" } else { "" };
    writeln!(
        out,
        "created volume '{}' (id {id}, {}{ro})",
        a.name,
        format_size(a.size)
    )?;
    Ok(())
}

pub fn snapshot(a: &SnapshotArgs, pool: &mut Pool, out: &mut dyn Write) -> Result<()> {
    let id = pool.snapshot(&a.source, &a.name, a.read_only)?;
    let ro = if a.read_only { ", read-only" } else { "" };
    writeln!(
        out,
        "created snapshot '{}' of '{}' (id {id}{ro})",
        a.name, a.source
    )?;
    Ok(())
}

pub fn list(a: &ListArgs, pool: &mut Pool, out: &mut dyn Write) -> Result<()> {
    let vols = pool.list()?;
    if a.json {
        print_json(out, &Value::Array(vols.iter().map(volume_json).collect()))?;
    } else {
        print_volumes(out, &vols, pool.block_size())?;
    }
    Ok(())
}

pub fn info(a: &InfoArgs, pool: &mut Pool, out: &mut dyn Write) -> Result<()> {
    let v = pool.volume_info(&a.volume)?;
    if a.json {
        print_json(out, &volume_json(&v))?;
    } else {
        print_volume(out, &v, pool.block_size())?;
    }
    Ok(())
}

pub fn remove(a: &RemoveArgs, pool: &mut Pool, out: &mut dyn Write) -> Result<()> {
    let before = pool.info()?.data_blocks_used;
    pool.remove_volume(&a.volume)?;
    let after = pool.info()?.data_blocks_used;
    writeln!(
        out,
        "removed '{}' ({} data blocks freed)",
        a.volume,
        before.saturating_sub(after)
    )?;
    Ok(())
}

pub fn resize(a: &ResizeArgs, pool: &mut Pool, out: &mut dyn Write) -> Result<()> {
    let old = pool.find(&a.volume)?.1.size;
    pool.resize(&a.volume, a.size)?;
    writeln!(
        out,
        "resized '{}' from {} to {}",
        a.volume,
        format_size(old),
        format_size(a.size)
    )?;
    Ok(())
}

pub fn rename(a: &RenameArgs, pool: &mut Pool, out: &mut dyn Write) -> Result<()> {
    pool.rename(&a.old, &a.new)?;
    writeln!(out, "renamed '{}' to '{}'", a.old, a.new)?;
    Ok(())
}

pub fn rollback(a: &RollbackArgs, pool: &mut Pool, out: &mut dyn Write) -> Result<()> {
    pool.rollback(&a.volume, &a.snapshot)?;
    writeln!(
        out,
        "rolled '{}' back to snapshot '{}'",
        a.volume, a.snapshot
    )?;
    Ok(())
}
