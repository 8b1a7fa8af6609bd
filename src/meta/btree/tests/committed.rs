//! On the real transaction manager: commit, reopen, blocks given back.

use super::*;

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

#[test]
fn thinning_a_committed_tree_merges_its_leaves_and_gives_the_blocks_back() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (dev, mut tm, [mut a, b]) = mem_tm(2048, 64, 4);
    let roots = |a, b| crate::meta::txn::UserRoots {
        roots: [a, b],
        counters: [0, 0],
    };
    let used0 = tm.meta_used().unwrap();
    for k in 0..30_000u64 {
        tm.btree_insert(&mut a, PLAIN, k, &v8(k)).unwrap();
    }
    tm.commit(roots(a, b)).unwrap();
    let used1 = tm.meta_used().unwrap();
    // Remove nine keys in ten, in random order, over three commits.
    let mut gone: Vec<u64> = (0..30_000u64).filter(|k| k % 10 != 7).collect();
    for i in (1..gone.len()).rev() {
        gone.swap(i, rng.gen_range(0..=i));
    }
    for part in gone.chunks(gone.len() / 3 + 1) {
        for &k in part {
            tm.btree_remove(&mut a, PLAIN, k).unwrap().unwrap();
        }
        tm.commit(roots(a, b)).unwrap();
    }
    // One more commit: blocks freed by the last one leave the protected window.
    tm.commit(roots(a, b)).unwrap();
    let used2 = tm.meta_used().unwrap();
    drop(tm);
    let mut tm = reopen(&dev);
    let [a2, _] = tm.user_state().roots;
    let mut got = Vec::new();
    tm.btree_walk(a2, PLAIN, 0, u64::MAX, &mut |k, v| {
        got.push((k, get_u64(v, 0)));
        true
    })
    .unwrap();
    let want: Vec<(u64, u64)> = (0..30_000)
        .filter(|k| k % 10 == 7)
        .map(|k| (k, k))
        .collect();
    assert_eq!(got, want);
    // 3,000 entries in leaves at least a third full (84 of 252): at most 36 leaves and a
    // root, where the ~238 leaves of the full tree would all have stayed without merging.
    let cap = node::capacity(PLAIN.value_size) as u64;
    assert!(
        used2 <= used0 + 3_000 / (cap / 3) + 1 + 2,
        "{used0} -> {used1} -> {used2}"
    );
}
