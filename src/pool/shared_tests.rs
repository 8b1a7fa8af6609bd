//! Tests of `SharedPool` with real threads and std's channels (not with shuttle's locks).

use super::*;
use crate::io::hooked::{Hooked, Hooks};
use crate::io::MemDev;
use crate::pool::CreateOptions;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Counts flushes and can hold the next flush until released.
struct SlowFlush {
    flushes: AtomicUsize,
    hold_next: AtomicBool,
    entered: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<Option<mpsc::Receiver<()>>>,
}

impl SlowFlush {
    /// A data device with these hooks.
    fn new() -> Arc<Hooked<SlowFlush>> {
        Arc::new(Hooked::new(
            MemDev::new(64 << 20).unwrap(),
            SlowFlush {
                flushes: AtomicUsize::new(0),
                hold_next: AtomicBool::new(false),
                entered: Mutex::new(None),
                release: Mutex::new(None),
            },
        ))
    }
    /// Hold the next flush: `entered` gets a message when it starts, and it returns
    /// once the returned sender sends.
    fn hold(&self, entered: mpsc::Sender<()>) -> mpsc::Sender<()> {
        let (tx, rx) = mpsc::channel();
        *self.entered.lock().unwrap() = Some(entered);
        *self.release.lock().unwrap() = Some(rx);
        self.hold_next.store(true, Ordering::SeqCst);
        tx
    }
}

impl Hooks for SlowFlush {
    fn before_flush(&self) -> std::io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        if self.hold_next.swap(false, Ordering::SeqCst) {
            if let Some(tx) = self.entered.lock().unwrap().take() {
                tx.send(()).unwrap();
            }
            let rx = self.release.lock().unwrap().take().unwrap();
            rx.recv_timeout(Duration::from_secs(30)).unwrap();
        }
        Ok(())
    }
}

fn slow_pool() -> (Arc<SharedPool>, Arc<Hooked<SlowFlush>>, VolumeId) {
    let meta: Arc<dyn BlockDev> = Arc::new(MemDev::new(64 << 20).unwrap());
    let data = SlowFlush::new();
    let mut o = CreateOptions::new(64 << 20);
    o.block_size = 4096;
    let mut p = Pool::create_on(meta, data.clone(), &o).unwrap();
    let id = p.create_volume("v", 8 << 20, false).unwrap();
    (Arc::new(SharedPool::new(p)), data, id)
}

fn seq(sp: &SharedPool) -> u64 {
    sp.lock().unwrap().seq()
}

/// The timer does nothing for writes in place (no mapping changed: no record, no
/// fdatasync); a FLUSH after them is one data sync and no record; a new mapping makes
/// the timer commit.
#[test]
fn a_commit_without_metadata_change_writes_no_record() {
    let (sp, dev, id) = slow_pool();
    sp.write(id, 0, &[1u8; 4096]).unwrap();
    sp.commit().unwrap();
    let (s0, f0) = (seq(&sp), dev.flushes.load(Ordering::SeqCst));
    sp.write(id, 0, &[2u8; 4096]).unwrap(); // in place
    sp.periodic_commit().unwrap();
    assert_eq!(seq(&sp), s0, "the timer wrote a record for an overwrite");
    assert_eq!(
        dev.flushes.load(Ordering::SeqCst),
        f0,
        "the timer synced data"
    );
    sp.commit().unwrap();
    assert_eq!(seq(&sp), s0, "a FLUSH after overwrites wrote a record");
    assert_eq!(dev.flushes.load(Ordering::SeqCst), f0 + 1, "one data sync");
    sp.write(id, 4096, &[3u8; 4096]).unwrap(); // a new block
    sp.periodic_commit().unwrap();
    assert_eq!(seq(&sp), s0 + 1, "a new mapping is committed by the timer");
}

