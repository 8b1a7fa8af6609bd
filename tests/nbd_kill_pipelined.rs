//! SIGKILL soak with pipelining clients: nothing that NBD promised durable is lost.
//!
//! Each round starts the real `thinpool serve` on one of two pools (4 KiB and 64 KiB
//! blocks, a volume of 4096 slots of 4 KiB each) and attaches 1-4 connections to the one
//! volume. Each connection has a writer thread that sends WRITEs (some with FUA), a few
//! WRITE_ZEROES and FLUSHes without waiting for replies, up to a queue depth of 8-64, and a
//! reader thread that matches replies by handle. Connections either own distinct slots or
//! share all the round's slots; a connection never has two writes to one slot in flight at
//! once, but in shared rounds writes of different connections to one slot may overlap. After
//! a seeded random delay the main thread SIGKILLs the server. Then `thinpool check` must
//! pass and the volume, read with `thinpool read`, must match the model of what NBD
//! promises:
//!
//! - Events are ordered by one logical clock: a request is stamped just before its first
//!   byte is sent, a reply just after it was read.
//! - A FLUSH covers every write whose reply was received before the FLUSH was sent (not
//!   writes still in flight then), on every connection (the server advertises
//!   CAN_MULTI_CONN, which the test asserts); a FUA write is durable once its reply arrives.
//! - A write `w` is *superseded* if a durable write `d` to the same slot was sent after
//!   `w`'s reply arrived (`w` happened before `d`). What the pool held at the end of the
//!   previous round is durable and happened before every write of this round.
//! - NBD does not make a 4 KiB write atomic, so every 512-byte sector is judged on its own:
//!   it must hold that slot's and that sector's pattern of a write (or zeros of a
//!   WRITE_ZEROES) to this slot that is not superseded, or the previous round's content if
//!   no write to the slot became durable. Anything else (an older value, another slot's
//!   data, garbage) is a violation.
//!
//! Overwrites in place survive a SIGKILL without any commit (they are in the page cache), so
//! most rounds make the writes need one: a snapshot taken before the server starts (and in
//! some rounds one or two more taken through the server mid-round) makes every block's first
//! write a copy to a new block that only a commit maps, and a round writes either a few hot
//! slots or up to all 4096. The snapshot taken before the round must read back exactly as the
//! volume was; afterwards every snapshot is removed, so later rounds free and reuse blocks.
//! The server's `--commit-interval` (20 ms, 1 s, 600 s) and `--io-engine` (auto, sync) vary
//! per round. `NBD_KILL_ROUNDS` (default 20) and `NBD_KILL_SEED` choose the soak; one
//! summary line goes to stderr. Violations are all counted and printed (the first eight per
//! round) before the test fails with the first, naming its round, seed and parameters.

#[path = "common/nbd.rs"]
mod nbd_util;
use nbd_util::raw::{Raw, REQ_MAGIC, SIMPLE};
use nbd_util::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_thinpool");
const SECTOR: usize = 512;
const SLOT: usize = 4096;
const SECTORS: usize = SLOT / SECTOR;
const SLOTS: u64 = 4096;

const CMD_WRITE: u16 = 1;
const CMD_FLUSH: u16 = 3;
const CMD_WRITE_ZEROES: u16 = 6;
const FLAG_FUA: u16 = 1;
const TF_SEND_FLUSH: u16 = 1 << 2;
const TF_SEND_FUA: u16 = 1 << 3;
const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
const TF_CAN_MULTI_CONN: u16 = 1 << 8;

/// One 64-bit word of sector `sector` of write `id` to `slot`: the sector repeats
/// `[id, slot, sector, check]`, so a sector names its write, slot and position.
fn word(id: u64, slot: u64, sector: usize, k: usize) -> u64 {
    match k % 4 {
        0 => id,
        1 => slot,
        2 => sector as u64,
        _ => id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (slot << 20) ^ sector as u64 ^ 0x5eed,
    }
}

