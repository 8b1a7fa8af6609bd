//! The superblock journal: two rings of N slots (blocks `1..=N` and `N+1..=2N`). Commit `seq`
//! writes its record to slot `seq % N` of both rings; no slot holding the newest record is
//! ever overwritten, so a torn record write leaves the previous record intact.
//!
//! Record layout after the common header (generation field = `seq`):
//! `64..72` seq; `72..76` slot index; `76..80` flags; `80..88` data blocks total;
//! `88..96` metadata blocks total; `96..112` two pool counters; `112..120` data blocks
//! allocated; `120..128` metadata blocks allocated; `128..` [`NR_ROOTS`] roots of 24 bytes each
//! (`block u64, generation u64, crc32 u32, pad u32`), in the order of [`RootId`].

use super::block::{self, get_u32, get_u64, put_u32, put_u64, BlockType};
use super::{MetaBlock, MetaError, BLOCK_SIZE};

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;

/// A pointer to a metadata block with the generation it must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockRef {
    pub block: MetaBlock,
    pub gen: u64,
}

/// A [`BlockRef`] as the 16 bytes it takes in a node value or a record: block, generation.
pub fn encode_ref(r: BlockRef) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&r.block.0.to_le_bytes());
    b[8..].copy_from_slice(&r.gen.to_le_bytes());
    b
}
pub fn decode_ref(v: &[u8]) -> BlockRef {
    BlockRef {
        block: MetaBlock(get_u64(v, 0)),
        gen: get_u64(v, 8),
    }
}

/// A root in a record: pointer plus the checksum its block must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Root {
    pub r: BlockRef,
    pub crc: u32,
}

/// The roots a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum RootId {
    /// First user tree (the pool's device details tree).
    User0 = 0,
    /// Second user tree (the pool's top-level mapping tree).
    User1 = 1,
    DataIndex = 2,
    DataOverflow = 3,
    MetaIndex = 4,
    MetaOverflow = 5,
    /// Data space map index of the previous commit (allocation protection).
    PrevDataIndex = 6,
    /// Metadata space map index of the previous commit.
    PrevMetaIndex = 7,
}
pub const NR_ROOTS: usize = 8;
/// Highest sequence number a valid record has: far beyond any real pool (2^62 commits), and
/// far enough below `u64::MAX` that the next commit's number cannot overflow.
pub const MAX_SEQ: u64 = 1 << 62;
// Byte offsets of a record's fields (docs/format.md, "Blocks 1..=2N: the superblock journal").
const SEQ: usize = 64;
const SLOT: usize = 72;
const FLAGS: usize = 76;
const DATA_BLOCKS: usize = 80;
const META_BLOCKS: usize = 88;
const COUNTER0: usize = 96;
const COUNTER1: usize = 104;
const DATA_ALLOCATED: usize = 112;
const META_ALLOCATED: usize = 120;
/// The roots follow, `ROOT_SIZE` bytes each: block, generation, crc32 of the root node.
const ROOTS_OFF: usize = 128;
const ROOT_SIZE: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub slot: u32,
    pub flags: u32,
    pub data_blocks: u64,
    pub meta_blocks: u64,
    pub counters: [u64; 2],
    pub data_allocated: u64,
    pub meta_allocated: u64,
    pub roots: [Root; NR_ROOTS],
}

impl Record {
    pub fn root(&self, id: RootId) -> Root {
        self.roots[id as usize]
    }

