//! What a crash run found: the [`CrashReport`] of a run (states explored, media faults
//! detected, second crashes) and each [`Violation`] of the promise, with where it happened
//! so a replay file can reproduce it.

use std::time::Duration;

/// A broken promise, with what is needed to reproduce it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub point: u64,
    pub state: usize,
    pub op: usize,
    /// Set when the promise broke after a second crash (or in the continuation itself).
    pub second: Option<SecondCrash>,
    pub message: String,
}

/// Where a violation happened in the continuation of the recovered state `(point, state)`
/// of a [`Violation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecondCrash {
    /// Crash point of the continuation (0: no crash: reopening read-write, an operation of
    /// the continuation or its live reads failed).
    pub point: u64,
    pub state: usize,
    /// Operation of the continuation (0: reopening, the last one: a crash after it).
    pub op: usize,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}, crash point {}, state {}, after operation {}",
            self.seed, self.point, self.state, self.op
        )?;
        if let Some(s) = self.second {
            write!(
                f,
                "; recovered, continued, then second crash point {}, state {}, in continuation operation {}",
                s.point, s.state, s.op
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
pub struct CrashReport {
    pub states: u64,
    /// Of `states`, those that crashed between two unflushed writes (`write_points`).
    pub write_states: u64,
    pub points: u64,
    /// States with a media fault injected, and how many of those were detected (the rest
    /// did not matter: the damaged block was not needed and every byte read back right).
    pub media_faults: u64,
    pub media_detected: u64,
    /// Recovered states that were continued read-write, the crash points of those
    /// continuations and the states explored there (after a second crash).
    pub second_crash_runs: u64,
    pub second_crash_points: u64,
    pub second_crash_states: u64,
    pub ops: usize,
    pub elapsed: Duration,
    pub violations: Vec<Violation>,
}

impl CrashReport {
    /// Recovered and verified states per second (after a first or a second crash).
    pub fn states_per_sec(&self) -> f64 {
        (self.states + self.second_crash_states) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}
