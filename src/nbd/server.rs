//! The serving process: listeners (unix socket, optional loopback TCP, control socket), one
//! thread per connection (handshake, then the request reader; its workers are started by
//! `transmission`), the commit timer, the writeback thread and the shutdown sequence.
//!
//! Invariants:
//! - The pool is a [`SharedPool`] (src/pool/shared.rs): requests run in parallel, and the
//!   data I/O of reads and writes runs outside the metadata lock (a TRIM holds it throughout,
//!   docs/design.md §4); a control command takes the gate exclusively (after syncing the data
//!   file while requests still flow), so it runs once the requests in flight have drained and
//!   sees every write completed before it (a snapshot taken through the control socket
//!   contains them).
//! - A FLUSH or FUA reply is sent only after `SharedPool::commit` returned Ok (group commit:
//!   the first commit that starts after the request arrived). The timer commits every
//!   `commit_interval` when metadata changed (new mappings, discards; like dm-thin's periodic
//!   commit); overwrites in place change no mapping and are synced only by a FLUSH/FUA, a
//!   management command or shutdown.
//! - Shutdown (SIGINT/SIGTERM, or the caller's stop flag): stop accepting, remove the
//!   sockets, stop reading new requests (requests still buffered are not dispatched), finish
//!   and answer the requests already handed to workers, then commit.

use super::control;
use super::handshake;
use super::shared::{ControlHandler, EVICT_IDLE, MAX_CONNECTIONS};
use super::shared::{Shared, Stream};
use super::tls::{Tls, TlsFiles, TlsMode};
use super::transmission;
use crate::pool::{OpenOptions, Pool, PoolError};
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub pool_dir: PathBuf,
    /// Unix socket path (default `POOL/nbd.sock`).
    pub socket: Option<PathBuf>,
    /// TCP address (`ADDR:PORT`); loopback only unless `allow_remote` with TLS required,
    /// or `allow_plaintext_remote`.
    pub listen: Option<String>,
    /// Volumes to export (empty: all).
    pub exports: Vec<String>,
    pub read_only: bool,
    pub allow_remote: bool,
    pub allow_plaintext_remote: bool,
    /// STARTTLS: off, offered or required; `tls` names the certificates (needed unless off).
    pub tls_mode: TlsMode,
    pub tls: Option<TlsFiles>,
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
    /// Low-space warnings and data autoextend (`pool::LowSpace`; default: none).
    pub low_space: crate::pool::LowSpace,
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
            allow_plaintext_remote: false,
            tls_mode: TlsMode::Off,
            tls: None,
            commit_interval: Duration::from_secs(1),
            rewind: false,
            engine: crate::io::Engine::from_env(),
            direct: false,
            max_connections: MAX_CONNECTIONS,
            evict_idle: EVICT_IDLE,
            low_space: Default::default(),
        }
    }
}

/// A client gets this long to finish negotiating.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that accepts no reply bytes for this long is dropped, so it cannot pin a worker
/// (or hold up shutdown) forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the data file's dirty pages are put under writeback (see
/// `SharedPool::writeback`).
const WRITEBACK_EVERY: Duration = Duration::from_millis(100);
/// How often the accept loop looks at the stop flags.
const POLL: Duration = Duration::from_millis(10);

/// Route SIGINT and SIGTERM to a flag the accept loop polls.
pub fn install_signal_handlers() -> io::Result<()> {
    crate::io::sys::install_stop_signals()
}

pub fn signalled() -> bool {
    crate::io::sys::stop_requested()
}

/// A unix socket this process bound. Only the socket it made is removed at shutdown: if
/// something else has taken the path since, it is left alone.
struct BoundSocket {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket this process created.
    id: (u64, u64),
}

