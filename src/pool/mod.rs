//! Pools and thin volumes: the public API every frontend (CLI, NBD, export) adapts.
//!
//! A pool is a directory with `metadata` and `data` files. The metadata holds two user trees
//! (see [`crate::meta`]): the details tree (`id -> Details`) and the top-level mapping tree
//! (`id -> root of the volume's mapping tree`). A volume's tree maps virtual blocks to data
//! blocks. A snapshot shares the origin's tree root (one more reference: O(1)); a shared block
//! is copied on its first write.
//!
//! Management operations commit before they return. Data writes become durable at the next
//! [`Pool::commit`] (a flush), which frontends call on FLUSH/FUA and on a timer.

mod build;
mod data;
pub mod details;
mod error;
mod extents;
mod open;
mod shared;
pub mod sizing;
mod space;
pub mod stats;
mod sync;
pub mod trees;
mod trim;
mod volume;
mod write;
pub(crate) use build::VolumeBuilder;
pub(crate) use open::NewPool;
pub use trim::Trimmed;
pub(crate) use volume::check_size_fits;
pub use volume::VolumeInfo;

pub use details::Details;
pub use error::{PoolError, Result};
pub use shared::SharedPool;
pub use space::LowSpace;
#[doc(hidden)]
pub use sync::SeededBug;

use crate::io::BlockDev;
use crate::meta::btree::Btree;
use crate::meta::journal::BlockRef;
use crate::meta::txn::{OpenReport, Tm, UserRoots};
use crate::meta::BLOCK_SIZE;
use details::{IoVolume, DETAILS};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Volume identifier (stable for the life of the volume; the key of the details and
/// top-level trees, dm-thin's `dev_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct VolumeId(pub u64);

impl std::fmt::Display for VolumeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A block of a volume's virtual address space (byte offset / block size), the key of its
/// mapping tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VirtualBlock(pub u64);

impl VirtualBlock {
    /// The block holding volume byte `offset`.
    pub fn containing(offset: u64, block_size: u64) -> VirtualBlock {
        VirtualBlock(offset / block_size)
    }
    /// Its first byte in the volume.
    pub fn start(self, block_size: u64) -> u64 {
        self.0 * block_size
    }
    /// The part of volume bytes `[lo, hi)` inside this block, as volume byte offsets.
    pub fn clip(self, block_size: u64, lo: u64, hi: u64) -> (u64, u64) {
        (
            self.start(block_size).max(lo),
            (self.start(block_size) + block_size).min(hi),
        )
    }
}

/// Default metadata cache: 8192 blocks (32 MiB).
pub const DEFAULT_CACHE_BLOCKS: usize = 8192;
/// Default data block size.
pub const DEFAULT_BLOCK_SIZE: u64 = 64 * 1024;
/// Journal slots per ring.
pub const RING_SLOTS: u32 = 64;
/// Dirty metadata blocks after which a write commits on its own, bounding a transaction.
const AUTO_COMMIT_DIRTY: usize = 2048;
/// See [`Pool::note_new_data`].
const WRITEBACK_KICK: u64 = 8 << 20;

#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Data capacity in bytes (rounded down to whole blocks).
    pub size: u64,
    pub block_size: u64,
    /// Metadata file size in bytes; default scales with the data size.
    pub metadata_size: Option<u64>,
    pub cache_blocks: usize,
    /// Use this existing file (or block device) as the data file, in place: the pool's
    /// `data` becomes a symlink to it (its absolute path), and it must already hold the
    /// pool's size. Nothing in it is written by the creation. `None`: a new sparse file.
    pub data_file: Option<PathBuf>,
}

