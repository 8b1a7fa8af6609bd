//! The pool's tree kinds on top of the generic B-tree (`meta::btree`): what the values of
//! the mapping tree, the top-level tree and the details tree mean, and which references they
//! hold. Value layouts: docs/format.md, "B-tree nodes".

use super::details::DETAILS;
use crate::meta::block::get_u64;
use crate::meta::btree::{TreeKind, ValueRefs};
use crate::meta::spacemap::{SM_INDEX, SM_OVERFLOW};
use crate::meta::DataBlock;

/// A volume's mapping tree: virtual block -> (data block, time), packed by [`pack_mapping`];
/// each value holds one reference to its data block.
pub const MAPPING: TreeKind = TreeKind {
    id: 3,
    name: "mapping",
    value_size: 8,
    refs: ValueRefs::DataBlock(mapped_block),
};
/// The top-level tree: volume id -> `{block, generation}` of its mapping tree's root (one
/// reference to that root).
pub const DEV_ROOTS: TreeKind = TreeKind {
    id: 4,
    name: "top-level",
    value_size: 16,
    refs: ValueRefs::SubTree(&MAPPING),
};

/// Bits of a mapping value below the data block number: the snapshot time.
const TIME_BITS: u32 = 24;

/// Encode a data mapping value.
pub fn pack_mapping(b: DataBlock, time: u32) -> u64 {
    (b.0 << TIME_BITS) | (time as u64 & 0xff_ffff)
}
/// Decode a data mapping value.
pub fn unpack_mapping(v: u64) -> (DataBlock, u32) {
    (DataBlock(v >> TIME_BITS), (v & 0xff_ffff) as u32)
}

/// The data block a mapping value references.
fn mapped_block(v: &[u8]) -> DataBlock {
    unpack_mapping(get_u64(v, 0)).0
}

/// Every tree kind a pool holds, by the id its nodes record (the checker names a node of the
/// wrong kind with this).
pub fn kind_by_id(id: u32) -> Option<TreeKind> {
    [SM_INDEX, SM_OVERFLOW, MAPPING, DEV_ROOTS, DETAILS]
        .into_iter()
        .find(|k| k.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_distinct_ids() {
        let all = [SM_INDEX, SM_OVERFLOW, MAPPING, DEV_ROOTS, DETAILS];
        for (i, a) in all.iter().enumerate() {
            assert_eq!(kind_by_id(a.id), Some(*a));
            for b in &all[i + 1..] {
                assert_ne!(a.id, b.id, "{a} and {b}");
            }
        }
        assert_eq!(kind_by_id(0), None);
    }

    #[test]
    fn mapping_values_round_trip_and_name_their_block() {
        let v = pack_mapping(DataBlock(0x12_3456_789a), 0xab_cdef);
        assert_eq!(unpack_mapping(v), (DataBlock(0x12_3456_789a), 0xab_cdef));
        assert_eq!(mapped_block(&v.to_le_bytes()), DataBlock(0x12_3456_789a));
    }
}
