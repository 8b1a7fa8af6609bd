//! Block 0: the immutable label. Written once when the pool is created (then the file and
//! its directory are synced); nothing mutable ever lives here.
//!
//! Layout after the common header: `64..72` magic `THINPOOL`; `72..76` format version;
//! `76..80` metadata block size; `80..88` data block size in bytes; `88..92` journal slots per
//! ring (N); `96..104` metadata device size in blocks at creation; `104..112` creation time
//! (seconds since the epoch).

use super::block::{self, get_u32, get_u64, put_u32, put_u64, BlockType};
use super::{MetaBlock, MetaError, BLOCK_SIZE};

#[cfg(test)]
#[path = "label_tests.rs"]
mod tests;

pub const MAGIC: &[u8; 8] = b"THINPOOL";

// Byte offsets of the label's fields (the layout above).
const MAGIC_AT: usize = 64;
const VERSION: usize = 72;
const META_BLOCK_SIZE: usize = 76;
const DATA_BLOCK_SIZE: usize = 80;
const RING_SLOTS: usize = 88;
const META_BLOCKS: usize = 96;
const CREATED: usize = 104;
/// On-disk format version written by this code.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub uuid: [u8; 16],
    pub version: u32,
    pub data_block_size: u64,
    pub ring_slots: u32,
    pub meta_blocks: u64,
    pub created: u64,
}

impl Label {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; BLOCK_SIZE];
        block::init_header(&mut buf, BlockType::Label, MetaBlock(0), 0, &self.uuid);
        buf[MAGIC_AT..MAGIC_AT + 8].copy_from_slice(MAGIC);
        put_u32(&mut buf, VERSION, self.version);
        put_u32(&mut buf, META_BLOCK_SIZE, BLOCK_SIZE as u32);
        put_u64(&mut buf, DATA_BLOCK_SIZE, self.data_block_size);
        put_u32(&mut buf, RING_SLOTS, self.ring_slots);
        put_u64(&mut buf, META_BLOCKS, self.meta_blocks);
        put_u64(&mut buf, CREATED, self.created);
        block::seal(&mut buf);
        buf
    }

    pub fn decode(buf: &[u8]) -> Result<Label, MetaError> {
        let bad = |s: &str| MetaError::BadLabel(s.to_string());
        if buf.len() < BLOCK_SIZE {
            return Err(bad("metadata file is shorter than one block (truncated?)"));
        }
        if &buf[MAGIC_AT..MAGIC_AT + 8] != MAGIC {
            return Err(bad(
                "no thinpool magic in block 0: not a thinpool metadata file",
            ));
        }
        if block::block_type(buf) != Some(BlockType::Label)
            || block::compute_crc(BlockType::Label, buf) != block::stored_crc(buf)
        {
            return Err(bad("label checksum mismatch: block 0 is damaged"));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&buf[block::UUID..block::UUID + 16]);
        let version = get_u32(buf, VERSION);
        if version != FORMAT_VERSION {
            return Err(MetaError::BadLabel(format!(
                "format version {version} is not supported (this build reads version {FORMAT_VERSION})"
            )));
        }
        if get_u32(buf, META_BLOCK_SIZE) as usize != BLOCK_SIZE {
            return Err(bad("unsupported metadata block size"));
        }
        let label = Label {
            uuid,
            version,
            data_block_size: get_u64(buf, DATA_BLOCK_SIZE),
            ring_slots: get_u32(buf, RING_SLOTS),
            meta_blocks: get_u64(buf, META_BLOCKS),
            created: get_u64(buf, CREATED),
        };
        let bs = label.data_block_size;
        if !bs.is_power_of_two() || !(4096..=1 << 30).contains(&bs) {
            return Err(bad(
                "data block size is not a power of two between 4 KiB and 1 GiB",
            ));
        }
        if label.ring_slots == 0 || label.ring_slots > 1024 {
            return Err(bad("journal ring size out of range"));
        }
        Ok(label)
    }

    /// First block after the label and the two journal rings.
    pub fn first_free_block(&self) -> u64 {
        1 + 2 * self.ring_slots as u64
    }
}
