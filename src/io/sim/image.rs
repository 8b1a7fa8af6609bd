//! Post-crash states: a [`CrashPoint`] (every device's durable layers and unflushed writes
//! just before a flush), the [`CrashFaults`] a state applies to the unflushed writes, and
//! the [`CrashImage`] built from them: the durable layers plus one copy-on-write layer of the
//! surviving writes, a device that recovery can read and write (and that can fail reads or
//! flip a bit, for media faults).

use super::layer::{never_written, read_layers, read_range, Layer, WriteRec, SECTOR};
use crate::io::BlockDev;
use std::io;
use std::sync::{Arc, Mutex};

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
    /// Everything this image holds, as durable layers oldest first (its writes since the
    /// crash become one more layer), and its capacity: what a new device of a group starts
    /// from ([`super::SimGroup::add_image`]).
    pub(super) fn durable_layers(&self) -> (Vec<Arc<Layer>>, u64) {
        let mut durable = self.layers.clone();
        let top = self.top.lock().unwrap();
        if !top.sectors.is_empty() {
            durable.push(Arc::new(top.clone()));
        }
        (durable, self.capacity)
    }

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
    use crate::io::sim::SimGroup;
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
}
