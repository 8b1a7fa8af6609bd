//! Writing a volume's changes as a stream: the blocks that differ from the from-snapshot
//! (or, without one, every mapped block), read in coalesced runs and written as `w`
//! records, with all-zero and unmapped blocks as `z` records.

use super::{DiffWriter, MAX_RECORD};
use crate::export::diff::{diff_blocks, BlockDiff, DiffKind};
use crate::export::raw::read_data_run;
use crate::export::{is_zero, Progress, Result};
use crate::pool::{Pool, VolumeId};
use std::io::Write;

/// Mappings fetched per walk for a full (no from-snapshot) diff.
const MAP_BATCH: usize = 16384;

/// What an export-diff wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportDiffStats {
    /// Bytes in `w` records.
    pub data_bytes: u64,
    /// Bytes covered by `z` records.
    pub zero_bytes: u64,
}

/// Coalesces differing blocks into records: adjacent data becomes one `w` record (up to
/// [`MAX_RECORD`]), adjacent zeros one `z` record.
struct Emitter<'a, 'w> {
    out: DiffWriter<'w>,
    size: u64,
    bs: u64,
    /// A pending `w` record: offset and bytes.
    w: (u64, Vec<u8>),
    /// A pending `z` record: offset and length.
    z: (u64, u64),
    stats: ExportDiffStats,
    progress: &'a dyn Progress,
}

impl Emitter<'_, '_> {
    fn flush_w(&mut self) -> Result<()> {
        if !self.w.1.is_empty() {
            self.out.write(self.w.0, &self.w.1)?;
            self.stats.data_bytes += self.w.1.len() as u64;
            self.w.1.clear();
        }
        Ok(())
    }
    fn flush_z(&mut self) -> Result<()> {
        if self.z.1 > 0 {
            self.out.zero(self.z.0, self.z.1)?;
            self.stats.zero_bytes += self.z.1;
            self.z.1 = 0;
        }
        Ok(())
    }
    fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        self.flush_z()?;
        let contiguous = self.w.0 + self.w.1.len() as u64 == offset;
        if !self.w.1.is_empty() && (!contiguous || self.w.1.len() as u64 >= MAX_RECORD) {
            self.flush_w()?;
        }
        if self.w.1.is_empty() {
            self.w.0 = offset;
        }
        self.w.1.extend_from_slice(bytes);
        Ok(())
    }
    fn zeros(&mut self, offset: u64, length: u64) -> Result<()> {
        self.flush_w()?;
        if self.z.1 > 0 && self.z.0 + self.z.1 != offset {
            self.flush_z()?;
        }
        if self.z.1 == 0 {
            self.z.0 = offset;
        }
        self.z.1 += length;
        Ok(())
    }

    /// Emit a batch of differing blocks (in block order), reading TO's data in runs.
    fn blocks(&mut self, pool: &Pool, diffs: &[BlockDiff]) -> Result<()> {
        let bs = self.bs;
        let max_run = (MAX_RECORD / bs).max(1) as usize;
        let mut buf = Vec::new();
        let mut i = 0;
        while i < diffs.len() {
            let d = diffs[i];
            let start = d.vb * bs;
            let Some(pb0) = d.to_block else {
                // Unmapped in TO: zeros.
                i += 1;
                if start < self.size {
                    self.zeros(start, bs.min(self.size - start))?;
                }
                self.progress.inc(bs);
                continue;
            };
            let mut j = i + 1;
            while j < diffs.len()
                && j - i < max_run
                && diffs[j].vb == diffs[j - 1].vb + 1
                && diffs[j]
                    .to_block
                    .is_some_and(|p| Some(p) == diffs[j - 1].to_block.map(|q| q + 1))
            {
                j += 1;
            }
            let end = ((d.vb + (j - i) as u64) * bs).min(self.size);
            self.progress.inc((j - i) as u64 * bs);
            i = j;
            if start >= end {
                continue;
            }
            buf.resize((end - start) as usize, 0);
            read_data_run(pool, pb0, &mut buf)?;
            for (k, piece) in buf.chunks(bs as usize).enumerate() {
                let off = start + k as u64 * bs;
                if is_zero(piece) {
                    self.zeros(off, piece.len() as u64)?;
                } else {
                    self.data(off, piece)?;
                }
            }
        }
        Ok(())
    }
}

/// Write the changes of volume `to` since its snapshot `from` (or, without `from`, all its
/// data) as an rbd diff v1 stream.
pub fn export_diff(
    pool: &mut Pool,
    to: VolumeId,
    from: Option<VolumeId>,
    w: &mut dyn Write,
    progress: &dyn Progress,
) -> Result<ExportDiffStats> {
    let td = pool.details(to)?;
    let bs = pool.block_size();
    let mut out = DiffWriter::new(w)?;
    if let Some(f) = from {
        out.from_snap(&pool.details(f)?.name)?;
    }
    out.to_snap(&td.name)?;
    out.size(td.size)?;
    let mut em = Emitter {
        out,
        size: td.size,
        bs,
        w: (0, Vec::new()),
        z: (0, 0),
        stats: ExportDiffStats::default(),
        progress,
    };
    match from {
        Some(f) => {
            let mut diffs = Vec::new();
            diff_blocks(pool, f, to, &mut |d| {
                diffs.push(d);
                Ok(())
            })?;
            progress.set_total(diffs.len() as u64 * bs);
            em.blocks(pool, &diffs)?;
        }
        None => {
            progress.set_total(td.mapped * bs);
            let mut next = 0;
            loop {
                let maps = pool.mappings(to, next, u64::MAX, MAP_BATCH)?;
                let Some(&(last, _)) = maps.last() else { break };
                next = last + 1;
                let diffs: Vec<BlockDiff> = maps
                    .iter()
                    .map(|&(vb, pb)| BlockDiff {
                        vb,
                        kind: DiffKind::OnlyInTo,
                        to_block: Some(pb),
                    })
                    .collect();
                em.blocks(pool, &diffs)?;
                if maps.len() < MAP_BATCH {
                    break;
                }
            }
        }
    }
    em.flush_w()?;
    em.flush_z()?;
    let stats = em.stats;
    em.out.end()?;
    Ok(stats)
}
