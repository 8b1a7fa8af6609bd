//! Unit tests of the record open picks from the journal (newest valid whose roots verify) and
//! of where the next commit goes after it: a torn or stale slot is passed over, damage to
//! the newest valid record's trees is a reported rewind, nothing usable is a clear error.

use super::*;
use crate::meta::btree::Btree;
use crate::meta::journal::{slot_blocks, BlockRef};
use crate::meta::test_util::{mem_tm, peek, poke, PLAIN};

const SLOTS: u32 = 4;

/// Commit until the last record is `upto`, each commit's counters naming its seq. With
/// `touch`, each commit changes user tree 0 (so its root block is that commit's own).
fn commit_to(tm: &mut Tm, roots: &mut [BlockRef; 2], upto: u64, touch: bool) {
    while tm.last.seq < upto {
        let seq = tm.gen;
        if touch {
            tm.btree_insert(&mut roots[0], PLAIN, seq, &seq.to_le_bytes())
                .unwrap();
        }
        let rec = tm
            .commit(super::super::UserRoots {
                roots: *roots,
                counters: [seq, 0],
            })
            .unwrap();
        let slots = tm.label.ring_slots as u64;
        assert_eq!((rec.seq, rec.slot), (seq, (seq % slots) as u32));
    }
}

fn open(dev: &Arc<dyn BlockDev>) -> Result<(Tm, OpenReport)> {
    Tm::open(dev.clone(), 64, false)
}

/// Flip a byte inside a record's payload: what a torn write leaves.
fn tear(dev: &Arc<dyn BlockDev>, block: MetaBlock) {
    let old = peek(dev, block.0)[1000];
    poke(dev, block.0, 1000, &[old ^ 0x5a]);
}

fn ring(seq: u64, r: usize) -> MetaBlock {
    slot_blocks(SLOTS, (seq % SLOTS as u64) as u32)[r]
}

fn seq_in(dev: &Arc<dyn BlockDev>, block: MetaBlock) -> u64 {
    crate::meta::block::get_u64(&peek(dev, block.0), 64)
}

#[test]
fn the_newest_valid_record_wins() {
    let (dev, mut tm, mut roots) = mem_tm(256, 16, SLOTS);
    commit_to(&mut tm, &mut roots, 6, true);
    drop(tm);
    let (tm, report) = open(&dev).unwrap();
    assert_eq!(tm.last.seq, 6);
    assert_eq!(tm.last.counters, [6, 0]);
    assert_eq!(tm.user_state().roots, roots);
    assert_eq!((report.chosen_seq, report.newest_valid_seq), (6, 6));
    assert!(report.skipped.is_empty());
    assert_eq!(report.rewound(), None);
    // Four slots in each ring, all holding a record: seqs 3 to 6.
    let mut seqs: Vec<u64> = report
        .slots
        .iter()
        .map(|s| s.result.as_ref().unwrap().seq)
        .collect();
    seqs.sort();
    assert_eq!(seqs, [3, 3, 4, 4, 5, 5, 6, 6]);
    assert_eq!(tm.gen, 7, "the next transaction follows the newest record");
}

#[test]
fn a_torn_newest_record_falls_back_and_the_next_commit_reuses_its_slot() {
    let (dev, mut tm, mut roots) = mem_tm(256, 16, SLOTS);
    commit_to(&mut tm, &mut roots, 6, true);
    drop(tm);
    // Commit 6 was torn in both rings (the crash came while writing them).
    tear(&dev, ring(6, 0));
    tear(&dev, ring(6, 1));
    let (mut tm, report) = open(&dev).unwrap();
    assert_eq!((report.chosen_seq, report.newest_valid_seq), (5, 5));
    assert_eq!(tm.last.counters, [5, 0]);
    assert_eq!(
        report.rewound(),
        None,
        "a torn record is a crash's trace, not a rewind"
    );
    let torn: Vec<_> = report
        .slots
        .iter()
        .filter(|s| s.result.as_ref().is_err_and(|e| e.contains("checksum")))
        .map(|s| s.block)
        .collect();
    assert_eq!(torn, [ring(6, 0), ring(6, 1)]);
    // The next commit is seq 6 again, written over the torn slot; seq 5 stays.
    assert_eq!(tm.gen, 6);
    let mut r = tm.user_state().roots;
    tm.btree_insert(&mut r[0], PLAIN, 600, &[0; 8]).unwrap();
    let rec = tm
        .commit(super::super::UserRoots {
            roots: r,
            counters: [66, 0],
        })
        .unwrap();
    assert_eq!((rec.seq, rec.slot), (6, 2));
    assert_eq!(seq_in(&dev, ring(5, 0)), 5);
    assert_eq!(seq_in(&dev, ring(5, 1)), 5);
    drop(tm);
    let (tm, report) = open(&dev).unwrap();
    assert_eq!((report.chosen_seq, tm.last.counters), (6, [66, 0]));
}

#[test]
fn a_record_torn_in_one_ring_is_read_from_the_other() {
    for r in 0..2 {
        let (dev, mut tm, mut roots) = mem_tm(256, 16, SLOTS);
        commit_to(&mut tm, &mut roots, 6, true);
        drop(tm);
        tear(&dev, ring(6, r));
        let (tm, report) = open(&dev).unwrap();
        assert_eq!(
            (report.chosen_seq, tm.last.counters),
            (6, [6, 0]),
            "ring {r} torn"
        );
    }
}

