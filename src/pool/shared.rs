//! `SharedPool`: one pool used by many threads at once (the NBD server's connections).
//!
//! docs/design.md §4: the data I/O of reads and writes never holds the metadata lock. A write
//! takes the metadata lock to *plan* (decide in-place vs new blocks, allocate), releases it for
//! the data I/O, and takes it again to *finish* (map the new blocks); a read takes it only to
//! look up its mappings. (A discard runs wholly under it, including the zeroing of partly
//! covered blocks, and the out-of-space retry of a write runs with the gate held exclusively.)
//! Three rules keep that safe:
//!
//! - **Same-block writes are serialized** by a range lock on (volume, virtual blocks), so two
//!   writes never plan against the same mapping. Reads take no range lock: overlapping
//!   concurrent requests have no defined result in NBD, and a read's blocks cannot be reused
//!   under it (next rule).
//! - **Commits and management operations wait for data I/O to drain** (the `gate`: data
//!   requests hold it shared, commit/snapshot/remove/... hold it exclusively, like dm's
//!   suspend around `create_snap`). So a commit never records a block that a write allocated
//!   but has not mapped yet (it would leak after a crash), a snapshot never races an in-place
//!   write, and a block freed while a read was in flight cannot be reused (reuse needs two
//!   more commits) before that read finishes.
//! - **The pool never commits on its own** in shared mode; the owner commits (FLUSH/FUA, the
//!   timer) through [`SharedPool::commit`].
//!
//! Commits keep requests waiting as briefly as possible (docs/nbd.md, "Commits"):
//! - the data file is synced *before* the gate is taken, while requests keep flowing; under
//!   the gate it is synced again only if a data write completed since that sync started;
//! - the server's writeback thread starts writeback of the data file every 100 ms when data
//!   was written ([`SharedPool::writeback`]), so either sync finds little left;
//! - a commit with no metadata change writes no record (FLUSH after overwrites in place is
//!   one data sync), and the timer does nothing at all then ([`SharedPool::periodic_commit`]);
//! - group commit: a caller that arrives while a commit runs waits for the next one, which
//!   covers every caller waiting when it starts; one commit at a time.

use super::data::{read_data, write_data};
use super::details::Access;
use super::sync::{
    Condvar, Instant, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, SeededBug,
};
use super::{Pool, PoolError, Result, VolumeId};
use crate::io::BlockDev;
use crate::meta::MetaError;
use std::sync::Arc;

/// Most data syncs a commit makes before it drains requests.
const PRESYNC_ROUNDS: usize = 4;
/// A data sync this short leaves too little behind to be worth another round.
const PRESYNC_QUICK: std::time::Duration = std::time::Duration::from_millis(5);

pub struct SharedPool {
    meta: Mutex<Pool>,
    data: Arc<dyn BlockDev>,
    block_size: u64,
    gate: RwLock<()>,
    /// Virtual block ranges `[lo, hi)` of writes in flight, per volume.
    busy: Mutex<Vec<(VolumeId, u64, u64)>>,
    released: Condvar,
    /// Group commit state.
    commits: Mutex<Commits>,
    commit_done: Condvar,
    /// Test-only: a bug the concurrency model seeds (see [`SeededBug`]).
    #[cfg(feature = "shuttle")]
    seeded_bug: Option<SeededBug>,
}

/// Commits are numbered; one runs at a time.
#[derive(Default)]
struct Commits {
    running: bool,
    /// Commits started / finished so far.
    started: u64,
    finished: u64,
    /// Whether the last finished commit succeeded.
    last_ok: bool,
}

/// Exclusive access: no data request is in flight while it is held.
pub struct Exclusive<'a> {
    _gate: RwLockWriteGuard<'a, ()>,
    pub pool: MutexGuard<'a, Pool>,
}

struct RangeGuard<'a> {
    sp: &'a SharedPool,
    key: (VolumeId, u64, u64),
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut b = self.sp.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = b.iter().position(|k| *k == self.key) {
            b.swap_remove(i);
        }
        self.sp.released.notify_all();
    }
}

