//! Metadata targets: the label, journal records and scans, B-tree nodes and space-map bitmap
//! pages, each alone and inside a real pool.
//!
//! "Silently wrong" for metadata: a pool whose damaged block was *not* re-sealed (its
//! checksum no longer matches) must never read back data other than what was written, nor
//! lose a volume without an error, and `check` must report damage to any block the newest
//! commit reaches. A re-sealed mutation (checksum recomputed, so only the structure checks
//! stand between it and the pool) may change what a pool means in ways no checker can see
//! (a key moved to a free slot); there the property is that `check` and the pool agree: when
//! `check` finds nothing, the pool opens, reads every volume, and a write, its read-back and
//! a commit work and leave `check` clean.

use super::Images;
use super::{mutate, once, open_options, overlays, pattern, read_block, reseal};
use super::{sealed_as, OverlayDev, BS, META_CAP};
use arbitrary::{Arbitrary, Unstructured};
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, OnceLock};
use thinpool::check;
use thinpool::io::BlockDev;
use thinpool::meta::block::{self, BlockType, HEADER_SIZE};
use thinpool::meta::btree::{Node, TreeKind};
use thinpool::meta::journal::{self, BlockRef, Record, Root, RootId, NR_ROOTS};
use thinpool::meta::journal::{decode_ref, encode_ref};
use thinpool::meta::label::Label;
use thinpool::meta::spacemap::{self, ENTRIES_PER_PAGE};
use thinpool::meta::spacemap::{SM_INDEX, SM_OVERFLOW};
use thinpool::meta::{MetaBlock, BLOCK_SIZE};
use thinpool::pool::details::DETAILS;
use thinpool::pool::trees::{DEV_ROOTS, MAPPING};
use thinpool::pool::{OpenOptions, Pool, PoolError};

/// Volumes whose contents are the same in the last three commits (see [`fixture`]).
pub const REAL_VOLS: [&str; 4] = ["a", "snap", "b", "ro"];

/// A pool built once: a two-level mapping tree shared with a snapshot, a second volume and
/// its read-only snapshot, then two commits that change no data (so a fall-back to either
/// older record reads the same bytes).
pub struct Fixture {
    pub meta: Arc<Vec<u8>>,
    pub data: Arc<Vec<u8>>,
    pub uuid: [u8; 16],
    pub label: Label,
    pub newest: Record,
    pub expected: Vec<(String, Vec<u8>)>,
    /// Node blocks the newest record reaches, and every block holding a sealed node.
    pub live_nodes: Vec<u64>,
    pub all_nodes: Vec<u64>,
    /// Bitmap pages the newest record reaches.
    pub live_pages: Vec<u64>,
    /// Ring blocks holding a valid record.
    pub records: Vec<u64>,
    pub live: HashSet<u64>,
}

impl Fixture {
    pub fn devs(&self) -> (Arc<OverlayDev>, Arc<OverlayDev>) {
        overlays(&self.meta, &self.data)
    }
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

pub fn fixture() -> &'static Fixture {
    once(&FIXTURE, build_fixture)
}

