//! `thinpool metadata-size` (issue 12) against what pools really use: a pool created with
//! the estimated size holds a volume written everywhere, sequentially (leaves left half full,
//! the case the estimate models) or in random order, and the estimate's tree part is within
//! a few percent of the nodes a sequential fill leaves.

mod common;

use common::{thinpool, TestPool};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use thinpool::pool::{OpenOptions, Pool};

/// Fill volume `v` of the pool at `dir` (4 KiB blocks) in the given block order, through the
/// library (a CLI run per block would take minutes).
fn fill(dir: &std::path::Path, order: &[u64]) {
    let mut p = Pool::open(dir, &OpenOptions::default()).unwrap();
    let id = p.volume_id("v").unwrap();
    let mut buf = vec![0u8; 4096];
    for &b in order {
        buf[..8].copy_from_slice(&b.to_le_bytes());
        p.write(id, b * 4096, &buf).unwrap();
    }
    p.commit().unwrap();
}

#[test]
fn a_pool_of_the_estimated_size_holds_a_volume_written_everywhere() {
    let est = thinpool(&["metadata-size", "-s", "256M", "-b", "4K", "--json"])
        .ok()
        .json();
    assert_eq!(est["data_blocks"], 65536);
    let size = est["metadata_size"].as_u64().unwrap().to_string();
    let trees = ["mapping_blocks", "volume_blocks", "space_map_blocks"]
        .iter()
        .map(|k| est[k].as_u64().unwrap())
        .sum::<u64>();
    let blocks: Vec<u64> = (0..65536).collect();
    let mut shuffled = blocks.clone();
    shuffled.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(3));
    for (order, name) in [(&blocks, "sequential"), (&shuffled, "random")] {
        let tp = TestPool::new("256M", "4K");
        // A pool made with exactly the estimated metadata.
        std::fs::remove_dir_all(&tp.dir).unwrap();
        thinpool(&[
            "pool",
            "create",
            tp.p(),
            "-s",
            "256M",
            "--block-size",
            "4K",
            "--metadata-size",
            &size,
        ])
        .ok();
        thinpool(&["create", tp.p(), "v", "-s", "256M"]).ok();
        fill(&tp.dir, order);
        let c = thinpool(&["check", tp.p(), "--json"]).ok().json();
        assert_eq!(c["mappings"], 65536, "{name}");
        let nodes = c["nodes"].as_u64().unwrap();
        assert!(
            nodes <= trees,
            "{name}: {nodes} nodes, the estimate's trees {trees}"
        );
        if name == "sequential" {
            // Sequential writes leave half-full leaves: what the estimate models, closely.
            assert!(
                nodes * 100 >= trees * 95,
                "{name}: {nodes} nodes, the estimate's trees {trees}: too loose"
            );
        }
    }
}

#[test]
fn metadata_size_refuses_sizes_no_pool_has() {
    thinpool(&["metadata-size", "-s", "1K"]).fails(1, "between 1 and 2^40");
    thinpool(&["metadata-size", "-s", "1G", "-b", "3K"]).fails(1, "power of two");
    let big = thinpool(&["metadata-size", "-s", "8T", "-b", "4K"])
        .ok()
        .text();
    assert!(big.contains("use a larger --block-size"), "{big}");
    let j = thinpool(&["metadata-size", "-s", "8T", "-b", "4K", "--json"])
        .ok()
        .json();
    assert_eq!(j["fits"], false);
}
