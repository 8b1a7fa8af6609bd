//! Removal: emptied leaves, root collapse, every node released, absent keys.

use super::*;

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

/// Entries of every non-root node, with its depth: (depth, nr, max).
fn node_fill(s: &mut MemStore, root: BlockRef, kind: TreeKind) -> Vec<(u64, usize, usize)> {
    let mut out = Vec::new();
    let mut todo = vec![(root, 0)];
    while let Some((r, d)) = todo.pop() {
        let blk = s.read_node(r, kind).unwrap();
        let n = Node(&blk);
        if d > 0 {
            out.push((d, n.nr(), n.max()));
        }
        if !n.is_leaf() {
            todo.extend((0..n.nr()).map(|i| (n.child(i), d + 1)));
        }
    }
    out
}

/// Every node but the root holds at least a third of its capacity.
fn assert_no_underfull(s: &mut MemStore, root: BlockRef, kind: TreeKind) {
    for (d, nr, max) in node_fill(s, root, kind) {
        assert!(nr >= max / 3, "node at depth {d} holds {nr} of {max}");
    }
}

#[test]
fn thinning_a_tree_merges_underfull_nodes_and_returns_their_blocks() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut s = MemStore::new();
    let mut root = s.btree_empty(PLAIN).unwrap();
    let mut model = BTreeMap::new();
    for k in 0..60_000u64 {
        s.btree_insert(&mut root, PLAIN, k, &v8(k + 1)).unwrap();
        model.insert(k, k + 1);
    }
    s.commit();
    let full = s.counts.len();
    assert_eq!(check_tree(&mut s, root, PLAIN).0, 2);
    // Discard nine keys in ten, in random order, as a guest's TRIM of most of a disk does.
    let mut gone: Vec<u64> = (0..60_000u64).filter(|k| k % 10 != 3).collect();
    for i in (1..gone.len()).rev() {
        gone.swap(i, rng.gen_range(0..=i));
    }
    for (n, &k) in gone.iter().enumerate() {
        assert_eq!(
            s.btree_remove(&mut root, PLAIN, k).unwrap(),
            Some(v8(k + 1).to_vec())
        );
        model.remove(&k);
        if n % 5_000 == 0 {
            assert_no_underfull(&mut s, root, PLAIN);
            s.commit();
        }
    }
    assert_matches(&mut s, root, PLAIN, &model);
    assert_no_underfull(&mut s, root, PLAIN);
    // 6,000 entries left: without merging nearly every one of the ~476 leaves would still
    // hold a few; merged, each holds at least a third of its 252.
    let live = s.counts.len();
    let cap = node::capacity(PLAIN.value_size);
    assert!(
        live <= model.len() / (cap / 3) + 2,
        "{live} nodes for {} entries (was {full} nodes)",
        model.len()
    );
    s.btree_dec(root, PLAIN).unwrap();
    s.assert_empty();
}

#[test]
fn an_underfull_node_beside_a_full_one_takes_half_of_its_entries() {
    let mut s = MemStore::new();
    let mut root = s.btree_empty(PLAIN).unwrap();
    let cap = node::capacity(PLAIN.value_size) as u64;
    // Even keys: two half-full leaves after the first split ...
    for k in 0..cap + 1 {
        s.btree_insert(&mut root, PLAIN, 2 * k, &v8(k)).unwrap();
    }
    let leaves = |s: &mut MemStore, root| -> Vec<usize> {
        node_fill(s, root, PLAIN).iter().map(|x| x.1).collect()
    };
    let half = leaves(&mut s, root);
    assert_eq!(half.len(), 2);
    // ... odd keys fill the left one up ...
    let split = {
        let blk = s.read_node(root, PLAIN).unwrap();
        Node(&blk).key(1)
    };
    let mut odd = 1;
    while leaves(&mut s, root).iter().max() < Some(&(cap as usize)) {
        s.btree_insert(&mut root, PLAIN, odd, &v8(odd)).unwrap();
        odd += 2;
    }
    assert!(odd - 2 < split, "every odd key went into the left leaf");
    s.commit();
    // ... and the right one is emptied to below a third: the removal that takes it there
    // moves half of the left one's entries across.
    let right_nr = |s: &mut MemStore, root| {
        let blk = s.read_node(root, PLAIN).unwrap();
        let n = Node(&blk);
        assert_eq!(n.nr(), 2);
        let c = s.read_node(n.child(1), PLAIN).unwrap();
        Node(&c).nr()
    };
    let mut right: Vec<u64> = (0..cap + 1)
        .map(|k| 2 * k)
        .filter(|&k| k >= split)
        .collect();
    let mut removed = 0;
    loop {
        let before = right_nr(&mut s, root);
        let k = right.pop().unwrap();
        assert!(s.btree_remove(&mut root, PLAIN, k).unwrap().is_some());
        removed += 1;
        if right_nr(&mut s, root) > before {
            // It held a third of its capacity, less one, before the move.
            assert_eq!(before as u64, cap / 3);
            break;
        }
    }
    let after = leaves(&mut s, root);
    let total: usize = after.iter().sum();
    assert_eq!(after.len(), 2, "too many entries to merge into one leaf");
    let (l, r) = (after.iter().max().unwrap(), after.iter().min().unwrap());
    assert!(
        l - r <= 1,
        "redistributed evenly: {after:?} after {removed} removals"
    );
    assert_eq!(total, cap as usize + 1 + (odd as usize / 2) - removed);
    let (_, e) = check_tree(&mut s, root, PLAIN);
    assert_eq!(e.len(), total);
    s.btree_dec(root, PLAIN).unwrap();
    s.assert_empty();
}

#[test]
fn rebalancing_a_shared_tree_leaves_the_other_owner_unchanged() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut s = MemStore::new();
    let mut a = s.btree_empty(PLAIN).unwrap();
    for k in 0..20_000u64 {
        s.btree_insert(&mut a, PLAIN, k, &v8(k)).unwrap();
    }
    s.commit();
    // A snapshot: `b` shares every node of `a`.
    s.btree_inc(a);
    let mut b = a;
    let frozen = reachable(&mut s, a, PLAIN);
    let mut model: BTreeMap<u64, u64> = (0..20_000).map(|k| (k, k)).collect();
    for _ in 0..15_000 {
        let k = rng.gen_range(0..20_000);
        let got = s.btree_remove(&mut b, PLAIN, k).unwrap();
        assert_eq!(got.map(|v| get_u64(&v, 0)), model.remove(&k));
    }
    assert_eq!(
        reachable(&mut s, a, PLAIN),
        frozen,
        "the snapshot did not move"
    );
    assert_matches(&mut s, b, PLAIN, &model);
    assert_no_underfull(&mut s, b, PLAIN);
    s.btree_dec(a, PLAIN).unwrap();
    assert_matches(&mut s, b, PLAIN, &model);
    s.btree_dec(b, PLAIN).unwrap();
    s.assert_empty();
}
