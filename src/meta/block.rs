//! The 64-byte header every 4 KiB metadata block carries, and its type-salted checksum.
//!
//! Layout (little-endian): `0..4` crc32 of bytes `4..4096`, seeded with the block type's salt;
//! `4..8` block type; `8..16` the block's own number (catches misdirected writes); `16..24`
//! generation (the commit `seq` that wrote it); `24..40` pool UUID; `40..64` type-specific.
//! Because the salt differs per type, a block's type can be recovered from its bytes alone.

use super::{MetaBlock, MetaError, BLOCK_SIZE};

/// Size of the common header.
pub const HEADER_SIZE: usize = 64;

// Byte offsets of the header's fields (the layout above).
const CRC: usize = 0;
pub(crate) const TYPE: usize = 4;
const NUMBER: usize = 8;
const GENERATION: usize = 16;
/// The pool UUID, `UUID..UUID + 16`.
pub const UUID: usize = 24;
/// Where a block's type-specific header fields begin.
pub const TYPE_SPECIFIC: usize = 40;

/// Kinds of metadata block. The value is stored at offset 4 and salts the checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum BlockType {
    Label = 0x7470_6c61,  // "alpt"
    Record = 0x7470_7372, // "rspt"
    Node = 0x7470_6e62,   // "bnpt"
    Bitmap = 0x7470_6d62, // "bmpt"
}

impl BlockType {
    pub fn from_u32(v: u32) -> Option<BlockType> {
        [
            BlockType::Label,
            BlockType::Record,
            BlockType::Node,
            BlockType::Bitmap,
        ]
        .into_iter()
        .find(|t| *t as u32 == v)
    }

    fn salt(self) -> u32 {
        // Distinct odd constants so equal payloads of different types never share a crc.
        match self {
            BlockType::Label => 0x1d3f_0a01,
            BlockType::Record => 0x5a17_c0d3,
            BlockType::Node => 0x0b7e_e5a1,
            BlockType::Bitmap => 0x6b17_3a9d,
        }
    }
}

pub fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
pub fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Checksum of a block's contents as its type defines it.
pub fn compute_crc(ty: BlockType, buf: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(ty.salt());
    h.update(&buf[TYPE..BLOCK_SIZE]);
    h.finalize()
}

/// Start a fresh block of `ty` in `buf`: zero it and fill in the header (crc is set at write).
pub fn init_header(buf: &mut [u8], ty: BlockType, block: MetaBlock, gen: u64, uuid: &[u8; 16]) {
    buf.fill(0);
    put_u32(buf, TYPE, ty as u32);
    put_u64(buf, NUMBER, block.0);
    put_u64(buf, GENERATION, gen);
    buf[UUID..UUID + 16].copy_from_slice(uuid);
}

pub fn block_type(buf: &[u8]) -> Option<BlockType> {
    BlockType::from_u32(raw_type(buf))
}
/// The type field as stored (`BlockType as u32` when valid).
#[inline]
pub fn raw_type(buf: &[u8]) -> u32 {
    get_u32(buf, TYPE)
}
pub fn block_number(buf: &[u8]) -> u64 {
    get_u64(buf, NUMBER)
}
pub fn generation(buf: &[u8]) -> u64 {
    get_u64(buf, GENERATION)
}
pub fn set_generation(buf: &mut [u8], gen: u64) {
    put_u64(buf, GENERATION, gen)
}
pub fn set_block_number(buf: &mut [u8], b: MetaBlock) {
    put_u64(buf, NUMBER, b.0)
}
pub fn stored_crc(buf: &[u8]) -> u32 {
    get_u32(buf, CRC)
}

/// Seal a block before it goes to disk: compute and store its checksum.
pub fn seal(buf: &mut [u8]) {
    if let Some(ty) = block_type(buf) {
        let crc = compute_crc(ty, buf);
        put_u32(buf, CRC, crc);
    }
}

/// Verify a block read from disk: type, checksum, own number, pool UUID.
pub fn verify(
    buf: &[u8],
    expect: Option<BlockType>,
    block: MetaBlock,
    uuid: &[u8; 16],
) -> Result<BlockType, MetaError> {
    let corrupt = |reason: String| MetaError::corrupt(block, reason);
    let ty = block_type(buf).ok_or_else(|| {
        if buf.iter().all(|&b| b == 0) {
            corrupt("block is all zeros (never written, or lost)".into())
        } else {
            corrupt(format!("unknown block type {:#x}", raw_type(buf)))
        }
    })?;
    if let Some(e) = expect {
        if e != ty {
            return Err(corrupt(format!("expected a {e:?} block, found {ty:?}")));
        }
    }
    let crc = compute_crc(ty, buf);
    if crc != stored_crc(buf) {
        return Err(corrupt(format!(
            "checksum mismatch (stored {:#010x}, computed {crc:#010x})",
            stored_crc(buf)
        )));
    }
    if block_number(buf) != block.0 {
        return Err(corrupt(format!(
            "block claims to be block {} (misdirected write)",
            block_number(buf)
        )));
    }
    if &buf[24..40] != uuid {
        return Err(corrupt(
            "block belongs to another pool (UUID mismatch)".into(),
        ));
    }
    Ok(ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_verify_catch_damage() {
        let uuid = [7u8; 16];
        let mut buf = vec![0u8; BLOCK_SIZE];
        init_header(&mut buf, BlockType::Node, MetaBlock(42), 3, &uuid);
        buf[100] = 9;
        seal(&mut buf);
        assert_eq!(
            verify(&buf, Some(BlockType::Node), MetaBlock(42), &uuid).unwrap(),
            BlockType::Node
        );
        assert!(verify(&buf, Some(BlockType::Bitmap), MetaBlock(42), &uuid).is_err());
        assert!(verify(&buf, None, MetaBlock(43), &uuid).is_err());
        assert!(verify(&buf, None, MetaBlock(42), &[8u8; 16]).is_err());
        buf[200] ^= 1;
        assert!(verify(&buf, None, MetaBlock(42), &uuid).is_err());
    }
}
