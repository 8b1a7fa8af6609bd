//! Model-based test of the pool: random sequences of volume management and data-path
//! operations run against both a real pool (on `MemDev`s) and a simple in-memory model, and
//! every byte read back, every error and every space figure must agree.
//!
//! The model keeps, per volume, its bytes and for each virtual block a "physical token"
//! shared between volumes exactly as the pool shares data blocks (a snapshot shares every
//! token; a write to a token that another volume also maps takes a new one). That makes the
//! pool's `data_blocks_used` exactly predictable, and with it out-of-space: the model knows
//! how many new blocks an operation needs and whether the pool has them. Like dm-thin, a
//! mapping written before its volume's last snapshot (or rollback) is never overwritten in
//! place even when no other volume still maps it, so the model also keeps the pool's
//! snapshot time, each volume's `snap_time` and each mapping's write time.
//!
//! Two entry points: a `proptest` run (many short sequences, shrinkable) and a seeded
//! ChaCha long run (one long sequence with periodic reopen), both through the same executor.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use thinpool::io::{BlockDev, MemDev};
use thinpool::meta::MetaError;
use thinpool::pool::{CreateOptions, OpenOptions, Pool, PoolError, VolumeId};

const BS: u64 = 4096;
const MAX_VOL: u64 = 1 << 20;
const NAMES: usize = 12;
const INVALID_NAMES: [&str; 7] = [
    "",
    "a/b",
    ".",
    "..",
    "nul\0byte",
    "new\nline",
    "rlo\u{202e}",
];

fn name_of(sel: u32) -> String {
    let s = sel as usize % (NAMES + INVALID_NAMES.len() + 1);
    if s < NAMES {
        format!("v{s}")
    } else if s < NAMES + INVALID_NAMES.len() {
        INVALID_NAMES[s - NAMES].to_string()
    } else {
        "x".repeat(128)
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 127
        && !n.chars().any(|c| {
            c == '/'
                || c.is_control()
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c)
        })
        && n != "."
        && n != ".."
}

/// Outcome classes compared between pool and model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Res {
    Ok,
    NoSpace,
    NoSuchVolume,
    VolumeExists,
    ReadOnly,
    InvalidName,
    InvalidSize,
    OutOfRange,
    NotASnapshot,
}

fn classify<T>(r: &Result<T, PoolError>) -> Res {
    match r {
        Ok(_) => Res::Ok,
        Err(PoolError::Meta(MetaError::NoDataSpace)) => Res::NoSpace,
        Err(PoolError::NoSuchVolume(_)) => Res::NoSuchVolume,
        Err(PoolError::VolumeExists(_)) => Res::VolumeExists,
        Err(PoolError::ReadOnlyVolume(_)) => Res::ReadOnly,
        Err(PoolError::InvalidName { .. }) => Res::InvalidName,
        Err(PoolError::InvalidSize(_)) => Res::InvalidSize,
        Err(PoolError::OutOfRange { .. }) => Res::OutOfRange,
        Err(PoolError::NotASnapshot { .. }) => Res::NotASnapshot,
        Err(e) => panic!("unexpected pool error: {e} ({e:?})"),
    }
}

#[derive(Clone, Debug)]
struct Vol {
    name: String,
    data: Vec<u8>,
    /// Per virtual block: (physical token, pool time when it was written).
    map: Vec<Option<(u64, u64)>>,
    ro: bool,
    snap_time: u64,
    origin: Option<VolumeId>,
}

#[derive(Clone, Debug, Default)]
struct Model {
    vols: BTreeMap<VolumeId, Vol>,
    next_token: u64,
    time: u64,
}

impl Model {
    fn by_name(&self, n: &str) -> Option<VolumeId> {
        self.vols
            .iter()
            .find(|(_, v)| v.name == n)
            .map(|(id, _)| *id)
    }

    fn refcounts(&self) -> HashMap<u64, u32> {
        let mut rc = HashMap::new();
        for v in self.vols.values() {
            for (t, _) in v.map.iter().flatten() {
                *rc.entry(*t).or_insert(0) += 1;
            }
        }
        rc
    }

    fn used(&self) -> u64 {
        self.refcounts().len() as u64
    }

