//! The `thinpool` command line: a thin adapter over [`crate::pool::Pool`].
//!
//! One parser ([`Cli`]) serves two callers: the binary ([`main`]), which opens the pool
//! itself or forwards the command to a running `thinpool serve`, and the server's control
//! socket ([`run_in_pool`]), which runs the same command on the pool it already holds. Every
//! command writes through a `&mut dyn Write`, so both paths share one implementation.
//!
//! Exit codes: 0 success, 1 the command failed (message on stderr as `thinpool: ...`),
//! 2 usage error (clap's message).

mod check_cmds;
mod control;
mod demo;
mod dmthin_cmds;
mod docs_cmds;
mod export_cmds;
mod io_cmds;
mod iostat_cmd;
mod output;
mod pool_cmds;
mod progress;
mod serve_cmd;
pub mod size;
mod sync_cmd;
mod volume_cmds;

use crate::nbd;
use crate::pool::{OpenOptions, Pool};
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

pub(crate) use control::absolute_arg;
use control::forwarded_argv;
pub use control::run_in_pool;
pub use dmthin_cmds::{AdoptArgs, DumpArgs, DumpFormat, MetadataSizeArgs, RepairArgs, RestoreArgs};
pub use export_cmds::{DiffArgs, ExportArgs, ExportDiffArgs, ImportArgs, ImportDiffArgs};
pub use io_cmds::{DiscardArgs, ReadArgs, WriteArgs};
pub use pool_cmds::{
    PoolCmd, PoolCreateArgs, PoolGrowArgs, PoolInfoArgs, PoolRewindArgs, PoolTrimArgs,
};
pub use serve_cmd::ServeArgs;
pub use sync_cmd::SyncArgs;
pub use volume_cmds::{
    CreateArgs, InfoArgs, ListArgs, RemoveArgs, RenameArgs, ResizeArgs, RollbackArgs, SnapshotArgs,
};

/// Thin provisioning in userspace: pools of thin volumes with O(1) snapshots.
///
/// Sizes and offsets take bytes or a K, M, G, T, P or E suffix (powers of 1024).
#[derive(Parser, Debug)]
#[command(name = "thinpool", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Open the pool even though its newest commit is damaged, rewinding to the newest
    /// intact commit (what the damaged commit acknowledged is lost; `thinpool check` shows
    /// it). Without it such a pool opens only read-only, with a warning
    #[arg(long, global = true)]
    pub rewind: bool,
    /// How the data file is read and written: auto (io_uring when this process may use it,
    /// else pread/pwrite), uring, or sync (pread/pwrite). Default: $THINPOOL_IO_ENGINE, or
    /// auto
    #[arg(long, global = true, value_name = "ENGINE")]
    pub io_engine: Option<crate::io::Engine>,
    /// More log lines on stderr (-v info, -vv debug, -vvv trace); $RUST_LOG, when set,
    /// decides instead (e.g. RUST_LOG=debug or RUST_LOG=thinpool::nbd=debug)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Fewer log lines (-q errors only, -qq none)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
}

/// The options every command takes.
#[derive(Debug, Clone, Copy)]
struct Global {
    rewind: bool,
    engine: crate::io::Engine,
}

