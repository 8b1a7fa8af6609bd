//! The transmission phase of one connection: a reader thread that parses requests and a few
//! workers that execute them, so requests pipeline and replies may complete out of order.
//!
//! - Every request is validated before it touches the pool (magic, command, flags, range,
//!   payload size). A bad magic loses framing: hard disconnect. Everything else gets an
//!   error reply and the connection continues.
//! - Replies are written under one mutex, so chunks of different replies never interleave
//!   mid-message: built whole, or for a long read sent piece by piece with the mutex held.
//! - Memory is bounded twice: each connection by an in-flight byte budget, and the whole
//!   server by a global one shared by every connection ([`Budget`]). The reader takes both
//!   before it allocates a write's payload, a worker before it allocates a read buffer, and
//!   both count until the reply is sent. A read longer than `STREAM_PIECE` is read and sent
//!   a piece at a time, one such read per connection at once, so it holds one piece: a
//!   client that never reads its replies holds a few MiB, not its requests' length.
//! - A connection that holds budget and makes no progress — a client that accepts no reply
//!   bytes, or stops sending in the middle of a write's payload — keeps it only until it is
//!   dropped: after `WRITE_TIMEOUT`, or after `STALL_EVICT` when other connections are
//!   waiting for the global budget, or `STOP_GRACE` once the server is stopping.
//! - A connection whose reply could not be written is dead: its queued requests are dropped
//!   unexecuted (nobody could receive their replies), as nbdkit does. On shutdown readers
//!   stop dispatching even requests already buffered, so shutdown takes bounded time.
//! - A panic in a worker becomes an EIO reply; the poisoned pool lock then fails every later
//!   request (fail-stop) instead of committing half-updated state.

use super::budget::Budget;
use super::command::{error_reply, execute, invalid, read, STREAM_PIECE};
use super::handshake::Session;
use super::proto::*;
use super::shared::{Shared, Stream};
use super::stats::{Op, VolumeStats};
use crossbeam_channel::Receiver;
use std::io::{self, BufReader, Read, Write};
use std::net::Shutdown;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Workers a connection starts with.
const WORKERS: usize = 4;
/// Most workers of one connection: it starts another whenever a request finds every worker
/// busy. Requests that block on the disk (O_DIRECT, a cold page cache) need one worker each
/// to be in flight together: with four, a client at queue depth 16 got four.
const MAX_WORKERS: usize = 16;
/// Most such extra workers in the whole server (each is a thread).
const MAX_EXTRA_WORKERS: usize = 1024;
/// Request payloads and read buffers in flight per connection.
const CONN_BUDGET: u64 = 64 << 20;
/// A reply write (or a write's payload) that made no progress for this long ends the
/// connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// ... or for this long while other connections wait for the global budget.
const STALL_EVICT: Duration = Duration::from_secs(1);
/// ... or for this long once the server is stopping.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often a blocked reply write or payload read looks at those conditions.
const WRITE_POLL: Duration = Duration::from_millis(250);

struct Job {
    req: Request,
    payload: Vec<u8>,
    cost: u64,
    /// When its header was read (the start of its latency in `iostat`).
    arrived: Instant,
}

/// What the reader and the workers of one connection share.
struct Conn<'a> {
    shared: &'a Shared,
    writer: Mutex<Stream>,
    /// Taken (first come, first served) by the one read of this connection being sent a
    /// piece at a time: room for one piece.
    streaming: Budget,
    budget: Budget,
    /// A reply could not be written: the client is gone or stuck.
    dead: AtomicBool,
    /// When the connection last received a request or sent a reply (`Shared::now_ms`).
    last: &'a AtomicU64,
    /// Idle workers less queued requests: a request the reader queues when this is not
    /// positive would wait for a busy worker, so the reader starts another first. One
    /// counter, so the check cannot race: workers add one when they finish a job (or
    /// start), the reader takes one per job it queues.
    slack: AtomicIsize,
    /// The export's request counters.
    stats: Arc<VolumeStats>,
}

