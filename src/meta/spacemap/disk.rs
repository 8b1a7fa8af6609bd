//! The space-map engine: reference counts kept in bitmap pages ([`super::page`]) found
//! through the index tree, counts of three and more in the overflow tree, allocation that
//! never hands out a block a committed state still references (S and S-1), and growth.
//!
//! It works on any [`SmStore`]: a B-tree node store that also holds the space maps' state,
//! typed access to bitmap blocks, and the few facts of the transaction the engine must
//! respect (see the trait). [`Handle`] is one space map of a store as a [`SpaceMap`].

use super::page::{self, ENTRIES_PER_PAGE};
use super::{SmKind, SmState, SpaceMap, SM_INDEX, SM_OVERFLOW};
use crate::hash::IntMap;
use crate::meta::block::{self, BlockType};
use crate::meta::btree::{Btree, NodeStore};
use crate::meta::cache::Block;
use crate::meta::journal::{decode_ref, encode_ref, BlockRef};
use crate::meta::{MetaBlock, MetaError, Result, BLOCK_SIZE};
use std::collections::BTreeMap;

/// What the engine needs of its store beyond a node store.
pub trait SmStore: NodeStore {
    fn sm_state(&self, k: SmKind) -> &SmState;
    fn sm_state_mut(&mut self, k: SmKind) -> &mut SmState;
    /// Lookup memos of page locations (cleared by the store when the trees change under
    /// them: abort, commit).
    fn sm_memo(&mut self) -> &mut SmMemo;
    /// A bitmap block, type-checked.
    fn bitmap(&mut self, b: MetaBlock) -> Result<Block>;
    /// The same without taking a reference to the cached block.
    fn bitmap_ref(&mut self, b: MetaBlock) -> Result<&[u8]>;
    /// A bitmap block this transaction owns (shadowed), for changing in place.
    fn bitmap_mut(&mut self, b: MetaBlock) -> Result<&mut [u8]>;
    /// The metadata counts are not stored yet (a pool being created allocates by bumping):
    /// every metadata count reads as zero.
    fn meta_counts_pending(&self) -> bool;
    /// Metadata block `b` has a pending count change in this transaction, so it may not be
    /// handed out even if its stored count is zero.
    fn meta_change_pending(&self, b: u64) -> bool;
    /// A metadata block's stored count went to zero.
    fn note_meta_freed(&mut self);
}

/// Memos of where bitmap pages live: in the current state, and in the protected ones.
#[derive(Debug, Default)]
pub struct SmMemo {
    pages: IntMap<(u8, u64), BlockRef>,
    protected: IntMap<(u8, u8, u64), Option<BlockRef>>,
}

impl SmMemo {
    /// The current state's page locations may have changed (abort).
    pub fn forget_pages(&mut self) {
        self.pages.clear();
    }
    /// The protected states moved (commit).
    pub fn forget_protected(&mut self) {
        self.protected.clear();
    }
}

