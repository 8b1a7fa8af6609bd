//! The write path of [`Pool`]: write, write-zeroes and discard, single-threaded and, through
//! the crate-visible steps, for [`SharedPool`](super::SharedPool).
//!
//! A write, in four steps (docs/design.md §4): [`Pool::check_write`] resolves the volume and
//! checks range, read-only and fail-stop (the one check every write-like request of either
//! pool passes); [`Pool::plan_write`] decides per block in place or new and allocates every
//! new block at once (`Tm::alloc_data_blocks`, all or nothing); `write_data` does the data
//! I/O (no metadata lock needed); [`Pool::finish_write`] maps the new blocks. A request that
//! runs out of space is retried once, in one place ([`Pool::retry_out_of_space`]).

use super::data::{write_data, Target, WritePlan};
use super::details::{Access, IoVolume, DETAILS};
use super::trees::{pack_mapping, unpack_mapping, DEV_ROOTS, MAPPING};
use super::{Pool, PoolError, Result, VirtualBlock, VolumeId};
use crate::meta::btree::{update_bound, Btree};
use crate::meta::{DataBlock, MetaError};

/// Blocks unmapped per batch in a discard (bounds the memory of a huge discard).
const UNMAP_BATCH: usize = 65536;
/// Zeros written per request by a write-zeroes that keeps its blocks allocated.
const ZERO_CHUNK: u64 = 4 << 20;

impl PoolError {
    /// Out of data or metadata space: what a retry after two commits may cure.
    fn is_out_of_space(&self) -> bool {
        matches!(
            self,
            PoolError::Meta(MetaError::NoDataSpace | MetaError::NoMetadataSpace)
        )
    }
}

/// Call `write(pos, zeros)` over `[offset, offset+len)` in chunks of at most `ZERO_CHUNK`
/// (at least one block): a write-zeroes that keeps space allocated (NBD's NO_HOLE).
pub(crate) fn zero_chunks(
    block_size: u64,
    offset: u64,
    len: u64,
    mut write: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let chunk = ZERO_CHUNK.max(block_size).min(len.max(1));
    let zeros = vec![0u8; chunk as usize];
    let mut pos = offset;
    while pos < offset + len {
        let n = chunk.min(offset + len - pos);
        write(pos, &zeros[..n as usize])?;
        pos += n;
    }
    Ok(())
}

impl Pool {
    /// The one check of a write, write-zeroes or discard of `[offset, offset+len)`, in this
    /// pool and in `SharedPool` alike: the volume exists, the range lies inside it, the
    /// volume is writable; and, unless the request is empty (`None`: nothing to do), the
    /// pool accepts changes (not opened read-only, not fail-stopped).
    pub(crate) fn check_write(
        &mut self,
        id: VolumeId,
        offset: u64,
        len: u64,
    ) -> Result<Option<IoVolume>> {
        let v = self.resolve(id, offset, len, Access::Write)?;
        if len == 0 {
            return Ok(None);
        }
        self.tm.check_writable()?;
        Ok(Some(v))
    }

    /// Run `f`; if it ran out of data or metadata space, commit twice and run it once more.
    /// Blocks freed by the last two commits are protected from reuse (a crash may fall back
    /// to either record); two more commits release them. The only place the pool retries;
    /// `f` must change nothing when it fails for space.
    pub(crate) fn retry_out_of_space<T>(
        &mut self,
        mut f: impl FnMut(&mut Pool) -> Result<T>,
    ) -> Result<T> {
        match f(self) {
            Err(e) if e.is_out_of_space() => {
                // Out of data blocks with an autoextend policy: grow first, if it can.
                if matches!(e, PoolError::Meta(MetaError::NoDataSpace)) && self.autoextend()? {
                    match f(self) {
                        Err(e) if e.is_out_of_space() => {}
                        r => return r,
                    }
                }
                self.force_commit()?;
                self.force_commit()?;
                f(self)
            }
            r => r,
        }
    }

    /// Write `data` to volume `id` at byte `offset`. Durable at the next commit.
    pub fn write(&mut self, id: VolumeId, offset: u64, data: &[u8]) -> Result<()> {
        let fresh = self.write_tx(id, offset, data)?;
        self.note_new_data(fresh);
        self.maybe_auto_commit()
    }

    /// A write inside the current transaction, never committing it (but for the
    /// out-of-space retry): the single-threaded step `SharedPool` falls back to with every
    /// request drained. Returns the bytes of newly mapped blocks.
    pub(crate) fn write_tx(&mut self, id: VolumeId, offset: u64, data: &[u8]) -> Result<u64> {
        let Some(v) = self.check_write(id, offset, data.len() as u64)? else {
            return Ok(0);
        };
        self.retry_out_of_space(|p| p.write_once(id, v.snap_time, offset, data))
    }

