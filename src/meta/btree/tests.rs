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

#[test]
fn empty_tree_finds_nothing() {
    let mut s = MemStore::new();
    let mut root = s.btree_empty(PLAIN).unwrap();
    assert_eq!(s.btree_lookup(root, PLAIN, 0).unwrap(), None);
    assert_eq!(s.btree_lookup(root, PLAIN, u64::MAX).unwrap(), None);
    assert_eq!(s.btree_count(root, PLAIN).unwrap(), 0);
    assert_eq!(s.btree_height(root, PLAIN).unwrap(), 0);
    let before = root;
    assert_eq!(s.btree_remove(&mut root, PLAIN, 7).unwrap(), None);
    assert_eq!(root, before);
    s.btree_dec(root, PLAIN).unwrap();
    s.assert_empty();
}

#[test]
fn leaf_splits_grow_the_root_and_every_key_is_found() {
    let mut s = MemStore::new();
    let mut root = s.btree_empty(PLAIN).unwrap();
    let cap = node::capacity(PLAIN.value_size) as u64;
    // One full leaf: still a leaf.
    for k in 0..cap {
        assert_eq!(
            s.btree_insert(&mut root, PLAIN, k * 2, &v8(k)).unwrap(),
            None
        );
    }
    assert_eq!(check_tree(&mut s, root, PLAIN).0, 0);
    // One more splits it: the root becomes internal over two leaves.
    s.btree_insert(&mut root, PLAIN, 1, &v8(1000)).unwrap();
    let (h, e) = check_tree(&mut s, root, PLAIN);
    assert_eq!(h, 1);
    assert_eq!(e.len() as u64, cap + 1);
    assert_eq!(Node(&s.read_node(root, PLAIN).unwrap()).nr(), 2);
    for k in 0..cap {
        assert_eq!(
            s.btree_lookup(root, PLAIN, k * 2).unwrap(),
            Some(v8(k).to_vec())
        );
        if k > 0 {
            assert_eq!(s.btree_lookup(root, PLAIN, k * 2 + 1).unwrap(), None);
        }
    }
    assert_eq!(
        s.btree_lookup(root, PLAIN, 1).unwrap(),
        Some(v8(1000).to_vec())
    );
    s.btree_dec(root, PLAIN).unwrap();
    s.assert_empty();
}

#[test]
fn internal_splits_make_a_three_level_tree() {
    // Three entries per leaf and 168 per internal node: 600 keys need an internal split.
    assert_eq!(node::capacity(WIDE.value_size), 3);
    let mut s = MemStore::new();
    let mut root = s.btree_empty(WIDE).unwrap();
    let mut heights = Vec::new();
    // Descending inserts also move the lower bound (key 0) of every internal node.
    for k in (0..600u64).rev() {
        s.btree_insert(&mut root, WIDE, k * 3, &wide(k)).unwrap();
        let h = s.btree_height(root, WIDE).unwrap();
        if heights.last() != Some(&h) {
            heights.push(h);
        }
    }
    assert_eq!(heights, [0, 1, 2], "the root grew one level at a time");
    let (h, e) = check_tree(&mut s, root, WIDE);
    assert_eq!(h, 2);
    assert_eq!(e.len(), 600);
    for (i, (k, v)) in e.iter().enumerate() {
        assert_eq!(*k, i as u64 * 3);
        assert_eq!(v, &wide(i as u64));
    }
    for k in 0..1800u64 {
        let want = (k % 3 == 0).then(|| wide(k / 3));
        assert_eq!(s.btree_lookup(root, WIDE, k).unwrap(), want, "key {k}");
    }
    s.btree_dec(root, WIDE).unwrap();
    s.assert_empty();
}

