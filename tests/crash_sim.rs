//! Crash injection: nothing acknowledged is ever lost, media faults are detected, and the
//! runner can fail.

use std::sync::Arc;
use thinpool::crash::{run, CrashConfig, CrashReport, FaultSet, Violation};
use thinpool::io::{BlockDev, SimGroup};
use thinpool::pool::{CreateOptions, OpenOptions, Pool, PoolError};

/// Replay `v` from its replay file's text (as `crashtest --replay FILE` does): the replay
/// explores exactly the recorded state and reproduces the violation. Returns its report.
fn replay(cfg: &CrashConfig, v: &Violation) -> CrashReport {
    let text = serde_json::to_string(&cfg.replay_json(v)).unwrap();
    let again = CrashConfig::from_replay(&serde_json::from_str(&text).unwrap()).unwrap();
    let r = run(&again);
    assert_eq!(r.states, 1, "a replay explores exactly the recorded state");
    let v2 = r
        .violations
        .first()
        .expect("the replay reproduces the violation");
    assert_eq!(
        (v2.point, v2.state, v2.second),
        (v.point, v.state, v.second)
    );
    assert_eq!(v2.message.lines().next(), v.message.lines().next());
    r
}

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
        assert!(
            rep.write_states > 100,
            "only {} crashes between writes",
            rep.write_states
        );
        total += rep.states;
    }
    eprintln!("total crash states explored: {total}");
}

