//! Unit tests of the space-map engine on a transaction manager over a memory device:
//! allocation until full, reference counts up and down, counts of three and more in the
//! overflow tree, a freed block allocatable again only once no protected state references
//! it, growth of the data space map across a page boundary.

use super::*;
use crate::meta::block;
use crate::meta::spacemap::{self, ENTRIES_PER_PAGE};
use crate::meta::test_util::{mem_tm, reopen};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// The count the overflow tree holds for a block, if any.
fn overflow(tm: &mut Tm, k: SmKind, b: u64) -> Option<u64> {
    let root = tm.sm_state(k).roots.overflow;
    tm.btree_lookup(root, SM_OVERFLOW, b)
        .unwrap()
        .map(|v| block::get_u64(&v, 0))
}

/// The 2-bit entry of a block in its bitmap page.
fn entry(tm: &mut Tm, k: SmKind, b: u64) -> u8 {
    let pr = disk::page_ref(tm, k, b / ENTRIES_PER_PAGE).unwrap();
    let page = tm.bitmap(pr.block).unwrap();
    spacemap::page_get(&page, (b % ENTRIES_PER_PAGE) as usize)
}

fn commit(tm: &mut Tm) {
    let u = tm.user_state();
    tm.commit(u).unwrap();
}

#[test]
fn data_allocation_hands_out_every_block_once_then_reports_full() {
    let (dev, mut tm, _) = mem_tm(256, 20, 4);
    let mut got = Vec::new();
    while let Some(b) = tm.alloc_data().unwrap() {
        got.push(b.0);
        assert!(got.len() <= 20, "more blocks than the device has");
    }
    got.sort();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    assert_eq!(tm.dsm.nr_allocated, 20);
    for b in 0..20 {
        assert_eq!(tm.data_count(DataBlock(b)).unwrap(), 1);
    }
    // Asking again is still a clean `None`, and so after a commit and a reopen.
    assert_eq!(tm.alloc_data().unwrap(), None);
    commit(&mut tm);
    drop(tm);
    let mut tm = reopen(&dev);
    assert_eq!(tm.dsm.nr_allocated, 20);
    assert_eq!(tm.alloc_data().unwrap(), None);
    // Past the end of the space map is an error, not a panic.
    assert!(matches!(
        tm.data_count(DataBlock(20)),
        Err(MetaError::Corrupt { .. })
    ));
    assert!(tm.data_inc(DataBlock(u64::MAX)).is_err());
}

#[test]
fn counts_go_up_and_down_and_release_at_zero() {
    let (_dev, mut tm, _) = mem_tm(256, 20, 4);
    let b = tm.alloc_data().unwrap().unwrap();
    tm.data_inc(b).unwrap();
    assert_eq!(tm.data_count(b).unwrap(), 2);
    assert_eq!(entry(&mut tm, SmKind::Data, b.0), 2);
    tm.data_dec(b).unwrap();
    tm.data_dec(b).unwrap();
    assert_eq!(tm.data_count(b).unwrap(), 0);
    assert_eq!(tm.dsm.nr_allocated, 0);
    assert_eq!(
        tm.data_freed,
        [b.0],
        "the freed block is collected for punching"
    );
    // One release too many is corruption, reported, and changes nothing.
    let e = tm.data_dec(b).unwrap_err();
    assert!(e.to_string().contains("no references"), "{e}");
    assert_eq!(tm.data_count(b).unwrap(), 0);
    assert_eq!(tm.data_freed, [b.0]);
}