/// The content of write `id` (ids are unique over the whole soak; 0 is never used).
fn content(id: u64, slot: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(SLOT);
    for s in 0..SECTORS {
        for k in 0..SECTOR / 8 {
            b.extend_from_slice(&word(id, slot, s, k).to_le_bytes());
        }
    }
    b
}

/// What one sector holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sector {
    Zeros,
    /// The pattern of write `id` for sector `sector` of `slot`.
    Id {
        id: u64,
        slot: u64,
        sector: usize,
    },
    Garbage,
}

fn decode(b: &[u8]) -> Sector {
    if b.iter().all(|&x| x == 0) {
        return Sector::Zeros;
    }
    let w = |k: usize| u64::from_le_bytes(b[k * 8..k * 8 + 8].try_into().unwrap());
    let (id, slot, sector) = (w(0), w(1), w(2) as usize);
    if sector >= SECTORS || slot >= SLOTS {
        return Sector::Garbage;
    }
    if (0..SECTOR / 8).all(|k| w(k) == word(id, slot, sector, k)) {
        Sector::Id { id, slot, sector }
    } else {
        Sector::Garbage
    }
}

/// A server that is killed and reaped however the round ends.
struct ServerGuard(Option<Child>);

impl ServerGuard {
    fn spawn(dir: &Path, interval: &str, engine: &str, log: &Path) -> ServerGuard {
        let err = std::fs::File::create(log).unwrap();
        let child = Command::new(BIN)
            .args(["--io-engine", engine, "serve", dir.to_str().unwrap()])
            .args(["--commit-interval", interval])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let mut g = ServerGuard(Some(child));
        let t0 = Instant::now();
        while UnixStream::connect(dir.join("nbd.sock")).is_err() {
            if let Some(st) = g.0.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "serve exited at start ({st}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "serve did not start"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        g
    }

    /// SIGKILL (unless it already exited) and reap; the exit status.
    fn kill(&mut self) -> ExitStatus {
        let mut c = self.0.take().unwrap();
        let _ = c.kill();
        c.wait().unwrap()
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One write (WRITE or WRITE_ZEROES) as the client saw it.
#[derive(Clone, Debug)]
struct WriteRec {
    /// 0 for WRITE_ZEROES.
    id: u64,
    slot: u64,
    fua: bool,
    conn: usize,
    /// Clock when it was sent / when its reply was read.
    sent: u64,
    done: Option<u64>,
    err: u32,
}

impl WriteRec {
    fn describe(&self) -> String {
        format!(
            "{} to slot {}{} on connection {}, sent at {}, reply at {:?}",
            if self.id == 0 {
                "WRITE_ZEROES".to_string()
            } else {
                format!("write {}", self.id)
            },
            self.slot,
            if self.fua { " FUA" } else { "" },
            self.conn,
            self.sent,
            self.done
        )
    }

    /// The sector value it writes.
    fn value(&self, sector: usize) -> Sector {
        if self.id == 0 {
            Sector::Zeros
        } else {
            Sector::Id {
                id: self.id,
                slot: self.slot,
                sector,
            }
        }
    }
}

#[derive(Clone, Debug)]
struct FlushRec {
    conn: usize,
    sent: u64,
    done: Option<u64>,
    err: u32,
}

/// One connection's state, shared by its writer and reader threads.
#[derive(Default)]
struct ConnState {
    writes: Vec<WriteRec>,
    flushes: Vec<FlushRec>,
    inflight: usize,
    /// Slots this connection has a write in flight to.
    busy: HashSet<u64>,
    /// The server is gone (a send or receive failed).
    dead: bool,
    /// A protocol error seen by the reader (wrong magic, unknown handle).
    broken: Option<String>,
}

struct Conn {
    st: Mutex<ConnState>,
    cv: Condvar,
}

/// Handles say which log and index a reply belongs to.
const FLUSH_BIT: u64 = 1 << 63;

struct ClientPlan {
    conn: usize,
    depth: usize,
    /// The slots this connection writes.
    slots: Vec<u64>,
    seed: u64,
    flush_pct: u32,
    fua_pct: u32,
    zero_pct: u32,
}

fn writer(mut s: UnixStream, c: &Conn, plan: &ClientPlan, clock: &AtomicU64, next_id: &AtomicU64) {
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    loop {
        let mut st = c.st.lock().unwrap();
        while st.inflight >= plan.depth && !st.dead {
            st = c.cv.wait(st).unwrap();
        }
        if st.dead {
            return;
        }
        let roll = rng.gen_range(0..100);
        let mut req = Vec::with_capacity(28 + SLOT);
        if roll < plan.flush_pct {
            let idx = st.flushes.len() as u64;
            req.extend_from_slice(&REQ_MAGIC.to_be_bytes());
            req.extend_from_slice(&0u16.to_be_bytes());
            req.extend_from_slice(&CMD_FLUSH.to_be_bytes());
            req.extend_from_slice(&(FLUSH_BIT | idx).to_be_bytes());
            req.extend_from_slice(&0u64.to_be_bytes());
            req.extend_from_slice(&0u32.to_be_bytes());
            let sent = clock.fetch_add(1, Ordering::SeqCst);
            st.flushes.push(FlushRec {
                conn: plan.conn,
                sent,
                done: None,
                err: 0,
            });
        } else {
            // A slot with no write of this connection in flight.
            let mut slot = None;
            for _ in 0..16 {
                let s = plan.slots[rng.gen_range(0..plan.slots.len())];
                if !st.busy.contains(&s) {
                    slot = Some(s);
                    break;
                }
            }
            let Some(slot) = slot else {
                // Every pick was busy: wait for a reply and try again.
                let _ = c.cv.wait_timeout(st, Duration::from_millis(5)).unwrap();
                continue;
            };
            let zero = rng.gen_range(0..100) < plan.zero_pct;
            let fua = rng.gen_range(0..100) < plan.fua_pct;
            let id = if zero {
                0
            } else {
                next_id.fetch_add(1, Ordering::SeqCst)
            };
            let idx = st.writes.len() as u64;
            let kind = if zero { CMD_WRITE_ZEROES } else { CMD_WRITE };
            req.extend_from_slice(&REQ_MAGIC.to_be_bytes());
            req.extend_from_slice(&(if fua { FLAG_FUA } else { 0 }).to_be_bytes());
            req.extend_from_slice(&kind.to_be_bytes());
            req.extend_from_slice(&idx.to_be_bytes());
            req.extend_from_slice(&(slot * SLOT as u64).to_be_bytes());
            req.extend_from_slice(&(SLOT as u32).to_be_bytes());
            if !zero {
                req.extend_from_slice(&content(id, slot));
            }
            st.busy.insert(slot);
            // Stamped before the first byte leaves: whatever completed before this stamp
            // completed before the server could see the request.
            let sent = clock.fetch_add(1, Ordering::SeqCst);
            st.writes.push(WriteRec {
                id,
                slot,
                fua,
                conn: plan.conn,
                sent,
                done: None,
                err: 0,
            });
        }
        st.inflight += 1;
        drop(st);
        if s.write_all(&req).is_err() {
            let mut st = c.st.lock().unwrap();
            st.dead = true;
            c.cv.notify_all();
            return;
        }
    }
}

fn reader(mut s: UnixStream, c: &Conn, clock: &AtomicU64) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    loop {
        let mut r = [0u8; 16];
        let ok = s.read_exact(&mut r).is_ok();
        // Stamped after the whole reply was read.
        let now = clock.fetch_add(1, Ordering::SeqCst);
        let mut st = c.st.lock().unwrap();
        if !ok {
            st.dead = true;
            c.cv.notify_all();
            return;
        }
        let magic = u32::from_be_bytes(r[..4].try_into().unwrap());
        let err = u32::from_be_bytes(r[4..8].try_into().unwrap());
        let h = u64::from_be_bytes(r[8..].try_into().unwrap());
        let idx = (h & !FLUSH_BIT) as usize;
        let found = if magic != SIMPLE {
            None
        } else if h & FLUSH_BIT != 0 {
            st.flushes
                .get_mut(idx)
                .filter(|f| f.done.is_none())
                .map(|f| {
                    f.done = Some(now);
                    f.err = err;
                })
        } else {
            let w = st
                .writes
                .get_mut(idx)
                .filter(|w| w.done.is_none())
                .map(|w| {
                    w.done = Some(now);
                    w.err = err;
                    w.slot
                });
            w.map(|slot| {
                st.busy.remove(&slot);
            })
        };
        if found.is_none() {
            st.broken = Some(format!("bad reply: magic {magic:#x}, handle {h:#x}"));
            st.dead = true;
            c.cv.notify_all();
            return;
        }
        st.inflight -= 1;
        c.cv.notify_all();
    }
}

/// One pool and what it holds at the start of a round: every sector of every slot.
struct PoolState {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    block_size: u64,
    base: Vec<[Sector; SECTORS]>,
}

#[derive(Default, Debug)]
struct Totals {
    rounds: u64,
    conns: u64,
    writes_sent: u64,
    writes_acked: u64,
    zero_writes_acked: u64,
    fua_acked: u64,
    flushes_sent: u64,
    flushes_acked: u64,
    durable_writes: u64,
    durable_slots: u64,
    newest_exact: u64,
    later_than_durable: u64,
    violations: u64,
    offline_snaps: u64,
    live_snaps: u64,
    snaps_verified: u64,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let r = match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => v.parse(),
            };
            r.unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        }
        Err(_) => default,
    }
}