    /// Blocks `vbs` of `id` that a write would need a new data block for.
    fn need_new(&self, id: VolumeId, vbs: impl Iterator<Item = u64>) -> u64 {
        let rc = self.refcounts();
        let v = &self.vols[&id];
        vbs.filter(|&vb| match v.map[vb as usize] {
            Some((t, time)) => rc[&t] > 1 || time < v.snap_time,
            None => true,
        })
        .count() as u64
    }

    /// Give block `vb` of `id` a token it owns alone (what a write to it does).
    fn own(&mut self, id: VolumeId, vb: u64, rc: &HashMap<u64, u32>) {
        let v = &self.vols[&id];
        let keep = matches!(v.map[vb as usize],
            Some((t, time)) if rc.get(&t) == Some(&1) && time >= v.snap_time);
        if !keep {
            self.next_token += 1;
            let t = (self.next_token, self.time);
            self.vols.get_mut(&id).unwrap().map[vb as usize] = Some(t);
        }
    }

    fn write(&mut self, id: VolumeId, off: u64, data: &[u8]) {
        let rc = self.refcounts();
        let (first, last) = (off / BS, (off + data.len() as u64 - 1) / BS);
        for vb in first..=last {
            self.own(id, vb, &rc);
        }
        let v = self.vols.get_mut(&id).unwrap();
        v.data[off as usize..off as usize + data.len()].copy_from_slice(data);
    }

    /// Partial pieces of `[off, off+len)` that are mapped: zeroing them writes them.
    fn partial_mapped_pieces(&self, id: VolumeId, off: u64, len: u64) -> Vec<u64> {
        let v = &self.vols[&id];
        let end = off + len;
        let mut out = Vec::new();
        let mut pos = off;
        while pos < end {
            let vb = pos / BS;
            let bend = ((vb + 1) * BS).min(end);
            let whole = pos == vb * BS && bend == (vb + 1) * BS;
            if !whole && v.map[vb as usize].is_some() {
                out.push(vb);
            }
            pos = bend;
        }
        out
    }

    /// The pool's discard: whole blocks unmapped, mapped partial blocks zeroed by a write.
    fn discard(&mut self, id: VolumeId, off: u64, len: u64) {
        let rc = self.refcounts();
        for vb in self.partial_mapped_pieces(id, off, len) {
            self.own(id, vb, &rc);
        }
        let v = self.vols.get_mut(&id).unwrap();
        let end = off + len;
        for vb in off.div_ceil(BS)..end / BS {
            v.map[vb as usize] = None;
        }
        v.data[off as usize..end as usize].fill(0);
    }

    fn resize(&mut self, id: VolumeId, size: u64) {
        let old = self.vols[&id].data.len() as u64;
        if size < old && size % BS != 0 {
            let vb = size / BS;
            if self.vols[&id].map[vb as usize].is_some() {
                let rc = self.refcounts();
                self.own(id, vb, &rc);
            }
        }
        let v = self.vols.get_mut(&id).unwrap();
        v.data.resize(size as usize, 0);
        v.map.resize(size.div_ceil(BS) as usize, None);
    }

    /// Does `snap` descend from `vol` through origins?
    fn descends(&self, vol: VolumeId, snap: VolumeId) -> bool {
        let mut cur = self.vols[&snap].origin;
        while let Some(c) = cur {
            if c == vol {
                return true;
            }
            cur = self.vols.get(&c).and_then(|v| v.origin);
        }
        false
    }
}

/// One raw random operation: decoded against the model's state when it runs.
type RawOp = (u8, u32, u32, u32);

fn fill(seed: u32, len: usize) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed as u64);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// A random size in 1..=MAX_VOL, often not block aligned.
fn size_of(a: u32, b: u32) -> u64 {
    let blocks = 1 + (a as u64 % (MAX_VOL / BS));
    let s = blocks * BS;
    if b % 3 == 0 {
        s - (b as u64 % BS)
    } else {
        s
    }
}

