//! `thinpool dump|restore|adopt`: a pool as thin_dump's XML or thinpool's JSON, a new pool
//! from either, and a new pool from dm-thin's own metadata (a thin adapter over [`crate::dmthin`]; docs/dmthin.md).

use super::output::{create_output, print_json};
use super::progress::Bar;
use super::size::{format_size, parse_size};
use super::Mode;
use crate::dmthin::model::{Counted, DumpError, DumpSink};
use crate::dmthin::{dm_meta, dump, json, restore, xml};
use crate::pool::Pool;
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DumpFormat {
    /// thin_dump's XML (what thin_restore and thin_dump read and write); no names or sizes
    Xml,
    /// thinpool's JSON: everything the XML has, plus names, sizes, read-only flags, origins
    Json,
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Output format
    #[arg(long, value_enum, default_value = "xml")]
    pub format: DumpFormat,
    /// Write to FILE (created or truncated) instead of stdout
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Dump the state of an older commit (read-only; see `thinpool check` for valid seqs)
    #[arg(long, value_name = "SEQ")]
    pub at_seq: Option<u64>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// New pool directory (created with mode 0700 if missing; must be empty)
    pub pool: PathBuf,
    /// The dump to read ('-': stdin)
    #[arg(long, short, value_name = "FILE")]
    pub input: PathBuf,
    /// Input format (default: from its first character: '<' XML, '{' JSON)
    #[arg(long, value_enum)]
    pub format: Option<DumpFormat>,
    /// Use this existing data file, in place, as the pool's data (POOL/data becomes a
    /// symlink to it; nothing in it is written by the restore). Default: a new, empty data
    /// file, so the volumes hold zeros where the dump maps blocks
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Refuse a dump whose block size is not this one
    #[arg(long, value_parser = parse_size, allow_hyphen_values = true)]
    pub block_size: Option<u64>,
    #[command(flatten)]
    pub build: BuildArgs,
}

/// What `restore` and `adopt` share.
#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Names and sizes for the devices, overriding what the source says (dm-thin keeps
    /// neither): lines of `DEV_ID NAME [SIZE]` ('#' starts a comment). Unnamed devices are
    /// named by their dev_id and sized to their highest mapped block
    #[arg(long, value_name = "FILE")]
    pub names: Option<PathBuf>,
    /// Metadata size (default: twice what the trees take packed, and never less than `pool
    /// create` gives a pool of its size)
    #[arg(long, value_parser = parse_size, allow_hyphen_values = true)]
    pub metadata_size: Option<u64>,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct AdoptArgs {
    /// New pool directory (created with mode 0700 if missing; must be empty)
    pub pool: PathBuf,
    /// The dm-thin metadata device or file (opened read-only: never written)
    #[arg(long, value_name = "FILE")]
    pub dm_metadata: PathBuf,
    /// The dm-thin data device or file: the pool's data from now on, in place (POOL/data
    /// becomes a symlink to it; nothing in it is written by the adoption)
    #[arg(long, value_name = "FILE")]
    pub dm_data: PathBuf,
    #[command(flatten)]
    pub build: BuildArgs,
}