    /// Discard (trim) a byte range: whole blocks are unmapped and their space freed once no
    /// volume shares them; partly covered blocks have the covered bytes zeroed.
    pub fn discard(&mut self, id: VolumeId, offset: u64, len: u64) -> Result<()> {
        self.discard_tx(id, offset, len)?;
        self.maybe_auto_commit()
    }

    /// A discard inside the current transaction (see `write_tx`).
    pub(crate) fn discard_tx(&mut self, id: VolumeId, offset: u64, len: u64) -> Result<()> {
        let Some(d) = self.check_write(id, offset, len)? else {
            return Ok(());
        };
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
        Ok(())
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
        if self.check_write(id, offset, len)?.is_none() {
            return Ok(());
        }
        // The whole range was checked above, so nothing is written when any of it is out
        // of range; each chunk's write checks its own piece again (cheap: the volume is memoised).
        zero_chunks(self.block_size(), offset, len, |pos, z| {
            self.write(id, pos, z)
        })
    }

    /// Make sure `n` more data blocks can be allocated, before anything changes: ENOSPC
    /// when the pool does not have them; when some are protected (freed by one of the last
    /// two commits), the retry's two commits release them.
    pub(super) fn ensure_data_room(&mut self, n: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        if n > self.tm.data_space().free() {
            // No commit can help.
            return Err(MetaError::NoDataSpace.into());
        }
        self.retry_out_of_space(|p| match p.tm.data_room(n)? {
            true => Ok(()),
            false => Err(MetaError::NoDataSpace.into()),
        })
    }

    /// One attempt at a write (no retry), single-threaded: plan, data I/O, finish. Returns
    /// the bytes of newly mapped blocks. `snap_time`: the pool time of the volume's last
    /// snapshot (or rollback). A mapping written before it may still be shared by a
    /// committed state even when no current reference shares it (the other sharer may have
    /// copied its block away in this very transaction), so it is never written in place: a
    /// crash would show the new bytes through the committed snapshot. This is dm-thin's
    /// `snapshotted_since` rule.
    fn write_once(
        &mut self,
        id: VolumeId,
        snap_time: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<u64> {
        let plan = self.plan_write(id, snap_time, offset, data.len() as u64)?;
        let io = write_data(self.data.as_ref(), self.block_size(), &plan, data);
        self.note_data_write();
        if let Err(e) = io.and_then(|()| self.finish_fits(&plan)) {
            self.release_plan(&plan)?;
            return Err(e);
        }
        let fresh = plan.new_blocks() * self.block_size();
        self.finish_write(plan)?;
        Ok(fresh)
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
        for vb in (first..=last).map(VirtualBlock) {
            let t = match self.tm.btree_lookup_shared(root, MAPPING, vb.0)? {
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
        // Room for the tree updates (and the space-map pages the allocation shadows: the
        // margin), checked before the first change, so nothing is undone on failure.
        if self.tm.meta_free_estimate() < 64 + need as u64 / 64 * 4 + 16 {
            return Err(MetaError::NoMetadataSpace.into());
        }
        let fresh: Vec<u64> = self
            .tm
            .alloc_data_blocks(need)?
            .into_iter()
            .map(|b| b.0)
            .collect();
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
    /// plan. The bound is generous (`btree::update_bound` for each tree the update touches).
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
        let root = self.vol_root(plan.id)?;
        let h_map = self.tm.btree_height(root, MAPPING)?;
        let h_details = self.tm.btree_height(self.details_root, DETAILS)?;
        let h_top = self.tm.btree_height(self.top_root, DEV_ROOTS)?;
        // The mapping tree, then the details and top-level trees (one key each), then the
        // space map releasing the replaced blocks.
        let need = update_bound(news, h_map)
            + update_bound(1, h_details)
            + update_bound(1, h_top)
            + self.tm.data_release_bound(cows)?;
        if self.tm.meta_headroom() < need {
            return Err(MetaError::NoMetadataSpace.into());
        }
        Ok(())
    }

    /// Step 4, under the metadata lock: map the new blocks and release what they replace.
    pub(crate) fn finish_write(&mut self, plan: WritePlan) -> Result<()> {
        self.note_data_write();
        let news: Vec<(VirtualBlock, u64)> = plan
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
                    .btree_insert(&mut root, MAPPING, vb.0, &v.to_le_bytes())?
                {
                    Some(old) => self.tm.dec_value(MAPPING, &old)?,
                    None => newly += 1,
                }
            }
            self.set_vol_root(id, root)?;
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
    pub(super) fn zero_range(
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
                self.write_once(id, d.snap_time, pos, &zeros)?;
            }
            pos = bend;
        }
        Ok(())
    }
}