#[test]
fn many_sequential_keys_of_small_values_stay_balanced() {
    let mut s = MemStore::new();
    let mut root = s.btree_empty(PLAIN).unwrap();
    // 252 entries per leaf, 168 per internal node: 30000 keys need three levels.
    let n = 30_000u64;
    for k in 0..n {
        s.btree_insert(&mut root, PLAIN, k, &v8(k ^ 0xabcd))
            .unwrap();
    }
    let (h, e) = check_tree(&mut s, root, PLAIN);
    assert_eq!(h, 2);
    assert_eq!(e.len() as u64, n);
    for k in (0..n).step_by(7) {
        assert_eq!(
            s.btree_lookup(root, PLAIN, k).unwrap(),
            Some(v8(k ^ 0xabcd).to_vec())
        );
    }
    assert_eq!(s.btree_lookup(root, PLAIN, n).unwrap(), None);
    s.btree_dec(root, PLAIN).unwrap();
    s.assert_empty();
}

#[test]
fn insert_of_an_existing_key_replaces_and_returns_the_old_value() {
    let mut s = MemStore::new();
    let mut root = s.btree_empty(PLAIN).unwrap();
    for k in 0..1000u64 {
        s.btree_insert(&mut root, PLAIN, k, &v8(k)).unwrap();
    }
    let allocs = s.allocs;
    for k in (0..1000u64).step_by(3) {
        let old = s.btree_insert(&mut root, PLAIN, k, &v8(k + 5000)).unwrap();
        assert_eq!(old, Some(v8(k).to_vec()));
    }
    // Replacing in a transaction's own nodes allocates nothing.
    assert_eq!(s.allocs, allocs);
    let (_, e) = check_tree(&mut s, root, PLAIN);
    assert_eq!(e.len(), 1000);
    for (k, v) in entries_u64(&e) {
        assert_eq!(v, if k % 3 == 0 { k + 5000 } else { k });
    }
    s.btree_dec(root, PLAIN).unwrap();
    s.assert_empty();
}

#[test]
fn removal_empties_leaves_and_collapses_the_root_back_to_a_leaf() {
    let mut s = MemStore::new();
    let mut root = s.btree_empty(WIDE).unwrap();
    for k in 0..600u64 {
        s.btree_insert(&mut root, WIDE, k, &wide(k)).unwrap();
    }
    assert_eq!(check_tree(&mut s, root, WIDE).0, 2);
    // Remove from both ends towards the middle, checking the shape as it shrinks.
    let mut left: BTreeMap<u64, ()> = (0..600).map(|k| (k, ())).collect();
    let mut heights = vec![2];
    let order: Vec<u64> = (0..300).flat_map(|i| [i, 599 - i]).collect();
    for (n, &k) in order.iter().take(599).enumerate() {
        assert_eq!(
            s.btree_remove(&mut root, WIDE, k).unwrap(),
            Some(wide(k)),
            "key {k}"
        );
        assert_eq!(s.btree_remove(&mut root, WIDE, k).unwrap(), None);
        left.remove(&k);
        if n % 37 == 0 || left.len() < 4 {
            let (_, e) = check_tree(&mut s, root, WIDE);
            let keys: Vec<u64> = e.iter().map(|x| x.0).collect();
            assert_eq!(keys, left.keys().copied().collect::<Vec<_>>());
        }
        let h = s.btree_height(root, WIDE).unwrap();
        if heights.last() != Some(&h) {
            heights.push(h);
        }
    }
    // One key left: the root collapsed level by level back to a leaf.
    assert_eq!(heights, [2, 1, 0]);
    let (h, e) = check_tree(&mut s, root, WIDE);
    assert_eq!((h, e.len()), (0, 1));
    assert_eq!(e[0].0, 300);
    assert_eq!(s.counts.len(), 1, "one leaf is all that is left");
    // The last key: an empty leaf root, and one live node.
    assert_eq!(
        s.btree_remove(&mut root, WIDE, 300).unwrap(),
        Some(wide(300))
    );
    let (h, e) = check_tree(&mut s, root, WIDE);
    assert_eq!((h, e.len()), (0, 0));
    assert_eq!(s.counts.len(), 1, "every emptied node was released");
    // The tree is usable again.
    s.btree_insert(&mut root, WIDE, 42, &wide(42)).unwrap();
    assert_eq!(s.btree_lookup(root, WIDE, 42).unwrap(), Some(wide(42)));
    s.btree_dec(root, WIDE).unwrap();
    s.assert_empty();
}

