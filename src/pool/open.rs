//! Making and opening pools: in a directory (`metadata` and `data` files, the pool lock) or
//! on any pair of devices (tests, simulations). Every `Pool` value is built by
//! `Pool::assemble`.

use super::details::DETAILS;
use super::trees::DEV_ROOTS;
use super::{
    default_metadata_size, extents, io_err, now, validate_block_size, CreateOptions, OpenOptions,
    Pool, PoolError, Result, UserState, RING_SLOTS,
};
use crate::io::{BlockDev, FileDev};
use crate::meta::btree::Btree;
use crate::meta::label::{Label, FORMAT_VERSION};
use crate::meta::txn::{OpenReport, Tm};
use crate::meta::{MetaError, BLOCK_SIZE};
use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// How long a busy lock is retried by default (see `lock_or`).
pub(crate) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

fn lock(file: &File, path: &Path, exclusive: bool, wait: std::time::Duration) -> Result<()> {
    lock_or(file, path, exclusive, wait, || {
        PoolError::InUse(path.to_path_buf())
    })
}

/// Lock the data file too (shared for a read-only open, exclusive otherwise), so that two
/// pools never use one data file at once: a restore or adopt onto another pool's data file,
/// or two pools whose `data` links lead to one file.
fn lock_data(path: &Path, exclusive: bool, wait: std::time::Duration) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: a FIFO in its place must not hang the open (the data device's own open
    // refuses it).
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err(path, "open"))?;
    lock_or(&f, path, exclusive, wait, || {
        PoolError::DataInUse(path.to_path_buf())
    })?;
    Ok(f)
}

fn lock_or(
    file: &File,
    path: &Path,
    exclusive: bool,
    wait: std::time::Duration,
    busy: impl Fn() -> PoolError,
) -> Result<()> {
    // A lock that a process released an instant ago can still be held by a child that some
    // other thread forked in between (the descriptor is shared until the child execs), so a
    // busy lock is retried for a moment (`wait`) before the pool is declared in use.
    let deadline = std::time::Instant::now() + wait;
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
            return Err(busy());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn new_uuid() -> [u8; 16] {
    use rand::RngCore;
    let mut u = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut u);
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
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

/// A pool being created: not committed yet, and removed (its files, and its directory if
/// the creation made it) unless [`NewPool::finish`] commits it. Never removes the target of
/// an adopted data file, only the symlink to it.
pub(crate) struct NewPool {
    // Declared first, so it is dropped (its files closed) before `partial` removes them.
    pool: Pool,
    partial: PartialPool,
}

impl NewPool {
    pub(crate) fn pool(&mut self) -> &mut Pool {
        &mut self.pool
    }

    /// Commit the pool's first state and make its directory entries durable.
    pub(crate) fn finish(mut self) -> Result<Pool> {
        self.pool.commit()?;
        let dir = self.pool.dir.clone();
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&dir, "sync directory"))?;
        self.partial.keep();
        Ok(self.pool)
    }
}

/// The absolute path of an existing data file to adopt, checked: a regular file or a block
/// device, at least `need` bytes long (nothing is grown or written: it is not ours).
fn adoptable_data_file(f: &Path, need: u64) -> Result<PathBuf> {
    let target = std::fs::canonicalize(f).map_err(io_err(f, "find the data file"))?;
    let m = std::fs::metadata(&target).map_err(io_err(&target, "stat"))?;
    use std::os::unix::fs::FileTypeExt;
    if !(m.is_file() || m.file_type().is_block_device()) {
        return Err(PoolError::InvalidSize(format!(
            "{} is not a regular file or a block device, so it cannot be a data file",
            target.display()
        )));
    }
    let len = if m.is_file() {
        m.len()
    } else {
        FileDev::open(&target, false)
            .map_err(io_err(&target, "open"))?
            .len()
    };
    if len < need {
        return Err(PoolError::InvalidSize(format!(
            "data file {} holds {len} bytes, but the pool needs {need}; grow it first \
             (e.g. `truncate -s {need} {}`)",
            target.display(),
            target.display()
        )));
    }
    Ok(target)
}