/// A byte range inside a volume of `size` bytes, of one of several shapes.
fn range_of(size: u64, a: u32, b: u32) -> (u64, u64) {
    let (off, len) = match b % 5 {
        0 => (a as u64 % size, 1 + (b as u64 >> 3) % 64),
        1 => (a as u64 % size, 1 + (b as u64 >> 3) % (2 * BS)),
        2 => {
            let nb = size / BS;
            if nb == 0 {
                (0, size)
            } else {
                let first = a as u64 % nb;
                (first * BS, BS * (1 + (b as u64 >> 3) % 16))
            }
        }
        3 => (a as u64 % size, 1 + (b as u64 >> 3) % (64 << 10)),
        _ => (0, size),
    };
    let off = off.min(size - 1);
    (off, len.min(size - off).max(1))
}

struct Harness {
    pool: Option<Pool>,
    meta: Arc<dyn BlockDev>,
    data: Arc<dyn BlockDev>,
    model: Model,
    committed: Model,
    /// Data written since the last commit: `(volume, offset, bytes as written)`. After a
    /// drop without commit a byte may read as its committed value or any of these.
    since_commit: Vec<(VolumeId, u64, Vec<u8>)>,
    total_blocks: u64,
    baseline_meta: u64,
    ops: u64,
    nospace: u64,
    reopens: u64,
}

/// Per-op failure context: which step, and the decoded operation.
macro_rules! check {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(format!($($fmt)*));
        }
    };
}

impl Harness {
    fn new(data_blocks: u64) -> Harness {
        let meta: Arc<dyn BlockDev> = Arc::new(MemDev::new(8 << 20).unwrap());
        let data: Arc<dyn BlockDev> = Arc::new(MemDev::new(data_blocks * BS).unwrap());
        let mut o = CreateOptions::new(data_blocks * BS);
        o.block_size = BS;
        o.metadata_size = Some(8 << 20);
        o.cache_blocks = 256;
        let mut pool = Pool::create_on(meta.clone(), data.clone(), &o).unwrap();
        let info = pool.info().unwrap();
        assert_eq!(info.data_blocks_total, data_blocks);
        assert_eq!(info.data_blocks_used, 0);
        Harness {
            pool: Some(pool),
            meta,
            data,
            model: Model::default(),
            committed: Model::default(),
            since_commit: Vec::new(),
            total_blocks: data_blocks,
            baseline_meta: info.metadata_blocks_used,
            ops: 0,
            nospace: 0,
            reopens: 0,
        }
    }

    fn p(&mut self) -> &mut Pool {
        self.pool.as_mut().unwrap()
    }

    fn free(&self) -> u64 {
        self.total_blocks - self.model.used()
    }

    /// Pick an existing volume (mostly) or a name that does not exist.
    fn pick(&self, sel: u32) -> (Option<VolumeId>, String) {
        let ids: Vec<VolumeId> = self.model.vols.keys().copied().collect();
        if ids.is_empty() || sel % 16 == 15 {
            let n = name_of(sel >> 4);
            return (self.model.by_name(&n), n);
        }
        let id = ids[(sel as usize >> 4) % ids.len()];
        (Some(id), self.model.vols[&id].name.clone())
    }

    fn set_committed(&mut self) {
        self.committed = self.model.clone();
        self.since_commit.clear();
    }

    fn reopen(&mut self, commit_first: bool) -> Result<(), String> {
        self.reopens += 1;
        if commit_first {
            self.p().commit().map_err(|e| format!("commit: {e}"))?;
            self.set_committed();
        }
        self.pool = None;
        let pool = Pool::open_on(
            self.meta.clone(),
            self.data.clone(),
            &OpenOptions::default(),
        )
        .map_err(|e| format!("reopen: {e}"))?;
        self.pool = Some(pool);
        if !commit_first {
            // A byte written since the last commit may read as its committed value or as any
            // value it held since (docs/design.md §5): in-place writes reach the data device at
            // once, new mappings are lost.
            let before = std::mem::replace(&mut self.model, self.committed.clone());
            let ids: Vec<VolumeId> = self.model.vols.keys().copied().collect();
            for id in ids {
                let size = self.model.vols[&id].data.len();
                let mut got = vec![0u8; size];
                self.p()
                    .read(id, 0, &mut got)
                    .map_err(|e| format!("read after reopen: {e}"))?;
                let old = &self.model.vols[&id].data;
                let new = &before.vols[&id].data;
                check!(
                    new.len() == size,
                    "volume {id} changed size without a commit"
                );
                let held = |i: usize| {
                    self.since_commit.iter().any(|(v, off, bytes)| {
                        *v == id
                            && (i as u64) >= *off
                            && (i as u64) < off + bytes.len() as u64
                            && bytes[i - *off as usize] == got[i]
                    })
                };
                if let Some(i) = (0..size).find(|&i| got[i] != old[i] && !held(i)) {
                    return Err(format!(
                        "volume {id} byte {i} after an uncommitted drop is {}: not the committed {} nor any value written since (newest {})",
                        got[i], old[i], new[i]
                    ));
                }
                self.model.vols.get_mut(&id).unwrap().data = got;
            }
            self.set_committed();
        }
        self.verify_all()
    }

