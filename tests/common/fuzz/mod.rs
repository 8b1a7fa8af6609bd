//! Fuzz targets shared by the seeded runner (`tests/fuzz.rs`, every CI run) and the
//! cargo-fuzz crate (`fuzz/`, libFuzzer). Each target is a function of one byte string,
//! read through `arbitrary::Unstructured`, and panics when a property fails. Properties,
//! for every target: no panic, no out-of-bounds access, every case bounded, and no silently
//! wrong answer (what that means is said per target).
//!
//! Structured mutation starts from valid encodings: a real pool built once on in-memory
//! devices ([`fixture`]), whose blocks the targets copy and mutate.
#![allow(dead_code)]

pub mod faulty;
pub mod meta;
pub mod nbd;
pub mod rbd;

use arbitrary::Unstructured;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use thinpool::io::BlockDev;
use thinpool::meta::block::{self, BlockType};
use thinpool::meta::BLOCK_SIZE;
use thinpool::pool::{CreateOptions, OpenOptions, Pool};

/// One named target: the runner gives each case `max_len` random bytes at most.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub max_len: usize,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "label",
        run: meta::label,
        max_len: 256,
    },
    Target {
        name: "label_in_pool",
        run: meta::label_in_pool,
        max_len: 256,
    },
    Target {
        name: "record",
        run: meta::record,
        max_len: 512,
    },
    Target {
        name: "journal_scan",
        run: meta::journal_scan,
        max_len: 1024,
    },
    Target {
        name: "journal_in_pool",
        run: meta::journal_in_pool,
        max_len: 512,
    },
    Target {
        name: "node",
        run: meta::node,
        max_len: 512,
    },
    Target {
        name: "node_in_pool",
        run: meta::node_in_pool,
        max_len: 256,
    },
    Target {
        name: "bitmap_page",
        run: meta::bitmap_page,
        max_len: 1024,
    },
    Target {
        name: "bitmap_in_pool",
        run: meta::bitmap_in_pool,
        max_len: 256,
    },
    Target {
        name: "rbd_diff",
        run: rbd::import_diff,
        max_len: 2048,
    },
    Target {
        name: "nbd_handshake",
        run: nbd::handshake,
        max_len: 1024,
    },
    Target {
        name: "nbd_request",
        run: nbd::requests,
        max_len: 2048,
    },
    Target {
        name: "nbd_connection",
        run: nbd::connection,
        max_len: 2048,
    },
    Target {
        name: "faulty_ops",
        run: faulty::ops,
        max_len: 2048,
    },
];

pub fn target(name: &str) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}

// ----- devices ------------------------------------------------------------------------------

/// A copy-on-write device over a shared base image: a case starts from the fixture's bytes
/// at no cost and pays only for the 4 KiB pages it writes. Reads past the end are zeros;
/// writes past `capacity` fail with ENOSPC, like `MemDev`.
pub struct OverlayDev {
    base: Arc<Vec<u8>>,
    over: Mutex<HashMap<u64, Box<[u8]>>>,
    len: Mutex<u64>,
    capacity: u64,
}

const PAGE: u64 = 4096;

impl OverlayDev {
    pub fn new(base: Arc<Vec<u8>>, len: u64, capacity: u64) -> OverlayDev {
        OverlayDev {
            base,
            over: Mutex::new(HashMap::new()),
            len: Mutex::new(len),
            capacity,
        }
    }

    pub fn empty(capacity: u64) -> OverlayDev {
        Self::new(Arc::new(Vec::new()), 0, capacity)
    }

    fn base_page(&self, p: u64, out: &mut [u8]) {
        let start = (p * PAGE) as usize;
        out.fill(0);
        if start < self.base.len() {
            let n = (self.base.len() - start).min(PAGE as usize);
            out[..n].copy_from_slice(&self.base[start..start + n]);
        }
    }

    /// Everything the device holds, `len` bytes (a new base image).
    pub fn image(&self) -> Vec<u8> {
        let len = *self.len.lock().unwrap();
        let mut v = vec![0u8; len as usize];
        self.read_at(&mut v, 0).unwrap();
        v
    }

    /// Overwrite bytes without any fault or bookkeeping (the targets' mutations).
    pub fn poke(&self, offset: u64, data: &[u8]) {
        self.write_at(data, offset).expect("poke within capacity");
    }

