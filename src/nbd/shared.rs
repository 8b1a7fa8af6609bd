//! State every thread of a server shares: the pool, the export list, the live connections
//! (for shutdown and idle eviction), the attach counts the control socket asks about and the
//! server-wide byte budget. It sits at the bottom of `nbd/`: handshake, transmission,
//! control and the accept loop (`server`) all use it, and it uses none of them.

use super::budget::{Budget, GLOBAL_BUDGET};
use super::stats::IoStats;
use crate::pool::{Pool, SharedPool, VolumeId};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Most simultaneous NBD connections; more are closed at once (each costs a few threads).
pub const MAX_CONNECTIONS: usize = 512;
/// When the server is full, a connection idle this long is closed to admit a new one.
pub const EVICT_IDLE: Duration = Duration::from_secs(30);

/// A live connection as the accept loop sees it.
struct ConnEntry {
    stream: Stream,
    /// Milliseconds since `Shared::epoch` of its last request or reply.
    last: Arc<AtomicU64>,
}
/// An export as a client sees it.
#[derive(Debug, Clone)]
pub struct Export {
    pub id: VolumeId,
    pub name: String,
    pub size: u64,
    pub read_only: bool,
}

/// A client connection over either transport.
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    /// The plaintext end of a TLS session over one of the others (src/nbd/tls.rs).
    Tls(Box<super::tls::TlsEnd>),
}

