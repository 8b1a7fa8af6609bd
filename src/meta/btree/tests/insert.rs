//! Inserts: leaf and internal splits, balance, replacing a key.

use super::*;

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
