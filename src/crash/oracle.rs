//! The oracle: what each 512-byte sector of each volume may read after a crash.
//!
//! Sectors written by the workload identify themselves: bytes `0..8` hold the write id, `8..16`
//! the sector's index in its volume, the rest a pattern derived from both. So a sector read
//! after recovery names the write it came from, and misplaced or torn data cannot pass.

use std::collections::{BTreeMap, HashMap};

pub const SECTOR: usize = 512;

const RAMP: [u8; SECTOR - 16] = {
    let mut r = [0u8; SECTOR - 16];
    let mut i = 0;
    while i < r.len() {
        r[i] = i as u8;
        i += 1;
    }
    r
};

/// Fill `buf` (one sector) with the contents write `w` gives sector `s`.
pub fn sector_content(w: u64, s: u64, buf: &mut [u8]) {
    buf[0..8].copy_from_slice(&w.to_le_bytes());
    buf[8..16].copy_from_slice(&s.to_le_bytes());
    let x = (w.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ s) as u8;
    for (i, b) in buf[16..SECTOR].iter_mut().enumerate() {
        *b = x.wrapping_add(i as u8);
    }
}

/// Which write a sector holds (0 = zeros), or why it is garbage.
pub fn decode_sector(buf: &[u8], s: u64) -> Result<u64, String> {
    let w = u64::from_le_bytes(buf[0..8].try_into().unwrap());
    let claimed = u64::from_le_bytes(buf[8..16].try_into().unwrap());
    if w == 0 && claimed == 0 && buf[16..].iter().all(|&b| b == 0) {
        return Ok(0);
    }
    let x = (w.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ s) as u8;
    // A branch-free fold over a ramp vectorizes; this check dominates the simulator.
    let diff = buf[16..SECTOR]
        .iter()
        .zip(RAMP.iter())
        .fold(0u8, |acc, (&b, &r)| acc | (b ^ x.wrapping_add(r)));
    let pattern_ok = diff == 0;
    if claimed != s {
        return Err(format!(
            "holds write {w}'s data for sector {claimed} (misplaced)"
        ));
    }
    if !pattern_ok {
        return Err("holds garbage (not any write's content)".to_string());
    }
    Ok(w)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exists {
    Yes,
    Maybe,
}

#[derive(Debug, Clone, Default)]
pub struct SecState {
    /// Value as of the last acknowledged flush (0 = zeros).
    pub durable: u64,
    /// Values written since (possible after a crash).
    pub newer: Vec<u64>,
}

impl SecState {
    pub fn latest(&self) -> u64 {
        self.newer.last().copied().unwrap_or(self.durable)
    }
    pub fn allows(&self, w: u64) -> bool {
        self.durable == w || self.newer.contains(&w)
    }
}

#[derive(Debug, Clone)]
pub struct VolOracle {
    pub exists: Exists,
    pub sectors: u64,
    pub map: HashMap<u64, SecState>,
}

impl VolOracle {
    pub fn new(sectors: u64, exists: Exists) -> Self {
        VolOracle {
            exists,
            sectors,
            map: HashMap::new(),
        }
    }
    pub fn get(&self, s: u64) -> SecState {
        self.map.get(&s).cloned().unwrap_or_default()
    }
    /// Whether sector `s` may hold write `w` (0 = zeros).
    pub fn allows(&self, s: u64, w: u64) -> bool {
        match self.map.get(&s) {
            Some(st) => st.allows(w),
            None => w == 0,
        }
    }
    pub fn write(&mut self, s: u64, w: u64) {
        self.map.entry(s).or_default().newer.push(w);
    }
}

#[derive(Debug, Clone, Default)]
pub struct Oracle {
    pub vols: BTreeMap<String, VolOracle>,
}

impl Oracle {
    /// An acknowledged flush: every volume's latest values become durable.
    pub fn ack(&mut self) {
        for v in self.vols.values_mut() {
            for st in v.map.values_mut() {
                st.durable = st.latest();
                st.newer.clear();
            }
            v.map.retain(|_, st| st.durable != 0);
        }
    }

    /// A snapshot's expected contents: the source's latest values (acknowledged when the
    /// snapshot certainly exists, any possible value while its creation is in flight).
    pub fn snapshot_of(&self, src: &str, exists: Exists) -> VolOracle {
        let s = &self.vols[src];
        let mut v = VolOracle::new(s.sectors, exists);
        for (k, st) in &s.map {
            let mut st = st.clone();
            if exists == Exists::Yes {
                st.durable = st.latest();
                st.newer.clear();
            }
            v.map.insert(*k, st);
        }
        v
    }
}
