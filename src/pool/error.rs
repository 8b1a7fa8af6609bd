//! The library's umbrella error. Every message says what failed, where, and what to do.

use crate::meta::MetaError;
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("{path}: {op} failed: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("data device {op} failed at byte {offset}: {source}")]
    DataIo {
        op: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("data file {path} is {len} bytes, but data block {block} is mapped and needs {need}: the data file was truncated or replaced by another file; restore it (`thinpool check` lists what lies past its end)")]
    DataTooShort {
        path: PathBuf,
        len: u64,
        block: u64,
        need: u64,
    },
    #[error("{0}: opening it read-write would roll back what seq {newest} acknowledged. Run `thinpool check` to see the damage; pass --rewind to accept the loss and continue from seq {chosen}", newest = .0.newest, chosen = .0.chosen)]
    NeedsRewind(crate::meta::txn::Rewind),
    #[error("pool {0} is in use: another process has it open read-write (stop that process, or send commands through its `thinpool serve`)")]
    InUse(PathBuf),
    #[error("data file {0} is in use by another pool (or another process has this pool open): two pools must never share a data file")]
    DataInUse(PathBuf),
    #[error("{0} is not a thinpool pool (no metadata file)")]
    NotAPool(PathBuf),
    #[error(
        "{0} already exists and is not an empty directory; choose a new directory for the pool"
    )]
    Exists(PathBuf),
    #[error("no volume named '{0}' in this pool (see `thinpool list`)")]
    NoSuchVolume(String),
    #[error("a volume named '{0}' already exists")]
    VolumeExists(String),
    #[error("volume '{0}' is read-only")]
    ReadOnlyVolume(String),
    #[error("invalid volume name '{}': {why}", super::details::escape_name(.name))]
    InvalidName { name: String, why: String },
    #[error("invalid size: {0}")]
    InvalidSize(String),
    #[error("range {offset}+{len} is outside volume '{name}' ({size} bytes)")]
    OutOfRange {
        name: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("'{snap}' is not a snapshot of '{vol}'")]
    NotASnapshot { vol: String, snap: String },
    #[error("the pool is unusable after an internal error in another thread; restart the server to recover the last commit")]
    Poisoned,
    #[error("the pool has too many volumes (ids exhausted)")]
    TooManyVolumes,
    #[error("the pool's snapshot counter is exhausted (2^24 snapshots and rollbacks)")]
    TooManySnapshots,
}

impl PoolError {
    /// The errno a block frontend should report for this error.
    pub fn errno(&self) -> i32 {
        match self {
            PoolError::Meta(MetaError::NoDataSpace)
            | PoolError::Meta(MetaError::NoMetadataSpace) => libc::ENOSPC,
            PoolError::ReadOnlyVolume(_) | PoolError::Meta(MetaError::ReadOnly(_)) => libc::EPERM,
            PoolError::Meta(MetaError::FailStopped(_)) => libc::EIO,
            // The filesystem under the data file is full (or over quota).
            PoolError::DataIo { source, .. }
                if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
            {
                libc::ENOSPC
            }
            PoolError::OutOfRange { .. } | PoolError::InvalidSize(_) => libc::EINVAL,
            _ => libc::EIO,
        }
    }
}

pub type Result<T, E = PoolError> = std::result::Result<T, E>;