#[test]
fn a_stale_record_in_the_newest_slot_is_not_picked() {
    let (dev, mut tm, mut roots) = mem_tm(256, 16, SLOTS);
    commit_to(&mut tm, &mut roots, 2, true);
    // What slot 2 of ring B held before commit 6 reused it.
    let old_b = peek(&dev, ring(6, 1).0);
    commit_to(&mut tm, &mut roots, 6, true);
    drop(tm);
    // Ring B's write of commit 6 was lost: the slot still has seq 2.
    poke(&dev, ring(6, 1).0, 0, &old_b);
    assert_eq!(seq_in(&dev, ring(6, 1)), 2);
    let (_, report) = open(&dev).unwrap();
    assert_eq!(report.chosen_seq, 6);
    // And with ring A's copy torn as well, the newest valid record is 5, not the stale 2.
    tear(&dev, ring(6, 0));
    let (tm, report) = open(&dev).unwrap();
    assert_eq!((report.chosen_seq, tm.last.counters), (5, [5, 0]));
    assert_eq!(tm.gen, 6);
}

#[test]
fn no_valid_record_is_an_error_naming_the_journal() {
    let (dev, mut tm, mut roots) = mem_tm(256, 16, SLOTS);
    commit_to(&mut tm, &mut roots, 5, true);
    drop(tm);
    for s in 0..SLOTS {
        for b in slot_blocks(SLOTS, s) {
            tear(&dev, b);
        }
    }
    match open(&dev) {
        Err(MetaError::NoValidRecord(why)) => assert!(why.contains("journal slot"), "{why}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a pool with no valid record"),
    }
    // A journal of zeros (a pool whose first commit never happened) says the same.
    for b in 1..=2 * SLOTS as u64 {
        poke(&dev, b, 0, &[0u8; BLOCK_SIZE]);
    }
    assert!(matches!(open(&dev), Err(MetaError::NoValidRecord(_))));
}

#[test]
fn damaged_trees_of_the_newest_record_are_a_reported_rewind() {
    let (dev, mut tm, mut roots) = mem_tm(256, 16, SLOTS);
    commit_to(&mut tm, &mut roots, 6, true);
    drop(tm);
    // Commit 6's user tree root is its own block: damage it.
    poke(&dev, roots[0].block.0, 2000, &[0xee; 16]);
    let (mut tm, report) = open(&dev).unwrap();
    assert_eq!((report.chosen_seq, report.newest_valid_seq), (5, 6));
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].0, 6);
    assert!(
        report.skipped[0].1.contains("User0"),
        "{:?}",
        report.skipped
    );
    let rw = report.rewound().expect("a rewind");
    assert_eq!((rw.newest, rw.chosen), (6, 5));
    assert!(rw.to_string().contains("seq 6"), "{rw}");
    assert_eq!(tm.last.counters, [5, 0]);
    // The next commit numbers past the damaged record and keeps its slot.
    assert_eq!(tm.gen, 7);
    let rec = tm
        .commit(super::super::UserRoots {
            roots: tm.user_state().roots,
            counters: [7, 0],
        })
        .unwrap();
    assert_eq!((rec.seq, rec.slot), (7, 3));
    assert_eq!(seq_in(&dev, ring(6, 0)), 6);
}

#[test]
fn damage_shared_by_the_last_three_records_is_not_papered_over() {
    // Eight slots: the journal still holds records 1 to 6.
    let (dev, mut tm, mut roots) = mem_tm(256, 16, 8);
    commit_to(&mut tm, &mut roots, 2, true);
    // Commits 3 to 6 keep the same user trees.
    commit_to(&mut tm, &mut roots, 6, false);
    drop(tm);
    poke(&dev, roots[0].block.0, 2000, &[0xee; 16]);
    // Records 2 to 6 name the damaged root. Record 1 does not, but it is older than the
    // last three commits: blocks it references may have been reused since.
    match open(&dev) {
        Err(MetaError::NoValidRecord(why)) => assert!(why.contains("damaged"), "{why}"),
        Err(e) => panic!("wrong error {e}"),
        Ok((_, r)) => panic!("opened seq {}", r.chosen_seq),
    }
}

#[test]
fn an_older_record_opens_only_while_it_is_protected() {
    let (dev, mut tm, mut roots) = mem_tm(256, 16, SLOTS);
    commit_to(&mut tm, &mut roots, 6, true);
    drop(tm);
    for at in [4, 5, 6] {
        let (tm, report) = Tm::open_at(dev.clone(), 64, true, Some(at)).unwrap();
        assert_eq!((report.chosen_seq, tm.last.counters[0]), (at, at));
        assert_eq!(report.rewound(), None);
    }
    match Tm::open_at(dev.clone(), 64, true, Some(3)) {
        Err(MetaError::NoValidRecord(why)) => {
            assert!(why.contains("last three commits"), "{why}")
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened an unprotected state"),
    }
    assert!(matches!(
        Tm::open_at(dev, 64, true, Some(99)),
        Err(MetaError::NoValidRecord(_))
    ));
}

#[test]
fn a_label_of_another_pool_finds_no_record() {
    let (dev, mut tm, mut roots) = mem_tm(256, 16, SLOTS);
    commit_to(&mut tm, &mut roots, 3, true);
    drop(tm);
    // Substitute a label with another UUID (everything else equal).
    let mut l = tm_label(&dev);
    l.uuid = [0x42; 16];
    poke(&dev, 0, 0, &l.encode());
    match open(&dev) {
        Err(MetaError::NoValidRecord(_)) => {}
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened records of another pool"),
    }
}

fn tm_label(dev: &Arc<dyn BlockDev>) -> Label {
    Label::decode(&peek(dev, 0)).unwrap()
}
