//! Random operation sequences on a pool whose metadata and data devices fail: reads that
//! return EIO (and garbage in the buffer), writes that fail before or after part of their
//! bytes landed, failing flushes, hole queries and punches. The devices never lose a write
//! that completed (this is not a crash test; `thinpool crashtest` is).
//!
//! "Silently wrong" here: a read that succeeds must return exactly what the model holds; a
//! failed operation may leave each byte only at a value it could have (the last commit's,
//! the current one, or one written since the last commit); and once the faults stop, `check`
//! finds no damage, the pool opens without a rewind, and holds the last commit or a later
//! state, byte by byte.

use super::{pattern, OverlayDev};
use arbitrary::Unstructured;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use thinpool::io::BlockDev;
use thinpool::pool::{CreateOptions, OpenOptions, Pool, PoolError};

const BS: u64 = 4096;
const VOL: u64 = 16 * BS;
const DATA_BLOCKS: u64 = 40;
const META_CAP: u64 = 2 << 20;

/// A device that fails some of its calls, chosen by a seeded generator.
pub struct FaultDev {
    inner: OverlayDev,
    rng: Mutex<ChaCha8Rng>,
    /// Faults per 1000 calls.
    rate: AtomicU64,
    on: AtomicBool,
    pub faults: AtomicU64,
}

impl FaultDev {
    fn new(capacity: u64, seed: u64, rate: u64) -> FaultDev {
        FaultDev {
            inner: OverlayDev::empty(capacity),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            rate: AtomicU64::new(rate),
            on: AtomicBool::new(false),
            faults: AtomicU64::new(0),
        }
    }
    fn fault(&self) -> bool {
        if !self.on.load(Ordering::SeqCst) {
            return false;
        }
        let hit = self.rng.lock().unwrap().gen_range(0..1000) < self.rate.load(Ordering::SeqCst);
        if hit {
            self.faults.fetch_add(1, Ordering::SeqCst);
        }
        hit
    }
    fn eio() -> io::Error {
        io::Error::from_raw_os_error(libc::EIO)
    }
}

impl BlockDev for FaultDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.fault() {
            buf.fill(0xa5);
            return Err(Self::eio());
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.fault() {
            let sectors = buf.len() / 512;
            let keep = self.rng.lock().unwrap().gen_range(0..=sectors);
            if keep > 0 {
                // A torn write: some leading sectors landed, then the error.
                self.inner.write_at(&buf[..keep * 512], offset)?;
            }
            return Err(Self::eio());
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        if self.fault() {
            return Err(Self::eio());
        }
        Ok(())
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.fault() {
            return Err(Self::eio());
        }
        self.inner.punch_hole(offset, len)
    }
    fn is_hole(&self, _offset: u64, _len: u64) -> io::Result<bool> {
        if self.fault() {
            return Err(Self::eio());
        }
        Ok(false)
    }
    fn ensure_len(&self, len: u64) -> io::Result<()> {
        if self.fault() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.inner.ensure_len(len)
    }
}

#[derive(Clone, Debug)]
struct MVol {
    cur: Vec<u8>,
    com: Vec<u8>,
}

#[derive(Default)]
struct Model {
    vols: BTreeMap<String, MVol>,
    /// Volumes removed since the last certain commit (they may come back on reopen).
    gone: BTreeMap<String, MVol>,
    /// The volume sets the last commit may hold.
    committed_sets: Vec<BTreeSet<String>>,
    /// Everything written (or zeroed) since the last certain commit, failed or not.
    since: Vec<(String, u64, Vec<u8>)>,
    /// The volume the operation in progress creates, if it does.
    pending: Option<(String, MVol)>,
}