impl CreateOptions {
    pub fn new(size: u64) -> Self {
        CreateOptions {
            size,
            block_size: DEFAULT_BLOCK_SIZE,
            metadata_size: None,
            cache_blocks: DEFAULT_CACHE_BLOCKS,
            data_file: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub read_only: bool,
    pub cache_blocks: usize,
    /// Open the state of an older commit (requires `read_only`).
    pub at_seq: Option<u64>,
    /// Accept a rewind: when the newest commit's trees are damaged, a read-write open is
    /// refused ([`PoolError::NeedsRewind`]) unless this is set; then the pool opens at the
    /// newest intact commit and commits at once, so the rewind is recorded.
    pub rewind: bool,
    /// How the data file is accessed: io_uring or pread/pwrite (`Auto`: io_uring when this
    /// process may use it).
    pub engine: crate::io::Engine,
    /// Open the data file with O_DIRECT (the page cache bypassed, like `qemu-nbd
    /// --cache=none`); unaligned requests go through aligned bounce buffers.
    pub direct: bool,
    /// How long a lock held by another process is waited for before the open fails with
    /// [`PoolError::InUse`] (default 250 ms).
    pub lock_wait: std::time::Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            cache_blocks: DEFAULT_CACHE_BLOCKS,
            at_seq: None,
            rewind: false,
            engine: crate::io::Engine::from_env(),
            direct: false,
            lock_wait: open::LOCK_WAIT,
        }
    }
}

/// Pool-wide figures (`thinpool pool info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    pub uuid: String,
    pub format_version: u32,
    pub block_size: u64,
    pub data_blocks_total: u64,
    pub data_blocks_used: u64,
    pub metadata_blocks_total: u64,
    pub metadata_blocks_used: u64,
    pub seq: u64,
    pub volumes: u64,
    pub read_only: bool,
}

/// Default metadata size for a pool of `data_blocks` blocks: 64 bytes per data block
/// (a mapping costs 16 bytes in a full leaf; the rest covers half-full leaves, snapshots'
/// copied leaves, space maps and the two protected older states), at least 8 MiB.
pub fn default_metadata_size(data_blocks: u64) -> u64 {
    (data_blocks.saturating_mul(64))
        .clamp(8 << 20, 16 << 30)
        .next_multiple_of(BLOCK_SIZE as u64)
}

pub struct Pool {
    dir: PathBuf,
    pub(crate) tm: Tm,
    pub(crate) data: Arc<dyn BlockDev>,
    _lock: Option<File>,
    /// The same on the data file (docs/format.md: two pools never share one).
    _data_lock: Option<File>,
    block_size: u64,
    /// The two top-level trees' roots. Assigned only through `set_details_root` and
    /// `set_top_root`, which clear the data path's memo of them.
    pub(crate) details_root: BlockRef,
    pub(crate) top_root: BlockRef,
    /// The data path's last lookups in those trees: a volume's `IoVolume` and its mapping
    /// root, reused while neither tree changes (a write in place changes neither).
    memo_vol: Option<(VolumeId, IoVolume)>,
    memo_root: Option<(VolumeId, BlockRef)>,
    /// Chunks of the data file allocated ahead of the writes into them.
    extents: extents::Extents,
    pub(crate) next_id: u64,
    pub(crate) time: u64,
    data_dirty: bool,
    /// Completed data writes, counted so a sync that began after the n-th knows it covers
    /// every write up to it (see `SharedPool::exclusive_synced`).
    data_writes: u64,
    report: Option<OpenReport>,
    /// Data blocks freed by the last commit's transaction, punched after the next commit.
    punch_next: Vec<u64>,
    /// Opened read-write and not committed yet: the blocks the previous commit freed (by
    /// a process that exited before punching them) are punched after the first commit.
    punch_last_frees: bool,
    /// Bytes of newly mapped blocks written since writeback was last started.
    unkicked: u64,
    /// The low-space policy and its warnings (`space.rs`).
    space: space::SpaceState,
    /// Commits and space, for readers outside the pool lock (`stats.rs`).
    stats: Arc<stats::PoolStats>,
}

/// The pool's part of every commit record, named: the transaction manager keeps it as two
/// opaque roots and two counters ([`crate::meta::txn::UserRoots`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UserState {
    /// Root of the details tree (`id -> Details`).
    pub details_root: BlockRef,
    /// Root of the top-level tree (`id -> mapping tree root`).
    pub top_root: BlockRef,
    /// The id the next new volume gets.
    pub next_id: u64,
    /// The pool time: bumped by every snapshot, stored in each mapping (see `write_once`).
    pub time: u64,
}

