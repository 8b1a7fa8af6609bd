//! The reference-counted copy-on-write B-tree (dm-thin's `persistent-data` btree).
//!
//! Keys are `u64`; values have a fixed size per tree kind. Nodes are shared between trees:
//! a snapshot takes one more reference on a root. Writing through a node first *shadows* it:
//! a node allocated in this transaction with a single reference is changed in place; any
//! other node is copied to a fresh block (and, when it was shared, its children gain a
//! reference each, since two nodes now point at them).
//!
//! Node layout after the common header: `40..44` flags (bit 0: leaf); `44..48` number of
//! entries; `48..52` capacity; `52..56` value size; `56..60` tree kind; `64..` keys (`u64`),
//! then values. Internal-node values are child pointers (`block u64`, `generation u64`), and a
//! child's generation must equal what its parent recorded. An internal node's key `i` is a
//! lower bound of every key below child `i`.

use super::block::{self, get_u32, get_u64, put_u32, put_u64, BlockType, HEADER_SIZE};
use super::cache::Block;
use super::journal::BlockRef;
use super::txn::Tm;
use super::{DataBlock, MetaBlock, MetaError, Result, BLOCK_SIZE};

/// How the values of a tree hold references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueRefs {
    /// Plain data.
    None,
    /// A data mapping: `data block << 24 | time` (one data-block reference).
    DataBlock,
    /// A pointer to the root of a tree of kind [`MAPPING`] (one metadata-block reference).
    MappingTree,
}

/// What a tree stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeKind {
    pub id: u32,
    pub value_size: usize,
    pub refs: ValueRefs,
}

pub const SM_INDEX: TreeKind = TreeKind {
    id: 1,
    value_size: 16,
    refs: ValueRefs::None,
};
pub const SM_OVERFLOW: TreeKind = TreeKind {
    id: 2,
    value_size: 8,
    refs: ValueRefs::None,
};
/// A volume's mapping tree: virtual block -> (data block, time).
pub const MAPPING: TreeKind = TreeKind {
    id: 3,
    value_size: 8,
    refs: ValueRefs::DataBlock,
};
/// The top-level tree: volume id -> mapping tree root.
pub const DEV_ROOTS: TreeKind = TreeKind {
    id: 4,
    value_size: 16,
    refs: ValueRefs::MappingTree,
};

/// Tree kinds the checker can recognise from a node's header.
pub fn kind_by_id(id: u32, details_value_size: usize) -> Option<TreeKind> {
    match id {
        1 => Some(SM_INDEX),
        2 => Some(SM_OVERFLOW),
        3 => Some(MAPPING),
        4 => Some(DEV_ROOTS),
        DETAILS_KIND_ID => Some(TreeKind {
            id,
            value_size: details_value_size,
            refs: ValueRefs::None,
        }),
        _ => None,
    }
}
/// Tree-kind id reserved for the pool's device details tree.
pub const DETAILS_KIND_ID: u32 = 5;

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
const FLAG_LEAF: u32 = 1;

/// Encode a data mapping value.
pub fn pack_mapping(b: DataBlock, time: u32) -> u64 {
    (b.0 << 24) | (time as u64 & 0xff_ffff)
}
/// Decode a data mapping value.
pub fn unpack_mapping(v: u64) -> (DataBlock, u32) {
    (DataBlock(v >> 24), (v & 0xff_ffff) as u32)
}

pub fn encode_ref(r: BlockRef) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&r.block.0.to_le_bytes());
    b[8..].copy_from_slice(&r.gen.to_le_bytes());
    b
}
pub fn decode_ref(v: &[u8]) -> BlockRef {
    BlockRef {
        block: MetaBlock(get_u64(v, 0)),
        gen: get_u64(v, 8),
    }
}

/// Read-only view of a node's bytes.
pub struct Node<'a>(pub &'a [u8]);

