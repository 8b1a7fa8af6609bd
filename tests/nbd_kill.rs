//! Nothing a FLUSH acknowledged is lost when the real `thinpool serve` is SIGKILLed.
//!
//! Each round starts the server on the same pool, a client writes 4 KiB slots (each write's
//! content names its round and id) with a FLUSH every few writes, and another thread kills
//! the server with SIGKILL at a seeded random moment. After each kill the pool must check
//! clean, and every slot must read as the value it held at the last acknowledged FLUSH or
//! as a write sent after it (never older, never another slot's data); a slot with no
//! flushed write may also read as zeros. Half the rounds commit on a 20 ms timer as well.

#[path = "common/nbd.rs"]
mod nbd_util;
use nbd_util::raw::{Raw, REQ_MAGIC, SIMPLE};
use nbd_util::*;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_thinpool");
const SLOT: usize = 4096;
const SLOTS: u64 = 512;

/// One request with a simple reply; any I/O error means the server is gone.
fn op(s: &mut UnixStream, kind: u16, handle: u64, off: u64, data: &[u8]) -> std::io::Result<u32> {
    let mut b = REQ_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&handle.to_be_bytes());
    b.extend_from_slice(&off.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b)?;
    let mut r = [0u8; 16];
    s.read_exact(&mut r)?;
    assert_eq!(u32::from_be_bytes(r[..4].try_into().unwrap()), SIMPLE);
    assert_eq!(u64::from_be_bytes(r[8..].try_into().unwrap()), handle);
    Ok(u32::from_be_bytes(r[4..8].try_into().unwrap()))
}

/// The content of write `id` (ids are unique over all rounds; 0 is never used).
fn content(id: u64) -> Vec<u8> {
    id.to_le_bytes().repeat(SLOT / 8)
}

fn decode(b: &[u8]) -> Option<u64> {
    let id = u64::from_le_bytes(b[..8].try_into().unwrap());
    (b == content(id).as_slice()).then_some(id)
}

fn spawn_serve(dir: &Path, interval: &str) -> Child {
    let child = Command::new(BIN)
        .args([
            "serve",
            dir.to_str().unwrap(),
            "--commit-interval",
            interval,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while UnixStream::connect(dir.join("nbd.sock")).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "serve did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

#[derive(Default)]
struct SlotModel {
    /// The value at the last acknowledged FLUSH (None: zeros).
    durable: Option<u64>,
    /// Writes sent since then (acknowledged or not): any may have landed.
    since: Vec<u64>,
}

#[test]
fn flushed_writes_survive_sigkill_of_the_server() {
    let t = make_pool(&[("v", SLOTS * SLOT as u64)], 4096);
    let dir = pool_dir(&t);
    let mut model: HashMap<u64, SlotModel> = HashMap::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x6b11);
    let mut next_id = 1u64;
    let (mut flushes, mut writes) = (0u64, 0u64);
    for round in 0..12 {
        let interval = if round % 2 == 0 { "1s" } else { "20ms" };
        let mut server = spawn_serve(&dir, interval);
        let pid = server.id();
        let delay = Duration::from_millis(rng.gen_range(30..250));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap();
        });
        let mut c = Raw::attach(&dir.join("nbd.sock"), "v", false);
        let mut h = 0u64;
        loop {
            h += 1;
            if rng.gen_range(0..8) == 0 {
                match op(&mut c.s, 3, h, 0, &[]) {
                    Ok(0) => {
                        flushes += 1;
                        for m in model.values_mut() {
                            if let Some(&last) = m.since.last() {
                                m.durable = Some(last);
                                m.since.clear();
                            }
                        }
                    }
                    Ok(e) => panic!("FLUSH failed with NBD error {e}"),
                    Err(_) => break,
                }
            } else {
                let slot = rng.gen_range(0..SLOTS);
                let id = next_id;
                next_id += 1;
                // Sent, so it may land even if the reply never comes.
                model.entry(slot).or_default().since.push(id);
                match op(&mut c.s, 1, h, slot * SLOT as u64, &content(id)) {
                    Ok(0) => writes += 1,
                    Ok(e) => panic!("WRITE failed with NBD error {e}"),
                    Err(_) => break,
                }
            }
        }
        killer.join().unwrap();
        assert!(
            !server.wait().unwrap().success(),
            "the server was not killed"
        );

        let d = dir.to_str().unwrap();
        let o = run(Command::new(BIN).args(["check", d]));
        assert!(o.status.success(), "round {round}: {}", stdout(&o));
        let img = t.path().join("img");
        let o = run(Command::new(BIN).args(["read", d, "v", img.to_str().unwrap()]));
        assert!(o.status.success());
        let img = std::fs::read(&img).unwrap();
        for slot in 0..SLOTS {
            let b = &img[slot as usize * SLOT..(slot as usize + 1) * SLOT];
            let got = if b.iter().all(|&x| x == 0) {
                None
            } else {
                Some(decode(b).unwrap_or_else(|| panic!("round {round}: slot {slot} is garbage")))
            };
            let m = model.entry(slot).or_default();
            let ok = got == m.durable || got.is_some_and(|g| m.since.contains(&g));
            assert!(
                ok,
                "round {round}: slot {slot} reads {got:?}; acknowledged by FLUSH: {:?}, sent since: {:?}",
                m.durable, m.since
            );
            // What the pool now holds is the durable state the next round starts from.
            *m = SlotModel {
                durable: got,
                since: Vec::new(),
            };
        }
    }
    eprintln!("nbd_kill: 12 rounds, {writes} writes and {flushes} FLUSHes acknowledged");
    assert!(
        flushes > 12,
        "too few FLUSHes were acknowledged to test anything"
    );
}
