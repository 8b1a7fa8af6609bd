//! rbd diff v1 streams applied with `import_diff` (the parser and applier `import-diff`
//! uses), against a reference reading of the format (docs/format.md and the rules in
//! `src/export/rbd/`): streams built from records, then possibly mutated or cut short.
//!
//! "Silently wrong" here: an import that succeeds must leave the target (and the snapshot
//! named by `t`) holding exactly what the reference applier computes, and report the bytes
//! it applied; an import that fails must leave the pool's volumes as they were; a stream the
//! reference finds well-formed and applicable must not be refused.

use super::{once, open_options, pattern, Images, BS};
use arbitrary::Unstructured;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use thinpool::export::rbd::HEADER;
use thinpool::export::{import_diff as apply_diff, ExportError, ImportDiffOptions};
use thinpool::io::BlockDev;
use thinpool::pool::details::validate_name;
use thinpool::pool::{Pool, VolumeId};

static BASE: OnceLock<Images> = OnceLock::new();

fn base() -> &'static Images {
    once(&BASE, || {
        Images::build(|p| {
            let t = p.create_volume("t", 16 * BS, false).unwrap();
            p.write(t, 3000, &pattern(1, 3000, 20000)).unwrap();
            p.snapshot("t", "s1", true).unwrap();
            p.write(t, 40000, &pattern(2, 40000, 9000)).unwrap();
            let o2 = p.create_volume("other", 4 * BS, false).unwrap();
            p.write(o2, 0, &pattern(3, 0, 5000)).unwrap();
            p.snapshot("other", "s2", true).unwrap();
            p.create_volume("ro", 4 * BS, true).unwrap();
            p.commit().unwrap();
        })
    })
}

/// Sparse volume contents: 4 KiB blocks, absent ones zero.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Image {
    size: u64,
    blocks: BTreeMap<u64, Vec<u8>>,
}

impl Image {
    fn block(&mut self, vb: u64) -> &mut Vec<u8> {
        self.blocks
            .entry(vb)
            .or_insert_with(|| vec![0u8; BS as usize])
    }
    fn write(&mut self, off: u64, data: &[u8]) {
        let mut pos = 0usize;
        while pos < data.len() {
            let abs = off + pos as u64;
            let (vb, within) = (abs / BS, (abs % BS) as usize);
            let n = (BS as usize - within).min(data.len() - pos);
            self.block(vb)[within..within + n].copy_from_slice(&data[pos..pos + n]);
            pos += n;
        }
    }
    fn zero(&mut self, off: u64, len: u64) {
        let end = off + len;
        let keys: Vec<u64> = self
            .blocks
            .range(off / BS..end.div_ceil(BS))
            .map(|(k, _)| *k)
            .collect();
        for vb in keys {
            let (s, e) = ((vb * BS).max(off), ((vb + 1) * BS).min(end));
            let b = self.block(vb);
            b[(s - vb * BS) as usize..(e - vb * BS) as usize].fill(0);
        }
    }
    fn resize(&mut self, size: u64) {
        if size < self.size {
            self.blocks.retain(|&vb, _| vb * BS < size);
            if size % BS != 0 {
                let last = size / BS;
                if let Some(b) = self.blocks.get_mut(&last) {
                    b[(size % BS) as usize..].fill(0);
                }
            }
        }
        self.size = size;
        self.blocks.retain(|_, b| b.iter().any(|&x| x != 0));
    }
    fn normalized(mut self) -> Image {
        self.blocks.retain(|_, b| b.iter().any(|&x| x != 0));
        self
    }
}

fn read_image(p: &mut Pool, name: &str) -> Image {
    let (id, d) = p.find(name).unwrap();
    let maps = p.mappings(id, 0, u64::MAX, usize::MAX).unwrap();
    let mut img = Image {
        size: d.size,
        blocks: BTreeMap::new(),
    };
    for (vb, _) in maps {
        let n = BS.min(d.size.saturating_sub(vb * BS)) as usize;
        let mut b = vec![0u8; BS as usize];
        p.read(id, vb * BS, &mut b[..n]).unwrap();
        img.blocks.insert(vb, b);
    }
    img.normalized()
}