fn build_fixture() -> Fixture {
    let mut expected = Vec::new();
    let images = Images::build(|p| {
        let a = p.create_volume("a", 384 * BS, false).unwrap();
        for vb in (0..384u64).filter(|v| v % 5 != 0) {
            p.write(a, vb * BS, &pattern(1, vb * BS, BS as usize))
                .unwrap();
        }
        p.commit().unwrap();
        p.snapshot("a", "snap", false).unwrap();
        for vb in (7..300u64).step_by(15) {
            p.write(a, vb * BS + 100, &pattern(2, vb * BS, 3000))
                .unwrap();
        }
        let b = p.create_volume("b", 64 * BS, false).unwrap();
        p.write(b, 5000, &pattern(3, 5000, 20000)).unwrap();
        p.write(b, 60 * BS, &pattern(4, 0, BS as usize)).unwrap();
        p.snapshot("b", "ro", true).unwrap();
        p.write(b, 1000, &pattern(5, 0, 9000)).unwrap();
        p.discard(a, 40 * BS + 10, 30 * BS).unwrap();
        p.commit().unwrap();
        p.create_volume("pad1", BS, false).unwrap();
        p.create_volume("pad2", BS, false).unwrap();
        for name in REAL_VOLS {
            let (id, d) = p.find(name).unwrap();
            let mut v = vec![0u8; d.size as usize];
            p.read(id, 0, &mut v).unwrap();
            expected.push((name.to_string(), v));
        }
    });
    let (meta, _) = images.overlays();
    let lbuf = read_block(meta.as_ref(), 0);
    let label = Label::decode(&lbuf).unwrap();
    let uuid = label.uuid;
    let slots = journal::scan(meta.as_ref(), &uuid, label.ring_slots).unwrap();
    let records: Vec<u64> = slots
        .iter()
        .filter(|s| s.result.is_ok())
        .map(|s| s.block.0)
        .collect();
    let newest = slots
        .iter()
        .filter_map(|s| s.result.as_ref().ok())
        .max_by_key(|r| r.seq)
        .unwrap()
        .clone();
    let (mut nodes, mut pages) = (BTreeSet::new(), BTreeSet::new());
    let kinds: [(RootId, TreeKind); 6] = [
        (RootId::User0, DETAILS),
        (RootId::User1, DEV_ROOTS),
        (RootId::DataIndex, SM_INDEX),
        (RootId::MetaIndex, SM_INDEX),
        (RootId::DataOverflow, SM_OVERFLOW),
        (RootId::MetaOverflow, SM_OVERFLOW),
    ];
    for (id, kind) in kinds {
        walk(
            meta.as_ref(),
            newest.root(id).r,
            kind,
            &mut nodes,
            &mut pages,
        );
    }
    let nblocks = META_CAP / BLOCK_SIZE as u64;
    let all_nodes: Vec<u64> = (0..nblocks)
        .filter(|&b| {
            let buf = read_block(meta.as_ref(), b);
            block::verify(&buf, Some(BlockType::Node), MetaBlock(b), &uuid).is_ok()
        })
        .collect();
    let mut live: HashSet<u64> = nodes.iter().chain(pages.iter()).copied().collect();
    live.insert(0);
    Fixture {
        meta: images.meta,
        data: images.data,
        uuid,
        label,
        newest,
        expected,
        live_nodes: nodes.into_iter().collect(),
        all_nodes,
        live_pages: pages.into_iter().collect(),
        records,
        live,
    }
}

fn walk(
    dev: &dyn BlockDev,
    r: BlockRef,
    kind: TreeKind,
    nodes: &mut BTreeSet<u64>,
    pages: &mut BTreeSet<u64>,
) {
    if !nodes.insert(r.block.0) {
        return;
    }
    let buf = read_block(dev, r.block.0);
    let n = Node(&buf);
    for i in 0..n.nr() {
        if !n.is_leaf() {
            walk(dev, n.child(i), kind, nodes, pages);
        } else if kind.id == DEV_ROOTS.id {
            walk(dev, decode_ref(n.value(i)), MAPPING, nodes, pages);
        } else if kind.id == SM_INDEX.id {
            pages.insert(decode_ref(n.value(i)).block.0);
        }
    }
}

/// After changing block `b` of a fixture copy: when it is a root of the newest record,
/// record its new checksum in both ring copies of that record (re-sealed), so the mutation
/// is seen by the trees and not merely by open's root check.
pub fn fix_root_crcs(f: &Fixture, meta: &OverlayDev, b: u64) {
    let mut rec = f.newest.clone();
    let buf = read_block(meta, b);
    let mut changed = false;
    for r in rec.roots.iter_mut().take(6) {
        if r.r.block.0 == b {
            r.crc = block::stored_crc(&buf);
            changed = true;
        }
    }
    if changed {
        for blk in journal::slot_blocks(f.label.ring_slots, rec.slot) {
            meta.poke(blk.0 * BLOCK_SIZE as u64, &rec.encode(&f.uuid, blk));
        }
    }
}

/// How a metadata block was damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// The checksum was recomputed after the change.
    pub sealed: bool,
    /// A block the newest commit reaches changed (without a reseal: must be detected).
    pub live_changed: bool,
}

