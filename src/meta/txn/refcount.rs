//! The space-map engine on the transaction manager: reference counts of metadata and data
//! blocks in bitmap pages (format helpers in `meta/spacemap.rs`), the overflow tree for
//! counts of three and more, allocation that never hands out a block a committed state
//! still references (S and S-1), and data-device growth.
//!
//! Metadata counts change through pending deltas applied at commit (`commit.rs`); data
//! counts are written at once. Freed data blocks are collected for the pool to punch.

use super::super::block::{self, BlockType};
use super::super::btree::{update_bound, Btree};
use super::super::journal::{decode_ref, encode_ref, BlockRef};
use super::super::spacemap::{self, SmKind, ENTRIES_PER_PAGE, SM_INDEX, SM_OVERFLOW};
use super::super::{DataBlock, MetaBlock, MetaError, Result, BLOCK_SIZE};
use super::{Tm, META_RESERVE};
use std::collections::BTreeMap;

/// A bitmap page must carry the generation its index entry recorded.
fn check_page(blk: &[u8], r: BlockRef) -> Result<()> {
    if block::generation(blk) != r.gen {
        return Err(MetaError::corrupt(
            r.block,
            format!(
                "bitmap generation {} differs from the {} its index recorded",
                block::generation(blk),
                r.gen
            ),
        ));
    }
    Ok(())
}

fn sm_tag(k: SmKind) -> u8 {
    match k {
        SmKind::Meta => 0,
        SmKind::Data => 1,
    }
}
impl Tm {
    /// Location of page `pi` of a space map in the current state.
    pub(super) fn page_ref(&mut self, k: SmKind, pi: u64) -> Result<BlockRef> {
        if let Some(r) = self.page_memo.get(&(sm_tag(k), pi)) {
            return Ok(*r);
        }
        let root = self.sm(k).roots.index;
        let v = self.btree_lookup(root, SM_INDEX, pi)?.ok_or_else(|| {
            MetaError::corrupt(
                root.block,
                format!("space map index has no entry for page {pi}"),
            )
        })?;
        let r = decode_ref(&v);
        self.page_memo.insert((sm_tag(k), pi), r);
        Ok(r)
    }

    /// Location of page `pi` in protected state `which` (0 = S, 1 = S-1).
    pub(super) fn prot_page_ref(
        &mut self,
        k: SmKind,
        which: u8,
        pi: u64,
    ) -> Result<Option<BlockRef>> {
        if let Some(r) = self.prot_memo.get(&(sm_tag(k), which, pi)) {
            return Ok(*r);
        }
        let r = match self.sm(k).protected[which as usize] {
            None => None,
            Some(root) => self
                .btree_lookup(root, SM_INDEX, pi)?
                .map(|v| decode_ref(&v)),
        };
        self.prot_memo.insert((sm_tag(k), which, pi), r);
        Ok(r)
    }

    pub(super) fn read_page(&mut self, r: BlockRef) -> Result<super::super::cache::Block> {
        let blk = self.bm.read(r.block, BlockType::Bitmap)?;
        check_page(&blk, r)?;
        Ok(blk)
    }

    /// `read_page` without taking a reference to the cached block (the count lookups on the
    /// data path only read one entry).
    pub(super) fn read_page_ref(&mut self, r: BlockRef) -> Result<&[u8]> {
        let blk = self.bm.read_ref(r.block, BlockType::Bitmap)?;
        check_page(blk, r)?;
        Ok(blk)
    }

    /// Reference count of `b` as stored in the current pages (no pending deltas).
    pub(super) fn sm_count(&mut self, k: SmKind, b: u64) -> Result<u64> {
        if k == SmKind::Meta && self.bump.is_some() {
            return Ok(0);
        }
        if b >= self.sm(k).nr_blocks {
            return Err(MetaError::inconsistent(format!(
                "{k:?} block {b} is beyond the space map ({} blocks)",
                self.sm(k).nr_blocks
            )));
        }
        let pr = self.page_ref(k, b / ENTRIES_PER_PAGE)?;
        let page = self.read_page_ref(pr)?;
        let v = spacemap::page_get(page, (b % ENTRIES_PER_PAGE) as usize);
        if v < 3 {
            return Ok(v as u64);
        }
        let root = self.sm(k).roots.overflow;
        let c = self.btree_lookup(root, SM_OVERFLOW, b)?.ok_or_else(|| {
            MetaError::corrupt(
                root.block,
                format!("overflow tree has no count for {k:?} block {b}"),
            )
        })?;
        Ok(block::get_u64(&c, 0))
    }