fn volume_set(p: &mut Pool) -> BTreeSet<(String, u64, bool)> {
    p.volumes()
        .unwrap()
        .into_iter()
        .map(|(_, d)| (d.name, d.size, d.read_only))
        .collect()
}

const NAMES: [&str; 12] = [
    "s1",
    "s2",
    "t",
    "other",
    "ro",
    "new",
    "",
    ".",
    "a/b",
    "nul\0",
    ".import-diff-guard-1",
    "x\ny",
];

fn name_bytes(u: &mut Unstructured) -> Vec<u8> {
    match u.int_in_range(0..=15u8).unwrap_or(0) {
        0..=11 => NAMES[u.choose_index(NAMES.len()).unwrap_or(0)]
            .as_bytes()
            .to_vec(),
        12 => vec![b'n'; 120 + u.int_in_range(0..=20usize).unwrap_or(0)],
        _ => {
            let n = u.int_in_range(0..=8usize).unwrap_or(0);
            u.bytes(n).unwrap_or(&[]).to_vec()
        }
    }
}

fn size_value(u: &mut Unstructured, cur: u64) -> u64 {
    match u.int_in_range(0..=7u8).unwrap_or(0) {
        0 => cur,
        1 => cur / 2 + u.int_in_range(0..=5000u64).unwrap_or(0),
        2 => cur * 2,
        3 => u.int_in_range(1..=40u64).unwrap_or(1) * 1000,
        4 => 0,
        5 => 1 << u.int_in_range(20..=64u32).unwrap_or(40).min(63),
        6 => u.arbitrary().unwrap_or(0),
        _ => cur + 1,
    }
}

fn range_value(u: &mut Unstructured, size: u64) -> (u64, u64) {
    let off = match u.int_in_range(0..=5u8).unwrap_or(0) {
        0 => 0,
        1..=3 => u.int_in_range(0..=size).unwrap_or(0),
        4 => size.saturating_sub(u.int_in_range(0..=9000u64).unwrap_or(0)),
        _ => u.arbitrary().unwrap_or(0),
    };
    let len = match u.int_in_range(0..=5u8).unwrap_or(0) {
        0 => 0,
        1..=3 => u.int_in_range(1..=9000u64).unwrap_or(1),
        4 => size.saturating_sub(off),
        _ => u.arbitrary().unwrap_or(0),
    };
    (off, len)
}

/// A stream: mostly well-formed records in a plausible order, sometimes not.
fn stream(u: &mut Unstructured, size: u64) -> Vec<u8> {
    let mut s = HEADER.to_vec();
    if u.ratio(1, 32u8).unwrap_or(false) {
        let i = u.choose_index(s.len()).unwrap_or(0);
        s[i] ^= 0x20;
    }
    let mut size = size;
    let name = |s: &mut Vec<u8>, tag: u8, u: &mut Unstructured| {
        let n = name_bytes(u);
        s.push(tag);
        let len = if u.ratio(1, 32u8).unwrap_or(false) {
            u.arbitrary().unwrap_or(0)
        } else {
            n.len() as u32
        };
        s.extend_from_slice(&len.to_le_bytes());
        s.extend_from_slice(&n);
    };
    if u.ratio(1, 2u8).unwrap_or(false) {
        name(&mut s, b'f', u);
    }
    if u.ratio(2, 3u8).unwrap_or(true) {
        name(&mut s, b't', u);
    }
    if u.ratio(2, 3u8).unwrap_or(true) {
        size = size_value(u, size);
        s.push(b's');
        s.extend_from_slice(&size.to_le_bytes());
    }
    let nrec = u.int_in_range(0..=8u8).unwrap_or(0);
    for _ in 0..nrec {
        match u.int_in_range(0..=9u8).unwrap_or(0) {
            0..=4 => {
                let (off, len) = range_value(u, size);
                s.push(b'w');
                s.extend_from_slice(&off.to_le_bytes());
                s.extend_from_slice(&len.to_le_bytes());
                let have = len.min(12000) as usize;
                let tag: u8 = u.arbitrary().unwrap_or(0);
                if tag % 4 == 0 {
                    s.extend(std::iter::repeat_n(0u8, have));
                } else {
                    s.extend(pattern(tag as u64, off, have));
                }
            }
            5..=7 => {
                let (off, len) = range_value(u, size);
                s.push(b'z');
                s.extend_from_slice(&off.to_le_bytes());
                s.extend_from_slice(&len.to_le_bytes());
            }
            8 => name(&mut s, b't', u),
            _ => s.push(u.arbitrary().unwrap_or(b'?')),
        }
    }
    if u.ratio(7, 8u8).unwrap_or(true) {
        s.push(b'e');
    }
    if u.ratio(1, 4u8).unwrap_or(false) {
        super::mutate(u, &mut s, 64);
    }
    if u.ratio(1, 8u8).unwrap_or(false) {
        let n = u.int_in_range(0..=s.len()).unwrap_or(0);
        s.truncate(n);
    }
    s
}

