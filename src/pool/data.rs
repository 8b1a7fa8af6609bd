//! The data path: read, write, discard and write-zeroes at any byte offset and length.
//!
//! - Read: unmapped ranges read as zeros without touching the data file.
//! - Write to a block this volume owns exclusively (mapped since the volume's last snapshot or
//!   rollback, no shared node on its path, data count 1): in place (docs/design.md §4).
//!   Otherwise a new block is allocated; a partial write into a shared block
//!   copies the old contents first, a partial write into an unmapped block zero-fills the
//!   rest (the whole block is written, so a reused block never shows old bytes) — unless the
//!   data device says the new block is a hole ([`BlockDev::is_hole`]: never written, or
//!   punched since), where the zeros are already there and only the new bytes are written.
//!   That is what keeps a 4 KiB write into a fresh 64 KiB block a 4 KiB write. A punched
//!   block is punched by the commit it left the protected window with, and the data flush
//!   of the commit that maps it again (fdatasync) makes that punch durable first, so after a
//!   crash a mapped block never shows bytes older than its hole.
//! - All blocks a write needs are allocated before anything changes, so a full pool fails
//!   the write with ENOSPC and changes nothing.
//! - Discard unmaps whole blocks and zeroes the covered part of partial edge blocks.

use super::details::{Access, IoVolume, DETAILS};
use super::trees::{pack_mapping, unpack_mapping, DEV_ROOTS, MAPPING};
use super::{Pool, PoolError, Result, VolumeId};
use crate::io::{BlockDev, IoOp};
use crate::meta::btree::Btree;
use crate::meta::spacemap::{SM_INDEX, SM_OVERFLOW};
use crate::meta::{DataBlock, MetaError};