fn tag(k: SmKind) -> u8 {
    match k {
        SmKind::Meta => 0,
        SmKind::Data => 1,
    }
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

/// Location of page `pi` of a space map in the current state.
pub fn page_ref<S: SmStore>(s: &mut S, k: SmKind, pi: u64) -> Result<BlockRef> {
    if let Some(r) = s.sm_memo().pages.get(&(tag(k), pi)) {
        return Ok(*r);
    }
    let root = s.sm_state(k).roots.index;
    let v = s.btree_lookup(root, SM_INDEX, pi)?.ok_or_else(|| {
        MetaError::corrupt(
            root.block,
            format!("space map index has no entry for page {pi}"),
        )
    })?;
    let r = decode_ref(&v);
    s.sm_memo().pages.insert((tag(k), pi), r);
    Ok(r)
}

/// Location of page `pi` in protected state `which` (0 = S, 1 = S-1).
fn prot_page_ref<S: SmStore>(s: &mut S, k: SmKind, which: u8, pi: u64) -> Result<Option<BlockRef>> {
    if let Some(r) = s.sm_memo().protected.get(&(tag(k), which, pi)) {
        return Ok(*r);
    }
    let r = match s.sm_state(k).protected[which as usize] {
        None => None,
        Some(root) => s.btree_lookup(root, SM_INDEX, pi)?.map(|v| decode_ref(&v)),
    };
    s.sm_memo().protected.insert((tag(k), which, pi), r);
    Ok(r)
}

/// The protected states' copies of page `pi` that differ from the current one `pr` (an
/// entry is free in every state only if it is zero in the current page and in these).
fn protected_pages<S: SmStore>(s: &mut S, k: SmKind, pi: u64, pr: BlockRef) -> Result<Vec<Block>> {
    let mut prot = Vec::new();
    for which in 0..2u8 {
        if let Some(p) = prot_page_ref(s, k, which, pi)? {
            if p.block != pr.block {
                prot.push(read_page(s, p)?);
            }
        }
    }
    Ok(prot)
}

fn read_page<S: SmStore>(s: &mut S, r: BlockRef) -> Result<Block> {
    let blk = s.bitmap(r.block)?;
    check_page(&blk, r)?;
    Ok(blk)
}

/// Reference count of `b` as stored in the current pages.
pub fn count<S: SmStore>(s: &mut S, k: SmKind, b: u64) -> Result<u64> {
    if k == SmKind::Meta && s.meta_counts_pending() {
        return Ok(0);
    }
    let nr_blocks = s.sm_state(k).nr_blocks;
    if b >= nr_blocks {
        return Err(MetaError::inconsistent(format!(
            "{k:?} block {b} is beyond the space map ({nr_blocks} blocks)"
        )));
    }
    let pr = page_ref(s, k, b / ENTRIES_PER_PAGE)?;
    // One entry of the cached page: no reference to the block taken.
    let blk = s.bitmap_ref(pr.block)?;
    check_page(blk, pr)?;
    let v = page::page_get(blk, (b % ENTRIES_PER_PAGE) as usize);
    if v < 3 {
        return Ok(v as u64);
    }
    let root = s.sm_state(k).roots.overflow;
    let c = s.btree_lookup(root, SM_OVERFLOW, b)?.ok_or_else(|| {
        MetaError::corrupt(
            root.block,
            format!("overflow tree has no count for {k:?} block {b}"),
        )
    })?;
    Ok(block::get_u64(&c, 0))
}

/// The page `pi` in this transaction: shadowed on its first change (a new block, the index
/// updated, the old block's reference dropped).
fn shadow_page<S: SmStore>(s: &mut S, k: SmKind, pi: u64) -> Result<BlockRef> {
    let pr = page_ref(s, k, pi)?;
    if s.was_shadowed(pr.block) {
        return Ok(pr);
    }
    let src = read_page(s, pr)?;
    let nb = s.alloc_block()?;
    let gen = s.generation();
    let mut buf = src.to_vec();
    block::set_block_number(&mut buf, nb);
    block::set_generation(&mut buf, gen);
    s.put_block(nb, buf)?;
    s.note_shadowed(nb);
    s.ref_delta(pr.block, -1);
    let nr = BlockRef { block: nb, gen };
    let mut root = s.sm_state(k).roots.index;
    s.btree_insert(&mut root, SM_INDEX, pi, &encode_ref(nr))?;
    s.sm_state_mut(k).roots.index = root;
    s.sm_memo().pages.insert((tag(k), pi), nr);
    Ok(nr)
}

/// Set the stored count of `b` (shadowing its page and updating the overflow tree).
pub fn set_count<S: SmStore>(s: &mut S, k: SmKind, b: u64, count: u64) -> Result<()> {
    let pi = b / ENTRIES_PER_PAGE;
    let idx = (b % ENTRIES_PER_PAGE) as usize;
    let pr = shadow_page(s, k, pi)?;
    let allocated = s.sm_state(k).nr_allocated;
    let page = s.bitmap_mut(pr.block)?;
    let old2 = page::page_get(page, idx);
    let new2 = count.min(3) as u8;
    let nf = page::page_nr_free(page);
    // A page whose free count disagrees with its entries, or a map that would count fewer
    // than zero blocks allocated (damage under a valid checksum), is corruption to report
    // before anything changes, not a counter to wrap.
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
    page::page_set(page, idx, new2);
    if taking {
        page::set_page_nr_free(page, nf - 1);
        s.sm_state_mut(k).nr_allocated += 1;
    } else if freeing {
        page::set_page_nr_free(page, nf + 1);
        s.sm_state_mut(k).nr_allocated -= 1;
        if k == SmKind::Meta {
            s.note_meta_freed();
        }
    }
    if count >= 3 {
        let mut root = s.sm_state(k).roots.overflow;
        s.btree_insert(&mut root, SM_OVERFLOW, b, &count.to_le_bytes())?;
        s.sm_state_mut(k).roots.overflow = root;
    } else if old2 == 3 {
        let mut root = s.sm_state(k).roots.overflow;
        s.btree_remove(&mut root, SM_OVERFLOW, b)?;
        s.sm_state_mut(k).roots.overflow = root;
    }
    Ok(())
}

/// Find a block whose count is zero now and in both protected states.
pub fn find_free<S: SmStore>(s: &mut S, k: SmKind) -> Result<Option<u64>> {
    let nr_blocks = s.sm_state(k).nr_blocks;
    let pages = s.sm_state(k).nr_pages();
    if pages == 0 {
        return Ok(None);
    }
    let start = s.sm_state(k).cursor % nr_blocks;
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
        let pr = page_ref(s, k, pi)?;
        let page = read_page(s, pr)?;
        if page::page_nr_free(&page) == 0 {
            continue;
        }
        let prot = protected_pages(s, k, pi, pr)?;
        let mut i = lo;
        while let Some(z) = page::page_find_zero(&page, i, limit) {
            let b = base + z as u64;
            let ok = prot.iter().all(|p| page::page_get(p, z) == 0)
                && (k == SmKind::Data || !s.meta_change_pending(b));
            if ok {
                s.sm_state_mut(k).cursor = b + 1;
                return Ok(Some(b));
            }
            i = z + 1;
        }
    }
    Ok(None)
}

