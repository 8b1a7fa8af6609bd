//! The synchronization primitives `SharedPool` (`shared.rs`) blocks on, in one place, so that
//! the concurrency model (`tests/shuttle_model.rs`) can run the real write path and commit
//! under a deterministic scheduler.
//!
//! Normally these are `std`'s. With the cargo feature `shuttle` (tests only, off by default)
//! they are [shuttle](https://docs.rs/shuttle)'s, whose scheduler decides at every lock,
//! wait and notify which thread runs next, explores many interleavings, and reports a
//! deadlock when every thread is blocked. With the feature on, a `SharedPool` works only
//! inside a shuttle test (`shuttle::check_*`).
//!
//! What is *not* aliased, and why that is sound under shuttle: `Arc` (reference counts never
//! block; the data device's `Arc<dyn BlockDev>` is shared with `Pool`), and the locks inside
//! the devices and the metadata layer under the pool lock (`MemDev`'s `RwLock`): they are
//! held briefly and nothing blocks or yields to the scheduler while they are held, so no
//! interleaving is lost and none can hang.
//!
//! [`Instant`]: under shuttle, time is not modelled; every data sync counts as a long one
//! (`elapsed` is never below any threshold), so the presync loop of
//! `SharedPool::exclusive_synced` goes on for as many rounds as writes keep completing, and
//! each schedule is deterministic.

#[cfg(not(feature = "shuttle"))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
#[cfg(not(feature = "shuttle"))]
pub(crate) use std::time::Instant;

#[cfg(feature = "shuttle")]
pub(crate) use shuttle::sync::{
    Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

/// Under shuttle: a clock for which every interval is long (see the module docs).
#[cfg(feature = "shuttle")]
#[derive(Clone, Copy)]
pub(crate) struct Instant;

#[cfg(feature = "shuttle")]
impl Instant {
    pub(crate) fn now() -> Instant {
        Instant
    }
    pub(crate) fn elapsed(&self) -> std::time::Duration {
        std::time::Duration::MAX
    }
}

/// Bugs the concurrency model seeds into `SharedPool` to show that it finds them
/// (`tests/shuttle_model.rs`). Only a build with the `shuttle` feature can turn one on
/// (`SharedPool::seed_bug`); the default build has no way to.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeededBug {
    /// `exclusive_synced` skips the data sync under the gate even when a data write
    /// completed after the presync began (its counter check left out).
    SkipSecondSync,
    /// `lock_range` checks for an overlap once instead of again after every wake-up, so a
    /// waiter woken by one release can run into a range another writer took meanwhile.
    RangeLockNoRecheck,
}