/// The properties of a damaged pool (see the module docs).
pub fn damaged_pool(f: &Fixture, meta: Arc<OverlayDev>, data: Arc<OverlayDev>, dmg: Damage) {
    let rep = check::check(meta.clone(), None);
    if dmg.live_changed && !dmg.sealed {
        assert!(
            !rep.is_clean(),
            "check missed a damaged block without a valid checksum"
        );
    }
    let ro = open_options(true);
    let mut before = Vec::new();
    match Pool::open_on(meta.clone(), data.clone(), &ro) {
        Ok(mut p) => {
            for (name, want) in &f.expected {
                let got = read_volume(&mut p, name);
                // A re-sealed details leaf may have renamed the volume: no checker can
                // tell a name from another.
                let renamed = dmg.sealed && matches!(got, Err(PoolError::NoSuchVolume(_)));
                if rep.is_clean() && !renamed {
                    assert!(
                        got.is_ok(),
                        "check is clean but volume {name} does not read: {:?}",
                        got.err()
                    );
                }
                match got {
                    Ok(v) => {
                        if !dmg.sealed {
                            assert!(v == *want, "volume {name} reads wrong data, silently");
                        }
                        before.push((name.clone(), Some(v)));
                    }
                    Err(PoolError::NoSuchVolume(_)) if !dmg.sealed => {
                        panic!("volume {name} vanished without an error")
                    }
                    Err(_) => before.push((name.clone(), None)),
                }
            }
        }
        Err(e) => {
            assert!(!rep.is_clean(), "check is clean but open fails: {e}");
            return;
        }
    }
    let rw = OpenOptions {
        rewind: !rep.is_clean(),
        ..open_options(false)
    };
    let mut p = match Pool::open_on(meta.clone(), data.clone(), &rw) {
        Ok(p) => p,
        Err(e) => {
            assert!(
                !rep.is_clean(),
                "check is clean but a read-write open fails: {e}"
            );
            return;
        }
    };
    // A write into the damaged state: must work when check found nothing, must not panic
    // either way.
    let w = (|| -> Result<(), PoolError> {
        let (Ok((b, _)), Ok((a, _))) = (p.find("b"), p.find("a")) else {
            if dmg.sealed {
                return Ok(()); // renamed (see above)
            }
            p.find("b")?;
            p.find("a")?;
            unreachable!()
        };
        let d1 = pattern(77, 3000, 9000);
        p.write(b, 3000, &d1)?;
        let d2 = pattern(78, 0, 2 * BS as usize);
        p.write(a, 11 * BS, &d2)?;
        p.discard(a, 100 * BS, 3 * BS)?;
        p.commit()?;
        let clean = rep.is_clean();
        let mut g = vec![0u8; d1.len()];
        p.read(b, 3000, &mut g)?;
        assert!(
            !clean || g == d1,
            "a write into a pool that checks clean reads back wrong"
        );
        let mut g = vec![0u8; d2.len()];
        p.read(a, 11 * BS, &mut g)?;
        assert!(
            !clean || g == d2,
            "a write into a pool that checks clean reads back wrong"
        );
        for (name, old) in &before {
            if name == "a" || name == "b" {
                continue;
            }
            if let (Some(old), Ok(now)) = (old, read_volume(&mut p, name)) {
                if rep.is_clean() {
                    assert!(now == *old, "writing to a and b changed volume {name}");
                }
            }
        }
        Ok(())
    })();
    if rep.is_clean() {
        if let Err(e) = w {
            panic!("check is clean but writing fails: {e}");
        }
        drop(p);
        let after = check::check(meta, None);
        assert!(
            after.is_clean(),
            "check was clean, then a write and commit left damage: {:?}",
            after.errors().map(|f| f.to_string()).collect::<Vec<_>>()
        );
    }
}

pub fn read_volume(p: &mut Pool, name: &str) -> Result<Vec<u8>, PoolError> {
    let (id, d) = p.find(name)?;
    if d.size > 64 << 20 {
        // A damaged size: read the fixture's extent only.
        let mut v = vec![0u8; 384 * BS as usize];
        p.read(id, 0, &mut v)?;
        return Ok(v);
    }
    let mut v = vec![0u8; d.size as usize];
    p.read(id, 0, &mut v)?;
    Ok(v)
}

/// Mutate block `b` of a fixture copy; returns the damage done.
fn damage_block(u: &mut Unstructured, f: &Fixture, meta: &OverlayDev, b: u64) -> Option<Damage> {
    let off = b * BLOCK_SIZE as u64;
    let orig = meta.peek(off, BLOCK_SIZE);
    let mut buf = orig.clone();
    mutate(u, &mut buf, 192);
    let sealed = u.ratio(3, 4u8).unwrap_or(true);
    if sealed {
        reseal(&mut buf);
    }
    if buf == orig {
        return None;
    }
    meta.poke(off, &buf);
    if sealed {
        fix_root_crcs(f, meta, b);
    }
    trace(b, &orig, &buf, sealed);
    Some(Damage {
        sealed,
        live_changed: f.live.contains(&b),
    })
}

