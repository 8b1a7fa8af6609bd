//! `SimDev`: a simulated device for crash injection (docs/design.md §6).
//!
//! Devices are created in a [`SimGroup`] sharing one event clock. Every write is recorded
//! (offset, bytes, global sequence number); a flush freezes the writes since the previous
//! flush into an immutable layer. Just before every flush, on any device of the group, the
//! group captures a [`CrashPoint`]: for each device, its durable layers (shared by `Arc`, never
//! copied) and the writes still unflushed. Any crash instant between two flushes is covered by
//! a subset of the unflushed writes at the next flush, so exploring subsets at these points
//! explores every crash instant.
//!
//! A post-crash image ([`CrashImage`]) stacks a new layer holding the chosen subset (writes
//! dropped, applied in a shuffled order, torn at 512-byte sectors) on top of the durable
//! layers: copy-on-write, never a full copy per state.

use super::BlockDev;
use crate::hash::IntMap;
use std::io;
use std::sync::{Arc, Mutex};

pub const SECTOR: u64 = 512;
type Sector = Box<[u8; SECTOR as usize]>;

type SectorMap = IntMap<u64, Sector>;

/// Sector contents written in one epoch (or one crash image's own writes).
#[derive(Default, Clone)]
pub struct Layer {
    sectors: SectorMap,
}