#[test]
fn removing_every_key_in_random_order_releases_every_node() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut s = MemStore::new();
    let mut root = s.btree_empty(WIDE).unwrap();
    let mut keys: Vec<u64> = (0..700).map(|_| rng.gen_range(0..100_000)).collect();
    keys.sort();
    keys.dedup();
    for &k in &keys {
        s.btree_insert(&mut root, WIDE, k, &wide(k)).unwrap();
    }
    assert_eq!(check_tree(&mut s, root, WIDE).0, 2);
    for i in (1..keys.len()).rev() {
        keys.swap(i, rng.gen_range(0..=i));
    }
    for (n, &k) in keys.iter().enumerate() {
        assert_eq!(s.btree_remove(&mut root, WIDE, k).unwrap(), Some(wide(k)));
        if n % 50 == 0 {
            check_tree(&mut s, root, WIDE);
        }
    }
    let (h, e) = check_tree(&mut s, root, WIDE);
    assert_eq!((h, e.len()), (0, 0));
    assert_eq!(s.counts.len(), 1);
    s.btree_dec(root, WIDE).unwrap();
    s.assert_empty();
}

#[test]
fn remove_of_an_absent_key_changes_nothing() {
    let mut s = MemStore::new();
    let mut root = s.btree_empty(PLAIN).unwrap();
    for k in (0..2000u64).map(|k| k * 10) {
        s.btree_insert(&mut root, PLAIN, k, &v8(k)).unwrap();
    }
    s.commit();
    let before_root = root;
    let before = reachable(&mut s, root, PLAIN);
    let allocs = s.allocs;
    for k in [1, 5, 19_991, 20_000, u64::MAX] {
        assert_eq!(
            s.btree_remove(&mut root, PLAIN, k).unwrap(),
            None,
            "key {k}"
        );
    }
    assert_eq!(root, before_root, "the root was not shadowed");
    assert_eq!(s.allocs, allocs, "nothing was shadowed");
    assert_eq!(reachable(&mut s, root, PLAIN), before);
    s.btree_dec(root, PLAIN).unwrap();
    s.assert_empty();
}

#[test]
fn walk_visits_a_range_in_key_order_and_stops_when_told() {
    let mut s = MemStore::new();
    let mut root = s.btree_empty(WIDE).unwrap();
    // Insert out of order; keys are the multiples of 5 below 2500.
    for i in 0..500u64 {
        let k = (i * 263) % 500 * 5;
        s.btree_insert(&mut root, WIDE, k, &wide(k)).unwrap();
    }
    let collect = |s: &mut MemStore, lo: u64, hi: u64| {
        let mut got = Vec::new();
        let all = s
            .btree_walk(root, WIDE, lo, hi, &mut |k, v| {
                assert_eq!(v, wide(k).as_slice());
                got.push(k);
                true
            })
            .unwrap();
        (got, all)
    };
    let (all, _) = collect(&mut s, 0, u64::MAX);
    assert_eq!(all, (0..500).map(|i| i * 5).collect::<Vec<_>>());
    for (lo, hi) in [
        (0, 1),
        (3, 4),
        (3, 11),
        (5, 10),
        (1000, 1500),
        (2490, u64::MAX),
        (2496, 3000),
    ] {
        let (got, _) = collect(&mut s, lo, hi);
        let want: Vec<u64> = all
            .iter()
            .copied()
            .filter(|k| (lo..hi).contains(k))
            .collect();
        assert_eq!(got, want, "range {lo}..{hi}");
    }
    // Stop after the tenth entry: the walk reports that it stopped.
    let mut seen = 0;
    let finished = s
        .btree_walk(root, WIDE, 100, u64::MAX, &mut |_, _| {
            seen += 1;
            seen < 10
        })
        .unwrap();
    assert!(!finished);
    assert_eq!(seen, 10);
    s.btree_dec(root, WIDE).unwrap();
    s.assert_empty();
}

