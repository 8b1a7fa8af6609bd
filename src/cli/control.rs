//! The CLI's side of the control socket: what a command sends to a running `thinpool serve`
//! (`forwarded_argv`, paths made absolute) and how the server runs what arrives
//! (`run_in_pool`, which refuses to remove or roll back a volume under its clients).

use super::{dmthin_cmds, error_message, execute, export_cmds, sync_cmd, Cli, Command, Mode};
use crate::pool::{Pool, PoolError, VolumeId};
use anyhow::{Context, Result};
use clap::Parser;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A path argument as a server must get it: absolute, since the server has its own working
/// directory (`-`, stdin or stdout, stays as it is: the server refuses it).
pub(crate) fn absolute_arg(p: &Path) -> Result<String> {
    if p.as_os_str() == "-" {
        return Ok("-".into());
    }
    Ok(std::path::absolute(p)
        .with_context(|| format!("cannot resolve {}", p.display()))?
        .to_string_lossy()
        .into_owned())
}

/// The argv sent to a server. A server has its own working directory, so file paths are
/// made absolute first; everything else goes as typed.
pub(super) fn forwarded_argv(cmd: &Command, argv: &[String]) -> Result<Vec<String>> {
    if let Some(v) = export_cmds::forwarded_argv(cmd, argv) {
        return v;
    }
    if let Some(v) = dmthin_cmds::forwarded_argv(cmd, argv) {
        return v;
    }
    if let Some(v) = sync_cmd::forwarded_argv(cmd, argv) {
        return v;
    }
    let (verb, pool, volume, offset, length, file) = match cmd {
        Command::Write(a) => ("write", &a.pool, &a.volume, a.offset, None, &a.file),
        Command::Read(a) => ("read", &a.pool, &a.volume, a.offset, a.length, &a.file),
        _ => return Ok(argv.to_vec()),
    };
    let Some(file) = file.as_ref().filter(|f| f.as_os_str() != "-") else {
        return Ok(argv.to_vec());
    };
    let abs = |p: &PathBuf| absolute_arg(p);
    let mut v = vec![
        argv.first().cloned().unwrap_or_else(|| "thinpool".into()),
        verb.to_string(),
        abs(pool)?,
        "--offset".into(),
        offset.to_string(),
    ];
    if let Some(l) = length {
        v.extend(["--length".into(), l.to_string()]);
    }
    // `--` keeps a volume or file name that starts with '-' positional.
    v.extend(["--".into(), volume.clone(), abs(file)?]);
    Ok(v)
}

/// Run `argv` (program name first) on a pool that is already open: the control handler of
/// `thinpool serve`. `attached` counts the NBD connections that have a volume attached; a
/// command that would remove or roll back an attached volume is refused (see
/// `Command::guarded_volumes`). Output goes to `out`, messages to `err`; returns the exit
/// code.
pub fn run_in_pool(
    pool: &mut Pool,
    argv: &[String],
    attached: &dyn Fn(VolumeId) -> usize,
    out: &mut Vec<u8>,
    err: &mut Vec<u8>,
) -> i32 {
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let text = e.render().to_string();
            let dst = if e.use_stderr() { err } else { out };
            dst.extend_from_slice(text.as_bytes());
            return e.exit_code();
        }
    };
    let res = match &cli.command {
        // Commands that work on no existing pool (`Command::pool_dir`) have nothing to run
        // on inside a server.
        cmd if cmd.pool_dir().is_none() => Err(anyhow::anyhow!(
            "this command cannot be sent to a running `thinpool serve`"
        )),
        cmd => refuse_attached(cmd, pool, attached)
            .and_then(|()| execute(cmd, pool, out, Mode::Server))
            .and_then(|()| Ok(pool.return_freed_space()?)),
    };
    match res {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "thinpool: {}", error_message(&e));
            1
        }
    }
}

/// Refuse `cmd` if it would remove or roll back a volume that an NBD client has attached.
fn refuse_attached(
    cmd: &Command,
    pool: &mut Pool,
    attached: &dyn Fn(VolumeId) -> usize,
) -> Result<()> {
    let Some((verb, names)) = cmd.guarded_volumes() else {
        return Ok(());
    };
    for name in names {
        let id = match pool.volume_id(name) {
            Ok(id) => id,
            // The command itself says that there is no such volume.
            Err(PoolError::NoSuchVolume(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let n = attached(id);
        if n > 0 {
            let s = if n == 1 { "" } else { "s" };
            anyhow::bail!(
                "volume '{name}' is attached by {n} NBD connection{s} to this `thinpool serve`; \
                 disconnect the client{s} first, or pass --force to {verb} it anyway (attached \
                 clients then see I/O errors or changed data)"
            );
        }
    }
    Ok(())
}
