//! The transaction manager: allocation, reference counts, shadowing bookkeeping and the
//! commit protocol. One `Tm` owns the metadata device for a pool.
//!
//! Commit (DESIGN.md §5): the caller has synced the data device; then (1) pending metadata
//! reference-count deltas are applied to the metadata space map until a fixed point; (2) every
//! dirty block is written, only into blocks free as of the last two commits; (3) `fdatasync`;
//! (4) the record goes to slot `seq % N` of both rings; (5) `fdatasync`. An I/O error at any
//! step makes the transaction manager fail-stop: it never retries and acknowledges.

use super::block::{self, BlockType};
use super::btree::{decode_ref, encode_ref, SM_INDEX, SM_OVERFLOW};
use super::cache::BlockManager;
use super::journal::{self, BlockRef, Record, Root, RootId, SlotScan, NR_ROOTS};
use super::label::Label;
use super::spacemap::{self, SmKind, SmRoots, SpaceMap, ENTRIES_PER_PAGE};
use super::{DataBlock, MetaBlock, MetaError, Result, BLOCK_SIZE};
use crate::hash::{IntMap, IntSet};
use crate::io::BlockDev;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Blocks kept free for the commit itself (space-map pages and index nodes it shadows).
const META_RESERVE: u64 = 48;

/// What open found in the journal (reported by `pool info` and the checker).
#[derive(Debug, Clone)]
pub struct OpenReport {
    pub slots: Vec<SlotScan>,
    pub chosen_seq: u64,
    pub newest_valid_seq: u64,
    /// Records newer than the chosen one that were skipped, with the reason.
    pub skipped: Vec<(u64, String)>,
}

/// Open fell back from a valid newest record whose trees are damaged: damage to an
/// acknowledged commit, not the trace of a crash (a record is written only after the blocks
/// it names are durable, so a crash leaves the newest valid record's trees whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewind {
    /// The newest valid record, whose trees are damaged.
    pub newest: u64,
    /// The commit open fell back to.
    pub chosen: u64,
    /// Why the newest record (and any between) was skipped.
    pub why: String,
}

impl std::fmt::Display for Rewind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the newest commit (seq {}) is damaged ({}); the newest intact commit is seq {}",
            self.newest, self.why, self.chosen
        )
    }
}

impl OpenReport {
    /// `Some` when open fell back from damaged acknowledged state (not for an explicit
    /// older state, nor for torn records, which are not valid and never counted).
    pub fn rewound(&self) -> Option<Rewind> {
        if self.chosen_seq == self.newest_valid_seq || self.skipped.is_empty() {
            return None;
        }
        let why = self
            .skipped
            .iter()
            .map(|(seq, why)| format!("seq {seq}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        Some(Rewind {
            newest: self.newest_valid_seq,
            chosen: self.chosen_seq,
            why,
        })
    }
}

