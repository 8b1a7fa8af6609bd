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
use super::sync::{
    Condvar, Instant, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, SeededBug,
};
use super::write::zero_chunks;
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
    pub fn new(pool: Pool) -> SharedPool {
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
        self.meta.into_inner().map_err(|_| PoolError::Poisoned)
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Volume `id`'s `[offset, offset+len)` will be read soon: ask the data device to read
    /// ahead the blocks it maps there (at most `limit` mappings; unmapped blocks read as
    /// zeros without I/O). Advisory: nothing changes, and a device that cannot gains
    /// nothing (NBD_CMD_CACHE).
    pub fn will_need(&self, id: VolumeId, offset: u64, len: u64, limit: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let bs = self.block_size;
        let (maps, data) = {
            let mut pool = self.lock()?;
            let maps = pool.mappings(id, offset / bs, (offset + len - 1) / bs + 1, limit)?;
            (maps, pool.data.clone())
        };
        // Runs of consecutive data blocks, one advice each.
        let mut run: Option<(u64, u64)> = None;
        let advise = |r: (u64, u64)| {
            // Advice that fails (a device without a page cache) changes nothing either.
            let _ = data.will_need(r.0 * bs, r.1 * bs);
        };
        for (_, pb) in maps {
            run = match run {
                Some((start, n)) if start + n == pb => Some((start, n + 1)),
                Some(r) => {
                    advise(r);
                    Some((pb, 1))
                }
                None => Some((pb, 1)),
            };
        }
        if let Some(r) = run {
            advise(r);
        }
        Ok(())
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

    /// Write `data` at `offset`: plan under the metadata lock, data I/O outside it, finish
    /// under it again (see the module header). Never commits; out of space, it retries once
    /// with every request drained (`Pool::write_tx`, which commits to release protected
    /// blocks).
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
                let Some(v) = p.check_write(id, offset, data.len() as u64)? else {
                    return Ok(());
                };
                p.plan_write(id, v.snap_time, offset, data.len() as u64)
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
        // Out of space: with every request drained, the single-threaded step retries (and
        // fails with ENOSPC, changing nothing, if two commits do not help).
        self.exclusive()?
            .pool
            .write_tx(id, offset, data)
            .map(|_| ())
    }

    pub fn discard(&self, id: VolumeId, offset: u64, len: u64) -> Result<()> {
        let _g = self.shared()?;
        let bs = self.block_size;
        let _r = self.lock_range(id, offset / bs, (offset + len.max(1) - 1) / bs + 1);
        self.lock()?.discard_tx(id, offset, len)
    }

    pub fn write_zeroes(&self, id: VolumeId, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        if may_unmap {
            return self.discard(id, offset, len);
        }
        if self.lock()?.check_write(id, offset, len)?.is_none() {
            return Ok(());
        }
        // The whole range was checked above, so nothing is written when any of it is out
        // of range; each chunk's write checks its own piece again (cheap: the volume is memoised).
        zero_chunks(self.block_size, offset, len, |pos, z| {
            self.write(id, pos, z)
        })
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

    /// The server's timer: the low-space warnings, and an autoextend (with every request
    /// drained) once data use crossed its mark (`Pool::watch_space`).
    pub fn watch_space(&self) -> Result<()> {
        let grow = self.lock()?.watch_space()?;
        if grow {
            self.exclusive_synced()?.pool.autoextend()?;
        }
        Ok(())
    }

    fn run_commit(&self) -> Result<()> {
        self.exclusive_synced()?.pool.commit()
    }
}

// These use real threads and std's channels: not with shuttle's locks.
#[cfg(all(test, not(feature = "shuttle")))]
#[path = "shared_tests.rs"]
mod tests;
