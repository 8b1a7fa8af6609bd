//! A fast hasher for maps keyed by block or sector numbers (and small tuples of them).
//!
//! Keys here are numbers the engine chose, not input an attacker controls, so SipHash's
//! resistance to collision flooding buys nothing, and on the data path its cost showed:
//! a 4 KiB write in place looks up a dozen such keys (block cache, space-map page memo,
//! shadowed set), and SipHash was a visible share of the in-process benchmark's profile.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-rotate hashing of whole integers (the FxHash mix).
#[derive(Default, Clone, Copy)]
pub struct IntHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl IntHasher {
    #[inline]
    fn mix(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(K);
    }
}

impl Hasher for IntHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.mix(b as u64);
        }
    }
    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.mix(n as u64)
    }
    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.mix(n as u64)
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.mix(n)
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64)
    }
}

pub type IntBuild = BuildHasherDefault<IntHasher>;
pub type IntMap<K, V> = HashMap<K, V, IntBuild>;
pub type IntSet<K> = HashSet<K, IntBuild>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn nearby_keys_spread_over_the_table() {
        // hashbrown picks a bucket from the low bits and a control byte from the top 7:
        // consecutive block numbers must land in distinct buckets and use every control
        // value, or a map of them degrades towards a list.
        let b = IntBuild::default();
        let h: Vec<u64> = (0..4096u64).map(|k| b.hash_one(k)).collect();
        let buckets: IntSet<u64> = h.iter().map(|x| x & 4095).collect();
        let control: IntSet<u64> = h.iter().map(|x| x >> 57).collect();
        assert_eq!(buckets.len(), 4096);
        assert_eq!(control.len(), 128);
    }

    #[test]
    fn tuples_hash_every_field() {
        let b = IntBuild::default();
        assert_ne!(b.hash_one((0u8, 1u64)), b.hash_one((1u8, 1u64)));
        assert_ne!(b.hash_one((0u8, 0u8, 7u64)), b.hash_one((0u8, 1u8, 7u64)));
    }
}