impl Layer {
    /// Apply `data` at byte `offset`, read-modify-writing partial sectors against `below`.
    fn apply(&mut self, offset: u64, data: &[u8], below: &dyn Fn(u64, &mut [u8; SECTOR as usize])) {
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

#[derive(Clone, Default)]
struct DevState {
    /// Flushed layers, oldest first.
    durable: Vec<Arc<Layer>>,
    /// Writes since the last flush, in issue order.
    pending: Vec<WriteRec>,
    /// The same writes merged, for reads of the live state.
    live: Layer,
    len: u64,
    capacity: u64,
    flushes: u64,
    fail_flush_at: Option<u64>,
}

fn read_layers(layers: &[Arc<Layer>], top: &[&Layer], s: u64, out: &mut [u8; SECTOR as usize]) {
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
fn never_written(layers: &[Arc<Layer>], top: &[&Layer], offset: u64, len: u64) -> bool {
    let (first, end) = (offset / SECTOR, (offset + len).div_ceil(SECTOR));
    (first..end).all(|s| {
        top.iter().all(|l| !l.sectors.contains_key(&s))
            && layers.iter().all(|l| !l.sectors.contains_key(&s))
    })
}

fn read_range(layers: &[Arc<Layer>], top: &[&Layer], buf: &mut [u8], offset: u64) {
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

/// The state of every device of a group just before a flush.
#[derive(Clone)]
pub struct CrashPoint {
    /// Global sequence number of the flush about to happen.
    pub seq: u64,
    pub devs: Vec<DevSnapshot>,
}

/// One device's state at a crash point.
#[derive(Clone)]
pub struct DevSnapshot {
    /// Flushed layers, oldest first (shared, never copied).
    pub durable: Vec<Arc<Layer>>,
    /// Unflushed writes in issue order.
    pub pending: Vec<WriteRec>,
    pub len: u64,
    pub capacity: u64,
}

impl CrashPoint {
    /// Number of writes that were still unflushed, over all devices.
    pub fn pending(&self) -> usize {
        self.devs.iter().map(|d| d.pending.len()).sum()
    }

    /// Crashes between the unflushed writes, as [`CrashFaults::upto`] values: just before
    /// each unflushed write but the first (before the first, all are lost: a drop-all
    /// state), over all devices in issue order. When there are more than `limit`, `limit`
    /// of them evenly spaced, always including the last.
    pub fn write_boundaries(&self, limit: usize) -> Vec<u64> {
        let mut seqs: Vec<u64> = self
            .devs
            .iter()
            .flat_map(|d| d.pending.iter().map(|w| w.seq))
            .collect();
        seqs.sort_unstable();
        let cuts = seqs.get(1..).unwrap_or(&[]);
        if cuts.len() <= limit {
            return cuts.to_vec();
        }
        (1..=limit)
            .map(|i| cuts[i * cuts.len() / limit - 1])
            .collect()
    }
}

struct Group {
    devs: Vec<DevState>,
    clock: u64,
    points: Vec<CrashPoint>,
    capture: bool,
}

/// A set of simulated devices sharing one clock.
#[derive(Clone)]
pub struct SimGroup {
    g: Arc<Mutex<Group>>,
}

impl Default for SimGroup {
    fn default() -> Self {
        Self::new()
    }
}

impl SimGroup {
    pub fn new() -> SimGroup {
        SimGroup {
            g: Arc::new(Mutex::new(Group {
                devs: Vec::new(),
                clock: 0,
                points: Vec::new(),
                capture: true,
            })),
        }
    }

    /// A new device of `capacity` bytes in this group.
    pub fn add(&self, capacity: u64) -> SimDev {
        let mut g = self.g.lock().unwrap();
        g.devs.push(DevState {
            capacity,
            ..Default::default()
        });
        SimDev {
            group: self.clone(),
            idx: g.devs.len() - 1,
        }
    }

    /// A new device of this group that starts from a post-crash image: the image's layers
    /// (shared by `Arc`, never copied) and its own writes so far become the device's durable
    /// state. A pool recovered on such devices keeps running, and its writes and flushes
    /// are recorded as usual, so it can crash again (a crash during or after recovery).
    pub fn add_image(&self, img: &CrashImage) -> SimDev {
        let mut durable = img.layers.clone();
        let top = img.top.lock().unwrap();
        if !top.sectors.is_empty() {
            durable.push(Arc::new(top.clone()));
        }
        let mut g = self.g.lock().unwrap();
        g.devs.push(DevState {
            durable,
            len: img.len(),
            capacity: img.capacity,
            ..Default::default()
        });
        SimDev {
            group: self.clone(),
            idx: g.devs.len() - 1,
        }
    }

    /// Crash points captured since the last call.
    pub fn take_points(&self) -> Vec<CrashPoint> {
        std::mem::take(&mut self.g.lock().unwrap().points)
    }

    pub fn set_capture(&self, on: bool) {
        self.g.lock().unwrap().capture = on;
    }

    /// The current state as a crash point (e.g. at the end of a run, with writes unflushed).
    pub fn current_point(&self) -> CrashPoint {
        let g = self.g.lock().unwrap();
        snapshot(&g)
    }

    /// Make the next flush of device `idx` fail with EIO.
    pub fn fail_next_flush(&self, idx: usize) {
        let mut g = self.g.lock().unwrap();
        let d = &mut g.devs[idx];
        d.fail_flush_at = Some(d.flushes);
    }
}

fn snapshot(g: &Group) -> CrashPoint {
    CrashPoint {
        seq: g.clock,
        devs: g
            .devs
            .iter()
            .map(|d| DevSnapshot {
                durable: d.durable.clone(),
                pending: d.pending.clone(),
                len: d.len,
                capacity: d.capacity,
            })
            .collect(),
    }
}

/// A device of a [`SimGroup`].
pub struct SimDev {
    group: SimGroup,
    idx: usize,
}

impl BlockDev for SimDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let g = self.group.g.lock().unwrap();
        let d = &g.devs[self.idx];
        read_range(&d.durable, &[&d.live], buf, offset);
        Ok(())
    }

    fn is_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        let g = self.group.g.lock().unwrap();
        let d = &g.devs[self.idx];
        Ok(never_written(&d.durable, &[&d.live], offset, len))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut g = self.group.g.lock().unwrap();
        g.clock += 1;
        let seq = g.clock;
        let d = &mut g.devs[self.idx];
        let end = offset + buf.len() as u64;
        if end > d.capacity {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let durable = d.durable.clone();
        d.live
            .apply(offset, buf, &|s, out| read_layers(&durable, &[], s, out));
        d.pending.push(WriteRec {
            seq,
            offset,
            data: Arc::from(buf),
        });
        d.len = d.len.max(end);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut g = self.group.g.lock().unwrap();
        if g.capture {
            let p = snapshot(&g);
            if p.pending() > 0 {
                g.points.push(p);
            }
        }
        g.clock += 1;
        let d = &mut g.devs[self.idx];
        let n = d.flushes;
        d.flushes += 1;
        if d.fail_flush_at == Some(n) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        if !d.pending.is_empty() {
            let layer = std::mem::take(&mut d.live);
            d.durable.push(Arc::new(layer));
            d.pending.clear();
            // Keep O(log n) layers (so reads stay fast): merge the newest two while the
            // older one is not much larger, like a binary counter. Crash points captured
            // earlier keep their own Arcs to the layers they saw.
            while d.durable.len() >= 2 {
                let n = d.durable.len();
                let (older, newer) = (&d.durable[n - 2], &d.durable[n - 1]);
                if older.sectors.len() > 2 * newer.sectors.len() {
                    break;
                }
                let mut merged = (**older).clone();
                for (s, v) in &newer.sectors {
                    merged.sectors.insert(*s, v.clone());
                }
                d.durable.truncate(n - 2);
                d.durable.push(Arc::new(merged));
            }
        }
        Ok(())
    }

    fn len(&self) -> u64 {
        self.group.g.lock().unwrap().devs[self.idx].len
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        // A punch is a write of zeros as far as durability goes.
        let zeros = vec![0u8; len as usize];
        self.write_at(&zeros, offset)
    }

    fn ensure_len(&self, len: u64) -> io::Result<()> {
        let mut g = self.group.g.lock().unwrap();
        let d = &mut g.devs[self.idx];
        if len > d.capacity {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        d.len = d.len.max(len);
        Ok(())
    }
}

/// How a crash image treats the unflushed writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct CrashFaults {
    /// Probability that an unflushed write is lost.
    pub drop: f64,
    /// Send one surviving write of `len >= 4096` to another 4 KiB-aligned offset
    /// (a misdirected write), when set.
    pub misdirect: bool,
    /// Apply surviving writes in a random order (later writes may lose to earlier ones).
    pub reorder: bool,
    /// Probability that a surviving multi-sector write is torn (only some sectors land).
    pub torn: f64,
    /// A crash just before the write of this clock value: exactly the unflushed writes
    /// issued before it land, in order, whole (`drop`, `reorder` and `torn` are ignored).
    pub upto: Option<u64>,
}

/// A device holding a post-crash state: durable layers plus one layer of surviving
/// unflushed writes, plus its own writes (recovery) on top.
pub struct CrashImage {
    layers: Vec<Arc<Layer>>,
    top: Mutex<Layer>,
    len: std::sync::atomic::AtomicU64,
    capacity: u64,
    /// Reads touching this byte range fail with EIO (fault injection).
    fail_reads: Option<(u64, u64)>,
}

impl CrashImage {
    /// Build device `idx`'s post-crash image from a crash point.
    pub fn build(
        p: &CrashPoint,
        idx: usize,
        faults: CrashFaults,
        rng: &mut impl rand::Rng,
    ) -> CrashImage {
        let DevSnapshot {
            durable,
            pending,
            len,
            capacity,
        } = &p.devs[idx];
        let mut chosen: Vec<&WriteRec> = match faults.upto {
            Some(upto) => pending.iter().filter(|w| w.seq < upto).collect(),
            None => pending
                .iter()
                .filter(|_| !rng.gen_bool(faults.drop))
                .collect(),
        };
        if faults.reorder && faults.upto.is_none() {
            use rand::seq::SliceRandom;
            chosen.shuffle(rng);
        }
        let mut layer = Layer::default();
        let misdirect_at = if faults.misdirect {
            let big: Vec<usize> = (0..chosen.len())
                .filter(|&i| chosen[i].data.len() >= 4096)
                .collect();
            (!big.is_empty()).then(|| big[rng.gen_range(0..big.len())])
        } else {
            None
        };
        for (i, w) in chosen.into_iter().enumerate() {
            let w = if misdirect_at == Some(i) {
                let blocks = (*len / 4096).max(1);
                let to = rng.gen_range(0..blocks) * 4096;
                &WriteRec {
                    seq: w.seq,
                    offset: to,
                    data: w.data.clone(),
                }
            } else {
                w
            };
            let sectors = (w.offset % SECTOR + w.data.len() as u64).div_ceil(SECTOR);
            let torn = sectors > 1 && faults.upto.is_none() && rng.gen_bool(faults.torn);
            let mut pos = 0usize;
            while pos < w.data.len() {
                let abs = w.offset + pos as u64;
                let n = ((SECTOR - abs % SECTOR) as usize).min(w.data.len() - pos);
                if !torn || rng.gen_bool(0.5) {
                    let base = durable.clone();
                    layer.apply(abs, &w.data[pos..pos + n], &|s, out| {
                        read_layers(&base, &[], s, out)
                    });
                }
                pos += n;
            }
        }
        let mut layers = durable.clone();
        layers.push(Arc::new(layer));
        CrashImage {
            layers,
            top: Mutex::new(Layer::default()),
            len: std::sync::atomic::AtomicU64::new(*len),
            capacity: *capacity,
            fail_reads: None,
        }
    }

    /// Every write this device ever received (durable and surviving), as sector numbers.
    pub fn written_sectors(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .layers
            .iter()
            .flat_map(|l| l.sectors.keys().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Flip one bit of the byte at `offset` (a bit flip on the medium).
    pub fn flip_bit(&self, offset: u64, bit: u8) {
        let mut b = [0u8; 1];
        let _ = self.read_at(&mut b, offset);
        b[0] ^= 1 << (bit % 8);
        let _ = self.write_at(&b, offset);
    }

    /// Make reads of `[offset, offset+len)` fail with EIO.
    pub fn fail_reads(&mut self, offset: u64, len: u64) {
        self.fail_reads = Some((offset, len));
    }
}

impl BlockDev for CrashImage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if let Some((o, l)) = self.fail_reads {
            if offset < o + l && o < offset + buf.len() as u64 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        let top = self.top.lock().unwrap();
        read_range(&self.layers, &[&top], buf, offset);
        Ok(())
    }
    fn is_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        let top = self.top.lock().unwrap();
        Ok(never_written(&self.layers, &[&top], offset, len))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if offset + buf.len() as u64 > self.capacity {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let mut top = self.top.lock().unwrap();
        let layers = &self.layers;
        top.apply(offset, buf, &|s, out| read_layers(layers, &[], s, out));
        self.len.fetch_max(
            offset + buf.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> u64 {
        self.len.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_at(&vec![0u8; len as usize], offset)
    }
    fn ensure_len(&self, len: u64) -> io::Result<()> {
        if len > self.capacity {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.len
            .fetch_max(len, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn unflushed_writes_can_vanish_flushed_ones_cannot() {
        let g = SimGroup::new();
        let d = g.add(1 << 20);
        d.write_at(&[1u8; 1024], 0).unwrap();
        d.flush().unwrap();
        d.write_at(&[2u8; 1024], 0).unwrap();
        d.flush().unwrap();
        let pts = g.take_points();
        assert_eq!(pts.len(), 2);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let all_drop = CrashFaults {
            drop: 1.0,
            reorder: false,
            torn: 0.0,
            ..Default::default()
        };
        let img = CrashImage::build(&pts[1], 0, all_drop, &mut rng);
        let mut b = [0u8; 1024];
        img.read_at(&mut b, 0).unwrap();
        assert_eq!(
            b, [1u8; 1024],
            "the first flush is durable at the second crash point"
        );
        let keep = CrashFaults {
            drop: 0.0,
            reorder: false,
            torn: 0.0,
            ..Default::default()
        };
        let img = CrashImage::build(&pts[1], 0, keep, &mut rng);
        img.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [2u8; 1024]);
        let img = CrashImage::build(&pts[0], 0, all_drop, &mut rng);
        img.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [0u8; 1024]);
        // Torn: some sectors of a two-sector write land, others do not.
        let torn = CrashFaults {
            drop: 0.0,
            reorder: false,
            torn: 1.0,
            ..Default::default()
        };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..32 {
            let img = CrashImage::build(&pts[1], 0, torn, &mut rng);
            img.read_at(&mut b, 0).unwrap();
            seen.insert((b[0], b[600]));
        }
        assert!(seen.contains(&(2, 1)) || seen.contains(&(1, 2)), "{seen:?}");
    }

    #[test]
    fn a_crash_between_writes_keeps_exactly_the_earlier_ones() {
        let g = SimGroup::new();
        let a = g.add(1 << 20);
        let b = g.add(1 << 20);
        a.write_at(&[1u8; 512], 0).unwrap();
        b.write_at(&[2u8; 512], 0).unwrap();
        a.write_at(&[3u8; 512], 512).unwrap();
        let p = g.current_point();
        let cuts = p.write_boundaries(16);
        assert_eq!(cuts.len(), 2, "before the 2nd and the 3rd write");
        assert_eq!(
            p.write_boundaries(1),
            vec![cuts[1]],
            "a sample keeps the last"
        );
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let read = |img: &CrashImage, at: u64| {
            let mut s = [0u8; 1];
            img.read_at(&mut s, at).unwrap();
            s[0]
        };
        let faults = |upto| CrashFaults {
            upto: Some(upto),
            drop: 1.0, // ignored with upto
            ..Default::default()
        };
        let (a1, b1) = (
            CrashImage::build(&p, 0, faults(cuts[0]), &mut rng),
            CrashImage::build(&p, 1, faults(cuts[0]), &mut rng),
        );
        assert_eq!((read(&a1, 0), read(&b1, 0), read(&a1, 512)), (1, 0, 0));
        let (a2, b2) = (
            CrashImage::build(&p, 0, faults(cuts[1]), &mut rng),
            CrashImage::build(&p, 1, faults(cuts[1]), &mut rng),
        );
        assert_eq!((read(&a2, 0), read(&b2, 0), read(&a2, 512)), (1, 2, 0));
    }

    #[test]
    fn a_group_can_start_from_a_crash_image_and_crash_again() {
        let g = SimGroup::new();
        let d = g.add(1 << 20);
        d.write_at(&[1u8; 1024], 0).unwrap();
        d.flush().unwrap();
        d.write_at(&[2u8; 512], 512).unwrap();
        d.flush().unwrap();
        let pts = g.take_points();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        // The second flush's write survived the crash; recovery wrote a sector of its own.
        let img = CrashImage::build(&pts[1], 0, CrashFaults::default(), &mut rng);
        img.write_at(&[3u8; 512], 2048).unwrap();
        let g2 = SimGroup::new();
        let d2 = g2.add_image(&img);
        assert_eq!(d2.len(), img.len());
        let mut b = [0u8; 512];
        for (off, want) in [(0, 1u8), (512, 2), (2048, 3)] {
            d2.read_at(&mut b, off).unwrap();
            assert_eq!(b, [want; 512], "offset {off}");
        }
        // The image is the new device's durable base: a crash of the continuation keeps it
        // and may lose only the continuation's own unflushed writes.
        d2.write_at(&[4u8; 512], 0).unwrap();
        d2.flush().unwrap();
        let p = g2.take_points();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].pending(), 1);
        let all_drop = CrashFaults {
            drop: 1.0,
            ..Default::default()
        };
        let img2 = CrashImage::build(&p[0], 0, all_drop, &mut rng);
        for (off, want) in [(0, 1u8), (512, 2), (2048, 3)] {
            img2.read_at(&mut b, off).unwrap();
            assert_eq!(b, [want; 512], "offset {off}");
        }
        // The original image is untouched by the continuation.
        img.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [1u8; 512]);
    }
}
