//! Unit tests of the B-tree operations on an in-memory [`NodeStore`] that applies reference
//! counts at once, frees a block when its count reaches zero (so a later read of it fails)
//! and refuses in-place edits of blocks not shadowed in the current transaction (so a
//! copy-on-write slip is an error, not silent sharing). A few tests at the end run on the
//! real transaction manager over a memory device, through a commit and a reopen.

use super::*;
use crate::meta::block::get_u64;
use crate::meta::journal::{encode_ref, BlockRef};
use crate::meta::test_util::{mem_tm, reopen, PLAIN};
use crate::meta::BLOCK_SIZE;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

mod build;
mod committed;
mod corrupt;
mod cow;
mod insert;
mod remove;

/// Values hold a reference to the data block they name (like the mapping tree).
const DATA: TreeKind = TreeKind {
    id: 91,
    name: "test data",
    value_size: 8,
    refs: ValueRefs::DataBlock(data_of),
};
/// Big values: three entries per leaf, so a few hundred keys make a deep tree.
const WIDE: TreeKind = TreeKind {
    id: 92,
    name: "test wide",
    value_size: 1024,
    refs: ValueRefs::None,
};
/// Values are roots of [`DATA`] trees.
const TOP: TreeKind = TreeKind {
    id: 93,
    name: "test top",
    value_size: 16,
    refs: ValueRefs::SubTree(&DATA),
};

fn data_of(v: &[u8]) -> DataBlock {
    DataBlock(get_u64(v, 0))
}

fn v8(x: u64) -> [u8; 8] {
    x.to_le_bytes()
}

fn wide(x: u64) -> Vec<u8> {
    let mut v = vec![0u8; WIDE.value_size];
    v[..8].copy_from_slice(&x.to_le_bytes());
    v[WIDE.value_size - 8..].copy_from_slice(&(!x).to_le_bytes());
    v
}

#[derive(Default)]
struct MemStore {
    gen: u64,
    next: u64,
    blocks: HashMap<u64, Block>,
    counts: HashMap<u64, u64>,
    shadowed: HashSet<u64>,
    data: BTreeMap<u64, u64>,
    /// Reference-count misuse seen by `ref_delta` (which cannot fail).
    errors: Vec<String>,
    /// Fail allocations once this many blocks are live.
    limit: Option<usize>,
    allocs: u64,
}

impl MemStore {
    fn new() -> MemStore {
        MemStore {
            gen: 1,
            next: 100,
            ..MemStore::default()
        }
    }
    /// End the transaction: nothing is edited in place any more.
    fn commit(&mut self) {
        self.gen += 1;
        self.shadowed.clear();
    }
    /// No block or data reference is left and nothing went wrong.
    fn assert_empty(&self) {
        assert!(self.errors.is_empty(), "{:?}", self.errors);
        assert!(self.counts.is_empty(), "leaked nodes: {:?}", self.counts);
        assert!(self.blocks.is_empty());
        let live: Vec<_> = self.data.iter().filter(|(_, c)| **c != 0).collect();
        assert!(live.is_empty(), "leaked data references: {live:?}");
    }
}

impl NodeStore for MemStore {
    fn generation(&self) -> u64 {
        self.gen
    }
    fn pool_uuid(&self) -> [u8; 16] {
        [5; 16]
    }
    fn alloc_block(&mut self) -> Result<MetaBlock> {
        if self.limit.is_some_and(|l| self.counts.len() >= l) {
            return Err(MetaError::NoMetadataSpace);
        }
        let b = self.next;
        self.next += 1;
        self.allocs += 1;
        self.counts.insert(b, 1);
        Ok(MetaBlock(b))
    }
    fn read_block(&mut self, b: MetaBlock) -> Result<Block> {
        self.blocks
            .get(&b.0)
            .cloned()
            .ok_or_else(|| MetaError::corrupt(b, "read of a free block"))
    }
    fn block_ref(&mut self, b: MetaBlock) -> Result<&[u8]> {
        self.blocks
            .get(&b.0)
            .map(|x| x.as_slice())
            .ok_or_else(|| MetaError::corrupt(b, "read of a free block"))
    }
    fn block_mut(&mut self, b: MetaBlock) -> Result<&mut [u8]> {
        if !self.shadowed.contains(&b.0) || self.counts.get(&b.0) != Some(&1) {
            return Err(MetaError::corrupt(
                b,
                "in-place edit of a block not owned by this transaction",
            ));
        }
        let blk = self
            .blocks
            .get_mut(&b.0)
            .ok_or_else(|| MetaError::corrupt(b, "edit of a free block"))?;
        Ok(Arc::make_mut(blk).as_mut_slice())
    }
    fn put_block(&mut self, b: MetaBlock, buf: Vec<u8>) -> Result<()> {
        assert_eq!(buf.len(), BLOCK_SIZE);
        if self.counts.get(&b.0) != Some(&1) {
            return Err(MetaError::corrupt(b, "put of an unallocated block"));
        }
        self.blocks.insert(b.0, Arc::new(buf));
        Ok(())
    }
    fn ref_count(&mut self, b: MetaBlock) -> Result<u64> {
        Ok(self.counts.get(&b.0).copied().unwrap_or(0))
    }
    fn ref_delta(&mut self, b: MetaBlock, d: i64) {
        let c = self.counts.get(&b.0).copied().unwrap_or(0) as i64 + d;
        if c < 0 {
            self.errors.push(format!("{b} count below zero"));
        } else if c == 0 {
            self.counts.remove(&b.0);
            self.blocks.remove(&b.0);
            self.shadowed.remove(&b.0);
        } else {
            self.counts.insert(b.0, c as u64);
        }
    }
    fn was_shadowed(&self, b: MetaBlock) -> bool {
        self.shadowed.contains(&b.0)
    }
    fn note_shadowed(&mut self, b: MetaBlock) {
        self.shadowed.insert(b.0);
    }
    fn data_delta(&mut self, b: DataBlock, d: i64) -> Result<()> {
        let c = self.data.entry(b.0).or_insert(0);
        let n = *c as i64 + d;
        if n < 0 {
            return Err(MetaError::corrupt(MetaBlock(0), format!("{b} below zero")));
        }
        *c = n as u64;
        Ok(())
    }
}

