//! How much metadata a pool needs (`thinpool metadata-size`, and the size `restore` gives a
//! restored pool). Node capacities and page sizes are the on-disk format's
//! (docs/format.md); docs/dmthin.md compares the figures with `thin_metadata_size`.

use super::details::DETAILS_SIZE;
use super::{default_metadata_size, AUTO_COMMIT_DIRTY, RING_SLOTS};
use crate::meta::btree::capacity;
use crate::meta::spacemap::page::ENTRIES_PER_PAGE;
use crate::meta::BLOCK_SIZE;

/// Blocks kept free for the commit itself (`META_RESERVE` in the transaction manager).
const RESERVE: u64 = 48;

/// Nodes of a tree of `entries` entries whose nodes hold `per_node` on average: the leaves
/// and every internal level above them.
fn tree_nodes(entries: u64, per_node: u64) -> u64 {
    let per_internal = capacity(16) as u64 / 2;
    let mut level = entries.div_ceil(per_node).max(1);
    let mut total = level;
    while level > 1 {
        level = level.div_ceil(per_internal);
        total += level;
    }
    total
}

/// The estimate for a pool, by part (all in metadata blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataEstimate {
    pub data_blocks: u64,
    /// Mapping trees with every data block mapped once, leaves half full (what sequential
    /// writes leave behind: a full leaf splits in the middle), plus each volume's own root.
    pub mapping_blocks: u64,
    /// Details and top-level trees.
    pub volume_blocks: u64,
    /// Both space maps' pages and index trees.
    pub space_map_blocks: u64,
    /// Label, journal, the commit's reserve, and room for the copies that the current
    /// transaction and the two protected commits hold (docs/design.md §3).
    pub overhead_blocks: u64,
    /// The sum, as bytes rounded up to a MiB (at least the 4 MiB minimum).
    pub bytes: u64,
    /// What one snapshot may add if its origin (or it) is then rewritten everywhere: a
    /// second copy of every leaf.
    pub per_rewritten_snapshot_bytes: u64,
    /// What `pool create` gives by default.
    pub default_bytes: u64,
}

/// Metadata for a pool of `pool_size` bytes in blocks of `block_size` holding `volumes`
/// volumes and snapshots (at least one).
pub fn estimate(pool_size: u64, block_size: u64, volumes: u64) -> MetadataEstimate {
    let data_blocks = pool_size / block_size;
    let volumes = volumes.max(1);
    let leaf = capacity(8) as u64;
    let mapping_blocks = tree_nodes(data_blocks, leaf / 2) + volumes;
    let volume_blocks = tree_nodes(volumes, capacity(DETAILS_SIZE) as u64 / 2)
        + tree_nodes(volumes, capacity(16) as u64 / 2);
    let pages = |n: u64| n.div_ceil(ENTRIES_PER_PAGE);
    let data_sm = pages(data_blocks) + tree_nodes(pages(data_blocks), capacity(16) as u64 / 2);
    let trees = mapping_blocks + volume_blocks + data_sm;
    // Copies in flight: up to a transaction's worth of dirty blocks for the current
    // transaction and each protected commit, and never more than three times the trees.
    let copies = (3 * AUTO_COMMIT_DIRTY as u64).min(3 * trees);
    let fixed = 1 + 2 * RING_SLOTS as u64 + RESERVE + copies;
    let before_meta_sm = trees + fixed;
    // The metadata space map covers the metadata itself.
    let meta_pages = pages(before_meta_sm + pages(before_meta_sm) * 2);
    let meta_sm = meta_pages + tree_nodes(meta_pages, capacity(16) as u64 / 2);
    let total = before_meta_sm + meta_sm;
    let mib = 1u64 << 20;
    let bytes = (total * BLOCK_SIZE as u64)
        .next_multiple_of(mib)
        .max(4 * mib);
    MetadataEstimate {
        data_blocks,
        mapping_blocks,
        volume_blocks,
        space_map_blocks: data_sm + meta_sm,
        overhead_blocks: fixed,
        bytes,
        per_rewritten_snapshot_bytes: (tree_nodes(data_blocks, leaf / 2) * BLOCK_SIZE as u64)
            .next_multiple_of(mib),
        default_bytes: default_metadata_size(data_blocks),
    }
}

/// Metadata for a restored pool of `nr_data_blocks` blocks whose dump holds `mappings`
/// mappings in `devices` devices: its trees packed full, twice over (room for the copies
/// that writes and snapshots make afterwards), and never less than `pool create` would give
/// a pool of its size.
pub fn restore_estimate(nr_data_blocks: u64, devices: u64, mappings: u64) -> u64 {
    let packed = tree_nodes(mappings, capacity(8) as u64) + devices;
    let volumes = tree_nodes(devices, capacity(DETAILS_SIZE) as u64)
        + tree_nodes(devices, capacity(16) as u64);
    let sm = 2 * nr_data_blocks.div_ceil(ENTRIES_PER_PAGE) + 8;
    let bytes = (2 * (packed + volumes + sm) + 1024).saturating_mul(BLOCK_SIZE as u64);
    bytes
        .max(default_metadata_size(nr_data_blocks))
        .next_multiple_of(BLOCK_SIZE as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_grows_with_the_pool_and_its_volumes() {
        let small = estimate(1 << 30, 64 << 10, 1);
        let big = estimate(1 << 40, 64 << 10, 1);
        assert_eq!(big.data_blocks, 1 << 24);
        // 16 bytes per mapping at half-full leaves: 32 bytes per block, plus internal nodes,
        // space maps and the fixed part.
        let per_block = big.bytes as f64 / big.data_blocks as f64;
        assert!((32.0..36.0).contains(&per_block), "{per_block}");
        assert!(small.bytes < big.bytes);
        let many = estimate(1 << 40, 64 << 10, 10_000);
        assert!(many.bytes > big.bytes);
        assert!(many.volume_blocks > big.volume_blocks);
        assert_eq!(small.bytes % (1 << 20), 0);
        assert!(estimate(1 << 20, 4096, 1).bytes >= 4 << 20);
    }

    #[test]
    fn tree_nodes_counts_every_level() {
        assert_eq!(tree_nodes(0, 100), 1);
        assert_eq!(tree_nodes(100, 100), 1);
        assert_eq!(tree_nodes(101, 100), 3);
        // 84 children per internal node at half fill: 85 leaves need two internal levels.
        assert_eq!(tree_nodes(8500, 100), 85 + 2 + 1);
    }
}
