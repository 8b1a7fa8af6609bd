//! `thinpool demo`: a guided tour. Every step prints the command line it stands for and then
//! runs exactly that command line through the CLI, so what the tour shows is what the
//! commands do. The data written is checked by reading it back.

use super::run_argv;
use crate::pool::{OpenOptions, Pool};
use anyhow::{ensure, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Directory for the demo pool (must not exist or be empty); it is kept afterwards.
    /// Default: a temporary directory, removed at the end.
    pub dir: Option<PathBuf>,
}

/// A scratch directory removed when dropped, even if a step fails.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("thinpool-demo-{}-{nanos:08x}", std::process::id()));
        std::fs::create_dir(&p)
            .with_context(|| format!("cannot create scratch directory {}", p.display()))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Tour<'a> {
    out: &'a mut dyn Write,
    step: u32,
    /// Long paths shown as shell variables (`$POOL`), longest first.
    vars: Vec<(String, &'static str)>,
}

impl Tour<'_> {
    fn step(&mut self, title: &str) -> Result<()> {
        self.step += 1;
        writeln!(self.out, "\n== {}. {title}", self.step)?;
        Ok(())
    }

    /// Show `thinpool ARGS...` and run it; its output is indented under the command.
    fn run(&mut self, args: &[&str]) -> Result<()> {
        let mut argv = vec!["thinpool".to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        writeln!(self.out, "$ {}", self.shorten(&argv.join(" ")))?;
        let mut buf = Vec::new();
        run_argv(&argv, &mut buf)?;
        for line in String::from_utf8_lossy(&buf).lines() {
            writeln!(self.out, "  {}", self.shorten(line))?;
        }
        Ok(())
    }

    fn shorten(&self, text: &str) -> String {
        self.vars
            .iter()
            .fold(text.to_string(), |t, (path, var)| t.replace(path, var))
    }

    fn note(&mut self, text: &str) -> Result<()> {
        writeln!(self.out, "  {text}")?;
        Ok(())
    }
}

/// `len` bytes of a recognizable pattern: `tag` repeated with the offset.
fn pattern(tag: &str, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 64);
    while v.len() < len {
        v.extend_from_slice(format!("{tag} @{:08} | ", v.len()).as_bytes());
    }
    v.truncate(len);
    v
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

pub fn run(a: &DemoArgs, out: &mut dyn Write) -> Result<()> {
    let scratch = Scratch::new()?;
    let pool = match &a.dir {
        Some(d) => d.clone(),
        None => scratch.0.join("pool"),
    };
    let files = scratch.0.join("files");
    std::fs::create_dir(&files)?;
    let (p, f) = (s(&pool), |name: &str| s(&files.join(name)));

    let original = pattern("original", 1 << 20);
    let update = pattern("UPDATED!", 128 << 10);
    let mut updated = original.clone();
    updated[256 << 10..384 << 10].copy_from_slice(&update);
    std::fs::write(files.join("original.bin"), &original)?;
    std::fs::write(files.join("update.bin"), &update)?;

    let mut vars = vec![(p.clone(), "$POOL"), (s(&files), "$FILES")];
    vars.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let mut t = Tour { out, step: 0, vars };
    writeln!(
        t.out,
        "thinpool demo: a pool, a thin volume, an O(1) snapshot and copy-on-write, step by step.\n\
         Each step shows the command it runs, with\n  POOL={p}\n  FILES={}",
        s(&files)
    )?;

    t.step("Create a pool: 256 MiB of data space in 64 KiB blocks")?;
    t.run(&[
        "pool",
        "create",
        &p,
        "--size",
        "256M",
        "--block-size",
        "64K",
    ])?;

    t.step("Create a thin volume of 1 GiB: bigger than the pool, no space used yet")?;
    t.run(&["create", &p, "vm", "--size", "1G"])?;

    t.step("Write 1 MiB of data at the start of the volume (16 blocks)")?;
    t.run(&["write", &p, "vm", &f("original.bin")])?;

    t.step("Snapshot it: O(1), the snapshot shares all 16 blocks")?;
    t.run(&["snapshot", &p, "vm", "vm-snap", "--read-only"])?;

    t.step("Overwrite 128 KiB of the volume at offset 256K: only 2 blocks are copied")?;
    t.run(&["write", &p, "vm", "--offset", "256K", &f("update.bin")])?;

    t.step("The snapshot still holds the original data; the volume has the new data")?;
    t.run(&["read", &p, "vm-snap", "--length", "1M", &f("snap.bin")])?;
    let snap = std::fs::read(files.join("snap.bin"))?;
    ensure!(
        snap == original,
        "the snapshot does not hold the original data"
    );
    t.note("OK: snapshot = original data")?;
    t.run(&["read", &p, "vm", "--length", "1M", &f("vm.bin")])?;
    let vm = std::fs::read(files.join("vm.bin"))?;
    ensure!(vm == updated, "the volume does not hold the updated data");
    t.note("OK: volume = original data with the 128 KiB update")?;

    t.step("Usage: 14 blocks shared by both, 2 exclusive to each")?;
    t.run(&["list", &p])?;

    t.step("Roll the volume back to the snapshot")?;
    t.run(&["rollback", &p, "vm", "vm-snap"])?;
    t.run(&["read", &p, "vm", "--length", "1M", &f("vm.bin")])?;
    let vm = std::fs::read(files.join("vm.bin"))?;
    ensure!(
        vm == original,
        "after rollback the volume does not hold the original data"
    );
    t.note("OK: volume = original data again")?;
    t.run(&["list", &p])?;

    t.step("Remove the snapshot and the volume: their blocks return to the pool")?;
    t.run(&["remove", &p, "vm-snap"])?;
    t.run(&["remove", &p, "vm"])?;

    t.step("The pool is empty again")?;
    t.run(&["pool", "info", &p])?;
    let used = Pool::open(
        &pool,
        &OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )?
    .info()?
    .data_blocks_used;
    ensure!(
        used == 0,
        "{used} data blocks are still in use after removing every volume"
    );
    t.note("OK: 0 data blocks used")?;

    match &a.dir {
        Some(d) => writeln!(t.out, "\nDone. The pool is kept in {}.", d.display())?,
        None => writeln!(t.out, "\nDone. The temporary pool has been removed.")?,
    }
    Ok(())
}
