//! Sparse raw images of whole volumes.
//!
//! Export walks the volume's mappings in batches, merges runs of blocks that are contiguous
//! both in the volume and in the data file into one large read, and writes only the blocks
//! that hold a non-zero byte: into a regular file at their offsets (everything else stays a
//! hole; the file is sized at the end), or into a stream with zeros written for the holes.
//!
//! Import creates the volume, finds the source's data with `SEEK_DATA`/`SEEK_HOLE` (holes
//! are skipped without reading them), and writes only blocks that are not all zeros. A
//! stream of unknown length is imported into a volume created with a very large size, which
//! is cut to the number of bytes read at the end. Any failure removes the new volume.

use super::{is_zero, ExportError, Progress, Result};
use crate::pool::{Pool, PoolError, VolumeId};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

/// Mappings fetched per walk of the mapping tree.
const MAP_BATCH: usize = 16384;
/// Largest single read (export) or write (import) of contiguous blocks.
const MAX_IO: u64 = 8 << 20;
/// Zeros written to a stream per call.
static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];

/// Where an export goes.
pub enum RawSink<'a> {
    /// A regular file (truncated by the caller): holes are left unwritten and the file is
    /// sized to the volume at the end, so it stays sparse.
    File(&'a File),
    /// A stream (stdout, pipe, block device): holes are written as zeros.
    Stream(&'a mut dyn Write),
}

/// Where an import comes from.
pub enum ImportSource<'a> {
    /// A regular file: its holes are skipped without reading them.
    File(&'a File),
    /// A stream, read to its end.
    Stream(&'a mut dyn Read),
}

/// What an export did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportStats {
    /// The image's size (the volume's size).
    pub size: u64,
    /// Bytes of data written (the rest are holes).
    pub data_bytes: u64,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportStats {
    pub id: VolumeId,
    /// The new volume's size.
    pub size: u64,
    /// Bytes written to the volume (blocks that were not all zeros).
    pub data_bytes: u64,
}

impl RawSink<'_> {
    /// Write `data` at `offset`; `pos` is how far a stream has got.
    fn put(&mut self, pos: &mut u64, offset: u64, data: &[u8]) -> Result<()> {
        match self {
            RawSink::File(f) => f
                .write_all_at(data, offset)
                .map_err(ExportError::io(format!(
                    "writing the image at byte {offset}"
                )))?,
            RawSink::Stream(w) => {
                zeros_to(*w, *pos, offset)?;
                w.write_all(data).map_err(ExportError::io(format!(
                    "writing the image at byte {offset}"
                )))?;
            }
        }
        *pos = offset + data.len() as u64;
        Ok(())
    }
}

fn zeros_to(w: &mut dyn Write, from: u64, to: u64) -> Result<()> {
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..n])
            .map_err(ExportError::io(format!("writing the image at byte {at}")))?;
        at += n as u64;
    }
    Ok(())
}

/// Read `n` contiguous data blocks starting at data block `pb` in one request.
pub(crate) fn read_data_run(pool: &Pool, pb: u64, buf: &mut [u8]) -> Result<()> {
    let off = pb * pool.block_size();
    pool.data.read_at(buf, off).map_err(|source| {
        PoolError::DataIo {
            op: "read",
            offset: off,
            source,
        }
        .into()
    })
}