    /// Whole-volume read and compare.
    fn verify_vol(&mut self, id: VolumeId) -> Result<(), String> {
        let want = &self.model.vols[&id].data;
        let mut got = vec![0u8; want.len()];
        let r = self.pool.as_mut().unwrap().read(id, 0, &mut got);
        check!(r.is_ok(), "read of volume {id}: {:?}", r);
        let want = &self.model.vols[&id].data;
        if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
            return Err(format!(
                "volume {id} ('{}') differs at byte {i} (block {}): pool {} model {}",
                self.model.vols[&id].name,
                i as u64 / BS,
                got[i],
                want[i]
            ));
        }
        Ok(())
    }

    fn verify_space(&mut self) -> Result<(), String> {
        let used = self.model.used();
        let info = self.p().info().map_err(|e| format!("info: {e}"))?;
        check!(
            info.data_blocks_used == used,
            "data_blocks_used {} but the model maps {} distinct blocks",
            info.data_blocks_used,
            used
        );
        check!(info.volumes == self.model.vols.len() as u64, "volume count");
        Ok(())
    }

    /// Names, sizes, flags, origins and usage figures of every volume, and all data.
    fn verify_all(&mut self) -> Result<(), String> {
        self.verify_space()?;
        let list = self.p().list().map_err(|e| format!("list: {e}"))?;
        check!(
            list.len() == self.model.vols.len(),
            "list has {} volumes, model {}",
            list.len(),
            self.model.vols.len()
        );
        let rc = self.model.refcounts();
        for vi in &list {
            let Some(v) = self.model.vols.get(&vi.id) else {
                return Err(format!("pool lists unknown volume {vi:?}"));
            };
            let mapped = v.map.iter().flatten().count() as u64;
            let excl = v.map.iter().flatten().filter(|(t, _)| rc[t] == 1).count() as u64;
            let origin = v.origin.map(|o| self.model.vols[&o].name.clone());
            check!(
                vi.name == v.name
                    && vi.size == v.data.len() as u64
                    && vi.read_only == v.ro
                    && vi.origin == origin
                    && vi.mapped_blocks == mapped
                    && vi.exclusive_blocks == excl
                    && vi.shared_blocks == mapped - excl,
                "volume info {vi:?} vs model name {} size {} ro {} origin {origin:?} mapped {mapped} exclusive {excl}",
                v.name,
                v.data.len(),
                v.ro
            );
            let vname = v.name.clone();
            let d = self.p().details(vi.id).map_err(|e| e.to_string())?;
            check!(
                d.mapped == mapped,
                "details of {vname} say {} mapped, the tree has {mapped}",
                d.mapped
            );
        }
        let ids: Vec<VolumeId> = self.model.vols.keys().copied().collect();
        for id in ids {
            self.verify_vol(id)?;
        }
        Ok(())
    }

    fn expect(&self, what: &str, got: Res, want: Res) -> Result<(), String> {
        check!(
            got == want,
            "{what}: pool says {got:?}, model expects {want:?}"
        );
        Ok(())
    }

    /// Run one operation on both sides and compare.
    fn step(&mut self, raw: RawOp) -> Result<(), String> {
        self.ops += 1;
        let (kind, a, b, c) = raw;
        let seq_before = self.p().seq();
        let mut touched: Vec<VolumeId> = Vec::new();
        let mut committed_before = false;
        let k = kind % 100;
        match k {
            // Read a random range (or a whole volume), sometimes past the end.
            0..=7 => {
                let (id, _) = self.pick(a);
                let Some(id) = id else { return Ok(()) };
                let size = self.model.vols[&id].data.len() as u64;
                let (off, len) = if c % 20 == 0 {
                    (size - 1, 2)
                } else {
                    range_of(size, b, c)
                };
                let mut buf = vec![0u8; len as usize];
                let r = self.p().read(id, off, &mut buf);
                let want = if off + len > size {
                    Res::OutOfRange
                } else {
                    Res::Ok
                };
                self.expect(&format!("read {id} {off}+{len}"), classify(&r), want)?;
                if want == Res::Ok {
                    let m = &self.model.vols[&id].data[off as usize..(off + len) as usize];
                    if let Some(i) = (0..len as usize).find(|&i| buf[i] != m[i]) {
                        return Err(format!(
                            "read {id} {off}+{len}: byte {} differs: pool {} model {}",
                            off + i as u64,
                            buf[i],
                            m[i]
                        ));
                    }
                }
            }
            // Write (also past the end and to read-only volumes).
            8..=37 | 97..=99 => {
                let zeroes = k >= 97;
                let (id, _) = self.pick(a);
                let Some(id) = id else { return Ok(()) };
                let size = self.model.vols[&id].data.len() as u64;
                let (off, len) = if c % 50 == 0 {
                    (size - (c as u64 >> 8) % size.min(64), 65)
                } else {
                    range_of(size, b, c)
                };
                let may_unmap = zeroes && c % 2 == 0;
                let v = &self.model.vols[&id];
                let want = if zeroes && !may_unmap {
                    // write_zeroes checks the range before the volume's flag.
                    if off + len > size {
                        Res::OutOfRange
                    } else if v.ro {
                        Res::ReadOnly
                    } else {
                        Res::Ok
                    }
                } else if v.ro {
                    Res::ReadOnly
                } else if off + len > size {
                    Res::OutOfRange
                } else {
                    Res::Ok
                };
                let want = if want != Res::Ok {
                    want
                } else if may_unmap {
                    let need = self.model.need_new(
                        id,
                        self.model.partial_mapped_pieces(id, off, len).into_iter(),
                    );
                    if need > self.free() {
                        Res::NoSpace
                    } else {
                        Res::Ok
                    }
                } else {
                    let need = self.model.need_new(id, off / BS..=(off + len - 1) / BS);
                    if need > self.free() {
                        Res::NoSpace
                    } else {
                        Res::Ok
                    }
                };
                let data = if zeroes {
                    vec![0u8; len as usize]
                } else {
                    fill(c, len as usize)
                };
                let r = if zeroes {
                    self.p().write_zeroes(id, off, len, may_unmap)
                } else {
                    self.p().write(id, off, &data)
                };
                let what = format!(
                    "{} {id} {off}+{len} (model: {} new blocks needed, {} free)",
                    if zeroes { "write_zeroes" } else { "write" },
                    if off + len <= size {
                        self.model.need_new(id, off / BS..=(off + len - 1) / BS)
                    } else {
                        0
                    },
                    self.free()
                );
                self.expect(&what, classify(&r), want)?;
                // A write that finds no free block commits twice (releasing recently freed
                // blocks) *before* writing; a write that fills the cache commits after.
                let delta = self.pool.as_ref().unwrap().seq() - seq_before;
                if delta > 0 && delta % 2 == 0 {
                    self.set_committed();
                    committed_before = true;
                }
                if want == Res::NoSpace {
                    self.nospace += 1;
                }
                if want == Res::Ok {
                    if may_unmap {
                        self.model.discard(id, off, len);
                    } else {
                        self.model.write(id, off, &data);
                    }
                    self.since_commit.push((id, off, data));
                }
                touched.push(id);
            }
            // Discard a random range.
            38..=45 => {
                let (id, _) = self.pick(a);
                let Some(id) = id else { return Ok(()) };
                let size = self.model.vols[&id].data.len() as u64;
                let (off, len) = if c % 50 == 0 {
                    (0, size + 1)
                } else {
                    range_of(size, b, c)
                };
                let v = &self.model.vols[&id];
                let want = if v.ro {
                    Res::ReadOnly
                } else if off + len > size {
                    Res::OutOfRange
                } else {
                    let need = self.model.need_new(
                        id,
                        self.model.partial_mapped_pieces(id, off, len).into_iter(),
                    );
                    if need > self.free() {
                        Res::NoSpace
                    } else {
                        Res::Ok
                    }
                };
                let r = self.p().discard(id, off, len);
                self.expect(&format!("discard {id} {off}+{len}"), classify(&r), want)?;
                // A discard that must copy an edge block into recently freed space commits
                // twice before changing anything (like a write).
                let delta = self.pool.as_ref().unwrap().seq() - seq_before;
                if delta > 0 && delta % 2 == 0 {
                    self.set_committed();
                    committed_before = true;
                }
                if want == Res::Ok {
                    self.model.discard(id, off, len);
                    self.since_commit.push((id, off, vec![0u8; len as usize]));
                }
                touched.push(id);
            }
            // Create.
            46..=53 => {
                let name = name_of(a);
                let size = match c % 40 {
                    0 => 0,
                    1 => u64::MAX,
                    _ => size_of(b, c),
                };
                let ro = c % 17 == 0;
                let want = if size == 0 || size == u64::MAX {
                    Res::InvalidSize
                } else if !valid_name(&name) {
                    Res::InvalidName
                } else if self.model.by_name(&name).is_some() {
                    Res::VolumeExists
                } else {
                    Res::Ok
                };
                let r = self.p().create_volume(&name, size, ro);
                self.expect(&format!("create '{name}' {size}"), classify(&r), want)?;
                if let Ok(id) = r {
                    check!(!self.model.vols.contains_key(&id), "id {id} reused");
                    self.model.vols.insert(
                        id,
                        Vol {
                            name,
                            data: vec![0u8; size as usize],
                            map: vec![None; size.div_ceil(BS) as usize],
                            ro,
                            origin: None,
                            snap_time: self.model.time,
                        },
                    );
                    touched.push(id);
                }
            }
            // Snapshot (of volumes and of snapshots).
            54..=61 => {
                let (src, sname) = self.pick(a);
                let new = name_of(b);
                let ro = c % 3 == 0;
                let want = if src.is_none() {
                    Res::NoSuchVolume
                } else if !valid_name(&new) {
                    Res::InvalidName
                } else if self.model.by_name(&new).is_some() {
                    Res::VolumeExists
                } else {
                    Res::Ok
                };
                let r = self.p().snapshot(&sname, &new, ro);
                self.expect(
                    &format!("snapshot '{sname}' as '{new}'"),
                    classify(&r),
                    want,
                )?;
                if let Ok(id) = r {
                    self.model.time += 1;
                    let t = self.model.time;
                    let s = self.model.vols.get_mut(&src.unwrap()).unwrap();
                    s.snap_time = t;
                    let v = Vol {
                        name: new,
                        data: s.data.clone(),
                        map: s.map.clone(),
                        ro,
                        origin: src,
                        snap_time: t,
                    };
                    self.model.vols.insert(id, v);
                    touched.push(id);
                }
            }
            // Resize (grow and shrink).
            62..=67 => {
                let (id, name) = self.pick(a);
                let size = if c % 40 == 0 { 0 } else { size_of(b, c) };
                let want = if size == 0 {
                    Res::InvalidSize
                } else if id.is_none() {
                    Res::NoSuchVolume
                } else if self.model.vols[&id.unwrap()].ro {
                    Res::ReadOnly
                } else {
                    let id = id.unwrap();
                    let old = self.model.vols[&id].data.len() as u64;
                    let need = if size < old && size % BS != 0 {
                        self.model.need_new(
                            id,
                            self.model
                                .partial_mapped_pieces(id, size, (size / BS + 1) * BS - size)
                                .into_iter(),
                        )
                    } else {
                        0
                    };
                    if need > self.free() {
                        Res::NoSpace
                    } else {
                        Res::Ok
                    }
                };
                let r = self.p().resize(&name, size);
                self.expect(&format!("resize '{name}' to {size}"), classify(&r), want)?;
                if want == Res::Ok {
                    self.model.resize(id.unwrap(), size);
                }
                touched.extend(id);
            }
            // Rollback to a snapshot (mostly a real descendant).
            68..=73 => {
                let (vid, vname) = self.pick(a);
                let desc: Vec<VolumeId> = match vid {
                    Some(v) => self
                        .model
                        .vols
                        .keys()
                        .copied()
                        .filter(|&s| self.model.descends(v, s))
                        .collect(),
                    None => Vec::new(),
                };
                let (sid, sname) = if !desc.is_empty() && b % 4 != 0 {
                    let s = desc[(b as usize >> 2) % desc.len()];
                    (Some(s), self.model.vols[&s].name.clone())
                } else {
                    self.pick(b)
                };
                let want = match (vid, sid) {
                    (None, _) | (_, None) => Res::NoSuchVolume,
                    (Some(v), Some(s)) => {
                        if self.model.vols[&v].ro {
                            Res::ReadOnly
                        } else if !self.model.descends(v, s) {
                            Res::NotASnapshot
                        } else {
                            Res::Ok
                        }
                    }
                };
                let r = self.p().rollback(&vname, &sname);
                self.expect(
                    &format!("rollback '{vname}' to '{sname}'"),
                    classify(&r),
                    want,
                )?;
                if want == Res::Ok {
                    let (v, s) = (vid.unwrap(), sid.unwrap());
                    self.model.time += 1;
                    let t = self.model.time;
                    let snap = self.model.vols.get_mut(&s).unwrap();
                    snap.snap_time = t;
                    let snap = snap.clone();
                    let vol = self.model.vols.get_mut(&v).unwrap();
                    vol.data = snap.data;
                    vol.map = snap.map;
                    vol.snap_time = t;
                    touched.push(v);
                }
            }
            // Remove.
            74..=78 => {
                let (id, name) = self.pick(a);
                let want = if id.is_some() {
                    Res::Ok
                } else {
                    Res::NoSuchVolume
                };
                let r = self.p().remove_volume(&name);
                self.expect(&format!("remove '{name}'"), classify(&r), want)?;
                if let Some(id) = id {
                    self.model.vols.remove(&id);
                    for v in self.model.vols.values_mut() {
                        if v.origin == Some(id) {
                            v.origin = None;
                        }
                    }
                }
            }
            // Rename.
            79..=82 => {
                let (id, old) = self.pick(a);
                let new = name_of(b);
                let want = match id {
                    None => Res::NoSuchVolume,
                    Some(_) if old == new => Res::Ok,
                    Some(_) if !valid_name(&new) => Res::InvalidName,
                    Some(_) if self.model.by_name(&new).is_some() => Res::VolumeExists,
                    Some(_) => Res::Ok,
                };
                let r = self.p().rename(&old, &new);
                self.expect(&format!("rename '{old}' to '{new}'"), classify(&r), want)?;
                if want == Res::Ok {
                    self.model.vols.get_mut(&id.unwrap()).unwrap().name = new;
                    touched.extend(id);
                }
            }
            83..=89 => {
                self.p().commit().map_err(|e| format!("commit: {e}"))?;
            }
            90..=93 => self.reopen(true)?,
            _ => self.reopen(false)?,
        }
        if self.pool.as_ref().unwrap().seq() != seq_before && !committed_before {
            self.set_committed();
        }
        if std::env::var_os("TP_TRACE").is_some() {
            let info = self.p().info().map_err(|e| e.to_string())?;
            eprintln!(
                "op {raw:?} kind {k}: touched {touched:?}; model used {} pool used {} seq {}",
                self.model.used(),
                info.data_blocks_used,
                info.seq
            );
        }
        self.verify_space()?;
        for id in touched {
            if self.model.vols.contains_key(&id) {
                self.verify_vol(id)?;
            }
        }
        if self.ops % 25 == 0 || std::env::var_os("TP_TRACE").is_some() {
            self.verify_all()?;
        }
        Ok(())
    }

    /// End of a case: everything checks out, then removing every volume frees every block.
    fn finish(&mut self) -> Result<(), String> {
        self.verify_all()?;
        self.reopen(true)?;
        let names: Vec<String> = self.model.vols.values().map(|v| v.name.clone()).collect();
        for n in names {
            self.p()
                .remove_volume(&n)
                .map_err(|e| format!("final remove '{n}': {e}"))?;
        }
        self.model.vols.clear();
        self.p().commit().map_err(|e| e.to_string())?;
        let info = self.p().info().map_err(|e| e.to_string())?;
        check!(
            info.data_blocks_used == 0,
            "{} data blocks leaked",
            info.data_blocks_used
        );
        check!(
            info.metadata_blocks_used == self.baseline_meta,
            "metadata blocks used {} after removing everything, {} when empty",
            info.metadata_blocks_used,
            self.baseline_meta
        );
        check!(info.volumes == 0, "volumes left");
        Ok(())
    }
}

