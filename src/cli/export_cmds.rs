//! `thinpool export|import|diff|export-diff|import-diff`: raw images and incremental diffs,
//! a thin adapter over [`crate::export`]. `-` names stdin/stdout (not through a server, which
//! has no access to the caller's streams). Progress bars go to stderr when both stdout and
//! stderr are terminals, never with `--json` or inside a server.

use super::output::{create_output, print_json, print_table};
use super::progress::Bar;
use super::size::{format_size, parse_size};
use super::Mode;
use crate::export::{self, raw, DiffKind, ImportDiffOptions, ImportSource, RawSink};
use crate::pool::Pool;
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ImageFormat {
    /// A raw image of the whole volume (sparse when written to a file)
    Raw,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Volume (or snapshot) to export
    pub volume: String,
    /// Output file, created or truncated ('-': stdout)
    pub file: PathBuf,
    /// Image format
    #[arg(long, value_enum, default_value = "raw")]
    pub format: ImageFormat,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Name of the volume to create (1 to 127 bytes; no '/', control characters or bidi overrides)
    pub volume: String,
    /// Raw image to import ('-': stdin)
    pub file: PathBuf,
    /// Size of the new volume (default: the file's size; for stdin, the bytes read)
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Older volume or snapshot
    pub from: String,
    /// Newer volume or snapshot
    pub to: String,
    /// Print JSON for scripts
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ExportDiffArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Volume (or snapshot) whose changes to write
    pub volume: String,
    /// Output file in rbd diff v1 format ('-': stdout)
    pub file: PathBuf,
    /// Write only the changes since this snapshot (default: all data)
    #[arg(long)]
    pub from: Option<String>,
}

#[derive(Args, Debug)]
pub struct ImportDiffArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Volume to apply the diff to
    pub volume: String,
    /// Diff in rbd diff v1 format ('-': stdin)
    pub file: PathBuf,
    /// Do not create the diff's end snapshot after applying it
    #[arg(long)]
    pub no_snapshot: bool,
}

fn is_std(p: &Path) -> bool {
    p.as_os_str() == "-"
}

fn no_std_in_server(mode: Mode, p: &Path, what: &str) -> Result<()> {
    if mode == Mode::Server && is_std(p) {
        anyhow::bail!(
            "{what} cannot go through a running `thinpool serve`; give a FILE path instead of '-'"
        );
    }
    Ok(())
}

/// Where a summary goes: stdout, unless stdout carries the data.
fn summary<'a>(
    out: &'a mut dyn Write,
    data_on_stdout: bool,
    err: &'a mut io::Stderr,
) -> &'a mut dyn Write {
    if data_on_stdout {
        err
    } else {
        out
    }
}

pub fn export(a: &ExportArgs, pool: &mut Pool, out: &mut dyn Write, mode: Mode) -> Result<()> {
    no_std_in_server(mode, &a.file, "an export to stdout")?;
    let (id, d) = pool.find(&a.volume)?;
    let bar = Bar::new(mode, false, "export");
    let stats = if is_std(&a.file) {
        let stdout = io::stdout();
        let mut w = BufWriter::with_capacity(1 << 20, stdout.lock());
        export::export_raw(pool, id, RawSink::Stream(&mut w), &bar)?
    } else {
        let f = create_output(pool, &a.file)?;
        let regular = f.metadata().map(|m| m.is_file()).unwrap_or(false);
        let stats = if regular {
            export::export_raw(pool, id, RawSink::File(&f), &bar)?
        } else {
            // A device or pipe: holes must be written as zeros.
            let mut w = BufWriter::with_capacity(1 << 20, &f);
            export::export_raw(pool, id, RawSink::Stream(&mut w), &bar)?
        };
        f.sync_all()
            .with_context(|| format!("cannot sync {}", a.file.display()))?;
        stats
    };
    bar.finish();
    let mut err = io::stderr();
    writeln!(
        summary(out, is_std(&a.file), &mut err),
        "exported '{}' ({}, {} of data) to {}",
        a.volume,
        format_size(d.size),
        format_size(stats.data_bytes),
        a.file.display()
    )?;
    Ok(())
}