/// Export volume `id` as a raw image of exactly its size.
pub fn export_raw(
    pool: &mut Pool,
    id: VolumeId,
    mut sink: RawSink<'_>,
    progress: &dyn Progress,
) -> Result<ExportStats> {
    let size = pool.details(id)?.size;
    let bs = pool.block_size();
    let max_blocks = (MAX_IO / bs).max(1);
    progress.set_total(size);
    let mut buf = vec![0u8; (max_blocks * bs) as usize];
    let (mut pos, mut reported, mut data_bytes) = (0u64, 0u64, 0u64);
    let mut next_vb = 0u64;
    loop {
        let maps = pool.mappings(id, next_vb, u64::MAX, MAP_BATCH)?;
        let Some(&(last, _)) = maps.last() else { break };
        next_vb = last + 1;
        let mut i = 0;
        while i < maps.len() {
            // A run: consecutive in the volume and in the data file.
            let mut j = i + 1;
            while j < maps.len()
                && maps[j].0 == maps[j - 1].0 + 1
                && maps[j].1 == maps[j - 1].1 + 1
                && ((j - i) as u64) < max_blocks
            {
                j += 1;
            }
            let (vb0, pb0) = maps[i];
            let start = vb0 * bs;
            // Mappings past the size cannot exist (resize unmaps them); stay in bounds anyway.
            let end = ((vb0 + (j - i) as u64) * bs).min(size);
            i = j;
            if start >= end {
                continue;
            }
            let run = &mut buf[..(end - start) as usize];
            read_data_run(pool, pb0, run)?;
            // Write each stretch of blocks that are not all zeros in one request.
            let mut k = 0usize;
            while k < run.len() {
                let kend = (k + bs as usize).min(run.len());
                if is_zero(&run[k..kend]) {
                    k = kend;
                    continue;
                }
                let mut m = kend;
                while m < run.len() {
                    let mend = (m + bs as usize).min(run.len());
                    if is_zero(&run[m..mend]) {
                        break;
                    }
                    m = mend;
                }
                sink.put(&mut pos, start + k as u64, &run[k..m])?;
                data_bytes += (m - k) as u64;
                k = m;
            }
            progress.inc(end - reported);
            reported = end;
        }
        if maps.len() < MAP_BATCH {
            break;
        }
    }
    match &mut sink {
        RawSink::File(f) => f
            .set_len(size)
            .map_err(ExportError::io("setting the image's size"))?,
        RawSink::Stream(w) => {
            zeros_to(*w, pos, size)?;
            w.flush().map_err(ExportError::io("flushing the image"))?;
        }
    }
    progress.inc(size - reported);
    Ok(ExportStats { size, data_bytes })
}

/// Largest volume size the pool accepts, for a stream of unknown length.
fn generous_size(bs: u64) -> u64 {
    ((1u64 << 48) - 1).saturating_mul(bs).min(1 << 62)
}

/// Import `src` as a new volume `name`. `size` defaults to the file's size; a stream without
/// `size` becomes as large as the bytes it delivered. Commits before returning; on any
/// failure the new volume is removed again.
pub fn import_raw(
    pool: &mut Pool,
    name: &str,
    src: ImportSource<'_>,
    size: Option<u64>,
    progress: &dyn Progress,
) -> Result<ImportStats> {
    let bs = pool.block_size();
    let import_err = |why: String| ExportError::Import {
        name: name.to_string(),
        why,
    };
    let file_len = match &src {
        ImportSource::File(f) => Some(
            f.metadata()
                .map_err(ExportError::io("reading the source's size"))?
                .len(),
        ),
        ImportSource::Stream(_) => None,
    };
    if let (Some(len), Some(size)) = (file_len, size) {
        if len > size {
            return Err(import_err(format!(
                "the source is {len} bytes, larger than the requested size {size}; \
                 its tail would be lost"
            )));
        }
    }
    let vol_size = match size.or(file_len) {
        Some(0) => {
            return Err(import_err(
                "the source is empty; give a size to create an empty volume".into(),
            ))
        }
        Some(s) => s,
        None => generous_size(bs),
    };
    let id = pool.create_volume(name, vol_size, false)?;
    let body = match src {
        ImportSource::File(f) => {
            let len = file_len.unwrap_or(0);
            progress.set_total(len);
            import_file(pool, id, f, len, progress).map(|n| (vol_size, n))
        }
        ImportSource::Stream(r) => {
            if let Some(s) = size {
                progress.set_total(s);
            }
            import_stream(pool, id, r, size, progress).and_then(|(read, n)| {
                if size.is_some() {
                    return Ok((vol_size, n));
                }
                if read == 0 {
                    return Err(import_err(
                        "the input is empty; give a size to create an empty volume".into(),
                    ));
                }
                pool.resize(name, read)?;
                Ok((read, n))
            })
        }
    };
    let res = body.and_then(|v| {
        pool.commit()?;
        Ok(v)
    });
    match res {
        Ok((size, data_bytes)) => Ok(ImportStats {
            id,
            size,
            data_bytes,
        }),
        Err(e) => {
            // Name the import once, even when the cause is itself an import error.
            let e = match e {
                ExportError::Import { why, .. } => why,
                e => e.to_string(),
            };
            match pool.remove_volume(name) {
                Ok(()) => Err(import_err(format!(
                    "{e}; the partly imported volume was removed"
                ))),
                Err(e2) => Err(import_err(format!(
                    "{e}; removing the partly imported volume also failed ({e2}): \
                     remove it with `thinpool remove`"
                ))),
            }
        }
    }
}

