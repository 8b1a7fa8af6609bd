//! The per-device write log of the simulation: [`Layer`]s of sector contents (copy-on-write,
//! shared by `Arc`), the recorded unflushed writes ([`WriteRec`]), and each device's state
//! (durable layers, pending writes, the live view) with its reads, writes and flushes.

use crate::hash::IntMap;
use std::io;
use std::sync::Arc;

pub const SECTOR: u64 = 512;
type Sector = Box<[u8; SECTOR as usize]>;

type SectorMap = IntMap<u64, Sector>;

/// Sector contents written in one epoch (or one crash image's own writes).
#[derive(Default, Clone)]
pub struct Layer {
    pub(super) sectors: SectorMap,
}

impl Layer {
    /// Apply `data` at byte `offset`, read-modify-writing partial sectors against `below`.
    pub(super) fn apply(
        &mut self,
        offset: u64,
        data: &[u8],
        below: &dyn Fn(u64, &mut [u8; SECTOR as usize]),
    ) {
        let mut pos = 0usize;
        while pos < data.len() {
            let abs = offset + pos as u64;
            let s = abs / SECTOR;
            let within = (abs % SECTOR) as usize;
            let n = (SECTOR as usize - within).min(data.len() - pos);
            let entry = self.sectors.entry(s).or_insert_with(|| {
                let mut b = Box::new([0u8; SECTOR as usize]);
                below(s, &mut b);
                b
            });
            entry[within..within + n].copy_from_slice(&data[pos..pos + n]);
            pos += n;
        }
    }
}

/// One recorded write.
#[derive(Clone)]
pub struct WriteRec {
    pub seq: u64,
    pub offset: u64,
    pub data: Arc<[u8]>,
}

/// One device of a group: what is durable, what is not yet, and how it reads now.
#[derive(Clone, Default)]
pub(super) struct DevState {
    /// Flushed layers, oldest first.
    pub(super) durable: Vec<Arc<Layer>>,
    /// Writes since the last flush, in issue order.
    pub(super) pending: Vec<WriteRec>,
    /// The same writes merged, for reads of the live state.
    pub(super) live: Layer,
    pub(super) len: u64,
    pub(super) capacity: u64,
    pub(super) flushes: u64,
    pub(super) fail_flush_at: Option<u64>,
}

impl DevState {
    /// Read the live state (durable layers and the unflushed writes).
    pub(super) fn read(&self, buf: &mut [u8], offset: u64) {
        read_range(&self.durable, &[&self.live], buf, offset);
    }

    pub(super) fn is_hole(&self, offset: u64, len: u64) -> bool {
        never_written(&self.durable, &[&self.live], offset, len)
    }

    /// Record the write of `buf` at `offset`, issued at clock value `seq`.
    pub(super) fn write(&mut self, seq: u64, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.capacity {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let durable = self.durable.clone();
        self.live
            .apply(offset, buf, &|s, out| read_layers(&durable, &[], s, out));
        self.pending.push(WriteRec {
            seq,
            offset,
            data: Arc::from(buf),
        });
        self.len = self.len.max(end);
        Ok(())
    }

    /// Flush: the unflushed writes become a durable layer (unless this flush was made to
    /// fail).
    pub(super) fn flush(&mut self) -> io::Result<()> {
        let n = self.flushes;
        self.flushes += 1;
        if self.fail_flush_at == Some(n) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        if !self.pending.is_empty() {
            let layer = std::mem::take(&mut self.live);
            self.durable.push(Arc::new(layer));
            self.pending.clear();
            // Keep O(log n) layers (so reads stay fast): merge the newest two while the
            // older one is not much larger, like a binary counter. Crash points captured
            // earlier keep their own Arcs to the layers they saw.
            while self.durable.len() >= 2 {
                let n = self.durable.len();
                let (older, newer) = (&self.durable[n - 2], &self.durable[n - 1]);
                if older.sectors.len() > 2 * newer.sectors.len() {
                    break;
                }
                let mut merged = (**older).clone();
                for (s, v) in &newer.sectors {
                    merged.sectors.insert(*s, v.clone());
                }
                self.durable.truncate(n - 2);
                self.durable.push(Arc::new(merged));
            }
        }
        Ok(())
    }
}

/// Sector `s` from the topmost layer that holds it (`top` above `layers`), zeros if none.
pub(super) fn read_layers(
    layers: &[Arc<Layer>],
    top: &[&Layer],
    s: u64,
    out: &mut [u8; SECTOR as usize],
) {
    for l in top.iter().rev() {
        if let Some(d) = l.sectors.get(&s) {
            out.copy_from_slice(&d[..]);
            return;
        }
    }
    for l in layers.iter().rev() {
        if let Some(d) = l.sectors.get(&s) {
            out.copy_from_slice(&d[..]);
            return;
        }
    }
    out.fill(0);
}

/// True when no layer holds any sector of `[offset, offset+len)`: it was never written.
pub(super) fn never_written(layers: &[Arc<Layer>], top: &[&Layer], offset: u64, len: u64) -> bool {
    let (first, end) = (offset / SECTOR, (offset + len).div_ceil(SECTOR));
    (first..end).all(|s| {
        top.iter().all(|l| !l.sectors.contains_key(&s))
            && layers.iter().all(|l| !l.sectors.contains_key(&s))
    })
}

/// Read `buf.len()` bytes at `offset` through the layers (see [`read_layers`]).
pub(super) fn read_range(layers: &[Arc<Layer>], top: &[&Layer], buf: &mut [u8], offset: u64) {
    let mut pos = 0usize;
    let mut sec = [0u8; SECTOR as usize];
    while pos < buf.len() {
        let abs = offset + pos as u64;
        let s = abs / SECTOR;
        let within = (abs % SECTOR) as usize;
        let n = (SECTOR as usize - within).min(buf.len() - pos);
        if n == SECTOR as usize {
            // Whole sector: copy straight into the caller's buffer.
            let dst: &mut [u8; SECTOR as usize] = (&mut buf[pos..pos + n]).try_into().unwrap();
            read_layers(layers, top, s, dst);
        } else {
            read_layers(layers, top, s, &mut sec);
            buf[pos..pos + n].copy_from_slice(&sec[within..within + n]);
        }
        pos += n;
    }
}
