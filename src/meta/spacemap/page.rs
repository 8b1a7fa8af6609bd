//! Bitmap pages of a space map: after the common block header, `NR_FREE..+4` the number of
//! zero entries in the page, then from `HEADER_SIZE` the 2-bit entries, least significant
//! bits first (0, 1, 2, and 3 meaning "3 or more, see the overflow tree").

use crate::meta::block::{get_u32, put_u32, HEADER_SIZE};
use crate::meta::BLOCK_SIZE;
use bitvec::prelude::*;

#[cfg(test)]
#[path = "page_tests.rs"]
mod format_tests;

/// Byte offset of the page's count of zero entries.
pub const NR_FREE: usize = 40;

/// Entries per bitmap page.
pub const ENTRIES_PER_PAGE: u64 = ((BLOCK_SIZE - HEADER_SIZE) * 4) as u64;

pub fn page_nr_free(page: &[u8]) -> u32 {
    get_u32(page, NR_FREE)
}
pub fn set_page_nr_free(page: &mut [u8], v: u32) {
    put_u32(page, NR_FREE, v)
}

fn bits(page: &[u8]) -> &BitSlice<u8, Lsb0> {
    page[HEADER_SIZE..].view_bits::<Lsb0>()
}

/// The 2-bit entry for `idx` within a page.
pub fn page_get(page: &[u8], idx: usize) -> u8 {
    bits(page)[idx * 2..idx * 2 + 2].load_le::<u8>()
}

pub fn page_set(page: &mut [u8], idx: usize, v: u8) {
    page[HEADER_SIZE..].view_bits_mut::<Lsb0>()[idx * 2..idx * 2 + 2].store_le::<u8>(v);
}

/// First entry index `>= from` and `< limit` whose 2-bit value is zero.
pub fn page_find_zero(page: &[u8], from: usize, limit: usize) -> Option<usize> {
    let body = &page[HEADER_SIZE..];
    let mut i = from;
    while i < limit {
        // Skip whole bytes (4 entries) with no zero pair.
        if i % 4 == 0 {
            let byte = body[i / 4];
            let has_zero = (0..4).any(|k| (byte >> (k * 2)) & 3 == 0);
            if !has_zero {
                i += 4;
                continue;
            }
        }
        if page_get(page, i) == 0 {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_bit_entries_round_trip() {
        let mut page = vec![0u8; BLOCK_SIZE];
        page_set(&mut page, 0, 3);
        page_set(&mut page, 1, 1);
        page_set(&mut page, 16127, 2);
        assert_eq!(page_get(&page, 0), 3);
        assert_eq!(page_get(&page, 1), 1);
        assert_eq!(page_get(&page, 2), 0);
        assert_eq!(page_get(&page, 16127), 2);
        assert_eq!(page_find_zero(&page, 0, 16128), Some(2));
        for i in 0..16128 {
            page_set(&mut page, i, 1);
        }
        assert_eq!(page_find_zero(&page, 0, 16128), None);
        page_set(&mut page, 9000, 0);
        assert_eq!(page_find_zero(&page, 5, 16128), Some(9000));
        assert_eq!(page_find_zero(&page, 5, 9000), None);
    }
}
