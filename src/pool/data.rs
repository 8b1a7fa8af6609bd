//! The data path's I/O: reads of volumes (unmapped ranges read as zeros without touching the
//! data file) and the data I/O of a [`WritePlan`] that pool/write.rs decided.
//!
//! [`write_data`] carries out a plan: a [`Target::InPlace`] block is overwritten; a
//! [`Target::New`] block gets the request's bytes, and for a partial write the rest of the
//! block too — copied from `old` when the block was shared, zeros when it was unmapped, so a
//! reused block never shows old bytes — unless the data device says the new block is a hole
//! ([`BlockDev::is_hole`]: never written, or punched since), where the zeros are already
//! there and only the new bytes are written. That keeps a 4 KiB write into a fresh 64 KiB
//! block a 4 KiB write. A punched block is punched by the commit it left the protected window
//! with, and the data flush of the commit that maps it again (fdatasync) makes that punch
//! durable first, so after a crash a mapped block never shows bytes older than its hole.
//! Contiguous pieces are merged into runs of at most `MAX_RUN` bytes, and a long write's new
//! blocks start their writeback at once (`WRITEBACK_RUN`). Which blocks are
//! written in place, and the all-or-nothing allocation before anything changes, are
//! pool/write.rs's (docs/design.md §4).

use super::details::Access;
use super::trees::{unpack_mapping, MAPPING};
use super::{Pool, PoolError, Result, VirtualBlock, VolumeId};
use crate::io::{BlockDev, IoOp};
use crate::meta::btree::Btree;

/// Largest single data-device request issued when merging contiguous pieces.
const MAX_RUN: usize = 8 << 20;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    /// Overwrite this data block (exclusively owned since the volume's last snapshot).
    InPlace(u64),
    /// Write the new block `new`; a partial write first copies `old` (or zeros).
    New { old: Option<u64>, new: u64 },
}

/// What a write will do, decided under the metadata lock; its data I/O needs no lock.
#[derive(Debug)]
pub(crate) struct WritePlan {
    pub id: VolumeId,
    pub offset: u64,
    pub len: u64,
    pub targets: Vec<(VirtualBlock, Target)>,
}

/// Fill `buf` (volume bytes from `offset`) from the data device, given the mappings of the
/// blocks it covers; unmapped ranges read as zeros without touching the device.
pub(crate) fn read_data(
    dev: &dyn BlockDev,
    bs: u64,
    offset: u64,
    buf: &mut [u8],
    maps: &[(u64, u64)],
) -> Result<()> {
    let end = offset + buf.len() as u64;
    let mut runs = Runs::default();
    let mut filled = 0usize; // bytes of `buf` already decided (mapped or zero)
    for &(vb, pb) in maps {
        let vb = VirtualBlock(vb);
        let (bstart, bend) = vb.clip(bs, offset, end);
        let dst = (bstart - offset) as usize;
        buf[filled..dst].fill(0);
        runs.push(
            pb * bs + (bstart - vb.start(bs)),
            dst,
            (bend - bstart) as usize,
        );
        filled = (bend - offset) as usize;
    }
    buf[filled..].fill(0);
    if let [(off, src, len)] = runs.0[..] {
        return dev
            .read_at(&mut buf[src..src + len], off)
            .map_err(Pool::data_err("read", off));
    }
    // Several runs: one batch (the io_uring engine keeps them all in flight at once). The
    // runs are in buffer order and disjoint, so the buffer splits into their slices.
    let mut ops = Vec::with_capacity(runs.0.len());
    let mut rest: &mut [u8] = buf;
    let mut at = 0usize;
    for &(off, src, len) in &runs.0 {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(src - at);
        let (piece, tail) = tail.split_at_mut(len);
        ops.push(IoOp::read(piece, off));
        rest = tail;
        at = src + len;
    }
    dev.submit_batch(&mut ops).map_err(|e| batch_err("read", e))
}

