//! NBD server frontend: one export per volume or snapshot, plus the control socket through
//! which other `thinpool` processes run commands inside a serving process.
//!
//! Files: [`proto`] (wire constants and encoders), `handshake` (fixed newstyle option
//! negotiation), `transmission` (request loop of one connection), `server` (listeners,
//! commit timer, signals, shutdown), `control` (control socket). See `docs/nbd.md`.

mod control;
pub(crate) mod handshake;
pub mod proto;
pub(crate) mod server;
pub(crate) mod transmission;

use crate::pool::{Pool, VolumeId};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

pub use server::{EVICT_IDLE, MAX_CONNECTIONS};
/// Runs one CLI command (full argv, program name first) on the served pool, writing what it
/// prints to `out`/`err`; returns the exit code. Supplied by the CLI so this layer stays
/// below it; the CLI parses the command, so it is the handler that refuses to remove or roll
/// back a volume under its clients, asking `attached` how many NBD connections have a
/// volume attached.
pub type ControlHandler = Box<
    dyn Fn(&mut Pool, &[String], &dyn Fn(VolumeId) -> usize, &mut Vec<u8>, &mut Vec<u8>) -> i32
        + Send
        + Sync,
>;

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
    /// Accept a rewind past a damaged newest commit (see `OpenOptions::rewind`).
    pub rewind: bool,
    /// The data file's I/O engine and O_DIRECT (see `OpenOptions`).
    pub engine: crate::io::Engine,
    pub direct: bool,
    /// At most this many NBD connections (default 512); when full, the connection idle
    /// longest is closed to admit a new one if it has been idle for `evict_idle` (30 s).
    pub max_connections: usize,
    pub evict_idle: Duration,
}

/// What a forwarded command returned.
pub struct Forwarded {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ServeOptions {
    /// Defaults: unix socket `POOL/nbd.sock`, every volume, commit every second.
    pub fn new(pool_dir: impl Into<PathBuf>) -> ServeOptions {
        ServeOptions {
            pool_dir: pool_dir.into(),
            socket: None,
            listen: None,
            exports: Vec::new(),
            read_only: false,
            allow_remote: false,
            commit_interval: Duration::from_secs(1),
            rewind: false,
            engine: crate::io::Engine::from_env(),
            direct: false,
            max_connections: server::MAX_CONNECTIONS,
            evict_idle: server::EVICT_IDLE,
        }
    }
}

/// Serve the pool until SIGINT/SIGTERM; then finish in-flight requests, commit, remove the
/// sockets and return Ok.
pub fn serve(opts: ServeOptions, handler: ControlHandler) -> std::io::Result<()> {
    server::install_signal_handlers()?;
    server::run(opts, handler, Arc::new(AtomicBool::new(false)), true)
}

/// Like [`serve`], but stops when `stop` becomes true instead of on signals (for embedding
/// and tests; installs no signal handlers).
pub fn serve_until(
    opts: ServeOptions,
    handler: ControlHandler,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    server::run(opts, handler, stop, false)
}

/// If a server holds the pool in `pool_dir`, run `argv` inside it over `POOL/control.sock`.
/// `Ok(None)` when no server is listening (no socket, or a stale one).
pub fn forward(pool_dir: &Path, argv: &[String]) -> std::io::Result<Option<Forwarded>> {
    control::forward(pool_dir, argv)
}