#[derive(Args, Debug)]
pub struct MetadataSizeArgs {
    /// Data capacity of the pool (e.g. 1T)
    #[arg(long, short = 's', value_parser = parse_size, allow_hyphen_values = true)]
    pub pool_size: u64,
    /// Data block size: a power of two from 4K to 1G
    #[arg(long, short, default_value = "64K", value_parser = parse_size, allow_hyphen_values = true)]
    pub block_size: u64,
    /// Volumes the pool will hold
    #[arg(long, default_value_t = 1)]
    pub volumes: u64,
    /// Snapshots the pool will hold (counted with the volumes, like thin_metadata_size's
    /// --max-thins)
    #[arg(long, default_value_t = 0)]
    pub snapshots: u64,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RepairArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Only say what a repair would recover and what it would lose
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

pub fn repair(a: &RepairArgs, out: &mut dyn Write) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(a.pool.join("control.sock")).is_ok() {
        anyhow::bail!(
            "pool {} is being served; stop `thinpool serve` to repair it",
            a.pool.display()
        );
    }
    let bar = Bar::counting(Mode::Local, a.json, "repair", "mappings");
    let r = crate::dmthin::repair::repair_with_progress(&a.pool, a.dry_run, &bar);
    bar.finish();
    let r = r.with_context(|| format!("cannot repair {}", a.pool.display()))?;
    let s = &r.salvage;
    let mappings: u64 = s.dump.devices.iter().map(|d| d.mapped_blocks).sum();
    if a.json {
        print_json(
            out,
            &json!({
                "dry_run": a.dry_run,
                "newest_seq": s.newest_seq,
                "repaired_from_seq": s.chosen_seq,
                "skipped": s.skipped.iter().map(|(seq, why)| json!({"seq": seq, "why": why})).collect::<Vec<_>>(),
                "bad_slots": s.bad_slots,
                "lost": s.lost,
                "volumes": s.dump.devices.len(),
                "mappings": mappings,
                "seq": r.restored.map(|x| x.seq),
                "backup": r.backup,
            }),
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "pool {}: newest commit seq {}, {} from seq {}",
        a.pool.display(),
        s.newest_seq,
        if a.dry_run {
            "would repair"
        } else {
            "repaired"
        },
        s.chosen_seq
    )?;
    for slot in &s.bad_slots {
        writeln!(out, "  damaged journal slot: {slot}")?;
    }
    if s.lost.is_empty() {
        writeln!(out, "  nothing lost")?;
    }
    for l in &s.lost {
        match &l.volume {
            Some(v) if l.length > 0 => writeln!(
                out,
                "  lost: volume '{v}' bytes {}..{} ({}): {}",
                l.offset,
                l.offset + l.length,
                format_size(l.length),
                l.why
            )?,
            Some(v) => writeln!(out, "  lost: volume '{v}': {}", l.why)?,
            None => writeln!(out, "  lost: {}", l.why)?,
        }
    }
    match (&r.restored, &r.backup) {
        (Some(done), Some(backup)) => writeln!(
            out,
            "  {} volumes, {mappings} mappings in new metadata (seq {}); the damaged metadata \
             is kept as {}",
            s.dump.devices.len(),
            done.seq,
            backup.display()
        )?,
        _ => writeln!(
            out,
            "  {} volumes, {mappings} mappings would be kept (dry run: nothing written)",
            s.dump.devices.len()
        )?,
    }
    Ok(())
}

/// The largest metadata file `pool create` makes.
const MAX_METADATA: u64 = 16 << 30;

pub fn metadata_size(a: &MetadataSizeArgs, out: &mut dyn Write) -> Result<()> {
    crate::pool::validate_block_size(a.block_size)?;
    let blocks = a.pool_size / a.block_size;
    if blocks == 0 || blocks >= 1 << 40 {
        anyhow::bail!(
            "a pool of {} in {} blocks has {blocks} blocks; it must have between 1 and 2^40",
            format_size(a.pool_size),
            format_size(a.block_size)
        );
    }
    let thins = a.volumes.saturating_add(a.snapshots);
    let e = crate::pool::sizing::estimate(a.pool_size, a.block_size, thins);
    if a.json {
        return Ok(print_json(
            out,
            &json!({
                "pool_size": a.pool_size,
                "block_size": a.block_size,
                "data_blocks": e.data_blocks,
                "volumes": thins,
                "metadata_size": e.bytes,
                "mapping_blocks": e.mapping_blocks,
                "volume_blocks": e.volume_blocks,
                "space_map_blocks": e.space_map_blocks,
                "overhead_blocks": e.overhead_blocks,
                "per_rewritten_snapshot": e.per_rewritten_snapshot_bytes,
                "pool_create_default": e.default_bytes,
                "fits": e.bytes <= MAX_METADATA,
            }),
        )?);
    }
    let kib = |b: u64| format_size(b * 4096);
    writeln!(
        out,
        "metadata for a {} pool of {} blocks ({} blocks), {thins} volumes and snapshots: {} \
         ({} bytes)",
        format_size(a.pool_size),
        format_size(a.block_size),
        e.data_blocks,
        format_size(e.bytes),
        e.bytes
    )?;
    writeln!(
        out,
        "  mappings (every block mapped, leaves half full) {}, volumes {}, space maps {}, \
         journal, reserve and in-flight copies {}",
        kib(e.mapping_blocks),
        kib(e.volume_blocks),
        kib(e.space_map_blocks),
        kib(e.overhead_blocks)
    )?;
    writeln!(
        out,
        "  each snapshot whose volume is then rewritten everywhere may add up to {}",
        format_size(e.per_rewritten_snapshot_bytes)
    )?;
    writeln!(
        out,
        "  (`pool create` gives {} by default; pass --metadata-size to choose)",
        format_size(e.default_bytes)
    )?;
    if e.bytes > MAX_METADATA {
        writeln!(
            out,
            "  this is above the {} a pool's metadata may take: use a larger --block-size",
            format_size(MAX_METADATA)
        )?;
    }
    Ok(())
}

impl BuildArgs {
    fn options(&self) -> Result<restore::RestoreOptions> {
        Ok(restore::RestoreOptions {
            metadata_size: self.metadata_size,
            names: match &self.names {
                Some(f) => read_names(f)?,
                None => BTreeMap::new(),
            },
            ..restore::RestoreOptions::default()
        })
    }
}

/// A names file: `DEV_ID NAME [SIZE]` per line, blank lines and `#` comments skipped.
fn read_names(path: &Path) -> Result<BTreeMap<u64, (String, Option<u64>)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut names = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("{}, line {}", path.display(), i + 1);
        let f: Vec<&str> = line.split_whitespace().collect();
        let (id, name, size) = match f[..] {
            [id, name] => (id, name, None),
            [id, name, size] => (id, name, Some(size)),
            _ => anyhow::bail!("{}: expected `DEV_ID NAME [SIZE]`, found {line:?}", at()),
        };
        let id: u64 = id
            .parse()
            .map_err(|_| anyhow::anyhow!("{}: {id:?} is not a device id", at()))?;
        let size = size
            .map(|s| parse_size(s).map_err(|e| anyhow::anyhow!("{}: {e}", at())))
            .transpose()?;
        if names.insert(id, (name.to_string(), size)).is_some() {
            anyhow::bail!("{}: device {id} is named twice", at());
        }
    }
    Ok(names)
}