impl Pool {
    /// The one constructor: a pool around an opened (`report` given) or just created
    /// transaction manager, its user state as the last record holds it. No directory and no
    /// lock yet (the callers that have them set them).
    fn assemble(tm: Tm, data: Arc<dyn BlockDev>, report: Option<OpenReport>) -> Pool {
        let user = UserState::from(tm.user_state());
        let opened = report.is_some();
        let punch_last_frees = opened && !tm.is_read_only();
        Pool {
            dir: PathBuf::new(),
            block_size: tm.label().data_block_size,
            tm,
            data,
            _lock: None,
            _data_lock: None,
            details_root: user.details_root,
            top_root: user.top_root,
            next_id: user.next_id,
            time: user.time,
            // A new pool's first commit syncs its freshly sized data file too.
            data_dirty: !opened,
            data_writes: 0,
            report,
            punch_next: Vec::new(),
            punch_last_frees,
            unkicked: 0,
            space: Default::default(),
            stats: Default::default(),
            memo_vol: None,
            memo_root: None,
            extents: extents::Extents::default(),
        }
    }

    /// A new pool on `meta` (labelled `label`) and `data`: the empty details and top-level
    /// trees and the first volume id, not committed yet.
    fn created(
        meta: Arc<dyn BlockDev>,
        data: Arc<dyn BlockDev>,
        label: Label,
        opts: &CreateOptions,
    ) -> Result<Pool> {
        let data_blocks = opts.size / opts.block_size;
        let mut tm = Tm::create(meta, label, data_blocks, opts.cache_blocks)?;
        let user = UserState {
            details_root: tm.btree_empty(DETAILS)?,
            top_root: tm.btree_empty(DEV_ROOTS)?,
            next_id: 1,
            time: 0,
        };
        let mut pool = Pool::assemble(tm, data, None);
        pool.set_user_state(user);
        Ok(pool)
    }

    /// Create a pool in directory `dir` (created with mode 0700 if missing; must be empty).
    /// `metadata` and `data` are created 0600.
    pub fn create(dir: &Path, opts: &CreateOptions) -> Result<Pool> {
        Pool::create_begin(dir, opts)?.finish()
    }

    /// The first half of [`Pool::create`]: files made and the empty trees in place, nothing
    /// committed. What the caller adds before [`NewPool::finish`] becomes the pool's first
    /// commit (`restore` builds a whole pool this way); if the `NewPool` is dropped instead,
    /// everything it made is removed again.
    pub(crate) fn create_begin(dir: &Path, opts: &CreateOptions) -> Result<NewPool> {
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
        let adopted = match &opts.data_file {
            Some(f) => Some(adoptable_data_file(f, data_blocks * opts.block_size)?),
            None => None,
        };
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
        lock(&lockf, dir, true, LOCK_WAIT)?;
        // Metadata takes its whole size on disk now: a commit must never fail because the
        // filesystem filled up with data (only data writes may, and they fail cleanly).
        mdev.preallocate(meta_blocks * BLOCK_SIZE as u64)
            .map_err(io_err(&mpath, "reserve space for the metadata file"))?;
        let (ddev, data_lock) = match adopted {
            Some(target) => {
                // Locked before anything points at it: a file another pool uses is refused.
                let data_lock = lock_data(&target, true, LOCK_WAIT)?;
                std::os::unix::fs::symlink(&target, &dpath)
                    .map_err(io_err(&dpath, "create symlink"))?;
                partial.files.push(dpath.clone());
                let ddev = FileDev::open(&dpath, true).map_err(io_err(&target, "open"))?;
                (ddev, data_lock)
            }
            None => {
                let ddev = FileDev::create(&dpath).map_err(io_err(&dpath, "create"))?;
                partial.files.push(dpath.clone());
                ddev.ensure_len(data_blocks * opts.block_size)
                    .map_err(io_err(&dpath, "size data file"))?;
                (ddev, lock_data(&dpath, true, LOCK_WAIT)?)
            }
        };
        let label = Label {
            uuid: new_uuid(),
            version: FORMAT_VERSION,
            data_block_size: opts.block_size,
            ring_slots: RING_SLOTS,
            meta_blocks,
            created: now(),
        };
        let mdev: Arc<dyn BlockDev> = Arc::new(mdev);
        let mut pool = Pool::created(mdev, Arc::new(ddev), label, opts)?;
        pool.dir = dir.to_path_buf();
        pool._lock = Some(lockf);
        pool._data_lock = Some(data_lock);
        Ok(NewPool { pool, partial })
    }

