//! Crash injection (docs/design.md §6): a seeded random workload runs against a pool on
//! [`SimDev`](crate::io::SimDev)s; at every flush the devices' state is captured, and
//! post-crash images are built from the durable state plus subsets of the unflushed writes
//! (dropped, reordered, torn at 512 bytes). Besides those, a crash point also yields crashes
//! between its unflushed writes (a crash just after write *n*: writes 1..n land whole and in
//! order, see [`CrashPoint::write_boundaries`]), so every write of a short run is a crash
//! point of its own. Each image is recovered (opened), checked, and every 512-byte sector of
//! every volume is compared with the [`oracle`].
//!
//! A crash during recovery: for a sample of the states (one in `second_crash_every` crash
//! points, one state each), once the state has recovered and verified, the pool is reopened
//! read-write on a new [`SimGroup`] whose devices start from that post-crash image, and runs
//! a short continuation (writes, discards, snapshots and commits; the first commit after
//! recovery reuses the journal slot and the blocks of the torn transaction). Every flush of
//! the continuation is a crash point again, explored like the first ones against an oracle
//! whose durable values are what the first recovery read.
//!
//! Runs are deterministic from the seed: the workload's random choices and each state's fault
//! choices come from ChaCha streams keyed by the seed (and the crash point and state index).
//!
//! `config` holds what a run explores and the replay file, `workload` the operations
//! run against the pool, `explore` the run itself and the second crashes, `verify` the
//! recovery and comparison of one state, and `report` what a run found. [`kill`] crashes a
//! real process instead (SIGKILL of a child writing to files).
//!
//! [`CrashPoint::write_boundaries`]: crate::io::sim::CrashPoint::write_boundaries
//! [`SimGroup`]: crate::io::SimGroup

mod config;
mod explore;
pub mod kill;
pub mod oracle;
mod report;
mod verify;
mod workload;

pub use config::{CrashConfig, FaultSet, DEFAULT_SECOND_CRASH_EVERY, DEFAULT_WRITE_POINTS};
pub use explore::{run, run_with_progress};
pub use report::{CrashReport, SecondCrash, Violation};
