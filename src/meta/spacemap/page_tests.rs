//! Unit tests of the space-map page format: 2-bit entries against a byte-per-entry model,
//! the search for a free entry, the page's free count, the page arithmetic. The reference
//! counting built on them (allocation, overflow counts, protection) is tested in
//! `txn/refcount_tests.rs`.

use super::*;
use crate::meta::spacemap::{SmKind, SmRoots, SmState};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const N: usize = ENTRIES_PER_PAGE as usize;

fn naive_find_zero(model: &[u8], from: usize, limit: usize) -> Option<usize> {
    (from..limit).find(|&i| model[i] == 0)
}

#[test]
fn a_page_holds_16128_entries_after_its_header() {
    assert_eq!(ENTRIES_PER_PAGE, 16128);
    let sm = |nr_blocks| SmState {
        kind: SmKind::Data,
        nr_blocks,
        nr_allocated: 0,
        roots: SmRoots::default(),
        protected: [None, None],
        cursor: 0,
    };
    for (blocks, pages) in [
        (0, 0),
        (1, 1),
        (16128, 1),
        (16129, 2),
        (3 * 16128, 3),
        (1 << 40, 68_174_085),
    ] {
        assert_eq!(sm(blocks).nr_pages(), pages, "{blocks} blocks");
    }
    // The last entry is the last bits of the block, and the header is left alone.
    let mut page = vec![0u8; BLOCK_SIZE];
    page_set(&mut page, N - 1, 3);
    assert_eq!(page[BLOCK_SIZE - 1], 0b1100_0000);
    page_set(&mut page, 0, 2);
    assert_eq!(page[HEADER_SIZE], 0b0000_0010);
    assert!(page[..HEADER_SIZE].iter().all(|&b| b == 0));
}

#[test]
fn the_free_count_and_the_entries_do_not_overlap() {
    let mut page = vec![0u8; BLOCK_SIZE];
    for i in 0..N {
        page_set(&mut page, i, 3);
    }
    set_page_nr_free(&mut page, 12345);
    assert_eq!(page_nr_free(&page), 12345);
    assert!((0..N).all(|i| page_get(&page, i) == 3));
    for i in 0..N {
        page_set(&mut page, i, 0);
    }
    assert_eq!(page_nr_free(&page), 12345);
}

#[test]
fn random_entries_agree_with_a_byte_model() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_0001);
    let mut page = vec![0u8; BLOCK_SIZE];
    let mut model = vec![0u8; N];
    for round in 0..40 {
        // Dense rounds fill most entries; sparse ones leave long runs of zeros.
        let density = if round % 2 == 0 { 0.95 } else { 0.05 };
        for _ in 0..3000 {
            let i = rng.gen_range(0..N);
            let v = if rng.gen_bool(density) {
                rng.gen_range(1..4)
            } else {
                0
            };
            page_set(&mut page, i, v);
            model[i] = v;
        }
        for (i, &m) in model.iter().enumerate() {
            assert_eq!(page_get(&page, i), m, "entry {i}");
        }
        for _ in 0..200 {
            let from = rng.gen_range(0..=N);
            let limit = rng.gen_range(from..=N);
            assert_eq!(
                page_find_zero(&page, from, limit),
                naive_find_zero(&model, from, limit),
                "{from}..{limit}"
            );
        }
    }
}

#[test]
fn find_zero_respects_both_bounds() {
    let mut page = vec![0u8; BLOCK_SIZE];
    for i in 0..N {
        page_set(&mut page, i, 1);
    }
    for z in [0, 1, 3, 4, 5, 7, 8, N - 5, N - 1] {
        page_set(&mut page, z, 0);
    }
    assert_eq!(page_find_zero(&page, 0, N), Some(0));
    assert_eq!(page_find_zero(&page, 2, N), Some(3));
    assert_eq!(page_find_zero(&page, 6, 7), None);
    assert_eq!(page_find_zero(&page, 6, 8), Some(7));
    assert_eq!(
        page_find_zero(&page, 9, N - 5),
        None,
        "the limit is exclusive"
    );
    assert_eq!(page_find_zero(&page, 9, N), Some(N - 5));
    assert_eq!(page_find_zero(&page, N - 4, N), Some(N - 1));
    assert_eq!(page_find_zero(&page, N, N), None);
    assert_eq!(page_find_zero(&page, 5, 5), None);
    assert_eq!(page_find_zero(&page, 6, 2), None);
}