#[test]
fn a_snapshot_keeps_its_content_while_the_clone_changes() {
    let mut s = MemStore::new();
    let mut root = s.btree_empty(DATA).unwrap();
    let mut next_data = 0u64;
    let mut model = BTreeMap::new();
    for k in 0..2000u64 {
        s.data_delta(DataBlock(next_data), 1).unwrap();
        s.btree_insert(&mut root, DATA, k, &v8(next_data)).unwrap();
        model.insert(k, next_data);
        next_data += 1;
    }
    s.commit();
    // Snapshot: one more reference on the root, nothing copied.
    let snap = root;
    let allocs = s.allocs;
    s.btree_inc(snap);
    assert_eq!(s.allocs, allocs);
    let snap_model = model.clone();
    let snap_blocks = reachable(&mut s, snap, DATA);
    assert_eq!(
        s.btree_lookup_shared(root, DATA, 10).unwrap(),
        Some((10, true))
    );

    // Change the clone: replace, insert, remove.
    for k in (0..2000u64).step_by(4) {
        s.data_delta(DataBlock(next_data), 1).unwrap();
        let old = s
            .btree_insert(&mut root, DATA, k, &v8(next_data))
            .unwrap()
            .unwrap();
        s.dec_value(DATA, &old).unwrap();
        model.insert(k, next_data);
        next_data += 1;
    }
    for k in 2000..2300u64 {
        s.data_delta(DataBlock(next_data), 1).unwrap();
        s.btree_insert(&mut root, DATA, k, &v8(next_data)).unwrap();
        model.insert(k, next_data);
        next_data += 1;
    }
    for k in (1..2000u64).step_by(4) {
        let old = s.btree_remove(&mut root, DATA, k).unwrap().unwrap();
        s.dec_value(DATA, &old).unwrap();
        model.remove(&k);
    }
    assert_ne!(root, snap);
    assert_matches(&mut s, root, DATA, &model);
    // The snapshot's blocks are byte for byte what they were, and it reads as before.
    assert_eq!(reachable(&mut s, snap, DATA), snap_blocks);
    assert_matches(&mut s, snap, DATA, &snap_model);
    // Every data block either tree names has one reference per tree naming it.
    for b in 0..next_data {
        let want = snap_model.values().filter(|&&d| d == b).count()
            + model.values().filter(|&&d| d == b).count();
        assert_eq!(
            s.data.get(&b).copied().unwrap_or(0),
            want as u64,
            "data block {b}"
        );
    }
    // The clone's path to key 0 is its own now.
    assert_eq!(
        s.btree_lookup_shared(root, DATA, 0).unwrap().map(|x| x.1),
        Some(false)
    );
    // Dropping the clone leaves the snapshot whole; dropping both releases everything.
    s.btree_dec(root, DATA).unwrap();
    assert_matches(&mut s, snap, DATA, &snap_model);
    s.btree_dec(snap, DATA).unwrap();
    s.assert_empty();
}