    /// Set the stored count of `b` (shadowing its page and updating the overflow tree).
    pub(super) fn sm_set(&mut self, k: SmKind, b: u64, count: u64) -> Result<()> {
        let pi = b / ENTRIES_PER_PAGE;
        let idx = (b % ENTRIES_PER_PAGE) as usize;
        let pr = self.page_ref(k, pi)?;
        let pr = if self.is_shadowed(pr.block) {
            pr
        } else {
            let src = self.read_page(pr)?;
            let nb = self.alloc_meta()?;
            let mut buf = src.to_vec();
            block::set_block_number(&mut buf, nb);
            block::set_generation(&mut buf, self.gen);
            self.bm.put_new(nb, buf)?;
            self.mark_shadowed(nb);
            self.meta_delta(pr.block, -1);
            let nr = BlockRef {
                block: nb,
                gen: self.gen,
            };
            let mut root = self.sm(k).roots.index;
            self.btree_insert(&mut root, SM_INDEX, pi, &encode_ref(nr))?;
            self.sm_mut(k).roots.index = root;
            self.page_memo.insert((sm_tag(k), pi), nr);
            nr
        };
        let allocated = self.sm(k).nr_allocated;
        let page = self.bm.get_mut(pr.block, BlockType::Bitmap)?;
        let old2 = spacemap::page_get(page, idx);
        let new2 = count.min(3) as u8;
        let nf = spacemap::page_nr_free(page);
        // A page whose free count disagrees with its entries, or a map that would count
        // fewer than zero blocks allocated (damage under a valid checksum), is corruption
        // to report before anything changes, not a counter to wrap.
        let bad = |what: &str| {
            MetaError::corrupt(
                pr.block,
                format!("{k:?} space-map page {pi}, block {b}: {what}"),
            )
        };
        let taking = old2 == 0 && new2 != 0;
        let freeing = old2 != 0 && new2 == 0;
        if taking && nf == 0 {
            return Err(bad("free count 0 but a free entry"));
        }
        if freeing && (u64::from(nf) >= ENTRIES_PER_PAGE || allocated == 0) {
            return Err(bad(
                "an entry in use but the counts say every block is free",
            ));
        }
        spacemap::page_set(page, idx, new2);
        if taking {
            spacemap::set_page_nr_free(page, nf - 1);
            self.sm_mut(k).nr_allocated += 1;
        } else if freeing {
            spacemap::set_page_nr_free(page, nf + 1);
            self.sm_mut(k).nr_allocated -= 1;
            if k == SmKind::Meta {
                self.meta_freed_now += 1;
            }
        }
        if count >= 3 {
            let mut root = self.sm(k).roots.overflow;
            self.btree_insert(&mut root, SM_OVERFLOW, b, &count.to_le_bytes())?;
            self.sm_mut(k).roots.overflow = root;
        } else if old2 == 3 {
            let mut root = self.sm(k).roots.overflow;
            self.btree_remove(&mut root, SM_OVERFLOW, b)?;
            self.sm_mut(k).roots.overflow = root;
        }
        Ok(())
    }

