//! `thinpool pool create|info|grow`.

mod common;
use common::*;
use thinpool::pool::{OpenOptions, Pool};

#[test]
fn create_reports_geometry_and_info_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    let d = dir.to_str().unwrap();
    let out = thinpool(&["pool", "create", d, "--size", "1G", "--block-size", "64K"]).ok();
    assert!(
        out.text().contains("16384 blocks of 64 KiB"),
        "{}",
        out.text()
    );
    assert!(dir.join("metadata").exists() && dir.join("data").exists());

    let info = thinpool(&["pool", "info", d, "--json"]).ok().json();
    assert_eq!(info["block_size"], 65536);
    assert_eq!(info["data_blocks_total"], 16384);
    assert_eq!(info["data_blocks_used"], 0);
    assert_eq!(info["data_blocks_free"], 16384);
    assert_eq!(info["data_size"], 1u64 << 30);
    assert_eq!(info["volumes"], 0);
    let meta_total = info["metadata_blocks_total"].as_u64().unwrap();
    let meta_used = info["metadata_blocks_used"].as_u64().unwrap();
    assert!(meta_used > 0 && meta_used < meta_total);
    assert_eq!(
        info["metadata_blocks_free"].as_u64().unwrap(),
        meta_total - meta_used
    );

    let human = thinpool(&["pool", "info", d]).ok().text();
    for needle in [
        "block size: 64 KiB",
        "of 1 GiB used",
        "0 of 16384 blocks",
        "volumes:",
        "seq:",
    ] {
        assert!(human.contains(needle), "{needle:?} missing from:\n{human}");
    }
}

#[test]
fn pool_info_json_key_set() {
    let tp = TestPool::new("16M", "4K");
    let info = tp.info();
    assert_eq!(
        keys(&info),
        [
            "block_size",
            "data_blocks_free",
            "data_blocks_total",
            "data_blocks_used",
            "data_size",
            "format_version",
            "metadata_blocks_free",
            "metadata_blocks_total",
            "metadata_blocks_used",
            "seq",
            "uuid",
            "volumes",
        ]
    );
    assert_eq!(info["uuid"].as_str().unwrap().len(), 36);
    assert!(info["seq"].as_u64().is_some());
}

#[test]
fn create_with_block_and_metadata_size() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("p");
    let d = d.to_str().unwrap();
    thinpool(&[
        "pool",
        "create",
        d,
        "--size",
        "10M",
        "--block-size",
        "4K",
        "--metadata-size",
        "16M",
    ])
    .ok();
    let info = thinpool(&["pool", "info", d, "--json"]).ok().json();
    assert_eq!(info["block_size"], 4096);
    assert_eq!(info["data_blocks_total"], 2560);
    assert_eq!(info["metadata_blocks_total"], 4096);
}

#[test]
fn create_refuses_a_non_empty_directory() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("precious"), b"keep me").unwrap();
    thinpool(&[
        "pool",
        "create",
        tmp.path().to_str().unwrap(),
        "--size",
        "1G",
    ])
    .fails(1, "already exists");
    assert_eq!(
        std::fs::read(tmp.path().join("precious")).unwrap(),
        b"keep me"
    );
    assert!(!tmp.path().join("metadata").exists());
    // A regular file where the directory should be is named as such, and kept.
    let file = tmp.path().join("precious");
    thinpool(&["pool", "create", file.to_str().unwrap(), "--size", "1G"])
        .fails(1, "already exists and is not an empty directory");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

/// The pool's own files are private: `metadata` and `data` are 0600 and a directory that
/// `pool create` makes is 0700, whatever the umask lets through. A directory the user gave
/// keeps its mode, and what `export` writes into a user path keeps the umask's default.
#[test]
fn create_makes_the_pool_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let tmp = tempfile::tempdir().unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();

    // A directory `pool create` makes (its missing parents are made as `mkdir -p` would).
    let made = tmp.path().join("parent").join("pool");
    thinpool_umask("022", &["pool", "create", &s(&made), "--size", "16M"]).ok();
    assert_eq!(mode(&made), 0o700, "pool directory");
    assert_eq!(mode(&made.join("metadata")), 0o600, "metadata");
    assert_eq!(mode(&made.join("data")), 0o600, "data");
    assert_eq!(
        mode(&tmp.path().join("parent")),
        0o755,
        "a parent directory"
    );

    // An existing empty directory is the user's: its mode stays.
    let given = tmp.path().join("given");
    std::fs::create_dir(&given).unwrap();
    std::fs::set_permissions(&given, std::fs::Permissions::from_mode(0o750)).unwrap();
    thinpool_umask("022", &["pool", "create", &s(&given), "--size", "16M"]).ok();
    assert_eq!(mode(&given), 0o750, "a directory the user gave");
    assert_eq!(mode(&given.join("metadata")), 0o600, "metadata");
    assert_eq!(mode(&given.join("data")), 0o600, "data");

    // Files written into user paths follow the umask.
    thinpool_umask("022", &["create", &s(&made), "v", "--size", "1M"]).ok();
    let image = tmp.path().join("v.img");
    thinpool_umask("022", &["export", &s(&made), "v", &s(&image)]).ok();
    assert_eq!(mode(&image), 0o644, "an exported image");
}

#[test]
fn create_refuses_an_existing_pool() {
    let tp = TestPool::new("16M", "64K");
    let before = tp.state();
    thinpool(&["pool", "create", tp.p(), "--size", "32M"]).fails(1, "already exists");
    assert_eq!(tp.state(), before);
}

