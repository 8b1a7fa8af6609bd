//! One request against the pool: validation (flags, range, read-only, sizes) before it
//! touches the pool, execution, and its reply — simple or structured, a read built whole or
//! handed to a sink a piece at a time, block status from the volume's mappings. Knows nothing
//! of connections or threads (`transmission` does).

use super::handshake::Session;
use super::proto::*;
use super::shared::Shared;
use crate::pool::{PoolError, SharedPool, VirtualBlock, VolumeId};
use std::io;

/// Reads longer than this are read and sent in pieces of this size.
pub(super) const STREAM_PIECE: usize = 1 << 20;
/// Most mappings looked at for one BLOCK_STATUS reply (the reply may cover less).
const STATUS_LIMIT: usize = 65536;

/// An error reply in whichever form the session uses.
pub(super) fn error_reply(sess: &Session, to: ChunkTo, error: u32, msg: &str) -> Vec<u8> {
    if sess.structured {
        error_chunk(to, error, msg)
    } else {
        let mut out = vec![0u8; SIMPLE_REPLY_SIZE];
        simple_reply(&mut out, error, to.handle);
        out
    }
}

/// Success without data: a simple reply, or (extended headers never use simple replies)
/// a final NONE chunk.
fn ok_reply(sess: &Session, to: ChunkTo) -> Vec<u8> {
    let mut out = Vec::new();
    if sess.extended {
        push_chunk(&mut out, to, REPLY_FLAG_DONE, REPLY_TYPE_NONE, &[]);
    } else {
        out.resize(SIMPLE_REPLY_SIZE, 0);
        simple_reply(&mut out, 0, to.handle);
    }
    out
}

fn pool_error(sess: &Session, to: ChunkTo, e: &PoolError) -> Vec<u8> {
    error_reply(sess, to, nbd_errno(e.errno()), &e.to_string())
}

