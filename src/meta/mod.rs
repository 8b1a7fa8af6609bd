//! Persistent data: the block manager and its bounded cache, the copy-on-write B-tree, the
//! space maps, the immutable label and the superblock journal. This layer knows nothing of
//! volumes: it stores trees of fixed-size values under `u64` keys, counts references to
//! metadata and data blocks, and commits atomically.

pub mod block;
pub mod btree;
pub mod cache;
pub mod journal;
pub mod label;
pub mod spacemap;
pub mod txn;

use std::fmt;
use std::io;

/// Size of every metadata block.
pub const BLOCK_SIZE: usize = 4096;

/// A block of the metadata device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MetaBlock(pub u64);

/// A block of the data device (in units of the pool's data block size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DataBlock(pub u64);

impl fmt::Display for MetaBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metadata block {}", self.0)
    }
}
impl fmt::Display for DataBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data block {}", self.0)
    }
}

/// Errors of the persistent-data layer.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata {op} failed at {block}: {source}")]
    Io {
        op: &'static str,
        block: MetaBlock,
        #[source]
        source: io::Error,
    },
    #[error("{block} is corrupt: {reason}")]
    Corrupt { block: MetaBlock, reason: String },
    #[error("pool out of metadata space: free some (remove volumes or snapshots) or recreate the pool with a larger --metadata-size")]
    NoMetadataSpace,
    #[error("pool out of data space: remove volumes or snapshots, discard unused ranges, or add space with `thinpool pool grow`")]
    NoDataSpace,
    #[error("no usable superblock record: {0}")]
    NoValidRecord(String),
    #[error("bad pool label: {0}")]
    BadLabel(String),
    #[error("metadata is read-only: {0}")]
    ReadOnly(String),
    #[error("the pool stopped after an I/O error ({0}); nothing more is acknowledged: reopen it to recover the last commit")]
    FailStopped(String),
}

impl MetaError {
    pub fn io(op: &'static str, block: MetaBlock, source: io::Error) -> MetaError {
        MetaError::Io { op, block, source }
    }
    pub fn corrupt(block: MetaBlock, reason: impl Into<String>) -> MetaError {
        MetaError::Corrupt {
            block,
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = MetaError> = std::result::Result<T, E>;
