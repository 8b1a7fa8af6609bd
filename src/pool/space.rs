//! Low space, for a served pool (docs/design.md §4): a warning when data or metadata use
//! crosses `--warn-at`, and LVM's `thin_pool_autoextend_threshold/percent` for the data
//! capacity: once data use crosses `--autoextend-at`, or when a write finds no free block,
//! the pool grows by `--autoextend-by` percent, as long as the filesystem under the data file
//! has that much free space (the data file is sparse: capacity the filesystem cannot back
//! would only move the ENOSPC from the pool into the filesystem). The metadata size is fixed
//! when a pool is created (format version 1 has no way to grow it in place), so its use is
//! watched and warned about, never extended.

use super::{Pool, Result};

/// What a server does as space runs low (all percentages of capacity, 1..=100).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LowSpace {
    pub warn_at: Option<u8>,
    pub extend_at: Option<u8>,
    pub extend_by: u8,
}

/// Which warnings are out (re-armed once use falls below the mark again).
#[derive(Debug, Default)]
pub(crate) struct SpaceState {
    pub(crate) policy: LowSpace,
    warned_data: bool,
    warned_meta: bool,
    warned_no_room: bool,
}

fn pct(used: u64, total: u64) -> u64 {
    used.saturating_mul(100) / total.max(1)
}

impl Pool {
    pub fn set_low_space(&mut self, policy: LowSpace) {
        self.space.policy = policy;
        // Best effort: the figures are for display, and the next commit refreshes them.
        let _ = self.publish_space();
    }

    /// Log the warnings the current use calls for; true when data use is at or above the
    /// autoextend mark (the caller then runs [`Pool::autoextend`] with requests drained).
    pub fn watch_space(&mut self) -> Result<bool> {
        let f = self.publish_space()?;
        let p = self.space.policy;
        let (dp, mp) = (
            pct(f.data_used, f.data_total),
            pct(f.meta_used, f.meta_total),
        );
        if let Some(w) = p.warn_at.map(u64::from) {
            if dp >= w && !self.space.warned_data {
                tracing::warn!(
                    used_pct = dp,
                    used_blocks = f.data_used,
                    total_blocks = f.data_total,
                    "data space {dp}% used, at or above --warn-at {w}%"
                );
            }
            self.space.warned_data = dp >= w;
            if mp >= w && !self.space.warned_meta {
                tracing::warn!(
                    used_pct = mp,
                    "metadata space {mp}% used, at or above --warn-at {w}% (metadata cannot \
                     grow: a full metadata device makes every allocating write fail)"
                );
            }
            self.space.warned_meta = mp >= w;
        }
        Ok(p.extend_at.is_some_and(|a| dp >= u64::from(a)))
    }

    /// Grow the data capacity by the policy's percentage when the filesystem can back it.
    /// Returns whether it grew. Commits (a management operation): with a `SharedPool`, call
    /// it with every request drained.
    pub fn autoextend(&mut self) -> Result<bool> {
        let p = self.space.policy;
        if p.extend_at.is_none() || p.extend_by == 0 {
            return Ok(false);
        }
        let bs = self.block_size();
        let d = self.tm.data_space();
        let total = d.total;
        let add = (total * u64::from(p.extend_by) / 100).max(1);
        // The filesystem must hold every block the grown pool could still hand out: the
        // free ones it has now, and the new ones.
        let need = (total + add).saturating_sub(d.allocated) * bs;
        let room = self.data_room().unwrap_or(0);
        if room < need {
            if !self.space.warned_no_room {
                tracing::warn!(
                    "cannot autoextend the data by {} bytes: the filesystem has {room} bytes \
                     free, and the pool's unwritten capacity would then be {need}",
                    add * bs
                );
                self.space.warned_no_room = true;
            }
            return Ok(false);
        }
        self.space.warned_no_room = false;
        self.grow((total + add) * bs)?;
        tracing::info!(
            from_bytes = total * bs,
            to_bytes = (total + add) * bs,
            "autoextended the data capacity by {}%",
            p.extend_by
        );
        Ok(true)
    }

    /// Free space on the data file's filesystem (`None`: not a file).
    fn data_room(&self) -> Option<u64> {
        let f = self._data_lock.as_ref()?;
        crate::io::sys::fs_available(f).ok()
    }
}