impl SharedPool {
    pub fn new(mut pool: Pool) -> SharedPool {
        pool.shared = true;
        SharedPool {
            data: pool.data.clone(),
            block_size: pool.block_size(),
            meta: Mutex::new(pool),
            gate: RwLock::new(()),
            busy: Mutex::new(Vec::new()),
            released: Condvar::new(),
            commits: Mutex::new(Commits::default()),
            commit_done: Condvar::new(),
            #[cfg(feature = "shuttle")]
            seeded_bug: None,
        }
    }

    /// Test-only (the concurrency model): introduce `bug`.
    #[cfg(feature = "shuttle")]
    #[doc(hidden)]
    pub fn seed_bug(&mut self, bug: SeededBug) {
        self.seeded_bug = Some(bug);
    }

    /// Whether the concurrency model seeded `bug`.
    #[cfg(feature = "shuttle")]
    fn seeded(&self, bug: SeededBug) -> bool {
        self.seeded_bug == Some(bug)
    }

    /// Without the `shuttle` feature no bug can be seeded.
    #[cfg(not(feature = "shuttle"))]
    #[inline(always)]
    fn seeded(&self, _bug: SeededBug) -> bool {
        false
    }

    /// Back to a single-threaded pool.
    pub fn into_inner(self) -> Result<Pool> {
        let mut p = self.meta.into_inner().map_err(|_| PoolError::Poisoned)?;
        p.shared = false;
        Ok(p)
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Short metadata access (lookups); data requests may be in flight meanwhile.
    pub fn lock(&self) -> Result<MutexGuard<'_, Pool>> {
        self.meta.lock().map_err(|_| PoolError::Poisoned)
    }