#[test]
fn a_snapshot_taken_in_the_transaction_that_wrote_the_tree_is_still_copied_on_write() {
    // No commit between building the tree and the snapshot: its nodes are this
    // transaction's own, but shared now, so they must not be edited in place.
    let mut s = MemStore::new();
    let mut root = s.btree_empty(WIDE).unwrap();
    for k in 0..50u64 {
        s.btree_insert(&mut root, WIDE, k, &wide(k)).unwrap();
    }
    let snap = root;
    s.btree_inc(snap);
    let before = reachable(&mut s, snap, WIDE);
    for k in 0..50u64 {
        s.btree_insert(&mut root, WIDE, k, &wide(k + 100)).unwrap();
    }
    s.btree_remove(&mut root, WIDE, 7).unwrap().unwrap();
    assert_eq!(reachable(&mut s, snap, WIDE), before);
    let (_, e) = check_tree(&mut s, snap, WIDE);
    assert_eq!(e, (0..50).map(|k| (k, wide(k))).collect::<Vec<_>>());
    assert_eq!(s.btree_lookup(root, WIDE, 8).unwrap(), Some(wide(108)));
    assert_eq!(s.btree_lookup(root, WIDE, 7).unwrap(), None);
    s.btree_dec(root, WIDE).unwrap();
    s.btree_dec(snap, WIDE).unwrap();
    s.assert_empty();
}

#[test]
fn random_operations_agree_with_a_btreemap_and_snapshots_stay_frozen() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x7417_b7ee);
    let mut s = MemStore::new();
    let mut root = s.btree_empty(DATA).unwrap();
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    // Each snapshot: its root, its model, its blocks' bytes.
    type Snapshot = (BlockRef, BTreeMap<u64, u64>, BTreeMap<u64, Vec<u8>>);
    let mut snaps: Vec<Snapshot> = Vec::new();
    let mut next_data = 0u64;
    for step in 0..20_000u32 {
        // A narrow key space makes replacements and removals of present keys common.
        let k = if rng.gen_bool(0.9) {
            rng.gen_range(0..3000)
        } else {
            rng.gen()
        };
        match rng.gen_range(0..10) {
            0..=5 => {
                s.data_delta(DataBlock(next_data), 1).unwrap();
                let old = s.btree_insert(&mut root, DATA, k, &v8(next_data)).unwrap();
                assert_eq!(
                    old.as_deref().map(|v| get_u64(v, 0)),
                    model.insert(k, next_data)
                );
                if let Some(old) = old {
                    s.dec_value(DATA, &old).unwrap();
                }
                next_data += 1;
            }
            6..=8 => {
                let old = s.btree_remove(&mut root, DATA, k).unwrap();
                assert_eq!(old.as_deref().map(|v| get_u64(v, 0)), model.remove(&k));
                if let Some(old) = old {
                    s.dec_value(DATA, &old).unwrap();
                }
            }
            _ => {
                let got = s.btree_lookup(root, DATA, k).unwrap();
                assert_eq!(
                    got.as_deref().map(|v| get_u64(v, 0)),
                    model.get(&k).copied()
                );
            }
        }
        if step % 1500 == 1499 {
            s.commit();
            if snaps.len() < 6 {
                s.btree_inc(root);
                let blocks = reachable(&mut s, root, DATA);
                snaps.push((root, model.clone(), blocks));
            }
        }
        if step % 2500 == 0 {
            assert_matches(&mut s, root, DATA, &model);
        }
    }
    assert_matches(&mut s, root, DATA, &model);
    for (r, m, blocks) in &snaps {
        assert_eq!(&reachable(&mut s, *r, DATA), blocks);
        assert_matches(&mut s, *r, DATA, m);
    }
    s.btree_dec(root, DATA).unwrap();
    for (r, _, _) in snaps {
        s.btree_dec(r, DATA).unwrap();
    }
    s.assert_empty();
}

