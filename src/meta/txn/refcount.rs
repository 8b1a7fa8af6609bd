//! Reference counting on the transaction manager: `Tm` is the store of the space-map engine
//! (`meta/spacemap/disk.rs`, through [`SmStore`]), and on top of it counts metadata blocks
//! (pending deltas applied at commit, `commit.rs`) and data blocks (written at once; freed
//! ones are collected for the pool to punch), and allocates both.

use super::super::block::BlockType;
use super::super::btree::{update_bound, Btree};
use super::super::cache::Block;
use super::super::spacemap::disk::{self, Handle};
use super::super::spacemap::{SmKind, SmMemo, SmState, SmStore, SpaceMap, SM_INDEX, SM_OVERFLOW};
use super::super::{DataBlock, MetaBlock, MetaError, Result};
use super::{Tm, META_RESERVE};

#[cfg(test)]
#[path = "refcount_tests.rs"]
mod tests;

impl SmStore for Tm {
    fn sm_state(&self, k: SmKind) -> &SmState {
        match k {
            SmKind::Meta => &self.msm,
            SmKind::Data => &self.dsm,
        }
    }
    fn sm_state_mut(&mut self, k: SmKind) -> &mut SmState {
        match k {
            SmKind::Meta => &mut self.msm,
            SmKind::Data => &mut self.dsm,
        }
    }
    fn sm_memo(&mut self) -> &mut SmMemo {
        &mut self.sm_memo
    }
    fn bitmap(&mut self, b: MetaBlock) -> Result<Block> {
        self.bm.read(b, BlockType::Bitmap)
    }
    fn bitmap_ref(&mut self, b: MetaBlock) -> Result<&[u8]> {
        self.bm.read_ref(b, BlockType::Bitmap)
    }
    fn bitmap_mut(&mut self, b: MetaBlock) -> Result<&mut [u8]> {
        Ok(self.bm.get_mut(b, BlockType::Bitmap)?)
    }
    fn meta_counts_pending(&self) -> bool {
        self.bump.is_some()
    }
    fn meta_change_pending(&self, b: u64) -> bool {
        self.pending.contains_key(&b)
    }
    fn note_meta_freed(&mut self) {
        self.meta_freed_now += 1;
    }
}