impl BoundSocket {
    fn remove(&self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.file_type().is_socket() && (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// (device, inode) of what `path` names after symlinks, if it exists.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Make room for a socket at `path`: nothing there, or a stale socket (one nobody accepts
/// on), which is removed. Anything else — a regular file, a directory, a symlink, a device,
/// a socket a live server accepts on — is refused: a server never deletes what it did not
/// create (docs/nbd.md, "Sockets").
fn clear_stale_socket(path: &Path) -> io::Result<()> {
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    if !m.file_type().is_socket() {
        let what = if m.is_symlink() {
            "a symlink"
        } else if m.is_dir() {
            "a directory"
        } else if m.is_file() {
            "a regular file"
        } else {
            "a special file"
        };
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket ({what}); refusing to replace it: remove it                  yourself or choose another --socket",
                path.display()
            ),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is in use by another server", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            // A socket left behind by a server that died. Remove it only if it is still
            // the same socket (nothing replaced it in between).
            let now = std::fs::symlink_metadata(path)?;
            if now.file_type().is_socket() && (now.dev(), now.ino()) == (m.dev(), m.ino()) {
                std::fs::remove_file(path)?;
            }
            Ok(())
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("{} exists and cannot be checked: {e}", path.display()),
        )),
    }
}

/// Bind a unix socket readable only by its owner. It is bound under a temporary name and
/// renamed into place, so the final path never exists with looser permissions and appears
/// only once it accepts connections.
fn bind_unix(path: &Path) -> io::Result<BoundSocket> {
    clear_stale_socket(path)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".tmp{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let tmp = PathBuf::from(tmp);
    // bind(2) never replaces an existing file: a name collision is an error, not a loss.
    let l = UnixListener::bind(&tmp)
        .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", tmp.display())))?;
    let res = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|_| std::fs::symlink_metadata(&tmp))
        .and_then(|m| {
            // rename(2) would replace whatever appeared at `path` since it was checked;
            // link(2) refuses to, so the socket is linked into place and the temporary
            // name unlinked.
            std::fs::hard_link(&tmp, path)
                .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", path.display())))?;
            Ok((m.dev(), m.ino()))
        });
    let _ = std::fs::remove_file(&tmp);
    let id = res?;
    l.set_nonblocking(true)?;
    Ok(BoundSocket {
        listener: l,
        path: path.to_path_buf(),
        id,
    })
}

/// Refuse an NBD socket path that names one of the pool's own files or its control socket.
fn check_socket_path(pool_dir: &Path, path: &Path, ctl_path: &Path) -> io::Result<()> {
    let target = file_id(path);
    for name in ["metadata", "data"] {
        let own = pool_dir.join(name);
        if same_path(path, &own) || (target.is_some() && target == file_id(&own)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "--socket {} is the pool's own {name} file; refusing to touch it",
                    path.display()
                ),
            ));
        }
    }
    if same_path(path, ctl_path) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--socket {} is the server's control socket; choose another path",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// True when `a` and `b` name the same directory entry (their parents resolved).
fn same_path(a: &Path, b: &Path) -> bool {
    let entry = |p: &Path| -> Option<PathBuf> {
        let abs = std::path::absolute(p).ok()?;
        let parent = abs.parent()?.canonicalize().ok()?;
        Some(parent.join(abs.file_name()?))
    };
    matches!((entry(a), entry(b)), (Some(x), Some(y)) if x == y)
}

/// The TLS policy `opts` asks for, with its certificates loaded (errors name the file).
fn load_tls(opts: &ServeOptions) -> io::Result<Option<Tls>> {
    let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
    match (opts.tls_mode, &opts.tls) {
        (TlsMode::Off, None) => Ok(None),
        (TlsMode::Off, Some(_)) => Err(invalid(
            "--tls off with --tls-cert: drop the certificates or use --tls on|require",
        )),
        (_, None) => Err(invalid("--tls on|require needs --tls-cert and --tls-key")),
        (mode, Some(files)) => Tls::load(mode, files).map(Some),
    }
}

/// Parse and check `--listen`: loopback only unless remote access was allowed, and then
/// only with TLS required unless plain text was allowed too.
fn bind_tcp(addr: &str, opts: &ServeOptions) -> io::Result<TcpListener> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("--listen {addr}: no address"),
        ));
    }
    if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        let why = if !(opts.allow_remote || opts.allow_plaintext_remote) {
            Some(
                "pass --allow-remote (with --tls require and certificates) to serve other \
                 hosts",
            )
        } else if opts.tls_mode != TlsMode::Require && !opts.allow_plaintext_remote {
            Some(
                "without --tls require, anyone who can reach it reads and writes every \
                 exported volume in plain text: use --tls require with --tls-cert and \
                 --tls-key, or pass --allow-plaintext-remote",
            )
        } else {
            None
        };
        if let Some(why) = why {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "--listen {addr}: {} is not a loopback address; {why}",
                    a.ip()
                ),
            ));
        }
    }
    let l = TcpListener::bind(&addrs[..])?;
    l.set_nonblocking(true)?;
    Ok(l)
}

