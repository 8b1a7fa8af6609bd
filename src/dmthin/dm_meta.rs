//! dm-thin's own on-disk metadata, read (never written) into a [`DumpSink`]: what `adopt`
//! builds a thinpool pool from. The format is the kernel's (`drivers/md/dm-thin-metadata.c`
//! and `persistent-data/dm-btree*.c`) and thin-provisioning-tools'; docs/dmthin.md, "adopt",
//! lists the fields read.
//!
//! Every block is 4 KiB and checked as dm-thin checks it: a CRC-32C of bytes 4..4096 (seed
//! !0, not inverted at the end) XORed with a per-type salt, in the first four bytes, and the
//! block's own number in the header. The superblock (block 0) names two B-trees: the device
//! details tree (dev_id → 24-byte details) and the two-level mapping tree (dev_id → root of
//! that device's tree; virtual block → `data block << 24 | time`).

use super::model::{DeviceDump, DumpError, DumpSink, PoolDump, Result, RunMerger};
use crate::io::{BlockDev, FileDev};
use std::path::Path;

const BLOCK: usize = 4096;
const SUPERBLOCK_MAGIC: u64 = 27_022_010;
const SUPERBLOCK_CSUM_XOR: u32 = 160_774;
const BTREE_CSUM_XOR: u32 = 121_107;
/// Superblock flag: the kernel saw an error and wants `thin_check` run before next use.
const NEEDS_CHECK: u32 = 1;
// Superblock field offsets (struct thin_disk_superblock; space-map roots are 128 bytes).
const SB_FLAGS: usize = 4;
const SB_BLOCKNR: usize = 8;
const SB_UUID: usize = 16;
const SB_MAGIC: usize = 32;
const SB_VERSION: usize = 40;
const SB_TIME: usize = 44;
const SB_TRANS_ID: usize = 48;
const SB_DATA_SM_ROOT: usize = 64;
const SB_MAPPING_ROOT: usize = 320;
const SB_DETAILS_ROOT: usize = 328;
const SB_DATA_BLOCK_SIZE: usize = 336;
const SB_META_BLOCK_SIZE: usize = 340;
const SB_META_NR_BLOCKS: usize = 344;
const SB_INCOMPAT: usize = 360;
// B-tree node header (struct node_header, 32 bytes), then keys, then values.
const NODE_FLAGS: usize = 4;
const NODE_BLOCKNR: usize = 8;
const NODE_NR: usize = 16;
const NODE_MAX: usize = 20;
const NODE_VALUE_SIZE: usize = 24;
const NODE_KEYS: usize = 32;
const INTERNAL: u32 = 1;
const LEAF: u32 = 2;
/// struct disk_device_details: mapped_blocks u64, transaction_id u64, creation_time u32,
/// snapshotted_time u32.
const DETAILS_SIZE: usize = 24;
/// No real tree is this deep; a deeper path loops through a damaged pointer.
const MAX_DEPTH: usize = 32;

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// dm-thin's block checksum (`dm_bm_checksum`): CRC-32C seeded with !0 and not inverted at
/// the end, which is the inverse of the standard CRC-32C, XORed with `salt`.
fn checksum(block: &[u8], salt: u32) -> u32 {
    !crc32c::crc32c(&block[4..]) ^ salt
}

/// A dm-thin metadata device or file, opened read-only.
struct Meta {
    dev: FileDev,
    what: String,
    nr_blocks: u64,
    buf: Vec<u8>,
}

impl Meta {
    fn bad(&self, msg: String) -> DumpError {
        DumpError::input(format!(
            "{}: {msg} (is it dm-thin metadata? `thin_check` it, and `thin_repair` if damaged)",
            self.what
        ))
    }

