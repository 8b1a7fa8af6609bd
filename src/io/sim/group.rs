//! [`SimGroup`]: simulated devices ([`SimDev`]) sharing one event clock. Each device keeps
//! its own write log; just before every flush, on any device, the group captures a
//! [`CrashPoint`] of all of them. A group can also start from post-crash images, so a pool
//! recovered on it can crash again.

use super::image::{CrashImage, CrashPoint, DevSnapshot};
use super::layer::DevState;
use crate::io::BlockDev;
use std::io;
use std::sync::{Arc, Mutex};

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
        let (durable, capacity) = img.durable_layers();
        let mut g = self.g.lock().unwrap();
        g.devs.push(DevState {
            durable,
            len: img.len(),
            capacity,
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

/// Every device's state now, as a crash point.
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
        g.devs[self.idx].read(buf, offset);
        Ok(())
    }

    fn is_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        let g = self.group.g.lock().unwrap();
        Ok(g.devs[self.idx].is_hole(offset, len))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut g = self.group.g.lock().unwrap();
        g.clock += 1;
        let seq = g.clock;
        g.devs[self.idx].write(seq, buf, offset)
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
        g.devs[self.idx].flush()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sim::CrashFaults;
    use rand::SeedableRng;

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
