//! More unit tests of the block manager (the CLOCK itself is tested in `cache.rs`): the
//! capacity bound on reads, which victim goes, that a dirty block reaches the device before
//! it leaves and reads back as written, clean victims cost no write, abort, and the checks
//! on what is read.

use super::*;
use crate::io::hooked::{Hooked, Hooks};
use crate::io::MemDev;
use std::sync::atomic::{AtomicBool, Ordering};

const UUID: [u8; 16] = [7; 16];

/// A node block `b` whose byte 100 and 4000 hold `tag` (unsealed, as the tree writes it).
fn node(b: u64, tag: u8) -> Vec<u8> {
    let mut buf = vec![0u8; BLOCK_SIZE];
    block::init_header(&mut buf, BlockType::Node, MetaBlock(b), 1, &UUID);
    buf[100] = tag;
    buf[4000] = tag;
    buf
}

fn mem() -> Arc<dyn BlockDev> {
    Arc::new(MemDev::new(1024 * BLOCK_SIZE as u64).unwrap())
}

/// Blocks `0..n` on the device, sealed, tagged with their number.
fn on_disk(dev: &Arc<dyn BlockDev>, n: u64) {
    for b in 0..n {
        let mut buf = node(b, b as u8);
        block::seal(&mut buf);
        dev.write_at(&buf, b * BLOCK_SIZE as u64).unwrap();
    }
}

fn resident(bm: &BlockManager, b: u64) -> bool {
    bm.cache.peek(b).is_some()
}

#[test]
fn reads_stay_within_capacity_and_clean_victims_are_not_written() {
    let dev = mem();
    on_disk(&dev, 300);
    // A capacity below the floor is raised to 64 blocks.
    let mut bm = BlockManager::new(dev, UUID, 1024, 10);
    for b in 0..300u64 {
        let blk = bm.read(MetaBlock(b), BlockType::Node).unwrap();
        assert_eq!(blk[100], b as u8);
        assert!(bm.resident() <= 64, "{} resident", bm.resident());
    }
    assert_eq!(bm.resident(), 64);
    assert_eq!(bm.stats.reads, 300);
    assert_eq!(bm.stats.evictions, 300 - 64);
    assert_eq!(bm.stats.writes, 0, "clean blocks leave without a write");
    assert_eq!(bm.dirty_count(), 0);
    // A resident block is a hit; an evicted one is read again, with the same bytes.
    let hits = bm.stats.hits;
    assert_eq!(bm.read(MetaBlock(299), BlockType::Node).unwrap()[4000], 43);
    assert_eq!(bm.stats.hits, hits + 1);
    assert_eq!(bm.read(MetaBlock(0), BlockType::Node).unwrap()[4000], 0);
    assert_eq!(bm.stats.reads, 301);
}

#[test]
fn the_victim_is_the_first_block_not_used_since_the_hand_passed() {
    let dev = mem();
    on_disk(&dev, 100);
    let mut bm = BlockManager::new(dev, UUID, 1024, 64);
    for b in 0..64u64 {
        bm.read(MetaBlock(b), BlockType::Node).unwrap();
    }
    // Block 0 is used again: the next miss takes block 1, not the oldest block 0.
    bm.read(MetaBlock(0), BlockType::Node).unwrap();
    bm.read(MetaBlock(64), BlockType::Node).unwrap();
    assert!(resident(&bm, 0));
    assert!(!resident(&bm, 1));
    // The hand moved on: block 2 goes next, then 4 (3 was used through `read_ref`).
    bm.read(MetaBlock(65), BlockType::Node).unwrap();
    assert!(!resident(&bm, 2));
    bm.read_ref(MetaBlock(3), BlockType::Node).unwrap();
    bm.read(MetaBlock(66), BlockType::Node).unwrap();
    assert!(resident(&bm, 3));
    assert!(!resident(&bm, 4));
    assert_eq!(bm.resident(), 64);
    // `read_raw` does not count as a use (the checker's reads must not keep blocks).
    bm.read_raw(MetaBlock(5)).unwrap();
    bm.read(MetaBlock(67), BlockType::Node).unwrap();
    assert!(!resident(&bm, 5));
}

#[test]
fn a_dirty_block_is_written_before_it_is_evicted_and_reads_back_as_changed() {
    let dev = mem();
    on_disk(&dev, 200);
    let mut bm = BlockManager::new(dev.clone(), UUID, 1024, 64);
    // Change block 7 in place (the block is clean on disk first).
    bm.get_mut(MetaBlock(7), BlockType::Node).unwrap()[100] = 0xc7;
    assert_eq!(bm.dirty_count(), 1);
    // Push it out with clean reads (enough for the hand to pass it twice: it was used).
    for b in 8..200u64 {
        bm.read(MetaBlock(b), BlockType::Node).unwrap();
    }
    assert!(!resident(&bm, 7));
    assert_eq!(bm.stats.writes, 1, "only the dirty victim was written");
    assert_eq!(bm.dirty_count(), 0);
    // The device has the change, sealed: a cold read verifies and returns it.
    let mut raw = vec![0u8; BLOCK_SIZE];
    dev.read_at(&mut raw, 7 * BLOCK_SIZE as u64).unwrap();
    assert_eq!(raw[100], 0xc7);
    block::verify(&raw, Some(BlockType::Node), MetaBlock(7), &UUID).unwrap();
    let blk = bm.read(MetaBlock(7), BlockType::Node).unwrap();
    assert_eq!((blk[100], blk[4000]), (0xc7, 7));
}

