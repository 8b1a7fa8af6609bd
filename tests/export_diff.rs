//! The tree diff: against a brute-force comparison of the two volumes' mappings after random
//! writes, discards and snapshots; its cost (nodes read) follows the change; `thinpool diff`
//! output for people and for scripts.

mod common;
use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::Arc;
use thinpool::export::diff::diff_blocks_in;
use thinpool::export::{diff_volumes, DiffKind};
use thinpool::io::{BlockDev, MemDev};
use thinpool::pool::{CreateOptions, Pool, VolumeId};

fn mem_pool(size: u64, bs: u64) -> Pool {
    let meta: Arc<dyn BlockDev> = Arc::new(MemDev::new(256 << 20).unwrap());
    let data: Arc<dyn BlockDev> = Arc::new(MemDev::new(size).unwrap());
    let mut o = CreateOptions::new(size);
    o.block_size = bs;
    o.metadata_size = Some(256 << 20);
    Pool::create_on(meta, data, &o).unwrap()
}

/// Per block: the expected kind, from the full mapping lists.
fn brute_force(pool: &mut Pool, from: VolumeId, to: VolumeId) -> BTreeMap<u64, DiffKind> {
    let a: BTreeMap<u64, u64> = pool
        .mappings(from, 0, u64::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .collect();
    let b: BTreeMap<u64, u64> = pool
        .mappings(to, 0, u64::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .collect();
    let mut out = BTreeMap::new();
    for (vb, pa) in &a {
        match b.get(vb) {
            None => {
                out.insert(*vb, DiffKind::OnlyInFrom);
            }
            Some(pb) if pb != pa => {
                out.insert(*vb, DiffKind::Changed);
            }
            _ => {}
        }
    }
    for vb in b.keys() {
        if !a.contains_key(vb) {
            out.insert(*vb, DiffKind::OnlyInTo);
        }
    }
    out
}

fn tree_diff(pool: &mut Pool, from: VolumeId, to: VolumeId) -> (BTreeMap<u64, DiffKind>, u64) {
    let bs = pool.block_size();
    let (ranges, stats) = diff_volumes(pool, from, to).unwrap();
    let mut out = BTreeMap::new();
    for w in ranges.windows(2) {
        assert!(
            w[0].offset + w[0].length <= w[1].offset,
            "ranges out of order"
        );
    }
    for r in ranges {
        for vb in r.offset / bs..(r.offset + r.length).div_ceil(bs) {
            assert!(out.insert(vb, r.kind).is_none());
        }
    }
    (out, stats.nodes_read)
}

#[test]
fn tree_diff_matches_brute_force_on_random_histories() {
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("seed {seed} (rerun with SEED={seed})");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let bs = 4096u64;
    let blocks = 20_000u64; // ~80 leaves: a tree of height 2
    let mut pool = mem_pool(3 * blocks * bs, bs);
    let vol = pool.create_volume("vol", blocks * bs, false).unwrap();
    // A base: long sequential runs with holes.
    let buf = vec![0xa5u8; 256 * bs as usize];
    let mut vb = 0;
    while vb + 256 <= blocks {
        pool.write(vol, vb * bs, &buf).unwrap();
        vb += 256 + rng.gen_range(0..300);
    }
    let mut snaps: Vec<VolumeId> = Vec::new();
    for round in 0..6 {
        snaps.push(pool.snapshot("vol", &format!("s{round}"), false).unwrap());
        let ops = [1usize, 10, 100, 1000, 3, 400][round];
        for _ in 0..ops {
            let at = rng.gen_range(0..blocks);
            let n = rng.gen_range(1..=8).min(blocks - at);
            match rng.gen_range(0..4) {
                0 => pool.discard(vol, at * bs, n * bs).unwrap(),
                1 => pool
                    .write(vol, at * bs + 100, &[round as u8 + 1; 50])
                    .unwrap(),
                _ => pool
                    .write(vol, at * bs, &vec![round as u8 + 1; (n * bs) as usize])
                    .unwrap(),
            }
        }
        if round == 3 {
            pool.commit().unwrap();
        }
        for &s in &snaps {
            let want = brute_force(&mut pool, s, vol);
            let (got, _) = tree_diff(&mut pool, s, vol);
            assert_eq!(got, want, "snapshot {s} -> vol, round {round}");
            let back = brute_force(&mut pool, vol, s);
            let (got, _) = tree_diff(&mut pool, vol, s);
            assert_eq!(got, back, "vol -> snapshot {s}, round {round}");
            // A range of it (what BLOCK_STATUS of `thinpool:changed:` asks): exactly the
            // full diff's blocks inside, and never more nodes read than the full walk.
            let lo = rng.gen_range(0..blocks);
            let hi = rng.gen_range(lo..=blocks);
            let mut part = BTreeMap::new();
            let st = diff_blocks_in(&mut pool, s, vol, lo..hi, &mut |d| {
                part.insert(d.vb, d.kind);
                Ok(true)
            })
            .unwrap();
            let inside: BTreeMap<u64, DiffKind> =
                want.range(lo..hi).map(|(k, v)| (*k, *v)).collect();
            assert_eq!(
                part, inside,
                "snapshot {s} -> vol in {lo}..{hi}, round {round}"
            );
            let (_, full_nodes) = tree_diff(&mut pool, s, vol);
            assert!(
                st.nodes_read <= full_nodes,
                "{} > {full_nodes}",
                st.nodes_read
            );
            // Stopping early: the first n blocks only.
            let mut first = Vec::new();
            diff_blocks_in(&mut pool, s, vol, 0..blocks, &mut |d| {
                first.push(d.vb);
                Ok(first.len() < 3)
            })
            .unwrap();
            let head: Vec<u64> = want.keys().take(3).copied().collect();
            assert_eq!(first, head);
        }
    }
    // Two unrelated volumes (no shared nodes) still compare right.
    let other = pool.create_volume("other", blocks * bs, false).unwrap();
    pool.write(other, 0, &vec![1u8; (300 * bs) as usize])
        .unwrap();
    assert_eq!(
        tree_diff(&mut pool, other, vol).0,
        brute_force(&mut pool, other, vol)
    );
}

#[test]
fn tree_diff_reads_only_nodes_on_changed_paths() {
    let bs = 4096u64;
    let blocks = 204_800u64; // ~800 leaves, a multiple of 4 MiB
    let mut pool = mem_pool(blocks * bs + (64 << 20), bs);
    let vol = pool.create_volume("vol", blocks * bs, false).unwrap();
    let buf = vec![7u8; 4 << 20];
    for off in (0..blocks * bs).step_by(buf.len()) {
        pool.write(vol, off, &buf).unwrap();
    }
    let s = pool.snapshot("vol", "s", true).unwrap();
    for i in 0..10u64 {
        pool.write(vol, i * 19_997 * bs, &[9u8; 4096]).unwrap();
    }
    let (got, nodes) = tree_diff(&mut pool, s, vol);
    assert_eq!(got.len(), 10);
    assert!(got.values().all(|k| *k == DiffKind::Changed));
    // 10 leaves and their parents on each side, plus the descent for the heights.
    eprintln!("10 changed blocks of {blocks}: {nodes} nodes read");
    assert!(nodes < 60, "{nodes} nodes read for 10 changed blocks");
}

#[test]
fn diff_command_table_and_json() {
    let tp = TestPool::new("64M", "64K");
    tp.run(&["create", "{}", "v", "--size", "8M"]).ok();
    let f = tp.put("d", &pattern(1, 1 << 20));
    tp.run(&["write", "{}", "v", &f]).ok();
    tp.run(&["snapshot", "{}", "v", "s"]).ok();
    let g = tp.put("e", &pattern(2, 100_000));
    tp.run(&["write", "{}", "v", "--offset", "4M", &g]).ok();
    tp.run(&["write", "{}", "v", "--offset", "128K", &g]).ok();
    tp.run(&["discard", "{}", "v", "--offset", "768K", "--length", "256K"])
        .ok();
    let j = tp.run(&["diff", "{}", "s", "v", "--json"]).ok().json();
    let ranges: Vec<(u64, u64, String)> = j["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["offset"].as_u64().unwrap(),
                r["length"].as_u64().unwrap(),
                r["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let k = 64 * 1024;
    assert_eq!(
        ranges,
        vec![
            (2 * k, 2 * k, "changed".to_string()),
            (12 * k, 4 * k, "only-in-from".to_string()),
            (64 * k, 2 * k, "only-in-to".to_string()),
        ]
    );
    assert_eq!(j["summary"]["changed_bytes"], 2 * k);
    assert_eq!(j["summary"]["total_bytes"], 8 * k);
    let t = tp.run(&["diff", "{}", "s", "v"]).ok().text();
    assert!(t.trim_start().starts_with("OFFSET"), "{t}");
    assert!(t.contains("only-in-from"), "{t}");
    assert!(t.contains("3 range(s) differ"), "{t}");
    // No differences.
    let t = tp.run(&["diff", "{}", "s", "s"]).ok().text();
    assert!(t.starts_with("0 range(s) differ"), "{t}");
}