/// How `restore` and `adopt` report what they made.
fn report(
    out: &mut dyn Write,
    json: bool,
    pool: &Path,
    from: &str,
    done: &restore::Restored,
    data: Option<&Path>,
) -> Result<()> {
    let s = done.survey;
    if json {
        return Ok(print_json(
            out,
            &json!({
                "pool": pool,
                "volumes": s.devices,
                "mappings": s.mappings,
                "runs": s.runs,
                "block_size": s.block_size,
                "data_blocks_total": s.nr_data_blocks,
                "data_blocks_used": done.data_blocks_used,
                "metadata_blocks_used": done.metadata_blocks_used,
                "metadata_blocks_total": done.metadata_blocks_total,
                "seq": done.seq,
                "data_file": data.map(|d| std::path::absolute(d).unwrap_or(d.to_path_buf())),
            }),
        )?);
    }
    writeln!(
        out,
        "{} {}: {} volumes, {} mappings in {} runs, {} data blocks of {} in use, {} of {} \
         metadata used{}",
        pool.display(),
        from,
        s.devices,
        s.mappings,
        s.runs,
        done.data_blocks_used,
        format_size(s.block_size),
        format_size(done.metadata_blocks_used * 4096),
        format_size(done.metadata_blocks_total * 4096),
        match data {
            Some(d) => format!("; data in {} (in place)", d.display()),
            None => String::new(),
        }
    )?;
    Ok(())
}

pub fn adopt(a: &AdoptArgs, out: &mut dyn Write) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    if ino(&a.dm_metadata).is_some() && ino(&a.dm_metadata) == ino(&a.dm_data) {
        anyhow::bail!(
            "--dm-metadata and --dm-data are the same file ({}); dm-thin keeps them apart",
            a.dm_data.display()
        );
    }
    let opts = restore::RestoreOptions {
        data: Some(a.dm_data.clone()),
        ..a.build.options()?
    };
    let meta = &a.dm_metadata;
    let ctx = || {
        format!(
            "cannot adopt the dm-thin pool {} + {} into {}",
            meta.display(),
            a.dm_data.display(),
            a.pool.display()
        )
    };
    let survey =
        restore::survey(&opts, |sink| dm_meta::read(meta, sink).map(|_| ())).with_context(ctx)?;
    let done = restore::restore(&a.pool, &opts, Some(survey), |sink| {
        dm_meta::read(meta, sink).map(|_| ())
    })
    .with_context(ctx)?;
    let from = format!("adopted from dm-thin metadata {}", meta.display());
    report(out, a.build.json, &a.pool, &from, &done, Some(&a.dm_data))
}

fn is_std(p: &Path) -> bool {
    p.as_os_str() == "-"
}

pub fn dump(a: &DumpArgs, pool: &mut Pool, out: &mut dyn Write, mode: Mode) -> Result<()> {
    let Some(file) = a.output.as_ref().filter(|f| !is_std(f)) else {
        if mode == Mode::Server {
            anyhow::bail!(
                "a dump to stdout cannot go through a running `thinpool serve`; give --output FILE"
            );
        }
        let mut w = BufWriter::with_capacity(1 << 20, out);
        // The dump itself is on stdout: no bar beside it.
        write_dump(pool, a.format, &mut w, "stdout", &Bar::hidden())?;
        w.flush()?;
        return Ok(());
    };
    let f = create_output(pool, file)?;
    let what = file.display().to_string();
    let mut w = BufWriter::with_capacity(1 << 20, &f);
    let bar = Bar::counting(mode, false, "dump", "mappings");
    let stats = write_dump(pool, a.format, &mut w, &what, &bar)?;
    w.flush().with_context(|| format!("cannot write {what}"))?;
    drop(w);
    f.sync_all()
        .with_context(|| format!("cannot sync {what}"))?;
    writeln!(
        out,
        "dumped pool {} at seq {}: {} volumes, {} mappings in {} runs, to {what}",
        a.pool.display(),
        pool.seq(),
        stats.devices,
        stats.mappings,
        stats.runs
    )?;
    Ok(())
}