#[test]
fn dropping_a_tree_of_trees_releases_the_subtrees_once_unshared() {
    let mut s = MemStore::new();
    let mut top = s.btree_empty(TOP).unwrap();
    let mut d = 0u64;
    for id in 0..3u64 {
        let mut sub = s.btree_empty(DATA).unwrap();
        for k in 0..300u64 {
            s.data_delta(DataBlock(d), 1).unwrap();
            s.btree_insert(&mut sub, DATA, k, &v8(d)).unwrap();
            d += 1;
        }
        s.btree_insert(&mut top, TOP, id, &encode_ref(sub)).unwrap();
    }
    s.commit();
    // A snapshot of the whole top tree, then remove a subtree from the clone.
    let snap = top;
    s.btree_inc(snap);
    let old = s.btree_remove(&mut top, TOP, 1).unwrap().unwrap();
    s.dec_value(TOP, &old).unwrap();
    // The snapshot still reaches subtree 1 and its data.
    let sub1 = crate::meta::journal::decode_ref(&s.btree_lookup(snap, TOP, 1).unwrap().unwrap());
    assert_eq!(s.btree_count(sub1, DATA).unwrap(), 300);
    assert!(s.data.values().all(|&c| c == 1));
    s.btree_dec(snap, TOP).unwrap();
    assert_eq!(s.btree_lookup(top, TOP, 1).unwrap(), None);
    let sub0 = crate::meta::journal::decode_ref(&s.btree_lookup(top, TOP, 0).unwrap().unwrap());
    assert_eq!(s.btree_count(sub0, DATA).unwrap(), 300);
    assert_eq!(s.data.values().filter(|&&c| c == 1).count(), 600);
    s.btree_dec(top, TOP).unwrap();
    s.assert_empty();
}

#[test]
fn a_node_of_another_kind_or_generation_is_corruption() {
    let mut s = MemStore::new();
    let mut root = s.btree_empty(PLAIN).unwrap();
    for k in 0..500u64 {
        s.btree_insert(&mut root, PLAIN, k, &v8(k)).unwrap();
    }
    assert!(matches!(
        s.btree_lookup(root, DATA, 1),
        Err(MetaError::Corrupt { .. })
    ));
    assert!(matches!(
        s.btree_lookup(root, WIDE, 1),
        Err(MetaError::Corrupt { .. })
    ));
    let stale = BlockRef {
        block: root.block,
        gen: root.gen + 1,
    };
    let e = s.btree_lookup(stale, PLAIN, 1).unwrap_err();
    assert!(e.to_string().contains("generation"), "{e}");
    assert!(s
        .btree_walk(stale, PLAIN, 0, u64::MAX, &mut |_, _| true)
        .is_err());
    s.btree_dec(root, PLAIN).unwrap();
    s.assert_empty();
}

#[test]
fn a_child_pointer_that_loops_is_reported_not_followed_forever() {
    let mut s = MemStore::new();
    let mut root = s.btree_empty(PLAIN).unwrap();
    for k in 0..500u64 {
        s.btree_insert(&mut root, PLAIN, k, &v8(k)).unwrap();
    }
    assert_eq!(check_tree(&mut s, root, PLAIN).0, 1);
    // Point the root's first child at the root itself.
    let buf = s.block_mut(root.block).unwrap();
    node::set_value(buf, 0, &encode_ref(root));
    let e = s.btree_lookup(root, PLAIN, 0).unwrap_err();
    assert!(e.to_string().contains("loops"), "{e}");
    assert!(s.btree_lookup_shared(root, PLAIN, 0).is_err());
    assert!(s
        .btree_walk(root, PLAIN, 0, u64::MAX, &mut |_, _| true)
        .is_err());
    assert!(s.btree_insert(&mut root, PLAIN, 0, &v8(0)).is_err());
}

#[test]
fn running_out_of_node_space_is_an_error_not_a_panic() {
    let mut s = MemStore::new();
    s.limit = Some(3);
    let mut root = s.btree_empty(WIDE).unwrap();
    let mut failed = None;
    for k in 0..100u64 {
        if let Err(e) = s.btree_insert(&mut root, WIDE, k, &wide(k)) {
            failed = Some((k, e));
            break;
        }
    }
    let (k, e) = failed.expect("a 3-block store fills up");
    assert!(matches!(e, MetaError::NoMetadataSpace), "{e}");
    // A leaf holds three entries; three blocks (two leaves and their root) hold at most six.
    assert!((4..=6).contains(&k), "failed at key {k}");
}

