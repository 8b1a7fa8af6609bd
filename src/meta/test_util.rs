//! Helpers for the unit tests of the metadata layer: a transaction manager on a memory device.

use super::btree::{Btree, TreeKind, ValueRefs};
use super::journal::BlockRef;
use super::label::{Label, FORMAT_VERSION};
use super::txn::Tm;
use super::BLOCK_SIZE;
use crate::io::{BlockDev, MemDev};
use std::sync::Arc;

/// The pool UUID every test device carries.
pub const UUID: [u8; 16] = *b"unit-test-uuid-0";

/// A user tree kind for tests: `u64 -> u64`, no references.
pub const PLAIN: TreeKind = TreeKind {
    id: 90,
    name: "test plain",
    value_size: 8,
    refs: ValueRefs::None,
};

pub fn label(meta_blocks: u64, ring_slots: u32) -> Label {
    Label {
        uuid: UUID,
        version: FORMAT_VERSION,
        data_block_size: 4096,
        ring_slots,
        meta_blocks,
        created: 1_700_000_000,
    }
}

/// A new transaction manager on a memory device, with two empty [`PLAIN`] user trees and
/// its first commit (seq 1) done. Returns the device (to reopen or damage it), the manager
/// and the two user roots.
pub fn mem_tm(
    meta_blocks: u64,
    data_blocks: u64,
    ring_slots: u32,
) -> (Arc<dyn BlockDev>, Tm, [BlockRef; 2]) {
    let dev: Arc<dyn BlockDev> = Arc::new(MemDev::new(meta_blocks * BLOCK_SIZE as u64).unwrap());
    let mut tm = Tm::create(dev.clone(), label(meta_blocks, ring_slots), data_blocks, 64).unwrap();
    let roots = [
        tm.btree_empty(PLAIN).unwrap(),
        tm.btree_empty(PLAIN).unwrap(),
    ];
    let rec = tm
        .commit(crate::meta::txn::UserRoots {
            roots,
            counters: [0, 0],
        })
        .unwrap();
    assert_eq!(rec.seq, 1);
    (dev, tm, roots)
}

/// Reopen a device written by [`mem_tm`] (read-write).
pub fn reopen(dev: &Arc<dyn BlockDev>) -> Tm {
    Tm::open(dev.clone(), 64, false).unwrap().0
}

/// Overwrite bytes of one metadata block on the device, bypassing every cache.
pub fn poke(dev: &Arc<dyn BlockDev>, block: u64, offset: usize, bytes: &[u8]) {
    dev.write_at(bytes, block * BLOCK_SIZE as u64 + offset as u64)
        .unwrap();
}

/// One metadata block as the device holds it.
pub fn peek(dev: &Arc<dyn BlockDev>, block: u64) -> Vec<u8> {
    let mut buf = vec![0u8; BLOCK_SIZE];
    dev.read_at(&mut buf, block * BLOCK_SIZE as u64).unwrap();
    buf
}