pub struct Tm {
    pub bm: BlockManager,
    pub label: Label,
    /// Generation (= seq it will commit as) of the transaction in progress.
    pub gen: u64,
    /// The last durable record.
    pub last: Record,
    pub msm: SpaceMap,
    pub dsm: SpaceMap,
    shadowed: IntSet<u64>,
    pending: BTreeMap<u64, i64>,
    /// Sum of the positive deltas in `pending` (this transaction's allocations), kept up to
    /// date so the free-space estimate every allocation checks is O(1).
    pending_alloc: i64,
    bump: Option<u64>,
    applying: bool,
    /// Data blocks whose count reached zero in this transaction (punched after commit).
    pub data_freed: Vec<u64>,
    page_memo: IntMap<(u8, u64), BlockRef>,
    prot_memo: IntMap<(u8, u8, u64), Option<BlockRef>>,
    pub read_only: bool,
    /// Metadata blocks the last commit freed (zero in S, not in S-1): free by the space map
    /// but protected from reuse until the next commit, so not available to allocate.
    meta_freed_last: u64,
    /// The same count for the commit being applied.
    meta_freed_now: u64,
    failed: Option<String>,
    /// Test-only fault switch: write the record before syncing the new metadata blocks.
    pub broken_commit_order: bool,
}

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
    // ----- space map plumbing -------------------------------------------------------------

    fn sm(&self, k: SmKind) -> &SpaceMap {
        match k {
            SmKind::Meta => &self.msm,
            SmKind::Data => &self.dsm,
        }
    }
    fn sm_mut(&mut self, k: SmKind) -> &mut SpaceMap {
        match k {
            SmKind::Meta => &mut self.msm,
            SmKind::Data => &mut self.dsm,
        }
    }

    pub(crate) fn is_shadowed(&self, b: MetaBlock) -> bool {
        self.shadowed.contains(&b.0)
    }
    pub(crate) fn mark_shadowed(&mut self, b: MetaBlock) {
        self.shadowed.insert(b.0);
    }

    /// Location of page `pi` of a space map in the current state.
    fn page_ref(&mut self, k: SmKind, pi: u64) -> Result<BlockRef> {
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
    fn prot_page_ref(&mut self, k: SmKind, which: u8, pi: u64) -> Result<Option<BlockRef>> {
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

    fn read_page(&mut self, r: BlockRef) -> Result<super::cache::Block> {
        let blk = self.bm.read(r.block, BlockType::Bitmap)?;
        check_page(&blk, r)?;
        Ok(blk)
    }

    /// `read_page` without taking a reference to the cached block (the count lookups on the
    /// data path only read one entry).
    fn read_page_ref(&mut self, r: BlockRef) -> Result<&[u8]> {
        let blk = self.bm.read_ref(r.block, BlockType::Bitmap)?;
        check_page(blk, r)?;
        Ok(blk)
    }

    /// Reference count of `b` as stored in the current pages (no pending deltas).
    fn sm_count(&mut self, k: SmKind, b: u64) -> Result<u64> {
        if k == SmKind::Meta && self.bump.is_some() {
            return Ok(0);
        }
        if b >= self.sm(k).nr_blocks {
            return Err(MetaError::corrupt(
                MetaBlock(0),
                format!(
                    "{k:?} block {b} is beyond the space map ({} blocks)",
                    self.sm(k).nr_blocks
                ),
            ));
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
    fn sm_set(&mut self, k: SmKind, b: u64, count: u64) -> Result<()> {
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
        let page = self.bm.get_mut(pr.block, BlockType::Bitmap)?;
        let old2 = spacemap::page_get(page, idx);
        let new2 = count.min(3) as u8;
        spacemap::page_set(page, idx, new2);
        let nf = spacemap::page_nr_free(page);
        if old2 == 0 && new2 != 0 {
            spacemap::set_page_nr_free(page, nf - 1);
            self.sm_mut(k).nr_allocated += 1;
        } else if old2 != 0 && new2 == 0 {
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
    fn find_free(&mut self, k: SmKind) -> Result<Option<u64>> {
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
            return Err(MetaError::corrupt(
                MetaBlock(0),
                format!("releasing {b}, which has no references"),
            ));
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
    fn freed_by_last_commit(&mut self, k: SmKind) -> Result<Vec<u64>> {
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

    fn add_page(&mut self, k: SmKind, pi: u64) -> Result<()> {
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

    // ----- state ---------------------------------------------------------------------------

    pub fn check_writable(&self) -> Result<()> {
        if let Some(why) = &self.failed {
            return Err(MetaError::FailStopped(why.clone()));
        }
        if self.read_only {
            return Err(MetaError::ReadOnly("the pool was opened read-only".into()));
        }
        Ok(())
    }

    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Stop accepting changes for good (an fsync failed: what is on disk is unknown).
    pub fn fail_stop(&mut self, why: String) {
        if self.failed.is_none() {
            self.failed = Some(why);
        }
    }

    fn fail(&mut self, e: MetaError) -> MetaError {
        if self.failed.is_none() {
            self.failed = Some(e.to_string());
        }
        e
    }

    /// True when the transaction in progress changed anything.
    pub fn is_dirty(&self) -> bool {
        !self.shadowed.is_empty() || !self.pending.is_empty()
    }

    /// Forget the transaction in progress and return to the last durable record.
    pub fn abort(&mut self) {
        self.bm.discard_dirty();
        self.pending.clear();
        self.pending_alloc = 0;
        self.shadowed.clear();
        self.page_memo.clear();
        self.data_freed.clear();
        self.meta_freed_now = 0;
        let last = self.last.clone();
        self.msm = sm_from_record(SmKind::Meta, &last, self.msm.protected, self.msm.cursor);
        self.dsm = sm_from_record(SmKind::Data, &last, self.dsm.protected, self.dsm.cursor);
    }

    /// Commit the transaction (the caller has already synced the data device). Returns the
    /// new record.
    pub fn commit(&mut self, user_roots: [BlockRef; 2], counters: [u64; 2]) -> Result<Record> {
        self.check_writable()?;
        // (1) Apply metadata reference-count deltas until nothing is left pending.
        self.applying = true;
        let applied = self.apply_pending();
        self.applying = false;
        applied?;
        // (2) Write the new blocks, (3) sync.
        let seq = self.gen;
        let rec = self.build_record(seq, user_roots, counters)?;
        if self.broken_commit_order {
            self.write_record(&rec).map_err(|e| self.fail(e))?;
            self.bm.write_dirty().map_err(|e| self.fail(e))?;
            self.bm.sync().map_err(|e| self.fail(e))?;
        } else {
            self.bm.write_dirty().map_err(|e| self.fail(e))?;
            self.bm.sync().map_err(|e| self.fail(e))?;
            // (4) the record to both rings, (5) sync.
            self.write_record(&rec).map_err(|e| self.fail(e))?;
            self.bm.sync().map_err(|e| self.fail(e))?;
        }
        self.after_commit(rec.clone());
        Ok(rec)
    }

    fn apply_pending(&mut self) -> Result<()> {
        while let Some((&b, &d)) = self.pending.iter().next() {
            let stored = self.sm_count(SmKind::Meta, b)? as i64;
            let new = stored + d;
            if new < 0 {
                return Err(MetaError::corrupt(
                    MetaBlock(b),
                    "reference count would go below zero",
                ));
            }
            self.sm_set(SmKind::Meta, b, new as u64)?;
            // Deltas added for `b` while applying stay pending.
            self.meta_delta(MetaBlock(b), -d);
        }
        Ok(())
    }

    fn build_record(
        &mut self,
        seq: u64,
        user: [BlockRef; 2],
        counters: [u64; 2],
    ) -> Result<Record> {
        let mut roots = [Root::default(); NR_ROOTS];
        let mut set = |tm: &mut Tm, id: RootId, r: BlockRef, ty: BlockType| -> Result<()> {
            let crc = tm.bm.crc_of(r.block, ty)?;
            roots[id as usize] = Root { r, crc };
            Ok(())
        };
        set(self, RootId::User0, user[0], BlockType::Node)?;
        set(self, RootId::User1, user[1], BlockType::Node)?;
        set(
            self,
            RootId::DataIndex,
            self.dsm.roots.index,
            BlockType::Node,
        )?;
        set(
            self,
            RootId::DataOverflow,
            self.dsm.roots.overflow,
            BlockType::Node,
        )?;
        set(
            self,
            RootId::MetaIndex,
            self.msm.roots.index,
            BlockType::Node,
        )?;
        set(
            self,
            RootId::MetaOverflow,
            self.msm.roots.overflow,
            BlockType::Node,
        )?;
        // The previous state's indexes: the record's own S-1 protection. Their blocks are
        // protected, so their crcs are those recorded when they were committed.
        let prev_d = self.last.root(RootId::DataIndex);
        let prev_m = self.last.root(RootId::MetaIndex);
        roots[RootId::PrevDataIndex as usize] = if self.dsm.protected[0].is_some() {
            prev_d
        } else {
            Root::default()
        };
        roots[RootId::PrevMetaIndex as usize] = if self.msm.protected[0].is_some() {
            prev_m
        } else {
            Root::default()
        };
        let slot = (seq % self.label.ring_slots as u64) as u32;
        Ok(Record {
            seq,
            slot,
            flags: 0,
            data_blocks: self.dsm.nr_blocks,
            meta_blocks: self.msm.nr_blocks,
            counters,
            data_allocated: self.dsm.nr_allocated,
            meta_allocated: self.msm.nr_allocated,
            roots,
        })
    }

    fn write_record(&mut self, rec: &Record) -> Result<()> {
        let uuid = *self.bm.uuid();
        for b in journal::slot_blocks(self.label.ring_slots, rec.slot) {
            let mut buf = rec.encode(&uuid, b);
            self.bm.write_direct(b, &mut buf)?;
        }
        Ok(())
    }

    fn after_commit(&mut self, rec: Record) {
        self.dsm.protected = [Some(self.dsm.roots.index), self.dsm.protected[0]];
        self.msm.protected = [Some(self.msm.roots.index), self.msm.protected[0]];
        self.prot_memo.clear();
        self.shadowed.clear();
        self.last = rec;
        self.gen += 1;
        self.meta_freed_last = std::mem::take(&mut self.meta_freed_now);
    }

    // ----- create / open --------------------------------------------------------------------

    /// Initialise a new metadata device. The caller builds its user trees with
    /// [`Tm::btree_empty`] and commits.
    pub fn create(
        dev: Arc<dyn BlockDev>,
        label: Label,
        data_blocks: u64,
        cache_blocks: usize,
    ) -> Result<Tm> {
        let meta_blocks = label.meta_blocks;
        dev.ensure_len(meta_blocks * BLOCK_SIZE as u64)
            .map_err(|e| MetaError::io("size metadata device", MetaBlock(0), e))?;
        let mut bm = BlockManager::new(dev, label.uuid, meta_blocks, cache_blocks);
        let mut lbuf = label.encode();
        bm.write_direct(MetaBlock(0), &mut lbuf)?;
        let empty_sm = |kind, nr_blocks| SpaceMap {
            kind,
            nr_blocks,
            nr_allocated: 0,
            roots: SmRoots::default(),
            protected: [None, None],
            cursor: 0,
        };
        let first_free = label.first_free_block();
        let mut tm = Tm {
            bm,
            gen: 1,
            last: Record {
                seq: 0,
                slot: 0,
                flags: 0,
                data_blocks,
                meta_blocks,
                counters: [0, 0],
                data_allocated: 0,
                meta_allocated: 0,
                roots: [Root::default(); NR_ROOTS],
            },
            label,
            msm: empty_sm(SmKind::Meta, meta_blocks),
            dsm: empty_sm(SmKind::Data, data_blocks),
            shadowed: IntSet::default(),
            pending: BTreeMap::new(),
            pending_alloc: 0,
            bump: Some(first_free),
            applying: false,
            data_freed: Vec::new(),
            page_memo: IntMap::default(),
            prot_memo: IntMap::default(),
            read_only: false,
            meta_freed_last: 0,
            meta_freed_now: 0,
            failed: None,
            broken_commit_order: false,
        };
        for k in [SmKind::Meta, SmKind::Data] {
            let idx = tm.btree_empty(SM_INDEX)?;
            let ovf = tm.btree_empty(SM_OVERFLOW)?;
            tm.sm_mut(k).roots = SmRoots {
                index: idx,
                overflow: ovf,
            };
            for pi in 0..tm.sm(k).nr_pages() {
                tm.add_page(k, pi)?;
                let pr = tm.page_ref(k, pi)?;
                tm.mark_shadowed(pr.block);
            }
        }
        for b in 0..first_free {
            tm.meta_delta(MetaBlock(b), 1);
        }
        tm.bump = None;
        Ok(tm)
    }

    /// Open a metadata device: pick the newest record whose roots verify.
    pub fn open(
        dev: Arc<dyn BlockDev>,
        cache_blocks: usize,
        read_only: bool,
    ) -> Result<(Tm, OpenReport)> {
        Self::open_at(dev, cache_blocks, read_only, None)
    }

    /// Open at the newest record, or at the record with sequence number `at` (read-only
    /// inspection of an older state).
    pub fn open_at(
        dev: Arc<dyn BlockDev>,
        cache_blocks: usize,
        read_only: bool,
        at: Option<u64>,
    ) -> Result<(Tm, OpenReport)> {
        let mut lbuf = vec![0u8; BLOCK_SIZE];
        dev.read_at(&mut lbuf, 0)
            .map_err(|e| MetaError::io("read label", MetaBlock(0), e))?;
        if dev.len() < BLOCK_SIZE as u64 {
            return Err(MetaError::BadLabel(
                "metadata file is empty or truncated (no label block)".into(),
            ));
        }
        let label = Label::decode(&lbuf)?;
        // Saturating: a damaged label's size must not wrap around to a plausible one.
        if dev.len() < label.meta_blocks.saturating_mul(BLOCK_SIZE as u64) {
            return Err(MetaError::BadLabel(format!(
                "metadata file is truncated: {} bytes, the pool needs {}",
                dev.len(),
                label.meta_blocks.saturating_mul(BLOCK_SIZE as u64)
            )));
        }
        let slots = journal::scan(dev.as_ref(), &label.uuid, label.ring_slots)?;
        let mut recs: Vec<Record> = slots
            .iter()
            .filter_map(|s| s.result.as_ref().ok().cloned())
            .collect();
        recs.sort_by_key(|r| std::cmp::Reverse(r.seq));
        recs.dedup_by(|a, b| a.seq == b.seq && a == b);
        let newest = recs.first().map(|r| r.seq).ok_or_else(|| {
            MetaError::NoValidRecord("no journal slot holds a valid record".into())
        })?;
        let bm = BlockManager::new(dev, label.uuid, label.meta_blocks, cache_blocks);
        let mut skipped = Vec::new();
        let mut chosen = None;
        let mut bm = bm;
        for rec in &recs {
            if let Some(at) = at {
                if rec.seq != at || at.saturating_add(2) < newest {
                    continue;
                }
            } else if rec.seq.saturating_add(2) < newest {
                // Older states are no longer protected from reuse.
                break;
            }
            match verify_roots(&mut bm, rec) {
                Ok(()) => {
                    chosen = Some(rec.clone());
                    break;
                }
                Err(e) => skipped.push((rec.seq, e)),
            }
        }
        let rec = match chosen {
            Some(r) => r,
            None => {
                let why = if let Some(at) = at {
                    let lo = newest
                        .saturating_sub(2)
                        .max(recs.last().map_or(0, |r| r.seq));
                    format!(
                        "commit {at} cannot be opened: only the last three commits stay intact \
                         ({lo} to {newest}); later commits reuse the blocks of older ones"
                    )
                } else {
                    format!("every recent record is damaged: {skipped:?}")
                };
                return Err(MetaError::NoValidRecord(why));
            }
        };
        let prot = |r: Root| if r.r.block.0 == 0 { None } else { Some(r.r) };
        let msm_prot = [
            Some(rec.root(RootId::MetaIndex).r),
            prot(rec.root(RootId::PrevMetaIndex)),
        ];
        let dsm_prot = [
            Some(rec.root(RootId::DataIndex).r),
            prot(rec.root(RootId::PrevDataIndex)),
        ];
        let tm = Tm {
            bm,
            gen: newest + 1,
            msm: sm_from_record(SmKind::Meta, &rec, msm_prot, 0),
            dsm: sm_from_record(SmKind::Data, &rec, dsm_prot, 0),
            last: rec.clone(),
            label,
            shadowed: IntSet::default(),
            pending: BTreeMap::new(),
            pending_alloc: 0,
            bump: None,
            applying: false,
            data_freed: Vec::new(),
            page_memo: IntMap::default(),
            prot_memo: IntMap::default(),
            read_only,
            meta_freed_last: 0,
            meta_freed_now: 0,
            failed: None,
            broken_commit_order: false,
        };
        let mut tm = tm;
        if !read_only {
            tm.meta_freed_last = tm.freed_by_last_commit(SmKind::Meta)?.len() as u64;
        }
        let report = OpenReport {
            slots,
            chosen_seq: rec.seq,
            newest_valid_seq: newest,
            skipped,
        };
        Ok((tm, report))
    }

    /// The user roots and counters of the last durable record.
    pub fn user_state(&self) -> ([BlockRef; 2], [u64; 2]) {
        (
            [
                self.last.root(RootId::User0).r,
                self.last.root(RootId::User1).r,
            ],
            self.last.counters,
        )
    }
}

fn sm_from_record(
    k: SmKind,
    rec: &Record,
    protected: [Option<BlockRef>; 2],
    cursor: u64,
) -> SpaceMap {
    let (idx, ovf, nr, alloc) = match k {
        SmKind::Meta => (
            RootId::MetaIndex,
            RootId::MetaOverflow,
            rec.meta_blocks,
            rec.meta_allocated,
        ),
        SmKind::Data => (
            RootId::DataIndex,
            RootId::DataOverflow,
            rec.data_blocks,
            rec.data_allocated,
        ),
    };
    SpaceMap {
        kind: k,
        nr_blocks: nr,
        nr_allocated: alloc,
        roots: SmRoots {
            index: rec.root(idx).r,
            overflow: rec.root(ovf).r,
        },
        protected,
        cursor,
    }
}

/// Check that every root a record names is a node with the recorded crc and generation.
fn verify_roots(bm: &mut BlockManager, rec: &Record) -> std::result::Result<(), String> {
    verify_record_roots(bm, rec).map_err(|(_, msg)| msg)
}

/// The same, naming the damaged root's block (for the checker).
pub fn verify_record_roots(
    bm: &mut BlockManager,
    rec: &Record,
) -> std::result::Result<(), (MetaBlock, String)> {
    for id in [
        RootId::User0,
        RootId::User1,
        RootId::DataIndex,
        RootId::DataOverflow,
        RootId::MetaIndex,
        RootId::MetaOverflow,
    ] {
        let root = rec.root(id);
        let b = root.r.block;
        let raw = bm.read_raw(b).map_err(|e| (b, e.to_string()))?;
        block::verify(&raw, Some(BlockType::Node), b, bm.uuid())
            .map_err(|e| (b, format!("{id:?} root: {e}")))?;
        if block::stored_crc(&raw) != root.crc {
            return Err((
                b,
                format!(
                    "{id:?} root {b} has crc {:#x}, record says {:#x}",
                    block::stored_crc(&raw),
                    root.crc
                ),
            ));
        }
        if block::generation(&raw) != root.r.gen {
            return Err((
                b,
                format!(
                    "{id:?} root {b} has generation {}, record says {}",
                    block::generation(&raw),
                    root.r.gen
                ),
            ));
        }
    }
    Ok(())
}
