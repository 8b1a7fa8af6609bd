//! Crash injection: nothing acknowledged is ever lost, and the runner can fail.

use thinpool::crash::{run, CrashConfig};

#[test]
fn seeded_crash_runs_find_no_violation() {
    let mut total = 0;
    for seed in 1..=4u64 {
        let cfg = CrashConfig {
            seed,
            ops: 250,
            ..Default::default()
        };
        let rep = run(&cfg);
        eprintln!(
            "seed {seed}: {} ops, {} crash points, {} states, {:.0} states/s",
            rep.ops,
            rep.points,
            rep.states,
            rep.states_per_sec()
        );
        assert!(
            rep.violations.is_empty(),
            "seed {seed}: {:#?}",
            rep.violations
        );
        assert!(rep.states > 500, "explored only {} states", rep.states);
        total += rep.states;
    }
    eprintln!("total crash states explored: {total}");
}

#[test]
fn broken_commit_order_is_caught() {
    let cfg = CrashConfig {
        seed: 7,
        ops: 400,
        broken_commit_order: true,
        max_states: 10_000,
        ..Default::default()
    };
    let rep = run(&cfg);
    eprintln!(
        "broken order: {} states before the first violation",
        rep.states
    );
    assert!(
        !rep.violations.is_empty(),
        "the runner missed a broken commit order in {} states",
        rep.states
    );
    assert!(rep.states <= 10_000);
}