impl<'a> Node<'a> {
    pub fn is_leaf(&self) -> bool {
        get_u32(self.0, 40) & FLAG_LEAF != 0
    }
    pub fn nr(&self) -> usize {
        get_u32(self.0, 44) as usize
    }
    pub fn max(&self) -> usize {
        get_u32(self.0, 48) as usize
    }
    pub fn value_size(&self) -> usize {
        get_u32(self.0, 52) as usize
    }
    pub fn kind_id(&self) -> u32 {
        get_u32(self.0, 56)
    }
    pub fn key(&self, i: usize) -> u64 {
        get_u64(self.0, HEADER_SIZE + i * 8)
    }
    pub fn value(&self, i: usize) -> &'a [u8] {
        let vs = self.value_size();
        let o = HEADER_SIZE + self.max() * 8 + i * vs;
        &self.0[o..o + vs]
    }
    pub fn child(&self, i: usize) -> BlockRef {
        decode_ref(self.value(i))
    }
    /// Index of the entry with `key`, or where it would be inserted.
    ///
    /// Keys are distinct and ascending, so key `i` lies between `first + i` and
    /// `last - (nr - 1 - i)`: those bounds narrow the search before it starts, to a single
    /// probe in a dense leaf (a run of consecutive blocks), and one interpolated probe
    /// narrows it again. A 4 KiB node holds ~250 keys over 32 cache lines; plain bisection
    /// touched six or seven of them per node, and on the data path that was the largest
    /// cost of a lookup (issue 9). The answer is bisection's for any sorted node; for a
    /// damaged (unsorted) one it is some index in range, as bisection's was.
    pub fn search(&self, key: u64) -> std::result::Result<usize, usize> {
        let n = self.nr();
        if n == 0 {
            return Err(0);
        }
        let (first, last) = (self.key(0), self.key(n - 1));
        if key <= first {
            return if key == first { Ok(0) } else { Err(0) };
        }
        if key >= last {
            return if key == last { Ok(n - 1) } else { Err(n) };
        }
        // first < key < last: the answer p (keys before it are < key) is in [lo, hi].
        let below = (last - key).min(n as u64) as usize;
        let mut lo = (n - 1).saturating_sub(below).max(1);
        let mut hi = ((key - first).min(n as u64) as usize).min(n - 1);
        if hi.saturating_sub(lo) > 4 && last - first > 0 {
            let span = (last - first) as u128;
            let g = ((key - first) as u128 * (n - 1) as u128 / span) as usize;
            let g = g.clamp(lo, hi);
            let k = self.key(g);
            if k == key {
                return Ok(g);
            } else if k < key {
                lo = g + 1;
            } else {
                hi = g;
            }
        }
        // Lower bound in [lo, hi]: the first index whose key is >= `key`.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.key(mid) < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo < n && self.key(lo) == key {
            Ok(lo)
        } else {
            Err(lo)
        }
    }
    /// For an internal node: the child that covers `key`.
    pub fn child_index(&self, key: u64) -> usize {
        match self.search(key) {
            Ok(i) => i,
            Err(0) => 0,
            Err(i) => i - 1,
        }
    }
    /// Structural sanity of a node read from disk (the checker reports more).
    pub fn validate_shape(&self) -> std::result::Result<(), String> {
        let vs = self.value_size();
        if vs == 0 || vs > 1024 {
            return Err(format!("value size {vs} is invalid"));
        }
        let cap = (BLOCK_SIZE - HEADER_SIZE) / (8 + vs);
        if self.max() != cap {
            return Err(format!("capacity {} should be {cap}", self.max()));
        }
        if self.nr() > cap {
            return Err(format!("{} entries exceed capacity {cap}", self.nr()));
        }
        Ok(())
    }
}

fn capacity(value_size: usize) -> usize {
    (BLOCK_SIZE - HEADER_SIZE) / (8 + value_size)
}

fn set_nr(buf: &mut [u8], n: usize) {
    put_u32(buf, 44, n as u32)
}

fn insert_entry(buf: &mut [u8], i: usize, key: u64, value: &[u8]) {
    let n = Node(buf).nr();
    let max = Node(buf).max();
    let vs = Node(buf).value_size();
    debug_assert!(n < max);
    let ko = HEADER_SIZE;
    buf.copy_within(ko + i * 8..ko + n * 8, ko + (i + 1) * 8);
    put_u64(buf, ko + i * 8, key);
    let vo = HEADER_SIZE + max * 8;
    buf.copy_within(vo + i * vs..vo + n * vs, vo + (i + 1) * vs);
    buf[vo + i * vs..vo + (i + 1) * vs].copy_from_slice(value);
    set_nr(buf, n + 1);
}