/// Blocks unmapped per batch in a discard (bounds the memory of a huge discard).
const UNMAP_BATCH: usize = 65536;
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
    pub targets: Vec<(u64, Target)>,
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
        let bstart = (vb * bs).max(offset);
        let bend = ((vb + 1) * bs).min(end);
        let dst = (bstart - offset) as usize;
        buf[filled..dst].fill(0);
        runs.push(pb * bs + (bstart - vb * bs), dst, (bend - bstart) as usize);
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
    for (vb, t) in &plan.targets {
        let bstart = (vb * bs).max(offset);
        let bend = ((vb + 1) * bs).min(end);
        let (ins, ine) = (bstart - vb * bs, bend - vb * bs);
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
        if !buf.is_empty() && offset / bs == (offset + buf.len() as u64 - 1) / bs {
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

    /// Write `data` to volume `id` at byte `offset`. Durable at the next commit.
    pub fn write(&mut self, id: VolumeId, offset: u64, data: &[u8]) -> Result<()> {
        let d = self.resolve(id, offset, data.len() as u64, Access::Write)?;
        if data.is_empty() {
            return Ok(());
        }
        self.tm.check_writable()?;
        match self.write_inner(id, d.snap_time, offset, data) {
            Err(PoolError::Meta(MetaError::NoDataSpace | MetaError::NoMetadataSpace)) => {
                // Blocks freed by the last two commits are protected from reuse; two more
                // commits release them. Retry once.
                self.force_commit()?;
                self.force_commit()?;
                self.write_inner(id, d.snap_time, offset, data)?;
            }
            other => other?,
        }
        self.maybe_auto_commit()
    }

    /// `snap_time`: the pool time of the volume's last snapshot (or rollback). A mapping
    /// written before it may still be shared by a committed state even when no current
    /// reference shares it (the other sharer may have copied its block away in this very
    /// transaction), so it is never written in place: a crash would show the new bytes
    /// through the committed snapshot. This is dm-thin's `snapshotted_since` rule.
    fn write_inner(
        &mut self,
        id: VolumeId,
        snap_time: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        let plan = self.plan_write(id, snap_time, offset, data.len() as u64)?;
        let io = write_data(self.data.as_ref(), self.block_size(), &plan, data);
        self.note_data_write();
        if let Err(e) = io.and_then(|()| self.finish_fits(&plan)) {
            self.release_plan(&plan)?;
            return Err(e);
        }
        self.finish_write(plan)
    }

    /// Steps 1 and 2 of a write, under the metadata lock: decide which blocks are written in
    /// place and which need a new block, and allocate every new block up front (ENOSPC
    /// changes nothing).
    pub(crate) fn plan_write(
        &mut self,
        id: VolumeId,
        snap_time: u32,
        offset: u64,
        len: u64,
    ) -> Result<WritePlan> {
        let bs = self.block_size();
        let end = offset + len;
        let (first, last) = (offset / bs, (end - 1) / bs);
        let root = self.vol_root(id)?;
        let mut targets = Vec::with_capacity((last - first + 1) as usize);
        for vb in first..=last {
            let t = match self.tm.btree_lookup_shared(root, MAPPING, vb)? {
                Some((v, path_shared)) => {
                    let (pb, time) = unpack_mapping(v);
                    if time >= snap_time && !path_shared && self.tm.data_count(pb)? == 1 {
                        Target::InPlace(pb.0)
                    } else {
                        Target::New {
                            old: Some(pb.0),
                            new: 0,
                        }
                    }
                }
                None => Target::New { old: None, new: 0 },
            };
            targets.push((vb, t));
        }
        let need = targets
            .iter()
            .filter(|(_, t)| matches!(t, Target::New { .. }))
            .count();
        let mut fresh = Vec::with_capacity(need);
        for _ in 0..need {
            match self.tm.alloc_data() {
                Ok(Some(b)) => fresh.push(b.0),
                other => {
                    for b in fresh {
                        self.tm.data_dec(DataBlock(b))?;
                    }
                    other?;
                    return Err(MetaError::NoDataSpace.into());
                }
            }
        }
        // Room for the tree updates, checked before the first change.
        if self.tm.meta_free_estimate() < 64 + need as u64 / 64 * 4 + 16 {
            for b in fresh {
                self.tm.data_dec(DataBlock(b))?;
            }
            return Err(MetaError::NoMetadataSpace.into());
        }
        self.extents
            .before_write(self.data.as_ref(), self.block_size, &fresh);
        let mut fi = fresh.iter();
        for (_, t) in targets.iter_mut() {
            if let Target::New { new, .. } = t {
                *new = *fi.next().expect("one fresh block per new target");
            }
        }
        Ok(WritePlan {
            id,
            offset,
            len,
            targets,
        })
    }

    /// Give back the blocks a plan allocated (its data I/O failed).
    pub(crate) fn release_plan(&mut self, plan: &WritePlan) -> Result<()> {
        for (_, t) in &plan.targets {
            if let Target::New { new, .. } = t {
                self.tm.data_dec(DataBlock(*new))?;
                // The allocator handed this block out free in the current transaction and
                // in both protected records, so nothing maps it: give back at once whatever
                // the failed write put there (after a full filesystem, that space is what
                // the next write needs).
                self.punch_block(*new);
            }
        }
        Ok(())
    }

    /// Before step 4, under the metadata lock: fail with ENOSPC, changing nothing, when
    /// metadata might run out half-way through mapping the plan's new blocks (a tree update
    /// that fails half-way abandons the whole transaction). The caller then releases the
    /// plan. The bound is generous: k sorted keys inserted into a tree of height h touch
    /// at most k / 80 + 2 nodes per level (half-full nodes hold more than 80 keys), on
    /// h + 1 levels plus one for a new root, and each touched node may be shadowed (one new
    /// block) and split (one more).
    pub(crate) fn finish_fits(&mut self, plan: &WritePlan) -> Result<()> {
        let (mut news, mut cows) = (0u64, 0u64);
        for (_, t) in &plan.targets {
            if let Target::New { old, .. } = t {
                news += 1;
                cows += old.is_some() as u64;
            }
        }
        if news == 0 {
            return Ok(());
        }
        let tree = |k: u64, h: u64| (h + 2) * 2 * (k / 80 + 2);
        let root = self.vol_root(plan.id)?;
        let h_map = self.tm.btree_height(root, MAPPING)?;
        let h_details = self.tm.btree_height(self.details_root, DETAILS)?;
        let h_top = self.tm.btree_height(self.top_root, DEV_ROOTS)?;
        // The mapping tree, then the details and top-level trees (one key each).
        let mut need = tree(news, h_map) + tree(1, h_details) + tree(1, h_top);
        if cows > 0 {
            // Releasing the replaced blocks: their space-map pages, the index above them,
            // and the overflow tree for counts of three or more.
            let pages = cows.min(self.tm.dsm.nr_pages());
            let h_index = self.tm.btree_height(self.tm.dsm.roots.index, SM_INDEX)?;
            let h_over = self
                .tm
                .btree_height(self.tm.dsm.roots.overflow, SM_OVERFLOW)?;
            need += pages + tree(pages, h_index) + tree(cows, h_over);
        }
        if self.tm.meta_headroom() < need {
            return Err(MetaError::NoMetadataSpace.into());
        }
        Ok(())
    }

    /// Step 4, under the metadata lock: map the new blocks and release what they replace.
    pub(crate) fn finish_write(&mut self, plan: WritePlan) -> Result<()> {
        self.note_data_write();
        let news: Vec<(u64, u64)> = plan
            .targets
            .iter()
            .filter_map(|(vb, t)| match t {
                Target::New { new, .. } => Some((*vb, *new)),
                Target::InPlace(_) => None,
            })
            .collect();
        if news.is_empty() {
            return Ok(());
        }
        let id = plan.id;
        let r = (|| -> Result<()> {
            let mut root = self.vol_root(id)?;
            let mut newly = 0u64;
            let time = self.time as u32;
            for (vb, nb) in &news {
                let v = pack_mapping(DataBlock(*nb), time);
                match self
                    .tm
                    .btree_insert(&mut root, MAPPING, *vb, &v.to_le_bytes())?
                {
                    Some(old) => self.tm.dec_value(MAPPING, &old)?,
                    None => newly += 1,
                }
            }
            self.set_vol_root(id, root)?;
            self.note_new_data(news.len() as u64 * self.block_size);
            if newly > 0 {
                let mut d = self.details(id)?;
                d.mapped += newly;
                self.put_details(id, &d)?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            // A half-applied tree update cannot stand: return to the last commit.
            self.abort();
            return Err(e);
        }
        Ok(())
    }

    /// New data blocks that zeroing part of each block in `vbs` needs: mapped blocks that
    /// cannot be written in place (unmapped ones already read as zeros).
    pub(super) fn zeroing_copies(
        &mut self,
        id: VolumeId,
        d: &IoVolume,
        vbs: &[u64],
    ) -> Result<u64> {
        let root = self.vol_root(id)?;
        let mut n = 0;
        for &vb in vbs {
            if let Some((v, path_shared)) = self.tm.btree_lookup_shared(root, MAPPING, vb)? {
                let (pb, time) = unpack_mapping(v);
                if time < d.snap_time || path_shared || self.tm.data_count(pb)? != 1 {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Make sure `n` more data blocks can be allocated, before anything changes: fail with
    /// ENOSPC when the pool does not have them; when it has them but some were freed by one
    /// of the last two commits (protected from reuse until two more commits), commit twice
    /// to release them, as a write does.
    pub(super) fn ensure_data_room(&mut self, n: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        if n > self.tm.dsm.nr_blocks - self.tm.dsm.nr_allocated {
            return Err(MetaError::NoDataSpace.into());
        }
        let mut probe = Vec::new();
        let mut short = false;
        for _ in 0..n {
            match self.tm.alloc_data()? {
                Some(b) => probe.push(b),
                None => {
                    short = true;
                    break;
                }
            }
        }
        for b in probe {
            self.tm.data_dec(b)?;
        }
        if short {
            self.force_commit()?;
            self.force_commit()?;
        }
        Ok(())
    }

    /// Unmap whole blocks `lo <= vb < hi` of a volume (no bounds or read-only checks).
    pub(crate) fn unmap_blocks(&mut self, id: VolumeId, lo: u64, hi: u64) -> Result<u64> {
        let mut total = 0;
        loop {
            let maps = self.mappings(id, lo, hi, UNMAP_BATCH)?;
            if maps.is_empty() {
                break;
            }
            let mut root = self.vol_root(id)?;
            let r = (|| -> Result<()> {
                for (vb, _) in &maps {
                    if let Some(old) = self.tm.btree_remove(&mut root, MAPPING, *vb)? {
                        self.tm.dec_value(MAPPING, &old)?;
                    }
                }
                self.set_vol_root(id, root)?;
                let mut d = self.details(id)?;
                d.mapped -= maps.len() as u64;
                self.put_details(id, &d)
            })();
            if let Err(e) = r {
                self.abort();
                return Err(e);
            }
            total += maps.len() as u64;
            if maps.len() < UNMAP_BATCH {
                break;
            }
        }
        Ok(total)
    }

    /// Write zeros over `[offset, offset+len)` inside mapped blocks only (unmapped blocks
    /// already read as zeros). Whole blocks are unmapped instead.
    pub(crate) fn zero_range(
        &mut self,
        id: VolumeId,
        d: &IoVolume,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        let bs = self.block_size();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let vb = pos / bs;
            let bend = ((vb + 1) * bs).min(end);
            if pos == vb * bs && bend == (vb + 1) * bs {
                self.unmap_blocks(id, vb, vb + 1)?;
            } else if !self.mappings(id, vb, vb + 1, 1)?.is_empty() {
                let zeros = vec![0u8; (bend - pos) as usize];
                self.write_inner(id, d.snap_time, pos, &zeros)?;
            }
            pos = bend;
        }
        Ok(())
    }

    /// Discard (trim) a byte range: whole blocks are unmapped and their space freed once no
    /// volume shares them; partly covered blocks have the covered bytes zeroed.
    pub fn discard(&mut self, id: VolumeId, offset: u64, len: u64) -> Result<()> {
        let d = self.resolve(id, offset, len, Access::Write)?;
        if len == 0 {
            return Ok(());
        }
        self.tm.check_writable()?;
        let bs = self.block_size();
        let end = offset + len;
        let full_lo = offset.div_ceil(bs);
        let full_hi = end / bs;
        // Zeroing a partial edge block may need a copy of it: check that every copy fits
        // first, so a discard that fails for space changes nothing.
        let mut edges = Vec::with_capacity(2);
        if offset % bs != 0 {
            edges.push(offset / bs);
        }
        if end % bs != 0 && edges.last() != Some(&(end / bs)) {
            edges.push(end / bs);
        }
        let copies = self.zeroing_copies(id, &d, &edges)?;
        self.ensure_data_room(copies)?;
        if full_lo >= full_hi {
            self.zero_range(id, &d, offset, len)?;
        } else {
            if offset < full_lo * bs {
                self.zero_range(id, &d, offset, full_lo * bs - offset)?;
            }
            if end > full_hi * bs {
                self.zero_range(id, &d, full_hi * bs, end - full_hi * bs)?;
            }
            self.unmap_blocks(id, full_lo, full_hi)?;
        }
        self.maybe_auto_commit()
    }

    /// Write zeros. With `may_unmap`, whole blocks are unmapped (like discard); otherwise
    /// zeros are written and space stays allocated (NBD's NO_HOLE).
    pub fn write_zeroes(
        &mut self,
        id: VolumeId,
        offset: u64,
        len: u64,
        may_unmap: bool,
    ) -> Result<()> {
        if may_unmap {
            return self.discard(id, offset, len);
        }
        self.resolve(id, offset, len, Access::Write)?;
        let chunk = (4u64 << 20).max(self.block_size());
        let zeros = vec![0u8; chunk as usize];
        let mut pos = offset;
        while pos < offset + len {
            let n = chunk.min(offset + len - pos);
            self.write(id, pos, &zeros[..n as usize])?;
            pos += n;
        }
        Ok(())
    }

    /// True when byte range `[offset, offset+len)` of the volume holds any mapped block.
    pub fn is_mapped(&mut self, id: VolumeId, vb: u64) -> Result<bool> {
        Ok(!self.mappings(id, vb, vb + 1, 1)?.is_empty())
    }
}