/// With `FUZZ_VERBOSE`, say which bytes of which block a case changed.
pub fn trace(b: u64, orig: &[u8], new: &[u8], sealed: bool) {
    if std::env::var_os("FUZZ_VERBOSE").is_none() {
        return;
    }
    let diff: Vec<(usize, u8, u8)> = (0..orig.len())
        .filter(|&i| orig[i] != new[i])
        .map(|i| (i, orig[i], new[i]))
        .collect();
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "block {b} (sealed {sealed}): changed (offset, old, new) {diff:?}"
    );
}

// ----- label --------------------------------------------------------------------------------

/// `Label::decode` on a mutated label (or raw bytes): never panics; what it accepts is a
/// label that re-encodes to the same fields and satisfies the documented ranges.
pub fn label(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let f = fixture();
    let mut buf = if u.ratio(1, 8u8).unwrap_or(false) {
        let mut b = vec![0u8; BLOCK_SIZE];
        let n = u.len().min(BLOCK_SIZE);
        b[..n].copy_from_slice(u.bytes(n).unwrap_or(&[]));
        b
    } else {
        f.meta[..BLOCK_SIZE].to_vec()
    };
    mutate(&mut u, &mut buf, 128);
    if u.ratio(3, 4u8).unwrap_or(true) {
        reseal(&mut buf);
    }
    let cut = if u.ratio(1, 16u8).unwrap_or(false) {
        u.int_in_range(0..=BLOCK_SIZE).unwrap_or(0)
    } else {
        BLOCK_SIZE
    };
    match Label::decode(&buf[..cut]) {
        Ok(l) => {
            assert!(sealed_as(&buf, BlockType::Label), "accepted a bad checksum");
            assert!(l.data_block_size.is_power_of_two());
            assert!((4096..=1 << 30).contains(&l.data_block_size));
            assert!((1..=1024).contains(&l.ring_slots));
            assert_eq!(Label::decode(&l.encode()).unwrap(), l, "label round trip");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// A pool whose label was mutated.
pub fn label_in_pool(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let f = fixture();
    let (meta, dev) = f.devs();
    if let Some(d) = damage_block(&mut u, f, &meta, 0) {
        let new = Label::decode(&meta.peek(0, BLOCK_SIZE));
        // A re-sealed label that still decodes but changed a field the layout depends on
        // (block size, ring size, device size) describes another pool: only "no panic".
        let same = matches!(&new, Ok(l) if *l == f.label);
        let dmg = if same {
            // Only bytes no field covers changed: the same pool.
            Damage {
                sealed: false,
                live_changed: false,
            }
        } else {
            d
        };
        if dmg.sealed && new.is_ok() {
            // Still check and open it, for panics.
            let _ = check::check(meta.clone(), None);
            if let Ok(mut p) = Pool::open_on(meta, dev, &OpenOptions::default()) {
                for name in REAL_VOLS {
                    let _ = read_volume(&mut p, name);
                }
                let _ = p.create_volume("new", BS, false);
            }
            return;
        }
        damaged_pool(f, meta, dev, dmg);
    }
}

// ----- journal ------------------------------------------------------------------------------

#[derive(Arbitrary, Debug)]
struct RecFields {
    seq: u64,
    slot_delta: u8,
    flags: u32,
    data_blocks: u64,
    meta_blocks: u64,
    counters: [u64; 2],
    data_allocated: u64,
    meta_allocated: u64,
    roots: [(u64, u64, u32); NR_ROOTS],
}

fn arbitrary_record(u: &mut Unstructured, slot: u32) -> Record {
    let r = RecFields::arbitrary(u).unwrap_or(RecFields {
        seq: 1,
        slot_delta: 0,
        flags: 0,
        data_blocks: 1,
        meta_blocks: 1,
        counters: [0; 2],
        data_allocated: 0,
        meta_allocated: 0,
        roots: [(0, 0, 0); NR_ROOTS],
    });
    let mut roots = [Root::default(); NR_ROOTS];
    for (i, (b, g, c)) in r.roots.iter().enumerate() {
        roots[i] = Root {
            r: BlockRef {
                block: MetaBlock(*b),
                gen: *g,
            },
            crc: *c,
        };
    }
    Record {
        seq: r.seq,
        slot: if r.slot_delta < 200 {
            slot
        } else {
            slot.wrapping_add(r.slot_delta as u32)
        },
        flags: r.flags,
        data_blocks: r.data_blocks,
        meta_blocks: r.meta_blocks,
        counters: r.counters,
        data_allocated: r.data_allocated,
        meta_allocated: r.meta_allocated,
        roots,
    }
}

/// The rules a slot must satisfy, restated independently of `Record::decode`.
fn slot_is_valid(buf: &[u8], uuid: &[u8; 16], b: u64, slot: u32) -> bool {
    sealed_as(buf, BlockType::Record)
        && block::block_number(buf) == b
        && &buf[24..40] == uuid
        && block::get_u32(buf, 72) == slot
        && block::generation(buf) == block::get_u64(buf, 64)
        && block::get_u64(buf, 64) <= journal::MAX_SEQ
}

/// `Record::decode` accepts exactly the slots that follow the documented rules, and what
/// it accepts re-encodes to the same bytes.
pub fn record(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let f = fixture();
    let slot = u.int_in_range(0..=f.label.ring_slots - 1).unwrap_or(0);
    let b = journal::slot_blocks(f.label.ring_slots, slot)[u.int_in_range(0..=1usize).unwrap_or(0)];
    let mut buf = match u.int_in_range(0..=3u8).unwrap_or(0) {
        0 => {
            let src = f.records[u.choose_index(f.records.len()).unwrap_or(0)];
            f.meta[src as usize * BLOCK_SIZE..(src as usize + 1) * BLOCK_SIZE].to_vec()
        }
        1 => arbitrary_record(&mut u, slot).encode(&f.uuid, b),
        2 => {
            let mut v = vec![0u8; BLOCK_SIZE];
            let n = u.len().min(BLOCK_SIZE);
            v[..n].copy_from_slice(u.bytes(n).unwrap_or(&[]));
            v
        }
        _ => vec![0u8; BLOCK_SIZE],
    };
    let before = buf.clone();
    if u.ratio(1, 2u8).unwrap_or(true) {
        mutate(&mut u, &mut buf, 320);
        if u.ratio(3, 4u8).unwrap_or(true) {
            reseal(&mut buf);
        }
    }
    let valid = slot_is_valid(&buf, &f.uuid, b.0, slot);
    match Record::decode(&buf, &f.uuid, b, slot) {
        Ok(r) => {
            assert!(valid, "decode accepted an invalid slot");
            let again = Record::decode(&r.encode(&f.uuid, b), &f.uuid, b, slot);
            assert_eq!(again.ok(), Some(r), "record round trip");
        }
        Err(_) => assert!(
            !valid,
            "decode refused a valid slot (unchanged: {})",
            before == buf
        ),
    }
}

/// `journal::scan` over a device of random slots: one entry per slot of both rings, each
/// valid exactly when its slot is.
pub fn journal_scan(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let f = fixture();
    let n = u.int_in_range(1..=6u32).unwrap_or(1);
    let dev = OverlayDev::empty(((2 * n + 1) as u64) * BLOCK_SIZE as u64);
    let mut valid = Vec::new();
    for i in 0..2 * n {
        let slot = i % n;
        let b = MetaBlock(1 + i as u64);
        let mut buf = match u.int_in_range(0..=4u8).unwrap_or(0) {
            0 => vec![0u8; BLOCK_SIZE],
            1 | 2 => {
                let mut r = arbitrary_record(&mut u, slot);
                r.seq %= 16;
                r.encode(&f.uuid, b)
            }
            3 => {
                let src = f.records[u.choose_index(f.records.len()).unwrap_or(0)];
                f.meta[src as usize * BLOCK_SIZE..(src as usize + 1) * BLOCK_SIZE].to_vec()
            }
            _ => {
                let mut v = vec![0u8; BLOCK_SIZE];
                let k = u.len().min(256);
                v[..k].copy_from_slice(u.bytes(k).unwrap_or(&[]));
                v
            }
        };
        if u.ratio(1, 3u8).unwrap_or(false) {
            mutate(&mut u, &mut buf, 256);
            if u.ratio(1, 2u8).unwrap_or(true) {
                reseal(&mut buf);
            }
        }
        valid.push(slot_is_valid(&buf, &f.uuid, b.0, slot));
        dev.poke(b.0 * BLOCK_SIZE as u64, &buf);
    }
    let scan = journal::scan(&dev, &f.uuid, n).unwrap();
    assert_eq!(scan.len(), 2 * n as usize);
    for (i, s) in scan.iter().enumerate() {
        assert_eq!(s.slot, i as u32 % n);
        assert_eq!(s.ring as u32, i as u32 / n);
        assert_eq!(s.block.0, 1 + i as u64);
        assert_eq!(s.result.is_ok(), valid[i], "slot {i}: {:?}", s.result);
    }
}

/// A pool whose journal slots were replaced, moved, mutated or forged: open chooses a valid
/// record (the newest whose roots verify) or fails; when it chooses one of the fixture's own
/// last three records, every volume reads as written.
pub fn journal_in_pool(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let f = fixture();
    let (meta, dev) = f.devs();
    let ring = f.label.ring_slots;
    let changes = u.int_in_range(1..=4u8).unwrap_or(1);
    for _ in 0..changes {
        let i = u.int_in_range(0..=2 * ring - 1).unwrap_or(0);
        let (slot, b) = (i % ring, MetaBlock(1 + i as u64));
        let off = b.0 * BLOCK_SIZE as u64;
        let buf = match u.int_in_range(0..=4u8).unwrap_or(0) {
            0 => vec![0u8; BLOCK_SIZE],
            1 => {
                // The newest record, re-targeted to this slot and given another seq.
                let mut r = f.newest.clone();
                r.slot = slot;
                r.seq = super::interesting(&mut u, r.seq);
                r.encode(&f.uuid, b)
            }
            2 => arbitrary_record(&mut u, slot).encode(&f.uuid, b),
            _ => {
                let mut v = meta.peek(off, BLOCK_SIZE);
                mutate(&mut u, &mut v, 320);
                if u.ratio(1, 2u8).unwrap_or(true) {
                    reseal(&mut v);
                }
                v
            }
        };
        meta.poke(off, &buf);
    }
    let scan = journal::scan(meta.as_ref(), &f.uuid, ring).unwrap();
    let valid: Vec<&Record> = scan.iter().filter_map(|s| s.result.as_ref().ok()).collect();
    let rep = check::check(meta.clone(), None);
    let ro = open_options(true);
    let Ok(mut p) = Pool::open_on(meta.clone(), dev.clone(), &ro) else {
        assert!(!rep.is_clean(), "check is clean but open fails");
        return;
    };
    let chosen = p.open_report().unwrap().chosen_seq;
    let rec = valid
        .iter()
        .find(|r| r.seq == chosen)
        .expect("open chose a record the scan did not find valid");
    let newest = valid.iter().map(|r| r.seq).max().unwrap();
    assert_eq!(p.open_report().unwrap().newest_valid_seq, newest);
    // One of the fixture's last three commits, unchanged in every field but the seq?
    let ours = f.newest.seq.saturating_sub(2) <= rec.seq
        && rec.seq <= f.newest.seq
        && f.records.iter().any(|&b| {
            let raw = &f.meta[b as usize * BLOCK_SIZE..(b as usize + 1) * BLOCK_SIZE];
            Record::decode(raw, &f.uuid, MetaBlock(b), (b - 1) as u32 % ring)
                .is_ok_and(|o| o == **rec)
        });
    if ours {
        for (name, want) in &f.expected {
            match read_volume(&mut p, name) {
                Ok(v) => assert!(v == *want, "volume {name} reads wrong data"),
                Err(e) => panic!("an intact commit's volume {name} does not read: {e}"),
            }
        }
    } else {
        for name in REAL_VOLS {
            let _ = read_volume(&mut p, name);
        }
    }
    drop(p);
    let rw = OpenOptions {
        rewind: true,
        ..open_options(false)
    };
    if let Ok(mut p) = Pool::open_on(meta.clone(), dev.clone(), &rw) {
        if let Ok((b, _)) = p.find("b") {
            let _ = p.write(b, 0, &[1u8; 5000]);
        }
        if p.create_volume("new", BS, false).is_ok() {
            // An acknowledged commit is what the next open finds.
            drop(p);
            let mut p = Pool::open_on(meta, dev, &rw).expect("reopen after a commit");
            assert!(
                p.find("new").is_ok(),
                "a committed volume is gone after reopening (seq {})",
                p.seq()
            );
        }
    }
}

// ----- B-tree nodes -------------------------------------------------------------------------

/// A node block alone: `block::verify` and `Node::validate_shape` never panic, and on a
/// node they accept, every accessor, the binary search and `child_index` stay in bounds and
/// agree with a linear scan.
pub fn node(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let f = fixture();
    let b = f.all_nodes[u.choose_index(f.all_nodes.len()).unwrap_or(0)];
    let mut buf = f.meta[b as usize * BLOCK_SIZE..(b as usize + 1) * BLOCK_SIZE].to_vec();
    let orig = buf.clone();
    mutate(&mut u, &mut buf, 128);
    let sealed = u.ratio(3, 4u8).unwrap_or(true);
    if sealed {
        reseal(&mut buf);
    }
    let v = block::verify(&buf, Some(BlockType::Node), MetaBlock(b), &f.uuid);
    if !sealed && buf != orig {
        assert!(v.is_err(), "verify accepted a node whose checksum is stale");
    }
    let n = Node(&buf);
    if n.validate_shape().is_err() {
        return;
    }
    let keys: Vec<u64> = (0..n.nr()).map(|i| n.key(i)).collect();
    for i in 0..n.nr() {
        assert_eq!(n.value(i).len(), n.value_size());
        if n.value_size() == 16 {
            let _ = n.child(i);
        }
    }
    let sorted = keys.windows(2).all(|w| w[0] < w[1]);
    for _ in 0..8 {
        let k = match u.int_in_range(0..=2u8).unwrap_or(0) {
            0 if !keys.is_empty() => keys[u.choose_index(keys.len()).unwrap_or(0)],
            1 if !keys.is_empty() => keys[u.choose_index(keys.len()).unwrap_or(0)].wrapping_add(1),
            _ => u.arbitrary().unwrap_or(0),
        };
        let s = n.search(k);
        let ci = n.child_index(k);
        assert!(ci <= n.nr().max(1));
        if sorted {
            match s {
                Ok(i) => assert_eq!(keys[i], k),
                Err(i) => {
                    assert!(!keys.contains(&k));
                    assert_eq!(i, keys.iter().filter(|&&x| x < k).count());
                }
            }
        }
    }
}

/// A pool with one damaged node: raw damage, re-sealed damage, or a child pointer turned
/// towards another node of the pool (possibly an ancestor: a cycle).
pub fn node_in_pool(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let f = fixture();
    let (meta, dev) = f.devs();
    let pool = if u.ratio(7, 8u8).unwrap_or(true) {
        &f.live_nodes
    } else {
        &f.all_nodes
    };
    let b = pool[u.choose_index(pool.len()).unwrap_or(0)];
    let dmg = if u.ratio(1, 4u8).unwrap_or(false) {
        redirect_child(&mut u, f, &meta, b)
    } else {
        damage_block(&mut u, f, &meta, b)
    };
    if let Some(d) = dmg {
        damaged_pool(f, meta, dev, d);
    }
}

/// Point one child (internal node) or mapping-tree root (top-level leaf) of node `b` at
/// another live node, with that node's generation, and re-seal.
fn redirect_child(u: &mut Unstructured, f: &Fixture, meta: &OverlayDev, b: u64) -> Option<Damage> {
    let off = b * BLOCK_SIZE as u64;
    let mut buf = meta.peek(off, BLOCK_SIZE);
    let (nr, max, vs, leaf, kind) = {
        let n = Node(&buf);
        (n.nr(), n.max(), n.value_size(), n.is_leaf(), n.kind_id())
    };
    if nr == 0 || vs != 16 || (leaf && kind != DEV_ROOTS.id) {
        return None;
    }
    let i = u.int_in_range(0..=nr - 1).unwrap_or(0);
    let t = f.live_nodes[u.choose_index(f.live_nodes.len()).unwrap_or(0)];
    let tbuf = meta.peek(t * BLOCK_SIZE as u64, BLOCK_SIZE);
    let r = BlockRef {
        block: MetaBlock(t),
        gen: block::generation(&tbuf),
    };
    let o = HEADER_SIZE + max * 8 + i * 16;
    if buf[o..o + 16] == encode_ref(r) {
        return None;
    }
    let orig = buf.clone();
    buf[o..o + 16].copy_from_slice(&encode_ref(r));
    reseal(&mut buf);
    trace(b, &orig, &buf, true);
    meta.poke(off, &buf);
    fix_root_crcs(f, meta, b);
    Some(Damage {
        sealed: true,
        live_changed: true,
    })
}

// ----- space-map bitmap pages ---------------------------------------------------------------

/// The page helpers on arbitrary pages: `page_find_zero` agrees with a scan by `page_get`,
/// `page_set` changes exactly one entry.
pub fn bitmap_page(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let f = fixture();
    let mut page = if !f.live_pages.is_empty() && u.ratio(1, 2u8).unwrap_or(true) {
        let b = f.live_pages[u.choose_index(f.live_pages.len()).unwrap_or(0)] as usize;
        f.meta[b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE].to_vec()
    } else {
        let mut p = vec![0u8; BLOCK_SIZE];
        // Runs of one byte value, so pages are mostly full, mostly empty or mixed.
        let mut at = HEADER_SIZE;
        while at < BLOCK_SIZE && !u.is_empty() {
            let len = u
                .int_in_range(1..=600usize)
                .unwrap_or(1)
                .min(BLOCK_SIZE - at);
            let v: u8 = u.arbitrary().unwrap_or(0);
            let v = if u.ratio(1, 2u8).unwrap_or(false) {
                0x55 | v
            } else {
                v
            };
            p[at..at + len].fill(v);
            at += len;
        }
        p
    };
    let e = ENTRIES_PER_PAGE as usize;
    for _ in 0..4 {
        let mut from = u.int_in_range(0..=e).unwrap_or(0);
        let mut limit = u.int_in_range(0..=e).unwrap_or(e);
        if u.ratio(1, 2u8).unwrap_or(false) {
            limit = e;
        }
        if from > limit {
            std::mem::swap(&mut from, &mut limit);
        }
        let want = (from..limit).find(|&i| spacemap::page_get(&page, i) == 0);
        assert_eq!(
            spacemap::page_find_zero(&page, from, limit),
            want,
            "find_zero({from}, {limit})"
        );
        let i = u.int_in_range(0..=e - 1).unwrap_or(0);
        let v = u.int_in_range(0..=3u8).unwrap_or(0);
        let around: Vec<u8> = [i.wrapping_sub(1), i + 1]
            .iter()
            .filter(|&&j| j < e)
            .map(|&j| spacemap::page_get(&page, j))
            .collect();
        let nf = spacemap::page_nr_free(&page);
        spacemap::page_set(&mut page, i, v);
        assert_eq!(spacemap::page_get(&page, i), v);
        let after: Vec<u8> = [i.wrapping_sub(1), i + 1]
            .iter()
            .filter(|&&j| j < e)
            .map(|&j| spacemap::page_get(&page, j))
            .collect();
        assert_eq!(around, after, "page_set({i}) changed a neighbour");
        assert_eq!(
            spacemap::page_nr_free(&page),
            nf,
            "page_set touched the header"
        );
    }
}

/// A pool with one damaged bitmap page (raw or re-sealed).
pub fn bitmap_in_pool(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let f = fixture();
    let (meta, dev) = f.devs();
    let b = f.live_pages[u.choose_index(f.live_pages.len()).unwrap_or(0)];
    let off = b * BLOCK_SIZE as u64;
    let orig = meta.peek(off, BLOCK_SIZE);
    let mut buf = orig.clone();
    // Entries (the 2-bit counts) as often as the header.
    if u.ratio(1, 2u8).unwrap_or(true) {
        mutate(&mut u, &mut buf, 192);
    } else {
        for _ in 0..u.int_in_range(1..=4u8).unwrap_or(1) {
            let i = u
                .int_in_range(0..=ENTRIES_PER_PAGE as usize - 1)
                .unwrap_or(0);
            let i = if u.ratio(2, 3u8).unwrap_or(true) {
                i % 1100
            } else {
                i
            };
            spacemap::page_set(&mut buf, i, u.int_in_range(0..=3u8).unwrap_or(0));
        }
    }
    let sealed = u.ratio(3, 4u8).unwrap_or(true);
    if sealed {
        reseal(&mut buf);
    }
    if buf == orig {
        return;
    }
    meta.poke(off, &buf);
    damaged_pool(
        f,
        meta,
        dev,
        Damage {
            sealed,
            live_changed: true,
        },
    );
}
