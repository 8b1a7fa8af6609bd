//! The reference-counted copy-on-write B-tree (dm-thin's `persistent-data` btree).
//!
//! Keys are `u64`; values have a fixed size per tree kind ([`TreeKind`]), and what a value
//! references (a data block, the root of another tree, nothing) is the kind's business, told
//! to this module through [`ValueRefs`]: the tree knows how to count references, not what the
//! values mean (the pool's kinds live in `pool/trees.rs`).
//!
//! Nodes are shared between trees: a snapshot takes one more reference on a root. Writing
//! through a node first *shadows* it: a node allocated in this transaction with a single
//! reference is changed in place; any other node is copied to a fresh block (and, when it was
//! shared, its children gain a reference each, since two nodes now point at them).
//!
//! The operations ([`Btree`] in `ops.rs`; their read side in `read.rs`, their write side in
//! `mutate.rs`) reach blocks and reference counts only through
//! [`NodeStore`], which the transaction manager implements (`txn/`). Node bytes: `node.rs`
//! and docs/format.md, "B-tree nodes". Internal-node values are child pointers (`block u64`,
//! `generation u64`), and a child's generation must equal what its parent recorded. An
//! internal node's key `i` is a lower bound of every key below child `i`.

mod build;
mod mutate;
mod node;
mod ops;
mod read;
#[cfg(test)]
mod tests;

pub use build::TreeBuilder;
pub use node::{capacity, Node, FLAG_LEAF, KEYS, KIND, MAX_ENTRIES, NR_ENTRIES, VALUE_SIZE};
pub use ops::Btree;

use super::cache::Block;
use super::{DataBlock, MetaBlock, MetaError, Result};

/// How the values of a tree hold references.
#[derive(Debug, Clone, Copy)]
pub enum ValueRefs {
    /// Plain data.
    None,
    /// Each value holds one reference to the data block this function decodes from it.
    DataBlock(fn(&[u8]) -> DataBlock),
    /// Each value is a `{block, generation}` pointer to the root of a tree of this kind (one
    /// metadata-block reference; dropping the last one frees that tree).
    SubTree(&'static TreeKind),
}

/// What a tree stores. Kinds are told apart by `id`, which every node records.
#[derive(Debug, Clone, Copy)]
pub struct TreeKind {
    pub id: u32,
    /// For messages ("mapping", "space-map index", ...).
    pub name: &'static str,
    pub value_size: usize,
    pub refs: ValueRefs,
}

impl PartialEq for TreeKind {
    fn eq(&self, other: &TreeKind) -> bool {
        self.id == other.id && self.value_size == other.value_size
    }
}
impl Eq for TreeKind {}

impl std::fmt::Display for TreeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (kind {})", self.name, self.id)
    }
}

/// What the tree operations need from the layer below: node blocks of the open transaction
/// and reference counts. Blocks handed out by `alloc_block` are free in every state a
/// commit record still names (the transaction manager's rule, docs/design.md §3).
pub trait NodeStore {
    /// The open transaction's generation, stamped into every node it writes.
    fn generation(&self) -> u64;
    /// The pool's UUID, stamped into every node header.
    fn pool_uuid(&self) -> [u8; 16];
    /// A free metadata block for a new node (its count becomes one).
    fn alloc_block(&mut self) -> Result<MetaBlock>;
    /// A node block, owned (checksum and header verified).
    fn read_block(&mut self, b: MetaBlock) -> Result<Block>;
    /// The same, borrowed from the cache.
    fn block_ref(&mut self, b: MetaBlock) -> Result<&[u8]>;
    /// A node block of this transaction (shadowed or new), for editing in place.
    fn block_mut(&mut self, b: MetaBlock) -> Result<&mut [u8]>;
    /// Store a new node written in full.
    fn put_block(&mut self, b: MetaBlock, buf: Vec<u8>) -> Result<()>;
    /// References to a metadata block.
    fn ref_count(&mut self, b: MetaBlock) -> Result<u64>;
    /// Add `d` references to a metadata block (applied at commit).
    fn ref_delta(&mut self, b: MetaBlock, d: i64);
    /// Whether this transaction made `b` (so it may be edited in place).
    fn was_shadowed(&self, b: MetaBlock) -> bool;
    fn note_shadowed(&mut self, b: MetaBlock);
    /// Add `d` (±1) references to a data block.
    fn data_delta(&mut self, b: DataBlock, d: i64) -> Result<()>;
}

/// Bytes of an internal node's value: a child pointer.
const INTERNAL_VALUE: usize = 16;
/// No real tree is this deep (a level multiplies the keys by at least two); a path that
/// goes deeper loops through a damaged or forged child pointer.
const MAX_DEPTH: usize = 64;

fn check_depth(depth: usize, at: MetaBlock) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(MetaError::corrupt(
            at,
            format!("a tree path is deeper than {MAX_DEPTH} levels: a child pointer loops"),
        ));
    }
    Ok(())
}

/// An upper bound of the nodes an update of `k` sorted keys allocates in a tree of height
/// `h`: at most k / 80 + 2 nodes per level are touched (a node at least half full holds more
/// than 80 keys), on h + 1 levels plus one for a new root, and each touched node may be
/// shadowed (one new block) and split (one more).
pub fn update_bound(k: u64, h: u64) -> u64 {
    (h + 2) * 2 * (k / 80 + 2)
}
