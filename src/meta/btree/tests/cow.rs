//! Walks, copy-on-write snapshots against a `BTreeMap` model, trees of trees.

use super::*;

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