/// A failed batch as a pool error naming the failed op's offset, with the OS error kept
/// (ENOSPC and EDQUOT must stay recognisable, see `PoolError::errno`).
fn batch_err(op: &'static str, e: std::io::Error) -> PoolError {
    let offset = e
        .get_ref()
        .and_then(|x| x.downcast_ref::<crate::io::OpError>())
        .map_or(0, |o| o.offset);
    let source = match crate::io::os_error(&e) {
        Some(errno) => std::io::Error::from_raw_os_error(errno),
        None => e,
    };
    PoolError::DataIo { op, offset, source }
}

/// Step 3 of a write: the data I/O, issued without any metadata lock (it touches only the
/// blocks the plan owns: in-place targets nobody else maps, and freshly allocated blocks).
pub(crate) fn write_data(dev: &dyn BlockDev, bs: u64, plan: &WritePlan, data: &[u8]) -> Result<()> {
    let (offset, end) = (plan.offset, plan.offset + plan.len);
    let mut runs = Runs::default();
    let mut partial: Vec<(u64, Vec<u8>)> = Vec::new();
    for &(vb, ref t) in &plan.targets {
        let (bstart, bend) = vb.clip(bs, offset, end);
        let (ins, ine) = (bstart - vb.start(bs), bend - vb.start(bs));
        let src = (bstart - offset) as usize;
        let len = (bend - bstart) as usize;
        match *t {
            Target::InPlace(pb) => runs.push(pb * bs + ins, src, len),
            Target::New { old, new } => {
                let fresh = || {
                    dev.is_hole(new * bs, bs)
                        .map_err(Pool::data_err("seek", new * bs))
                };
                if ins == 0 && ine == bs || old.is_none() && fresh()? {
                    // A whole block, or a never-written one (the rest already reads zeros).
                    runs.push(new * bs + ins, src, len);
                } else {
                    let mut blk = vec![0u8; bs as usize];
                    if let Some(o) = old {
                        dev.read_at(&mut blk, o * bs)
                            .map_err(Pool::data_err("read", o * bs))?;
                    }
                    blk[ins as usize..ine as usize].copy_from_slice(&data[src..src + len]);
                    partial.push((new * bs, blk));
                }
            }
        }
    }
    if let ([(off, src, len)], []) = (&runs.0[..], &partial[..]) {
        dev.write_at(&data[*src..*src + *len], *off)
            .map_err(Pool::data_err("write", *off))?;
    } else {
        // One batch for every piece (the io_uring engine keeps them all in flight).
        let mut ops: Vec<IoOp> = runs
            .0
            .iter()
            .map(|&(off, src, len)| IoOp::write(&data[src..src + len], off))
            .chain(partial.iter().map(|(off, blk)| IoOp::write(blk, *off)))
            .collect();
        dev.submit_batch(&mut ops)
            .map_err(|e| batch_err("write", e))?;
    }
    // A long write's new blocks are what the next commit must sync before its record:
    // start their writeback now, in the writing thread. The commit's sync then finds little
    // left, and a writer faster than the disk waits here while the device queue is
    // congested (a sequential fill through `serve` otherwise piled up page cache for the
    // commit to drain under the gate: max latency 157-198 ms instead of 39). Short writes
    // do not: one call per 4 KiB block cost a device submission each, half of a first
    // write's time; they are left to `Pool::note_new_data` and the server's writeback
    // thread. Advisory: an error here changes nothing.
    if plan.new_blocks() * bs >= WRITEBACK_RUN {
        let mut wb = Runs::default();
        for (i, (_, t)) in plan.targets.iter().enumerate() {
            if let Target::New { new, .. } = *t {
                // Whole blocks; the source index only lets adjacent blocks merge.
                wb.push(new * bs, i * bs as usize, bs as usize);
            }
        }
        for (off, _, len) in wb.0 {
            let _ = dev.start_writeback(off, len as u64);
        }
    }
    Ok(())
}

/// New data in one write from which its writeback starts at once (see `write_data`).
const WRITEBACK_RUN: u64 = 256 << 10;