/// Write the blocks of `buf` (volume bytes from block-aligned `offset`) that are not all
/// zeros, each stretch in one request. Returns the bytes written.
fn write_nonzero(pool: &mut Pool, id: VolumeId, offset: u64, buf: &[u8], bs: usize) -> Result<u64> {
    let mut written = 0;
    let mut k = 0;
    while k < buf.len() {
        let kend = (k + bs).min(buf.len());
        if is_zero(&buf[k..kend]) {
            k = kend;
            continue;
        }
        let mut m = kend;
        while m < buf.len() && !is_zero(&buf[m..(m + bs).min(buf.len())]) {
            m = (m + bs).min(buf.len());
        }
        pool.write(id, offset + k as u64, &buf[k..m])?;
        written += (m - k) as u64;
        k = m;
    }
    Ok(written)
}

/// The data extents of a file, `[start, end)`, in order; the whole file when the
/// filesystem cannot tell.
fn data_extents(f: &File, len: u64) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < len {
        let start = match crate::io::sys::seek_data_or_hole(f, at, true) {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && out.is_empty() => {
                return Ok(vec![(0, len)])
            }
            Err(e) => return Err(ExportError::io("finding the source's data (SEEK_DATA)")(e)),
        };
        let end = crate::io::sys::seek_data_or_hole(f, start, false)
            .map_err(ExportError::io("finding the source's holes (SEEK_HOLE)"))?
            .unwrap_or(len)
            .min(len);
        if end > start {
            out.push((start, end));
        }
        at = end.max(start + 1);
    }
    Ok(out)
}

fn import_file(
    pool: &mut Pool,
    id: VolumeId,
    f: &File,
    len: u64,
    progress: &dyn Progress,
) -> Result<u64> {
    let bs = pool.block_size();
    let chunk = MAX_IO.max(bs);
    let mut buf = vec![0u8; chunk as usize];
    let (mut done, mut written) = (0u64, 0u64);
    for (ds, de) in data_extents(f, len)? {
        // Whole blocks around the extent, never re-reading what an earlier extent covered.
        let start = (ds / bs * bs).max(done);
        let end = de.div_ceil(bs).saturating_mul(bs).min(len);
        let mut at = start;
        while at < end {
            let n = (end - at).min(chunk) as usize;
            f.read_exact_at(&mut buf[..n], at).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    ExportError::Io {
                        what: format!("short read at byte {at}: the source shrank while importing"),
                        source: e,
                    }
                } else {
                    ExportError::io(format!("reading the source at byte {at}"))(e)
                }
            })?;
            written += write_nonzero(pool, id, at, &buf[..n], bs as usize)?;
            at += n as u64;
            progress.inc(at - done);
            done = at;
        }
        done = done.max(end);
    }
    progress.inc(len - done.min(len));
    Ok(written)
}

/// Returns (bytes read, bytes written).
fn import_stream(
    pool: &mut Pool,
    id: VolumeId,
    r: &mut dyn Read,
    size: Option<u64>,
    progress: &dyn Progress,
) -> Result<(u64, u64)> {
    let bs = pool.block_size();
    let chunk = MAX_IO.max(bs);
    let mut buf = vec![0u8; chunk as usize];
    let limit = size.unwrap_or_else(|| generous_size(bs));
    let (mut at, mut written) = (0u64, 0u64);
    loop {
        let n = crate::io::read_full(r, &mut buf)
            .map_err(ExportError::io(format!("reading the input at byte {at}")))?;
        if n == 0 {
            break;
        }
        if at + n as u64 > limit {
            return Err(ExportError::Import {
                name: pool.details(id)?.name,
                why: format!("the input is longer than the requested size {limit}"),
            });
        }
        written += write_nonzero(pool, id, at, &buf[..n], bs as usize)?;
        at += n as u64;
        progress.inc(n as u64);
        if n < buf.len() {
            break;
        }
    }
    Ok((at, written))
}