    /// Find a block whose count is zero now and in both protected states.
    pub(super) fn find_free(&mut self, k: SmKind) -> Result<Option<u64>> {
        let nr_blocks = self.sm(k).nr_blocks;
        let pages = self.sm(k).nr_pages();
        if pages == 0 {
            return Ok(None);
        }
        let start = self.sm(k).cursor % nr_blocks;
        let start_page = start / ENTRIES_PER_PAGE;
        for step in 0..=pages {
            let pi = (start_page + step) % pages;
            let base = pi * ENTRIES_PER_PAGE;
            let limit_all = (nr_blocks - base).min(ENTRIES_PER_PAGE) as usize;
            let (lo, limit) = if step == 0 {
                ((start - base) as usize, limit_all)
            } else if step == pages {
                (0, (start - base) as usize)
            } else {
                (0, limit_all)
            };
            let pr = self.page_ref(k, pi)?;
            let page = self.read_page(pr)?;
            if spacemap::page_nr_free(&page) == 0 {
                continue;
            }
            let mut prot = Vec::new();
            for which in 0..2u8 {
                if let Some(p) = self.prot_page_ref(k, which, pi)? {
                    if p.block != pr.block {
                        prot.push(self.read_page(p)?);
                    }
                }
            }
            let mut i = lo;
            while let Some(z) = spacemap::page_find_zero(&page, i, limit) {
                let b = base + z as u64;
                let ok = prot.iter().all(|p| spacemap::page_get(p, z) == 0)
                    && (k == SmKind::Data || !self.pending.contains_key(&b));
                if ok {
                    self.sm_mut(k).cursor = b + 1;
                    return Ok(Some(b));
                }
                i = z + 1;
            }
        }
        Ok(None)
    }

    // ----- metadata references ------------------------------------------------------------

