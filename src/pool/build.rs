//! Volumes built whole, from mappings known in advance (`restore`, and `adopt` of a dm-thin
//! pool): each mapping tree is built bottom-up with its leaves packed full
//! ([`crate::meta::btree::TreeBuilder`]), every mapping taking its data-block reference as a
//! write would. Nothing here validates its input: the callers (`dmthin::restore`) do.

use super::details::Details;
use super::trees::{pack_mapping, MAPPING};
use super::{Pool, Result, VolumeId};
use crate::meta::btree::TreeBuilder;
use crate::meta::DataBlock;

/// One volume's mapping tree under construction.
pub(crate) struct VolumeBuilder {
    tree: TreeBuilder,
    mapped: u64,
}

impl VolumeBuilder {
    pub(crate) fn new() -> VolumeBuilder {
        VolumeBuilder {
            tree: TreeBuilder::new(MAPPING),
            mapped: 0,
        }
    }

    /// Map virtual block `vb` (above every block mapped before) to data block `b`, written
    /// at pool time `time`.
    pub(crate) fn map(&mut self, pool: &mut Pool, vb: u64, b: DataBlock, time: u32) -> Result<()> {
        self.tree
            .push(&mut pool.tm, vb, &pack_mapping(b, time).to_le_bytes())?;
        self.mapped += 1;
        Ok(())
    }

    /// Add the volume to the pool as `id` (which no volume has) with details `d` (its mapped
    /// count and creating seq are set here).
    pub(crate) fn finish(self, pool: &mut Pool, id: VolumeId, mut d: Details) -> Result<()> {
        let root = self.tree.finish(&mut pool.tm)?;
        pool.set_vol_root(id, root)?;
        d.mapped = self.mapped;
        d.created_seq = pool.tm.generation();
        pool.put_details(id, &d)?;
        pool.next_id = pool.next_id.max(id.0.saturating_add(1));
        Ok(())
    }
}

impl Pool {
    /// Set the pool's snapshot time (a restored pool continues from the dump's).
    pub(crate) fn set_time(&mut self, time: u32) {
        self.time = self.time.max(time as u64);
    }
}
