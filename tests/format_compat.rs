//! Pools written by released format versions still open and read back exactly.
//!
//! `fixtures/pool-v1/` was made by `make_fixture` below (run it with
//! `cargo test --release --test format_compat -- --ignored`). To keep the fixture small, its
//! `metadata` file is stored without its all-zero tail; the test restores the length first.

use std::path::{Path, PathBuf};
use thinpool::pool::{CreateOptions, OpenOptions, Pool};

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pool-v1")
}

fn trim_zero_tail(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let end = bytes
        .iter()
        .rposition(|&b| b != 0)
        .map(|i| i + 1)
        .unwrap_or(0);
    let end = end.next_multiple_of(4096);
    std::fs::write(path, &bytes[..end]).unwrap();
}

/// Maintainer tool, not a test: `cargo test --release --test format_compat -- --ignored`.
#[test]
#[ignore = "regenerates fixtures/pool-v1 (maintainer action)"]
fn make_fixture() {
    let dir = fixture_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let mut o = CreateOptions::new(1 << 20);
    o.block_size = 4096;
    o.metadata_size = Some(4 << 20);
    let mut p = Pool::create(&dir, &o).unwrap();
    let base = p.create_volume("base", 256 << 10, false).unwrap();
    p.write(base, 0, &pattern(1, 64 << 10)).unwrap();
    p.write(base, 100_000, &pattern(2, 5000)).unwrap();
    p.commit().unwrap();
    p.snapshot("base", "snap", true).unwrap();
    p.write(base, 0, &pattern(3, 10_000)).unwrap();
    p.commit().unwrap();
    drop(p);
    trim_zero_tail(&dir.join("metadata"));
    trim_zero_tail(&dir.join("data"));
}

#[test]
fn v1_fixture_opens_and_reads_back() {
    let src = fixture_dir();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    std::fs::create_dir(&dir).unwrap();
    for f in ["metadata", "data"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    // Restore the trimmed zero tail of the metadata file (4 MiB at creation).
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("metadata"))
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let mut p = Pool::open(&dir, &OpenOptions::default()).unwrap();
    let info = p.info().unwrap();
    assert_eq!(info.format_version, 1);
    assert_eq!(info.block_size, 4096);
    let mut expect_base = vec![0u8; 256 << 10];
    expect_base[..64 << 10].copy_from_slice(&pattern(1, 64 << 10));
    expect_base[100_000..105_000].copy_from_slice(&pattern(2, 5000));
    let expect_snap = expect_base.clone();
    expect_base[..10_000].copy_from_slice(&pattern(3, 10_000));
    for (name, want) in [("base", &expect_base), ("snap", &expect_snap)] {
        let id = p.volume_id(name).unwrap();
        let mut got = vec![0u8; want.len()];
        p.read(id, 0, &mut got).unwrap();
        assert!(got == *want, "{name} differs from what format v1 stored");
    }
    // And the old pool is still writable with today's code.
    let base = p.volume_id("base").unwrap();
    p.write(base, 200_000, b"still writable").unwrap();
    p.commit().unwrap();
    drop(p);
    let r = thinpool::check::check(
        std::sync::Arc::new(thinpool::io::FileDev::open(&dir.join("metadata"), false).unwrap()),
        None,
    );
    assert!(
        r.is_clean(),
        "{:?}",
        r.errors().map(|f| f.to_string()).collect::<Vec<_>>()
    );
}