    /// Wait until no data request is in flight, then hold the pool exclusively (commits,
    /// management commands).
    pub fn exclusive(&self) -> Result<Exclusive<'_>> {
        let g = self.gate.write().map_err(|_| PoolError::Poisoned)?;
        let pool = self.meta.lock().map_err(|_| PoolError::Poisoned)?;
        Ok(Exclusive { _gate: g, pool })
    }

    fn shared(&self) -> Result<RwLockReadGuard<'_, ()>> {
        self.gate.read().map_err(|_| PoolError::Poisoned)
    }

    fn lock_range(&self, id: VolumeId, lo: u64, hi: u64) -> RangeGuard<'_> {
        let mut b = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while b.iter().any(|&(v, l, h)| v == id && l < hi && lo < h) {
            b = self.released.wait(b).unwrap_or_else(|e| e.into_inner());
            if self.seeded(SeededBug::RangeLockNoRecheck) {
                break;
            }
        }
        b.push((id, lo, hi));
        RangeGuard {
            sp: self,
            key: (id, lo, hi),
        }
    }

    pub fn read(&self, id: VolumeId, offset: u64, buf: &mut [u8]) -> Result<()> {
        let _g = self.shared()?;
        let maps = self.lock()?.plan_read(id, offset, buf.len() as u64)?;
        read_data(self.data.as_ref(), self.block_size, offset, buf, &maps)
    }

    pub fn write(&self, id: VolumeId, offset: u64, data: &[u8]) -> Result<()> {
        {
            let _g = self.shared()?;
            let bs = self.block_size;
            let (lo, hi) = (
                offset / bs,
                (offset + data.len().max(1) as u64 - 1) / bs + 1,
            );
            let _r = self.lock_range(id, lo, hi);
            let plan = {
                let mut p = self.lock()?;
                let d = p.resolve(id, offset, data.len() as u64, Access::Write)?;
                if data.is_empty() {
                    return Ok(());
                }
                p.tm.check_writable()?;
                p.plan_write(id, d.snap_time, offset, data.len() as u64)
            };
            match plan {
                Ok(plan) => {
                    let io = write_data(self.data.as_ref(), bs, &plan, data);
                    let mut p = self.lock()?;
                    // Out of metadata: ENOSPC for this write, nothing changed (not the
                    // fail-stop a half-done tree update would need).
                    let res = match io.and_then(|()| p.finish_fits(&plan)) {
                        Ok(()) => p.finish_write(plan).inspect_err(|e| {
                            // finish_write returned to the last commit while other
                            // writes hold plans against the abandoned transaction:
                            // nothing may be committed any more.
                            p.tm.fail_stop(format!("metadata update failed: {e}"));
                        }),
                        Err(e) => {
                            p.release_plan(&plan)?;
                            Err(e)
                        }
                    };
                    match res {
                        Err(PoolError::Meta(MetaError::NoMetadataSpace)) => {} // retried below
                        r => return r,
                    }
                }
                // Retried below.
                Err(PoolError::Meta(MetaError::NoDataSpace | MetaError::NoMetadataSpace)) => {}
                Err(e) => return Err(e),
            }
        }
        // Out of space: blocks freed by the last commits are protected until two more
        // commits; with every request drained, the single-threaded path commits and retries
        // (and fails with ENOSPC, changing nothing, if that does not help).
        let mut ex = self.exclusive()?;
        ex.pool.shared = false;
        let r = ex.pool.write(id, offset, data);
        ex.pool.shared = true;
        r
    }

    pub fn discard(&self, id: VolumeId, offset: u64, len: u64) -> Result<()> {
        let _g = self.shared()?;
        let bs = self.block_size;
        let _r = self.lock_range(id, offset / bs, (offset + len.max(1) - 1) / bs + 1);
        self.lock()?.discard(id, offset, len)
    }

    pub fn write_zeroes(&self, id: VolumeId, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        if may_unmap {
            return self.discard(id, offset, len);
        }
        self.lock()?.resolve(id, offset, len, Access::Write)?;
        let chunk = (4u64 << 20).max(self.block_size);
        let zeros = vec![0u8; chunk as usize];
        let mut pos = offset;
        while pos < offset + len {
            let n = chunk.min(offset + len - pos);
            self.write(id, pos, &zeros[..n as usize])?;
            pos += n;
        }
        Ok(())
    }

    /// Make every data request completed before this call durable (FLUSH semantics). Joins
    /// the next commit when one is already running (it may have started before this
    /// caller's writes completed); a commit covers every caller waiting when it starts.
    pub fn commit(&self) -> Result<()> {
        let mut st = self.commits.lock().map_err(|_| PoolError::Poisoned)?;
        // The first commit that starts from now on covers this caller.
        let need = st.started + 1;
        loop {
            if st.finished >= need && st.last_ok {
                return Ok(());
            }
            if !st.running {
                // Nobody runs one (or the one that covered us failed: run it again here,
                // for this caller's own error).
                st.running = true;
                st.started += 1;
                let mine = st.started;
                drop(st);
                let r = self.run_commit();
                let mut st = self.commits.lock().unwrap_or_else(|e| e.into_inner());
                st.running = false;
                st.finished = mine;
                st.last_ok = r.is_ok();
                self.commit_done.notify_all();
                return r;
            }
            st = self.commit_done.wait(st).map_err(|_| PoolError::Poisoned)?;
        }
    }

    /// The timer's commit: only when metadata changed (new mappings, discards), or once
    /// more after a commit that freed data blocks, to punch them. Writes in place alone
    /// need a sync only on FLUSH, so an interval that saw nothing else costs nothing.
    pub fn periodic_commit(&self) -> Result<()> {
        let (dirty, frees) = {
            let p = self.lock()?;
            (p.metadata_dirty(), p.frees_pending())
        };
        if dirty {
            return self.commit();
        }
        // A TRIM's blocks were freed by the last commit: one more returns their space to
        // the filesystem now, not whenever the next mapping change comes.
        if frees {
            self.exclusive_synced()?.pool.return_freed_space()?;
        }
        Ok(())
    }

    /// Exclusive access with the data device synced first while requests keep flowing, so
    /// the commit a management command makes finds little to sync under the gate. If that
    /// sync fails the pool is fail-stopped, which the command then reports.
    pub fn exclusive_synced(&self) -> Result<Exclusive<'_>> {
        // Sync again while a sync was long and writes completed during it: each round
        // finds less (writeback of the rest is under way, see `writeback`), so the sync
        // that requests wait for below is short.
        let mut before = None;
        for _ in 0..PRESYNC_ROUNDS {
            let t0 = Instant::now();
            before = self.presync().ok();
            let quick = t0.elapsed() < PRESYNC_QUICK;
            if before.is_none() || quick || before == Some(self.lock()?.data_writes()) {
                break;
            }
        }
        let mut ex = self.exclusive()?;
        if before == Some(ex.pool.data_writes())
            || (before.is_some() && self.seeded(SeededBug::SkipSecondSync))
        {
            ex.pool.data_synced();
        }
        Ok(ex)
    }

    /// Start writeback of every dirty page of the data file when data was written since the
    /// last call (the server calls this every `WRITEBACK_EVERY`): dirty data stays small,
    /// so a FLUSH, a snapshot or the timer's commit never waits for seconds of it.
    /// Advisory; it waits for nothing but a congested device queue.
    pub fn writeback(&self, last: &mut u64) {
        let Ok(now) = self.lock().map(|p| p.data_writes()) else {
            return;
        };
        if now != *last {
            *last = now;
            let _ = self.data.start_writeback(0, self.data.len());
        }
    }

    /// Sync the data device without holding the gate; returns how many data writes had
    /// completed when the sync began (every one of them is durable when this returns).
    fn presync(&self) -> Result<u64> {
        let before = {
            let p = self.lock()?;
            p.tm.check_writable()?;
            p.data_writes()
        };
        if let Err(e) = self.data.flush() {
            return Err(self.lock()?.data_sync_failed(e));
        }
        Ok(before)
    }

    fn run_commit(&self) -> Result<()> {
        self.exclusive_synced()?.pool.commit()
    }
}

