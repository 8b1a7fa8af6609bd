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

#[cfg(test)]
pub(crate) mod test_util;

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
    #[error("metadata {op} failed{}: {source}", at(block))]
    Io {
        op: &'static str,
        /// The block concerned, when the operation was on one (not for a whole-device
        /// fdatasync or resize).
        block: Option<MetaBlock>,
        #[source]
        source: io::Error,
    },
    #[error("{} is corrupt: {reason}", what(block))]
    Corrupt {
        /// The corrupt block, when one is known (not for an inconsistent space-map count).
        block: Option<MetaBlock>,
        reason: String,
    },
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

fn at(block: &Option<MetaBlock>) -> String {
    block.map(|b| format!(" at {b}")).unwrap_or_default()
}

fn what(block: &Option<MetaBlock>) -> String {
    block.map_or_else(|| "metadata".to_string(), |b| b.to_string())
}

impl MetaError {
    /// An I/O error on metadata block `block`.
    pub fn io(op: &'static str, block: MetaBlock, source: io::Error) -> MetaError {
        MetaError::Io {
            op,
            block: Some(block),
            source,
        }
    }
    /// An I/O error on the metadata device as a whole (fdatasync, resize).
    pub fn io_device(op: &'static str, source: io::Error) -> MetaError {
        MetaError::Io {
            op,
            block: None,
            source,
        }
    }
    pub fn corrupt(block: MetaBlock, reason: impl Into<String>) -> MetaError {
        MetaError::Corrupt {
            block: Some(block),
            reason: reason.into(),
        }
    }
    /// Metadata found inconsistent with no one block to blame (a space-map count).
    pub fn inconsistent(reason: impl Into<String>) -> MetaError {
        MetaError::Corrupt {
            block: None,
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = MetaError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::cache::BlockManager;
    use crate::io::BlockDev;
    use std::io;
    use std::sync::Arc;

    /// A device whose fdatasync fails.
    struct NoSync;
    impl BlockDev for NoSync {
        fn read_at(&self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
            buf.fill(0);
            Ok(())
        }
        fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
        fn len(&self) -> u64 {
            1 << 20
        }
        fn punch_hole(&self, _offset: u64, _len: u64) -> io::Result<()> {
            Ok(())
        }
        fn ensure_len(&self, _len: u64) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_device_sync_names_no_block() {
        let mut bm = BlockManager::new(Arc::new(NoSync), [0; 16], 256, 16);
        let e = bm.sync().unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, super::MetaError::Io { block: None, .. }),
            "{e:?}"
        );
        assert_eq!(
            msg,
            format!(
                "metadata fdatasync failed: {}",
                io::Error::from_raw_os_error(libc::EIO)
            )
        );
    }

    #[test]
    fn an_inconsistent_count_blames_no_block() {
        let e = super::MetaError::inconsistent("releasing data block 7, which has no references");
        assert_eq!(
            e.to_string(),
            "metadata is corrupt: releasing data block 7, which has no references"
        );
        let e = super::MetaError::corrupt(super::MetaBlock(3), "bad checksum");
        assert_eq!(e.to_string(), "metadata block 3 is corrupt: bad checksum");
    }
}
