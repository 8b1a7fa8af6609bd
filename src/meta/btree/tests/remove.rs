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