impl Model {
    fn names(&self) -> BTreeSet<String> {
        self.vols.keys().cloned().collect()
    }
    fn committed(&mut self) {
        for v in self.vols.values_mut() {
            v.com = v.cur.clone();
        }
        self.gone.clear();
        self.since.clear();
        self.committed_sets = vec![self.names()];
    }
    /// May byte `i` of volume `name` hold `b`, given model entry `v`?
    fn may(&self, name: &str, v: &MVol, i: usize, b: u8) -> bool {
        v.cur[i] == b
            || v.com[i] == b
            || self.since.iter().any(|(n, off, d)| {
                n == name
                    && (*off as usize..*off as usize + d.len()).contains(&i)
                    && d[i - *off as usize] == b
            })
    }
    /// Bytes of `name` read back after a failure or a reopen: each must be possible; they
    /// become the model's current contents.
    fn settle(&mut self, name: &str, got: &[u8], what: &str) {
        let entry = self
            .vols
            .get(name)
            .or(self.pending.as_ref().filter(|p| p.0 == name).map(|p| &p.1))
            .or_else(|| self.gone.get(name))
            .cloned();
        let v = entry.unwrap_or_else(|| panic!("{what}: volume {name} the model never had"));
        let bad = (0..got.len()).find(|&i| {
            !self.may(name, &v, i, got[i])
                && !self
                    .gone
                    .get(name)
                    .is_some_and(|g| self.may(name, g, i, got[i]))
        });
        if let Some(i) = bad {
            panic!(
                "{what}: volume {name} byte {i} reads {:#x}; possible: current {:#x}, \
                 committed {:#x}, or a value written since",
                got[i], v.cur[i], v.com[i]
            );
        }
        let e = self.vols.entry(name.to_string()).or_insert(v);
        e.cur = got.to_vec();
    }
}

#[derive(Debug)]
enum Op {
    Write(usize, u64, usize, u8),
    Discard(usize, u64, u64),
    Zeroes(usize, u64, u64, bool),
    Read(usize, u64, usize),
    Commit,
    Snapshot(usize, usize),
    Create(usize),
    Remove(usize),
    Reopen,
}

fn vname(i: usize) -> String {
    format!("v{}", i % 4)
}

fn op(u: &mut Unstructured) -> Op {
    let v = u.int_in_range(0..=3usize).unwrap_or(0);
    let off = match u.int_in_range(0..=3u8).unwrap_or(0) {
        0 => u.int_in_range(0..=15u64).unwrap_or(0) * BS,
        _ => u.int_in_range(0..=VOL - 1).unwrap_or(0),
    };
    let max = (VOL - off) as usize;
    let len = match u.int_in_range(0..=3u8).unwrap_or(0) {
        0 => (BS as usize).min(max),
        1 => u.int_in_range(1..=max.min(3 * BS as usize)).unwrap_or(1),
        2 => u.int_in_range(1..=max.min(600)).unwrap_or(1),
        _ => u.int_in_range(1..=max).unwrap_or(1),
    };
    match u.int_in_range(0..=19u8).unwrap_or(0) {
        0..=6 => Op::Write(v, off, len, u.arbitrary().unwrap_or(0)),
        7..=8 => Op::Discard(v, off, len as u64),
        9 => Op::Zeroes(v, off, len as u64, u.arbitrary().unwrap_or(false)),
        10..=12 => Op::Read(v, off, len),
        13..=14 => Op::Commit,
        15 => Op::Snapshot(v, u.int_in_range(0..=3usize).unwrap_or(0)),
        16 => Op::Create(v),
        17 => Op::Remove(v),
        _ => Op::Reopen,
    }
}

struct Rig {
    meta: Arc<FaultDev>,
    data: Arc<FaultDev>,
}

impl Rig {
    fn faults(&self, on: bool) {
        self.meta.on.store(on, Ordering::SeqCst);
        self.data.on.store(on, Ordering::SeqCst);
    }
    fn open(&self) -> Pool {
        let o = OpenOptions {
            cache_blocks: 64,
            ..OpenOptions::default()
        };
        Pool::open_on(self.meta.clone(), self.data.clone(), &o)
            .unwrap_or_else(|e| panic!("a pool whose devices only failed does not open: {e}"))
    }
}

fn read_all(p: &mut Pool, name: &str) -> Result<Vec<u8>, PoolError> {
    let (id, d) = p.find(name)?;
    let mut v = vec![0u8; d.size as usize];
    p.read(id, 0, &mut v)?;
    Ok(v)
}