    /// Read block `b`, checking its checksum and self-reference.
    fn read(&mut self, b: u64, salt: u32, what: &str) -> Result<&[u8]> {
        if b >= self.nr_blocks {
            return Err(self.bad(format!(
                "{what} at block {b} lies past the metadata's {} blocks",
                self.nr_blocks
            )));
        }
        let mut buf = std::mem::take(&mut self.buf);
        let read = self.dev.read_at(&mut buf, b * BLOCK as u64);
        self.buf = buf;
        read.map_err(|source| DumpError::Io {
            what: format!("cannot read block {b} of {}", self.what),
            source,
        })?;
        if checksum(&self.buf, salt) != u32_at(&self.buf, 0) {
            return Err(self.bad(format!("{what} at block {b} fails its checksum")));
        }
        let blocknr = u64_at(
            &self.buf,
            if salt == SUPERBLOCK_CSUM_XOR {
                SB_BLOCKNR
            } else {
                NODE_BLOCKNR
            },
        );
        if blocknr != b {
            return Err(self.bad(format!(
                "{what} at block {b} says it is block {blocknr} (a misdirected write?)"
            )));
        }
        Ok(&self.buf)
    }

    /// Visit the entries of the tree rooted at `root` in key order: `f(key, value)`.
    fn walk(
        &mut self,
        root: u64,
        value_size: usize,
        what: &str,
        f: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut last = None;
        self.walk_rec(root, value_size, what, 0, &mut last, f)
    }

    fn walk_rec(
        &mut self,
        b: u64,
        value_size: usize,
        what: &str,
        depth: usize,
        last: &mut Option<u64>,
        f: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(self.bad(format!(
                "the {what} tree is deeper than {MAX_DEPTH} levels: a pointer loops"
            )));
        }
        let node = self.read(b, BTREE_CSUM_XOR, what)?.to_vec();
        let flags = u32_at(&node, NODE_FLAGS);
        let nr = u32_at(&node, NODE_NR) as usize;
        let max = u32_at(&node, NODE_MAX) as usize;
        let vs = u32_at(&node, NODE_VALUE_SIZE) as usize;
        let leaf = match flags {
            LEAF => true,
            INTERNAL => false,
            _ => return Err(self.bad(format!("{what} node {b} has flags {flags:#x}"))),
        };
        let want_vs = if leaf { value_size } else { 8 };
        if vs != want_vs || nr > max || NODE_KEYS + max * (8 + vs) > BLOCK || (!leaf && nr == 0) {
            return Err(self.bad(format!(
                "{what} node {b} is malformed ({nr} of {max} entries of {vs} bytes, expected {want_vs})"
            )));
        }
        let values = NODE_KEYS + max * 8;
        for i in 0..nr {
            let key = u64_at(&node, NODE_KEYS + i * 8);
            let v = &node[values + i * vs..values + (i + 1) * vs];
            if leaf {
                if last.is_some_and(|l| key <= l) {
                    return Err(self.bad(format!("{what} node {b}: key {key} is out of order")));
                }
                *last = Some(key);
                f(key, v)?;
            } else {
                // A child's key bounds every key below it from beneath, so it lies above
                // every key visited before it.
                if last.is_some_and(|l| key <= l) {
                    return Err(self.bad(format!("{what} node {b}: key {key} is out of order")));
                }
                self.walk_rec(u64_at(v, 0), value_size, what, depth + 1, last, f)?;
            }
        }
        Ok(())
    }
}

/// What [`read`] found in the superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmSuperblock {
    pub version: u32,
    pub data_block_size: u32,
    pub nr_data_blocks: u64,
    pub metadata_blocks: u64,
}

