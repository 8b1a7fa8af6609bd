//! Incremental streams in Ceph's "rbd diff v1" format (`doc/dev/rbd-diff.rst` in Ceph), so a
//! diff written here can be applied by `rbd import-diff` and one written by `rbd export-diff`
//! can be applied here.
//!
//! Format: the header `rbd diff v1\n`, then records, each a one-byte tag: `f` from-snapshot
//! name and `t` to-snapshot name (le32 length + bytes), `s` image size (le64), then data
//! records `w` (le64 offset, le64 length, the bytes) and `z` (le64 offset, le64 length: reads
//! as zeros), and a final `e`.
//!
//! Applying a diff follows `rbd import-diff`: when the diff names a from-snapshot, the
//! target must have a snapshot of that name (a volume of that name whose origin is the
//! target); after the data, a read-only snapshot named by `t` is taken (unless `t` is the
//! target's own name: a diff of a head, applied to the same-named volume). The target is
//! protected by a temporary snapshot (O(1)) taken before the first change: any error rolls the
//! target back to it, so a bad or truncated stream leaves the target as it was.

use super::diff::{diff_blocks, BlockDiff, DiffKind};
use super::raw::read_data_run;
use super::{is_zero, ExportError, Progress, Result};
use crate::pool::details::validate_name;
use crate::pool::{Pool, PoolError, VolumeId};
use std::io::{self, Read, Write};

/// The stream's first bytes.
pub const HEADER: &[u8; 12] = b"rbd diff v1\n";
/// Longest snapshot name accepted from a stream.
const MAX_NAME: u32 = 4096;
/// Largest `w` record written, and bytes of a record's data handled at once.
const MAX_RECORD: u64 = 8 << 20;
/// Mappings fetched per walk for a full (no from-snapshot) diff.
const MAP_BATCH: usize = 16384;

/// One record of a stream (the data of a `w` record follows it, see [`DiffReader::read_data`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    FromSnap(String),
    ToSnap(String),
    Size(u64),
    Write { offset: u64, length: u64 },
    Zero { offset: u64, length: u64 },
    End,
}

/// Reads records from a stream, tracking the byte position for error messages.
pub struct DiffReader<'a> {
    r: &'a mut dyn Read,
    pos: u64,
}

impl<'a> DiffReader<'a> {
    /// Check the header.
    pub fn new(r: &'a mut dyn Read) -> Result<DiffReader<'a>> {
        let mut rd = DiffReader { r, pos: 0 };
        let mut h = [0u8; HEADER.len()];
        let n = rd.fill(&mut h)?;
        if n > 0 && n < h.len() && HEADER.starts_with(&h[..n]) {
            return Err(ExportError::Truncated {
                offset: n as u64,
                what: "the header",
            });
        }
        if &h != HEADER {
            return Err(ExportError::BadHeader {
                found: String::from_utf8_lossy(&h[..n]).into_owned(),
            });
        }
        Ok(rd)
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(ExportError::io(format!(
                        "reading the diff at byte {}",
                        self.pos + n as u64
                    ))(e))
                }
            }
        }
        self.pos += n as u64;
        Ok(n)
    }

    fn exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<()> {
        if self.fill(buf)? < buf.len() {
            return Err(ExportError::Truncated {
                offset: self.pos,
                what,
            });
        }
        Ok(())
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        let mut b = [0u8; 8];
        self.exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    fn name(&mut self, what: &'static str) -> Result<String> {
        let at = self.pos;
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        let len = u32::from_le_bytes(b);
        if len > MAX_NAME {
            return Err(ExportError::BadRecord {
                offset: at,
                why: format!("a snapshot name of {len} bytes is too long"),
            });
        }
        let mut s = vec![0u8; len as usize];
        self.exact(&mut s, what)?;
        String::from_utf8(s).map_err(|_| ExportError::BadRecord {
            offset: at,
            why: "a snapshot name is not UTF-8".into(),
        })
    }

    /// The next record. For `Write`, the caller must then read exactly `length` bytes with
    /// [`DiffReader::read_data`].
    pub fn next_record(&mut self) -> Result<Record> {
        let mut tag = [0u8; 1];
        if self.fill(&mut tag)? == 0 {
            return Err(ExportError::Truncated {
                offset: self.pos,
                what: "the record stream (no end record 'e')",
            });
        }
        let at = self.pos - 1;
        let range = |rd: &mut Self, what| -> Result<(u64, u64)> {
            let offset = rd.u64(what)?;
            let length = rd.u64(what)?;
            if offset.checked_add(length).is_none() {
                return Err(ExportError::BadRecord {
                    offset: at,
                    why: format!("range {offset}+{length} overflows"),
                });
            }
            Ok((offset, length))
        };
        Ok(match tag[0] {
            b'f' => Record::FromSnap(self.name("a from-snapshot record ('f')")?),
            b't' => Record::ToSnap(self.name("a to-snapshot record ('t')")?),
            b's' => Record::Size(self.u64("a size record ('s')")?),
            b'w' => {
                let (offset, length) = range(self, "a data record ('w')")?;
                Record::Write { offset, length }
            }
            b'z' => {
                let (offset, length) = range(self, "a zero record ('z')")?;
                Record::Zero { offset, length }
            }
            b'e' => Record::End,
            t => return Err(ExportError::UnknownTag { tag: t, offset: at }),
        })
    }

    /// Data of the current `w` record.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<()> {
        self.exact(buf, "the data of a 'w' record")
    }
}

