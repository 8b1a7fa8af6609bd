//! The read/write path shared by [`super::FileDev`] and [`super::UringDev`]: range checks,
//! length tracking, resuming short transfers, and O_DIRECT alignment (bounce buffers and
//! read-modify-write). Each engine only supplies [`RawIo::raw_batch`], which moves bytes.
//!
//! Invariants:
//! - with O_DIRECT, the engine only ever sees ops whose offset, length and buffer address are
//!   multiples of [`ALIGN`]; any other op goes through an [`AlignedBuf`] bounce covering the
//!   aligned blocks around it, and an unaligned write first reads the partial blocks at its
//!   ends (read-modify-write);
//! - a read-modify-write never loses a concurrent write to other bytes of the same 4 KiB
//!   block: writes hold per-block stripe locks (shared for plain writes, exclusive for the
//!   partial end blocks of a read-modify-write), taken in ascending order so they cannot
//!   deadlock; within one batch, a read-modify-write whose blocks another write of the batch
//!   touches runs after the rest, one at a time;
//! - an unaligned write that ends past the end of the file mid-block extends the file to the
//!   next 4 KiB boundary (the extra bytes are zeros); `len()` still reports the end of the
//!   furthest write;
//! - ops of one batch run concurrently and in no order: overlapping bytes of two ops of a
//!   batch have no defined result, as for two concurrent calls.

use super::aligned::{is_aligned, AlignedBuf, ALIGN};
use super::file::FileCore;
use super::IoOp;
use std::io;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// An engine's raw transfer: what is left once alignment, checks and lengths are handled.
pub(crate) trait RawIo {
    fn core(&self) -> &FileCore;
    /// Run every op to completion (resuming short transfers with [`step`]): a read past
    /// the end fills the rest of its buffer with zeros. On failure, the index of the first
    /// failed op and its error. Returns only when no op is in flight.
    fn raw_batch(&self, ops: &mut [IoOp<'_>]) -> Result<(), (usize, io::Error)>;
    /// `fdatasync` of the file.
    fn raw_flush(&self) -> io::Result<()>;
}

/// `impl BlockDev` for an engine `$t: RawIo`: reads, writes and batches through
/// [`run_ops`], the rest through its [`FileCore`].
macro_rules! block_dev_via_raw_io {
    ($t:ty) => {
        impl $crate::io::BlockDev for $t {
            fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
                let mut op = [$crate::io::IoOp::read(buf, offset)];
                $crate::io::direct::run_ops(self, &mut op).map_err(|(_, e)| e)
            }

            fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
                let mut op = [$crate::io::IoOp::write(buf, offset)];
                $crate::io::direct::run_ops(self, &mut op).map_err(|(_, e)| e)
            }

            fn submit_batch(&self, ops: &mut [$crate::io::IoOp<'_>]) -> std::io::Result<()> {
                $crate::io::direct::run_ops(self, ops)
                    .map_err(|(i, e)| $crate::io::op::batch_error(ops, i, e))
            }

            fn flush(&self) -> std::io::Result<()> {
                $crate::io::direct::RawIo::raw_flush(self)
            }

            fn len(&self) -> u64 {
                $crate::io::direct::RawIo::core(self).len()
            }

            fn is_hole(&self, offset: u64, len: u64) -> std::io::Result<bool> {
                $crate::io::direct::RawIo::core(self).is_hole(offset, len)
            }

            fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
                $crate::io::direct::RawIo::core(self).punch_hole(offset, len)
            }

            fn allocate(&self, offset: u64, len: u64) -> std::io::Result<()> {
                $crate::io::direct::RawIo::core(self).allocate(offset, len)
            }

            fn will_need(&self, offset: u64, len: u64) -> std::io::Result<()> {
                $crate::io::direct::RawIo::core(self).will_need(offset, len)
            }
            fn start_writeback(&self, offset: u64, len: u64) -> std::io::Result<()> {
                $crate::io::direct::RawIo::core(self).start_writeback(offset, len)
            }

            fn ensure_len(&self, len: u64) -> std::io::Result<()> {
                $crate::io::direct::RawIo::core(self).ensure_len(len)
            }
        }
    };
}
pub(crate) use block_dev_via_raw_io;

/// What to do after a transfer of `n` bytes that began `done` bytes into an op of `len`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The op is complete.
    Complete,
    /// End of file: zero the rest of the read buffer from the given byte; complete.
    ZeroFrom(usize),
    /// Short transfer: go on from the given byte of the op.
    Resume(usize),
    /// The device made no progress on a write.
    Stuck,
}

