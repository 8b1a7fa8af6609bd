//! `thinpool repair` (issue 12): damage a mapping leaf, an internal node, a space-map page
//! and each ring's copy of a record in turn; repair recovers everything not on the damaged
//! block, names exactly the volume byte ranges it lost, and `check` passes afterwards. The
//! damaged metadata is kept, and a dry run writes nothing.

mod common;

use common::{pattern, thinpool, TestPool};
use serde_json::Value;

const BS: u64 = 4096;
const NODE: u32 = 0x7470_6e62;
const BITMAP: u32 = 0x7470_6d62;

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// A metadata node as docs/format.md lays it out.
struct NodeInfo {
    block: u64,
    leaf: bool,
    keys: Vec<u64>,
    children: Vec<u64>,
}

/// Every node of tree kind `kind` in the metadata file, and every block of type `ty`.
fn nodes(meta: &[u8], kind: u32) -> Vec<NodeInfo> {
    let mut out = Vec::new();
    for b in 0..meta.len() / 4096 {
        let blk = &meta[b * 4096..(b + 1) * 4096];
        if u32_at(blk, 4) != NODE || u32_at(blk, 56) != kind {
            continue;
        }
        let (leaf, nr, cap) = (
            u32_at(blk, 40) & 1 == 1,
            u32_at(blk, 44) as usize,
            u32_at(blk, 48) as usize,
        );
        let keys: Vec<u64> = (0..nr).map(|i| u64_at(blk, 64 + 8 * i)).collect();
        let children = if leaf {
            vec![]
        } else {
            (0..nr)
                .map(|i| u64_at(blk, 64 + 8 * cap + 16 * i))
                .collect()
        };
        out.push(NodeInfo {
            block: b as u64,
            leaf,
            keys,
            children,
        });
    }
    out
}

fn flip(meta_path: &std::path::Path, block: u64, at: usize) {
    let mut m = std::fs::read(meta_path).unwrap();
    m[block as usize * 4096 + at] ^= 0x5a;
    std::fs::write(meta_path, m).unwrap();
}