/// Blocks of a space map the last commit freed: count zero in S, not zero in S-1. Only
/// bitmap pages whose block differs between the two states can hold one; both index trees
/// are walked once, and only differing pages are read.
pub fn freed_by_last_commit<S: SmStore>(s: &mut S, k: SmKind) -> Result<Vec<u64>> {
    let [Some(now_root), Some(prev_root)] = s.sm_state(k).protected else {
        return Ok(Vec::new());
    };
    if now_root == prev_root {
        return Ok(Vec::new());
    }
    let mut pages = |root: BlockRef| -> Result<BTreeMap<u64, BlockRef>> {
        let mut m = BTreeMap::new();
        s.btree_walk(root, SM_INDEX, 0, u64::MAX, &mut |pi, v| {
            m.insert(pi, decode_ref(v));
            true
        })?;
        Ok(m)
    };
    let (now, before) = (pages(now_root)?, pages(prev_root)?);
    let nr_blocks = s.sm_state(k).nr_blocks;
    let mut freed = Vec::new();
    for (pi, r) in now {
        let Some(&p) = before.get(&pi) else { continue };
        if p.block == r.block {
            continue;
        }
        let (a, b) = (read_page(s, r)?, read_page(s, p)?);
        let base = pi * ENTRIES_PER_PAGE;
        let n = (nr_blocks.saturating_sub(base)).min(ENTRIES_PER_PAGE) as usize;
        freed.extend(
            (0..n)
                .filter(|&i| page::page_get(&a, i) == 0 && page::page_get(&b, i) != 0)
                .map(|i| base + i as u64),
        );
    }
    Ok(freed)
}

/// Every maximal run `(first, length)` of blocks whose count is zero now and in both
/// protected states (blocks nothing a record still names uses: `pool trim` punches them).
/// Each current page is read once, and a protected state's copy only where its block
/// differs; pages with no free entry are skipped by their free count.
pub fn unused_runs<S: SmStore>(s: &mut S, k: SmKind, f: &mut dyn FnMut(u64, u64)) -> Result<()> {
    let nr_blocks = s.sm_state(k).nr_blocks;
    let mut run: Option<(u64, u64)> = None;
    let flush = |run: &mut Option<(u64, u64)>, f: &mut dyn FnMut(u64, u64)| {
        if let Some((a, n)) = run.take() {
            f(a, n);
        }
    };
    for pi in 0..s.sm_state(k).nr_pages() {
        let base = pi * ENTRIES_PER_PAGE;
        let n = (nr_blocks - base).min(ENTRIES_PER_PAGE) as usize;
        let pr = page_ref(s, k, pi)?;
        let page = read_page(s, pr)?;
        if page::page_nr_free(&page) == 0 {
            flush(&mut run, f);
            continue;
        }
        let prot = protected_pages(s, k, pi, pr)?;
        for i in 0..n {
            let unused =
                page::page_get(&page, i) == 0 && prot.iter().all(|p| page::page_get(p, i) == 0);
            let b = base + i as u64;
            match (&mut run, unused) {
                (Some((_, len)), true) => *len += 1,
                (None, true) => run = Some((b, 1)),
                (_, false) => flush(&mut run, f),
            }
        }
    }
    flush(&mut run, f);
    Ok(())
}