// ----- on the transaction manager --------------------------------------------------------

#[test]
fn committed_trees_survive_reopen_and_a_snapshot_outlives_changes_to_its_clone() {
    let (dev, mut tm, [mut a, b]) = mem_tm(1024, 64, 4);
    for k in 0..3000u64 {
        tm.btree_insert(&mut a, PLAIN, k, &v8(k)).unwrap();
    }
    tm.commit(crate::meta::txn::UserRoots {
        roots: [a, b],
        counters: [0, 0],
    })
    .unwrap();
    // Snapshot a as the second user tree, then change the first half of a.
    tm.btree_dec(b, PLAIN).unwrap();
    let snap = a;
    tm.btree_inc(snap);
    for k in (0..1500u64).step_by(2) {
        tm.btree_insert(&mut a, PLAIN, k, &v8(k + 1_000_000))
            .unwrap();
    }
    for k in (1..1500u64).step_by(10) {
        tm.btree_remove(&mut a, PLAIN, k).unwrap().unwrap();
    }
    tm.commit(crate::meta::txn::UserRoots {
        roots: [a, snap],
        counters: [0, 0],
    })
    .unwrap();
    drop(tm);

    let mut tm = reopen(&dev);
    let [a2, snap2] = tm.user_state().roots;
    assert_eq!((a2, snap2), (a, snap));
    let mut got = Vec::new();
    tm.btree_walk(snap2, PLAIN, 0, u64::MAX, &mut |k, v| {
        got.push((k, get_u64(v, 0)));
        true
    })
    .unwrap();
    assert_eq!(got, (0..3000).map(|k| (k, k)).collect::<Vec<_>>());
    for k in 0..3000u64 {
        let want = if k >= 1500 {
            Some(k)
        } else if k % 10 == 1 {
            None
        } else if k % 2 == 0 {
            Some(k + 1_000_000)
        } else {
            Some(k)
        };
        let v = tm.btree_lookup(a2, PLAIN, k).unwrap();
        assert_eq!(v.map(|v| get_u64(&v, 0)), want, "key {k}");
    }
    // The changed leaves are each tree's own; the untouched ones are shared.
    assert_eq!(
        tm.btree_lookup_shared(a2, PLAIN, 3).unwrap(),
        Some((3, false))
    );
    assert_eq!(
        tm.btree_lookup_shared(snap2, PLAIN, 3).unwrap(),
        Some((3, false))
    );
    assert_eq!(
        tm.btree_lookup_shared(a2, PLAIN, 2999).unwrap(),
        Some((2999, true))
    );
    assert_eq!(
        tm.btree_lookup_shared(snap2, PLAIN, 2999).unwrap(),
        Some((2999, true))
    );
}

#[test]
fn a_tree_removed_and_committed_gives_its_blocks_back() {
    let (_dev, mut tm, [mut a, b]) = mem_tm(1024, 64, 4);
    let used0 = tm.meta_used().unwrap();
    for k in 0..5000u64 {
        tm.btree_insert(&mut a, PLAIN, k, &v8(k)).unwrap();
    }
    tm.commit(crate::meta::txn::UserRoots {
        roots: [a, b],
        counters: [0, 0],
    })
    .unwrap();
    let used1 = tm.meta_used().unwrap();
    assert!(used1 >= used0 + 20, "{used0} -> {used1}");
    for k in 0..5000u64 {
        tm.btree_remove(&mut a, PLAIN, k).unwrap().unwrap();
    }
    assert_eq!(tm.btree_count(a, PLAIN).unwrap(), 0);
    tm.commit(crate::meta::txn::UserRoots {
        roots: [a, b],
        counters: [0, 0],
    })
    .unwrap();
    // Back to the empty tree's footprint (space-map pages shadowed on the way may differ
    // by a block or two).
    let used2 = tm.meta_used().unwrap();
    assert!(used2 <= used0 + 2, "{used0} -> {used1} -> {used2}");
}