/// Validate and run one request; returns the complete reply.
pub(crate) fn execute(shared: &Shared, sess: &Session, req: &Request, payload: &[u8]) -> Vec<u8> {
    if let Some(refusal) = invalid(sess, req) {
        return refusal;
    }
    let h = sess.to(req);
    let e = &sess.export;
    let writes = matches!(req.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    let pool = shared.pool();
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let (off, len) = (req.offset, req.length);
    let res = match req.kind {
        // Built whole: with no sink, `read` never fails.
        CMD_READ => {
            return read(pool, sess, req, None)
                .unwrap_or_else(|_| error_reply(sess, h, EIO, "internal error in thinpool serve"))
        }
        CMD_BLOCK_STATUS => return block_status(pool, sess, req),
        CMD_WRITE => pool.write(e.id, off, payload),
        CMD_TRIM => pool.discard(e.id, off, len),
        CMD_WRITE_ZEROES => {
            let may_unmap = req.flags & CMD_FLAG_NO_HOLE == 0;
            if !may_unmap && req.flags & CMD_FLAG_FAST_ZERO != 0 {
                // NO_HOLE writes the zeros: no faster than a write, so say so at once (the
                // client then writes them itself, or skips them).
                return error_reply(
                    sess,
                    h,
                    ENOTSUP,
                    "WRITE_ZEROES with NO_HOLE writes zeros: not fast",
                );
            }
            // Without NO_HOLE whole blocks are unmapped (a metadata change) and only the
            // partly covered first and last blocks are written: fast either way.
            pool.write_zeroes(e.id, off, len, may_unmap)
        }
        CMD_CACHE => pool.will_need(e.id, off, len, STATUS_LIMIT),
        _ => Ok(()), // FLUSH: the commit below
    };
    // FLUSH and FUA are acknowledged only once the commit protocol made the data durable.
    let res = res.and_then(|_| {
        if req.kind == CMD_FLUSH || (writes && fua) {
            pool.commit()
        } else {
            Ok(())
        }
    });
    match res {
        Ok(()) => ok_reply(sess, h),
        Err(err) => pool_error(sess, h, &err),
    }
}

/// The error reply a request gets before it touches the pool, if it is not valid.
pub(super) fn invalid(sess: &Session, req: &Request) -> Option<Vec<u8>> {
    let h = sess.to(req);
    let e = &sess.export;
    let allowed = match req.kind {
        CMD_READ if sess.structured => CMD_FLAG_FUA | CMD_FLAG_DF,
        CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        CMD_CACHE => 0,
        CMD_BLOCK_STATUS => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
        k => {
            return Some(error_reply(
                sess,
                h,
                EINVAL,
                &format!("unknown command {k}"),
            ))
        }
    };
    if req.flags & !allowed != 0 {
        let msg = format!(
            "flags {:#x} are not valid for command {}",
            req.flags, req.kind
        );
        return Some(error_reply(sess, h, EINVAL, &msg));
    }
    let writes = matches!(req.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && e.read_only {
        let msg = format!("export '{}' is read-only", e.name);
        return Some(error_reply(sess, h, EPERM, &msg));
    }
    if req.kind != CMD_FLUSH {
        let in_range = req
            .offset
            .checked_add(req.length)
            .is_some_and(|end| end <= e.size);
        if !in_range {
            let msg = format!(
                "range {}+{} is outside export '{}' ({} bytes)",
                req.offset, req.length, e.name, e.size
            );
            // The spec asks for ENOSPC on writes past the end, EINVAL otherwise.
            let code = if matches!(req.kind, CMD_WRITE | CMD_WRITE_ZEROES) {
                ENOSPC
            } else {
                EINVAL
            };
            return Some(error_reply(sess, h, code, &msg));
        }
    }
    if req.kind == CMD_READ && req.length > MAX_PAYLOAD as u64 {
        let msg = format!("read of {} bytes exceeds the 32 MiB maximum", req.length);
        return Some(error_reply(sess, h, EINVAL, &msg));
    }
    if req.kind == CMD_BLOCK_STATUS && !sess.has_contexts() {
        return Some(error_reply(
            sess,
            h,
            EINVAL,
            "no metadata context was negotiated",
        ));
    }
    if req.kind == CMD_BLOCK_STATUS && req.length == 0 {
        return Some(error_reply(
            sess,
            h,
            EINVAL,
            "block status of an empty range",
        ));
    }
    None
}

/// Where the pieces of a read reply go as they are read: `None` builds the reply whole
/// (returned), a sink sends every piece but the last (returned) as soon as it is read.
pub(super) type Sink<'a> = Option<&'a mut dyn FnMut(&[u8]) -> io::Result<()>>;

/// The reply to a read, data read `STREAM_PIECE` at a time. An error before anything was
/// handed to the sink is an error reply; after, a structured reply ends with an error
/// chunk, and `Err` means the reply cannot be finished (a sink error, or a simple reply or
/// an unfragmented (DF) chunk already under way): the connection must end.
pub(super) fn read(
    pool: &SharedPool,
    sess: &Session,
    req: &Request,
    mut sink: Sink,
) -> io::Result<Vec<u8>> {
    let (h, id, off, len) = (sess.to(req), sess.export.id, req.offset, req.length);
    // Runs of mapped (data) and unmapped (hole) bytes; one data run when holes cannot be
    // told (simple replies) or DF forbids them.
    let fragment = sess.structured && req.flags & CMD_FLAG_DF == 0;
    let runs = if len == 0 {
        Vec::new()
    } else if fragment {
        match extents(pool, id, off, off + len, usize::MAX) {
            Ok((r, _)) => r,
            Err(e) => return Ok(pool_error(sess, h, &e)),
        }
    } else {
        vec![(off, off + len, true)]
    };
    let whole = if sink.is_none() { len as usize } else { 0 };
    let mut out = Vec::with_capacity(whole.max(STREAM_PIECE.min(len as usize)) + 64);
    let mut sent = false;
    if !sess.structured {
        out.resize(SIMPLE_REPLY_SIZE, 0);
        simple_reply(&mut out, 0, h.handle);
    } else if runs.is_empty() {
        push_chunk(&mut out, h, REPLY_FLAG_DONE, REPLY_TYPE_NONE, &[]);
    }
    for (i, &(start, end, data)) in runs.iter().enumerate() {
        let last_run = i + 1 == runs.len();
        if !data {
            let mut p = [0u8; 12];
            p[..8].copy_from_slice(&start.to_be_bytes());
            p[8..].copy_from_slice(&((end - start) as u32).to_be_bytes());
            let flags = if last_run { REPLY_FLAG_DONE } else { 0 };
            push_chunk(&mut out, h, flags, REPLY_TYPE_OFFSET_HOLE, &p);
            continue;
        }
        let mut pos = start;
        while pos < end {
            let n = (end - pos).min(STREAM_PIECE as u64);
            // Where this piece's bytes begin in `out`, and where its chunk header does.
            let header_at = out.len();
            if sess.structured && (fragment || pos == start) {
                // A fragmented reply gives each piece a chunk; a DF reply has one chunk.
                let chunk_end = if fragment { pos + n } else { end };
                let flags = if last_run && chunk_end == end {
                    REPLY_FLAG_DONE
                } else {
                    0
                };
                chunk_header(
                    &mut out,
                    h,
                    flags,
                    REPLY_TYPE_OFFSET_DATA,
                    8 + (chunk_end - pos),
                );
                out.extend_from_slice(&pos.to_be_bytes());
            }
            let at = out.len();
            out.resize(at + n as usize, 0);
            if let Err(e) = pool.read(id, pos, &mut out[at..]) {
                if !sent {
                    return Ok(pool_error(sess, h, &e));
                }
                if !fragment {
                    return Err(io::Error::other(e.to_string()));
                }
                out.truncate(header_at);
                out.extend_from_slice(&pool_error(sess, h, &e));
                return Ok(out);
            }
            pos += n;
            if let Some(sink) = sink.as_mut() {
                if pos < end || !last_run {
                    sink(&out)?;
                    out.clear();
                    sent = true;
                }
            }
        }
    }
    Ok(out)
}

/// A run of bytes `[start, end)` and whether it is mapped (data) or a hole.
type Run = (u64, u64, bool);

/// Split `[lo, hi)` of a volume into maximal runs `(start, end, mapped)`. Looks at no more
/// than `limit` mappings; when it stops early the runs end at the last mapping seen and the
/// second value is true.
fn extents(
    pool: &SharedPool,
    id: VolumeId,
    lo: u64,
    hi: u64,
    limit: usize,
) -> crate::pool::Result<(Vec<Run>, bool)> {
    let bs = pool.block_size();
    let maps = pool
        .lock()?
        .mappings(id, lo / bs, (hi - 1) / bs + 1, limit)?;
    let truncated = maps.len() >= limit;
    Ok((
        runs_of(maps.into_iter().map(|(vb, _)| vb), bs, lo, hi, truncated),
        truncated,
    ))
}

/// `[lo, hi)` as maximal runs `(start, end, marked)`, from the marked virtual blocks in
/// ascending order; `truncated`: the list stopped early, so the runs end at its last block.
fn runs_of(
    marked: impl Iterator<Item = u64>,
    bs: u64,
    lo: u64,
    hi: u64,
    truncated: bool,
) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut push = |s: u64, e: u64, data: bool| match runs.last_mut() {
        Some(last) if last.2 == data && last.1 == s => last.1 = e,
        _ => runs.push((s, e, data)),
    };
    let mut pos = lo;
    for vb in marked {
        let (s, e) = VirtualBlock(vb).clip(bs, lo, hi);
        if s >= e {
            continue;
        }
        if s > pos {
            push(pos, s, false);
        }
        push(s, e, true);
        pos = e;
    }
    if !truncated && pos < hi {
        push(pos, hi, false);
    }
    runs
}

/// `[lo, hi)` of volume `id` as runs `(start, end, changed)`: changed where it maps other
/// data than `base` does (written, or discarded, since). Looks at no more than `limit`
/// differing blocks.
fn changed_runs(
    pool: &SharedPool,
    id: VolumeId,
    base: VolumeId,
    lo: u64,
    hi: u64,
    limit: usize,
) -> Result<Vec<Run>, String> {
    let bs = pool.block_size();
    let mut blocks = Vec::new();
    let mut guard = pool.lock().map_err(|e| e.to_string())?;
    let range = lo / bs..(hi - 1) / bs + 1;
    let mut truncated = false;
    crate::export::diff::diff_blocks_in(&mut guard, base, id, range, &mut |d| {
        truncated = blocks.len() >= limit;
        if !truncated {
            blocks.push(d.vb);
        }
        Ok(!truncated)
    })
    .map_err(|e| e.to_string())?;
    drop(guard);
    Ok(runs_of(blocks.into_iter(), bs, lo, hi, truncated))
}

/// One BLOCK_STATUS chunk: context `id`, descriptors from `runs` (at least one), each with
/// `status(marked)`. With extended headers a BLOCK_STATUS_EXT chunk (a descriptor count,
/// then 64-bit lengths and statuses); else 32-bit ones (a compact request is at most
/// 4 GiB long, and so is every run in its reply).
fn status_chunk(
    out: &mut Vec<u8>,
    flags: u16,
    h: ChunkTo,
    id: u32,
    runs: &[Run],
    status: impl Fn(bool) -> u32,
) {
    let mut p = Vec::with_capacity(8 + runs.len() * 16);
    p.extend_from_slice(&id.to_be_bytes());
    if h.extended {
        p.extend_from_slice(&(runs.len() as u32).to_be_bytes());
        for &(s, e, marked) in runs {
            p.extend_from_slice(&(e - s).to_be_bytes());
            p.extend_from_slice(&u64::from(status(marked)).to_be_bytes());
        }
        push_chunk(out, h, flags, REPLY_TYPE_BLOCK_STATUS_EXT, &p);
        return;
    }
    for &(s, e, marked) in runs {
        p.extend_from_slice(&((e - s) as u32).to_be_bytes());
        p.extend_from_slice(&status(marked).to_be_bytes());
    }
    push_chunk(out, h, flags, REPLY_TYPE_BLOCK_STATUS, &p);
}

fn block_status(pool: &SharedPool, sess: &Session, req: &Request) -> Vec<u8> {
    let (h, id) = (sess.to(req), sess.export.id);
    let (lo, hi) = (req.offset, req.offset + req.length);
    // Every selected context gets a chunk; the last one ends the reply. Runs are never
    // empty: a walk that stops early has seen at least one block, and an empty answer
    // would be a protocol error, so the whole range is reported then (as data, and as
    // changed: always safe).
    let mut chunks: Vec<(u32, Vec<Run>, bool)> = Vec::new();
    if sess.allocation_context {
        let (runs, _) = match extents(pool, id, lo, hi, STATUS_LIMIT) {
            Ok(r) => r,
            Err(e) => return pool_error(sess, h, &e),
        };
        chunks.push((BASE_ALLOCATION_ID, runs, true));
    }
    for c in &sess.changed {
        let runs = match changed_runs(pool, id, c.base, lo, hi, STATUS_LIMIT) {
            Ok(r) => r,
            Err(msg) => return error_reply(sess, h, EIO, &msg),
        };
        chunks.push((c.id, runs, false));
    }
    let mut out = Vec::new();
    let n = chunks.len();
    for (i, (ctx, mut runs, allocation)) in chunks.into_iter().enumerate() {
        if runs.is_empty() {
            runs.push((lo, hi, true));
        }
        if req.flags & CMD_FLAG_REQ_ONE != 0 {
            runs.truncate(1);
        }
        let flags = if i + 1 == n { REPLY_FLAG_DONE } else { 0 };
        if allocation {
            status_chunk(&mut out, flags, h, ctx, &runs, |data| {
                if data {
                    0
                } else {
                    STATE_HOLE | STATE_ZERO
                }
            });
        } else {
            status_chunk(&mut out, flags, h, ctx, &runs, |changed| {
                if changed {
                    STATE_CHANGED
                } else {
                    0
                }
            });
        }
    }
    out
}