/// Read dm-thin metadata at `path` into `sink`: the superblock, then every device in dev_id
/// order with its mappings merged into runs. Opens the file read-only; writes nothing.
pub fn read(path: &Path, sink: &mut dyn DumpSink) -> Result<DmSuperblock> {
    let what = path.display().to_string();
    let dev = FileDev::open(path, false).map_err(|source| DumpError::Io {
        what: format!("cannot open {what}"),
        source,
    })?;
    let len = dev.len();
    let mut m = Meta {
        dev,
        what,
        nr_blocks: len / BLOCK as u64,
        buf: vec![0u8; BLOCK],
    };
    if m.nr_blocks == 0 {
        return Err(m.bad(format!("{len} bytes is too short for a superblock")));
    }
    let sb = m.read(0, SUPERBLOCK_CSUM_XOR, "the superblock")?.to_vec();
    if u64_at(&sb, SB_MAGIC) != SUPERBLOCK_MAGIC {
        return Err(m.bad("no dm-thin superblock magic".into()));
    }
    let version = u32_at(&sb, SB_VERSION);
    if !(1..=2).contains(&version) {
        return Err(m.bad(format!(
            "metadata version {version} is not one thinpool reads (1, 2)"
        )));
    }
    let flags = u32_at(&sb, SB_FLAGS);
    if flags & NEEDS_CHECK != 0 {
        return Err(m.bad("the kernel flagged this metadata as needing a check".into()));
    }
    if u32_at(&sb, SB_INCOMPAT) != 0 {
        return Err(m.bad(format!(
            "incompatible feature flags {:#x}",
            u32_at(&sb, SB_INCOMPAT)
        )));
    }
    if u32_at(&sb, SB_META_BLOCK_SIZE) != (BLOCK / 512) as u32 {
        return Err(m.bad(format!(
            "metadata block size {} sectors (dm-thin always uses 8)",
            u32_at(&sb, SB_META_BLOCK_SIZE)
        )));
    }
    let meta_nr = u64_at(&sb, SB_META_NR_BLOCKS);
    if meta_nr > m.nr_blocks {
        return Err(m.bad(format!(
            "the superblock says {meta_nr} metadata blocks, the file holds {}",
            m.nr_blocks
        )));
    }
    m.nr_blocks = meta_nr;
    let uuid = &sb[SB_UUID..SB_UUID + 16];
    let found = DmSuperblock {
        version,
        data_block_size: u32_at(&sb, SB_DATA_BLOCK_SIZE),
        // The data space map's root starts with its number of blocks.
        nr_data_blocks: u64_at(&sb, SB_DATA_SM_ROOT),
        metadata_blocks: meta_nr,
    };
    sink.superblock(&PoolDump {
        uuid: if uuid.iter().all(|&b| b == 0) {
            String::new()
        } else {
            uuid.iter().map(|b| format!("{b:02x}")).collect()
        },
        time: u32_at(&sb, SB_TIME),
        transaction: u64_at(&sb, SB_TRANS_ID),
        flags,
        version,
        data_block_size: found.data_block_size,
        nr_data_blocks: found.nr_data_blocks,
        devices: Vec::new(),
    })?;

    let mut details = Vec::new();
    m.walk(
        u64_at(&sb, SB_DETAILS_ROOT),
        DETAILS_SIZE,
        "device details",
        &mut |k, v| {
            details.push((k, u64_at(v, 0), u64_at(v, 8), u32_at(v, 16), u32_at(v, 20)));
            Ok(())
        },
    )?;
    let mut roots = Vec::new();
    m.walk(
        u64_at(&sb, SB_MAPPING_ROOT),
        8,
        "top-level mapping",
        &mut |k, v| {
            roots.push((k, u64_at(v, 0)));
            Ok(())
        },
    )?;
    if roots.len() != details.len() || roots.iter().zip(&details).any(|(r, d)| r.0 != d.0) {
        let ids = |v: Vec<u64>| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        return Err(m.bad(format!(
            "the mapping tree has devices [{}] but the details tree [{}]",
            ids(roots.iter().map(|r| r.0).collect()),
            ids(details.iter().map(|d| d.0).collect())
        )));
    }
    for ((dev_id, mapped, trans, ctime, stime), (_, root)) in details.into_iter().zip(roots) {
        sink.device(&DeviceDump::dm(dev_id, mapped, trans, ctime, stime))?;
        let mut runs = RunMerger::default();
        m.walk(root, 8, "device mapping", &mut |vb, v| {
            let raw = u64_at(v, 0);
            match runs.push(vb, raw >> 24, (raw & 0xff_ffff) as u32) {
                Some(r) => sink.run(&r),
                None => Ok(()),
            }
        })?;
        if let Some(r) = runs.finish() {
            sink.run(&r)?;
        }
        sink.end_device()?;
    }
    sink.end()?;
    Ok(found)
}
