//! Damage and exhaustion: foreign or stale nodes, pointer loops, no node space.

use super::*;

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