/// After a failed operation (faults off): the volume set is the one before or the one the
/// operation makes; every byte is a possible one.
fn resolve(p: &mut Pool, m: &mut Model, after: Option<BTreeSet<String>>, what: &str) {
    let names: BTreeSet<String> = p
        .volume_names()
        .unwrap_or_else(|e| panic!("{what}: listing fails without faults: {e}"))
        .into_iter()
        .collect();
    if names != m.names() {
        assert_eq!(
            Some(&names),
            after.as_ref(),
            "{what}: volumes after a failure"
        );
        m.committed_sets.push(names.clone());
    }
    for n in &names {
        let got = read_all(p, n).unwrap_or_else(|e| panic!("{what}: read {n} without faults: {e}"));
        m.settle(n, &got, what);
    }
    let now: Vec<String> = m
        .vols
        .keys()
        .filter(|n| !names.contains(*n))
        .cloned()
        .collect();
    for n in now {
        let v = m.vols.remove(&n).unwrap();
        m.gone.insert(n, v);
    }
}

/// Close the pool, stop the faults, and check what the devices hold: `check` clean, an open
/// without rewind, the last commit's volumes (or a later set), possible bytes.
fn verify_reopen(rig: &Rig, m: &mut Model, what: &str) -> Pool {
    rig.faults(false);
    let rep = thinpool::check::check(rig.meta.clone(), None);
    assert!(
        rep.is_clean(),
        "{what}: device faults damaged the pool: {:?}",
        rep.errors().map(|f| f.to_string()).collect::<Vec<_>>()
    );
    let mut p = rig.open();
    let names: BTreeSet<String> = p.volume_names().unwrap().into_iter().collect();
    assert!(
        m.committed_sets.contains(&names) || names == m.names(),
        "{what}: reopened with volumes {names:?}; the last commit held one of {:?}",
        m.committed_sets
    );
    for n in &names {
        let got = read_all(&mut p, n).unwrap();
        m.settle(n, &got, what);
    }
    m.vols.retain(|n, _| names.contains(n));
    m.committed();
    p
}