impl WritePlan {
    /// Blocks the plan allocated (targets not written in place).
    pub(crate) fn new_blocks(&self) -> u64 {
        self.targets
            .iter()
            .filter(|(_, t)| matches!(t, Target::New { .. }))
            .count() as u64
    }
}

/// Contiguous runs of `(device offset, source range)`, merged where both are contiguous.
#[derive(Default)]
struct Runs(Vec<(u64, usize, usize)>);

impl Runs {
    fn push(&mut self, dev_off: u64, src: usize, len: usize) {
        if let Some((o, s, l)) = self.0.last_mut() {
            if *o + *l as u64 == dev_off && *s + *l == src && *l + len <= MAX_RUN {
                *l += len;
                return;
            }
        }
        self.0.push((dev_off, src, len));
    }
}

impl Pool {
    pub(crate) fn data_err(
        op: &'static str,
        offset: u64,
    ) -> impl FnOnce(std::io::Error) -> PoolError {
        move |source| PoolError::DataIo { op, offset, source }
    }

    /// Mappings `(virtual block, data block)` of a volume with `lo <= vb < hi`, at most `limit`.
    pub fn mappings(
        &mut self,
        id: VolumeId,
        lo: u64,
        hi: u64,
        limit: usize,
    ) -> Result<Vec<(u64, u64)>> {
        let root = self.vol_root(id)?;
        let mut out = Vec::new();
        self.tm.btree_walk(root, MAPPING, lo, hi, &mut |k, v| {
            let (pb, _) = unpack_mapping(u64::from_le_bytes(v.try_into().unwrap()));
            out.push((k, pb.0));
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Read raw bytes of a data block (export, diff).
    pub fn read_data_block(&self, pb: u64, buf: &mut [u8]) -> Result<()> {
        let off = pb * self.block_size();
        self.data
            .read_at(buf, off)
            .map_err(Self::data_err("read", off))
    }

    /// Read `buf.len()` bytes of volume `id` from byte `offset`.
    pub fn read(&mut self, id: VolumeId, offset: u64, buf: &mut [u8]) -> Result<()> {
        let bs = self.block_size();
        if !buf.is_empty() && offset / bs == offset.saturating_add(buf.len() as u64 - 1) / bs {
            // Inside one block (most small reads): one lookup and one read, nothing allocated.
            self.resolve(id, offset, buf.len() as u64, Access::Read)?;
            return match self.map_one(id, offset / bs)? {
                None => {
                    buf.fill(0);
                    Ok(())
                }
                Some(pb) => {
                    let off = pb * bs + offset % bs;
                    self.data
                        .read_at(buf, off)
                        .map_err(Self::data_err("read", off))
                }
            };
        }
        let maps = self.plan_read(id, offset, buf.len() as u64)?;
        read_data(self.data.as_ref(), bs, offset, buf, &maps)
    }

    /// The mappings a read of `[offset, offset+len)` needs (bounds checked).
    pub(crate) fn plan_read(
        &mut self,
        id: VolumeId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64)>> {
        self.resolve(id, offset, len, Access::Read)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let bs = self.block_size();
        let (first, last) = (offset / bs, (offset + len - 1) / bs);
        if first == last {
            // One block: a lookup, not a range walk.
            return Ok(self
                .map_one(id, first)?
                .map(|pb| vec![(first, pb)])
                .unwrap_or_default());
        }
        self.mappings(id, first, last + 1, usize::MAX)
    }

    /// The data block virtual block `vb` of volume `id` maps to, if any.
    fn map_one(&mut self, id: VolumeId, vb: u64) -> Result<Option<u64>> {
        let root = self.vol_root(id)?;
        Ok(self.tm.btree_lookup_with(root, MAPPING, vb, |v| {
            unpack_mapping(u64::from_le_bytes(v.try_into().unwrap()))
                .0
                 .0
        })?)
    }

    /// True when byte range `[offset, offset+len)` of the volume holds any mapped block.
    pub fn is_mapped(&mut self, id: VolumeId, vb: u64) -> Result<bool> {
        Ok(!self.mappings(id, vb, vb + 1, 1)?.is_empty())
    }
}