impl From<UserRoots> for UserState {
    fn from(u: UserRoots) -> UserState {
        let ([details_root, top_root], [next_id, time]) = (u.roots, u.counters);
        UserState {
            details_root,
            top_root,
            next_id,
            time,
        }
    }
}

impl From<UserState> for UserRoots {
    fn from(u: UserState) -> UserRoots {
        UserRoots {
            roots: [u.details_root, u.top_root],
            counters: [u.next_id, u.time],
        }
    }
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> PoolError {
    let path = path.to_path_buf();
    move |source| PoolError::Io { path, op, source }
}

pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Check block-size rules: a power of two from 4 KiB to 1 GiB.
pub fn validate_block_size(bs: u64) -> Result<()> {
    if !bs.is_power_of_two() || !(4096..=1 << 30).contains(&bs) {
        return Err(PoolError::InvalidSize(format!(
            "block size {bs} must be a power of two from 4K to 1G"
        )));
    }
    Ok(())
}

impl Pool {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn block_size(&self) -> u64 {
        self.block_size
    }
    /// What open found in the journal (`None` for a pool created by this process).
    pub fn open_report(&self) -> Option<&OpenReport> {
        self.report.as_ref()
    }
    /// Sequence number of the last durable commit.
    pub fn seq(&self) -> u64 {
        self.tm.last_record().seq
    }
    pub fn is_read_only(&self) -> bool {
        self.tm.is_read_only()
    }

    /// Make everything done so far durable (data sync, then the metadata commit protocol).
    /// A no-op when nothing changed; only a data sync when only data changed (writes in
    /// place: no mapping to record).
    pub fn commit(&mut self) -> Result<()> {
        if self.tm.is_dirty() {
            return self.force_commit();
        }
        if self.data_dirty {
            self.tm.check_writable()?;
            self.sync_data()?;
        }
        Ok(())
    }

    /// Commit once more, changing nothing, when the last commit freed data blocks, so they
    /// are punched from the data file now: a freed block is punched once no protected
    /// record maps it, i.e. by the commit after the one that freed it (docs/format.md).
    /// Without this the space a `discard` or `remove` freed reached `df` only with some
    /// later command's commit. Does nothing while the transaction has uncommitted changes.
    pub fn return_freed_space(&mut self) -> Result<()> {
        if self.frees_pending() && !self.tm.is_dirty() {
            self.force_commit()?;
        }
        Ok(())
    }

    /// The last commit freed data blocks that are not punched yet.
    pub(crate) fn frees_pending(&self) -> bool {
        !self.punch_next.is_empty()
    }

    /// True when the transaction in progress changed metadata (a commit would write a
    /// record); in-place data writes alone do not count.
    pub fn metadata_dirty(&self) -> bool {
        self.tm.is_dirty()
    }

    /// `fdatasync` the data device. An error fail-stops the pool: data whose durability is
    /// unknown is never acknowledged.
    fn sync_data(&mut self) -> Result<()> {
        if let Err(e) = self.data.flush() {
            return Err(self.data_sync_failed(e));
        }
        self.data_dirty = false;
        Ok(())
    }

    /// A failed data fdatasync fail-stops the pool: data whose durability is unknown is
    /// never acknowledged. Returns the error to report.
    pub(crate) fn data_sync_failed(&mut self, source: std::io::Error) -> PoolError {
        let err = PoolError::DataIo {
            op: "fdatasync",
            offset: 0,
            source,
        };
        self.tm.fail_stop(err.to_string());
        err
    }

    /// Another thread synced the data device after every data write so far completed
    /// (`SharedPool`'s commit syncs before it drains requests): nothing is left to sync.
    pub(crate) fn data_synced(&mut self) {
        self.data_dirty = false;
    }

