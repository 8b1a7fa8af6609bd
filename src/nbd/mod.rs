//! NBD server frontend: one export per volume or snapshot, plus the control socket through
//! which other `thinpool` processes run commands inside a serving process.
//!
//! Files, bottom up: [`proto`] (wire constants and encoders), `budget` (in-flight byte
//! budgets), `shared` (the state every server thread shares), `handshake` (fixed newstyle
//! option negotiation), `stats` (request counters for `iostat`), `command` (one request:
//! validation, execution, reply),
//! `transmission` (request loop of one connection), `control` (control
//! socket), `server` (listeners, commit timer, signals, shutdown). Each uses only those
//! before it. See `docs/nbd.md`.

mod budget;
pub(crate) mod command;
mod control;
pub(crate) mod handshake;
pub mod proto;
pub(crate) mod server;
pub(crate) mod shared;
pub mod stats;
pub mod tls;
pub(crate) mod transmission;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub use control::Forwarded;
pub use server::ServeOptions;
pub use shared::{ControlHandler, EVICT_IDLE, MAX_CONNECTIONS};
pub use tls::{TlsFiles, TlsMode};

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
