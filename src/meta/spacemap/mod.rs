//! Space maps: a reference count for every metadata block and every data block.
//!
//! Counts live in bitmap pages of 2-bit entries ([`page`]): 0, 1, 2, and 3 meaning "3 or more,
//! see the overflow tree" (a B-tree `block -> count`). An index B-tree maps page number to the
//! page's block. The engine ([`disk`]) reads and changes them through a [`SmStore`] (the
//! transaction manager: node store, cached bitmap blocks, this transaction's state) and is
//! used through the [`SpaceMap`] trait.
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

pub mod disk;
pub mod page;

pub use disk::{SmMemo, SmStore};
pub use page::{
    page_find_zero, page_get, page_nr_free, page_set, set_page_nr_free, ENTRIES_PER_PAGE,
};

use super::btree::{TreeKind, ValueRefs};
use super::journal::BlockRef;
use super::Result;

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

/// The in-memory state of one space map: current roots, the index roots of the two
/// protected states, its size.
#[derive(Debug, Clone)]
pub struct SmState {
    pub kind: SmKind,
    pub nr_blocks: u64,
    pub nr_allocated: u64,
    pub roots: SmRoots,
    /// Index roots of S (last commit) and S-1; `None` right after creation.
    pub protected: [Option<BlockRef>; 2],
    /// Where the next allocation search starts.
    pub cursor: u64,
}

impl SmState {
    pub fn nr_pages(&self) -> u64 {
        self.nr_blocks.div_ceil(ENTRIES_PER_PAGE)
    }
}

/// Reference counts of one space map: what a user of the engine sees. Counts are stored
/// ones (the metadata map's pending deltas are the transaction manager's business).
pub trait SpaceMap {
    /// Blocks the map covers.
    fn nr_blocks(&self) -> u64;
    /// Blocks with a non-zero count.
    fn nr_allocated(&self) -> u64;
    /// The stored count of block `b`.
    fn count(&mut self, b: u64) -> Result<u64>;
    /// Set the stored count of `b` (shadowing its bitmap page, updating the overflow tree).
    fn set_count(&mut self, b: u64, count: u64) -> Result<()>;
    /// A block whose count is zero now and in both protected states (S and S-1), searched
    /// from the map's cursor; `None` when there is none.
    fn find_free(&mut self) -> Result<Option<u64>>;
    /// Blocks the last commit freed: count zero in S, not zero in S-1.
    fn freed_by_last_commit(&mut self) -> Result<Vec<u64>>;
    /// Grow the map to `new_blocks` entries, the new ones zero.
    fn grow(&mut self, new_blocks: u64) -> Result<()>;

    fn inc(&mut self, b: u64) -> Result<()> {
        let c = self.count(b)?;
        self.set_count(b, c + 1)
    }
}