#[test]
fn pipelined_durable_writes_survive_sigkill_of_the_server() {
    let rounds = env_u64("NBD_KILL_ROUNDS", 20);
    let seed = env_u64("NBD_KILL_SEED", 0x5eed_0010);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pools: Vec<PoolState> = [4096u64, 65536]
        .iter()
        .map(|&bs| {
            let t = make_pool(&[("v", SLOTS * SLOT as u64)], bs);
            PoolState {
                dir: pool_dir(&t),
                _tmp: t,
                block_size: bs,
                base: vec![[Sector::Zeros; SECTORS]; SLOTS as usize],
            }
        })
        .collect();
    let next_id = Arc::new(AtomicU64::new(1));
    let mut tot = Totals::default();
    let mut first_violation: Option<String> = None;
    let t_start = Instant::now();

    for round in 0..rounds {
        let p = &mut pools[rng.gen_range(0..2)];
        let interval = ["20ms", "1s", "600s"][rng.gen_range(0..3)];
        let engine = ["auto", "sync"][rng.gen_range(0..2)];
        let nconn = rng.gen_range(1..=4usize);
        // The slots written this round: a few hot ones (overwrites, in place after the
        // first) or many (most writes are a slot's first since the snapshot: a new block).
        let n = [64, 512, SLOTS][rng.gen_range(0..3)];
        let lo = rng.gen_range(0..=SLOTS - n);
        let window = lo..lo + n;
        let shared = nconn > 1 && rng.gen_bool(0.35);
        // Mostly short rounds, some long ones (the timer and many group commits).
        let delay_ms = if rng.gen_bool(0.15) {
            rng.gen_range(200..600)
        } else {
            rng.gen_range(2..150)
        };
        let flush_pct = rng.gen_range(2..=15);
        let fua_pct = [0, 5, 20][rng.gen_range(0..3)];
        let zero_pct = [0, 0, 3, 8][rng.gen_range(0..4)];
        // Snapshots make the round's first write to every block a copy to a new block,
        // which only a commit maps (overwrites in place survive a SIGKILL anyway, in the
        // page cache); removing them frees blocks for reuse. 0: none, 1: one taken before
        // the server starts, 2: that and up to two taken through the server mid-round.
        let snaps = [0, 1, 2][rng.gen_range(0..3)];
        let live_at: Vec<u64> = if snaps == 2 {
            let mut v: Vec<u64> = (0..rng.gen_range(1..=2))
                .map(|_| rng.gen_range(0..delay_ms.max(1)))
                .collect();
            v.sort();
            v
        } else {
            Vec::new()
        };
        let params = format!(
            "round {round} (NBD_KILL_SEED={seed:#x}): block size {}, {nconn} connection(s){}, \
             slots {window:?}, commit interval {interval}, engine {engine}, \
             kill after {delay_ms} ms, flush {flush_pct}%, FUA {fua_pct}%, zeroes {zero_pct}%, snapshots: {}",
            p.block_size,
            if shared { " sharing slots" } else { "" },
            ["none", "one before", "one before and live ones"][snaps],
        );
        let d = p.dir.to_str().unwrap().to_string();
        let offline = format!("r{round}");
        if snaps > 0 {
            run(Command::new(BIN).args(["snapshot", &d, "v", &offline]));
            tot.offline_snaps += 1;
        }

        let log = p.dir.parent().unwrap().join("serve.log");
        let mut server = ServerGuard::spawn(&p.dir, interval, engine, &log);
        let clock = Arc::new(AtomicU64::new(1));
        let mut threads = Vec::new();
        let mut conns = Vec::new();
        for ci in 0..nconn {
            let raw = Raw::attach(&p.dir.join("nbd.sock"), "v", false);
            for (bit, what) in [
                (TF_CAN_MULTI_CONN, "CAN_MULTI_CONN"),
                (TF_SEND_FLUSH, "SEND_FLUSH"),
                (TF_SEND_FUA, "SEND_FUA"),
                (TF_SEND_WRITE_ZEROES, "SEND_WRITE_ZEROES"),
            ] {
                // The model of a FLUSH covering other connections' writes rests on it.
                assert!(raw.flags & bit != 0, "the server does not advertise {what}");
            }
            let slots: Vec<u64> = window
                .clone()
                .filter(|s| shared || *s as usize % nconn == ci)
                .collect();
            let plan = ClientPlan {
                conn: ci,
                depth: rng.gen_range(8..=64),
                slots,
                seed: rng.gen(),
                flush_pct,
                fua_pct,
                zero_pct,
            };
            let conn = Arc::new(Conn {
                st: Mutex::new(ConnState::default()),
                cv: Condvar::new(),
            });
            conns.push(conn.clone());
            let rs = raw.s.try_clone().unwrap();
            let ws = raw.s;
            let (c2, clk) = (conn.clone(), clock.clone());
            threads.push(std::thread::spawn(move || reader(rs, &c2, &clk)));
            let (clk, ids) = (clock.clone(), next_id.clone());
            threads.push(std::thread::spawn(move || {
                writer(ws, &conn, &plan, &clk, &ids)
            }));
        }
        // Live snapshots through the server's control socket while the clients write (a
        // snapshot commits with every request drained). Their outcome near the kill is
        // unknown; they are only removed afterwards.
        let snapper = {
            let (d, live_at) = (d.clone(), live_at.clone());
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let mut made = 0;
                for (k, at) in live_at.iter().enumerate() {
                    let at = Duration::from_millis(*at);
                    std::thread::sleep(at.saturating_sub(t0.elapsed()));
                    let name = format!("l{round}_{k}");
                    let o = Command::new(BIN)
                        .args(["snapshot", &d, "v", &name])
                        .stdin(Stdio::null())
                        .output()
                        .unwrap();
                    made += o.status.success() as u64;
                }
                made
            })
        };
        std::thread::sleep(Duration::from_millis(delay_ms));
        let status = server.kill();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "{params}: the server exited on its own ({status}): {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        for t in threads {
            t.join().unwrap();
        }
        tot.live_snaps += snapper.join().unwrap();

        // Everything the clients saw.
        let mut writes: Vec<WriteRec> = Vec::new();
        let mut flushes: Vec<FlushRec> = Vec::new();
        for c in &conns {
            let st = c.st.lock().unwrap();
            assert!(st.broken.is_none(), "{params}: {:?}", st.broken);
            writes.extend(st.writes.iter().cloned());
            flushes.extend(st.flushes.iter().cloned());
        }
        for w in &writes {
            assert_eq!(w.err, 0, "{params}: a write failed: {w:?}");
        }
        for f in &flushes {
            assert_eq!(f.err, 0, "{params}: a FLUSH failed: {f:?}");
        }
        tot.rounds += 1;
        tot.conns += nconn as u64;
        tot.writes_sent += writes.len() as u64;
        tot.flushes_sent += flushes.len() as u64;
        tot.writes_acked += writes.iter().filter(|w| w.done.is_some()).count() as u64;
        tot.zero_writes_acked += writes
            .iter()
            .filter(|w| w.done.is_some() && w.id == 0)
            .count() as u64;
        tot.fua_acked += writes.iter().filter(|w| w.done.is_some() && w.fua).count() as u64;
        tot.flushes_acked += flushes.iter().filter(|f| f.done.is_some()).count() as u64;
        // Multi-conn: the latest-sent acknowledged FLUSH on any connection covers every
        // write whose reply was read before it was sent.
        let last_flush = flushes
            .iter()
            .filter(|f| f.done.is_some())
            .max_by_key(|f| f.sent);
        let flush_cover = last_flush.map_or(0, |f| f.sent);
        let durable = |w: &WriteRec| w.done.is_some_and(|d| w.fua || d < flush_cover);

        let d = d.as_str();
        let o = Command::new(BIN).args(["check", d]).output().unwrap();
        assert!(
            o.status.success(),
            "{params}: check failed ({}):\n{}{}",
            o.status,
            stdout(&o),
            String::from_utf8_lossy(&o.stderr)
        );
        let img = p.dir.parent().unwrap().join("img");
        run(Command::new(BIN).args(["read", d, "v", img.to_str().unwrap()]));
        let img = std::fs::read(&img).unwrap();
        assert_eq!(img.len(), SLOTS as usize * SLOT);
        let mut violations = Vec::new();
        if snaps > 0 {
            // The snapshot taken before the round holds exactly what the round started from.
            let simg = p.dir.parent().unwrap().join("snap-img");
            run(Command::new(BIN).args(["read", d, &offline, simg.to_str().unwrap()]));
            let simg = std::fs::read(&simg).unwrap();
            for slot in 0..SLOTS as usize {
                for s in 0..SECTORS {
                    let off = slot * SLOT + s * SECTOR;
                    let got = decode(&simg[off..off + SECTOR]);
                    if got != p.base[slot][s] {
                        violations.push(format!(
                            "{params}: snapshot {offline} slot {slot} sector {s} reads {got:?}, \
                             taken when it held {:?}",
                            p.base[slot][s]
                        ));
                    }
                }
            }
            tot.snaps_verified += 1;
        }

        let mut by_slot: Vec<Vec<&WriteRec>> = vec![Vec::new(); SLOTS as usize];
        for w in &writes {
            by_slot[w.slot as usize].push(w);
        }
        for (slot, ws) in by_slot.iter().enumerate() {
            let ds: Vec<&WriteRec> = ws.iter().copied().filter(|w| durable(w)).collect();
            // Not superseded: no durable write to this slot was sent after its reply.
            let allowed: Vec<&WriteRec> = ws
                .iter()
                .copied()
                .filter(|w| !ds.iter().any(|d| w.done.is_some_and(|c| c < d.sent)))
                .collect();
            let mut now = [Sector::Zeros; SECTORS];
            let mut slot_ok = true;
            for (s, cell) in now.iter_mut().enumerate() {
                let off = slot * SLOT + s * SECTOR;
                let got = decode(&img[off..off + SECTOR]);
                *cell = got;
                let ok = match got {
                    Sector::Garbage => false,
                    Sector::Id {
                        slot: gs,
                        sector: gsec,
                        ..
                    } if gs as usize != slot || gsec != s => false,
                    v => {
                        (ds.is_empty() && p.base[slot][s] == v)
                            || allowed.iter().any(|w| w.value(s) == v)
                    }
                };
                if !ok {
                    slot_ok = false;
                    let origin = match got {
                        Sector::Id { id, .. } => ws
                            .iter()
                            .find(|w| w.id == id)
                            .map(|w| format!("(from {})", w.describe()))
                            .unwrap_or_else(|| "not written this round".into()),
                        _ => String::new(),
                    };
                    violations.push(format!(
                        "{params}: slot {slot} sector {s} reads {got:?} {origin}; previous round \
                         left {:?}; durable writes to it: [{}]; not superseded: [{}]; \
                         the last acknowledged FLUSH: {}",
                        p.base[slot][s],
                        ds.iter()
                            .map(|w| w.describe())
                            .collect::<Vec<_>>()
                            .join(", "),
                        allowed
                            .iter()
                            .map(|w| w.describe())
                            .collect::<Vec<_>>()
                            .join(", "),
                        last_flush.map_or("none".into(), |f| format!(
                            "on connection {}, sent at {}, reply at {:?}",
                            f.conn, f.sent, f.done
                        )),
                    ));
                }
            }
            if !ds.is_empty() {
                tot.durable_slots += 1;
                if slot_ok {
                    tot.durable_writes += ds.len() as u64;
                }
                // The newest durable write(s) read back exactly, or something sent later.
                let newest = ds.iter().max_by_key(|w| w.sent).unwrap();
                if (0..SECTORS).all(|s| now[s] == newest.value(s)) {
                    tot.newest_exact += 1;
                } else if slot_ok {
                    tot.later_than_durable += 1;
                }
            }
            // The pool's content is the next round's starting point.
            p.base[slot] = now;
        }
        // Remove every snapshot (offline): the next server's first commits free and reuse
        // their blocks.
        let o = run(Command::new(BIN).args(["list", d, "--json"]));
        let vols: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for v in vols.as_array().unwrap() {
            let name = v["name"].as_str().unwrap();
            if name != "v" {
                run(Command::new(BIN).args(["remove", d, name]));
            }
        }
        tot.violations += violations.len() as u64;
        for v in violations.iter().take(8) {
            eprintln!("VIOLATION {v}");
        }
        if first_violation.is_none() {
            first_violation = violations.into_iter().next();
        }
    }
    let secs = t_start.elapsed().as_secs_f64();
    eprintln!(
        "nbd_kill_pipelined: seed {seed:#x}: {} rounds ({} connections) in {secs:.1} s: \
         {} writes sent, {} acknowledged ({} WRITE_ZEROES, {} FUA), {} FLUSHes sent, {} \
         acknowledged; {} acknowledged-durable writes verified on {} slots ({} read as the \
         newest durable write, {} as a later one); snapshots: {} before rounds ({} verified), \
         {} live; {} violations",
        tot.rounds,
        tot.conns,
        tot.writes_sent,
        tot.writes_acked,
        tot.zero_writes_acked,
        tot.fua_acked,
        tot.flushes_sent,
        tot.flushes_acked,
        tot.durable_writes,
        tot.durable_slots,
        tot.newest_exact,
        tot.later_than_durable,
        tot.offline_snaps,
        tot.snaps_verified,
        tot.live_snaps,
        tot.violations
    );
    assert!(
        first_violation.is_none(),
        "{} durability violations; the first: {}",
        tot.violations,
        first_violation.unwrap()
    );
    assert!(
        tot.durable_writes >= rounds,
        "too few writes became durable to test anything"
    );
}