fn pool_err(e: crate::pool::PoolError) -> io::Error {
    io::Error::other(e.to_string())
}

/// Serve until `stop` is set (or a signal arrived, when `use_signals`).
pub fn run(
    opts: ServeOptions,
    handler: ControlHandler,
    stop: Arc<AtomicBool>,
    use_signals: bool,
) -> io::Result<()> {
    let open = OpenOptions {
        rewind: opts.rewind,
        engine: opts.engine,
        direct: opts.direct,
        ..OpenOptions::default()
    };
    let mut pool = Pool::open(&opts.pool_dir, &open).map_err(pool_err)?;
    if let Some(r) = pool.open_report().and_then(|r| r.rewound()) {
        tracing::warn!(seq = r.chosen, "rewound: {r}");
    }
    pool.set_low_space(opts.low_space);
    if pool.is_read_only() {
        return Err(io::Error::other(format!(
            "pool {} opened read-only; cannot serve it",
            opts.pool_dir.display()
        )));
    }
    // A mistyped --export would otherwise serve nothing and fail only at a client's GO.
    for name in &opts.exports {
        pool.volume_id(name).map_err(pool_err)?;
    }
    let tls = load_tls(&opts)?;
    let tcp = match &opts.listen {
        Some(a) => Some(bind_tcp(a, &opts)?),
        None => None,
    };
    let nbd_path = opts
        .socket
        .clone()
        .unwrap_or_else(|| opts.pool_dir.join("nbd.sock"));
    let ctl_path = opts.pool_dir.join(control::SOCKET_NAME);
    check_socket_path(&opts.pool_dir, &nbd_path, &ctl_path)?;
    let nbd_sock = bind_unix(&nbd_path)?;
    let ctl_sock = match bind_unix(&ctl_path) {
        Ok(l) => l,
        Err(e) => {
            nbd_sock.remove();
            return Err(e);
        }
    };
    let (nbd, ctl) = (&nbd_sock.listener, &ctl_sock.listener);
    let shared = Arc::new(
        Shared::new(
            pool,
            opts.exports.clone(),
            opts.read_only,
            opts.max_connections,
            opts.evict_idle,
            handler,
        )
        .with_tls(tls.clone()),
    );
    // Request buffers go back to the system when freed, so memory falls when clients go.
    crate::io::sys::return_large_allocations();
    let mut what = format!("unix:{}", nbd_path.display());
    if let Some(t) = &tcp {
        what += &format!(" and tcp:{}", t.local_addr()?);
    }
    tracing::info!(
        pool = %opts.pool_dir.display(),
        commit_interval_ms = opts.commit_interval.as_millis() as u64,
        tls = ?opts.tls_mode,
        client_certs = tls.as_ref().is_some_and(|t| t.client_certs()),
        "exporting {} on {what} (control: {})",
        if opts.exports.is_empty() {
            "all volumes".to_string()
        } else {
            opts.exports.join(", ")
        },
        ctl_path.display()
    );

    let timer = {
        let shared = shared.clone();
        let every = opts.commit_interval.max(Duration::from_millis(1));
        std::thread::Builder::new()
            .name("nbd-commit".into())
            .spawn(move || commit_timer(&shared, every))?
    };
    let writeback = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("nbd-writeback".into())
            .spawn(move || {
                let mut last = 0;
                while !shared.stopping() {
                    std::thread::sleep(WRITEBACK_EVERY);
                    shared.pool().writeback(&mut last);
                }
            })?
    };

    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    while !(stop.load(Ordering::SeqCst) || use_signals && signalled()) {
        let mut idle = true;
        loop {
            match nbd.accept() {
                Ok((s, _)) => {
                    idle = false;
                    spawn_connection(&shared, Stream::Unix(s), &mut threads);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("accept on {}: {e}", nbd_path.display());
                    break;
                }
            }
        }
        if let Some(t) = &tcp {
            loop {
                match t.accept() {
                    Ok((s, _)) => {
                        idle = false;
                        let _ = s.set_nodelay(true);
                        spawn_connection(&shared, Stream::Tcp(s), &mut threads);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!("accept on tcp: {e}");
                        break;
                    }
                }
            }
        }
        loop {
            match ctl.accept() {
                Ok((s, _)) => {
                    idle = false;
                    let shared = shared.clone();
                    if let Ok(h) = std::thread::Builder::new()
                        .name("nbd-control".into())
                        .spawn(move || control::serve_one(&shared, s))
                    {
                        threads.push(h);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("accept on control socket: {e}");
                    break;
                }
            }
        }
        threads.retain(|h| !h.is_finished());
        if idle {
            std::thread::sleep(POLL);
        }
    }

    // Shutdown: no new connections; readers see EOF, workers finish what was read.
    shared.stop();
    drop(tcp);
    nbd_sock.remove();
    ctl_sock.remove();
    drop(nbd_sock);
    drop(ctl_sock);
    for h in threads {
        let _ = h.join();
    }
    let _ = timer.join();
    let _ = writeback.join();
    let res = match shared.pool().commit() {
        Err(PoolError::Poisoned) => Err(io::Error::other(
            "an internal error (panic) left the pool unusable; nothing committed since the \
             last flush",
        )),
        r => r.map_err(pool_err),
    };
    tracing::info!("stopped");
    res
}