/// Writes a stream.
pub struct DiffWriter<'a> {
    w: &'a mut dyn Write,
}

impl<'a> DiffWriter<'a> {
    pub fn new(w: &'a mut dyn Write) -> Result<DiffWriter<'a>> {
        let mut dw = DiffWriter { w };
        dw.put(HEADER)?;
        Ok(dw)
    }
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w
            .write_all(b)
            .map_err(ExportError::io("writing the diff"))
    }
    fn named(&mut self, tag: u8, name: &str) -> Result<()> {
        self.put(&[tag])?;
        self.put(&(name.len() as u32).to_le_bytes())?;
        self.put(name.as_bytes())
    }
    pub fn from_snap(&mut self, name: &str) -> Result<()> {
        self.named(b'f', name)
    }
    pub fn to_snap(&mut self, name: &str) -> Result<()> {
        self.named(b't', name)
    }
    pub fn size(&mut self, size: u64) -> Result<()> {
        self.put(b"s")?;
        self.put(&size.to_le_bytes())
    }
    fn range(&mut self, tag: u8, offset: u64, length: u64) -> Result<()> {
        self.put(&[tag])?;
        self.put(&offset.to_le_bytes())?;
        self.put(&length.to_le_bytes())
    }
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.range(b'w', offset, data.len() as u64)?;
        self.put(data)
    }
    pub fn zero(&mut self, offset: u64, length: u64) -> Result<()> {
        self.range(b'z', offset, length)
    }
    pub fn end(mut self) -> Result<()> {
        self.put(b"e")?;
        self.w.flush().map_err(ExportError::io("flushing the diff"))
    }
}

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

/// How to apply a diff.
#[derive(Debug, Clone, Default)]
pub struct ImportDiffOptions {
    /// Do not take the diff's to-snapshot after applying it.
    pub no_snapshot: bool,
}

/// What an import-diff did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportDiffReport {
    pub from_snap: Option<String>,
    pub to_snap: Option<String>,
    /// The size the target was set to, when the diff gave one.
    pub size: Option<u64>,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    /// The snapshot taken after applying (the diff's `t`), if any.
    pub snapshot: Option<String>,
}

