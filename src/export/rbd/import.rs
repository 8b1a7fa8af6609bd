//! Applying a stream onto a volume, as `rbd import-diff` does: the from-snapshot must exist,
//! the data records are applied (all-zero stretches are discarded, not allocated), then the
//! to-snapshot is taken; a temporary snapshot taken before the first change rolls the
//! target back on any error.

use super::{DiffReader, Record, MAX_RECORD};
use crate::export::{is_zero, ExportError, Progress, Result};
use crate::pool::details::validate_name;
use crate::pool::{Pool, PoolError, VolumeId};
use std::io::Read;

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
            Ok((_, fd)) if fd.origin == Some(vid) => {}
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
        // Checked before anything is applied: the snapshot is taken last, after the commit,
        // where a failure could no longer roll the target back.
        validate_name(t).map_err(|why| ExportError::BadToSnap {
            name: t.clone(),
            why,
        })?;
        if pool.find(t).is_ok() {
            return Err(ExportError::ToSnapExists(t.clone()));
        }
    }
    if let Some(s) = rep.size {
        progress.set_total(s);
    }
    // The pre-image, to roll back to on failure (O(1)). One left behind means an import was
    // interrupted (a crash, `kill -9`) with the volume perhaps half-written: that is the
    // user's call, not something to drop silently.
    let guard = guard_name(vid);
    if pool.find(&guard).is_ok() {
        return Err(ExportError::InterruptedImport {
            pool: pool.dir().display().to_string(),
            vol: vol.to_string(),
            guard,
        });
    }
    pool.snapshot(vol, &guard, true)?;
    let applied = apply(pool, vid, vol, &mut rd, first_data, &mut rep, progress)
        .and_then(|()| Ok(pool.commit()?));
    match applied {
        Ok(()) => {
            // The guard goes and the end snapshot comes in one commit: a crash between two
            // would leave the import applied but unmarked.
            match take {
                Some(t) => {
                    pool.replace_snapshot(&guard, vol, &t, true)?;
                    rep.snapshot = Some(t);
                }
                None => pool.remove_volume(&guard)?,
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

/// The snapshot `import_diff` keeps of volume `vid` while it applies a diff.
pub fn guard_name(vid: VolumeId) -> String {
    format!(".import-diff-guard-{vid}")
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