    /// Commit even when nothing changed (advances the protected states).
    pub(crate) fn force_commit(&mut self) -> Result<()> {
        self.tm.check_writable()?;
        let t0 = std::time::Instant::now();
        let data_synced = self.data_dirty;
        if self.data_dirty {
            self.sync_data()?;
        }
        let data_ms = t0.elapsed().as_secs_f64() * 1e3;
        let dirty = self.tm.dirty_blocks();
        // Before the commit moves the protected window: what the last commit freed.
        let last_frees = if std::mem::take(&mut self.punch_last_frees) {
            self.tm.data_freed_by_last_commit()?
        } else {
            Vec::new()
        };
        let rec = self.tm.commit(self.user_state().into()).inspect_err(|e| {
            tracing::error!("commit failed: {e}");
        })?;
        let took = t0.elapsed();
        tracing::debug!(
            seq = rec.seq,
            metadata_blocks = dirty,
            data_sync_in_commit = data_synced,
            data_sync_ms = data_ms,
            ms = took.as_secs_f64() * 1e3,
            "commit"
        );
        self.stats.commit_done(took, data_synced);
        self.publish_space()?;
        // Blocks freed in the previous transaction leave the protected window (S, S-1) with
        // this commit and nothing can have reused them yet: punch them now, so the data file
        // stays sparse without ever zeroing a block an older record still maps.
        let mut leaving = std::mem::replace(&mut self.punch_next, self.tm.take_data_freed());
        leaving.extend(last_frees);
        for b in leaving {
            if self.tm.data_count(crate::meta::DataBlock(b))? == 0 {
                self.punch_block(b);
            }
        }
        Ok(())
    }

    /// The descriptors holding the pool's locks (metadata and data file), for a child
    /// process that must keep the pool locked until it exits (`io::sys::inherit_fds`).
    pub fn lock_fds(&self) -> Vec<std::os::unix::io::RawFd> {
        use std::os::unix::io::AsRawFd;
        [&self._lock, &self._data_lock]
            .into_iter()
            .flatten()
            .map(|f| f.as_raw_fd())
            .collect()
    }

    /// What this pool has done since it was opened (commits, space), readable without its
    /// lock.
    pub fn stats(&self) -> Arc<stats::PoolStats> {
        self.stats.clone()
    }

    /// Refresh the space figures [`Pool::stats`] shows.
    /// Returns them, for a caller that looks at them too (`watch_space`).
    pub(crate) fn publish_space(&mut self) -> Result<stats::SpaceFigures> {
        let (d, m) = (self.tm.data_space(), self.tm.meta_space());
        let figures = stats::SpaceFigures {
            block_size: self.block_size,
            data_used: d.allocated,
            data_total: d.total,
            meta_used: self.tm.meta_used()?,
            meta_total: m.total,
            warn_at: self.space.policy.warn_at,
        };
        self.stats.set_space(figures);
        Ok(figures)
    }

    /// Give back the file space of data block `b`, which nothing maps. Punching only
    /// reclaims space; a failure leaves correct data behind.
    pub(crate) fn punch_block(&mut self, b: u64) {
        let _ = self.data.punch_hole(b * self.block_size, self.block_size);
        self.extents.punched(self.block_size, b);
    }

    fn user_state(&self) -> UserState {
        UserState {
            details_root: self.details_root,
            top_root: self.top_root,
            next_id: self.next_id,
            time: self.time,
        }
    }

    fn set_user_state(&mut self, u: UserState) {
        self.set_details_root(u.details_root);
        self.set_top_root(u.top_root);
        self.next_id = u.next_id;
        self.time = u.time;
    }

    /// Abort the transaction in progress after a failed operation: back to the last commit.
    pub(crate) fn abort(&mut self) {
        self.tm.abort();
        self.set_user_state(self.tm.user_state().into());
    }

    /// Run a management operation as one transaction: committed on success, rolled back
    /// entirely on failure.
    pub(crate) fn atomically<T>(&mut self, f: impl FnOnce(&mut Pool) -> Result<T>) -> Result<T> {
        self.tm.check_writable()?;
        // Earlier data writes belong to the previous transaction: make them durable first so
        // an abort below cannot take them away.
        self.commit()?;
        match f(self) {
            Ok(v) => {
                self.force_commit()?;
                Ok(v)
            }
            Err(e) => {
                self.abort();
                Err(e)
            }
        }
    }