impl Tm {
    /// Space map `k` as a [`SpaceMap`].
    pub(super) fn space_map(&mut self, k: SmKind) -> Handle<'_, Tm> {
        Handle {
            store: self,
            kind: k,
        }
    }

    // ----- metadata references ------------------------------------------------------------

    /// Current reference count of a metadata block (stored count plus pending deltas).
    pub fn meta_count(&mut self, b: MetaBlock) -> Result<u64> {
        let stored = self.space_map(SmKind::Meta).count(b.0)? as i64;
        let d = self.pending.get(&b.0).copied().unwrap_or(0);
        let c = stored + d;
        if c < 0 {
            return Err(MetaError::corrupt(b, "reference count would go below zero"));
        }
        Ok(c as u64)
    }

    pub(crate) fn meta_delta(&mut self, b: MetaBlock, d: i64) {
        let e = self.pending.entry(b.0).or_insert(0);
        let before = *e;
        *e += d;
        self.pending_alloc += (*e).max(0) - before.max(0);
        if *e == 0 {
            self.pending.remove(&b.0);
        }
    }

    /// Allocate a metadata block (count 1, marked as shadowed in this transaction).
    pub fn alloc_meta(&mut self) -> Result<MetaBlock> {
        self.check_writable()?;
        if let Some(next) = self.bump {
            if next >= self.msm.nr_blocks {
                return Err(MetaError::NoMetadataSpace);
            }
            self.bump = Some(next + 1);
            self.meta_delta(MetaBlock(next), 1);
            self.mark_shadowed(MetaBlock(next));
            return Ok(MetaBlock(next));
        }
        if !self.applying && self.meta_free_estimate() < META_RESERVE {
            return Err(MetaError::NoMetadataSpace);
        }
        let b = self
            .space_map(SmKind::Meta)
            .find_free()?
            .ok_or(MetaError::NoMetadataSpace)?;
        self.meta_delta(MetaBlock(b), 1);
        self.mark_shadowed(MetaBlock(b));
        Ok(MetaBlock(b))
    }

    /// Metadata blocks an operation may still allocate: the free estimate less the reserve
    /// kept for the commit itself (below it `alloc_meta` refuses).
    pub fn meta_headroom(&self) -> u64 {
        self.meta_free_estimate()
            .saturating_sub(self.meta_freed_last + META_RESERVE)
    }

    /// Free metadata blocks, counting this transaction's allocations (not its frees).
    pub fn meta_free_estimate(&self) -> u64 {
        let allocated = self.msm.nr_allocated as i64 + self.pending_alloc;
        (self.msm.nr_blocks as i64 - allocated).max(0) as u64
    }

    /// Metadata blocks in use (including this transaction's pending changes).
    pub fn meta_used(&mut self) -> Result<u64> {
        let mut used = self.msm.nr_allocated as i64;
        let pend: Vec<(u64, i64)> = self.pending.iter().map(|(a, b)| (*a, *b)).collect();
        for (b, d) in pend {
            let before = self.space_map(SmKind::Meta).count(b)? as i64;
            let after = before + d;
            used += (after > 0) as i64 - (before > 0) as i64;
        }
        Ok(used.max(0) as u64)
    }

    // ----- data references ----------------------------------------------------------------

    pub fn data_count(&mut self, b: DataBlock) -> Result<u64> {
        self.space_map(SmKind::Data).count(b.0)
    }

    pub fn data_inc(&mut self, b: DataBlock) -> Result<()> {
        let c = self.space_map(SmKind::Data).count(b.0)?;
        self.space_map(SmKind::Data).set_count(b.0, c + 1)
    }

    pub fn data_dec(&mut self, b: DataBlock) -> Result<()> {
        let c = self.space_map(SmKind::Data).count(b.0)?;
        if c == 0 {
            return Err(MetaError::inconsistent(format!(
                "releasing {b}, which has no references"
            )));
        }
        self.space_map(SmKind::Data).set_count(b.0, c - 1)?;
        if c == 1 {
            self.data_freed.push(b.0);
        }
        Ok(())
    }

    /// Allocate a data block (count 1). `None` when the pool's data space is exhausted.
    pub fn alloc_data(&mut self) -> Result<Option<DataBlock>> {
        self.check_writable()?;
        match self.space_map(SmKind::Data).find_free()? {
            None => Ok(None),
            Some(b) => {
                self.space_map(SmKind::Data).set_count(b, 1)?;
                Ok(Some(DataBlock(b)))
            }
        }
    }

    /// Allocate `n` data blocks (count 1 each), all or nothing: when fewer are free now
    /// (some may be protected, freed by one of the last two commits) none stays allocated
    /// and the error is `NoDataSpace`.
    pub fn alloc_data_blocks(&mut self, n: usize) -> Result<Vec<DataBlock>> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match self.alloc_data() {
                Ok(Some(b)) => got.push(b),
                other => {
                    for b in got {
                        self.data_dec(b)?;
                    }
                    other?;
                    return Err(MetaError::NoDataSpace);
                }
            }
        }
        Ok(got)
    }

    /// Whether `n` more data blocks can be allocated now, changing nothing: false when some
    /// of the free ones are protected until two more commits (or the pool lacks them).
    pub fn data_room(&mut self, n: u64) -> Result<bool> {
        match self.alloc_data_blocks(n as usize) {
            Ok(got) => {
                for b in got {
                    self.data_dec(b)?;
                }
                Ok(true)
            }
            Err(MetaError::NoDataSpace) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// An upper bound of the metadata blocks that releasing `cows` replaced data blocks
    /// takes: their space-map pages, the index above them, and the overflow tree for counts
    /// of three or more (see `btree::update_bound`).
    pub fn data_release_bound(&mut self, cows: u64) -> Result<u64> {
        if cows == 0 {
            return Ok(0);
        }
        let pages = cows.min(self.dsm.nr_pages());
        let h_index = self.btree_height(self.dsm.roots.index, SM_INDEX)?;
        let h_over = self.btree_height(self.dsm.roots.overflow, SM_OVERFLOW)?;
        Ok(pages + update_bound(pages, h_index) + update_bound(cows, h_over))
    }

    /// Data blocks the last commit freed: count zero in S, not zero in S-1 (empty when the
    /// record names no S-1). A process that reopens the pool punches these after its first
    /// commit, since the one that freed them exited before it could (see
    /// `Pool::force_commit`).
    pub fn data_freed_by_last_commit(&mut self) -> Result<Vec<u64>> {
        self.space_map(SmKind::Data).freed_by_last_commit()
    }

    /// The highest data block numbered `from` or above with a non-zero reference count in
    /// the current state, or `None` (open uses it to find mapped blocks past the end of a
    /// short data file).
    pub fn highest_used_data_block(&mut self, from: u64) -> Result<Option<u64>> {
        disk::highest_used(self, SmKind::Data, from)
    }

    /// Every run `(first, length)` of data blocks that no state a record names uses
    /// (count zero now, in S and in S-1).
    pub fn data_unused_runs(&mut self, f: &mut dyn FnMut(u64, u64)) -> Result<()> {
        disk::unused_runs(self, SmKind::Data, f)
    }

    /// Data blocks whose count is zero now but which a protected state still references.
    pub fn data_protected_pending(&self) -> bool {
        self.sm_state(SmKind::Data)
            .protected
            .iter()
            .any(|p| p.is_some())
    }

    /// Add `new_blocks - nr_blocks` zeroed entries to the data space map.
    pub fn grow_data(&mut self, new_blocks: u64) -> Result<()> {
        self.check_writable()?;
        self.space_map(SmKind::Data).grow(new_blocks)
    }
}

#[cfg(test)]
mod damaged_count_tests {
    use super::super::Tm;
    use crate::io::MemDev;
    use crate::meta::label::{Label, FORMAT_VERSION};
    use crate::meta::spacemap::{self, disk, SmKind};
    use crate::meta::{DataBlock, MetaError};
    use std::sync::Arc;

    fn tm() -> Tm {
        let label = Label {
            uuid: [7; 16],
            version: FORMAT_VERSION,
            data_block_size: 65536,
            ring_slots: 64,
            meta_blocks: 2048,
            created: 0,
        };
        let dev = Arc::new(MemDev::new(2048 * 4096).unwrap());
        Tm::create(dev, label, 1000, 256).unwrap()
    }

    /// Overwrite the free count of data space-map page 0 in the transaction's copy.
    fn set_free_count(tm: &mut Tm, nf: u32) {
        // A count change shadows the page into this transaction; then damage that copy.
        let b = tm.alloc_data().unwrap().unwrap();
        tm.data_dec(b).unwrap();
        let pr = disk::page_ref(tm, SmKind::Data, 0).unwrap();
        let page = tm
            .bm
            .get_mut(pr.block, crate::meta::block::BlockType::Bitmap)
            .unwrap();
        spacemap::set_page_nr_free(page, nf);
    }

    #[test]
    fn a_page_counting_no_free_entry_is_corruption_not_a_wrap() {
        let mut tm = tm();
        set_free_count(&mut tm, 0);
        let before = tm.data_space().allocated;
        let e = tm.data_inc(DataBlock(5)).unwrap_err();
        assert!(
            matches!(e, MetaError::Corrupt { block: Some(_), .. }),
            "{e}"
        );
        assert!(e.to_string().contains("free count 0"), "{e}");
        assert_eq!(tm.data_space().allocated, before, "nothing counted");
        assert_eq!(tm.data_count(DataBlock(5)).unwrap(), 0, "entry unchanged");
    }

    #[test]
    fn a_page_counting_everything_free_cannot_free_more() {
        let mut tm = tm();
        tm.data_inc(DataBlock(9)).unwrap();
        let pr = disk::page_ref(&mut tm, SmKind::Data, 0).unwrap();
        let page = tm
            .bm
            .get_mut(pr.block, crate::meta::block::BlockType::Bitmap)
            .unwrap();
        spacemap::set_page_nr_free(page, spacemap::ENTRIES_PER_PAGE as u32);
        let e = tm.data_dec(DataBlock(9)).unwrap_err();
        assert!(matches!(e, MetaError::Corrupt { .. }), "{e}");
        assert_eq!(tm.data_count(DataBlock(9)).unwrap(), 1, "entry unchanged");
    }
}