/// While a commit syncs the data device, reads and writes go on: only the short
/// metadata part of the commit waits for them to drain.
#[test]
fn data_requests_proceed_while_a_commit_syncs() {
    let (sp, dev, id) = slow_pool();
    sp.write(id, 0, &[1u8; 4096]).unwrap();
    let (entered_tx, entered) = mpsc::channel();
    let release = dev.hold(entered_tx);
    let committer = {
        let sp = sp.clone();
        std::thread::spawn(move || sp.commit())
    };
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    // The commit is inside its data sync now. A write and a read must complete.
    let (done_tx, done) = mpsc::channel();
    let worker = {
        let sp = sp.clone();
        std::thread::spawn(move || {
            sp.write(id, 8192, &[7u8; 4096]).unwrap();
            let mut b = vec![0u8; 4096];
            sp.read(id, 8192, &mut b).unwrap();
            done_tx.send(b).unwrap();
        })
    };
    let got = done.recv_timeout(Duration::from_secs(10));
    // Counted before the held flush returns: the commit cannot have synced again yet.
    let f0 = dev.flushes.load(Ordering::SeqCst);
    release.send(()).unwrap();
    assert_eq!(
        got.expect("a write waited for the commit's data sync"),
        vec![7u8; 4096]
    );
    committer.join().unwrap().unwrap();
    worker.join().unwrap();
    // A write completed during the first sync, so the commit synced again under the
    // gate before recording its mapping: nothing is left for a later commit.
    assert_eq!(dev.flushes.load(Ordering::SeqCst), f0 + 1);
    assert!(!sp.lock().unwrap().metadata_dirty());
}

/// A data device that keeps nothing (reads zeros): lets a test map millions of blocks.
#[derive(Default)]
struct NullDev(std::sync::atomic::AtomicU64);