/// Replay one case given as `blocks;kind,a,b,c;kind,a,b,c;...` in TP_REPLAY (debugging).
#[test]
fn replay_from_env() {
    let Ok(spec) = std::env::var("TP_REPLAY") else {
        return;
    };
    let mut parts = spec.split(';');
    let blocks: u64 = parts.next().unwrap().trim().parse().unwrap();
    let ops: Vec<RawOp> = parts
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let v: Vec<u64> = p.split(',').map(|x| x.trim().parse().unwrap()).collect();
            (v[0] as u8, v[1] as u32, v[2] as u32, v[3] as u32)
        })
        .collect();
    let mut s = (0, 0, 0);
    if let Err(e) = run_sequence(blocks, &ops, &mut s) {
        panic!("{e}");
    }
}

fn run_sequence(
    data_blocks: u64,
    ops: &[RawOp],
    h_stats: &mut (u64, u64, u64),
) -> Result<(), String> {
    let mut h = Harness::new(data_blocks);
    for (i, op) in ops.iter().enumerate() {
        h.step(*op).map_err(|e| format!("op #{i} {op:?}: {e}"))?;
    }
    h.finish()?;
    h_stats.0 += h.ops;
    h_stats.1 += h.nospace;
    h_stats.2 += h.reopens;
    Ok(())
}

