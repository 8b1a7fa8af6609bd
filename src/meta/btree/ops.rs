//! The B-tree operations, written once against [`NodeStore`]: lookups and walks, insert with
//! node splits, remove with collapse of single-child roots, and reference counting of whole
//! trees and of the values they hold (module docs of `btree` for shadowing).

use super::node::{
    check_node, init_node, insert_entry, remove_entry, set_key, set_nr, set_value, Node,
};
use super::{check_depth, NodeStore, TreeKind, ValueRefs};
use crate::meta::block::{self, get_u64, BlockType};
use crate::meta::cache::Block;
use crate::meta::journal::{decode_ref, encode_ref, BlockRef};
use crate::meta::{MetaError, Result, BLOCK_SIZE};

enum Outcome {
    Done(BlockRef),
    Split(BlockRef, u64, BlockRef),
}

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
        let mut r = root;
        let mut depth = 0;
        loop {
            check_depth(depth, r.block)?;
            depth += 1;
            let n = Node(node_ref(self, r, kind)?);
            if n.is_leaf() {
                return Ok(n.search(key).ok().map(|i| f(n.value(i))));
            }
            if n.nr() == 0 {
                return Ok(None);
            }
            r = n.child(n.child_index(key));
        }
    }

    /// Levels above the leaves (0 for a tree that is one leaf), following the first child.
    /// Bounded: a path longer than 64 levels is damage.
    fn btree_height(&mut self, root: BlockRef, kind: TreeKind) -> Result<u64> {
        let mut r = root;
        for h in 0..64 {
            let blk = self.read_node(r, kind)?;
            let n = Node(&blk);
            if n.is_leaf() || n.nr() == 0 {
                return Ok(h);
            }
            r = n.child(0);
        }
        Err(MetaError::corrupt(root.block, "tree deeper than 64 levels"))
    }

    /// Look up a `u64` value and whether any node on its path is shared with another tree.
    fn btree_lookup_shared(
        &mut self,
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
            if !shared && self.ref_count(r.block)? > 1 {
                shared = true;
            }
            let n = Node(node_ref(self, r, kind)?);
            if n.is_leaf() {
                return Ok(n.search(key).ok().map(|i| (get_u64(n.value(i), 0), shared)));
            }
            if n.nr() == 0 {
                return Ok(None);
            }
            r = n.child(n.child_index(key));
        }
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
        walk_rec(self, root, kind, lo, hi, 0, &mut None, f)
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
        dec_rec(self, root, kind, 0)
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
        debug_assert_eq!(value.len(), kind.value_size);
        let mut old = None;
        match insert_rec(self, *root, kind, key, value, 0, &mut old)? {
            Outcome::Done(r) => *root = r,
            Outcome::Split(l, k, r) => {
                let lkey = {
                    let blk = self.read_node(l, kind)?;
                    Node(&blk).key(0)
                };
                let (nr, mut buf) = new_node(self, kind, false)?;
                insert_entry(&mut buf, 0, lkey, &encode_ref(l));
                insert_entry(&mut buf, 1, k, &encode_ref(r));
                self.put_block(nr.block, buf)?;
                self.note_shadowed(nr.block);
                *root = nr;
            }
        }
        Ok(old)
    }

    /// Remove `key`; returns its value (whose references are the caller's to drop).
    /// Nothing is shadowed when the key is absent.
    fn btree_remove(
        &mut self,
        root: &mut BlockRef,
        kind: TreeKind,
        key: u64,
    ) -> Result<Option<Vec<u8>>> {
        if self.btree_lookup(*root, kind, key)?.is_none() {
            return Ok(None);
        }
        let mut old = None;
        let new_root = remove_rec(self, *root, kind, key, &mut old)?;
        *root = new_root;
        // Collapse internal roots with a single child (keeps every leaf at the same depth).
        loop {
            let blk = self.read_node(*root, kind)?;
            let n = Node(&blk);
            if n.is_leaf() || n.nr() != 1 {
                break;
            }
            let child = n.child(0);
            // `root` was shadowed by remove_rec: it has one reference, which moves to the child.
            self.ref_delta(root.block, -1);
            *root = child;
        }
        // An internal root that lost all children becomes an empty leaf.
        let empty_internal = {
            let blk = self.read_node(*root, kind)?;
            let n = Node(&blk);
            !n.is_leaf() && n.nr() == 0
        };
        if empty_internal {
            self.ref_delta(root.block, -1);
            *root = self.btree_empty(kind)?;
        }
        Ok(old)
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

pub(super) fn new_node<S: NodeStore + ?Sized>(
    s: &mut S,
    kind: TreeKind,
    leaf: bool,
) -> Result<(BlockRef, Vec<u8>)> {
    let b = s.alloc_block()?;
    let mut buf = vec![0u8; BLOCK_SIZE];
    block::init_header(&mut buf, BlockType::Node, b, s.generation(), &s.pool_uuid());
    init_node(&mut buf, kind, leaf);
    Ok((
        BlockRef {
            block: b,
            gen: s.generation(),
        },
        buf,
    ))
}

/// `read_node` borrowing the cached block (lookups visit nodes and keep none).
fn node_ref<S: NodeStore + ?Sized>(s: &mut S, r: BlockRef, kind: TreeKind) -> Result<&[u8]> {
    let blk = s.block_ref(r.block)?;
    check_node(blk, r, kind)?;
    Ok(blk)
}

#[allow(clippy::too_many_arguments)]
fn walk_rec<S: NodeStore + ?Sized>(
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

/// Shadow a node for writing (see the module docs).
fn shadow_node<S: NodeStore + ?Sized>(s: &mut S, r: BlockRef, kind: TreeKind) -> Result<BlockRef> {
    let count = s.ref_count(r.block)?;
    if count == 1 && s.was_shadowed(r.block) {
        return Ok(r);
    }
    let src = s.read_node(r, kind)?;
    let new = s.alloc_block()?;
    let mut buf = src.to_vec();
    block::set_block_number(&mut buf, new);
    block::set_generation(&mut buf, s.generation());
    s.put_block(new, buf)?;
    s.note_shadowed(new);
    if count > 1 {
        inc_children(s, &src, kind)?;
    }
    // The old block loses this reference; when it was the only one, the children moved
    // to the copy, so nothing below is released.
    s.ref_delta(r.block, -1);
    Ok(BlockRef {
        block: new,
        gen: s.generation(),
    })
}

fn inc_children<S: NodeStore + ?Sized>(s: &mut S, node: &[u8], kind: TreeKind) -> Result<()> {
    let n = Node(node);
    for i in 0..n.nr() {
        if !n.is_leaf() {
            s.ref_delta(n.child(i).block, 1);
            continue;
        }
        s.inc_value(kind, n.value(i))?;
    }
    Ok(())
}

fn dec_rec<S: NodeStore + ?Sized>(
    s: &mut S,
    root: BlockRef,
    kind: TreeKind,
    depth: usize,
) -> Result<()> {
    check_depth(depth, root.block)?;
    let count = s.ref_count(root.block)?;
    if count == 0 {
        return Err(MetaError::corrupt(
            root.block,
            "releasing a node that has no references",
        ));
    }
    if count == 1 {
        let blk = s.read_node(root, kind)?;
        let n = Node(&blk);
        for i in 0..n.nr() {
            if n.is_leaf() {
                s.dec_value(kind, n.value(i))?;
            } else {
                dec_rec(s, n.child(i), kind, depth + 1)?;
            }
        }
    }
    s.ref_delta(root.block, -1);
    Ok(())
}

fn insert_rec<S: NodeStore + ?Sized>(
    s: &mut S,
    r: BlockRef,
    kind: TreeKind,
    key: u64,
    value: &[u8],
    depth: usize,
    old: &mut Option<Vec<u8>>,
) -> Result<Outcome> {
    check_depth(depth, r.block)?;
    let me = shadow_node(s, r, kind)?;
    let buf = s.block_mut(me.block)?;
    let n = Node(buf);
    if n.is_leaf() {
        match n.search(key) {
            Ok(i) => {
                *old = Some(n.value(i).to_vec());
                set_value(buf, i, value);
                Ok(Outcome::Done(me))
            }
            Err(i) => insert_or_split(s, me, kind, i, key, value),
        }
    } else {
        let i = n.child_index(key);
        if n.nr() > 0 && key < n.key(0) {
            set_key(buf, 0, key);
        }
        let child = Node(buf).child(i);
        match insert_rec(s, child, kind, key, value, depth + 1, old)? {
            Outcome::Done(c) => {
                let buf = s.block_mut(me.block)?;
                set_value(buf, i, &encode_ref(c));
                Ok(Outcome::Done(me))
            }
            Outcome::Split(l, k, rr) => {
                let buf = s.block_mut(me.block)?;
                set_value(buf, i, &encode_ref(l));
                insert_or_split(s, me, kind, i + 1, k, &encode_ref(rr))
            }
        }
    }
}

/// Insert entry `(key, value)` at position `i` of the (shadowed) node `me`, splitting it
/// in two when it is full.
fn insert_or_split<S: NodeStore + ?Sized>(
    s: &mut S,
    me: BlockRef,
    kind: TreeKind,
    i: usize,
    key: u64,
    value: &[u8],
) -> Result<Outcome> {
    let (nr, max, leaf) = {
        let buf = s.block_mut(me.block)?;
        let n = Node(buf);
        (n.nr(), n.max(), n.is_leaf())
    };
    if nr < max {
        let buf = s.block_mut(me.block)?;
        insert_entry(buf, i, key, value);
        return Ok(Outcome::Done(me));
    }
    let (rref, mut rbuf) = new_node(s, kind, leaf)?;
    let half = nr / 2;
    let lbuf = s.block_mut(me.block)?;
    for j in half..nr {
        let (k, v) = {
            let n = Node(lbuf);
            (n.key(j), n.value(j).to_vec())
        };
        insert_entry(&mut rbuf, j - half, k, &v);
    }
    set_nr(lbuf, half);
    if i < half {
        insert_entry(lbuf, i, key, value);
    } else {
        insert_entry(&mut rbuf, i - half, key, value);
    }
    let rkey = Node(&rbuf).key(0);
    s.put_block(rref.block, rbuf)?;
    s.note_shadowed(rref.block);
    Ok(Outcome::Split(me, rkey, rref))
}

fn remove_rec<S: NodeStore + ?Sized>(
    s: &mut S,
    r: BlockRef,
    kind: TreeKind,
    key: u64,
    old: &mut Option<Vec<u8>>,
) -> Result<BlockRef> {
    let me = shadow_node(s, r, kind)?;
    let buf = s.block_mut(me.block)?;
    let n = Node(buf);
    if n.is_leaf() {
        if let Ok(i) = n.search(key) {
            *old = Some(n.value(i).to_vec());
            remove_entry(buf, i);
        }
        return Ok(me);
    }
    let i = n.child_index(key);
    let child = n.child(i);
    let c = remove_rec(s, child, kind, key, old)?;
    let child_empty = {
        let blk = s.read_node(c, kind)?;
        Node(&blk).nr() == 0
    };
    let buf = s.block_mut(me.block)?;
    if child_empty {
        remove_entry(buf, i);
        // The emptied child was shadowed: a single reference, no children left.
        s.ref_delta(c.block, -1);
    } else {
        set_value(buf, i, &encode_ref(c));
    }
    Ok(me)
}