impl Stream {
    /// Who is at the other end, for logs: `unix` or the TCP peer address.
    pub fn peer(&self) -> String {
        match self {
            Stream::Unix(_) => "unix".into(),
            Stream::Tcp(t) => t
                .peer_addr()
                .map_or_else(|_| "tcp".into(), |a| a.to_string()),
            Stream::Tls(t) => t.socket.peer(),
        }
    }
    /// True once STARTTLS has wrapped the connection.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Tls(t) => Stream::Tls(Box::new(super::tls::TlsEnd {
                local: t.local.try_clone()?,
                socket: t.socket.try_clone()?,
            })),
        })
    }
    pub fn shutdown(&self, how: Shutdown) {
        // Already-closed sockets report ENOTCONN; there is nothing left to do then.
        let _ = match self {
            Stream::Unix(s) => s.shutdown(how),
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Tls(t) => {
                t.socket.shutdown(how);
                t.local.shutdown(how)
            }
        };
    }
    /// Timeouts apply to the reads and writes the server makes: on the plaintext end of a
    /// TLS session, not its socket (see `end_handshake`).
    pub(super) fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Tls(e) => e.local.set_read_timeout(t),
        }
    }
    pub(super) fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(t),
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Tls(e) => e.local.set_write_timeout(t),
        }
    }
    /// Negotiation is over: no read timeout any more, on the socket under TLS too (its
    /// pump reads it with the handshake's timeout until now).
    pub(super) fn end_handshake(&self) -> io::Result<()> {
        if let Stream::Tls(e) = self {
            e.socket.set_read_timeout(None)?;
        }
        self.set_read_timeout(None)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(t) => t.local.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(t) => t.local.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// State every thread of the server shares.
pub struct Shared {
    pool: SharedPool,
    exports: Vec<String>,
    read_only: bool,
    stop: AtomicBool,
    /// Open NBD connections per volume (for refusing `remove`/`rollback`).
    attached: Mutex<HashMap<VolumeId, usize>>,
    /// Live connections: their streams (to wake their readers at shutdown, or to close the
    /// longest idle one when the server is full) and when each was last active.
    conns: Mutex<HashMap<u64, ConnEntry>>,
    /// At most this many connections; when full, one idle for `evict_idle` makes room.
    max_connections: usize,
    evict_idle: Duration,
    /// The origin of the activity timestamps.
    epoch: Instant,
    next_conn: AtomicU64,
    handler: ControlHandler,
    /// In-flight request bytes of every connection together.
    budget: Budget,
    /// Workers connections started beyond their first `WORKERS` (bounded server-wide).
    pub(super) extra_workers: AtomicUsize,
    /// Request and commit counters (`thinpool iostat`).
    io: IoStats,
    /// STARTTLS: offered or required, with the server's certificates (`serve --tls`).
    tls: Option<super::tls::Tls>,
}

impl Shared {
    /// The shared state of a server around `pool`: at most `max_connections` (at least one)
    /// at once, evicting one idle for `evict_idle` when full.
    pub(super) fn new(
        pool: Pool,
        exports: Vec<String>,
        read_only: bool,
        max_connections: usize,
        evict_idle: Duration,
        handler: ControlHandler,
    ) -> Shared {
        Shared {
            io: IoStats::new(pool.stats()),
            pool: SharedPool::new(pool),
            exports,
            read_only,
            stop: AtomicBool::new(false),
            attached: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            max_connections: max_connections.max(1),
            evict_idle,
            epoch: Instant::now(),
            next_conn: AtomicU64::new(0),
            handler,
            budget: Budget::new(GLOBAL_BUDGET),
            extra_workers: AtomicUsize::new(0),
            tls: None,
        }
    }

    /// Offer (or require) TLS with these certificates; `TlsMode::Off` offers none.
    pub(super) fn with_tls(mut self, tls: Option<super::tls::Tls>) -> Shared {
        self.tls = tls.filter(|t| t.mode != super::tls::TlsMode::Off);
        self
    }

    /// The TLS policy, when STARTTLS is offered.
    pub(super) fn tls(&self) -> Option<&super::tls::Tls> {
        self.tls.as_ref()
    }

    /// The shared state of a server around `pool`, with no listener and no control
    /// handler (in-process fuzzing, see `src/fuzzing.rs`).
    pub(crate) fn detached(pool: Pool, read_only: bool) -> Shared {
        Shared::new(
            pool,
            Vec::new(),
            read_only,
            MAX_CONNECTIONS,
            EVICT_IDLE,
            Box::new(|_, _, _, _, err| {
                err.extend_from_slice(b"no control commands here\n");
                2
            }),
        )
    }

    /// Start the shutdown: readers stop taking requests (see `stopping`) and are woken from
    /// their blocking reads.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            c.stream.shutdown(Shutdown::Read);
        }
    }

    /// The request and commit counters.
    pub(super) fn io_stats(&self) -> &IoStats {
        &self.io
    }

    /// The control command runner.
    pub(super) fn handler(&self) -> &ControlHandler {
        &self.handler
    }

    /// Admit a new connection: registers (a clone of) its stream and returns its id and
    /// activity stamp, or says why it was refused (the server is full and no connection has
    /// been idle for `evict_idle`).
    pub(super) fn admit(&self, s: &Stream) -> Result<(u64, Arc<AtomicU64>), String> {
        if self.live_connections() >= self.max_connections && !self.evict_one_idle() {
            return Err(format!(
                "too many connections ({}, none idle for {:?}); refusing one",
                self.max_connections, self.evict_idle
            ));
        }
        let clone = s
            .try_clone()
            .map_err(|e| format!("cannot register a connection: {e}"))?;
        let id = self.next_conn.fetch_add(1, Ordering::SeqCst);
        let last = Arc::new(AtomicU64::new(self.now_ms()));
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            ConnEntry {
                stream: clone,
                last: last.clone(),
            },
        );
        Ok((id, last))
    }

    /// A connection admitted by `admit` has ended.
    pub(super) fn forget(&self, id: u64) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The server-wide in-flight byte budget.
    pub(super) fn budget(&self) -> &Budget {
        &self.budget
    }

    /// The pool. Data requests go straight to it (they take the metadata lock only around
    /// lookups, see `pool/shared.rs`); a panic while it was locked makes every later request
    /// fail with EIO (the in-memory state may be half-updated and must not be committed).
    pub fn pool(&self) -> &SharedPool {
        &self.pool
    }

    fn allowed(&self, name: &str) -> bool {
        self.exports.is_empty() || self.exports.iter().any(|e| e == name)
    }

    /// Names a client may attach to.
    pub fn export_names(&self) -> Vec<String> {
        let Ok(mut pool) = self.pool.lock() else {
            return Vec::new();
        };
        let mut names = pool.volume_names().unwrap_or_default();
        names.retain(|n| self.allowed(n));
        names
    }

    /// Resolve an export name. The empty name means the only export, if there is one.
    pub fn find_export(&self, name: &str) -> Option<Export> {
        let name = if name.is_empty() {
            let names = self.export_names();
            if names.len() != 1 {
                return None;
            }
            names.into_iter().next()?
        } else {
            name.to_string()
        };
        if !self.allowed(&name) {
            return None;
        }
        let (id, d) = self.pool.lock().ok()?.find(&name).ok()?;
        Some(Export {
            id,
            name: d.name,
            size: d.size,
            read_only: d.read_only || self.read_only,
        })
    }

    /// The volume a `thinpool:changed:SNAP` context of `export` compares with: SNAP when a
    /// client of this server may see it, i.e. it is exported, or it is a snapshot of
    /// `export` (whose extents a client of `export` may compare against).
    pub fn changed_base(&self, export: &str, snap: &str) -> Option<VolumeId> {
        let mut pool = self.pool.lock().ok()?;
        let (id, d) = pool.find(snap).ok()?;
        let (exp, _) = pool.find(export).ok()?;
        (self.allowed(snap) || d.origin == Some(exp)).then_some(id)
    }

    pub fn attached(&self, id: VolumeId) -> usize {
        let a = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        a.get(&id).copied().unwrap_or(0)
    }

    pub(super) fn attach(&self, id: VolumeId) {
        // Counted under the pool lock, so a control command never sees a half-made attach.
        let _pool = self.pool.lock();
        let mut a = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        *a.entry(id).or_insert(0) += 1;
    }

    pub(super) fn detach(&self, id: VolumeId) {
        let mut a = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = a.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                a.remove(&id);
            }
        }
    }

    /// Milliseconds since the server started (connection activity stamps).
    pub(super) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The server is full: close the connection idle longest, if it has been idle for
    /// `evict_idle` (a client that keeps a connection open and does nothing cannot lock
    /// others out). Returns whether one was closed.
    fn evict_one_idle(&self) -> bool {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.now_ms();
        let idle = conns
            .iter()
            .map(|(id, c)| (id, c, now.saturating_sub(c.last.load(Ordering::Relaxed))))
            .max_by_key(|&(_, _, idle)| idle);
        match idle {
            Some((id, c, ms)) if ms >= self.evict_idle.as_millis() as u64 => {
                tracing::warn!(
                    "closing connection {id}, idle for {:.1} s, to admit a new one ({} \
                     connections)",
                    ms as f64 / 1000.0,
                    self.max_connections
                );
                // Its stamp moves on so a second new client evicts another one.
                c.last.store(now, Ordering::Relaxed);
                c.stream.shutdown(Shutdown::Both);
                true
            }
            _ => false,
        }
    }

    fn live_connections(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