#[test]
fn new_blocks_evicted_early_read_back_with_their_content() {
    let dev = mem();
    let mut bm = BlockManager::new(dev, UUID, 1024, 64);
    for b in 0..500u64 {
        bm.put_new(MetaBlock(b), node(b, (b * 7) as u8)).unwrap();
        assert!(bm.resident() <= 64);
    }
    assert_eq!(bm.stats.writes, 500 - 64);
    for b in (0..500u64).rev() {
        let blk = bm.read(MetaBlock(b), BlockType::Node).unwrap();
        assert_eq!(
            (blk[100], blk[4000]),
            ((b * 7) as u8, (b * 7) as u8),
            "block {b}"
        );
        assert_eq!(block::block_number(&blk), b);
    }
    // Every block was dirty once and is written exactly once (some at eviction, the rest
    // by write_dirty), whatever the order they were evicted and read back in.
    bm.write_dirty().unwrap();
    assert_eq!(bm.dirty_count(), 0);
    assert_eq!(bm.stats.writes, 500);
}

#[test]
fn write_dirty_writes_each_block_once_and_the_cached_copy_matches_the_disk() {
    let dev = mem();
    let mut bm = BlockManager::new(dev.clone(), UUID, 1024, 64);
    for b in 10..20u64 {
        bm.put_new(MetaBlock(b), node(b, b as u8)).unwrap();
    }
    bm.write_dirty().unwrap();
    assert_eq!((bm.stats.writes, bm.dirty_count()), (10, 0));
    bm.write_dirty().unwrap();
    assert_eq!(bm.stats.writes, 10, "nothing is dirty any more");
    for b in 10..20u64 {
        let mut raw = vec![0u8; BLOCK_SIZE];
        dev.read_at(&mut raw, b * BLOCK_SIZE as u64).unwrap();
        let crc = bm.crc_of(MetaBlock(b), BlockType::Node).unwrap();
        assert_eq!(block::stored_crc(&raw), crc);
        assert_eq!(bm.read_raw(MetaBlock(b)).unwrap(), raw);
    }
}

#[test]
fn discarding_dirty_blocks_returns_to_what_the_disk_has() {
    let dev = mem();
    on_disk(&dev, 10);
    let mut bm = BlockManager::new(dev, UUID, 1024, 64);
    bm.get_mut(MetaBlock(3), BlockType::Node).unwrap()[100] = 0xee;
    bm.put_new(MetaBlock(50), node(50, 1)).unwrap();
    bm.read(MetaBlock(4), BlockType::Node).unwrap();
    assert_eq!(bm.dirty_count(), 2);
    bm.discard_dirty();
    assert_eq!(bm.dirty_count(), 0);
    assert!(resident(&bm, 4), "clean blocks stay cached");
    assert_eq!(bm.read(MetaBlock(3), BlockType::Node).unwrap()[100], 3);
    // Block 50 never reached the disk.
    let e = bm.read(MetaBlock(50), BlockType::Node).unwrap_err();
    assert!(e.to_string().contains("all zeros"), "{e}");
    bm.write_dirty().unwrap();
    assert_eq!(bm.stats.writes, 0);
}

#[test]
fn reads_check_type_range_and_checksum() {
    let dev = mem();
    on_disk(&dev, 4);
    let mut bm = BlockManager::new(dev.clone(), UUID, 100, 64);
    // Wrong type, from disk and from the cache.
    assert!(matches!(
        bm.read(MetaBlock(1), BlockType::Bitmap),
        Err(MetaError::Corrupt { .. })
    ));
    bm.read(MetaBlock(1), BlockType::Node).unwrap();
    assert!(bm.read(MetaBlock(1), BlockType::Bitmap).is_err());
    assert!(bm.read_ref(MetaBlock(1), BlockType::Bitmap).is_err());
    // Beyond the device.
    for e in [
        bm.read(MetaBlock(100), BlockType::Node).unwrap_err(),
        bm.read_raw(MetaBlock(100)).unwrap_err(),
        bm.put_new(MetaBlock(100), node(100, 0)).unwrap_err(),
        bm.write_direct(MetaBlock(u64::MAX), &mut node(0, 0))
            .unwrap_err(),
    ] {
        assert!(e.to_string().contains("beyond"), "{e}");
    }
    // A damaged block on disk.
    dev.write_at(&[0x55], 2 * BLOCK_SIZE as u64 + 999).unwrap();
    let e = bm.read(MetaBlock(2), BlockType::Node).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    assert!(
        !resident(&bm, 2),
        "a block that fails verification is not cached"
    );
    // A block of another pool.
    let other = BlockManager::new(dev, [8; 16], 100, 64).read(MetaBlock(0), BlockType::Node);
    assert!(other.unwrap_err().to_string().contains("UUID"));
}

/// Writes fail while `fail` is set.
struct FailingWrites {
    fail: AtomicBool,
}

impl Hooks for FailingWrites {
    fn before_write(&self, _offset: u64, _len: usize) -> std::io::Result<()> {
        if self.fail.load(Ordering::Relaxed) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

#[test]
fn a_failed_write_of_a_dirty_victim_is_an_io_error() {
    let dev = Arc::new(Hooked::new(
        MemDev::new(1024 * BLOCK_SIZE as u64).unwrap(),
        FailingWrites {
            fail: AtomicBool::new(false),
        },
    ));
    let mut bm = BlockManager::new(dev.clone(), UUID, 1024, 64);
    for b in 0..64u64 {
        bm.put_new(MetaBlock(b), node(b, 1)).unwrap();
    }
    dev.fail.store(true, Ordering::Relaxed);
    match bm.put_new(MetaBlock(64), node(64, 1)) {
        Err(MetaError::Io { op, block, .. }) => {
            assert_eq!((op, block.is_some_and(|b| b.0 < 64)), ("write", true))
        }
        other => panic!("expected a write error, got {other:?}"),
    }
    assert!(bm.write_dirty().is_err());
}