pub fn ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let seed: u64 = u.arbitrary().unwrap_or(0);
    let rate = match u.int_in_range(0..=3u8).unwrap_or(0) {
        0 => 0,
        1 => 5,
        2 => 30,
        _ => 120,
    };
    let rig = Rig {
        meta: Arc::new(FaultDev::new(META_CAP, seed, rate)),
        data: Arc::new(FaultDev::new(DATA_BLOCKS * BS, seed ^ 0x5555, rate)),
    };
    let mut o = CreateOptions::new(DATA_BLOCKS * BS);
    o.block_size = BS;
    o.metadata_size = Some(META_CAP);
    o.cache_blocks = 64;
    let mut p = Pool::create_on(rig.meta.clone(), rig.data.clone(), &o).unwrap();
    let mut m = Model::default();
    for i in 0..2 {
        p.create_volume(&vname(i), VOL, false).unwrap();
        m.vols.insert(
            vname(i),
            MVol {
                cur: vec![0; VOL as usize],
                com: vec![0; VOL as usize],
            },
        );
    }
    m.committed();
    rig.faults(true);
    let nops = u.int_in_range(1..=40u8).unwrap_or(1);
    for k in 0..nops {
        let op = op(&mut u);
        let what = format!("op {k}");
        let before = m.names();
        let mut after = None;
        let res: Result<(), PoolError> = match &op {
            Op::Write(v, off, len, tag) => {
                let d = pattern(*tag as u64 + 10 * k as u64, *off, *len);
                m.since.push((vname(*v), *off, d.clone()));
                p.find(&vname(*v)).and_then(|(id, _)| p.write(id, *off, &d))
            }
            Op::Discard(v, off, len) | Op::Zeroes(v, off, len, _) => {
                m.since.push((vname(*v), *off, vec![0; *len as usize]));
                p.find(&vname(*v)).and_then(|(id, _)| match op {
                    Op::Zeroes(_, _, _, unmap) => p.write_zeroes(id, *off, *len, unmap),
                    _ => p.discard(id, *off, *len),
                })
            }
            Op::Read(v, off, len) => {
                let mut b = vec![0u8; *len];
                let r = p
                    .find(&vname(*v))
                    .and_then(|(id, _)| p.read(id, *off, &mut b));
                if r.is_ok() {
                    let mv = &m.vols[&vname(*v)];
                    assert!(
                        b == mv.cur[*off as usize..*off as usize + *len],
                        "{what}: read of {} at {off} returned other data",
                        vname(*v)
                    );
                }
                r
            }
            Op::Commit => p.commit(),
            Op::Snapshot(s, n) => {
                let (s, n) = (vname(*s), vname(*n));
                if m.vols.contains_key(&s) && !m.vols.contains_key(&n) {
                    let mut a = before.clone();
                    a.insert(n.clone());
                    after = Some(a);
                    let cur = m.vols[&s].cur.clone();
                    m.pending = Some((
                        n.clone(),
                        MVol {
                            com: cur.clone(),
                            cur,
                        },
                    ));
                }
                p.snapshot(&s, &n, false).map(|_| ())
            }
            Op::Create(v) => {
                let n = vname(*v);
                if !m.vols.contains_key(&n) {
                    let mut a = before.clone();
                    a.insert(n.clone());
                    after = Some(a);
                    let z = vec![0; VOL as usize];
                    m.pending = Some((
                        n.clone(),
                        MVol {
                            cur: z.clone(),
                            com: z,
                        },
                    ));
                }
                p.create_volume(&n, VOL, false).map(|_| ())
            }
            Op::Remove(v) => {
                let n = vname(*v);
                let r = p.remove_volume(&n);
                if m.vols.contains_key(&n) {
                    let mut a = before.clone();
                    a.remove(&n);
                    after = Some(a);
                }
                r
            }
            Op::Reopen => {
                drop(p);
                p = verify_reopen(&rig, &mut m, &what);
                rig.faults(true);
                Ok(())
            }
        };
        if std::env::var_os("FUZZ_VERBOSE").is_some() {
            eprintln!(
                "{what}: {op:?} -> {res:?} (faults so far: meta {}, data {})",
                rig.meta.faults.load(Ordering::SeqCst),
                rig.data.faults.load(Ordering::SeqCst)
            );
        }
        let mgmt = matches!(op, Op::Snapshot(..) | Op::Create(..) | Op::Remove(..));
        match res {
            Ok(()) => {
                match &op {
                    Op::Remove(v) => {
                        m.vols.remove(&vname(*v));
                    }
                    Op::Write(v, ..) | Op::Discard(v, ..) | Op::Zeroes(v, ..) => {
                        let (_, off, d) = m.since.last().unwrap().clone();
                        if let Some(mv) = m.vols.get_mut(&vname(*v)) {
                            mv.cur[off as usize..off as usize + d.len()].copy_from_slice(&d);
                        }
                    }
                    _ => {}
                }
                if let Some((n, v)) = m.pending.take() {
                    m.vols.insert(n, v);
                }
                if mgmt || matches!(op, Op::Commit) {
                    m.committed();
                }
            }
            Err(e) => {
                if rate == 0 {
                    // Without faults only the documented refusals happen.
                    assert!(
                        matches!(
                            e,
                            PoolError::NoSuchVolume(_)
                                | PoolError::VolumeExists(_)
                                | PoolError::Meta(thinpool::meta::MetaError::NoDataSpace)
                        ),
                        "{what}: {e}"
                    );
                }
                rig.faults(false);
                resolve(&mut p, &mut m, after.filter(|_| mgmt), &what);
                m.pending = None;
                rig.faults(true);
            }
        }
    }
    drop(p);
    let mut p = verify_reopen(&rig, &mut m, "end");
    // A pool that went through faults works again once they stop.
    let (id, _) = match p.find("v0") {
        Ok(x) => x,
        Err(_) => {
            p.create_volume("v0", VOL, false).unwrap();
            p.find("v0").unwrap()
        }
    };
    p.discard(id, 0, VOL).unwrap();
    let d = pattern(999, 100, 9000);
    p.write(id, 100, &d).unwrap();
    p.commit().unwrap();
    let mut g = vec![0u8; d.len()];
    p.read(id, 100, &mut g).unwrap();
    assert!(g == d, "end: a write after the faults reads back wrong");
    drop(p);
    let rep = thinpool::check::check(rig.meta.clone(), None);
    assert!(rep.is_clean(), "end: check after the last write");
}