    /// Open an existing pool.
    pub fn open(dir: &Path, opts: &OpenOptions) -> Result<Pool> {
        Pool::open_dir(dir, opts, None)
    }

    /// Open a pool read-write at its older commit `seq` (one of the protected ones), to make
    /// that state the newest again (`pool rewind`). Nothing is written until
    /// [`Pool::commit_rewind`]; dropping the pool before that leaves it as it was. The
    /// report's `newest_valid_seq` is the commit the rewind discards from.
    pub fn open_for_rewind(dir: &Path, seq: u64, opts: &OpenOptions) -> Result<Pool> {
        let mut pool = Pool::open_dir(dir, opts, Some(seq))?;
        // What `seq`'s own commit freed is told apart from its previous commit's space map,
        // which is not protected any more when `seq` is two commits back: never read it.
        // Those blocks are free in the rewound state, and its trim punches them.
        pool.punch_last_frees = false;
        let newest = pool.report.as_ref().map_or(seq, |r| r.newest_valid_seq);
        if newest == seq {
            return Err(PoolError::Meta(MetaError::NoValidRecord(format!(
                "seq {seq} is already the newest commit: nothing to rewind"
            ))));
        }
        Ok(pool)
    }

    /// Make the state this pool was opened at by [`Pool::open_for_rewind`] the newest: one
    /// commit that records it (changing nothing else; the later commits' blocks become free,
    /// and are punched from the data file).
    pub fn commit_rewind(&mut self) -> Result<()> {
        self.force_commit()?;
        self.trim()?;
        Ok(())
    }

    fn open_dir(dir: &Path, opts: &OpenOptions, rewind_to: Option<u64>) -> Result<Pool> {
        let mpath = dir.join("metadata");
        let dpath = dir.join("data");
        if !mpath.exists() {
            return Err(PoolError::NotAPool(dir.to_path_buf()));
        }
        let writable = !opts.read_only || rewind_to.is_some();
        if opts.at_seq.is_some() && writable {
            return Err(PoolError::Meta(MetaError::ReadOnly(
                "an older state can only be opened read-only".into(),
            )));
        }
        let at = rewind_to.or(opts.at_seq);
        let mdev = FileDev::open(&mpath, writable).map_err(io_err(&mpath, "open"))?;
        let lockf = mdev.file().try_clone().map_err(io_err(&mpath, "dup"))?;
        lock(&lockf, dir, writable, opts.lock_wait)?;
        let ddev = crate::io::open_data_dev(&dpath, writable, opts.direct, opts.engine)
            .map_err(io_err(&dpath, "open"))?;
        let data_lock = lock_data(&dpath, writable, opts.lock_wait)?;
        let mdev: Arc<dyn BlockDev> = Arc::new(mdev);
        let (mut tm, report) = Tm::open_at(mdev, opts.cache_blocks, !writable, at)?;
        refuse_silent_rewind(&report, opts)?;
        let block_size = tm.label().data_block_size;
        let need = tm.data_space().total * block_size;
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
        let mut pool = Pool::assemble(tm, ddev, Some(report));
        pool.dir = dir.to_path_buf();
        pool._lock = Some(lockf);
        pool._data_lock = Some(data_lock);
        pool.record_rewind()?;
        Ok(pool)
    }

    /// After an accepted rewind, commit at once: the next open then finds an intact newest
    /// record and needs no consent again.
    fn record_rewind(&mut self) -> Result<()> {
        if !self.tm.is_read_only() && self.report.as_ref().is_some_and(|r| r.rewound().is_some()) {
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
        let mut pool = Pool::created(meta, data, label, opts)?;
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
        let mut pool = Pool::assemble(tm, data, Some(report));
        pool.record_rewind()?;
        Ok(pool)
    }
}
