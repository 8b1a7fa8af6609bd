//! The bottom-up builder: full nodes, the same tree shape rules as inserts, references
//! taken per value, and trees that inserts and removes then change like any other.

use super::*;

/// Build `keys` (ascending) with `value(k)` into a tree of `kind`.
fn build(
    s: &mut MemStore,
    kind: TreeKind,
    keys: &[u64],
    value: impl Fn(u64) -> Vec<u8>,
) -> BlockRef {
    let mut b = TreeBuilder::new(kind);
    for &k in keys {
        b.push(s, k, &value(k)).unwrap();
    }
    b.finish(s).unwrap()
}

#[test]
fn built_trees_of_every_boundary_size_hold_their_keys_in_full_nodes() {
    let cap = node::capacity(PLAIN.value_size) as u64;
    let icap = node::capacity(16) as u64;
    for n in [
        0,
        1,
        2,
        cap - 1,
        cap,
        cap + 1,
        2 * cap,
        cap * icap,
        cap * icap + 1,
        3 * cap * icap + 7,
    ] {
        let mut s = MemStore::new();
        let keys: Vec<u64> = (0..n).map(|k| k * 3 + 1).collect();
        let root = build(&mut s, PLAIN, &keys, |k| v8(k ^ 0x55).to_vec());
        let model: BTreeMap<u64, u64> = keys.iter().map(|&k| (k, k ^ 0x55)).collect();
        assert_matches(&mut s, root, PLAIN, &model);
        // Packed full: as few leaves as the entries need, and the height that implies.
        let nodes = reachable(&mut s, root, PLAIN);
        let leaves = nodes.values().filter(|b| Node(b).is_leaf()).count() as u64;
        assert_eq!(leaves, n.div_ceil(cap).max(1), "{n} entries");
        let (h, _) = check_tree(&mut s, root, PLAIN);
        let want_h = match n.div_ceil(cap) {
            0 | 1 => 0,
            l if l <= icap => 1,
            l if l <= icap * icap => 2,
            _ => 3,
        };
        assert_eq!(h, want_h, "{n} entries");
        s.btree_dec(root, PLAIN).unwrap();
        s.assert_empty();
    }
}

#[test]
fn a_deep_built_tree_has_the_shape_inserts_promise() {
    // Three entries per leaf: 2,000 keys need four levels.
    let mut s = MemStore::new();
    let keys: Vec<u64> = (0..2000).map(|k| k * 7).collect();
    let root = build(&mut s, WIDE, &keys, wide);
    let (h, e) = check_tree(&mut s, root, WIDE);
    assert!(h >= 2, "height {h}");
    assert_eq!(e.len(), keys.len());
    for (&(k, ref v), &want) in e.iter().zip(&keys) {
        assert_eq!(k, want);
        assert_eq!(*v, wide(want));
    }
    s.btree_dec(root, WIDE).unwrap();
    s.assert_empty();
}

#[test]
fn each_built_value_takes_its_reference_and_dropping_the_tree_returns_them() {
    let mut s = MemStore::new();
    // Two trees naming the same data blocks: every block is referenced twice.
    let keys: Vec<u64> = (0..1000).collect();
    let a = build(&mut s, DATA, &keys, |k| v8(5000 + k).to_vec());
    let b = build(&mut s, DATA, &keys, |k| v8(5000 + k).to_vec());
    assert!(keys.iter().all(|k| s.data[&(5000 + k)] == 2));
    s.btree_dec(a, DATA).unwrap();
    assert!(keys.iter().all(|k| s.data[&(5000 + k)] == 1));
    s.btree_dec(b, DATA).unwrap();
    s.assert_empty();
}

#[test]
fn a_built_tree_takes_inserts_and_removes_in_the_same_and_later_transactions() {
    let mut s = MemStore::new();
    let cap = node::capacity(PLAIN.value_size) as u64;
    let keys: Vec<u64> = (0..cap * 5).map(|k| k * 2).collect();
    let mut root = build(&mut s, PLAIN, &keys, |k| v8(k).to_vec());
    let mut model: BTreeMap<u64, u64> = keys.iter().map(|&k| (k, k)).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for round in 0..2 {
        for _ in 0..600 {
            let k = rng.gen_range(0..cap * 12);
            if rng.gen_bool(0.6) {
                s.btree_insert(&mut root, PLAIN, k, &v8(k + 1)).unwrap();
                model.insert(k, k + 1);
            } else {
                s.btree_remove(&mut root, PLAIN, k).unwrap();
                model.remove(&k);
            }
        }
        assert_matches(&mut s, root, PLAIN, &model);
        if round == 0 {
            s.commit();
        }
    }
    s.btree_dec(root, PLAIN).unwrap();
    s.assert_empty();
}

#[test]
fn a_built_tree_survives_a_commit_and_a_reopen_of_the_real_transaction_manager() {
    let (dev, mut tm, [a, b]) = mem_tm(1024, 64, 4);
    tm.btree_dec(a, PLAIN).unwrap();
    let keys: Vec<u64> = (0..5000).map(|k| k * 11).collect();
    let mut builder = TreeBuilder::new(PLAIN);
    for &k in &keys {
        builder.push(&mut tm, k, &v8(!k)).unwrap();
    }
    let root = builder.finish(&mut tm).unwrap();
    tm.commit(crate::meta::txn::UserRoots {
        roots: [root, b],
        counters: [0, 0],
    })
    .unwrap();
    drop(tm);
    let mut tm = reopen(&dev);
    let root = tm.user_state().roots[0];
    let mut seen = Vec::new();
    tm.btree_walk(root, PLAIN, 0, u64::MAX, &mut |k, v| {
        seen.push((k, get_u64(v, 0)));
        true
    })
    .unwrap();
    assert_eq!(seen, keys.iter().map(|&k| (k, !k)).collect::<Vec<_>>());
}
