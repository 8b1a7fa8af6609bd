//! The read side of the B-tree: lookups that borrow the cached node instead of copying it,
//! the lookup that also reports whether its path is shared, the height, and ordered range
//! walks that catch damage. Nothing here shadows a node or changes a reference count.

use super::node::{check_node, Node};
use super::{check_depth, Btree, NodeStore, TreeKind};
use crate::meta::block::get_u64;
use crate::meta::journal::BlockRef;
use crate::meta::{MetaError, Result};

/// `read_node` borrowing the cached block (lookups visit nodes and keep none).
pub(super) fn node_ref<S: NodeStore + ?Sized>(
    s: &mut S,
    r: BlockRef,
    kind: TreeKind,
) -> Result<&[u8]> {
    let blk = s.block_ref(r.block)?;
    check_node(blk, r, kind)?;
    Ok(blk)
}

/// [`Btree::btree_lookup_with`].
pub(super) fn lookup_with<S: NodeStore + ?Sized, T>(
    s: &mut S,
    root: BlockRef,
    kind: TreeKind,
    key: u64,
    f: impl FnOnce(&[u8]) -> T,
) -> Result<Option<T>> {
    let mut r = root;
    let mut depth = 0;
    loop {
        check_depth(depth, r.block)?;
        depth += 1;
        let n = Node(node_ref(s, r, kind)?);
        if n.is_leaf() {
            return Ok(n.search(key).ok().map(|i| f(n.value(i))));
        }
        if n.nr() == 0 {
            return Ok(None);
        }
        r = n.child(n.child_index(key));
    }
}

/// [`Btree::btree_height`].
pub(super) fn height<S: NodeStore + ?Sized>(
    s: &mut S,
    root: BlockRef,
    kind: TreeKind,
) -> Result<u64> {
    let mut r = root;
    for h in 0..64 {
        let blk = s.read_node(r, kind)?;
        let n = Node(&blk);
        if n.is_leaf() || n.nr() == 0 {
            return Ok(h);
        }
        r = n.child(0);
    }
    Err(MetaError::corrupt(root.block, "tree deeper than 64 levels"))
}

/// [`Btree::btree_lookup_shared`].
pub(super) fn lookup_shared<S: NodeStore + ?Sized>(
    s: &mut S,
    root: BlockRef,
    kind: TreeKind,
    key: u64,
) -> Result<Option<(u64, bool)>> {
    let mut r = root;
    let mut shared = false;
    let mut depth = 0;
    loop {
        check_depth(depth, r.block)?;
        depth += 1;
        if !shared && s.ref_count(r.block)? > 1 {
            shared = true;
        }
        let n = Node(node_ref(s, r, kind)?);
        if n.is_leaf() {
            return Ok(n.search(key).ok().map(|i| (get_u64(n.value(i), 0), shared)));
        }
        if n.nr() == 0 {
            return Ok(None);
        }
        r = n.child(n.child_index(key));
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn walk_rec<S: NodeStore + ?Sized>(
    s: &mut S,
    root: BlockRef,
    kind: TreeKind,
    lo: u64,
    hi: u64,
    depth: usize,
    last: &mut Option<u64>,
    f: &mut dyn FnMut(u64, &[u8]) -> bool,
) -> Result<bool> {
    check_depth(depth, root.block)?;
    let blk = s.read_node(root, kind)?;
    let n = Node(&blk);
    if n.is_leaf() {
        let start = match n.search(lo) {
            Ok(i) | Err(i) => i,
        };
        for i in start..n.nr() {
            let k = n.key(i);
            if k >= hi {
                return Ok(false);
            }
            if k < lo || last.is_some_and(|l| k <= l) {
                return Err(MetaError::corrupt(
                    root.block,
                    format!("key {k} is out of order in its tree"),
                ));
            }
            *last = Some(k);
            if !f(k, n.value(i)) {
                return Ok(false);
            }
        }
        return Ok(true);
    }
    if n.nr() == 0 {
        return Ok(true);
    }
    let first = n.child_index(lo);
    for i in first..n.nr() {
        if n.key(i) >= hi && i > first {
            return Ok(false);
        }
        if !walk_rec(s, n.child(i), kind, lo, hi, depth + 1, last, f)? {
            return Ok(false);
        }
    }
    Ok(true)
}
