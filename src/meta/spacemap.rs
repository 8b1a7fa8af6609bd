//! Space maps: a reference count for every metadata block and every data block.
//!
//! Counts live in bitmap pages of 2-bit entries (`bitvec`): 0, 1, 2, and 3 meaning "3 or more,
//! see the overflow tree" (a B-tree `block -> count`). An index B-tree maps page number to the
//! page's block. Page layout after the common header: `40..44` number of zero entries in the
//! page; `64..4096` the 2-bit entries, least significant bits first.
//!
//! The metadata space map is self-describing, so its changes are kept as pending deltas during
//! a transaction and applied at commit in a loop that reaches a fixed point (applying a delta
//! may shadow a page, which allocates a block, which is one more delta; each page is shadowed
//! at most once per transaction, so the loop ends). The data space map is updated directly.
//!
//! Allocation protection (the "deferred frees" of docs/design.md §3): a block is handed out
//! only if its count is zero now, in the last committed state (S) and in the one before (S-1).
//! The records keep the index roots of S and S-1, so nothing that either state references is
//! ever overwritten, and open can fall back one record when the newest one's trees are damaged.

use super::block::{get_u32, put_u32, HEADER_SIZE};
use super::btree::{TreeKind, ValueRefs};
use super::journal::BlockRef;
use super::BLOCK_SIZE;
use bitvec::prelude::*;

/// The index tree of a space map: bitmap page number -> `{block, generation}` of the page.
pub const SM_INDEX: TreeKind = TreeKind {
    id: 1,
    name: "space-map index",
    value_size: 16,
    refs: ValueRefs::None,
};
/// The overflow tree of a space map: block -> reference count, for counts of 3 and more.
pub const SM_OVERFLOW: TreeKind = TreeKind {
    id: 2,
    name: "space-map overflow",
    value_size: 8,
    refs: ValueRefs::None,
};

/// Entries per bitmap page.
pub const ENTRIES_PER_PAGE: u64 = ((BLOCK_SIZE - HEADER_SIZE) * 4) as u64;

/// Which space map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmKind {
    Meta,
    Data,
}

/// The persistent roots of one space map in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SmRoots {
    pub index: BlockRef,
    pub overflow: BlockRef,
}

/// One space map: current roots, the index roots of the two protected states, its size.
#[derive(Debug, Clone)]
pub struct SpaceMap {
    pub kind: SmKind,
    pub nr_blocks: u64,
    pub nr_allocated: u64,
    pub roots: SmRoots,
    /// Index roots of S (last commit) and S-1; `None` right after creation.
    pub protected: [Option<BlockRef>; 2],
    /// Where the next allocation search starts.
    pub cursor: u64,
}

impl SpaceMap {
    pub fn nr_pages(&self) -> u64 {
        self.nr_blocks.div_ceil(ENTRIES_PER_PAGE)
    }
}

pub fn page_nr_free(page: &[u8]) -> u32 {
    get_u32(page, 40)
}
pub fn set_page_nr_free(page: &mut [u8], v: u32) {
    put_u32(page, 40, v)
}

fn bits(page: &[u8]) -> &BitSlice<u8, Lsb0> {
    page[HEADER_SIZE..].view_bits::<Lsb0>()
}

/// The 2-bit entry for `idx` within a page.
pub fn page_get(page: &[u8], idx: usize) -> u8 {
    bits(page)[idx * 2..idx * 2 + 2].load_le::<u8>()
}

pub fn page_set(page: &mut [u8], idx: usize, v: u8) {
    page[HEADER_SIZE..].view_bits_mut::<Lsb0>()[idx * 2..idx * 2 + 2].store_le::<u8>(v);
}

/// First entry index `>= from` and `< limit` whose 2-bit value is zero.
pub fn page_find_zero(page: &[u8], from: usize, limit: usize) -> Option<usize> {
    let body = &page[HEADER_SIZE..];
    let mut i = from;
    while i < limit {
        // Skip whole bytes (4 entries) with no zero pair.
        if i % 4 == 0 {
            let byte = body[i / 4];
            let has_zero = (0..4).any(|k| (byte >> (k * 2)) & 3 == 0);
            if !has_zero {
                i += 4;
                continue;
            }
        }
        if page_get(page, i) == 0 {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_bit_entries_round_trip() {
        let mut page = vec![0u8; BLOCK_SIZE];
        page_set(&mut page, 0, 3);
        page_set(&mut page, 1, 1);
        page_set(&mut page, 16127, 2);
        assert_eq!(page_get(&page, 0), 3);
        assert_eq!(page_get(&page, 1), 1);
        assert_eq!(page_get(&page, 2), 0);
        assert_eq!(page_get(&page, 16127), 2);
        assert_eq!(page_find_zero(&page, 0, 16128), Some(2));
        for i in 0..16128 {
            page_set(&mut page, i, 1);
        }
        assert_eq!(page_find_zero(&page, 0, 16128), None);
        page_set(&mut page, 9000, 0);
        assert_eq!(page_find_zero(&page, 5, 16128), Some(9000));
        assert_eq!(page_find_zero(&page, 5, 9000), None);
    }
}