impl BlockDev for NullDev {
    fn read_at(&self, buf: &mut [u8], _offset: u64) -> std::io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0
            .fetch_max(offset + buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn len(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    fn punch_hole(&self, _offset: u64, _len: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn ensure_len(&self, len: u64) -> std::io::Result<()> {
        self.0.fetch_max(len, Ordering::Relaxed);
        Ok(())
    }
}

/// Metadata exhaustion under concurrent served writes fails those writes with ENOSPC
/// and leaves the pool serving (issue 10: it used to fail-stop the whole pool, since a
/// tree update ran out of blocks half-way and the transaction had to be abandoned).
#[test]
fn metadata_exhaustion_under_concurrent_writes_is_enospc_not_fail_stop() {
    let meta: Arc<dyn BlockDev> = Arc::new(MemDev::new(4 << 20).unwrap());
    let data: Arc<dyn BlockDev> = Arc::new(NullDev::default());
    let mut o = CreateOptions::new(4 << 30);
    o.block_size = 4096;
    o.metadata_size = Some(4 << 20);
    let mut p = Pool::create_on(meta.clone(), data, &o).unwrap();
    let id = p.create_volume("v", 1 << 42, false).unwrap();
    let sp = Arc::new(SharedPool::new(p));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let sp = sp.clone();
            std::thread::spawn(move || {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(t);
                let mut ok = Vec::new();
                for i in 0..200_000u64 {
                    // Scattered blocks: every write needs its own leaf slot.
                    let vb = (rng.gen_range(0..1u64 << 24) << 2) | t;
                    match sp.write(id, vb * 4096, &[1u8; 4096]) {
                        Ok(()) => ok.push(vb),
                        Err(e) => return (ok, Some(e.errno()), i),
                    }
                    if i % 5000 == 4999 {
                        sp.commit().unwrap();
                    }
                }
                (ok, None, 0)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    for (_, err, _) in &results {
        assert_eq!(*err, Some(libc::ENOSPC), "metadata never ran out");
    }
    {
        let p = sp.lock().unwrap();
        assert!(
            p.tm.failed().is_none(),
            "the pool fail-stopped: {:?}",
            p.tm.failed()
        );
    }
    // Still serving: reads, overwrites in place (no metadata needed), commits; more new
    // blocks are still refused with ENOSPC, not EIO.
    let mut b = vec![0u8; 4096];
    for (ok, _, _) in &results {
        let vb = ok[ok.len() / 2];
        sp.read(id, vb * 4096, &mut b).unwrap();
        sp.write(id, vb * 4096, &[2u8; 4096]).unwrap();
    }
    sp.commit().unwrap();
    let e = sp.write(id, 3 * 4096, &[3u8; 4096]).unwrap_err();
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
    sp.commit().unwrap();
    let r = crate::check::check(meta, None);
    assert!(
        r.is_clean(),
        "{:?}",
        r.errors().map(|f| f.to_string()).collect::<Vec<_>>()
    );
}

/// FLUSHes that arrive while a commit runs are served by one next commit, not one each.
#[test]
fn flushes_arriving_during_a_commit_share_the_next_one() {
    let (sp, dev, id) = slow_pool();
    sp.write(id, 0, &[1u8; 4096]).unwrap();
    let s0 = seq(&sp);
    let (entered_tx, entered) = mpsc::channel();
    let release = dev.hold(entered_tx);
    let first = {
        let sp = sp.clone();
        std::thread::spawn(move || sp.commit())
    };
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    let waiters: Vec<_> = (0..8u64)
        .map(|i| {
            let sp = sp.clone();
            std::thread::spawn(move || {
                sp.write(id, (i + 2) * 4096, &[i as u8 + 10; 4096]).unwrap();
                sp.commit()
            })
        })
        .collect();
    // Let every waiter write and queue behind the running commit.
    std::thread::sleep(Duration::from_millis(300));
    release.send(()).unwrap();
    first.join().unwrap().unwrap();
    for w in waiters {
        w.join().unwrap().unwrap();
    }
    assert_eq!(
        sp.commits.lock().unwrap().started,
        2,
        "eight flushes took more than one more commit"
    );
    assert_eq!(
        seq(&sp),
        s0 + 1,
        "the first commit already held every write"
    );
    for i in 0..8u64 {
        let mut b = vec![0u8; 4096];
        sp.read(id, (i + 2) * 4096, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == i as u8 + 10));
    }
}

/// Threads writing, reading, discarding and committing at once; afterwards every
/// volume reads exactly as a per-thread model says (each thread owns its volume), and
/// the checker finds the committed state clean.
#[test]
fn concurrent_requests_match_the_model_and_leave_a_clean_pool() {
    let meta: Arc<dyn BlockDev> = Arc::new(MemDev::new(64 << 20).unwrap());
    let data: Arc<dyn BlockDev> = Arc::new(MemDev::new(64 << 20).unwrap());
    let mut o = CreateOptions::new(64 << 20);
    o.block_size = 4096;
    let mut p = Pool::create_on(meta.clone(), data, &o).unwrap();
    let ids: Vec<VolumeId> = (0..4)
        .map(|i| p.create_volume(&format!("v{i}"), 1 << 20, false).unwrap())
        .collect();
    // A snapshot so that some writes copy shared blocks.
    p.write(ids[0], 0, &vec![5u8; 1 << 20]).unwrap();
    p.snapshot("v0", "snap", true).unwrap();
    let sp = Arc::new(SharedPool::new(p));
    let handles: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(t, &id)| {
            let sp = sp.clone();
            std::thread::spawn(move || {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(t as u64);
                let mut model = if t == 0 {
                    vec![5u8; 1 << 20]
                } else {
                    vec![0u8; 1 << 20]
                };
                for i in 0..400 {
                    let off = rng.gen_range(0..(1 << 20) - 20_000) as u64;
                    let len = rng.gen_range(1..20_000);
                    match rng.gen_range(0..10) {
                        0 => {
                            sp.discard(id, off, len as u64).unwrap();
                            model[off as usize..off as usize + len].fill(0);
                        }
                        1 => sp.commit().unwrap(),
                        2..=4 => {
                            let mut b = vec![0u8; len];
                            sp.read(id, off, &mut b).unwrap();
                            assert!(
                                b == model[off as usize..off as usize + len],
                                "thread {t} op {i}"
                            );
                        }
                        _ => {
                            let v = (t * 40 + i % 40) as u8 + 1;
                            sp.write(id, off, &vec![v; len]).unwrap();
                            model[off as usize..off as usize + len].fill(v);
                        }
                    }
                }
                model
            })
        })
        .collect();
    let models: Vec<Vec<u8>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    sp.commit().unwrap();
    for (i, &id) in ids.iter().enumerate() {
        let mut b = vec![0u8; 1 << 20];
        sp.read(id, 0, &mut b).unwrap();
        assert!(b == models[i], "volume v{i} differs from its model");
    }
    let snap = sp.lock().unwrap().volume_id("snap").unwrap();
    let mut b = vec![0u8; 1 << 20];
    sp.read(snap, 0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 5), "the snapshot changed");
    let r = crate::check::check(meta, None);
    assert!(
        r.is_clean(),
        "{:?}",
        r.errors().map(|f| f.to_string()).collect::<Vec<_>>()
    );
}
