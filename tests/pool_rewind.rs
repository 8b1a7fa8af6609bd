//! `thinpool pool rewind` (issue 12): one of the protected older commits becomes the newest
//! again, after a check that it is intact and maps no data that later commits gave back;
//! `--dry-run` and every refusal change nothing.

mod common;

use common::{pattern, thinpool, TestPool};
use std::sync::Arc;
use thinpool::io::{BlockDev, FileDev};

fn seq(tp: &TestPool) -> u64 {
    tp.info()["seq"].as_u64().unwrap()
}

fn names(tp: &TestPool) -> Vec<String> {
    tp.list()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn rewind_goes_back_one_or_two_commits_and_keeps_the_data() {
    let tp = TestPool::new("64M", "64K");
    let p = tp.p();
    thinpool(&["create", p, "a", "-s", "4M"]).ok();
    let data = pattern(5, 3 << 20);
    let f = tp.put("in", &data);
    thinpool(&["write", p, "a", &f]).ok();
    let before = seq(&tp);
    thinpool(&["snapshot", p, "a", "snap"]).ok();
    thinpool(&["rename", p, "a", "b"]).ok();
    let newest = seq(&tp);
    assert_eq!(newest, before + 2);

    // The oldest protected commit checks clean: its own previous commit is not protected
    // any more, and the checker does not read it (it reported damage there before).
    let c = thinpool(&["check", p, "--seq", &before.to_string(), "--json"])
        .ok()
        .json();
    assert_eq!(c["clean"], true, "{c}");

    // A dry run says what would change and changes nothing.
    let state = tp.state();
    let dry = thinpool(&[
        "pool",
        "rewind",
        p,
        "--seq",
        &before.to_string(),
        "--dry-run",
    ])
    .ok()
    .text();
    assert!(dry.contains("volume 'b': named 'a' again"), "{dry}");
    assert!(dry.contains("volume 'snap' (made since) goes"), "{dry}");
    assert_eq!(tp.state(), state);

    // One commit back: the rename is undone.
    let j = thinpool(&[
        "pool",
        "rewind",
        p,
        "--seq",
        &(newest - 1).to_string(),
        "--json",
    ])
    .ok()
    .json();
    assert_eq!(j["from_seq"], newest);
    assert_eq!(j["seq"], newest + 1);
    assert_eq!(names(&tp), ["a", "snap"]);
    assert_eq!(tp.read("a", 0, 3 << 20), data);
    tp.check_clean();
}

#[test]
fn rewind_two_commits_back_drops_both() {
    let tp = TestPool::new("64M", "64K");
    let p = tp.p();
    thinpool(&["create", p, "a", "-s", "4M"]).ok();
    let f = tp.put("in", &pattern(6, 1 << 20));
    thinpool(&["write", p, "a", &f]).ok();
    let target = seq(&tp);
    thinpool(&["create", p, "c", "-s", "1M"]).ok();
    thinpool(&["snapshot", p, "a", "s"]).ok();
    thinpool(&["pool", "rewind", p, "--seq", &target.to_string()]).ok();
    assert_eq!(names(&tp), ["a"]);
    assert_eq!(tp.read("a", 0, 1 << 20), pattern(6, 1 << 20));
    tp.check_clean();
    // The commits it discarded are gone for good: the pool goes on from here.
    thinpool(&["create", p, "c", "-s", "1M"]).ok();
    tp.check_clean();
}

#[test]
fn rewind_refuses_what_it_cannot_do_safely_and_changes_nothing() {
    let tp = TestPool::new("64M", "64K");
    let p = tp.p();
    thinpool(&["create", p, "a", "-s", "4M"]).ok();
    let f = tp.put("in", &pattern(7, 1 << 20));
    thinpool(&["write", p, "a", &f]).ok();
    let with_a = seq(&tp);
    thinpool(&["create", p, "keep", "-s", "1M"]).ok();
    let newest = seq(&tp);
    thinpool(&["pool", "rewind", p, "--seq", &newest.to_string()]).fails(1, "already the newest");
    thinpool(&["pool", "rewind", p, "--seq", &(newest - 3).to_string()])
        .fails(1, "last three commits");
    thinpool(&["pool", "rewind", p, "--seq", "999"]).fails(1, "cannot be opened");

    // A commit whose own blocks are damaged: refused, naming the damage.
    let (dev_path, state) = (tp.dir.join("metadata"), tp.state());
    let details_root = {
        let dev: Arc<dyn BlockDev> = Arc::new(FileDev::open(&dev_path, false).unwrap());
        let (tm, _) = thinpool::meta::txn::Tm::open_at(dev, 64, true, Some(with_a)).unwrap();
        tm.user_state().roots[0].block.0
    };
    let orig = std::fs::read(&dev_path).unwrap();
    let mut bad = orig.clone();
    bad[details_root as usize * 4096 + 300] ^= 0xff;
    std::fs::write(&dev_path, &bad).unwrap();
    thinpool(&["pool", "rewind", p, "--seq", &with_a.to_string()])
        .fails(1, &format!("commit {with_a} is damaged"));
    assert_eq!(
        std::fs::read(&dev_path).unwrap(),
        bad,
        "a refused rewind wrote metadata"
    );
    std::fs::write(&dev_path, &orig).unwrap();
    assert_eq!(tp.state(), state);

    // A commit that maps data later commits gave back: `remove` frees a's blocks, and its
    // extra commit punches them.
    thinpool(&["remove", p, "a"]).ok();
    let newest = seq(&tp);
    let state = tp.state();
    thinpool(&["pool", "rewind", p, "--seq", &(newest - 2).to_string()])
        .fails(1, "16 blocks of 'a'");
    assert_eq!(tp.state(), state);
    tp.check_clean();
}