    pub fn peek(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.read_at(&mut v, offset).unwrap();
        v
    }
}

impl BlockDev for OverlayDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let over = self.over.lock().unwrap();
        let mut pos = 0usize;
        let mut page = vec![0u8; PAGE as usize];
        while pos < buf.len() {
            let abs = offset + pos as u64;
            let (p, within) = (abs / PAGE, (abs % PAGE) as usize);
            let n = (PAGE as usize - within).min(buf.len() - pos);
            match over.get(&p) {
                Some(d) => buf[pos..pos + n].copy_from_slice(&d[within..within + n]),
                None => {
                    self.base_page(p, &mut page);
                    buf[pos..pos + n].copy_from_slice(&page[within..within + n]);
                }
            }
            pos += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.capacity)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOSPC))?;
        let mut over = self.over.lock().unwrap();
        let mut pos = 0usize;
        while pos < buf.len() {
            let abs = offset + pos as u64;
            let (p, within) = (abs / PAGE, (abs % PAGE) as usize);
            let n = (PAGE as usize - within).min(buf.len() - pos);
            let d = over.entry(p).or_insert_with(|| {
                let mut b = vec![0u8; PAGE as usize].into_boxed_slice();
                self.base_page(p, &mut b);
                b
            });
            d[within..within + n].copy_from_slice(&buf[pos..pos + n]);
            pos += n;
        }
        let mut len = self.len.lock().unwrap();
        *len = (*len).max(end);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> u64 {
        *self.len.lock().unwrap()
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset.saturating_add(len).min(self.capacity);
        if end > offset {
            let zeros = vec![0u8; (end - offset) as usize];
            let l = self.len();
            self.write_at(&zeros, offset)?;
            *self.len.lock().unwrap() = l;
        }
        Ok(())
    }

    fn ensure_len(&self, len: u64) -> io::Result<()> {
        if len > self.capacity {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let mut l = self.len.lock().unwrap();
        *l = (*l).max(len);
        Ok(())
    }
}

// ----- mutation -----------------------------------------------------------------------------

/// Values that tend to sit on boundaries of whatever a field means.
fn interesting(u: &mut Unstructured, old: u64) -> u64 {
    const V: [u64; 16] = [
        0,
        1,
        2,
        3,
        63,
        64,
        127,
        128,
        252,
        253,
        4095,
        4096,
        16128,
        0x7fff_ffff,
        0xffff_ffff,
        u64::MAX,
    ];
    match u.int_in_range(0..=5u8).unwrap_or(0) {
        0 => old.wrapping_add(1),
        1 => old.wrapping_sub(1),
        2 => old ^ (1 << u.int_in_range(0..=63u32).unwrap_or(0)),
        3 => u.arbitrary().unwrap_or(0),
        _ => V[u.choose_index(V.len()).unwrap_or(0)],
    }
}

/// Mutate `buf` in place, driven by `u`: bit flips, random bytes, boundary values written
/// into aligned 4- and 8-byte fields, zeroed or copied ranges. Offsets favour the first
/// `hot` bytes (headers and the fields that follow them).
pub fn mutate(u: &mut Unstructured, buf: &mut [u8], hot: usize) {
    let n = buf.len();
    if n == 0 {
        return;
    }
    let count = u.int_in_range(1..=6u8).unwrap_or(1);
    for _ in 0..count {
        let span = if u.ratio(2, 3u8).unwrap_or(true) {
            hot.min(n)
        } else {
            n
        };
        let at = u.int_in_range(0..=span - 1).unwrap_or(0);
        match u.int_in_range(0..=5u8).unwrap_or(0) {
            0 => buf[at] ^= 1 << u.int_in_range(0..=7u8).unwrap_or(0),
            1 => buf[at] = u.arbitrary().unwrap_or(0),
            2 if n >= 4 => {
                let o = (at & !3).min(n - 4);
                let old = u32::from_le_bytes(buf[o..o + 4].try_into().unwrap()) as u64;
                let v = interesting(u, old) as u32;
                buf[o..o + 4].copy_from_slice(&v.to_le_bytes());
            }
            3 if n >= 8 => {
                let o = (at & !7).min(n - 8);
                let old = u64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
                let v = interesting(u, old);
                buf[o..o + 8].copy_from_slice(&v.to_le_bytes());
            }
            4 => {
                let len = u.int_in_range(1..=64usize).unwrap_or(1).min(n - at);
                buf[at..at + len].fill(0);
            }
            _ => {
                let len = u.int_in_range(1..=64usize).unwrap_or(1).min(n - at);
                let from = u.int_in_range(0..=n - len).unwrap_or(0);
                buf.copy_within(from..from + len, at);
            }
        }
    }
}