pub(crate) fn step(direct: bool, write: bool, done: usize, n: usize, len: usize) -> Step {
    let now = done.saturating_add(n);
    if now >= len {
        return Step::Complete;
    }
    if n == 0 {
        return if write {
            Step::Stuck
        } else {
            Step::ZeroFrom(now)
        };
    }
    if direct && !is_aligned(now as u64) {
        if !write {
            // O_DIRECT reads stop short mid-block only at the end of the file.
            return Step::ZeroFrom(now);
        }
        // The rest cannot start mid-block: rewrite the partial block (same bytes).
        let back = now - now % ALIGN;
        return if back > done {
            Step::Resume(back)
        } else {
            Step::Stuck
        };
    }
    Step::Resume(now)
}

/// The error of [`Step::Stuck`].
pub(crate) fn stuck() -> io::Error {
    io::Error::new(
        io::ErrorKind::WriteZero,
        "the device accepted no bytes of a write",
    )
}

const STRIPES: usize = 64;

/// Per-block locks of an O_DIRECT device (block `b` maps to stripe `b % 64`).
pub(crate) struct Stripes([RwLock<()>; STRIPES]);

impl Stripes {
    pub(crate) fn new() -> Stripes {
        Stripes([const { RwLock::new(()) }; STRIPES])
    }
}

enum Held<'a> {
    // Held only to be dropped.
    Shared(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'a, ()>),
}

fn stripe_bit(block: u64) -> u64 {
    1 << (block % STRIPES as u64)
}

/// Lock the stripes of `shared` and `exclusive` (bit masks) in ascending order; a stripe in
/// both is taken exclusively. The locks guard no data, so a poisoned one is simply taken.
fn lock_stripes(s: &Stripes, shared: u64, exclusive: u64) -> Vec<Held<'_>> {
    let mut held = Vec::new();
    for (i, l) in s.0.iter().enumerate() {
        let bit = 1u64 << i;
        if exclusive & bit != 0 {
            held.push(Held::Exclusive(
                l.write().unwrap_or_else(|e| e.into_inner()),
            ));
        } else if shared & bit != 0 {
            held.push(Held::Shared(l.read().unwrap_or_else(|e| e.into_inner())));
        }
    }
    held
}

/// How one op of an O_DIRECT batch is carried out.
enum Plan {
    /// Aligned (or empty): handed to the engine as it is.
    Pass,
    /// Unaligned read: read the aligned blocks `[a0, a0 + buf.len())`, copy out.
    Bounce { a0: u64, buf: AlignedBuf },
    /// Unaligned write: read the partial end blocks into `buf`, copy the data in, write
    /// `buf` at `a0`. `later`: another write of the batch touches its blocks, so it runs
    /// alone after the rest.
    Rmw {
        a0: u64,
        buf: AlignedBuf,
        later: bool,
    },
}

impl Plan {
    /// The start and bounce buffer of a read-modify-write deferred (`later`) or not.
    fn rmw(&mut self, later: bool) -> Option<(u64, &mut AlignedBuf)> {
        match self {
            Plan::Rmw { a0, buf, later: l } if *l == later => Some((*a0, buf)),
            _ => None,
        }
    }
}