/// What a well-formed stream says.
#[derive(Debug)]
struct Parsed {
    from: Option<String>,
    to: Option<String>,
    size: Option<u64>,
    data: Vec<Data>,
    data_bytes: u64,
    zero_bytes: u64,
}

#[derive(Debug)]
enum Data {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
}

/// The format, read independently: `None` for a malformed stream.
fn parse(s: &[u8]) -> Option<Parsed> {
    let mut r = s.strip_prefix(&HEADER[..])?;
    let mut take = |n: u64| -> Option<&[u8]> {
        if (r.len() as u64) < n {
            return None;
        }
        let (a, b) = r.split_at(n as usize);
        r = b;
        Some(a)
    };
    let mut p = Parsed {
        from: None,
        to: None,
        size: None,
        data: Vec::new(),
        data_bytes: 0,
        zero_bytes: 0,
    };
    let mut in_data = false;
    loop {
        let tag = take(1)?[0];
        match tag {
            b'f' | b't' => {
                let len = u32::from_le_bytes(take(4)?.try_into().unwrap());
                if len > 4096 {
                    return None;
                }
                let name = String::from_utf8(take(len as u64)?.to_vec()).ok()?;
                if in_data {
                    return None;
                }
                if tag == b'f' {
                    p.from = Some(name);
                } else {
                    p.to = Some(name);
                }
            }
            b's' => {
                let v = u64::from_le_bytes(take(8)?.try_into().unwrap());
                if in_data {
                    return None;
                }
                p.size = Some(v);
            }
            b'w' | b'z' => {
                in_data = true;
                let off = u64::from_le_bytes(take(8)?.try_into().unwrap());
                let len = u64::from_le_bytes(take(8)?.try_into().unwrap());
                off.checked_add(len)?;
                if tag == b'w' {
                    let bytes = take(len)?.to_vec();
                    p.data_bytes = p.data_bytes.saturating_add(len);
                    p.data.push(Data::Write(off, bytes));
                } else {
                    p.zero_bytes = p.zero_bytes.saturating_add(len);
                    p.data.push(Data::Zero(off, len));
                }
            }
            b'e' => return Some(p),
            _ => return None,
        }
    }
}

struct Vol {
    name: &'static str,
    id: VolumeId,
    origin: Option<VolumeId>,
    read_only: bool,
}