fn write_dump(
    pool: &mut Pool,
    format: DumpFormat,
    w: &mut dyn Write,
    what: &str,
    bar: &Bar,
) -> Result<dump::DumpStats> {
    let stats = match format {
        DumpFormat::Xml => dump::dump(
            pool,
            &mut Counted::new(&mut xml::XmlWriter::new(w, what), bar),
        ),
        DumpFormat::Json => dump::dump(
            pool,
            &mut Counted::new(&mut json::JsonWriter::new(w, what), bar),
        ),
    };
    bar.finish();
    Ok(stats?)
}

/// An input opened for reading, with its format.
fn open_input(path: &Path, format: Option<DumpFormat>) -> Result<(Box<dyn BufRead>, DumpFormat)> {
    let mut r: Box<dyn BufRead> = if is_std(path) {
        Box::new(BufReader::with_capacity(1 << 20, io::stdin()))
    } else {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Box::new(BufReader::with_capacity(1 << 20, f))
    };
    let format = match format {
        Some(f) => f,
        None => {
            match first_char(&mut r).with_context(|| format!("cannot read {}", path.display()))? {
                Some(b'<') => DumpFormat::Xml,
                Some(b'{') => DumpFormat::Json,
                Some(_) => anyhow::bail!(
                "{} is neither an XML dump (starts with '<') nor a JSON dump (starts with '{{'); \
                 name its format with --format",
                path.display()
            ),
                None => anyhow::bail!("{} is empty", path.display()),
            }
        }
    };
    Ok((r, format))
}

/// The first byte that is not white space, left unread.
fn first_char(r: &mut dyn BufRead) -> io::Result<Option<u8>> {
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(None);
        }
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                let c = buf[i];
                r.consume(i);
                return Ok(Some(c));
            }
            None => {
                let n = buf.len();
                r.consume(n);
            }
        }
    }
}

fn read_dump(
    r: Box<dyn BufRead>,
    format: DumpFormat,
    what: &str,
    sink: &mut dyn DumpSink,
) -> std::result::Result<(), DumpError> {
    match format {
        DumpFormat::Xml => xml::read_xml(r, what, sink),
        DumpFormat::Json => json::read_json(r, what, sink),
    }
}

pub fn restore(a: &RestoreArgs, out: &mut dyn Write) -> Result<()> {
    let what = if is_std(&a.input) {
        "stdin".to_string()
    } else {
        a.input.display().to_string()
    };
    let opts = restore::RestoreOptions {
        data: a.data.clone(),
        block_size: a.block_size,
        ..a.build.options()?
    };
    // A file is read twice: once to check it and size the metadata before anything is
    // made, then to build. A pipe is read once, checked as it builds.
    let survey = if is_std(&a.input) {
        None
    } else {
        let (r, format) = open_input(&a.input, a.format)?;
        Some(restore::survey(&opts, |sink| {
            read_dump(r, format, &what, sink)
        })?)
    };
    let (r, format) = open_input(&a.input, a.format)?;
    let bar = Bar::counting(Mode::Local, a.build.json, "restore", "mappings");
    let done = restore::restore(&a.pool, &opts, survey, |sink| {
        read_dump(r, format, &what, &mut Counted::new(sink, &bar))
    });
    bar.finish();
    let done = done.with_context(|| format!("cannot restore {what} into {}", a.pool.display()))?;
    report(
        out,
        a.build.json,
        &a.pool,
        &format!("restored from {what}"),
        &done,
        a.data.as_deref(),
    )
}

/// The argv sent to a server for `dump`: pool and output paths made absolute (the server
/// has its own working directory). `None` for other commands.
pub(super) fn forwarded_argv(cmd: &super::Command, argv: &[String]) -> Option<Result<Vec<String>>> {
    let super::Command::Dump(a) = cmd else {
        return None;
    };
    let abs = super::absolute_arg;
    Some((|| {
        let mut v = vec![
            argv.first().cloned().unwrap_or_else(|| "thinpool".into()),
            "dump".into(),
            abs(&a.pool)?,
            "--format".into(),
            match a.format {
                DumpFormat::Xml => "xml".into(),
                DumpFormat::Json => "json".into(),
            },
        ];
        if let Some(o) = &a.output {
            v.extend([
                "--output".into(),
                if is_std(o) { "-".into() } else { abs(o)? },
            ]);
        }
        Ok(v)
    })())
}
