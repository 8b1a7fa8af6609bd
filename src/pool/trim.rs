//! `pool trim`: give the filesystem back every data block that no protected record uses.
//!
//! Freed blocks are normally punched after the commit that takes them out of the protected
//! window (docs/format.md, "Commit and allocation rules"), but a process that dies between
//! a commit and its punches leaves them allocated in the data file until they are reused,
//! and writes to the data file from outside (a restored or adopted data file that held more
//! than its metadata maps) leave space nothing maps. Trim finds every such block from the
//! space maps (count zero now, in S and in S-1) and punches it. Safe at any time, also with
//! a transaction open: a block that transaction took counts in the current state.

use super::{io_err, Pool, Result};
use std::os::unix::fs::MetadataExt;

/// What a trim did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Unused blocks, and the runs they form (one punch each).
    pub blocks: u64,
    pub runs: u64,
    /// Bytes the data file had allocated on its filesystem before and after (`None` for a
    /// block device).
    pub allocated_before: Option<u64>,
    pub allocated_after: Option<u64>,
}

impl Pool {
    pub fn trim(&mut self) -> Result<Trimmed> {
        self.tm.check_writable()?;
        let path = self.dir().join("data");
        let allocated = || -> Result<Option<u64>> {
            let m = std::fs::metadata(&path).map_err(io_err(&path, "stat"))?;
            Ok(m.is_file().then(|| m.blocks() * 512))
        };
        let before = allocated()?;
        let bs = self.block_size();
        let (mut blocks, mut runs) = (0u64, 0u64);
        let (data, extents) = (&self.data, &mut self.extents);
        self.tm.data_unused_runs(&mut |first, len| {
            blocks += len;
            runs += 1;
            // Only reclaims space: a punch that fails leaves correct (unused) data behind.
            let _ = data.punch_hole(first * bs, len * bs);
            for b in first..first + len {
                extents.punched(bs, b);
            }
        })?;
        Ok(Trimmed {
            blocks,
            runs,
            allocated_before: before,
            allocated_after: allocated()?,
        })
    }
}
