//! NBD server frontend: one export per volume or snapshot, plus the control socket through
//! which other `thinpool` processes run commands inside a serving process.
//!
//! (Being implemented: see issue 4.)

use crate::pool::Pool;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Runs one CLI command (full argv, program name first) on the served pool, writing what it
/// prints to `out`/`err`; returns the exit code. Supplied by the CLI so this layer stays
/// below it.
pub type ControlHandler =
    Box<dyn Fn(&mut Pool, &[String], &mut Vec<u8>, &mut Vec<u8>) -> i32 + Send + Sync>;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub pool_dir: PathBuf,
    /// Unix socket path (default `POOL/nbd.sock`).
    pub socket: Option<PathBuf>,
    /// TCP address (`ADDR:PORT`); loopback only unless `allow_remote`.
    pub listen: Option<String>,
    /// Volumes to export (empty: all).
    pub exports: Vec<String>,
    pub read_only: bool,
    pub allow_remote: bool,
    pub commit_interval: Duration,
}

/// What a forwarded command returned.
pub struct Forwarded {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Serve the pool until SIGINT/SIGTERM.
pub fn serve(_opts: ServeOptions, _handler: ControlHandler) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "thinpool serve is not implemented yet",
    ))
}

/// If a server holds the pool in `pool_dir`, run `argv` inside it over `POOL/control.sock`.
/// `Ok(None)` when no server is listening.
pub fn forward(_pool_dir: &Path, _argv: &[String]) -> std::io::Result<Option<Forwarded>> {
    Ok(None)
}
