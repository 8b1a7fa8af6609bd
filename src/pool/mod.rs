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

mod data;
pub mod details;
mod error;
mod extents;
mod shared;
mod sync;
pub mod trees;
mod volume;
pub use volume::VolumeInfo;

pub use details::Details;
pub use error::{PoolError, Result};
pub use shared::SharedPool;
#[doc(hidden)]
pub use sync::SeededBug;

use crate::io::{BlockDev, FileDev};
use crate::meta::btree::Btree;
use crate::meta::journal::BlockRef;
use crate::meta::label::{Label, FORMAT_VERSION};
use crate::meta::txn::{OpenReport, Tm};
use crate::meta::{MetaError, BLOCK_SIZE};
use details::{IoVolume, DETAILS};
use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use trees::DEV_ROOTS;

/// Volume identifier (stable for the life of the volume).
pub type VolumeId = u64;

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
}

impl CreateOptions {
    pub fn new(size: u64) -> Self {
        CreateOptions {
            size,
            block_size: DEFAULT_BLOCK_SIZE,
            metadata_size: None,
            cache_blocks: DEFAULT_CACHE_BLOCKS,
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
        }
    }
}

/// A read-write open of a pool whose newest commit is damaged needs the user's consent: the
/// commit it falls back from was acknowledged (docs/format.md, "Open").
fn refuse_silent_rewind(report: &OpenReport, opts: &OpenOptions) -> Result<()> {
    if opts.read_only || opts.rewind || opts.at_seq.is_some() {
        return Ok(());
    }
    if let Some(r) = report.rewound() {
        return Err(PoolError::NeedsRewind(r));
    }
    Ok(())
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
    /// Owned by a [`SharedPool`]: never commit on its own.
    pub(crate) shared: bool,
    /// Bytes of newly mapped blocks written since writeback was last started.
    unkicked: u64,
}