impl Conn<'_> {
    fn cancelled(&self) -> bool {
        self.dead.load(Ordering::SeqCst) || self.shared.stopping()
    }
    fn acquire(&self, n: u64) -> bool {
        let cancel = || self.cancelled();
        if !self.budget.acquire(n, &cancel) {
            return false;
        }
        if !self.shared.budget().acquire(n, &cancel) {
            self.budget.release(n);
            return false;
        }
        true
    }
    fn release(&self, n: u64) {
        self.shared.budget().release(n);
        self.budget.release(n);
    }
    fn kill(&self, w: &Stream) {
        self.dead.store(true, Ordering::SeqCst);
        // Wakes the reader, which stops dispatching.
        w.shutdown(Shutdown::Both);
    }

    /// A transfer that holds budget made no progress for `since`: time to drop the
    /// connection (see the module docs)?
    fn stalled_too_long(&self, since: Duration) -> bool {
        since >= WRITE_TIMEOUT
            || since >= STALL_EVICT && self.shared.budget().contended()
            || since >= STOP_GRACE && self.shared.stopping()
    }

    /// Write one whole reply.
    fn send(&self, out: &[u8]) -> io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.send_locked(&mut w, out)
    }

    /// Write `out` with the writer lock held. A client that accepts no bytes for too long
    /// kills the connection.
    fn send_locked(&self, w: &mut Stream, out: &[u8]) -> io::Result<()> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        let mut done = 0;
        let mut stalled: Option<Instant> = None;
        while done < out.len() {
            match w.write(&out[done..]) {
                Ok(0) => {
                    self.kill(w);
                    return Err(io::Error::from(io::ErrorKind::WriteZero));
                }
                Ok(n) => {
                    done += n;
                    stalled = None;
                    self.last.store(self.shared.now_ms(), Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    let since = stalled.get_or_insert_with(Instant::now).elapsed();
                    if self.stalled_too_long(since) {
                        self.kill(w);
                        return Err(e);
                    }
                }
                Err(e) => {
                    self.kill(w);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Fill `buf` from the client; false when the connection ends. Between requests a
    /// client may stay silent as long as it likes (this only wakes up to notice a stop),
    /// but in the middle of a payload (`holding`) it holds budget, and one that sends
    /// nothing for too long is dropped under the same rules as a stalled reply.
    fn recv(&self, r: &mut impl Read, buf: &mut [u8], holding: bool) -> bool {
        let mut done = 0;
        let mut stalled: Option<Instant> = None;
        while done < buf.len() {
            if self.cancelled() {
                return false;
            }
            match r.read(&mut buf[done..]) {
                Ok(0) => return false,
                Ok(n) => {
                    done += n;
                    stalled = None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    let since = stalled.get_or_insert_with(Instant::now).elapsed();
                    if holding && self.stalled_too_long(since) {
                        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
                        self.kill(&w);
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// Read and throw away `n` payload bytes (of a request refused before it was read).
    fn discard(&self, r: &mut impl Read, mut n: u64) -> bool {
        let mut scratch = [0u8; 16 << 10];
        while n > 0 {
            let k = n.min(scratch.len() as u64) as usize;
            if !self.recv(r, &mut scratch[..k], false) {
                return false;
            }
            n -= k as u64;
        }
        true
    }

    /// Send the reply to a long read a piece at a time (`STREAM_PIECE`), holding the
    /// writer for the whole reply.
    fn send_streamed(&self, sess: &Session, req: &Request) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let rest = read(
            self.shared.pool(),
            sess,
            req,
            Some(&mut |piece: &[u8]| self.send_locked(&mut w, piece)),
        );
        match rest {
            Ok(rest) => {
                let _ = self.send_locked(&mut w, &rest);
            }
            // Part of the reply went out and the rest cannot be given: framing is lost.
            Err(_) => self.kill(&w),
        }
    }
}

/// Run the transmission phase until the client disconnects, breaks framing, or the server
/// stops. Returns after every request read has been answered.
pub fn serve(shared: &Arc<Shared>, stream: Stream, sess: &Session, last: &AtomicU64) {
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    // Short timeouts: a blocked reply write or payload read wakes up to look at the
    // eviction rules.
    if writer.set_write_timeout(Some(WRITE_POLL)).is_err()
        || stream.set_read_timeout(Some(WRITE_POLL)).is_err()
    {
        return;
    }
    let conn = Conn {
        shared,
        writer: Mutex::new(writer),
        streaming: Budget::new(STREAM_PIECE as u64),
        budget: Budget::new(CONN_BUDGET),
        dead: AtomicBool::new(false),
        last,
        slack: AtomicIsize::new(0),
        stats: shared.io_stats().volume(sess.export.id, &sess.export.name),
    };
    // Every worker waits on the channel itself (no lock around the receiver): a request
    // wakes exactly one worker.
    let (tx, rx) = crossbeam_channel::bounded::<Job>(MAX_WORKERS);
    let extra = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let spawn = || {
            let (conn, rx) = (&conn, rx.clone());
            conn.slack.fetch_add(1, Ordering::SeqCst);
            let ok = std::thread::Builder::new()
                .name("nbd-worker".into())
                .spawn_scoped(scope, move || worker(conn, sess, &rx))
                .is_ok();
            if !ok {
                conn.slack.fetch_sub(1, Ordering::SeqCst);
            }
            ok
        };
        let workers = (0..WORKERS).filter(|_| spawn()).count();
        if workers == 0 {
            stream.shutdown(Shutdown::Both);
            return;
        }
        // Called by the reader when a request is about to wait for a worker.
        let mut grow = || {
            let mine = extra.load(Ordering::Relaxed);
            if workers + mine >= MAX_WORKERS {
                return;
            }
            let all = &conn.shared.extra_workers;
            if all.fetch_add(1, Ordering::Relaxed) >= MAX_EXTRA_WORKERS || !spawn() {
                all.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            extra.store(mine + 1, Ordering::Relaxed);
        };
        read_requests(&conn, sess, stream, &tx, &mut grow);
        drop(tx);
    });
    conn.shared
        .extra_workers
        .fetch_sub(extra.into_inner(), Ordering::Relaxed);
    conn.writer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .shutdown(Shutdown::Both);
}

/// The reader: parse requests and hand them to the workers until the client disconnects,
/// breaks framing, the connection dies, or the server stops.
fn read_requests(
    conn: &Conn,
    sess: &Session,
    stream: Stream,
    tx: &crossbeam_channel::Sender<Job>,
    grow: &mut dyn FnMut(),
) {
    let mut reader = BufReader::with_capacity(128 << 10, stream);
    while let Some(req) = read_header(conn, sess, &mut reader) {
        let arrived = Instant::now();
        if req.kind == CMD_DISC {
            break;
        }
        // With extended headers another command's payload is announced by a flag; a write
        // always carries `length` bytes, flag or not (the extension's text asks writers to
        // set it, but qemu 10 and libnbd do not, and a write means the same either way).
        // A payload nothing expects is skipped, to stay in sync, then refused.
        let payload_flag = sess.extended && req.flags & CMD_FLAG_PAYLOAD_LEN != 0;
        let refusal = match payload_flag {
            true if req.length > MAX_PAYLOAD as u64 => break, // the extension: hang up
            true if req.kind != CMD_WRITE => {
                if !conn.discard(&mut reader, req.length) {
                    break;
                }
                Some(format!("command {} takes no payload", req.kind))
            }
            _ if req.kind == CMD_WRITE && req.length > MAX_PAYLOAD as u64 => {
                if !conn.discard(&mut reader, req.length) {
                    break;
                }
                Some(format!(
                    "write of {} bytes exceeds the 32 MiB maximum",
                    req.length
                ))
            }
            _ => None,
        };
        if let Some(msg) = refusal {
            tracing::debug!(
                kind = req.kind,
                flags = req.flags,
                length = req.length,
                "refused: {msg}"
            );
            if conn
                .send(&error_reply(sess, sess.to(&req), EINVAL, &msg))
                .is_err()
            {
                break;
            }
            continue;
        }
        let mut req = req;
        req.flags &= !CMD_FLAG_PAYLOAD_LEN;
        // A write's payload is budgeted here, before it is allocated; read buffers by the
        // worker that allocates them.
        let cost = match req.kind {
            CMD_WRITE => req.length.max(1),
            _ => 0,
        };
        if cost > 0 && !conn.acquire(cost) {
            break;
        }
        let mut payload = Vec::new();
        if req.kind == CMD_WRITE {
            payload = vec![0u8; req.length as usize];
            if !conn.recv(&mut reader, &mut payload, true) {
                conn.release(cost);
                break;
            }
        }
        if conn.slack.fetch_sub(1, Ordering::SeqCst) <= 0 {
            // No idle worker is left for this job: start one (up to MAX_WORKERS).
            grow();
        }
        let job = Job {
            req,
            payload,
            cost,
            arrived,
        };
        if let Err(e) = tx.send(job) {
            conn.release(e.into_inner().cost);
            break;
        }
    }
}

/// The next request header, compact or extended as negotiated; `None` at the end of the
/// stream or on a bad magic (framing is lost: hard disconnect).
fn read_header(conn: &Conn, sess: &Session, reader: &mut impl Read) -> Option<Request> {
    let req = if sess.extended {
        let mut hdr = [0u8; EXT_REQUEST_SIZE];
        if !conn.recv(reader, &mut hdr, false) {
            return None;
        }
        Some(Request::decode_ext(&hdr)).filter(|r| r.magic == EXTENDED_REQUEST_MAGIC)
    } else {
        let mut hdr = [0u8; REQUEST_SIZE];
        if !conn.recv(reader, &mut hdr, false) {
            return None;
        }
        Some(Request::decode(&hdr)).filter(|r| r.magic == REQUEST_MAGIC)
    };
    conn.last.store(conn.shared.now_ms(), Ordering::Relaxed);
    req
}

fn worker(conn: &Conn, sess: &Session, rx: &Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        let cost = job.cost;
        // A dead connection's queue is dropped: nobody could receive the replies.
        if !conn.dead.load(Ordering::SeqCst) {
            respond(conn, sess, job);
        }
        if cost > 0 {
            conn.release(cost);
        }
        conn.slack.fetch_add(1, Ordering::SeqCst);
    }
}

/// Execute one request and send its reply. A read takes its buffer's budget first (a long
/// one, sent piece by piece, one piece's, and only one such read per connection at once).
fn respond(conn: &Conn, sess: &Session, job: Job) {
    let req = job.req;
    let long_read =
        req.kind == CMD_READ && req.length as usize > STREAM_PIECE && invalid(sess, &req).is_none();
    let cancel = || conn.cancelled();
    if long_read && !conn.streaming.acquire(STREAM_PIECE as u64, &cancel) {
        return;
    }
    let cost = match req.kind {
        CMD_READ => req.length.min(STREAM_PIECE as u64).max(1),
        _ => 0,
    };
    if cost > 0 && !conn.acquire(cost) {
        if long_read {
            conn.streaming.release(STREAM_PIECE as u64);
        }
        return;
    }
    if long_read {
        if catch_unwind(AssertUnwindSafe(|| conn.send_streamed(sess, &req))).is_err() {
            // Some of the reply may have gone out: the connection cannot go on.
            let w = conn.writer.lock().unwrap_or_else(|e| e.into_inner());
            conn.kill(&w);
        }
    } else {
        let out = catch_unwind(AssertUnwindSafe(|| {
            execute(conn.shared, sess, &req, &job.payload)
        }))
        .unwrap_or_else(|_| {
            error_reply(sess, sess.to(&req), EIO, "internal error in thinpool serve")
        });
        drop(job.payload);
        let _ = conn.send(&out);
    }
    if cost > 0 {
        conn.release(cost);
    }
    if long_read {
        conn.streaming.release(STREAM_PIECE as u64);
    }
    let op = match req.kind {
        CMD_READ => Some(Op::Read),
        CMD_WRITE => Some(Op::Write),
        CMD_TRIM | CMD_WRITE_ZEROES => Some(Op::Discard),
        CMD_FLUSH => Some(Op::Flush),
        _ => None,
    };
    if let Some(op) = op {
        let bytes = if matches!(op, Op::Flush) {
            0
        } else {
            req.length
        };
        conn.stats.record(op, bytes, job.arrived.elapsed());
    }
}