    /// Single-threaded requests only (`SharedPool` commits only with every data request
    /// drained, see shared.rs, and calls the `_tx` steps that never get here).
    pub(crate) fn maybe_auto_commit(&mut self) -> Result<()> {
        if self.tm.dirty_blocks() > AUTO_COMMIT_DIRTY {
            self.commit()?;
        }
        Ok(())
    }

    /// Newly mapped blocks are what the next commit must sync before its record: once every
    /// `WRITEBACK_KICK` bytes of them, start writeback of the whole data file (advisory:
    /// an error changes nothing), so the commit's fdatasync finds little left. One call
    /// over the file lets the kernel submit every dirty page in one batched pass; a call
    /// per block cost a device submission each, and was half of a first write's time.
    /// Single-threaded writes only: a shared pool leaves this to the server's writeback
    /// thread (`SharedPool::writeback`), off the request path.
    pub(crate) fn note_new_data(&mut self, bytes: u64) {
        self.unkicked += bytes;
        if self.unkicked >= WRITEBACK_KICK {
            self.unkicked = 0;
            let _ = self.data.start_writeback(0, self.data.len());
        }
    }

    /// Called after every data write's I/O returned (under the metadata lock).
    pub(crate) fn note_data_write(&mut self) {
        self.data_dirty = true;
        self.data_writes += 1;
    }

    /// Data writes completed so far in this process ([`Pool::note_data_write`] calls).
    pub(crate) fn data_writes(&self) -> u64 {
        self.data_writes
    }

    /// Pool-wide figures.
    pub fn info(&mut self) -> Result<PoolInfo> {
        let volumes = self.tm.btree_count(self.details_root, DETAILS)?;
        Ok(PoolInfo {
            uuid: format_uuid(&self.tm.label().uuid),
            format_version: self.tm.label().version,
            block_size: self.block_size,
            data_blocks_total: self.tm.data_space().total,
            data_blocks_used: self.tm.data_space().allocated,
            metadata_blocks_total: self.tm.meta_space().total,
            metadata_blocks_used: self.tm.meta_used()?,
            seq: self.tm.last_record().seq,
            volumes,
            read_only: self.tm.is_read_only(),
        })
    }

    /// Grow the data space to `size` bytes (shrinking a pool is not supported).
    pub fn grow(&mut self, size: u64) -> Result<()> {
        let blocks = size / self.block_size;
        let cur = self.tm.data_space().total;
        if blocks < cur {
            return Err(PoolError::InvalidSize(format!(
                "new size {size} is smaller than the pool ({} bytes); pools only grow",
                cur * self.block_size
            )));
        }
        if blocks >= 1 << 40 {
            return Err(PoolError::InvalidSize(
                "pool is larger than 2^40 data blocks".into(),
            ));
        }
        if blocks == cur {
            return Ok(());
        }
        self.data
            .ensure_len(blocks * self.block_size)
            .map_err(|source| PoolError::DataIo {
                op: "grow",
                offset: blocks * self.block_size,
                source,
            })?;
        self.atomically(|p| Ok(p.tm.grow_data(blocks)?))
    }

    /// Test-only switch: commit with the record written before the new metadata is synced.
    #[doc(hidden)]
    pub fn set_broken_commit_order(&mut self, on: bool) {
        self.tm.set_broken_commit_order(on);
    }

    /// Current length of the data device in bytes.
    pub fn data_len(&self) -> u64 {
        self.data.len()
    }

    /// The metadata device (the checker reads it directly).
    pub fn metadata_dev(&self) -> Arc<dyn BlockDev> {
        self.tm.metadata_dev().clone()
    }

    /// Metadata cache statistics.
    pub fn cache_stats(&self) -> crate::meta::cache::CacheStats {
        self.tm.cache_stats()
    }
}