fn remove_entry(buf: &mut [u8], i: usize) {
    let n = Node(buf).nr();
    let max = Node(buf).max();
    let vs = Node(buf).value_size();
    let ko = HEADER_SIZE;
    buf.copy_within(ko + (i + 1) * 8..ko + n * 8, ko + i * 8);
    let vo = HEADER_SIZE + max * 8;
    buf.copy_within(vo + (i + 1) * vs..vo + n * vs, vo + i * vs);
    set_nr(buf, n - 1);
}

fn set_value(buf: &mut [u8], i: usize, value: &[u8]) {
    let max = Node(buf).max();
    let vs = Node(buf).value_size();
    let vo = HEADER_SIZE + max * 8 + i * vs;
    buf[vo..vo + vs].copy_from_slice(value);
}

fn set_key(buf: &mut [u8], i: usize, key: u64) {
    put_u64(buf, HEADER_SIZE + i * 8, key)
}

enum Outcome {
    Done(BlockRef),
    Split(BlockRef, u64, BlockRef),
}

impl Tm {
    fn new_node(&mut self, kind: TreeKind, leaf: bool) -> Result<(BlockRef, Vec<u8>)> {
        let b = self.alloc_meta()?;
        let mut buf = vec![0u8; BLOCK_SIZE];
        block::init_header(&mut buf, BlockType::Node, b, self.gen, self.bm.uuid());
        let vs = if leaf {
            kind.value_size
        } else {
            INTERNAL_VALUE
        };
        put_u32(&mut buf, 40, if leaf { FLAG_LEAF } else { 0 });
        put_u32(&mut buf, 48, capacity(vs) as u32);
        put_u32(&mut buf, 52, vs as u32);
        put_u32(&mut buf, 56, kind.id);
        Ok((
            BlockRef {
                block: b,
                gen: self.gen,
            },
            buf,
        ))
    }

    /// A new, empty tree.
    pub fn btree_empty(&mut self, kind: TreeKind) -> Result<BlockRef> {
        let (r, buf) = self.new_node(kind, true)?;
        self.bm.put_new(r.block, buf)?;
        self.mark_shadowed(r.block);
        Ok(r)
    }

    /// Read a node through a parent pointer, verifying generation, kind and shape.
    pub fn read_node(&mut self, r: BlockRef, kind: TreeKind) -> Result<Block> {
        let blk = self.bm.read(r.block, BlockType::Node)?;
        check_node(&blk, r, kind)?;
        Ok(blk)
    }

    /// `read_node` borrowing the cached block (lookups visit nodes and keep none).
    fn node_ref(&mut self, r: BlockRef, kind: TreeKind) -> Result<&[u8]> {
        let blk = self.bm.read_ref(r.block, BlockType::Node)?;
        check_node(blk, r, kind)?;
        Ok(blk)
    }

    /// Look up `key`; returns a copy of its value.
    pub fn btree_lookup(
        &mut self,
        root: BlockRef,
        kind: TreeKind,
        key: u64,
    ) -> Result<Option<Vec<u8>>> {
        self.btree_lookup_with(root, kind, key, <[u8]>::to_vec)
    }