fn spawn_connection(shared: &Arc<Shared>, s: Stream, threads: &mut Vec<JoinHandle<()>>) {
    let (id, last) = match shared.admit(&s) {
        Ok(x) => x,
        Err(why) => {
            tracing::warn!("{why}");
            return;
        }
    };
    let sh = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("nbd-conn-{id}"))
        .spawn(move || {
            connection_tracked(&sh, s, &last);
            sh.forget(id);
        });
    match spawned {
        Ok(h) => threads.push(h),
        Err(e) => {
            tracing::error!("cannot start a connection thread: {e}");
            shared.forget(id);
        }
    }
}

pub(crate) fn connection(shared: &Arc<Shared>, s: Stream) {
    connection_tracked(shared, s, &AtomicU64::new(0))
}

/// One connection: handshake, then transmission; `last` is kept at the time of its last
/// activity (see `Shared::evict_one_idle`).
fn connection_tracked(shared: &Arc<Shared>, mut s: Stream, last: &AtomicU64) {
    if s.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).is_err()
        || s.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let mut start = |s: &mut Stream, tls: &super::tls::Tls| tls.start(s);
    let session = match handshake::negotiate(&mut s, shared, &mut start) {
        Ok(Some(sess)) => sess,
        Ok(None) | Err(_) => {
            s.shutdown(Shutdown::Both);
            return;
        }
    };
    if s.end_handshake().is_err() {
        return;
    }
    let id = session.export.id;
    let peer = s.peer();
    tracing::info!(export = %session.export.name, %peer, tls = s.is_tls(), structured = session.structured, extended_headers = session.extended, "client attached");
    let t0 = std::time::Instant::now();
    shared.attach(id);
    last.store(shared.now_ms(), Ordering::Relaxed);
    transmission::serve(shared, s, &session, last);
    shared.detach(id);
    tracing::info!(
        export = %session.export.name,
        %peer,
        secs = t0.elapsed().as_secs_f64(),
        "client detached"
    );
    crate::io::sys::trim_heap();
}

fn commit_timer(shared: &Shared, every: Duration) {
    let mut last = Instant::now();
    let mut reported = false;
    while !shared.stopping() {
        std::thread::sleep(POLL.min(every));
        if last.elapsed() < every {
            continue;
        }
        last = Instant::now();
        if let Err(e) = shared.pool().watch_space() {
            if !reported {
                tracing::error!("low-space check failed: {e}");
                reported = true;
            }
        }
        if let Err(e) = shared.pool().periodic_commit() {
            if matches!(e, PoolError::Poisoned) {
                return;
            }
            if !reported {
                tracing::error!("periodic commit failed: {e}");
                reported = true;
            }
        }
    }
}
