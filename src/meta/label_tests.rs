//! Unit tests of label validation: every way block 0 can be wrong is its own error, and
//! none of them panics. (A label of another pool, with a valid checksum, is caught by the
//! journal: `txn/open_tests.rs`, `a_label_of_another_pool_finds_no_record`.)

use super::*;
use crate::meta::test_util::label;

fn reason(buf: &[u8]) -> String {
    match Label::decode(buf) {
        Err(MetaError::BadLabel(why)) => why,
        Err(e) => panic!("not a label error: {e}"),
        Ok(l) => panic!("accepted a bad label: {l:?}"),
    }
}

/// A valid label's bytes, changed by `f`, then sealed again (a well-formed block holding a
/// bad value, as opposed to a damaged one).
fn resealed(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut buf = label(256, 64).encode();
    f(&mut buf);
    block::seal(&mut buf);
    buf
}

#[test]
fn a_label_round_trips() {
    for (meta_blocks, slots, bs) in [(256, 64, 4096), (1 << 30, 1, 1 << 30), (9, 1024, 65536)] {
        let l = Label {
            data_block_size: bs,
            ..label(meta_blocks, slots)
        };
        let buf = l.encode();
        assert_eq!(buf.len(), BLOCK_SIZE);
        assert_eq!(Label::decode(&buf).unwrap(), l);
        assert_eq!(l.first_free_block(), 1 + 2 * slots as u64);
        // The block is a Label block of block 0 of its pool.
        block::verify(&buf, Some(BlockType::Label), MetaBlock(0), &l.uuid).unwrap();
    }
}

#[test]
fn each_kind_of_bad_label_has_its_own_error() {
    let good = label(256, 64).encode();
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    cases.push((
        "truncated",
        good[..BLOCK_SIZE - 1].to_vec(),
        "shorter than one block",
    ));
    cases.push(("empty", Vec::new(), "shorter than one block"));
    let mut m = good.clone();
    m[MAGIC_AT..MAGIC_AT + 8].copy_from_slice(b"THINPOOX");
    cases.push(("wrong magic", m, "no thinpool magic"));
    cases.push(("zeros", vec![0u8; BLOCK_SIZE], "no thinpool magic"));
    let mut c = good.clone();
    c[3000] ^= 1;
    cases.push(("bad checksum", c, "checksum mismatch"));
    let mut v = good.clone();
    block::put_u32(&mut v, VERSION, FORMAT_VERSION + 1);
    cases.push(("version changed without a reseal", v, "checksum mismatch"));
    // One field set to a bad value in an otherwise valid, sealed label.
    let fields: [(&str, usize, u64, bool, &str); 8] = [
        (
            "another block type",
            block::TYPE,
            BlockType::Record as u64,
            false,
            "checksum mismatch",
        ),
        (
            "wrong version",
            VERSION,
            FORMAT_VERSION as u64 + 1,
            false,
            "format version 2 is not supported",
        ),
        (
            "metadata block size",
            META_BLOCK_SIZE,
            8192,
            false,
            "metadata block size",
        ),
        (
            "data block size not a power of two",
            DATA_BLOCK_SIZE,
            12288,
            true,
            "data block size",
        ),
        (
            "data block size too small",
            DATA_BLOCK_SIZE,
            2048,
            true,
            "data block size",
        ),
        (
            "data block size too big",
            DATA_BLOCK_SIZE,
            1 << 31,
            true,
            "data block size",
        ),
        (
            "no journal slots",
            RING_SLOTS,
            0,
            false,
            "journal ring size",
        ),
        (
            "too many journal slots",
            RING_SLOTS,
            1025,
            false,
            "journal ring size",
        ),
    ];
    for (what, at, value, wide, want) in fields {
        let buf = resealed(|b| {
            if wide {
                block::put_u64(b, at, value)
            } else {
                block::put_u32(b, at, value as u32)
            }
        });
        cases.push((what, buf, want));
    }
    let mut seen = std::collections::BTreeMap::new();
    for (what, buf, want) in cases {
        let why = reason(&buf);
        assert!(why.contains(want), "{what}: {why:?} should say {want:?}");
        seen.entry(want).or_insert_with(Vec::new).push(why);
    }
    // Distinct causes give distinct messages.
    let messages: std::collections::BTreeSet<&String> = seen.values().map(|v| &v[0]).collect();
    assert_eq!(messages.len(), seen.len(), "{seen:#?}");
}

#[test]
fn a_longer_buffer_is_read_as_its_first_block() {
    let l = label(256, 64);
    let mut buf = l.encode();
    buf.extend_from_slice(&[0xaa; 100]);
    assert_eq!(Label::decode(&buf).unwrap(), l);
}

#[test]
fn random_damage_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let good = label(256, 64).encode();
    for _ in 0..2000 {
        let mut buf = good.clone();
        let len = if rng.gen_bool(0.1) {
            rng.gen_range(0..BLOCK_SIZE)
        } else {
            BLOCK_SIZE
        };
        buf.truncate(len);
        for _ in 0..rng.gen_range(1..4) {
            if !buf.is_empty() {
                let i = rng.gen_range(0..buf.len().min(128));
                buf[i] = rng.gen();
            }
        }
        if rng.gen_bool(0.5) && buf.len() == BLOCK_SIZE {
            block::seal(&mut buf);
        }
        // Whatever it is, decoding answers; an accepted label passes every range check.
        if let Ok(l) = Label::decode(&buf) {
            assert!(l.data_block_size.is_power_of_two());
            assert!((1..=1024).contains(&l.ring_slots));
            assert_eq!(l.version, FORMAT_VERSION);
        }
    }
}