pub fn import(a: &ImportArgs, pool: &mut Pool, out: &mut dyn Write, mode: Mode) -> Result<()> {
    no_std_in_server(mode, &a.file, "an import from stdin")?;
    let bar = Bar::new(mode, false, "import");
    let stats = if is_std(&a.file) {
        let stdin = io::stdin();
        let mut r = stdin.lock();
        raw::import_raw(pool, &a.volume, ImportSource::Stream(&mut r), a.size, &bar)?
    } else {
        let f = File::open(&a.file).with_context(|| format!("cannot open {}", a.file.display()))?;
        let regular = f.metadata().map(|m| m.is_file()).unwrap_or(false);
        if regular {
            raw::import_raw(pool, &a.volume, ImportSource::File(&f), a.size, &bar)?
        } else {
            let mut r = BufReader::new(&f);
            raw::import_raw(pool, &a.volume, ImportSource::Stream(&mut r), a.size, &bar)?
        }
    };
    bar.finish();
    writeln!(
        out,
        "imported {} into '{}' (id {}, {}, {} of data)",
        a.file.display(),
        a.volume,
        stats.id,
        format_size(stats.size),
        format_size(stats.data_bytes)
    )?;
    Ok(())
}

pub fn diff(a: &DiffArgs, pool: &mut Pool, out: &mut dyn Write, mode: Mode) -> Result<()> {
    let (fid, _) = pool.find(&a.from)?;
    let (tid, _) = pool.find(&a.to)?;
    let bar = Bar::new(mode, a.json, "diff");
    let found = export::diff_volumes_with_progress(pool, fid, tid, &bar);
    bar.finish();
    let (ranges, stats) = found?;
    let total = |k: DiffKind| -> u64 {
        ranges
            .iter()
            .filter(|r| r.kind == k)
            .map(|r| r.length)
            .sum()
    };
    let (changed, only_from, only_to) = (
        total(DiffKind::Changed),
        total(DiffKind::OnlyInFrom),
        total(DiffKind::OnlyInTo),
    );
    if a.json {
        let list: Vec<_> = ranges
            .iter()
            .map(|r| json!({"offset": r.offset, "length": r.length, "kind": r.kind.as_str()}))
            .collect();
        print_json(
            out,
            &json!({
                "from": a.from,
                "to": a.to,
                "block_size": pool.block_size(),
                "ranges": list,
                "summary": {
                    "ranges": ranges.len(),
                    "changed_bytes": changed,
                    "only_in_from_bytes": only_from,
                    "only_in_to_bytes": only_to,
                    "total_bytes": changed + only_from + only_to,
                    "nodes_read": stats.nodes_read,
                    "subtrees_shared": stats.subtrees_shared,
                },
            }),
        )?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = ranges
        .iter()
        .map(|r| {
            vec![
                r.offset.to_string(),
                r.length.to_string(),
                format_size(r.length),
                r.kind.as_str().to_string(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        print_table(
            out,
            &["OFFSET", "LENGTH", "SIZE", "KIND"],
            &rows,
            &[true, true, true, false],
        )?;
    }
    writeln!(
        out,
        "{} range(s) differ between '{}' and '{}': {} changed, {} only in '{}', {} only in '{}' ({} tree nodes read)",
        ranges.len(),
        a.from,
        a.to,
        format_size(changed),
        format_size(only_from),
        a.from,
        format_size(only_to),
        a.to,
        stats.nodes_read
    )?;
    Ok(())
}

pub fn export_diff(
    a: &ExportDiffArgs,
    pool: &mut Pool,
    out: &mut dyn Write,
    mode: Mode,
) -> Result<()> {
    no_std_in_server(mode, &a.file, "a diff to stdout")?;
    let (id, _) = pool.find(&a.volume)?;
    let from = match &a.from {
        Some(f) => Some(pool.find(f)?.0),
        None => None,
    };
    let bar = Bar::new(mode, false, "export-diff");
    let stats = if is_std(&a.file) {
        let stdout = io::stdout();
        let mut w = BufWriter::with_capacity(1 << 20, stdout.lock());
        export::export_diff(pool, id, from, &mut w, &bar)?
    } else {
        let f = create_output(pool, &a.file)?;
        let mut w = BufWriter::with_capacity(1 << 20, &f);
        let s = export::export_diff(pool, id, from, &mut w, &bar)?;
        drop(w);
        f.sync_all()
            .with_context(|| format!("cannot sync {}", a.file.display()))?;
        s
    };
    bar.finish();
    let since = a
        .from
        .as_ref()
        .map(|f| format!(" since '{f}'"))
        .unwrap_or_default();
    let mut err = io::stderr();
    writeln!(
        summary(out, is_std(&a.file), &mut err),
        "wrote the changes of '{}'{since} to {}: {} of data, {} zeroed",
        a.volume,
        a.file.display(),
        format_size(stats.data_bytes),
        format_size(stats.zero_bytes)
    )?;
    Ok(())
}

pub fn import_diff(
    a: &ImportDiffArgs,
    pool: &mut Pool,
    out: &mut dyn Write,
    mode: Mode,
) -> Result<()> {
    no_std_in_server(mode, &a.file, "a diff from stdin")?;
    let opts = ImportDiffOptions {
        no_snapshot: a.no_snapshot,
    };
    let bar = Bar::new(mode, false, "import-diff");
    let rep = if is_std(&a.file) {
        let stdin = io::stdin();
        let mut r = stdin.lock();
        export::import_diff(pool, &a.volume, &mut r, &opts, &bar)?
    } else {
        let f = File::open(&a.file).with_context(|| format!("cannot open {}", a.file.display()))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        export::import_diff(pool, &a.volume, &mut r, &opts, &bar)?
    };
    bar.finish();
    let snap = rep
        .snapshot
        .as_ref()
        .map(|s| format!("; created snapshot '{s}'"))
        .unwrap_or_default();
    writeln!(
        out,
        "applied {} to '{}': {} of data, {} zeroed{snap}",
        a.file.display(),
        a.volume,
        format_size(rep.data_bytes),
        format_size(rep.zero_bytes)
    )?;
    Ok(())
}

/// The argv sent to a server for these commands: the server has its own working directory,
/// so the pool and file paths go absolute (`-` stays, and is refused there). `None` for other
/// commands.
pub(super) fn forwarded_argv(cmd: &super::Command, argv: &[String]) -> Option<Result<Vec<String>>> {
    use super::Command as C;
    let (verb, pool, volume, file, opts): (_, _, _, _, Vec<String>) = match cmd {
        C::Export(a) => ("export", &a.pool, &a.volume, &a.file, vec![]),
        C::Import(a) => (
            "import",
            &a.pool,
            &a.volume,
            &a.file,
            a.size
                .map(|s| vec!["--size".into(), s.to_string()])
                .unwrap_or_default(),
        ),
        C::ExportDiff(a) => (
            "export-diff",
            &a.pool,
            &a.volume,
            &a.file,
            a.from
                .as_ref()
                .map(|f| vec!["--from".into(), f.clone()])
                .unwrap_or_default(),
        ),
        C::ImportDiff(a) => (
            "import-diff",
            &a.pool,
            &a.volume,
            &a.file,
            if a.no_snapshot {
                vec!["--no-snapshot".into()]
            } else {
                vec![]
            },
        ),
        _ => return None,
    };
    let abs = super::absolute_arg;
    Some((|| {
        let mut v = vec![
            argv.first().cloned().unwrap_or_else(|| "thinpool".into()),
            verb.to_string(),
            abs(pool)?,
        ];
        v.extend(opts);
        // `--` keeps a volume or file name that starts with '-' positional.
        v.extend(["--".into(), volume.clone(), abs(file)?]);
        Ok(v)
    })())
}