#[test]
fn create_rejects_bad_geometry_without_leaving_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("p");
    let ds = d.to_str().unwrap();
    thinpool(&["pool", "create", ds, "--size", "1G", "--block-size", "3K"])
        .fails(1, "power of two");
    thinpool(&["pool", "create", ds, "--size", "1G", "--block-size", "2G"])
        .fails(1, "power of two");
    thinpool(&["pool", "create", ds, "--size", "32K", "--block-size", "64K"])
        .fails(1, "smaller than one block");
    thinpool(&[
        "pool",
        "create",
        ds,
        "--size",
        "1G",
        "--metadata-size",
        "1M",
    ])
    .fails(1, "minimum");
    assert!(!d.join("metadata").exists());
}

#[test]
fn grow_adds_space_and_never_shrinks() {
    let tp = TestPool::new("16M", "64K");
    let out = tp.run(&["pool", "grow", "{}", "--size", "64M"]).ok();
    assert!(
        out.text().contains("from 16 MiB to 64 MiB"),
        "{}",
        out.text()
    );
    assert_eq!(tp.info()["data_blocks_total"], 1024);

    // The same size again is a no-op.
    let seq = tp.info()["seq"].clone();
    let out = tp.run(&["pool", "grow", "{}", "--size", "64M"]).ok();
    assert!(out.text().contains("nothing to do"), "{}", out.text());
    assert_eq!(tp.info()["seq"], seq);

    let before = tp.state();
    tp.run(&["pool", "grow", "{}", "--size", "32M"])
        .fails(1, "pools only grow");
    assert_eq!(tp.state(), before);

    // The new space is usable: fill more than the old capacity.
    tp.run(&["create", "{}", "big", "--size", "48M"]).ok();
    let f = tp.put("data", &pattern(1, 40 << 20));
    tp.run(&["write", "{}", "big", &f]).ok();
    assert_eq!(tp.info()["data_blocks_used"], 640);
}

#[test]
fn info_of_something_that_is_not_a_pool() {
    let tmp = tempfile::tempdir().unwrap();
    thinpool(&["pool", "info", tmp.path().to_str().unwrap()]).fails(1, "not a thinpool pool");
    let missing = tmp.path().join("nope");
    thinpool(&["pool", "info", missing.to_str().unwrap()]).fails(1, "not a thinpool pool");
}

#[test]
fn readers_share_the_pool() {
    let tp = TestPool::new("16M", "64K");
    tp.run(&["create", "{}", "v", "--size", "1M"]).ok();
    // A read-only holder (like another `list`) does not block readers...
    let reader = Pool::open(
        &tp.dir,
        &OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    assert_eq!(tp.info()["volumes"], 1);
    assert_eq!(tp.list().as_array().unwrap().len(), 1);
    tp.run(&["read", "{}", "v", "--length", "4K"]).ok();
    // ...but a writer must wait for it.
    tp.run(&["create", "{}", "w", "--size", "1M"])
        .fails(1, "in use");
    drop(reader);
    tp.run(&["create", "{}", "w", "--size", "1M"]).ok();
}

#[test]
fn help_lists_every_command() {
    let out = thinpool(&["--help"]).ok().text();
    for cmd in [
        "pool", "create", "snapshot", "list", "info", "remove", "resize", "rename", "rollback",
        "write", "read", "discard", "demo", "serve",
    ] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} missing from --help:\n{out}"
        );
    }
    let out = thinpool(&["pool", "--help"]).ok().text();
    for cmd in ["create", "info", "grow"] {
        assert!(out.contains(cmd), "{out}");
    }
    assert!(thinpool(&["--version"])
        .ok()
        .text()
        .starts_with("thinpool "));
}

/// Space freed by one command goes back to the filesystem at the next command's commit
/// (the freeing process exits before it may punch: the blocks are still in the protected
/// window), so a data file never keeps the space of removed volumes or discarded ranges.
#[test]
fn freed_blocks_return_to_the_filesystem_at_the_next_commit() {
    use std::os::unix::fs::MetadataExt;
    let tp = TestPool::new("1G", "64K");
    let allocated = || std::fs::metadata(tp.dir.join("data")).unwrap().blocks() * 512;
    let img = tp.put("img", &pattern(3, 16 << 20));
    tp.run(&["import", "{}", "a", &img]).ok();
    tp.run(&["import", "{}", "b", &img]).ok();
    let full = allocated();
    assert!(full >= 32 << 20, "{full}");
    tp.run(&["remove", "{}", "a"]).ok();
    tp.run(&["discard", "{}", "b", "--offset", "0", "--length", "8M"])
        .ok();
    // The next command that commits punches what the previous one freed.
    tp.run(&["create", "{}", "c", "--size", "1M"]).ok();
    let after = allocated();
    assert!(
        after <= full - (16 << 20),
        "{full} bytes before, {after} after removing a volume"
    );
    tp.run(&["create", "{}", "d", "--size", "1M"]).ok();
    let last = allocated();
    assert!(
        last <= (8 << 20) + (1 << 20),
        "{last} bytes for 8 MiB of data"
    );
    assert_eq!(
        tp.read("b", 8 << 20, 8 << 20),
        pattern(3, 16 << 20)[8 << 20..]
    );
    tp.check_clean();
}