    /// Current reference count of a metadata block (stored count plus pending deltas).
    pub fn meta_count(&mut self, b: MetaBlock) -> Result<u64> {
        let stored = self.sm_count(SmKind::Meta, b.0)? as i64;
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
            .find_free(SmKind::Meta)?
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
            let before = self.sm_count(SmKind::Meta, b)? as i64;
            let after = before + d;
            used += (after > 0) as i64 - (before > 0) as i64;
        }
        Ok(used.max(0) as u64)
    }

    // ----- data references ----------------------------------------------------------------

    pub fn data_count(&mut self, b: DataBlock) -> Result<u64> {
        self.sm_count(SmKind::Data, b.0)
    }

    pub fn data_inc(&mut self, b: DataBlock) -> Result<()> {
        let c = self.sm_count(SmKind::Data, b.0)?;
        self.sm_set(SmKind::Data, b.0, c + 1)
    }

    pub fn data_dec(&mut self, b: DataBlock) -> Result<()> {
        let c = self.sm_count(SmKind::Data, b.0)?;
        if c == 0 {
            return Err(MetaError::inconsistent(format!(
                "releasing {b}, which has no references"
            )));
        }
        self.sm_set(SmKind::Data, b.0, c - 1)?;
        if c == 1 {
            self.data_freed.push(b.0);
        }
        Ok(())
    }

    /// Allocate a data block (count 1). `None` when the pool's data space is exhausted.
    pub fn alloc_data(&mut self) -> Result<Option<DataBlock>> {
        self.check_writable()?;
        match self.find_free(SmKind::Data)? {
            None => Ok(None),
            Some(b) => {
                self.sm_set(SmKind::Data, b, 1)?;
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
        self.freed_by_last_commit(SmKind::Data)
    }

    /// Blocks of a space map the last commit freed: count zero in S, not zero in S-1. Only
    /// bitmap pages whose block differs between the two states can hold one; both index
    /// trees are walked once, and only differing pages are read.
    pub(super) fn freed_by_last_commit(&mut self, k: SmKind) -> Result<Vec<u64>> {
        let [Some(s), Some(prev)] = self.sm(k).protected else {
            return Ok(Vec::new());
        };
        if s == prev {
            return Ok(Vec::new());
        }
        let mut pages = |root: BlockRef| -> Result<BTreeMap<u64, BlockRef>> {
            let mut m = BTreeMap::new();
            self.btree_walk(root, SM_INDEX, 0, u64::MAX, &mut |pi, v| {
                m.insert(pi, decode_ref(v));
                true
            })?;
            Ok(m)
        };
        let (now, before) = (pages(s)?, pages(prev)?);
        let nr_blocks = self.sm(k).nr_blocks;
        let mut freed = Vec::new();
        for (pi, r) in now {
            let Some(&p) = before.get(&pi) else { continue };
            if p.block == r.block {
                continue;
            }
            let (a, b) = (self.read_page(r)?, self.read_page(p)?);
            let base = pi * ENTRIES_PER_PAGE;
            let n = (nr_blocks.saturating_sub(base)).min(ENTRIES_PER_PAGE) as usize;
            freed.extend(
                (0..n)
                    .filter(|&i| spacemap::page_get(&a, i) == 0 && spacemap::page_get(&b, i) != 0)
                    .map(|i| base + i as u64),
            );
        }
        Ok(freed)
    }

    /// The highest data block numbered `from` or above with a non-zero reference count in
    /// the current state, or `None`. Reads only the bitmap pages from `from` up, skipping
    /// pages with no used entry by their free count (open uses it to find mapped blocks
    /// past the end of a short data file).
    pub fn highest_used_data_block(&mut self, from: u64) -> Result<Option<u64>> {
        let nr_blocks = self.dsm.nr_blocks;
        if from >= nr_blocks {
            return Ok(None);
        }
        for pi in (from / ENTRIES_PER_PAGE..self.dsm.nr_pages()).rev() {
            let base = pi * ENTRIES_PER_PAGE;
            let n = (nr_blocks - base).min(ENTRIES_PER_PAGE);
            let pr = self.page_ref(SmKind::Data, pi)?;
            let page = self.read_page(pr)?;
            if u64::from(spacemap::page_nr_free(&page)) >= n {
                continue;
            }
            let lo = from.saturating_sub(base) as usize;
            if let Some(i) = (lo..n as usize)
                .rev()
                .find(|&i| spacemap::page_get(&page, i) != 0)
            {
                return Ok(Some(base + i as u64));
            }
        }
        Ok(None)
    }

    /// Data blocks whose count is zero now but which a protected state still references.
    pub fn data_protected_pending(&self) -> bool {
        self.sm(SmKind::Data).protected.iter().any(|p| p.is_some())
    }

    /// Add `new_blocks - nr_blocks` zeroed entries to the data space map.
    pub fn grow_data(&mut self, new_blocks: u64) -> Result<()> {
        self.check_writable()?;
        let old = self.dsm.nr_blocks;
        if new_blocks <= old {
            return Ok(());
        }
        let old_pages = self.dsm.nr_pages();
        self.dsm.nr_blocks = new_blocks;
        let new_pages = self.dsm.nr_pages();
        // The last old page may gain entries: shadow it and raise its free count.
        if old_pages > 0 {
            let pi = old_pages - 1;
            let old_in_page = old - pi * ENTRIES_PER_PAGE;
            let new_in_page = (new_blocks - pi * ENTRIES_PER_PAGE).min(ENTRIES_PER_PAGE);
            if new_in_page > old_in_page {
                // Setting an entry to its own value shadows the page.
                let b = pi * ENTRIES_PER_PAGE;
                let c = self.sm_count(SmKind::Data, b)?;
                self.sm_set(SmKind::Data, b, c)?;
                let pr = self.page_ref(SmKind::Data, pi)?;
                let page = self.bm.get_mut(pr.block, BlockType::Bitmap)?;
                let nf = spacemap::page_nr_free(page);
                spacemap::set_page_nr_free(page, nf + (new_in_page - old_in_page) as u32);
            }
        }
        for pi in old_pages..new_pages {
            self.add_page(SmKind::Data, pi)?;
        }
        Ok(())
    }

    pub(super) fn add_page(&mut self, k: SmKind, pi: u64) -> Result<()> {
        let nb = self.alloc_meta()?;
        let mut buf = vec![0u8; BLOCK_SIZE];
        block::init_header(&mut buf, BlockType::Bitmap, nb, self.gen, self.bm.uuid());
        let entries = (self.sm(k).nr_blocks - pi * ENTRIES_PER_PAGE).min(ENTRIES_PER_PAGE);
        spacemap::set_page_nr_free(&mut buf, entries as u32);
        self.bm.put_new(nb, buf)?;
        let r = BlockRef {
            block: nb,
            gen: self.gen,
        };
        let mut root = self.sm(k).roots.index;
        self.btree_insert(&mut root, SM_INDEX, pi, &encode_ref(r))?;
        self.sm_mut(k).roots.index = root;
        self.page_memo.insert((sm_tag(k), pi), r);
        Ok(())
    }
}

#[cfg(test)]
mod damaged_count_tests {
    use super::super::Tm;
    use crate::io::MemDev;
    use crate::meta::label::{Label, FORMAT_VERSION};
    use crate::meta::spacemap::{self, SmKind};
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
        let pr = tm.page_ref(SmKind::Data, 0).unwrap();
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
        let pr = tm.page_ref(SmKind::Data, 0).unwrap();
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