/// Walk the whole tree checking its shape: keys strictly ascending across leaves, each
/// internal key a lower bound of its child's keys and above the previous child's, every
/// leaf at the same depth, no empty node but a leaf root, no internal root with a single
/// child, generations as recorded. Returns (height, entries in key order).
fn check_tree<S: NodeStore>(
    s: &mut S,
    root: BlockRef,
    kind: TreeKind,
) -> (u64, Vec<(u64, Vec<u8>)>) {
    fn rec<S: NodeStore>(
        s: &mut S,
        r: BlockRef,
        kind: TreeKind,
        depth: u64,
        bounds: (u64, Option<u64>),
        leaf_depth: &mut Option<u64>,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) {
        let blk = s.read_node(r, kind).unwrap();
        let n = Node(&blk);
        assert!(n.nr() <= n.max());
        if depth > 0 {
            assert!(n.nr() > 0, "empty non-root node {}", r.block);
        }
        for i in 0..n.nr() {
            assert!(
                n.key(i) >= bounds.0,
                "key {} below bound {}",
                n.key(i),
                bounds.0
            );
            if let Some(hi) = bounds.1 {
                assert!(n.key(i) < hi, "key {} not below {hi}", n.key(i));
            }
            if i > 0 {
                assert!(n.key(i - 1) < n.key(i), "keys out of order in {}", r.block);
            }
        }
        if n.is_leaf() {
            assert_eq!(
                *leaf_depth.get_or_insert(depth),
                depth,
                "leaves at two depths"
            );
            for i in 0..n.nr() {
                out.push((n.key(i), n.value(i).to_vec()));
            }
            return;
        }
        if depth == 0 {
            assert!(n.nr() >= 2, "internal root with {} children", n.nr());
        }
        for i in 0..n.nr() {
            let hi = if i + 1 < n.nr() {
                Some(n.key(i + 1))
            } else {
                bounds.1
            };
            let before = out.len();
            rec(
                s,
                n.child(i),
                kind,
                depth + 1,
                (n.key(i), hi),
                leaf_depth,
                out,
            );
            assert!(out.len() > before);
        }
    }
    let mut leaf_depth = None;
    let mut out = Vec::new();
    rec(s, root, kind, 0, (0, None), &mut leaf_depth, &mut out);
    let h = leaf_depth.unwrap();
    assert_eq!(s.btree_height(root, kind).unwrap(), h);
    (h, out)
}

fn entries_u64(e: &[(u64, Vec<u8>)]) -> Vec<(u64, u64)> {
    e.iter().map(|(k, v)| (*k, get_u64(v, 0))).collect()
}

fn assert_matches(s: &mut MemStore, root: BlockRef, kind: TreeKind, model: &BTreeMap<u64, u64>) {
    let (_, e) = check_tree(s, root, kind);
    assert_eq!(
        entries_u64(&e),
        model.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>()
    );
    for (&k, &v) in model {
        assert_eq!(
            s.btree_lookup(root, kind, k).unwrap(),
            Some(v8(v).to_vec()),
            "key {k}"
        );
        if let Some(absent) = k.checked_add(1).filter(|a| !model.contains_key(a)) {
            assert_eq!(
                s.btree_lookup(root, kind, absent).unwrap(),
                None,
                "key {absent}"
            );
        }
    }
    assert_eq!(s.btree_count(root, kind).unwrap(), model.len() as u64);
}

/// Blocks reachable from `root` and their bytes.
fn reachable(s: &mut MemStore, root: BlockRef, kind: TreeKind) -> BTreeMap<u64, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root];
    while let Some(r) = todo.pop() {
        let blk = s.read_node(r, kind).unwrap();
        let n = Node(&blk);
        if !n.is_leaf() {
            todo.extend((0..n.nr()).map(|i| n.child(i)));
        }
        out.insert(r.block.0, blk.to_vec());
    }
    out
}