/// Run a batch on `dev`: the entry point of both engines' reads, writes and batches.
pub(crate) fn run_ops<D: RawIo + ?Sized>(
    dev: &D,
    ops: &mut [IoOp<'_>],
) -> Result<(), (usize, io::Error)> {
    let core = dev.core();
    for (i, op) in ops.iter().enumerate() {
        let end = op.end().map_err(|e| (i, e))?;
        if op.is_write() {
            core.check_write_end(end).map_err(|e| (i, e))?;
        }
    }
    let r = match core.stripes() {
        Some(stripes) => run_direct(dev, stripes, ops),
        None => run_buffered(dev, ops),
    };
    match r {
        Ok(()) => {
            for op in ops.iter().filter(|op| op.is_write() && !op.is_empty()) {
                core.wrote_to(op.offset() + op.len() as u64);
            }
        }
        // Some writes may have landed: learn the length from the file.
        Err(_) => core.refresh_len(),
    }
    r
}

/// Through the page cache, writes go to the file in pieces that never cross a multiple of
/// `FOLIO_PIECE`: the kernel sizes the page-cache folios a write creates by the write, and a
/// small write into a large folio later costs in proportion to the folio (ext4 on kernel
/// 6.18: 4 KiB random writes through `serve` ran at 25k IOPS after a fill with 1 MiB
/// writes, 62k with the fill in these pieces).
pub(crate) const FOLIO_PIECE: u64 = 64 << 10;

/// A batch through the page cache: writes cut into `FOLIO_PIECE` pieces, one batch still.
fn run_buffered<D: RawIo + ?Sized>(
    dev: &D,
    ops: &mut [IoOp<'_>],
) -> Result<(), (usize, io::Error)> {
    let crosses =
        |op: &IoOp<'_>| op.is_write() && op.offset() % FOLIO_PIECE + op.len() as u64 > FOLIO_PIECE;
    if !ops.iter().any(crosses) {
        return dev.raw_batch(ops);
    }
    let mut pieces = Vec::with_capacity(ops.len() * 2);
    let mut origin = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter_mut().enumerate() {
        match op {
            IoOp::Write { buf, offset } => {
                let (buf, mut at) = (&**buf, *offset);
                let mut rest = buf;
                while !rest.is_empty() {
                    let n = ((FOLIO_PIECE - at % FOLIO_PIECE) as usize).min(rest.len());
                    let (piece, tail) = rest.split_at(n);
                    pieces.push(IoOp::write(piece, at));
                    origin.push(i);
                    rest = tail;
                    at += n as u64;
                }
                if buf.is_empty() {
                    pieces.push(IoOp::write(buf, at));
                    origin.push(i);
                }
            }
            read => {
                pieces.push(read.reborrow());
                origin.push(i);
            }
        }
    }
    dev.raw_batch(&mut pieces).map_err(|(k, e)| (origin[k], e))
}

fn aligned_range(offset: u64, len: usize) -> (u64, u64) {
    let a = ALIGN as u64;
    let end = offset + len as u64;
    (offset - offset % a, end.div_ceil(a) * a)
}

fn run_direct<D: RawIo + ?Sized>(
    dev: &D,
    stripes: &Stripes,
    ops: &mut [IoOp<'_>],
) -> Result<(), (usize, io::Error)> {
    // Plan every op, and the stripe locks its writes need.
    let mut plans = Vec::with_capacity(ops.len());
    let (mut shared, mut exclusive) = (0u64, 0u64);
    let mut write_blocks = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let aligned =
            is_aligned(op.offset()) && is_aligned(op.len() as u64) && is_aligned(op.addr() as u64);
        let (a0, a1) = aligned_range(op.offset(), op.len());
        let (b0, b1) = (a0 / ALIGN as u64, a1 / ALIGN as u64);
        if op.is_write() && !op.is_empty() {
            shared |= if b1 - b0 >= STRIPES as u64 {
                !0
            } else {
                (b0..b1).fold(0, |m, b| m | stripe_bit(b))
            };
            write_blocks.push((b0, b1, i));
        }
        if aligned || op.is_empty() {
            plans.push(Plan::Pass);
            continue;
        }
        let buf = AlignedBuf::new((a1 - a0) as usize).map_err(|e| (i, e))?;
        plans.push(if op.is_write() {
            exclusive |= stripe_bit(b0) | stripe_bit(b1 - 1);
            Plan::Rmw {
                a0,
                buf,
                later: false,
            }
        } else {
            Plan::Bounce { a0, buf }
        });
    }
    if exclusive == 0 && plans.iter().all(|p| matches!(p, Plan::Pass)) {
        let _held = lock_stripes(stripes, shared, 0);
        return dev.raw_batch(ops);
    }
    for &(b0, b1, i) in &write_blocks {
        if let Some(Plan::Rmw { later, .. }) = plans.get_mut(i) {
            *later = write_blocks
                .iter()
                .any(|&(c0, c1, j)| j != i && c0 < b1 && b0 < c1);
        }
    }
    let _held = lock_stripes(stripes, shared, exclusive);

    // 1. The partial end blocks of the read-modify-writes that run now; then their data.
    let mut edge_ops = Vec::new();
    let mut edge_of = Vec::new();
    for (i, (op, plan)) in ops.iter().zip(plans.iter_mut()).enumerate() {
        if let Some((a0, buf)) = plan.rmw(false) {
            for e in edge_reads(a0, op, buf) {
                edge_ops.push(e);
                edge_of.push(i);
            }
        }
    }
    dev.raw_batch(&mut edge_ops)
        .map_err(|(k, e)| (edge_of[k], e))?;
    drop(edge_ops);
    for (op, plan) in ops.iter().zip(plans.iter_mut()) {
        if let Some((a0, buf)) = plan.rmw(false) {
            copy_in(op, a0, buf);
        }
    }

    // 2. Everything but the deferred read-modify-writes, at queue depth.
    let mut main = Vec::with_capacity(ops.len());
    let mut main_of = Vec::with_capacity(ops.len());
    for (i, (op, plan)) in ops.iter_mut().zip(plans.iter_mut()).enumerate() {
        let raw = match plan {
            Plan::Pass => op.reborrow(),
            Plan::Bounce { a0, buf } => IoOp::read(buf, *a0),
            Plan::Rmw {
                a0,
                buf,
                later: false,
            } => IoOp::write(buf, *a0),
            Plan::Rmw { later: true, .. } => continue,
        };
        main.push(raw);
        main_of.push(i);
    }
    dev.raw_batch(&mut main).map_err(|(k, e)| (main_of[k], e))?;
    drop(main);
    for (op, plan) in ops.iter_mut().zip(plans.iter()) {
        if let (IoOp::Read { buf: out, offset }, Plan::Bounce { a0, buf }) = (op, plan) {
            let at = (*offset - a0) as usize;
            let n = out.len();
            out.copy_from_slice(&buf[at..at + n]);
        }
    }

    // 3. The deferred read-modify-writes, one at a time, in batch order.
    for (i, (op, plan)) in ops.iter().zip(plans.iter_mut()).enumerate() {
        if let Some((a0, buf)) = plan.rmw(true) {
            let mut edges = edge_reads(a0, op, buf);
            dev.raw_batch(&mut edges).map_err(|(_, e)| (i, e))?;
            drop(edges);
            copy_in(op, a0, buf);
            dev.raw_batch(&mut [IoOp::write(buf, a0)])
                .map_err(|(_, e)| (i, e))?;
        }
    }
    Ok(())
}

/// Copy the data of the write `op` into its bounce buffer `buf`, which starts at `a0`.
fn copy_in(op: &IoOp<'_>, a0: u64, buf: &mut AlignedBuf) {
    if let IoOp::Write { buf: data, offset } = op {
        let at = (offset - a0) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
    }
}

/// Reads of the partial blocks at the ends of the unaligned write `op`, into its bounce
/// buffer `buf` (which covers the aligned blocks from `a0`): none, one or two ops.
fn edge_reads<'b>(a0: u64, op: &IoOp<'_>, buf: &'b mut AlignedBuf) -> Vec<IoOp<'b>> {
    let a = ALIGN as u64;
    let end = op.offset() + op.len() as u64;
    let a1 = a0 + buf.len() as u64;
    let head = op.offset() != a0;
    let tail = end != a1;
    let mut out = Vec::with_capacity(2);
    if buf.len() == ALIGN {
        if head || tail {
            out.push(IoOp::read(&mut buf[..], a0));
        }
        return out;
    }
    let (first, rest) = buf.split_at_mut(ALIGN);
    let last_start = rest.len() - ALIGN;
    let last = &mut rest[last_start..];
    if head {
        out.push(IoOp::read(first, a0));
    }
    if tail {
        out.push(IoOp::read(last, a1 - a));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the ops it is given and performs them on a real file.
    struct Recorder {
        core: FileCore,
        file: std::fs::File,
        seen: std::sync::Mutex<Vec<(bool, u64, usize)>>,
    }

    impl RawIo for Recorder {
        fn core(&self) -> &FileCore {
            &self.core
        }
        fn raw_batch(&self, ops: &mut [IoOp<'_>]) -> Result<(), (usize, io::Error)> {
            use std::os::unix::fs::FileExt;
            for (i, op) in ops.iter_mut().enumerate() {
                self.seen
                    .lock()
                    .unwrap()
                    .push((op.is_write(), op.offset(), op.len()));
                let r = match op {
                    IoOp::Read { buf, offset } => self.file.read_exact_at(buf, *offset),
                    IoOp::Write { buf, offset } => self.file.write_all_at(buf, *offset),
                };
                r.map_err(|e| (i, e))?;
            }
            Ok(())
        }
        fn raw_flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Buffered writes reach the file in pieces that never cross a 64 KiB boundary (they
    /// once went whole, and 4 KiB writes into the large folios a 1 MiB write made were
    /// 2.5x slower); reads go whole; the bytes are the same.
    #[test]
    fn buffered_writes_go_in_folio_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 4 << 20]).unwrap();
        let dev = Recorder {
            core: FileCore::open(&path, true, false).unwrap(),
            file: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap(),
            seen: Default::default(),
        };
        let big: Vec<u8> = (0..(1 << 20) + 300).map(|i| (i % 251) as u8).collect();
        let small = [7u8; 4096];
        let mut back = vec![0u8; 300_000];
        let mut ops = [
            IoOp::write(&big, 65536 - 100),
            IoOp::write(&small, 2 << 20),
            IoOp::read(&mut back, 10),
        ];
        run_ops(&dev, &mut ops).unwrap();
        let seen = dev.seen.lock().unwrap().clone();
        let writes: Vec<_> = seen.iter().filter(|o| o.0).collect();
        assert!(writes.len() > 16, "{writes:?}");
        for &&(_, off, len) in &writes {
            assert!(off % FOLIO_PIECE + len as u64 <= FOLIO_PIECE, "{off}+{len}");
        }
        assert_eq!(writes[0], &(true, 65536 - 100, 100));
        let total: usize = writes.iter().map(|w| w.2).sum();
        assert_eq!(total, big.len() + small.len());
        assert!(seen.contains(&(false, 10, 300_000)), "the read went whole");
        let file = std::fs::read(&path).unwrap();
        assert_eq!(&file[65536 - 100..65536 - 100 + big.len()], &big[..]);
    }

    #[test]
    fn step_completes_resumes_and_zero_fills() {
        assert_eq!(step(false, false, 0, 10, 10), Step::Complete);
        assert_eq!(step(false, false, 0, 3, 10), Step::Resume(3));
        assert_eq!(step(false, false, 3, 0, 10), Step::ZeroFrom(3));
        assert_eq!(step(false, true, 3, 0, 10), Step::Stuck);
        assert_eq!(step(false, true, 0, 4, 10), Step::Resume(4));
    }

    #[test]
    fn step_direct_never_resumes_mid_block() {
        let a = ALIGN;
        assert_eq!(step(true, false, 0, a, 4 * a), Step::Resume(a));
        // A read that stops mid-block met the end of the file.
        assert_eq!(
            step(true, false, 0, a + 100, 4 * a),
            Step::ZeroFrom(a + 100)
        );
        // A write that stops mid-block rewrites that block from its start.
        assert_eq!(step(true, true, 0, 2 * a + 100, 4 * a), Step::Resume(2 * a));
        assert_eq!(step(true, true, a, 100, 4 * a), Step::Stuck);
    }

    #[test]
    fn aligned_range_covers_the_request() {
        assert_eq!(aligned_range(0, 4096), (0, 4096));
        assert_eq!(aligned_range(100, 10), (0, 4096));
        assert_eq!(aligned_range(4000, 200), (0, 8192));
        assert_eq!(aligned_range(8192, 1), (8192, 12288));
    }

    #[test]
    fn edge_reads_cover_only_partial_blocks() {
        let data = [0u8; 5000];
        let cases: [(u64, usize, Vec<u64>); 4] = [
            (100, 10, vec![0]),           // one block, both ends partial
            (4096, 5000, vec![8192]),     // aligned start, partial tail
            (1000, 7192, vec![0]),        // partial head, aligned end
            (1000, 10000, vec![0, 8192]), // both partial, two blocks
        ];
        for (offset, len, want) in cases {
            let big = vec![0u8; len];
            let src: &[u8] = if len <= data.len() {
                &data[..len]
            } else {
                &big
            };
            let op = IoOp::write(src, offset);
            let (a0, a1) = aligned_range(offset, len);
            let mut buf = AlignedBuf::new((a1 - a0) as usize).unwrap();
            let got: Vec<u64> = edge_reads(a0, &op, &mut buf)
                .iter()
                .map(|e| {
                    assert_eq!(e.len(), ALIGN);
                    e.offset()
                })
                .collect();
            assert_eq!(got, want, "write of {len} at {offset}");
        }
    }

    #[test]
    fn stripes_lock_in_order_shared_and_exclusive() {
        let s = Stripes::new();
        let held = lock_stripes(&s, 0b1011, 0b0010);
        assert_eq!(held.len(), 3);
        assert!(matches!(held[1], Held::Exclusive(_)));
        // A shared stripe admits another reader.
        assert!(s.0[0].try_read().is_ok());
        assert!(s.0[1].try_read().is_err());
        drop(held);
        assert!(s.0[1].try_write().is_ok());
    }
}