#[test]
fn media_faults_are_detected_never_silent() {
    let cfg = CrashConfig {
        seed: 11,
        ops: 150,
        faults: FaultSet::parse("drop,reorder,torn,eio,bitflip,misdirect").unwrap(),
        ..Default::default()
    };
    let rep = run(&cfg);
    eprintln!(
        "media faults: {} injected, {} detected, {} harmless; {} states",
        rep.media_faults,
        rep.media_detected,
        rep.media_faults - rep.media_detected,
        rep.states
    );
    assert!(rep.violations.is_empty(), "{:#?}", rep.violations);
    assert!(rep.media_faults > 100);
    assert!(
        rep.media_detected > 0,
        "no injected fault was ever detected"
    );
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

/// Crashes between two unflushed writes (each write landing whole and in order up to the
/// crash, as a disk without a volatile cache would leave them) find the broken order by
/// themselves, and their replays are exact too.
#[test]
fn crashes_between_writes_alone_catch_a_broken_commit_order() {
    let cfg = CrashConfig {
        seed: 3,
        ops: 400,
        broken_commit_order: true,
        states_per_point: 1, // state 0 only: every unflushed write lands
        second_crash_every: 0,
        max_states: 10_000,
        ..Default::default()
    };
    let rep = run(&cfg);
    let v = rep
        .violations
        .first()
        .unwrap_or_else(|| panic!("missed in {} states", rep.states))
        .clone();
    assert!(
        v.state >= 1,
        "found by state {}, not a write point",
        v.state
    );
    assert!(rep.write_states >= 1);
    assert_eq!(replay(&cfg, &v).write_states, 1);
}

#[test]
fn replay_reproduces_a_violation_exactly() {
    let cfg = CrashConfig {
        seed: 7,
        ops: 400,
        broken_commit_order: true,
        max_states: 10_000,
        ..Default::default()
    };
    let rep = run(&cfg);
    let v = rep
        .violations
        .first()
        .expect("broken order yields a violation")
        .clone();
    for _ in 0..2 {
        replay(&cfg, &v);
    }
}

/// A crash during recovery: recovered states are reopened read-write, continue (the first
/// commit after recovery reuses what the torn transaction used) and crash again; every second
/// crash recovers exactly too.
#[test]
fn second_crashes_after_recovery_find_no_violation() {
    let cfg = CrashConfig {
        seed: 3,
        ops: 200,
        second_crash_every: 2,
        ..Default::default()
    };
    let rep = run(&cfg);
    eprintln!(
        "seed 3: {} states, {} continued recoveries, {} second crash points, {} second-crash states, {:.0} states/s",
        rep.states,
        rep.second_crash_runs,
        rep.second_crash_points,
        rep.second_crash_states,
        rep.states_per_sec()
    );
    assert!(rep.violations.is_empty(), "{:#?}", rep.violations);
    assert!(
        rep.second_crash_runs > 20,
        "{} continued",
        rep.second_crash_runs
    );
    assert!(
        rep.second_crash_states > 200,
        "explored only {} second-crash states",
        rep.second_crash_states
    );
    // Off means off.
    let off = run(&CrashConfig {
        second_crash_every: 0,
        ..cfg
    });
    assert_eq!(off.second_crash_states, 0);
    assert_eq!(
        off.states, rep.states,
        "continuations do not change the first run"
    );
}

/// A commit-order bug that only the recovered pool has is invisible to single crashes, is
/// caught after a second crash, and its replay file re-runs exactly that second-crash state.
#[test]
fn a_bug_after_recovery_is_caught_by_a_second_crash_and_replays() {
    let cfg = CrashConfig {
        seed: 5,
        ops: 300,
        broken_commit_order_after_recovery: true,
        ..Default::default()
    };
    let rep = run(&cfg);
    let v = rep
        .violations
        .first()
        .expect("a second crash catches the broken commit order")
        .clone();
    let second = v.second.expect("caught after a second crash");
    assert!(second.point > 0, "{v}: {}", v.message);
    assert_eq!(
        replay(&cfg, &v).second_crash_states,
        1,
        "exactly the recorded second crash"
    );
}

/// An fsync error makes the pool fail-stop: the commit is not acknowledged, nothing after it
/// is accepted, and reopening recovers the last acknowledged state.
#[test]
fn fsync_error_is_fail_stop() {
    let g = SimGroup::new();
    let meta = Arc::new(g.add(64 << 20));
    let data = Arc::new(g.add(16 << 20));
    let mut o = CreateOptions::new(16 << 20);
    o.block_size = 4096;
    o.metadata_size = Some(8 << 20);
    let mut p = Pool::create_on(meta.clone(), data.clone(), &o).unwrap();
    let id = p.create_volume("v", 1 << 20, false).unwrap();
    p.write(id, 0, &[1u8; 8192]).unwrap();
    p.commit().unwrap();
    // The data device's next flush fails.
    g.fail_next_flush(1);
    p.write(id, 0, &[2u8; 8192]).unwrap();
    let err = p.commit().unwrap_err();
    assert!(matches!(err, PoolError::DataIo { .. }), "{err}");
    let again = p.write(id, 0, &[3u8; 4096]).unwrap_err();
    assert!(
        again.to_string().contains("read-only") || again.to_string().contains("stopped"),
        "{again}"
    );
    assert!(
        p.commit().is_err(),
        "a failed pool never acknowledges again"
    );
    drop(p);
    let meta: Arc<dyn BlockDev> = meta;
    let data: Arc<dyn BlockDev> = data;
    let mut p = Pool::open_on(meta, data, &OpenOptions::default()).unwrap();
    let id = p.volume_id("v").unwrap();
    let mut buf = vec![0u8; 8192];
    p.read(id, 0, &mut buf).unwrap();
    // The failed commit was never acknowledged; the acknowledged one is intact. (The live
    // device kept the bytes of the unacknowledged write: either value is allowed.)
    assert!(buf.iter().all(|&b| b == 1) || buf.iter().all(|&b| b == 2));
}

#[test]
fn metadata_fsync_error_is_fail_stop() {
    let g = SimGroup::new();
    let meta = Arc::new(g.add(64 << 20));
    let data = Arc::new(g.add(16 << 20));
    let mut o = CreateOptions::new(16 << 20);
    o.block_size = 4096;
    o.metadata_size = Some(8 << 20);
    let mut p = Pool::create_on(meta.clone(), data.clone(), &o).unwrap();
    let id = p.create_volume("v", 1 << 20, false).unwrap();
    g.fail_next_flush(0);
    let err = p.create_volume("w", 1 << 20, false).unwrap_err();
    assert!(err.to_string().contains("fdatasync"), "{err}");
    assert!(p.write(id, 0, &[1u8; 512]).is_err());
    assert!(p.snapshot("v", "s", false).is_err());
    drop(p);
    let meta: Arc<dyn BlockDev> = meta;
    let data: Arc<dyn BlockDev> = data;
    let mut p = Pool::open_on(meta, data, &OpenOptions::default()).unwrap();
    let names = p.volume_names().unwrap();
    assert!(
        names.contains(&"v".to_string()),
        "acknowledged volume lost: {names:?}"
    );
}
