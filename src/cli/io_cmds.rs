//! `thinpool write|read|discard`: the data path from the command line. Data streams in
//! chunks (never whole files in memory); `write` and `discard` commit before they return.

use super::output::create_output;
use super::size::{format_size, parse_size};
use super::Mode;
use crate::pool::details::Access;
use crate::pool::{Details, Pool, VolumeId};
use anyhow::{Context, Result};
use clap::Args;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bytes moved per library call.
const CHUNK: usize = 4 << 20;

#[derive(Args, Debug)]
pub struct WriteArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Volume name
    pub volume: String,
    /// Byte offset in the volume to write at
    #[arg(long, short, default_value = "0", value_parser = parse_size, allow_hyphen_values = true)]
    pub offset: u64,
    /// Input file ('-' or none: stdin)
    pub file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReadArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Volume name
    pub volume: String,
    /// Byte offset in the volume to start at
    #[arg(long, short, default_value = "0", value_parser = parse_size, allow_hyphen_values = true)]
    pub offset: u64,
    /// Bytes to read (default: to the end of the volume)
    #[arg(long, short, value_parser = parse_size, allow_hyphen_values = true)]
    pub length: Option<u64>,
    /// Output file, created or truncated ('-' or none: stdout)
    pub file: Option<PathBuf>,
    /// Show the state of an older commit (read-only; see `thinpool check` for valid seqs)
    #[arg(long, value_name = "SEQ")]
    pub at_seq: Option<u64>,
}

#[derive(Args, Debug)]
pub struct DiscardArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Volume name
    pub volume: String,
    /// Byte offset of the range
    #[arg(long, short, default_value = "0", value_parser = parse_size, allow_hyphen_values = true)]
    pub offset: u64,
    /// Bytes to discard (default: to the end of the volume)
    #[arg(long, short, value_parser = parse_size, allow_hyphen_values = true)]
    pub length: Option<u64>,
}

/// `11 bytes`, or `2.9 MiB (3000000 bytes)` when a unit helps.
fn amount(n: u64) -> String {
    if n < 1024 {
        format!("{n} bytes")
    } else {
        format!("{} ({n} bytes)", format_size(n))
    }
}

/// A named file, unless the argument is absent or '-' (the standard stream).
fn named(file: &Option<PathBuf>) -> Option<&Path> {
    file.as_deref().filter(|p| p.as_os_str() != "-")
}

fn volume(pool: &mut Pool, name: &str) -> Result<(VolumeId, Details)> {
    Ok(pool.find(name)?)
}

pub fn write(a: &WriteArgs, pool: &mut Pool, out: &mut dyn Write, mode: Mode) -> Result<()> {
    let (id, _) = volume(pool, &a.volume)?;
    // Read-only or past the end: refused before the input is opened.
    pool.resolve(id, a.offset, 0, Access::Write)?;
    let mut stdin_lock;
    let mut file;
    let (input, known_len): (&mut dyn Read, Option<u64>) = match named(&a.file) {
        Some(p) => {
            file = File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            let md = file
                .metadata()
                .with_context(|| format!("cannot stat {}", p.display()))?;
            let len = md.is_file().then_some(md.len());
            (&mut file, len)
        }
        None if mode == Mode::Server => anyhow::bail!(
            "`write` from stdin cannot be sent to a running `thinpool serve`; \
             give a FILE path, or write through the NBD export"
        ),
        None => {
            stdin_lock = io::stdin().lock();
            (&mut stdin_lock, None)
        }
    };
    // A regular file's size is known: refuse before writing anything. From a stream the
    // library stops at the volume's end.
    pool.resolve(id, a.offset, known_len.unwrap_or(0), Access::Write)?;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = a.offset;
    let result = (|| -> Result<()> {
        loop {
            let n = crate::io::read_full(input, &mut buf).context("cannot read the input")?;
            if n == 0 {
                return Ok(());
            }
            pool.write(id, pos, &buf[..n])?;
            pos += n as u64;
        }
    })();
    let written = pos - a.offset;
    if let Err(e) = result {
        // Make the prefix that did land durable, so the volume's state is well defined.
        let what = match pool.commit() {
            Ok(()) if written == 0 => format!("nothing was written to '{}'", a.volume),
            Ok(()) => format!(
                "write to '{}' stopped at offset {pos}: the {written} bytes before it are committed",
                a.volume
            ),
            Err(c) => format!(
                "write to '{}' stopped at offset {pos}, and committing the {written} bytes before \
                 it failed too ({c}): the pool is as its last commit left it",
                a.volume
            ),
        };
        return Err(e.context(what));
    }
    pool.commit()?;
    writeln!(
        out,
        "wrote {} to '{}' at offset {}",
        amount(written),
        a.volume,
        a.offset
    )?;
    Ok(())
}

