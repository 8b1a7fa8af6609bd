//! The checker catches what it must: one damaged byte in a leaf, an internal node, a bitmap
//! page, the newest record, or every record yields a precise error or a correct fallback.

use std::sync::Arc;
use thinpool::check;
use thinpool::io::{BlockDev, MemDev};
use thinpool::meta::BLOCK_SIZE;
use thinpool::pool::{CreateOptions, OpenOptions, Pool};

const RING_SLOTS: u64 = 64;

struct Fixture {
    meta: Arc<dyn BlockDev>,
    data: Arc<dyn BlockDev>,
}

/// A pool whose volume tree has internal nodes (> 252 mappings) and a snapshot.
fn build() -> Fixture {
    let meta: Arc<dyn BlockDev> = Arc::new(MemDev::new(64 << 20).unwrap());
    let data: Arc<dyn BlockDev> = Arc::new(MemDev::new(64 << 20).unwrap());
    let mut o = CreateOptions::new(64 << 20);
    o.block_size = 4096;
    let mut p = Pool::create_on(meta.clone(), data.clone(), &o).unwrap();
    let a = p.create_volume("a", 64 << 20, false).unwrap();
    for i in 0..2000u64 {
        p.write(a, i * 3 * 4096 % (60 << 20), &[(i % 250) as u8 + 1; 4096])
            .unwrap();
    }
    p.commit().unwrap();
    p.snapshot("a", "snap", true).unwrap();
    p.write(a, 0, &[9u8; 4096]).unwrap();
    p.commit().unwrap();
    Fixture { meta, data }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

/// Blocks (after the journal) whose header matches `pred`.
fn blocks_where(meta: &dyn BlockDev, pred: impl Fn(&[u8]) -> bool) -> Vec<u64> {
    let mut buf = vec![0u8; BLOCK_SIZE];
    let first = 1 + 2 * RING_SLOTS;
    (first..meta.len() / BLOCK_SIZE as u64)
        .filter(|&b| {
            meta.read_at(&mut buf, b * BLOCK_SIZE as u64).unwrap();
            pred(&buf)
        })
        .collect()
}

fn flip(meta: &dyn BlockDev, block: u64, at: usize) -> Vec<u8> {
    let off = block * BLOCK_SIZE as u64;
    let mut orig = vec![0u8; BLOCK_SIZE];
    meta.read_at(&mut orig, off).unwrap();
    let mut bad = orig.clone();
    bad[at] ^= 0x10;
    meta.write_at(&bad, off).unwrap();
    orig
}

/// Damage one byte of each candidate in turn; every damage the checker sees must name the
/// block; at least one candidate must be live.
fn damage_each(f: &Fixture, candidates: Vec<u64>, at: usize, what: &str) {
    assert!(!candidates.is_empty(), "no {what} found");
    let mut detected = 0;
    for b in candidates {
        let orig = flip(f.meta.as_ref(), b, at);
        let r = check::check(f.meta.clone(), None);
        if !r.is_clean() {
            detected += 1;
            let named = r.errors().any(|e| e.block.map(|x| x.0) == Some(b));
            assert!(
                named,
                "{what} {b}: errors do not name the block: {:?}",
                r.errors().map(|e| e.to_string()).collect::<Vec<_>>()
            );
        }
        f.meta.write_at(&orig, b * BLOCK_SIZE as u64).unwrap();
    }
    assert!(detected > 0, "damaging every {what} went unnoticed");
    assert!(check::check(f.meta.clone(), None).is_clean());
}

const NODE: u32 = 0x7470_6e62;
const BITMAP: u32 = 0x7470_6d62;

#[test]
fn damaged_leaf_is_reported() {
    let f = build();
    let leaves = blocks_where(f.meta.as_ref(), |b| {
        u32_at(b, 4) == NODE && u32_at(b, 40) == 1 && u32_at(b, 56) == 3
    });
    damage_each(&f, leaves, 700, "mapping leaf");
}

#[test]
fn damaged_internal_node_is_reported() {
    let f = build();
    let internal = blocks_where(f.meta.as_ref(), |b| {
        u32_at(b, 4) == NODE && u32_at(b, 40) == 0 && u32_at(b, 56) == 3
    });
    damage_each(&f, internal, 64 + 8, "internal mapping node");
}

#[test]
fn damaged_bitmap_is_reported() {
    let f = build();
    let pages = blocks_where(f.meta.as_ref(), |b| u32_at(b, 4) == BITMAP);
    damage_each(&f, pages, 100, "bitmap page");
}

fn newest_slots(meta: &dyn BlockDev) -> (u64, Vec<u64>) {
    let mut buf = vec![0u8; BLOCK_SIZE];
    let mut best = (0u64, Vec::new());
    for b in 1..=2 * RING_SLOTS {
        meta.read_at(&mut buf, b * BLOCK_SIZE as u64).unwrap();
        if u32_at(&buf, 4) != 0x7470_7372 {
            continue;
        }
        let seq = u64::from_le_bytes(buf[64..72].try_into().unwrap());
        if seq > best.0 {
            best = (seq, vec![b]);
        } else if seq == best.0 {
            best.1.push(b);
        }
    }
    best
}

#[test]
fn damaged_newest_record_falls_back_to_the_previous_commit() {
    let f = build();
    let (seq, slots) = newest_slots(f.meta.as_ref());
    assert_eq!(slots.len(), 2, "the newest record is in both rings");
    for b in &slots {
        flip(f.meta.as_ref(), *b, 90);
    }
    let mut p = Pool::open_on(f.meta.clone(), f.data.clone(), &OpenOptions::default()).unwrap();
    assert_eq!(p.seq(), seq - 1, "open falls back to the previous record");
    // The previous commit is whole: it has the snapshot, and block 0 as it was before the
    // last commit's write.
    let a = p.volume_id("a").unwrap();
    let mut buf = vec![0u8; 4096];
    p.read(a, 0, &mut buf).unwrap();
    assert!(
        buf.iter().all(|&x| x == 1),
        "block 0 holds the data of seq {}",
        seq - 1
    );
    assert!(p.volume_id("snap").is_ok());
    drop(p);
    let r = check::check(f.meta.clone(), None);
    assert!(
        r.is_clean(),
        "{:?}",
        r.errors().map(|e| e.to_string()).collect::<Vec<_>>()
    );
    assert!(r
        .findings
        .iter()
        .any(|x| x.kind == "journal" && x.message.contains("invalid record")));
}

#[test]
fn one_damaged_ring_copy_is_harmless() {
    let f = build();
    let (seq, slots) = newest_slots(f.meta.as_ref());
    flip(f.meta.as_ref(), slots[0], 90);
    let p = Pool::open_on(f.meta.clone(), f.data.clone(), &OpenOptions::default()).unwrap();
    assert_eq!(
        p.seq(),
        seq,
        "the other ring's copy of the newest record is used"
    );
}

#[test]
fn every_record_damaged_is_a_clear_error() {
    let f = build();
    for b in 1..=2 * RING_SLOTS {
        flip(f.meta.as_ref(), b, 90);
    }
    let err = Pool::open_on(f.meta.clone(), f.data.clone(), &OpenOptions::default())
        .err()
        .expect("open must fail");
    assert!(
        err.to_string().contains("no usable superblock record"),
        "{err}"
    );
    let r = check::check(f.meta.clone(), None);
    assert!(!r.is_clean());
    assert!(r
        .errors()
        .any(|e| e.message.contains("no usable superblock record")));
}

#[test]
fn older_state_can_be_opened_read_only() {
    let f = build();
    let (seq, _) = newest_slots(f.meta.as_ref());
    let opts = OpenOptions {
        read_only: true,
        at_seq: Some(seq - 1),
        ..Default::default()
    };
    let mut p = Pool::open_on(f.meta.clone(), f.data.clone(), &opts).unwrap();
    assert_eq!(p.seq(), seq - 1);
    let a = p.volume_id("a").unwrap();
    let mut buf = vec![0u8; 4096];
    p.read(a, 0, &mut buf).unwrap();
    assert!(buf.iter().all(|&x| x == 1));
    assert!(
        p.write(a, 0, &[0u8; 10]).is_err(),
        "an older state is read-only"
    );
}