// These use real threads and std's channels: not with shuttle's locks.
#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    use super::*;
    use crate::io::MemDev;
    use crate::pool::CreateOptions;
    use rand::{Rng, SeedableRng};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    /// A data device that counts flushes and can hold the next flush until released.
    struct SlowFlush {
        inner: MemDev,
        flushes: AtomicUsize,
        hold_next: AtomicBool,
        entered: Mutex<Option<mpsc::Sender<()>>>,
        release: Mutex<Option<mpsc::Receiver<()>>>,
    }

    impl SlowFlush {
        fn new() -> Arc<SlowFlush> {
            Arc::new(SlowFlush {
                inner: MemDev::new(64 << 20).unwrap(),
                flushes: AtomicUsize::new(0),
                hold_next: AtomicBool::new(false),
                entered: Mutex::new(None),
                release: Mutex::new(None),
            })
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

    impl BlockDev for SlowFlush {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.inner.write_at(buf, offset)
        }
        fn flush(&self) -> std::io::Result<()> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            if self.hold_next.swap(false, Ordering::SeqCst) {
                if let Some(tx) = self.entered.lock().unwrap().take() {
                    tx.send(()).unwrap();
                }
                let rx = self.release.lock().unwrap().take().unwrap();
                rx.recv_timeout(Duration::from_secs(30)).unwrap();
            }
            self.inner.flush()
        }
        fn len(&self) -> u64 {
            self.inner.len()
        }
        fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
            self.inner.punch_hole(offset, len)
        }
        fn ensure_len(&self, len: u64) -> std::io::Result<()> {
            self.inner.ensure_len(len)
        }
    }

    fn slow_pool() -> (Arc<SharedPool>, Arc<SlowFlush>, VolumeId) {
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
}