pub fn read(a: &ReadArgs, pool: &mut Pool, out: &mut dyn Write, mode: Mode) -> Result<()> {
    let (id, d) = volume(pool, &a.volume)?;
    let len = match a.length {
        Some(l) => l,
        None => d.size.checked_sub(a.offset).unwrap_or(1),
    };
    pool.resolve(id, a.offset, len, Access::Read)?;
    let Some(path) = named(&a.file) else {
        if mode == Mode::Server {
            anyhow::bail!(
                "`read` to stdout cannot be sent to a running `thinpool serve`; \
                 give a FILE path, or read through the NBD export"
            );
        }
        let mut stream = out;
        copy_out(pool, id, a.offset, len, &mut stream, false)?;
        return Ok(());
    };
    let mut f = create_output(pool, path)?;
    // Holes in the volume stay holes in a regular output file.
    let sparse = f.metadata().map(|m| m.is_file()).unwrap_or(false);
    copy_out(pool, id, a.offset, len, &mut f, sparse)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if sparse {
        f.set_len(len)?;
    }
    f.sync_all()
        .with_context(|| format!("cannot sync {}", path.display()))?;
    writeln!(
        out,
        "read {} of '{}' at offset {} into {}",
        amount(len),
        a.volume,
        a.offset,
        path.display()
    )?;
    Ok(())
}

/// Stream `len` bytes of volume `id` from `offset` into `dst`; with `sparse`, seek over
/// all-zero chunks instead of writing them (`dst` must then be a seekable file).
fn copy_out(
    pool: &mut Pool,
    id: VolumeId,
    offset: u64,
    len: u64,
    dst: &mut dyn WriteSeek,
    sparse: bool,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        pool.read(id, offset + done, &mut buf[..n])?;
        if sparse && buf[..n].iter().all(|&b| b == 0) {
            dst.seek_by(n as u64)?;
        } else {
            dst.write_all(&buf[..n])?;
        }
        done += n as u64;
    }
    dst.flush()?;
    Ok(())
}

/// A writer that may skip ahead (files); streams never get asked to.
trait WriteSeek: Write {
    fn seek_by(&mut self, n: u64) -> io::Result<()>;
}

impl WriteSeek for File {
    fn seek_by(&mut self, n: u64) -> io::Result<()> {
        let n = i64::try_from(n).map_err(|_| io::Error::other("seek too far"))?;
        self.seek(SeekFrom::Current(n)).map(drop)
    }
}

impl WriteSeek for &mut dyn Write {
    fn seek_by(&mut self, _n: u64) -> io::Result<()> {
        Err(io::Error::other("cannot seek on a stream"))
    }
}

pub fn discard(a: &DiscardArgs, pool: &mut Pool, out: &mut dyn Write) -> Result<()> {
    let (id, d) = volume(pool, &a.volume)?;
    let len = match a.length {
        Some(l) => l,
        None => d.size.checked_sub(a.offset).unwrap_or(1),
    };
    pool.resolve(id, a.offset, len, Access::Write)?;
    let before = pool.info()?.data_blocks_used;
    pool.discard(id, a.offset, len)?;
    pool.commit()?;
    let after = pool.info()?.data_blocks_used;
    writeln!(
        out,
        "discarded {} of '{}' at offset {}; {} data blocks freed",
        amount(len),
        a.volume,
        a.offset,
        before.saturating_sub(after)
    )?;
    Ok(())
}