fn lost(rep: &Value) -> Vec<(String, u64, u64)> {
    rep["lost"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["volume"].is_string())
        .map(|l| {
            (
                l["volume"].as_str().unwrap().to_string(),
                l["offset"].as_u64().unwrap(),
                l["length"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A pool of 4 KiB blocks with volume `v` written in full (`mb` MiB) and snapshot `s` of it
/// (sharing every node), plus a small volume `w` of its own.
fn pool(mb: usize) -> (TestPool, Vec<u8>) {
    let tp = TestPool::new("256M", "4K");
    let p = tp.p();
    let data = pattern(9, mb << 20);
    let f = tp.put("v", &data);
    thinpool(&["create", p, "v", "-s", &format!("{mb}M")]).ok();
    thinpool(&["write", p, "v", &f]).ok();
    thinpool(&["snapshot", p, "v", "s"]).ok();
    thinpool(&["create", p, "w", "-s", "1M"]).ok();
    let g = tp.put("w", &pattern(4, 1 << 20));
    thinpool(&["write", p, "w", &g]).ok();
    (tp, data)
}

fn read(tp: &TestPool, vol: &str) -> Vec<u8> {
    thinpool(&["read", tp.p(), "--", vol]).ok().stdout
}

/// After a repair that lost `[lo, hi)` bytes of `v` and `s`: that range reads zeros, every
/// other byte of every volume reads as before, the pool checks clean, and the damaged
/// metadata was kept.
fn assert_repaired(tp: &TestPool, data: &[u8], lo: usize, hi: usize) {
    for vol in ["v", "s"] {
        let got = read(tp, vol);
        assert_eq!(got.len(), data.len());
        assert!(
            got[..lo] == data[..lo],
            "{vol} differs before the lost range"
        );
        assert!(
            got[hi..] == data[hi..],
            "{vol} differs after the lost range"
        );
        assert!(
            got[lo..hi].iter().all(|&x| x == 0),
            "{vol}: lost range not zeros"
        );
    }
    assert_eq!(read(tp, "w"), pattern(4, 1 << 20));
    thinpool(&["check", tp.p()]).ok();
    let kept = std::fs::read_dir(&tp.dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("metadata.damaged-")
        })
        .count();
    assert_eq!(kept, 1);
}

#[test]
fn a_damaged_leaf_loses_exactly_its_key_range_in_every_volume_sharing_it() {
    let (tp, data) = pool(8);
    let meta = tp.dir.join("metadata");
    let m = std::fs::read(&meta).unwrap();
    let all = nodes(&m, 3);
    let root = all
        .iter()
        .find(|n| !n.leaf && n.keys.len() > 4)
        .expect("an internal root");
    // The third leaf: its range is from its key in the parent to the next one's.
    let (leaf, lo, hi) = (root.children[2], root.keys[2], root.keys[3]);
    flip(&meta, leaf, 700);
    let before = std::fs::read(&meta).unwrap();
    let dry = thinpool(&["repair", tp.p(), "--dry-run", "--json"])
        .ok()
        .json();
    assert_eq!(std::fs::read(&meta).unwrap(), before, "a dry run wrote");
    let want = vec![
        ("v".to_string(), lo * BS, (hi - lo) * BS),
        ("s".to_string(), lo * BS, (hi - lo) * BS),
    ];
    assert_eq!(lost(&dry), want);
    let rep = thinpool(&["repair", tp.p(), "--json"]).ok().json();
    assert_eq!(lost(&rep), want);
    assert!(rep["lost"][0]["why"]
        .as_str()
        .unwrap()
        .contains(&format!("block {leaf}")));
    assert_repaired(&tp, &data, (lo * BS) as usize, (hi * BS) as usize);
}

#[test]
fn a_damaged_internal_node_loses_its_subtree_and_nothing_else() {
    // 100 MiB of 4 KiB blocks: more leaves than one internal node holds, so the root's
    // children are internal nodes.
    let (tp, data) = pool(100);
    let meta = tp.dir.join("metadata");
    let m = std::fs::read(&meta).unwrap();
    let all = nodes(&m, 3);
    let internal: std::collections::HashSet<u64> =
        all.iter().filter(|n| !n.leaf).map(|n| n.block).collect();
    let root = all
        .iter()
        .find(|n| !n.leaf && n.children.iter().all(|c| internal.contains(c)))
        .expect("a root over internal nodes");
    let (victim, lo) = (root.children[0], root.keys[0]);
    let hi = root.keys[1];
    assert_eq!(lo, 0);
    flip(&meta, victim, 100);
    let rep = thinpool(&["repair", tp.p(), "--json"]).ok().json();
    assert_eq!(
        lost(&rep),
        vec![("v".to_string(), 0, hi * BS), ("s".to_string(), 0, hi * BS)]
    );
    assert_repaired(&tp, &data, 0, (hi * BS) as usize);
}

#[test]
fn a_damaged_space_map_page_loses_nothing() {
    let (tp, data) = pool(8);
    let meta = tp.dir.join("metadata");
    let m = std::fs::read(&meta).unwrap();
    let page = (0..m.len() / 4096)
        .find(|&b| u32_at(&m[b * 4096..], 4) == BITMAP)
        .unwrap() as u64;
    flip(&meta, page, 2000);
    thinpool(&["check", tp.p()]).fails(1, "");
    let rep = thinpool(&["repair", tp.p(), "--json"]).ok().json();
    assert!(lost(&rep).is_empty(), "{rep}");
    assert_repaired(&tp, &data, 0, 0);
}

#[test]
fn a_damaged_record_copy_loses_nothing_and_both_copies_lose_that_commit() {
    let (tp, data) = pool(8);
    let p = tp.p();
    let newest = tp.info()["seq"].as_u64().unwrap();
    thinpool(&["create", p, "extra", "-s", "1M"]).ok();
    let last = tp.info()["seq"].as_u64().unwrap();
    assert_eq!(last, newest + 1);
    let meta = tp.dir.join("metadata");
    let slot = last % 64;
    // Ring A's copy only: ring B still has it.
    flip(&meta, 1 + slot, 90);
    let rep = thinpool(&["repair", p, "--dry-run", "--json"]).ok().json();
    assert_eq!(rep["repaired_from_seq"], last);
    assert!(rep["lost"].as_array().unwrap().is_empty(), "{rep}");
    assert_eq!(rep["bad_slots"].as_array().unwrap().len(), 1, "{rep}");
    // Ring B's too: the commit is gone, and repair goes back to the one before it.
    flip(&meta, 65 + slot, 90);
    let rep = thinpool(&["repair", p, "--json"]).ok().json();
    assert_eq!(rep["repaired_from_seq"], newest);
    assert!(lost(&rep).is_empty());
    let said = rep["lost"][0]["why"].as_str().unwrap();
    assert!(
        said.contains(&format!("where commit {last} would be")),
        "{said}"
    );
    let names: Vec<String> = tp
        .list()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().into())
        .collect();
    assert_eq!(names, ["v", "s", "w"]);
    assert_repaired(&tp, &data, 0, 0);
}

#[test]
fn repair_of_a_healthy_pool_keeps_everything_and_refuses_a_busy_one() {
    let (tp, data) = pool(4);
    let before = tp.list();
    let rep = thinpool(&["repair", tp.p(), "--json"]).ok().json();
    assert!(rep["lost"].as_array().unwrap().is_empty());
    let after = tp.list();
    assert_eq!(before, after);
    assert_repaired(&tp, &data, 0, 0);
    // A scratch directory holding something repair did not put there: refused, kept.
    let scratch = tp.dir.join(".repair");
    std::fs::create_dir(&scratch).unwrap();
    std::fs::write(scratch.join("notes"), b"mine").unwrap();
    thinpool(&["repair", tp.p()]).fails(1, "move it away");
    assert_eq!(std::fs::read(scratch.join("notes")).unwrap(), b"mine");
    std::fs::remove_dir_all(&scratch).unwrap();
    thinpool(&["repair", tp.file("none").to_str().unwrap()]).fails(1, "not a thinpool pool");
    // A pool another process has open.
    let held =
        thinpool::pool::Pool::open(&tp.dir, &thinpool::pool::OpenOptions::default()).unwrap();
    thinpool(&["repair", tp.p()]).fails(1, "in use");
    thinpool(&["repair", tp.p(), "--dry-run"]).fails(1, "in use");
    drop(held);
    thinpool(&["repair", tp.p(), "--dry-run"]).ok();
}

#[test]
fn damaged_details_keep_the_volumes_found_in_the_mapping_tree() {
    let (tp, data) = pool(8);
    let meta = tp.dir.join("metadata");
    let m = std::fs::read(&meta).unwrap();
    // The details tree (kind 5): one leaf holding all three volumes, the newest of its
    // copies is the one the record names.
    let leaf = nodes(&m, 5)
        .into_iter()
        .filter(|n| n.leaf && n.keys.len() == 3)
        .map(|n| n.block)
        .max_by_key(|&b| u64_at(&m[b as usize * 4096..], 16))
        .unwrap();
    flip(&meta, leaf, 200);
    let rep = thinpool(&["repair", tp.p(), "--json"]).ok().json();
    let said = rep["lost"][0]["why"].as_str().unwrap();
    assert!(
        said.contains("the details of volume ids 0 and up are lost"),
        "{said}"
    );
    let list = tp.list();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["recovered-1", "recovered-2", "recovered-3"]);
    // Sized to their mappings, which are all there.
    assert_eq!(read(&tp, "recovered-1"), data);
    assert_eq!(read(&tp, "recovered-2"), data);
    assert_eq!(read(&tp, "recovered-3"), pattern(4, 1 << 20));
    thinpool(&["check", tp.p()]).ok();
}
