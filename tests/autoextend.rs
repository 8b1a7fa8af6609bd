//! Low space through a running server: `--warn-at` warns, `--autoextend-at/--autoextend-by`
//! grow a 64 MiB pool under 200 MiB of NBD writes while the filesystem has room, and on a
//! small tmpfs the writes end in a clean ENOSPC: every write acknowledged before it reads
//! back, and `check` is clean.

mod common;
use common::serve;
use common::tools::have_tools;
use common::*;
use std::path::Path;
use std::process::Command;

/// `qemu-io` commands against export `v`; true when every one succeeded.
fn qemu_io(dir: &Path, cmds: &[String]) -> (bool, String) {
    let uri = format!("nbd+unix:///v?socket={}", dir.join("nbd.sock").display());
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", &uri]);
    for x in cmds {
        c.args(["-c", x]);
    }
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // qemu-io exits 0 even when a command fails; its message says so.
    let failed = !out.status.success() || text.contains("failed") || text.contains("error");
    (!failed, text)
}

const MIB: u64 = 1 << 20;

/// Write 8 MiB chunks with pattern byte `i + 1` until one fails (or `upto` is reached), a
/// FLUSH after each; returns how many were acknowledged.
fn fill(dir: &Path, upto: u64) -> (u64, String) {
    let mut last = String::new();
    for i in 0..upto / (8 * MIB) {
        let (ok, text) = qemu_io(
            dir,
            &[
                format!("write -P {} {}M 8M", i + 1, i * 8),
                "flush".to_string(),
            ],
        );
        if !ok {
            return (i, text);
        }
        last = text;
    }
    (upto / (8 * MIB), last)
}

fn verify(dir: &Path, chunks: u64) {
    for i in 0..chunks {
        let (ok, text) = qemu_io(dir, &[format!("read -P {} {}M 8M", i + 1, i * 8)]);
        assert!(ok, "chunk {i} (acknowledged) does not read back: {text}");
    }
}

fn data_total(pool: &Path) -> u64 {
    let v = thinpool(&["pool", "info", pool.to_str().unwrap(), "--json"])
        .ok()
        .json();
    v["data_blocks_total"].as_u64().unwrap() * v["block_size"].as_u64().unwrap()
}

#[test]
fn a_64m_pool_autoextends_under_200m_of_writes() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let tp = TestPool::new("64M", "64K");
    tp.run(&["create", "{}", "v", "--size", "256M"]).ok();
    let log = tp.tmp.path().join("serve.log");
    let args = [
        "--warn-at",
        "70%",
        "--autoextend-at",
        "80%",
        "--autoextend-by",
        "50%",
    ];
    let srv = serve::spawn(&tp.dir, &args, &[], Some(&log));
    let (done, text) = fill(&tp.dir, 200 * MIB);
    assert_eq!(done, 25, "a write failed: {text}");
    verify(&tp.dir, done);
    let st = serve::sigterm(srv);
    assert!(st.success(), "serve exited with {st}");
    let total = data_total(&tp.dir);
    eprintln!("capacity after 200 MiB of writes: {total} bytes");
    assert!(total >= 200 * MIB, "capacity {total}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("autoextended the data capacity by 50%"),
        "{log}"
    );
    assert!(log.contains("at or above --warn-at 70%"), "{log}");
    tp.check_clean();
}

#[test]
fn autoextend_stops_where_the_filesystem_ends_and_the_pool_stays_whole() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=80M", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    if !st.success() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set and a tmpfs cannot be mounted (needs root)"
        );
        eprintln!("\n!!!!! SKIPPING: cannot mount a tmpfs (not root?) !!!!!\n");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Unmount(&mnt);
    let pool = mnt.join("p");
    let p = pool.to_str().unwrap();
    thinpool(&[
        "pool",
        "create",
        p,
        "--size",
        "32M",
        "--metadata-size",
        "4M",
    ])
    .ok();
    thinpool(&["create", p, "v", "--size", "256M"]).ok();
    let log = tmp.path().join("serve.log");
    let srv = serve::spawn(
        &pool,
        &["--autoextend-at", "80%", "--autoextend-by", "50%"],
        &[],
        Some(&log),
    );
    let (done, text) = fill(&pool, 200 * MIB);
    assert!(done < 25, "200 MiB fit in an 80 MiB tmpfs?");
    assert!(done >= 4, "only {done} chunks before ENOSPC");
    assert!(
        text.contains("No space left on device"),
        "the failing write says ENOSPC: {text}"
    );
    // Everything acknowledged is there, and the server still serves.
    verify(&pool, done);
    let st = serve::sigterm(srv);
    assert!(st.success(), "serve exited with {st}");
    let log = std::fs::read_to_string(&log).unwrap();
    eprintln!("{done} chunks of 8 MiB acknowledged before ENOSPC; server log:\n{log}");
    assert!(log.contains("autoextended"), "{log}");
    assert!(log.contains("cannot autoextend"), "{log}");
    let rep = thinpool(&["check", p, "--json"]).ok().json();
    assert_eq!(rep["clean"], true, "{rep}");
    assert!(data_total(&pool) <= 80 * MIB);
}
