//! Hostile clients against the real server process (issue 10 items 3 and 4): clients that
//! never read their replies cannot make the server's memory grow without bound, and a
//! client that queued work and left does not keep the server busy or delay its shutdown.

#[path = "common/nbd.rs"]
mod nbd_util;
use nbd_util::raw::*;
use nbd_util::*;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_thinpool");
const CMD_READ: u16 = 0;
const MAX_READ: u32 = 32 << 20;

struct Serve(Child);

impl Serve {
    fn start(dir: &Path) -> Serve {
        let child = Command::new(BIN)
            .args(["serve", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(dir.join("nbd.sock")).is_err() {
            assert!(Instant::now() < deadline, "server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Serve(child)
    }
    /// Resident memory of the server, in MiB.
    fn rss_mib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap();
        let kb: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb >> 10
    }
    /// SIGTERM, then the time until the process exited (panics after `limit`).
    fn stop_within(mut self, limit: Duration) -> Duration {
        let t0 = Instant::now();
        Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                assert!(st.success(), "serve exited with {st}");
                return t0.elapsed();
            }
            if t0.elapsed() > limit {
                let _ = self.0.kill();
                let _ = self.0.wait();
                panic!("serve still running {limit:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `n` read requests of 32 MiB in one burst, none of whose replies will be read.
fn queue_reads(c: &mut Raw, n: u64) {
    let mut burst = Vec::with_capacity(28 * n as usize);
    for h in 0..n {
        burst.extend_from_slice(&REQ_MAGIC.to_be_bytes());
        burst.extend_from_slice(&0u16.to_be_bytes());
        burst.extend_from_slice(&CMD_READ.to_be_bytes());
        burst.extend_from_slice(&h.to_be_bytes());
        burst.extend_from_slice(&0u64.to_be_bytes());
        burst.extend_from_slice(&MAX_READ.to_be_bytes());
    }
    c.s.write_all(&burst).unwrap();
}

/// A client queued 4,000 reads of 32 MiB and left: the server drops what it had not
/// answered (a reply nobody can receive), and SIGTERM finishes within seconds. It once ran
/// on for minutes, reading for a client that was gone.
#[test]
fn a_departed_client_leaves_no_work_behind() {
    let t = make_pool(&[("vol", 64 * MIB)], 64 << 10);
    let srv = Serve::start(&pool_dir(&t));
    let mut c = Raw::attach(&pool_dir(&t).join("nbd.sock"), "vol", false);
    queue_reads(&mut c, 4000);
    drop(c);
    std::thread::sleep(Duration::from_millis(500));
    let took = srv.stop_within(Duration::from_secs(30));
    println!("shutdown took {took:?} after a client left 4,000 queued 32 MiB reads");
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?} after a client left 4,000 queued reads"
    );
}

/// 100 connections that send reads of 32 MiB and never read a reply: server memory stays
/// under its documented bound (in-flight request data is capped at 256 MiB for the whole
/// server, and a long read holds one 1 MiB piece, docs/nbd.md), a well-behaved client is
/// served at once, and memory is given back when they leave. It once grew by ~68 MiB per
/// such connection, and later (bounded) made the good client wait 17 s.
#[test]
fn clients_that_never_read_cannot_exhaust_memory() {
    let t = make_pool(&[("vol", 64 * MIB), ("good", 8 * MIB)], 64 << 10);
    let dir = pool_dir(&t);
    let srv = Serve::start(&dir);
    let sock = dir.join("nbd.sock");
    let base = srv.rss_mib();
    let mut hostile = Vec::new();
    for _ in 0..100 {
        let mut c = Raw::attach(&sock, "vol", false);
        queue_reads(&mut c, 8);
        hostile.push(c);
    }
    // Let the server do all it will do for them.
    let mut peak = 0;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(srv.rss_mib());
    }
    assert!(
        peak < base + 200,
        "server RSS reached {peak} MiB (from {base}) with 100 clients that never read"
    );
    // A well-behaved client still gets its answers (stalled senders are dropped when
    // others need the memory).
    let t0 = Instant::now();
    let mut good = Raw::attach(&sock, "good", false);
    let data = vec![0x5au8; 100_000];
    assert_eq!(good.write(1, 4096, &data), 0);
    assert_eq!(good.read(2, 4096, 100_000).unwrap(), data);
    let waited = t0.elapsed();
    // Each of them holds one 1 MiB piece of a read (long reads are sent piece by piece),
    // so they leave room for others: it once waited 17 s for stalled senders to be dropped.
    assert!(
        waited < Duration::from_secs(2),
        "the good client waited {waited:?}"
    );
    drop(hostile);
    let deadline = Instant::now() + Duration::from_secs(20);
    while srv.rss_mib() > base + 64 {
        assert!(
            Instant::now() < deadline,
            "server RSS still {} MiB (from {base}) after the clients left",
            srv.rss_mib()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "RSS {base} MiB idle, peak {peak} MiB with 100 non-reading clients, {} MiB after \
         they left; a good client was served in {waited:?}",
        srv.rss_mib()
    );
    srv.stop_within(Duration::from_secs(30));
}

/// Clients that send a write's header and part of its 32 MiB payload, then nothing, hold
/// that budget only while nobody else needs it: they once kept every other client waiting
/// for as long as they stayed connected.
#[test]
fn clients_that_stop_mid_payload_cannot_lock_others_out() {
    let t = make_pool(&[("vol", 64 * MIB), ("good", 8 * MIB)], 64 << 10);
    let dir = pool_dir(&t);
    let srv = Serve::start(&dir);
    let sock = dir.join("nbd.sock");
    let mut stuck = Vec::new();
    for i in 0..20u64 {
        let mut c = Raw::attach(&sock, "vol", false);
        let mut req = REQ_MAGIC.to_be_bytes().to_vec();
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&1u16.to_be_bytes()); // NBD_CMD_WRITE
        req.extend_from_slice(&i.to_be_bytes());
        req.extend_from_slice(&0u64.to_be_bytes());
        req.extend_from_slice(&MAX_READ.to_be_bytes());
        req.extend_from_slice(&[7u8; 4096]);
        c.s.write_all(&req).unwrap();
        stuck.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let mut good = Raw::attach(&sock, "good", false);
    let data = vec![0x3cu8; 100_000];
    assert_eq!(good.write(1, 4096, &data), 0);
    assert_eq!(good.read(2, 4096, 100_000).unwrap(), data);
    let waited = t0.elapsed();
    println!("a good client was served in {waited:?} beside 20 clients stuck mid-payload");
    assert!(
        waited < Duration::from_secs(5),
        "the good client waited {waited:?}"
    );
    drop(stuck);
    srv.stop_within(Duration::from_secs(30));
}

/// 100 connections, each with 40 queued reads of 32 MiB, all gone: shutdown still takes
/// seconds at most (issue 10, "what must be shown").
#[test]
fn shutdown_with_a_hundred_dead_connections_is_quick() {
    let t = make_pool(&[("vol", 64 * MIB)], 64 << 10);
    let srv = Serve::start(&pool_dir(&t));
    let sock = pool_dir(&t).join("nbd.sock");
    for _ in 0..100 {
        let mut c = Raw::attach(&sock, "vol", false);
        queue_reads(&mut c, 40);
        drop(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    let took = srv.stop_within(Duration::from_secs(60));
    println!("shutdown took {took:?} after 100 clients left 40 queued 32 MiB reads each");
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?} with 100 dead connections"
    );
}
