//! What a pool has done since it was opened, for `thinpool iostat` (docs/nbd.md, "iostat"):
//! commits (how many, how long, how many synced the data file) and the space figures of the
//! last commit or space check. Shared as an `Arc` and read without the pool lock: the data
//! path and its clients never wait for a reader.

use crate::histogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
pub struct PoolStats {
    commits: AtomicU64,
    data_syncs: AtomicU64,
    commit_latency: Histogram,
    block_size: AtomicU64,
    data_used: AtomicU64,
    data_total: AtomicU64,
    meta_used: AtomicU64,
    meta_total: AtomicU64,
    /// `--warn-at`, 0 when unset.
    warn_at: AtomicU64,
}

/// The space figures, in blocks (data blocks of `block_size` bytes; 4 KiB metadata blocks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpaceFigures {
    pub block_size: u64,
    pub data_used: u64,
    pub data_total: u64,
    pub meta_used: u64,
    pub meta_total: u64,
    pub warn_at: Option<u8>,
}

impl PoolStats {
    pub(crate) fn commit_done(&self, took: Duration, synced_data: bool) {
        self.commit_latency.record(took);
        if synced_data {
            self.data_syncs.fetch_add(1, Ordering::Relaxed);
        }
        // Last, so a reader that sees the count also sees its latency.
        self.commits.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn set_space(&self, s: SpaceFigures) {
        self.block_size.store(s.block_size, Ordering::Relaxed);
        self.data_used.store(s.data_used, Ordering::Relaxed);
        self.data_total.store(s.data_total, Ordering::Relaxed);
        self.meta_used.store(s.meta_used, Ordering::Relaxed);
        self.meta_total.store(s.meta_total, Ordering::Relaxed);
        self.warn_at
            .store(s.warn_at.map_or(0, u64::from), Ordering::Relaxed);
    }

    /// Commits so far, of which how many synced the data file, and their latencies.
    pub fn commits(&self) -> (u64, u64, crate::histogram::Counts) {
        let n = self.commits.load(Ordering::Acquire);
        let lat = self.commit_latency.snapshot();
        (n, self.data_syncs.load(Ordering::Relaxed), lat)
    }

    pub fn space(&self) -> SpaceFigures {
        let w = self.warn_at.load(Ordering::Relaxed);
        SpaceFigures {
            block_size: self.block_size.load(Ordering::Relaxed),
            data_used: self.data_used.load(Ordering::Relaxed),
            data_total: self.data_total.load(Ordering::Relaxed),
            meta_used: self.meta_used.load(Ordering::Relaxed),
            meta_total: self.meta_total.load(Ordering::Relaxed),
            warn_at: (w > 0).then_some(w as u8),
        }
    }
}
