//! The B-tree operations every [`NodeStore`] has, as one trait: the read side lives in
//! `read.rs`, the write side (shadowing, splits, rebalancing, releasing) in `mutate.rs`,
//! written once against the store (module docs of `btree` for shadowing).

use super::mutate::{self, new_node};
use super::node::check_node;
use super::read;
use super::{NodeStore, TreeKind, ValueRefs};
use crate::meta::cache::Block;
use crate::meta::journal::{decode_ref, BlockRef};
use crate::meta::Result;

/// The tree operations every [`NodeStore`] has (the transaction manager is the one the pool
/// uses; the unit tests below use it on a memory device).
pub trait Btree: NodeStore {
    /// A new, empty tree.
    fn btree_empty(&mut self, kind: TreeKind) -> Result<BlockRef> {
        let (r, buf) = new_node(self, kind, true)?;
        self.put_block(r.block, buf)?;
        self.note_shadowed(r.block);
        Ok(r)
    }

    /// Read a node through a parent pointer, verifying generation, kind and shape.
    fn read_node(&mut self, r: BlockRef, kind: TreeKind) -> Result<Block> {
        let blk = self.read_block(r.block)?;
        check_node(&blk, r, kind)?;
        Ok(blk)
    }

    /// Look up `key`; returns a copy of its value.
    fn btree_lookup(
        &mut self,
        root: BlockRef,
        kind: TreeKind,
        key: u64,
    ) -> Result<Option<Vec<u8>>> {
        self.btree_lookup_with(root, kind, key, <[u8]>::to_vec)
    }

    /// Look up `key` and hand its value, in place, to `f` (the data path decodes what it
    /// needs without copying the value out).
    fn btree_lookup_with<T>(
        &mut self,
        root: BlockRef,
        kind: TreeKind,
        key: u64,
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>> {
        read::lookup_with(self, root, kind, key, f)
    }

    /// Levels above the leaves (0 for a tree that is one leaf), following the first child.
    /// Bounded: a path longer than 64 levels is damage.
    fn btree_height(&mut self, root: BlockRef, kind: TreeKind) -> Result<u64> {
        read::height(self, root, kind)
    }

    /// Look up a `u64` value and whether any node on its path is shared with another tree.
    fn btree_lookup_shared(
        &mut self,
        root: BlockRef,
        kind: TreeKind,
        key: u64,
    ) -> Result<Option<(u64, bool)>> {
        read::lookup_shared(self, root, kind, key)
    }

    /// Visit every entry with `lo <= key < hi` in key order; the visitor returns false to stop.
    /// A damaged tree whose keys come out of order (or below `lo`) is reported as corrupt
    /// instead: callers rely on the order (a read places mappings by it).
    fn btree_walk(
        &mut self,
        root: BlockRef,
        kind: TreeKind,
        lo: u64,
        hi: u64,
        f: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<bool> {
        read::walk_rec(self, root, kind, lo, hi, 0, &mut None, f)
    }

    /// Take one more reference on whatever a value points at.
    fn inc_value(&mut self, kind: TreeKind, v: &[u8]) -> Result<()> {
        match kind.refs {
            ValueRefs::None => Ok(()),
            ValueRefs::DataBlock(decode) => self.data_delta(decode(v), 1),
            ValueRefs::SubTree(_) => {
                self.ref_delta(decode_ref(v).block, 1);
                Ok(())
            }
        }
    }

    /// Drop one reference held by a value (recursively freeing what reaches zero).
    fn dec_value(&mut self, kind: TreeKind, v: &[u8]) -> Result<()> {
        match kind.refs {
            ValueRefs::None => Ok(()),
            ValueRefs::DataBlock(decode) => self.data_delta(decode(v), -1),
            ValueRefs::SubTree(sub) => self.btree_dec(decode_ref(v), *sub),
        }
    }

    /// Take a reference on a whole tree (snapshot): O(1).
    fn btree_inc(&mut self, root: BlockRef) {
        self.ref_delta(root.block, 1);
    }

    /// Drop a reference on a tree; nodes (and values) that reach zero are released.
    fn btree_dec(&mut self, root: BlockRef, kind: TreeKind) -> Result<()> {
        mutate::dec_rec(self, root, kind, 0)
    }

    /// Insert or replace; returns the value that was replaced (its references are the
    /// caller's to drop).
    fn btree_insert(
        &mut self,
        root: &mut BlockRef,
        kind: TreeKind,
        key: u64,
        value: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        mutate::insert(self, root, kind, key, value)
    }

    /// Remove `key`; returns its value (whose references are the caller's to drop).
    /// Nothing is shadowed when the key is absent.
    fn btree_remove(
        &mut self,
        root: &mut BlockRef,
        kind: TreeKind,
        key: u64,
    ) -> Result<Option<Vec<u8>>> {
        mutate::remove(self, root, kind, key)
    }

    /// Count entries (and nodes) of a tree; used by tests and the checker.
    fn btree_count(&mut self, root: BlockRef, kind: TreeKind) -> Result<u64> {
        let mut n = 0u64;
        self.btree_walk(root, kind, 0, u64::MAX, &mut |_, _| {
            n += 1;
            true
        })?;
        Ok(n)
    }
}

impl<S: NodeStore + ?Sized> Btree for S {}