/// Shortest generated sequence (TP_MIN_OPS=1 lets a failure shrink further).
fn min_ops() -> usize {
    std::env::var("TP_MIN_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(160)
}

fn cases() -> u32 {
    std::env::var("TP_PROP_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

#[test]
fn pool_matches_model() {
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let strat = (
        prop_oneof![Just(96u64), Just(400), Just(1200)],
        prop::collection::vec(any::<RawOp>(), min_ops()..=200),
    );
    let stats = std::cell::RefCell::new((0u64, 0u64, 0u64));
    let start = std::time::Instant::now();
    let r = runner.run(&strat, |(blocks, ops)| {
        let mut s = (0, 0, 0);
        run_sequence(blocks, &ops, &mut s).map_err(TestCaseError::fail)?;
        let mut st = stats.borrow_mut();
        st.0 += s.0;
        st.1 += s.1;
        st.2 += s.2;
        Ok(())
    });
    let st = stats.borrow();
    eprintln!(
        "prop_model: {} operations in {} cases ({} out-of-space, {} reopens) in {:.1?}",
        st.0,
        cases(),
        st.1,
        st.2,
        start.elapsed()
    );
    if let Err(e) = r {
        panic!("{e}");
    }
    if cases() >= 64 {
        assert!(st.0 >= 10_000, "only {} operations ran", st.0);
        assert!(st.1 > 0, "out-of-space never happened");
    }
}

/// One long seeded sequence with periodic reopen (print the seed; TP_SEED replays).
#[test]
fn long_seeded_run() {
    let seed: u64 = std::env::var("TP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7410_9001_u64);
    let n: usize = std::env::var("TP_LONG_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    eprintln!("long_seeded_run: seed {seed} ({n} ops); replay with TP_SEED={seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut h = Harness::new(1500);
    for i in 0..n {
        let op: RawOp = if i % 1000 == 999 {
            (90, 0, 0, 0) // periodic clean reopen
        } else {
            (rng.gen(), rng.gen(), rng.gen(), rng.gen())
        };
        if let Err(e) = h.step(op) {
            panic!("seed {seed}: op #{i} {op:?}: {e}");
        }
    }
    if let Err(e) = h.finish() {
        panic!("seed {seed}: final check: {e}");
    }
    eprintln!(
        "long_seeded_run: {} operations ({} out-of-space, {} reopens)",
        h.ops, h.nospace, h.reopens
    );
    assert_eq!(h.ops, n as u64);
}