#[test]
fn counts_of_three_and_more_live_in_the_overflow_tree_and_come_back_down() {
    let (dev, mut tm, _) = mem_tm(256, 20, 4);
    let b = tm.alloc_data().unwrap().unwrap();
    for c in 2..=1000u64 {
        tm.data_inc(b).unwrap();
        if c <= 5 {
            assert_eq!(tm.data_count(b).unwrap(), c);
            assert_eq!(entry(&mut tm, SmKind::Data, b.0), c.min(3) as u8);
            assert_eq!(overflow(&mut tm, SmKind::Data, b.0), (c >= 3).then_some(c));
        }
    }
    assert_eq!(tm.data_count(b).unwrap(), 1000);
    commit(&mut tm);
    drop(tm);
    let mut tm = reopen(&dev);
    assert_eq!(tm.data_count(b).unwrap(), 1000);
    assert_eq!(overflow(&mut tm, SmKind::Data, b.0), Some(1000));
    assert_eq!(tm.dsm.nr_allocated, 1, "one block, however many references");
    while tm.data_count(b).unwrap() > 2 {
        tm.data_dec(b).unwrap();
    }
    // Back in the bitmap alone: the overflow entry is gone.
    assert_eq!(entry(&mut tm, SmKind::Data, b.0), 2);
    assert_eq!(overflow(&mut tm, SmKind::Data, b.0), None);
    assert_eq!(
        tm.btree_count(tm.dsm.roots.overflow, SM_OVERFLOW).unwrap(),
        0
    );
    tm.data_dec(b).unwrap();
    tm.data_dec(b).unwrap();
    assert_eq!(tm.data_count(b).unwrap(), 0);
    assert_eq!(tm.data_freed, [b.0]);
}

#[test]
fn a_freed_block_is_allocated_again_only_once_no_protected_state_has_it() {
    let (_dev, mut tm, _) = mem_tm(256, 8, 4);
    while tm.alloc_data().unwrap().is_some() {}
    commit(&mut tm);
    tm.data_dec(DataBlock(3)).unwrap();
    // Free now, but the last commit (S) references it.
    assert_eq!(tm.alloc_data().unwrap(), None);
    commit(&mut tm);
    // S has it free; S-1 still references it.
    assert_eq!(tm.alloc_data().unwrap(), None);
    commit(&mut tm);
    assert_eq!(tm.alloc_data().unwrap(), Some(DataBlock(3)));
    assert_eq!(tm.alloc_data().unwrap(), None);
}

#[test]
fn a_reopened_pool_knows_what_the_last_commit_freed() {
    let (dev, mut tm, _) = mem_tm(256, 16, 4);
    for _ in 0..10 {
        tm.alloc_data().unwrap().unwrap();
    }
    commit(&mut tm);
    for b in [2, 5, 9] {
        tm.data_dec(DataBlock(b)).unwrap();
    }
    commit(&mut tm);
    drop(tm);
    let mut tm = reopen(&dev);
    assert_eq!(tm.data_freed_by_last_commit().unwrap(), [2, 5, 9]);
    assert_eq!(tm.highest_used_data_block(0).unwrap(), Some(8));
    assert_eq!(tm.highest_used_data_block(9).unwrap(), None);
}

#[test]
fn metadata_allocation_fails_cleanly_at_the_reserve_and_recovers_on_abort() {
    let (_dev, mut tm, _) = mem_tm(200, 16, 4);
    let free0 = tm.meta_free_estimate();
    let headroom = tm.meta_headroom();
    assert!(headroom > 0 && headroom < free0);
    let mut got = std::collections::BTreeSet::new();
    let err = loop {
        match tm.alloc_meta() {
            Ok(b) => {
                assert!(b.0 < 200);
                assert!(got.insert(b.0), "{b} handed out twice");
                assert_eq!(tm.meta_count(b).unwrap(), 1);
                assert!(got.len() as u64 <= free0);
            }
            Err(e) => break e,
        }
    };
    assert!(matches!(err, MetaError::NoMetadataSpace), "{err}");
    assert!(got.len() as u64 >= headroom, "{} < {headroom}", got.len());
    assert_eq!(tm.meta_headroom(), 0);
    assert!(matches!(tm.alloc_meta(), Err(MetaError::NoMetadataSpace)));
    // No allocated block is one a committed state uses: label, journal, live trees.
    assert!(got.iter().all(|&b| b >= tm.label.first_free_block()));
    tm.abort();
    assert_eq!(tm.meta_free_estimate(), free0);
    tm.alloc_meta().unwrap();
}