/// The highest block numbered `from` or above with a non-zero count in the current state,
/// or `None`. Reads only the bitmap pages from `from` up, skipping pages with no used entry
/// by their free count.
pub fn highest_used<S: SmStore>(s: &mut S, k: SmKind, from: u64) -> Result<Option<u64>> {
    let nr_blocks = s.sm_state(k).nr_blocks;
    if from >= nr_blocks {
        return Ok(None);
    }
    for pi in (from / ENTRIES_PER_PAGE..s.sm_state(k).nr_pages()).rev() {
        let base = pi * ENTRIES_PER_PAGE;
        let n = (nr_blocks - base).min(ENTRIES_PER_PAGE);
        let pr = page_ref(s, k, pi)?;
        let page = read_page(s, pr)?;
        if u64::from(page::page_nr_free(&page)) >= n {
            continue;
        }
        let lo = from.saturating_sub(base) as usize;
        if let Some(i) = (lo..n as usize)
            .rev()
            .find(|&i| page::page_get(&page, i) != 0)
        {
            return Ok(Some(base + i as u64));
        }
    }
    Ok(None)
}

/// A new, all-zero page `pi` (its entries up to the map's size counted free).
pub fn add_page<S: SmStore>(s: &mut S, k: SmKind, pi: u64) -> Result<()> {
    let nb = s.alloc_block()?;
    let gen = s.generation();
    let mut buf = vec![0u8; BLOCK_SIZE];
    block::init_header(&mut buf, BlockType::Bitmap, nb, gen, &s.pool_uuid());
    let entries = (s.sm_state(k).nr_blocks - pi * ENTRIES_PER_PAGE).min(ENTRIES_PER_PAGE);
    page::set_page_nr_free(&mut buf, entries as u32);
    s.put_block(nb, buf)?;
    let r = BlockRef { block: nb, gen };
    let mut root = s.sm_state(k).roots.index;
    s.btree_insert(&mut root, SM_INDEX, pi, &encode_ref(r))?;
    s.sm_state_mut(k).roots.index = root;
    s.sm_memo().pages.insert((tag(k), pi), r);
    Ok(())
}

/// Add `new_blocks - nr_blocks` zeroed entries to a space map.
pub fn grow<S: SmStore>(s: &mut S, k: SmKind, new_blocks: u64) -> Result<()> {
    let old = s.sm_state(k).nr_blocks;
    if new_blocks <= old {
        return Ok(());
    }
    let old_pages = s.sm_state(k).nr_pages();
    s.sm_state_mut(k).nr_blocks = new_blocks;
    let new_pages = s.sm_state(k).nr_pages();
    // The last old page may gain entries: shadow it and raise its free count.
    if old_pages > 0 {
        let pi = old_pages - 1;
        let old_in_page = old - pi * ENTRIES_PER_PAGE;
        let new_in_page = (new_blocks - pi * ENTRIES_PER_PAGE).min(ENTRIES_PER_PAGE);
        if new_in_page > old_in_page {
            let pr = shadow_page(s, k, pi)?;
            let page = s.bitmap_mut(pr.block)?;
            let nf = page::page_nr_free(page);
            page::set_page_nr_free(page, nf + (new_in_page - old_in_page) as u32);
        }
    }
    for pi in old_pages..new_pages {
        add_page(s, k, pi)?;
    }
    Ok(())
}

/// One space map of a store.
pub struct Handle<'a, S: SmStore> {
    pub store: &'a mut S,
    pub kind: SmKind,
}

impl<S: SmStore> SpaceMap for Handle<'_, S> {
    fn nr_blocks(&self) -> u64 {
        self.store.sm_state(self.kind).nr_blocks
    }
    fn nr_allocated(&self) -> u64 {
        self.store.sm_state(self.kind).nr_allocated
    }
    fn count(&mut self, b: u64) -> Result<u64> {
        count(self.store, self.kind, b)
    }
    fn set_count(&mut self, b: u64, c: u64) -> Result<()> {
        set_count(self.store, self.kind, b, c)
    }
    fn find_free(&mut self) -> Result<Option<u64>> {
        find_free(self.store, self.kind)
    }
    fn freed_by_last_commit(&mut self) -> Result<Vec<u64>> {
        freed_by_last_commit(self.store, self.kind)
    }
    fn grow(&mut self, new_blocks: u64) -> Result<()> {
        grow(self.store, self.kind, new_blocks)
    }
}