impl Global {
    fn of(cli: &Cli) -> Global {
        Global {
            rewind: cli.rewind,
            engine: cli.io_engine.unwrap_or_else(crate::io::Engine::from_env),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create, inspect or grow a pool
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Create a thin volume
    Create(CreateArgs),
    /// Snapshot a volume (O(1), whatever its size)
    Snapshot(SnapshotArgs),
    /// List the volumes and snapshots of a pool with their usage
    List(ListArgs),
    /// Show one volume with its usage
    Info(InfoArgs),
    /// Remove a volume or snapshot and free the blocks only it used
    Remove(RemoveArgs),
    /// Grow or shrink a volume
    Resize(ResizeArgs),
    /// Rename a volume
    Rename(RenameArgs),
    /// Roll a volume back to one of its snapshots
    Rollback(RollbackArgs),
    /// Write a file (or stdin) into a volume
    Write(WriteArgs),
    /// Read a volume (or a range of it) to a file or stdout
    Read(ReadArgs),
    /// Discard (trim) a range of a volume, freeing its blocks
    Discard(DiscardArgs),
    /// Export a volume as a sparse raw image (file or stdout)
    Export(ExportArgs),
    /// Import a raw image (file or stdin) as a new volume
    Import(ImportArgs),
    /// Show the byte ranges that differ between two volumes or snapshots
    Diff(DiffArgs),
    /// Write a volume's changes since a snapshot as an rbd diff v1 stream
    ExportDiff(ExportDiffArgs),
    /// Apply an rbd diff v1 stream to a volume
    ImportDiff(ImportDiffArgs),
    /// Send a volume's new snapshot to a Ceph RBD image, or (--from) an image's snapshots back
    Sync(SyncArgs),
    /// Write a pool's volumes and mappings as thin_dump XML or thinpool JSON
    Dump(DumpArgs),
    /// Build a new pool from a dump (thin_dump XML or thinpool JSON)
    Restore(RestoreArgs),
    /// Turn a dm-thin pool (its metadata and data files) into a thinpool pool, data in place
    Adopt(AdoptArgs),
    /// Estimate the metadata a pool needs (like thin_metadata_size)
    MetadataSize(MetadataSizeArgs),
    /// Rebuild damaged metadata from what can be read, naming what was lost (like thin_repair)
    Repair(RepairArgs),
    /// Check a pool's metadata: every block, every reference count (like thin_check)
    Check(check_cmds::CheckArgs),
    /// Crash-injection runs: simulated power loss (or SIGKILL of the real binary)
    Crashtest(check_cmds::CrashtestArgs),
    /// A guided tour on a temporary pool
    Demo(demo::DemoArgs),
    /// Serve the pool's volumes over NBD (and accept commands on POOL/control.sock)
    Serve(ServeArgs),
    /// What a running server is doing: per-volume I/O rates and latency, commits, space
    /// (like zpool iostat)
    Iostat(iostat_cmd::IostatArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(docs_cmds::CompletionsArgs),
    /// Write the manual pages into a new directory (tools/man.sh)
    #[command(hide = true)]
    Manpages(docs_cmds::ManpagesArgs),
}

/// The server's control socket inside the pool directory (`nbd::control::SOCKET_NAME`).
const CONTROL_SOCKET: &str = "control.sock";

/// Where a command runs: in its own process, or inside a server on its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Local,
    Server,
}

impl Command {
    /// The pool a command works on, when it works on an existing pool.
    pub(super) fn pool_dir(&self) -> Option<&Path> {
        Some(match self {
            Command::Pool(PoolCmd::Create(_))
            | Command::Pool(PoolCmd::Rewind(_))
            | Command::Restore(_)
            | Command::Adopt(_)
            | Command::MetadataSize(_)
            | Command::Repair(_)
            | Command::Demo(_)
            | Command::Serve(_)
            | Command::Iostat(_)
            | Command::Completions(_)
            | Command::Manpages(_)
            | Command::Crashtest(_) => return None,
            Command::Check(a) => &a.pool,
            Command::Pool(PoolCmd::Info(a)) => &a.pool,
            Command::Pool(PoolCmd::Grow(a)) => &a.pool,
            Command::Pool(PoolCmd::Trim(a)) => &a.pool,
            Command::Create(a) => &a.pool,
            Command::Snapshot(a) => &a.pool,
            Command::List(a) => &a.pool,
            Command::Info(a) => &a.pool,
            Command::Remove(a) => &a.pool,
            Command::Resize(a) => &a.pool,
            Command::Rename(a) => &a.pool,
            Command::Rollback(a) => &a.pool,
            Command::Write(a) => &a.pool,
            Command::Read(a) => &a.pool,
            Command::Discard(a) => &a.pool,
            Command::Export(a) => &a.pool,
            Command::Import(a) => &a.pool,
            Command::Diff(a) => &a.pool,
            Command::ExportDiff(a) => &a.pool,
            Command::ImportDiff(a) => &a.pool,
            Command::Sync(a) => &a.pool,
            Command::Dump(a) => &a.pool,
        })
    }

    /// The older commit a read-only command asked to look at.
    fn at_seq(&self) -> Option<u64> {
        match self {
            Command::Pool(PoolCmd::Info(a)) => a.at_seq,
            Command::List(a) => a.at_seq,
            Command::Info(a) => a.at_seq,
            Command::Read(a) => a.at_seq,
            Command::Dump(a) => a.at_seq,
            _ => None,
        }
    }

    /// What this command would destroy under an NBD client, unless `--force` was given: its
    /// verb and the volumes it removes or rolls back (rolling back *to* an attached snapshot
    /// is harmless, so a rollback names only its volume). A server refuses the command while
    /// a client has one of them attached. Taken from the parsed arguments, so a name that
    /// starts with '-' (after `--`) counts like any other.
    pub(crate) fn guarded_volumes(&self) -> Option<(&'static str, Vec<&str>)> {
        match self {
            Command::Remove(a) if !a.force => Some(("remove", vec![a.volume.as_str()])),
            Command::Rollback(a) if !a.force => Some(("rollback", vec![a.volume.as_str()])),
            _ => None,
        }
    }

    /// Commands that only look take a shared lock, so any number run side by side.
    fn is_read_only(&self) -> bool {
        matches!(
            self,
            Command::Pool(PoolCmd::Info(_))
                | Command::Check(_)
                | Command::List(_)
                | Command::Info(_)
                | Command::Read(_)
                | Command::Export(_)
                | Command::Diff(_)
                | Command::ExportDiff(_)
                | Command::Dump(_)
        )
    }
}

/// Run a command on an open pool, printing to `out`.
fn execute(cmd: &Command, pool: &mut Pool, out: &mut dyn Write, mode: Mode) -> Result<()> {
    match cmd {
        Command::Pool(PoolCmd::Info(a)) => pool_cmds::info(a, pool, out),
        Command::Pool(PoolCmd::Grow(a)) => pool_cmds::grow(a, pool, out),
        Command::Pool(PoolCmd::Trim(a)) => pool_cmds::trim(a, pool, out),
        Command::Create(a) => volume_cmds::create(a, pool, out),
        Command::Snapshot(a) => volume_cmds::snapshot(a, pool, out),
        Command::List(a) => volume_cmds::list(a, pool, out),
        Command::Info(a) => volume_cmds::info(a, pool, out),
        Command::Remove(a) => volume_cmds::remove(a, pool, out),
        Command::Resize(a) => volume_cmds::resize(a, pool, out),
        Command::Rename(a) => volume_cmds::rename(a, pool, out),
        Command::Rollback(a) => volume_cmds::rollback(a, pool, out),
        Command::Write(a) => io_cmds::write(a, pool, out, mode),
        Command::Read(a) => io_cmds::read(a, pool, out, mode),
        Command::Discard(a) => io_cmds::discard(a, pool, out),
        Command::Export(a) => export_cmds::export(a, pool, out, mode),
        Command::Import(a) => export_cmds::import(a, pool, out, mode),
        Command::Diff(a) => export_cmds::diff(a, pool, out, mode),
        Command::ExportDiff(a) => export_cmds::export_diff(a, pool, out, mode),
        Command::ImportDiff(a) => export_cmds::import_diff(a, pool, out, mode),
        Command::Sync(a) => sync_cmd::sync(a, pool, out, mode),
        Command::Check(a) => check_cmds::check(a, pool, out),
        Command::Dump(a) => dmthin_cmds::dump(a, pool, out, mode),
        Command::Pool(PoolCmd::Create(_))
        | Command::Pool(PoolCmd::Rewind(_))
        | Command::Restore(_)
        | Command::Adopt(_)
        | Command::MetadataSize(_)
        | Command::Repair(_)
        | Command::Demo(_)
        | Command::Serve(_)
        | Command::Iostat(_)
        | Command::Completions(_)
        | Command::Manpages(_)
        | Command::Crashtest(_) => {
            anyhow::bail!("this command cannot run on a pool that is already open")
        }
    }
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    init_logs(&cli);
    let argv: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let code = match run(&cli.command, Global::of(&cli), &argv, &mut out)
        .and_then(|c| Ok(out.flush().map(|()| c)?))
    {
        Ok(code) => code,
        // The reader went away (`thinpool read ... | head`): stop quietly, as SIGPIPE would.
        Err(e) if is_broken_pipe(&e) => return ExitCode::from(141),
        Err(e) => {
            let _ = out.flush();
            eprintln!("thinpool: {}", error_message(&e));
            1
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Logs go to stderr: a server's at info (start, stop, connections), other commands' at warn;
/// crashtest's at none, since the failures it injects would each log a fail-stop.
fn init_logs(cli: &Cli) {
    use tracing::level_filters::LevelFilter;
    let (default, format) = match &cli.command {
        Command::Serve(a) => (LevelFilter::INFO, a.log_format),
        Command::Crashtest(_) => (LevelFilter::OFF, Default::default()),
        _ => (LevelFilter::WARN, Default::default()),
    };
    crate::logging::init(
        crate::logging::level(default, cli.verbose, cli.quiet),
        format,
    );
}

/// Run a parsed command in this process; returns the exit code.
fn run(cmd: &Command, g: Global, argv: &[String], out: &mut dyn Write) -> Result<i32> {
    let dir = match cmd {
        Command::Pool(PoolCmd::Create(a)) => return pool_cmds::create(a, out).map(|()| 0),
        Command::Pool(PoolCmd::Rewind(a)) => {
            return pool_cmds::rewind(a, g.engine, out).map(|()| 0)
        }
        Command::Restore(a) => return dmthin_cmds::restore(a, out).map(|()| 0),
        Command::Adopt(a) => return dmthin_cmds::adopt(a, out).map(|()| 0),
        Command::MetadataSize(a) => return dmthin_cmds::metadata_size(a, out).map(|()| 0),
        Command::Repair(a) => return dmthin_cmds::repair(a, out).map(|()| 0),
        Command::Demo(a) => return demo::run(a, out).map(|()| 0),
        Command::Crashtest(a) => return check_cmds::crashtest(a, out).map(|()| 0),
        Command::Serve(a) => return serve_cmd::run(a, g.rewind, g.engine, out).map(|()| 0),
        Command::Iostat(a) => return iostat_cmd::iostat(a, out).map(|()| 0),
        Command::Completions(a) => return docs_cmds::completions(a, out).map(|()| 0),
        Command::Manpages(a) => return docs_cmds::manpages(a, out).map(|()| 0),
        _ => cmd.pool_dir().expect("every other command names a pool"),
    };
    if let Some(seq) = cmd.at_seq() {
        if std::os::unix::net::UnixStream::connect(dir.join(CONTROL_SOCKET)).is_ok() {
            anyhow::bail!(
                "pool {} is being served; stop `thinpool serve` to look at commit {seq}",
                dir.display()
            );
        }
        let opts = OpenOptions {
            read_only: true,
            at_seq: Some(seq),
            engine: g.engine,
            ..OpenOptions::default()
        };
        let mut pool = Pool::open(dir, &opts)?;
        execute(cmd, &mut pool, out, Mode::Local)?;
        return Ok(0);
    }
    let fwd = forwarded_argv(cmd, argv)?;
    let reply = match nbd::forward(dir, &fwd) {
        Ok(r) => r,
        // No control socket at all (POOL missing, not a directory...): opening the pool
        // below gives the better message.
        Err(_) if !dir.join(CONTROL_SOCKET).exists() => None,
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot reach the server of pool {} through its control socket",
                dir.display()
            )))
        }
    };
    if let Some(f) = reply {
        out.write_all(&f.stdout)?;
        std::io::stderr().write_all(&f.stderr)?;
        return Ok(f.code);
    }
    if let Command::Check(a) = cmd {
        // The checker reads the metadata file itself: it must work on a pool that no longer
        // opens.
        check_cmds::check_local(a, out)?;
        return Ok(0);
    }
    let opts = OpenOptions {
        read_only: cmd.is_read_only(),
        rewind: g.rewind,
        engine: g.engine,
        // The `rbd` children of a killed sync hold the pool's lock until they have
        // finished (`ceph::Rbd::inherit`): the repeated sync waits for them.
        lock_wait: match cmd {
            Command::Sync(_) => sync_cmd::LOCK_WAIT,
            _ => OpenOptions::default().lock_wait,
        },
        ..OpenOptions::default()
    };
    let mut pool = Pool::open(dir, &opts)?;
    if let Some(r) = pool.open_report().and_then(|r| r.rewound()) {
        if opts.read_only {
            eprintln!(
                "thinpool: warning: {r}; showing seq {} (a read-write open needs --rewind)",
                r.chosen
            );
        } else {
            eprintln!(
                "thinpool: rewound pool {} to seq {}: {r}",
                dir.display(),
                r.chosen
            );
        }
    }
    execute(cmd, &mut pool, out, Mode::Local)?;
    pool.return_freed_space()?;
    Ok(0)
}

/// Run one command line in this process as the binary would, for the demo.
pub(crate) fn run_argv(argv: &[String], out: &mut dyn Write) -> Result<()> {
    let cli = Cli::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{}", e.render()))?;
    match run(&cli.command, Global::of(&cli), argv, out)? {
        0 => Ok(()),
        code => anyhow::bail!("`{}` exited with {code}", argv.join(" ")),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes on one line, each cause once (library messages often already
/// include their source's text).
pub(crate) fn error_message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if msg.contains(&s) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&s);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guarded(argv: &[&str]) -> Option<(&'static str, Vec<String>)> {
        let cli = Cli::try_parse_from(argv).unwrap();
        cli.command
            .guarded_volumes()
            .map(|(verb, v)| (verb, v.into_iter().map(String::from).collect()))
    }

    #[test]
    fn guarded_volumes_come_from_the_parsed_command() {
        let some = |verb, v: &str| Some((verb, vec![v.to_string()]));
        assert_eq!(
            guarded(&["tp", "remove", "P", "--", "-x"]),
            some("remove", "-x")
        );
        assert_eq!(
            guarded(&["tp", "remove", "P", "vol"]),
            some("remove", "vol")
        );
        // A pool directory or option value that looks like a verb changes nothing.
        assert_eq!(
            guarded(&["tp", "remove", "rollback", "remove"]),
            some("remove", "remove")
        );
        assert_eq!(
            guarded(&["tp", "rollback", "P", "--", "-x", "-s"]),
            some("rollback", "-x")
        );
        assert_eq!(guarded(&["tp", "remove", "-f", "P", "--", "-x"]), None);
        assert_eq!(guarded(&["tp", "rollback", "P", "v", "s", "--force"]), None);
        assert_eq!(guarded(&["tp", "create", "remove", "x", "-s", "1M"]), None);
        assert_eq!(guarded(&["tp", "list", "P"]), None);
    }
}