#[test]
fn metadata_counts_apply_at_commit_including_large_ones() {
    let (dev, mut tm, _) = mem_tm(256, 16, 4);
    let b = tm.alloc_meta().unwrap();
    tm.meta_delta(b, 6);
    assert_eq!(tm.meta_count(b).unwrap(), 7);
    assert_eq!(
        tm.space_map(SmKind::Meta).count(b.0).unwrap(),
        0,
        "pending until commit"
    );
    commit(&mut tm);
    assert_eq!(tm.space_map(SmKind::Meta).count(b.0).unwrap(), 7);
    assert_eq!(overflow(&mut tm, SmKind::Meta, b.0), Some(7));
    drop(tm);
    let mut tm = reopen(&dev);
    assert_eq!(tm.meta_count(b).unwrap(), 7);
    tm.meta_delta(b, -6);
    commit(&mut tm);
    assert_eq!(tm.meta_count(b).unwrap(), 1);
    assert_eq!(entry(&mut tm, SmKind::Meta, b.0), 1);
    assert_eq!(overflow(&mut tm, SmKind::Meta, b.0), None);
    // A delta below zero is refused at commit, not wrapped.
    tm.meta_delta(b, -2);
    assert!(tm.meta_count(b).is_err());
}

#[test]
fn random_reference_changes_agree_with_a_model_across_commits_and_reopen() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x00c0_ffee);
    let (dev, tm, _) = mem_tm(512, 64, 4);
    let mut model: HashMap<u64, u64> = HashMap::new();
    let mut tm_slot = Some(tm);
    for step in 0..4000 {
        let tm = tm_slot.as_mut().unwrap();
        match rng.gen_range(0..10) {
            0..=1 => {
                if let Some(b) = tm.alloc_data().unwrap() {
                    assert_eq!(model.insert(b.0, 1).unwrap_or(0), 0, "{b} was in use");
                }
            }
            2..=5 => {
                let b = rng.gen_range(0..64);
                if model.get(&b).copied().unwrap_or(0) > 0 {
                    tm.data_inc(DataBlock(b)).unwrap();
                    *model.get_mut(&b).unwrap() += 1;
                }
            }
            _ => {
                let b = rng.gen_range(0..64);
                let c = model.get(&b).copied().unwrap_or(0);
                if c > 0 {
                    tm.data_dec(DataBlock(b)).unwrap();
                    model.insert(b, c - 1);
                } else {
                    assert!(tm.data_dec(DataBlock(b)).is_err());
                }
            }
        }
        if step % 300 == 299 {
            commit(tm);
        }
        if step == 2500 {
            commit(tm);
            drop(tm_slot.take());
            tm_slot = Some(reopen(&dev));
        }
    }
    let tm = tm_slot.as_mut().unwrap();
    for b in 0..64 {
        let want = model.get(&b).copied().unwrap_or(0);
        assert_eq!(tm.data_count(DataBlock(b)).unwrap(), want, "data block {b}");
        assert_eq!(overflow(tm, SmKind::Data, b), (want >= 3).then_some(want));
    }
    let used = model.values().filter(|&&c| c > 0).count() as u64;
    assert_eq!(tm.dsm.nr_allocated, used);
    assert!(
        model.values().any(|&c| c >= 3),
        "the sequence reached the overflow tree"
    );
}

#[test]
fn growing_the_data_map_across_a_page_boundary_adds_allocatable_blocks() {
    let old = ENTRIES_PER_PAGE - 8;
    let new = ENTRIES_PER_PAGE + 72;
    let (dev, mut tm, _) = mem_tm(512, old, 4);
    let mut n = 0u64;
    while tm.alloc_data().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, old);
    commit(&mut tm);
    tm.grow_data(new).unwrap();
    assert_eq!(tm.dsm.nr_pages(), 2);
    let mut got = Vec::new();
    while let Some(b) = tm.alloc_data().unwrap() {
        got.push(b.0);
    }
    got.sort();
    assert_eq!(got, (old..new).collect::<Vec<_>>());
    // Shrinking is not growing: nothing changes.
    tm.grow_data(old).unwrap();
    assert_eq!(tm.dsm.nr_blocks, new);
    commit(&mut tm);
    drop(tm);
    let mut tm = reopen(&dev);
    assert_eq!(tm.dsm.nr_blocks, new);
    assert_eq!(tm.dsm.nr_allocated, new);
    assert_eq!(tm.data_count(DataBlock(new - 1)).unwrap(), 1);
    assert_eq!(tm.data_count(DataBlock(ENTRIES_PER_PAGE)).unwrap(), 1);
    assert_eq!(tm.highest_used_data_block(0).unwrap(), Some(new - 1));
    assert_eq!(tm.alloc_data().unwrap(), None);
}