/// Apply an rbd diff v1 stream onto volume `vol`. On failure the volume is left as it was.
pub fn import_diff(
    pool: &mut Pool,
    vol: &str,
    r: &mut dyn Read,
    opts: &ImportDiffOptions,
    progress: &dyn Progress,
) -> Result<ImportDiffReport> {
    let mut rd = DiffReader::new(r)?;
    let mut rep = ImportDiffReport::default();
    // Metadata records come first; the first data record ends them.
    let first_data = loop {
        match rd.next_record()? {
            Record::FromSnap(s) => rep.from_snap = Some(s),
            Record::ToSnap(s) => rep.to_snap = Some(s),
            Record::Size(s) => rep.size = Some(s),
            other => break other,
        }
    };
    let (vid, vd) = pool.find(vol)?;
    if vd.read_only {
        return Err(PoolError::ReadOnlyVolume(vol.to_string()).into());
    }
    if let Some(f) = &rep.from_snap {
        match pool.find(f) {
            Ok((_, fd)) if fd.origin == vid => {}
            Ok(_) | Err(PoolError::NoSuchVolume(_)) => {
                return Err(ExportError::MissingFromSnap {
                    vol: vol.to_string(),
                    snap: f.clone(),
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
    // A diff of a volume's head names the volume itself as its end: applied onto a volume
    // of that name there is no snapshot to take (nor could one have that name).
    let take = rep
        .to_snap
        .clone()
        .filter(|t| !opts.no_snapshot && t != vol);
    if let Some(t) = &take {
        // Checked before anything is applied: the snapshot is taken last.
        validate_name(t).map_err(|why| ExportError::BadToSnap {
            name: t.clone(),
            why,
        })?;
        if pool.find(t).is_ok() {
            return Err(ExportError::ToSnapExists(t.clone()));
        }
        // Refused now, not after the data went in: the snapshot is taken after the commit,
        // where a failure could no longer roll the target back.
        crate::pool::details::validate_name(t).map_err(|why| PoolError::InvalidName {
            name: t.clone(),
            why,
        })?;
    }
    if let Some(s) = rep.size {
        progress.set_total(s);
    }
    // The pre-image, to roll back to on failure (O(1); a leftover from a crash is stale).
    let guard = format!(".import-diff-guard-{vid}");
    if pool.find(&guard).is_ok() {
        pool.remove_volume(&guard)?;
    }
    pool.snapshot(vol, &guard, true)?;
    let applied = apply(pool, vid, vol, &mut rd, first_data, &mut rep, progress)
        .and_then(|()| Ok(pool.commit()?));
    match applied {
        Ok(()) => {
            pool.remove_volume(&guard)?;
            if let Some(t) = take {
                pool.snapshot(vol, &t, true)?;
                rep.snapshot = Some(t);
            }
            Ok(rep)
        }
        Err(e) => {
            pool.commit().ok();
            match pool
                .rollback(vol, &guard)
                .and_then(|()| pool.remove_volume(&guard))
            {
                Ok(()) => Err(e),
                Err(e2) => Err(ExportError::Import {
                    name: vol.to_string(),
                    why: format!(
                        "{e}; restoring '{vol}' also failed ({e2}): its previous contents are \
                         in snapshot '{guard}' (`thinpool rollback`)"
                    ),
                }),
            }
        }
    }
}

fn apply(
    pool: &mut Pool,
    vid: VolumeId,
    vol: &str,
    rd: &mut DiffReader<'_>,
    first: Record,
    rep: &mut ImportDiffReport,
    progress: &dyn Progress,
) -> Result<()> {
    if let Some(s) = rep.size {
        if s != pool.details(vid)?.size {
            pool.resize(vol, s)?;
        }
    }
    let bs = pool.block_size();
    let size = pool.details(vid)?.size;
    let mut buf = vec![0u8; MAX_RECORD as usize];
    let mut rec = first;
    loop {
        let at = rd.position();
        let check = |offset: u64, length: u64| {
            if offset + length > size {
                return Err(ExportError::BadRecord {
                    offset: at,
                    why: format!("range {offset}+{length} is beyond the image size {size}"),
                });
            }
            Ok(())
        };
        match rec {
            Record::End => return Ok(()),
            Record::FromSnap(_) | Record::ToSnap(_) | Record::Size(_) => {
                return Err(ExportError::BadRecord {
                    offset: at,
                    why: "a metadata record follows the data records".into(),
                })
            }
            Record::Zero { offset, length } => {
                check(offset, length)?;
                pool.discard(vid, offset, length)?;
                rep.zero_bytes = rep.zero_bytes.saturating_add(length);
                progress.inc(length);
            }
            Record::Write { offset, length } => {
                check(offset, length)?;
                let mut done = 0;
                while done < length {
                    let n = (length - done).min(MAX_RECORD) as usize;
                    rd.read_data(&mut buf[..n])?;
                    write_piecewise(pool, vid, offset + done, &buf[..n], bs)?;
                    done += n as u64;
                    progress.inc(n as u64);
                }
                rep.data_bytes = rep.data_bytes.saturating_add(length);
            }
        }
        rec = rd.next_record()?;
    }
}

/// Write `data` at `offset`, but unmap (discard) block-aligned stretches that are all zeros
/// instead of allocating blocks for them.
fn write_piecewise(pool: &mut Pool, id: VolumeId, offset: u64, data: &[u8], bs: u64) -> Result<()> {
    let end = offset + data.len() as u64;
    let mut pos = offset;
    // (start, end, zero) of the stretch being gathered
    let mut cur: Option<(u64, u64, bool)> = None;
    let flush = |pool: &mut Pool, c: (u64, u64, bool)| -> Result<()> {
        let (s, e, zero) = c;
        if zero {
            pool.discard(id, s, e - s)?;
        } else {
            let d = &data[(s - offset) as usize..(e - offset) as usize];
            pool.write(id, s, d)?;
        }
        Ok(())
    };
    while pos < end {
        let pend = ((pos / bs + 1) * bs).min(end);
        let zero = is_zero(&data[(pos - offset) as usize..(pend - offset) as usize]);
        cur = match cur {
            Some((s, _, z)) if z == zero => Some((s, pend, z)),
            Some(c) => {
                flush(pool, c)?;
                Some((pos, pend, zero))
            }
            None => Some((pos, pend, zero)),
        };
        pos = pend;
    }
    if let Some(c) = cur {
        flush(pool, c)?;
    }
    Ok(())
}