    /// Look up `key` and hand its value, in place, to `f` (the data path decodes what it
    /// needs without copying the value out).
    pub fn btree_lookup_with<T>(
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
            let n = Node(self.node_ref(r, kind)?);
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
    pub fn btree_height(&mut self, root: BlockRef, kind: TreeKind) -> Result<u64> {
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
    pub fn btree_lookup_shared(
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
            if !shared && self.meta_count(r.block)? > 1 {
                shared = true;
            }
            let n = Node(self.node_ref(r, kind)?);
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
    pub fn btree_walk(
        &mut self,
        root: BlockRef,
        kind: TreeKind,
        lo: u64,
        hi: u64,
        f: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<bool> {
        self.walk_rec(root, kind, lo, hi, 0, &mut None, f)
    }

    #[allow(clippy::too_many_arguments)]
    fn walk_rec(
        &mut self,
        root: BlockRef,
        kind: TreeKind,
        lo: u64,
        hi: u64,
        depth: usize,
        last: &mut Option<u64>,
        f: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<bool> {
        check_depth(depth, root.block)?;
        let blk = self.read_node(root, kind)?;
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
            if !self.walk_rec(n.child(i), kind, lo, hi, depth + 1, last, f)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Shadow a node for writing (see the module docs).
    fn shadow_node(&mut self, r: BlockRef, kind: TreeKind) -> Result<BlockRef> {
        let count = self.meta_count(r.block)?;
        if count == 1 && self.is_shadowed(r.block) {
            return Ok(r);
        }
        let src = self.read_node(r, kind)?;
        let new = self.alloc_meta()?;
        let mut buf = src.to_vec();
        block::set_block_number(&mut buf, new);
        block::set_generation(&mut buf, self.gen);
        self.bm.put_new(new, buf)?;
        self.mark_shadowed(new);
        if count > 1 {
            self.inc_children(&src, kind)?;
        }
        // The old block loses this reference; when it was the only one, the children moved
        // to the copy, so nothing below is released.
        self.meta_delta(r.block, -1);
        Ok(BlockRef {
            block: new,
            gen: self.gen,
        })
    }

    fn inc_children(&mut self, node: &[u8], kind: TreeKind) -> Result<()> {
        let n = Node(node);
        for i in 0..n.nr() {
            if !n.is_leaf() {
                self.meta_delta(n.child(i).block, 1);
                continue;
            }
            self.inc_value(kind, n.value(i))?;
        }
        Ok(())
    }

    /// Take one more reference on whatever a value points at.
    pub fn inc_value(&mut self, kind: TreeKind, v: &[u8]) -> Result<()> {
        match kind.refs {
            ValueRefs::None => Ok(()),
            ValueRefs::DataBlock => {
                let (b, _) = unpack_mapping(get_u64(v, 0));
                self.data_inc(b)
            }
            ValueRefs::MappingTree => {
                self.meta_delta(decode_ref(v).block, 1);
                Ok(())
            }
        }
    }

    /// Drop one reference held by a value (recursively freeing what reaches zero).
    pub fn dec_value(&mut self, kind: TreeKind, v: &[u8]) -> Result<()> {
        match kind.refs {
            ValueRefs::None => Ok(()),
            ValueRefs::DataBlock => {
                let (b, _) = unpack_mapping(get_u64(v, 0));
                self.data_dec(b)
            }
            ValueRefs::MappingTree => self.btree_dec(decode_ref(v), MAPPING),
        }
    }

    /// Take a reference on a whole tree (snapshot): O(1).
    pub fn btree_inc(&mut self, root: BlockRef) {
        self.meta_delta(root.block, 1);
    }

    /// Drop a reference on a tree; nodes (and values) that reach zero are released.
    pub fn btree_dec(&mut self, root: BlockRef, kind: TreeKind) -> Result<()> {
        self.dec_rec(root, kind, 0)
    }

    fn dec_rec(&mut self, root: BlockRef, kind: TreeKind, depth: usize) -> Result<()> {
        check_depth(depth, root.block)?;
        let count = self.meta_count(root.block)?;
        if count == 0 {
            return Err(MetaError::corrupt(
                root.block,
                "releasing a node that has no references",
            ));
        }
        if count == 1 {
            let blk = self.read_node(root, kind)?;
            let n = Node(&blk);
            for i in 0..n.nr() {
                if n.is_leaf() {
                    self.dec_value(kind, n.value(i))?;
                } else {
                    self.dec_rec(n.child(i), kind, depth + 1)?;
                }
            }
        }
        self.meta_delta(root.block, -1);
        Ok(())
    }

    /// Insert or replace; returns the value that was replaced (its references are the
    /// caller's to drop).
    pub fn btree_insert(
        &mut self,
        root: &mut BlockRef,
        kind: TreeKind,
        key: u64,
        value: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        debug_assert_eq!(value.len(), kind.value_size);
        let mut old = None;
        match self.insert_rec(*root, kind, key, value, 0, &mut old)? {
            Outcome::Done(r) => *root = r,
            Outcome::Split(l, k, r) => {
                let lkey = {
                    let blk = self.read_node(l, kind)?;
                    Node(&blk).key(0)
                };
                let (nr, mut buf) = self.new_node(kind, false)?;
                insert_entry(&mut buf, 0, lkey, &encode_ref(l));
                insert_entry(&mut buf, 1, k, &encode_ref(r));
                self.bm.put_new(nr.block, buf)?;
                self.mark_shadowed(nr.block);
                *root = nr;
            }
        }
        Ok(old)
    }

    fn insert_rec(
        &mut self,
        r: BlockRef,
        kind: TreeKind,
        key: u64,
        value: &[u8],
        depth: usize,
        old: &mut Option<Vec<u8>>,
    ) -> Result<Outcome> {
        check_depth(depth, r.block)?;
        let me = self.shadow_node(r, kind)?;
        let buf = self.bm.get_mut(me.block, BlockType::Node)?;
        let n = Node(buf);
        if n.is_leaf() {
            match n.search(key) {
                Ok(i) => {
                    *old = Some(n.value(i).to_vec());
                    set_value(buf, i, value);
                    Ok(Outcome::Done(me))
                }
                Err(i) => self.insert_or_split(me, kind, i, key, value),
            }
        } else {
            let i = n.child_index(key);
            if n.nr() > 0 && key < n.key(0) {
                set_key(buf, 0, key);
            }
            let child = Node(buf).child(i);
            match self.insert_rec(child, kind, key, value, depth + 1, old)? {
                Outcome::Done(c) => {
                    let buf = self.bm.get_mut(me.block, BlockType::Node)?;
                    set_value(buf, i, &encode_ref(c));
                    Ok(Outcome::Done(me))
                }
                Outcome::Split(l, k, rr) => {
                    let buf = self.bm.get_mut(me.block, BlockType::Node)?;
                    set_value(buf, i, &encode_ref(l));
                    self.insert_or_split(me, kind, i + 1, k, &encode_ref(rr))
                }
            }
        }
    }

    /// Insert entry `(key, value)` at position `i` of the (shadowed) node `me`, splitting it
    /// in two when it is full.
    fn insert_or_split(
        &mut self,
        me: BlockRef,
        kind: TreeKind,
        i: usize,
        key: u64,
        value: &[u8],
    ) -> Result<Outcome> {
        let (nr, max, leaf) = {
            let buf = self.bm.get_mut(me.block, BlockType::Node)?;
            let n = Node(buf);
            (n.nr(), n.max(), n.is_leaf())
        };
        if nr < max {
            let buf = self.bm.get_mut(me.block, BlockType::Node)?;
            insert_entry(buf, i, key, value);
            return Ok(Outcome::Done(me));
        }
        let (rref, mut rbuf) = self.new_node(kind, leaf)?;
        let half = nr / 2;
        let lbuf = self.bm.get_mut(me.block, BlockType::Node)?;
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
        self.bm.put_new(rref.block, rbuf)?;
        self.mark_shadowed(rref.block);
        Ok(Outcome::Split(me, rkey, rref))
    }

    /// Remove `key`; returns its value (whose references are the caller's to drop).
    /// Nothing is shadowed when the key is absent.
    pub fn btree_remove(
        &mut self,
        root: &mut BlockRef,
        kind: TreeKind,
        key: u64,
    ) -> Result<Option<Vec<u8>>> {
        if self.btree_lookup(*root, kind, key)?.is_none() {
            return Ok(None);
        }
        let mut old = None;
        let new_root = self.remove_rec(*root, kind, key, &mut old)?;
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
            self.meta_delta(root.block, -1);
            *root = child;
        }
        // An internal root that lost all children becomes an empty leaf.
        let empty_internal = {
            let blk = self.read_node(*root, kind)?;
            let n = Node(&blk);
            !n.is_leaf() && n.nr() == 0
        };
        if empty_internal {
            self.meta_delta(root.block, -1);
            *root = self.btree_empty(kind)?;
        }
        Ok(old)
    }

    fn remove_rec(
        &mut self,
        r: BlockRef,
        kind: TreeKind,
        key: u64,
        old: &mut Option<Vec<u8>>,
    ) -> Result<BlockRef> {
        let me = self.shadow_node(r, kind)?;
        let buf = self.bm.get_mut(me.block, BlockType::Node)?;
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
        let c = self.remove_rec(child, kind, key, old)?;
        let child_empty = {
            let blk = self.read_node(c, kind)?;
            Node(&blk).nr() == 0
        };
        let buf = self.bm.get_mut(me.block, BlockType::Node)?;
        if child_empty {
            remove_entry(buf, i);
            // The emptied child was shadowed: a single reference, no children left.
            self.meta_delta(c.block, -1);
        } else {
            set_value(buf, i, &encode_ref(c));
        }
        Ok(me)
    }

    /// Count entries (and nodes) of a tree; used by tests and the checker.
    pub fn btree_count(&mut self, root: BlockRef, kind: TreeKind) -> Result<u64> {
        let mut n = 0u64;
        self.btree_walk(root, kind, 0, u64::MAX, &mut |_, _| {
            n += 1;
            true
        })?;
        Ok(n)
    }
}

/// What `read_node` verifies of a node reached through `r`: generation, kind and shape.
fn check_node(blk: &[u8], r: BlockRef, kind: TreeKind) -> Result<()> {
    let n = Node(blk);
    if block::generation(blk) != r.gen {
        return Err(MetaError::corrupt(
            r.block,
            format!(
                "generation {} differs from the {} its parent recorded (stale or lost write)",
                block::generation(blk),
                r.gen
            ),
        ));
    }
    if n.kind_id() != kind.id {
        return Err(MetaError::corrupt(
            r.block,
            format!(
                "node of tree kind {} found where kind {} was expected",
                n.kind_id(),
                kind.id
            ),
        ));
    }
    let want_vs = if n.is_leaf() {
        kind.value_size
    } else {
        INTERNAL_VALUE
    };
    if n.value_size() != want_vs {
        return Err(MetaError::corrupt(
            r.block,
            "node value size does not match its tree",
        ));
    }
    n.validate_shape()
        .map_err(|e| MetaError::corrupt(r.block, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node_with(keys: &[u64]) -> Vec<u8> {
        let mut buf = vec![0u8; BLOCK_SIZE];
        buf[44..48].copy_from_slice(&(keys.len() as u32).to_le_bytes());
        for (i, k) in keys.iter().enumerate() {
            let o = HEADER_SIZE + i * 8;
            buf[o..o + 8].copy_from_slice(&k.to_le_bytes());
        }
        buf
    }

    #[test]
    fn search_finds_keys_around_a_gap() {
        // Shrunk from a proptest failure of an earlier draft of `search`.
        let keys = [0u64, 1, 6, 7, 8, 9, 13];
        let buf = node_with(&keys);
        for p in 0..16 {
            assert_eq!(Node(&buf).search(p), keys.binary_search(&p), "key {p}");
        }
    }

    proptest! {
        // Cases are generated afresh each run; no regressions file is written
        // (the repository's top level is fixed).
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn search_agrees_with_bisection(
            mut keys in proptest::collection::btree_set(0u64..5000, 0..250)
                .prop_map(|s| s.into_iter().collect::<Vec<_>>()),
            probe in 0u64..5100,
            dense_from in proptest::option::of(0u64..u64::MAX / 2),
        ) {
            if let Some(start) = dense_from {
                // A run of consecutive blocks, as a sequentially written leaf holds.
                let n = keys.len() as u64;
                keys = (start..start + n).collect();
            }
            let buf = node_with(&keys);
            let n = Node(&buf);
            let probes = [probe, keys.first().copied().unwrap_or(0) + probe % 300, 0, u64::MAX];
            for p in probes {
                prop_assert_eq!(n.search(p), keys.binary_search(&p), "key {}", p);
            }
            for &k in &keys {
                prop_assert_eq!(n.search(k), keys.binary_search(&k));
            }
        }

        #[test]
        fn search_of_an_unsorted_node_stays_in_range(
            keys in proptest::collection::vec(any::<u64>(), 1..250),
            probe in any::<u64>(),
        ) {
            let buf = node_with(&keys);
            match Node(&buf).search(probe) {
                Ok(i) => prop_assert!(i < keys.len()),
                Err(i) => prop_assert!(i <= keys.len()),
            }
        }
    }
}