    pub fn encode(&self, uuid: &[u8; 16], block: MetaBlock) -> Vec<u8> {
        let mut buf = vec![0u8; BLOCK_SIZE];
        block::init_header(&mut buf, BlockType::Record, block, self.seq, uuid);
        put_u64(&mut buf, SEQ, self.seq);
        put_u32(&mut buf, SLOT, self.slot);
        put_u32(&mut buf, FLAGS, self.flags);
        put_u64(&mut buf, DATA_BLOCKS, self.data_blocks);
        put_u64(&mut buf, META_BLOCKS, self.meta_blocks);
        put_u64(&mut buf, COUNTER0, self.counters[0]);
        put_u64(&mut buf, COUNTER1, self.counters[1]);
        put_u64(&mut buf, DATA_ALLOCATED, self.data_allocated);
        put_u64(&mut buf, META_ALLOCATED, self.meta_allocated);
        for (i, r) in self.roots.iter().enumerate() {
            let o = ROOTS_OFF + i * ROOT_SIZE;
            put_u64(&mut buf, o, r.r.block.0);
            put_u64(&mut buf, o + 8, r.r.gen);
            put_u32(&mut buf, o + 16, r.crc);
        }
        block::seal(&mut buf);
        buf
    }

    /// Decode a slot; `None` reason strings say why a slot is not a valid record.
    pub fn decode(
        buf: &[u8],
        uuid: &[u8; 16],
        block: MetaBlock,
        slot: u32,
    ) -> Result<Record, MetaError> {
        block::verify(buf, Some(BlockType::Record), block, uuid)?;
        let mut roots = [Root::default(); NR_ROOTS];
        for (i, r) in roots.iter_mut().enumerate() {
            let o = ROOTS_OFF + i * ROOT_SIZE;
            *r = Root {
                r: BlockRef {
                    block: MetaBlock(get_u64(buf, o)),
                    gen: get_u64(buf, o + 8),
                },
                crc: get_u32(buf, o + 16),
            };
        }
        let rec = Record {
            seq: get_u64(buf, SEQ),
            slot: get_u32(buf, SLOT),
            flags: get_u32(buf, FLAGS),
            data_blocks: get_u64(buf, DATA_BLOCKS),
            meta_blocks: get_u64(buf, META_BLOCKS),
            counters: [get_u64(buf, COUNTER0), get_u64(buf, COUNTER1)],
            data_allocated: get_u64(buf, DATA_ALLOCATED),
            meta_allocated: get_u64(buf, META_ALLOCATED),
            roots,
        };
        if rec.slot != slot {
            return Err(MetaError::corrupt(
                block,
                format!("record for slot {} found in slot {slot}", rec.slot),
            ));
        }
        if rec.seq > MAX_SEQ {
            return Err(MetaError::corrupt(
                block,
                format!("record sequence number {} is out of range", rec.seq),
            ));
        }
        if block::generation(buf) != rec.seq {
            return Err(MetaError::corrupt(
                block,
                "record generation differs from its seq",
            ));
        }
        Ok(rec)
    }
}

/// Block numbers of slot `slot` in ring A and ring B.
pub fn slot_blocks(ring_slots: u32, slot: u32) -> [MetaBlock; 2] {
    [
        MetaBlock(1 + slot as u64),
        MetaBlock(1 + ring_slots as u64 + slot as u64),
    ]
}

/// What a scan of the journal found in one slot.
#[derive(Debug, Clone)]
pub struct SlotScan {
    pub ring: u8,
    pub slot: u32,
    pub block: MetaBlock,
    pub result: Result<Record, String>,
}

/// Read every slot of both rings.
pub fn scan(
    dev: &dyn crate::io::BlockDev,
    uuid: &[u8; 16],
    ring_slots: u32,
) -> Result<Vec<SlotScan>, MetaError> {
    let n = ring_slots as usize;
    let mut buf = vec![0u8; 2 * n * BLOCK_SIZE];
    dev.read_at(&mut buf, BLOCK_SIZE as u64)
        .map_err(|e| MetaError::io("read journal", MetaBlock(1), e))?;
    let mut out = Vec::with_capacity(2 * n);
    for i in 0..2 * n {
        let slot = (i % n) as u32;
        let ring = (i / n) as u8;
        let block = MetaBlock(1 + i as u64);
        let b = &buf[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE];
        let result = if b.iter().all(|&x| x == 0) {
            Err("empty".to_string())
        } else {
            Record::decode(b, uuid, block, slot).map_err(|e| e.to_string())
        };
        out.push(SlotScan {
            ring,
            slot,
            block,
            result,
        });
    }
    Ok(out)
}