/// Recompute a block's checksum (a no-op when its type field is no longer a known type):
/// a mutation then reaches the validation behind the checksum.
pub fn reseal(buf: &mut [u8]) {
    block::seal(buf);
}

/// True when `buf` is a block of type `ty` with a valid checksum (any number, any pool).
pub fn sealed_as(buf: &[u8], ty: BlockType) -> bool {
    block::block_type(buf) == Some(ty) && block::compute_crc(ty, buf) == block::stored_crc(buf)
}

/// The block of `dev` at number `b`.
pub fn read_block(dev: &dyn BlockDev, b: u64) -> Vec<u8> {
    let mut v = vec![0u8; BLOCK_SIZE];
    dev.read_at(&mut v, b * BLOCK_SIZE as u64).unwrap();
    v
}

/// A byte pattern that differs per volume, offset and generation.
pub fn pattern(tag: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = offset.wrapping_add(i).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ tag.wrapping_mul(0x5851);
            (x >> 56) as u8 | 1
        })
        .collect()
}

/// Built once per process.
pub fn once<T: Send + Sync>(cell: &'static OnceLock<T>, f: impl FnOnce() -> T) -> &'static T {
    cell.get_or_init(f)
}

/// Geometry of every fuzz pool: 4 KiB data blocks, 2 MiB of metadata, 4 MiB of data.
pub const BS: u64 = 4096;
pub const META_CAP: u64 = 2 << 20;
pub const DATA_CAP: u64 = 4 << 20;

/// A new pool on empty in-memory devices with the fuzz geometry (64 cached blocks); the
/// caller fills it and freezes the devices with [`OverlayDev::image`].
fn create_pool() -> (Pool, Arc<OverlayDev>, Arc<OverlayDev>) {
    let meta = Arc::new(OverlayDev::empty(META_CAP));
    let data = Arc::new(OverlayDev::empty(DATA_CAP));
    let mut o = CreateOptions::new(DATA_CAP);
    o.block_size = BS;
    o.metadata_size = Some(META_CAP);
    o.cache_blocks = 64;
    let p = Pool::create_on(meta.clone(), data.clone(), &o).unwrap();
    (p, meta, data)
}

/// A pool's frozen device images: what a fuzz target builds once per process and every case
/// overlays with its own copy-on-write devices.
pub struct Images {
    pub meta: Arc<Vec<u8>>,
    pub data: Arc<Vec<u8>>,
}

impl Images {
    /// A new pool with the fuzz geometry, filled by `fill` (which commits what it wants
    /// kept), closed and frozen.
    pub fn build(fill: impl FnOnce(&mut Pool)) -> Images {
        let (mut p, meta, data) = create_pool();
        fill(&mut p);
        drop(p);
        Images {
            meta: Arc::new(meta.image()),
            data: Arc::new(data.image()),
        }
    }

    /// Fresh copy-on-write devices over the images.
    pub fn overlays(&self) -> (Arc<OverlayDev>, Arc<OverlayDev>) {
        overlays(&self.meta, &self.data)
    }
}

/// Copy-on-write devices over a frozen pool's images: each case writes to its own copies.
pub fn overlays(meta: &Arc<Vec<u8>>, data: &Arc<Vec<u8>>) -> (Arc<OverlayDev>, Arc<OverlayDev>) {
    (
        Arc::new(OverlayDev::new(meta.clone(), meta.len() as u64, META_CAP)),
        Arc::new(OverlayDev::new(data.clone(), data.len() as u64, DATA_CAP)),
    )
}

/// Open options of every fuzz case: the fuzz geometry's 64 cached blocks.
pub fn open_options(read_only: bool) -> OpenOptions {
    OpenOptions {
        cache_blocks: 64,
        read_only,
        ..OpenOptions::default()
    }
}