fn lock(file: &File, path: &Path, exclusive: bool) -> Result<()> {
    // A lock that a process released an instant ago can still be held by a child that some
    // other thread forked in between (the descriptor is shared until the child execs), so a
    // busy lock is retried for a moment before the pool is declared in use.
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(250);
    loop {
        let locked =
            crate::io::lock::try_lock(file, exclusive).map_err(|source| PoolError::Io {
                path: path.to_path_buf(),
                op: "flock",
                source,
            })?;
        if locked {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(PoolError::InUse(path.to_path_buf()));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> PoolError {
    let path = path.to_path_buf();
    move |source| PoolError::Io { path, op, source }
}

fn new_uuid() -> [u8; 16] {
    use rand::RngCore;
    let mut u = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut u);
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
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

/// What a `Pool::create` in progress has made: removed again if it fails (nothing was
/// acknowledged, and a half-made pool would only make the retry fail with "exists").
#[derive(Default)]
struct PartialPool {
    files: Vec<PathBuf>,
    /// The directory, when `create` made it.
    dir: Option<PathBuf>,
}

impl PartialPool {
    fn keep(&mut self) {
        self.files.clear();
        self.dir = None;
    }
}

impl Drop for PartialPool {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir(d);
        }
    }
}

impl Pool {
    /// Create a pool in directory `dir` (created with mode 0700 if missing; must be empty).
    /// `metadata` and `data` are created 0600.
    pub fn create(dir: &Path, opts: &CreateOptions) -> Result<Pool> {
        validate_block_size(opts.block_size)?;
        let data_blocks = opts.size / opts.block_size;
        if data_blocks == 0 {
            return Err(PoolError::InvalidSize(format!(
                "pool size {} is smaller than one block ({})",
                opts.size, opts.block_size
            )));
        }
        if data_blocks >= 1 << 40 {
            return Err(PoolError::InvalidSize(
                "pool is larger than 2^40 data blocks".into(),
            ));
        }
        let meta_size = opts
            .metadata_size
            .unwrap_or_else(|| default_metadata_size(data_blocks));
        let meta_blocks = meta_size / BLOCK_SIZE as u64;
        if meta_blocks < 1024 {
            return Err(PoolError::InvalidSize(format!(
                "metadata size {meta_size} is below the 4 MiB minimum"
            )));
        }
        if meta_blocks > (16u64 << 30) / BLOCK_SIZE as u64 {
            return Err(PoolError::InvalidSize(
                "metadata size is above the 16 GiB maximum".into(),
            ));
        }
        let mut partial = PartialPool::default();
        if dir.exists() {
            if !dir.is_dir() {
                return Err(PoolError::Exists(dir.to_path_buf()));
            }
            let non_empty = std::fs::read_dir(dir)
                .map_err(io_err(dir, "read directory"))?
                .next()
                .is_some();
            if non_empty {
                return Err(PoolError::Exists(dir.to_path_buf()));
            }
        } else {
            // Missing parents as `mkdir -p` makes them; the pool's own directory is private
            // (0700), like its files. A directory the user made keeps its mode.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(io_err(parent, "create directory"))?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir, "create directory"))?;
            partial.dir = Some(dir.to_path_buf());
        }
        let mpath = dir.join("metadata");
        let dpath = dir.join("data");
        let mdev = FileDev::create(&mpath).map_err(io_err(&mpath, "create"))?;
        partial.files.push(mpath.clone());
        let lockf = mdev.file().try_clone().map_err(io_err(&mpath, "dup"))?;
        lock(&lockf, dir, true)?;
        // Metadata takes its whole size on disk now: a commit must never fail because the
        // filesystem filled up with data (only data writes may, and they fail cleanly).
        mdev.preallocate(meta_blocks * BLOCK_SIZE as u64)
            .map_err(io_err(&mpath, "reserve space for the metadata file"))?;
        let ddev = FileDev::create(&dpath).map_err(io_err(&dpath, "create"))?;
        partial.files.push(dpath.clone());
        ddev.ensure_len(data_blocks * opts.block_size)
            .map_err(io_err(&dpath, "size data file"))?;
        let label = Label {
            uuid: new_uuid(),
            version: FORMAT_VERSION,
            data_block_size: opts.block_size,
            ring_slots: RING_SLOTS,
            meta_blocks,
            created: now(),
        };
        let mdev: Arc<dyn BlockDev> = Arc::new(mdev);
        let mut tm = Tm::create(mdev, label, data_blocks, opts.cache_blocks)?;
        let details_root = tm.btree_empty(DETAILS)?;
        let top_root = tm.btree_empty(DEV_ROOTS)?;
        let mut pool = Pool {
            dir: dir.to_path_buf(),
            tm,
            data: Arc::new(ddev),
            _lock: Some(lockf),
            block_size: opts.block_size,
            details_root,
            top_root,
            next_id: 1,
            time: 0,
            data_dirty: true,
            data_writes: 0,
            report: None,
            punch_next: Vec::new(),
            punch_last_frees: false,
            shared: false,
            unkicked: 0,
            memo_vol: None,
            memo_root: None,
            extents: extents::Extents::default(),
        };
        pool.commit()?;
        // The files exist for good only once the directory entry is durable.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir, "sync directory"))?;
        partial.keep();
        Ok(pool)
    }

    /// Open an existing pool.
    pub fn open(dir: &Path, opts: &OpenOptions) -> Result<Pool> {
        let mpath = dir.join("metadata");
        let dpath = dir.join("data");
        if !mpath.exists() {
            return Err(PoolError::NotAPool(dir.to_path_buf()));
        }
        let writable = !opts.read_only;
        if opts.at_seq.is_some() && writable {
            return Err(PoolError::Meta(MetaError::ReadOnly(
                "an older state can only be opened read-only".into(),
            )));
        }
        let mdev = FileDev::open(&mpath, writable).map_err(io_err(&mpath, "open"))?;
        let lockf = mdev.file().try_clone().map_err(io_err(&mpath, "dup"))?;
        lock(&lockf, dir, writable)?;
        let ddev = crate::io::open_data_dev(&dpath, writable, opts.direct, opts.engine)
            .map_err(io_err(&dpath, "open"))?;
        let mdev: Arc<dyn BlockDev> = Arc::new(mdev);
        let (mut tm, report) = Tm::open_at(mdev, opts.cache_blocks, opts.read_only, opts.at_seq)?;
        refuse_silent_rewind(&report, opts)?;
        let ([details_root, top_root], [next_id, time]) = tm.user_state();
        let block_size = tm.label.data_block_size;
        let need = tm.dsm.nr_blocks * block_size;
        if ddev.len() < need {
            // Mapped data past the end of the file would read as zeros: the file was
            // truncated or replaced, and the pool does not open (dm-thin likewise refuses
            // a data device smaller than its metadata says).
            if let Some(b) = tm.highest_used_data_block(ddev.len() / block_size)? {
                return Err(PoolError::DataTooShort {
                    path: dpath,
                    len: ddev.len(),
                    block: b,
                    need: (b + 1) * block_size,
                });
            }
        }
        if ddev.len() < need && writable {
            // A sparse data file that lost its tail (e.g. copied without sparseness) is
            // restored to its size; reads past the end were zeros anyway.
            ddev.ensure_len(need)
                .map_err(io_err(&dpath, "size data file"))?;
        }
        let mut pool = Pool {
            dir: dir.to_path_buf(),
            tm,
            data: ddev,
            _lock: Some(lockf),
            block_size,
            details_root,
            top_root,
            next_id,
            time,
            data_dirty: false,
            data_writes: 0,
            report: Some(report),
            punch_next: Vec::new(),
            punch_last_frees: !opts.read_only,
            shared: false,
            unkicked: 0,
            memo_vol: None,
            memo_root: None,
            extents: extents::Extents::default(),
        };
        pool.record_rewind()?;
        Ok(pool)
    }

    /// After an accepted rewind, commit at once: the next open then finds an intact newest
    /// record and needs no consent again.
    fn record_rewind(&mut self) -> Result<()> {
        if !self.tm.read_only && self.report.as_ref().is_some_and(|r| r.rewound().is_some()) {
            self.force_commit()?;
        }
        Ok(())
    }

    /// A pool on arbitrary devices (in-memory tests, simulations). No directory, no lock.
    pub fn create_on(
        meta: Arc<dyn BlockDev>,
        data: Arc<dyn BlockDev>,
        opts: &CreateOptions,
    ) -> Result<Pool> {
        validate_block_size(opts.block_size)?;
        let data_blocks = opts.size / opts.block_size;
        let meta_size = opts
            .metadata_size
            .unwrap_or_else(|| default_metadata_size(data_blocks));
        let label = Label {
            uuid: new_uuid(),
            version: FORMAT_VERSION,
            data_block_size: opts.block_size,
            ring_slots: RING_SLOTS,
            meta_blocks: meta_size / BLOCK_SIZE as u64,
            created: now(),
        };
        let mut tm = Tm::create(meta, label, data_blocks, opts.cache_blocks)?;
        let details_root = tm.btree_empty(DETAILS)?;
        let top_root = tm.btree_empty(DEV_ROOTS)?;
        let mut pool = Pool {
            dir: PathBuf::new(),
            tm,
            data,
            _lock: None,
            block_size: opts.block_size,
            details_root,
            top_root,
            next_id: 1,
            time: 0,
            data_dirty: true,
            data_writes: 0,
            report: None,
            punch_next: Vec::new(),
            punch_last_frees: false,
            shared: false,
            unkicked: 0,
            memo_vol: None,
            memo_root: None,
            extents: extents::Extents::default(),
        };
        pool.commit()?;
        Ok(pool)
    }

    /// Open a pool on arbitrary devices.
    pub fn open_on(
        meta: Arc<dyn BlockDev>,
        data: Arc<dyn BlockDev>,
        opts: &OpenOptions,
    ) -> Result<Pool> {
        let (tm, report) = Tm::open_at(meta, opts.cache_blocks, opts.read_only, opts.at_seq)?;
        refuse_silent_rewind(&report, opts)?;
        let ([details_root, top_root], [next_id, time]) = tm.user_state();
        let block_size = tm.label.data_block_size;
        let mut pool = Pool {
            dir: PathBuf::new(),
            tm,
            data,
            _lock: None,
            block_size,
            details_root,
            top_root,
            next_id,
            time,
            data_dirty: false,
            data_writes: 0,
            report: Some(report),
            punch_next: Vec::new(),
            punch_last_frees: !opts.read_only,
            shared: false,
            unkicked: 0,
            memo_vol: None,
            memo_root: None,
            extents: extents::Extents::default(),
        };
        pool.record_rewind()?;
        Ok(pool)
    }

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
        self.tm.last.seq
    }
    pub fn is_read_only(&self) -> bool {
        self.tm.read_only
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
        if self.data_dirty {
            self.sync_data()?;
        }
        // Before the commit moves the protected window: what the last commit freed.
        let last_frees = if std::mem::take(&mut self.punch_last_frees) {
            self.tm.data_freed_by_last_commit()?
        } else {
            Vec::new()
        };
        self.tm.commit(
            [self.details_root, self.top_root],
            [self.next_id, self.time],
        )?;
        // Blocks freed in the previous transaction leave the protected window (S, S-1) with
        // this commit and nothing can have reused them yet: punch them now, so the data file
        // stays sparse without ever zeroing a block an older record still maps.
        let mut leaving = std::mem::replace(
            &mut self.punch_next,
            std::mem::take(&mut self.tm.data_freed),
        );
        leaving.extend(last_frees);
        for b in leaving {
            if self.tm.data_count(crate::meta::DataBlock(b))? == 0 {
                self.punch_block(b);
            }
        }
        Ok(())
    }

    /// Give back the file space of data block `b`, which nothing maps. Punching only
    /// reclaims space; a failure leaves correct data behind.
    pub(crate) fn punch_block(&mut self, b: u64) {
        let _ = self.data.punch_hole(b * self.block_size, self.block_size);
        self.extents.punched(self.block_size, b);
    }

    /// Abort the transaction in progress after a failed operation: back to the last commit.
    pub(crate) fn abort(&mut self) {
        self.tm.abort();
        let ([d, t], [n, time]) = self.tm.user_state();
        self.set_details_root(d);
        self.set_top_root(t);
        self.next_id = n;
        self.time = time;
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

    pub(crate) fn maybe_auto_commit(&mut self) -> Result<()> {
        // A shared pool commits only with every data request drained (see shared.rs).
        if !self.shared && self.tm.bm.dirty_count() > AUTO_COMMIT_DIRTY {
            self.commit()?;
        }
        Ok(())
    }

    /// Newly mapped blocks are what the next commit must sync before its record: once every
    /// `WRITEBACK_KICK` bytes of them, start writeback of the whole data file (advisory:
    /// an error changes nothing), so the commit's fdatasync finds little left. One call
    /// over the file lets the kernel submit every dirty page in one batched pass; a call
    /// per block cost a device submission each, and was half of a first write's time. A
    /// shared pool leaves this to the server's writeback thread (`SharedPool::writeback`),
    /// off the request path.
    pub(crate) fn note_new_data(&mut self, bytes: u64) {
        if self.shared {
            return;
        }
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
            uuid: format_uuid(&self.tm.label.uuid),
            format_version: self.tm.label.version,
            block_size: self.block_size,
            data_blocks_total: self.tm.dsm.nr_blocks,
            data_blocks_used: self.tm.dsm.nr_allocated,
            metadata_blocks_total: self.tm.msm.nr_blocks,
            metadata_blocks_used: self.tm.meta_used()?,
            seq: self.tm.last.seq,
            volumes,
            read_only: self.tm.read_only,
        })
    }

    /// Grow the data space to `size` bytes (shrinking a pool is not supported).
    pub fn grow(&mut self, size: u64) -> Result<()> {
        let blocks = size / self.block_size;
        let cur = self.tm.dsm.nr_blocks;
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
        self.tm.broken_commit_order = on;
    }

    /// Current length of the data device in bytes.
    pub fn data_len(&self) -> u64 {
        self.data.len()
    }

    /// The metadata device (the checker reads it directly).
    pub fn metadata_dev(&self) -> Arc<dyn BlockDev> {
        self.tm.bm.dev().clone()
    }

    /// Metadata cache statistics.
    pub fn cache_stats(&self) -> crate::meta::cache::CacheStats {
        self.tm.bm.stats
    }
}
