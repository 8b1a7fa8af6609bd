//! `pool trim`: give the filesystem back every data block that no protected record uses.
//!
//! Freed blocks are normally punched after the commit that takes them out of the protected
//! window (docs/format.md, "Commit and allocation rules"), but a process that dies between
//! a commit and its punches leaves them allocated in the data file until they are reused,
//! and writes to the data file from outside (a restored or adopted data file that held more
//! than its metadata maps) leave space nothing maps. Trim finds every such block from the
//! space maps (count zero now, in S and in S-1) and punches it. Safe at any time, also with
//! a transaction open: a block that transaction took counts in the current state.

use super::trees::{unpack_mapping, MAPPING};
use super::{io_err, Pool, Result, VolumeId};
use crate::meta::block::get_u64;
use crate::meta::btree::Btree;
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

impl Pool {
    /// The runs `(first, length)` of data blocks that neither this state nor the two
    /// protected commits use: what [`Pool::trim`] punches, and what a commit after this one
    /// may have punched already.
    pub fn unused_data_runs(&mut self) -> Result<Vec<(u64, u64)>> {
        let mut runs = Vec::new();
        self.tm
            .data_unused_runs(&mut |first, len| runs.push((first, len)))?;
        Ok(runs)
    }

    /// Per volume of this state, how many of its mapped blocks lie in `runs` (sorted, as
    /// [`Pool::unused_data_runs`] gives them): `pool rewind` refuses a commit whose volumes
    /// map blocks that the newest commits no longer protect (they may be punched: they
    /// would read as zeros).
    pub fn mapped_in_runs(&mut self, runs: &[(u64, u64)]) -> Result<Vec<(VolumeId, String, u64)>> {
        let mut out = Vec::new();
        for (id, d) in self.volumes()? {
            let root = self.vol_root(id)?;
            let mut n = 0u64;
            self.tm
                .btree_walk(root, MAPPING, 0, u64::MAX, &mut |_, v| {
                    let b = unpack_mapping(get_u64(v, 0)).0 .0;
                    let i = runs.partition_point(|&(first, _)| first <= b);
                    if i > 0 && b < runs[i - 1].0 + runs[i - 1].1 {
                        n += 1;
                    }
                    true
                })?;
            if n > 0 {
                out.push((id, d.name, n));
            }
        }
        Ok(out)
    }
}