/// The reference applier: the target's new image and the snapshot to take, or `None` when
/// the import must fail.
fn reference(
    s: &[u8],
    target: &str,
    vols: &[Vol],
    img: &Image,
    no_snapshot: bool,
) -> Option<(Image, Option<String>, Parsed)> {
    let p = parse(s)?;
    let tv = vols.iter().find(|v| v.name == target)?;
    if tv.read_only {
        return None;
    }
    if let Some(f) = &p.from {
        vols.iter()
            .find(|v| v.name == f && v.origin == Some(tv.id))?;
    }
    let take = p.to.clone().filter(|t| !no_snapshot && t != target);
    if let Some(t) = &take {
        if vols.iter().any(|v| v.name == t) || validate_name(t).is_err() {
            return None;
        }
    }
    let mut img = img.clone();
    if let Some(size) = p.size {
        if size == 0 || size > 1 << 63 || size.div_ceil(BS) >= 1 << 48 {
            return None;
        }
        img.resize(size);
    }
    for d in &p.data {
        match d {
            Data::Write(off, bytes) => {
                if off + bytes.len() as u64 > img.size {
                    return None;
                }
                img.write(*off, bytes);
            }
            Data::Zero(off, len) => {
                if off + len > img.size {
                    return None;
                }
                img.zero(*off, *len);
            }
        }
    }
    Some((img.normalized(), take, p))
}

pub fn import_diff(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let b = base();
    let (meta, dev) = b.overlays();
    let mut p = Pool::open_on(meta.clone(), dev.clone(), &open_options(false)).unwrap();
    let target = match u.int_in_range(0..=15u8).unwrap_or(0) {
        0 => "other",
        1 => "ro",
        2 => "missing",
        _ => "t",
    };
    let vols: Vec<Vol> = p
        .volumes()
        .unwrap()
        .into_iter()
        .map(|(id, d)| Vol {
            name: NAMES
                .iter()
                .chain(["t", "other", "ro"].iter())
                .find(|n| **n == d.name)
                .copied()
                .expect("a base volume"),
            id,
            origin: d.origin,
            read_only: d.read_only,
        })
        .collect();
    let before_set = volume_set(&mut p);
    let before = vols
        .iter()
        .any(|v| v.name == target)
        .then(|| read_image(&mut p, target));
    let cur = before.as_ref().map_or(16 * BS, |i| i.size);
    let s = stream(&mut u, cur);
    let no_snapshot = u.ratio(1, 8u8).unwrap_or(false);
    let want = before
        .as_ref()
        .and_then(|img| reference(&s, target, &vols, img, no_snapshot));
    let opts = ImportDiffOptions { no_snapshot };
    let got = apply_diff(
        &mut p,
        target,
        &mut &s[..],
        &opts,
        &thinpool::export::NoProgress,
    );
    match (got, want) {
        (Ok(rep), Some((img, take, parsed))) => {
            assert_eq!(read_image(&mut p, target), img, "imported contents differ");
            assert_eq!(rep.snapshot, take);
            assert_eq!(
                (rep.data_bytes, rep.zero_bytes),
                (parsed.data_bytes, parsed.zero_bytes)
            );
            let mut set = before_set.clone();
            set.retain(|(n, _, _)| n != target);
            set.insert((target.to_string(), img.size, false));
            if let Some(t) = &take {
                assert_eq!(read_image(&mut p, t), img, "the to-snapshot differs");
                set.insert((t.clone(), img.size, true));
            }
            assert_eq!(volume_set(&mut p), set, "volumes after the import");
        }
        (Ok(rep), None) => panic!("import accepted what the reference refuses: {rep:?}"),
        (Err(e), want) => {
            if want.is_some() {
                // Well-formed and applicable: only the pool itself may refuse.
                assert!(
                    matches!(e, ExportError::Pool(_)),
                    "a valid stream was refused: {e}"
                );
            }
            assert_eq!(
                volume_set(&mut p),
                before_set,
                "a failed import left volumes"
            );
            if let Some(img) = &before {
                assert_eq!(
                    &read_image(&mut p, target),
                    img,
                    "a failed import changed the target ({e})"
                );
            }
        }
    }
    drop(p);
    // The pool it leaves behind is consistent.
    let rep = thinpool::check::check(meta.clone() as Arc<dyn BlockDev>, None);
    assert!(
        rep.is_clean(),
        "check after an import: {:?}",
        rep.errors().map(|f| f.to_string()).collect::<Vec<_>>()
    );
}
