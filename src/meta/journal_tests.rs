//! Unit tests of the journal's record format and slot scan (which slot open then picks is
//! tested in `txn/open_tests.rs`).

use super::*;
use crate::io::{BlockDev, MemDev};
use crate::meta::test_util::UUID;

fn record(seq: u64, ring_slots: u32) -> Record {
    let mut roots = [Root::default(); NR_ROOTS];
    for (i, r) in roots.iter_mut().enumerate() {
        *r = Root {
            r: BlockRef {
                block: MetaBlock(100 + i as u64),
                gen: seq.saturating_sub(i as u64),
            },
            crc: 0xdead_0000 | i as u32,
        };
    }
    Record {
        seq,
        slot: (seq % ring_slots as u64) as u32,
        flags: 0,
        data_blocks: 1000 + seq,
        meta_blocks: 256,
        counters: [seq * 3, seq * 5],
        data_allocated: 17,
        meta_allocated: 42,
        roots,
    }
}

/// Encode `rec` where commit writes it: its slot of ring A.
fn encoded(rec: &Record, ring_slots: u32) -> (MetaBlock, Vec<u8>) {
    let b = slot_blocks(ring_slots, rec.slot)[0];
    (b, rec.encode(&UUID, b))
}

fn expect_corrupt(r: Result<Record, MetaError>, what: &str) -> String {
    match r {
        Err(MetaError::Corrupt { reason, .. }) => {
            assert!(reason.contains(what), "{reason:?} should mention {what:?}");
            reason
        }
        other => panic!("expected corruption ({what}), got {other:?}"),
    }
}

#[test]
fn a_record_round_trips() {
    let rec = record(77, 8);
    let (b, buf) = encoded(&rec, 8);
    assert_eq!(Record::decode(&buf, &UUID, b, rec.slot).unwrap(), rec);
    assert_eq!(rec.root(RootId::MetaIndex), rec.roots[4]);
}

#[test]
fn slots_of_the_two_rings_follow_the_label() {
    assert_eq!(slot_blocks(4, 0), [MetaBlock(1), MetaBlock(5)]);
    assert_eq!(slot_blocks(4, 3), [MetaBlock(4), MetaBlock(8)]);
    assert_eq!(slot_blocks(64, 63), [MetaBlock(64), MetaBlock(128)]);
}

#[test]
fn a_damaged_or_misplaced_record_is_rejected_each_for_its_own_reason() {
    let rec = record(9, 4);
    let (b, good) = encoded(&rec, 4);
    let mut reasons = Vec::new();

    // Torn write: the payload changed after sealing.
    let mut torn = good.clone();
    torn[2000] ^= 0x40;
    reasons.push(expect_corrupt(
        Record::decode(&torn, &UUID, b, rec.slot),
        "checksum",
    ));
    // Half-written block: the tail is zeros.
    let mut half = good.clone();
    half[BLOCK_SIZE / 2..].fill(0);
    half[100] ^= 1;
    expect_corrupt(Record::decode(&half, &UUID, b, rec.slot), "checksum");
    // A record of another pool.
    reasons.push(expect_corrupt(
        Record::decode(&good, &[1; 16], b, rec.slot),
        "UUID",
    ));
    // A record read from another block (misdirected write).
    reasons.push(expect_corrupt(
        Record::decode(&good, &UUID, MetaBlock(b.0 + 1), rec.slot),
        "misdirected",
    ));
    // A record that says it belongs to another slot.
    reasons.push(expect_corrupt(
        Record::decode(&good, &UUID, b, rec.slot + 1),
        "found in slot",
    ));
    // A well-sealed block of another type.
    let mut node = good.clone();
    block::put_u32(&mut node, 4, BlockType::Node as u32);
    block::seal(&mut node);
    reasons.push(expect_corrupt(
        Record::decode(&node, &UUID, b, rec.slot),
        "expected a Record",
    ));
    // Header generation and seq disagree, sealed as if a buggy writer made it.
    let mut skew = good.clone();
    block::set_generation(&mut skew, 8);
    block::seal(&mut skew);
    reasons.push(expect_corrupt(
        Record::decode(&skew, &UUID, b, rec.slot),
        "generation",
    ));
    // A sequence number beyond the valid range.
    let big = Record {
        seq: MAX_SEQ + 4,
        slot: ((MAX_SEQ + 4) % 4) as u32,
        ..rec.clone()
    };
    let (bb, buf) = encoded(&big, 4);
    reasons.push(expect_corrupt(
        Record::decode(&buf, &UUID, bb, big.slot),
        "out of range",
    ));
    // All zeros.
    reasons.push(expect_corrupt(
        Record::decode(&vec![0u8; BLOCK_SIZE], &UUID, b, rec.slot),
        "zeros",
    ));
    let mut distinct = reasons.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), reasons.len(), "{reasons:#?}");
    // MAX_SEQ itself is valid.
    let top = Record {
        seq: MAX_SEQ,
        slot: (MAX_SEQ % 4) as u32,
        ..rec
    };
    let (tb, buf) = encoded(&top, 4);
    assert_eq!(
        Record::decode(&buf, &UUID, tb, top.slot).unwrap().seq,
        MAX_SEQ
    );
}

#[test]
fn scan_reports_every_slot_of_both_rings() {
    let n = 4u32;
    let dev = MemDev::new(64 * BLOCK_SIZE as u64).unwrap();
    // Slot 1: seq 5 in both rings; slot 2: seq 2 in ring A, torn in ring B; slot 3: seq 3
    // in ring A only; slot 0: empty.
    for (seq, rings) in [(5u64, [true, true]), (2, [true, true]), (3, [true, false])] {
        let rec = record(seq, n);
        for (ring, b) in slot_blocks(n, rec.slot).into_iter().enumerate() {
            if rings[ring] {
                dev.write_at(&rec.encode(&UUID, b), b.0 * BLOCK_SIZE as u64)
                    .unwrap();
            }
        }
    }
    let torn_at = slot_blocks(n, 2)[1].0 * BLOCK_SIZE as u64 + 300;
    dev.write_at(&[0xff; 8], torn_at).unwrap();

    let slots = scan(&dev, &UUID, n).unwrap();
    assert_eq!(slots.len(), 8);
    let summary: Vec<(u8, u32, u64, Result<u64, String>)> = slots
        .iter()
        .map(|s| {
            let r = match &s.result {
                Ok(rec) => Ok(rec.seq),
                Err(e) if e == "empty" => Err("empty".into()),
                Err(e) if e.contains("checksum") => Err("torn".into()),
                Err(e) => Err(e.clone()),
            };
            (s.ring, s.slot, s.block.0, r)
        })
        .collect();
    let empty = || Err("empty".to_string());
    assert_eq!(
        summary,
        vec![
            (0, 0, 1, empty()),
            (0, 1, 2, Ok(5)),
            (0, 2, 3, Ok(2)),
            (0, 3, 4, Ok(3)),
            (1, 0, 5, empty()),
            (1, 1, 6, Ok(5)),
            (1, 2, 7, Err("torn".to_string())),
            (1, 3, 8, empty()),
        ]
    );
    // Another pool's scan of the same device finds no valid record, and says why.
    let other = scan(&dev, &[3; 16], n).unwrap();
    assert!(other.iter().all(|s| s.result.is_err()));
    assert!(other[1].result.as_ref().unwrap_err().contains("UUID"));
}
