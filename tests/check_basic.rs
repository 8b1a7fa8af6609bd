//! The checker finds nothing on healthy pools and says where the damage is on broken ones.

use std::sync::Arc;
use thinpool::check;
use thinpool::io::{BlockDev, MemDev};
use thinpool::meta::BLOCK_SIZE;
use thinpool::pool::{CreateOptions, Pool};

fn build() -> (Arc<dyn BlockDev>, Arc<dyn BlockDev>) {
    let meta: Arc<dyn BlockDev> = Arc::new(MemDev::new(64 << 20).unwrap());
    let data: Arc<dyn BlockDev> = Arc::new(MemDev::new(256 << 20).unwrap());
    let mut o = CreateOptions::new(256 << 20);
    o.block_size = 4096;
    let mut p = Pool::create_on(meta.clone(), data.clone(), &o).unwrap();
    let a = p.create_volume("a", 1 << 30, false).unwrap();
    let chunk = vec![7u8; 4096 * 300];
    for i in 0..10u64 {
        p.write(a, i * 7 * 4096 * 300, &chunk).unwrap();
    }
    p.snapshot("a", "s1", false).unwrap();
    p.write(a, 4096 * 5, &[1u8; 9000]).unwrap();
    p.snapshot("s1", "s2", true).unwrap();
    let b = p.create_volume("b", 1 << 20, false).unwrap();
    p.write(b, 0, &[3u8; 100_000]).unwrap();
    p.discard(a, 0, 4096 * 100).unwrap();
    p.commit().unwrap();
    (meta, data)
}

fn errors(r: &check::Report) -> Vec<String> {
    r.errors().map(|f| f.to_string()).collect()
}

#[test]
fn healthy_pool_is_clean() {
    let (meta, _data) = build();
    let r = check::check(meta, None);
    assert!(r.is_clean(), "{:#?}", errors(&r));
    assert_eq!(r.stats.volumes, 4);
    assert!(r.stats.mappings > 3000);
    assert!(r.stats.data_blocks_used > 2000);
}

/// Metadata blocks holding mapping-tree leaves (live or from older states).
fn leaves(meta: &dyn BlockDev) -> Vec<u64> {
    let mut buf = vec![0u8; BLOCK_SIZE];
    let mut out = Vec::new();
    for b in 129..(meta.len() / BLOCK_SIZE as u64) {
        meta.read_at(&mut buf, b * BLOCK_SIZE as u64).unwrap();
        let ty = u32::from_le_bytes(buf[4..8].try_into().unwrap());
        let flags = u32::from_le_bytes(buf[40..44].try_into().unwrap());
        let kind = u32::from_le_bytes(buf[56..60].try_into().unwrap());
        let nr = u32::from_le_bytes(buf[44..48].try_into().unwrap());
        if ty == 0x7470_6e62 && flags == 1 && kind == 3 && nr > 10 {
            out.push(b);
        }
    }
    out
}

#[test]
fn damaged_leaf_is_reported_with_its_block() {
    let (meta, _data) = build();
    let mut detected = 0;
    for leaf in leaves(meta.as_ref()) {
        let off = leaf * BLOCK_SIZE as u64;
        let mut orig = vec![0u8; BLOCK_SIZE];
        meta.read_at(&mut orig, off).unwrap();
        let mut bad = orig.clone();
        bad[300] ^= 0x40;
        meta.write_at(&bad, off).unwrap();
        let r = check::check(meta.clone(), None);
        if !r.is_clean() {
            detected += 1;
            assert!(
                r.errors()
                    .any(|f| f.block.map(|b| b.0) == Some(leaf) && f.message.contains("checksum")),
                "{:#?}",
                errors(&r)
            );
        }
        meta.write_at(&orig, off).unwrap();
    }
    assert!(detected > 0, "no live leaf found to damage");
    assert!(check::check(meta, None).is_clean());
}
