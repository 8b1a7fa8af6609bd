//! A full filesystem under the pool (brief: "full disks"): the pool's files live on a small
//! tmpfs. Creating a pool that does not fit fails cleanly and leaves nothing behind; a write
//! that fills the filesystem fails with ENOSPC, the part before it is committed (metadata
//! space is reserved at create, so commits never need new disk space), the pool checks
//! clean, and it is writable again once space is freed.
//!
//! Needs root (to mount tmpfs): under `CI` its absence is a failure, elsewhere a loud skip.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let root = Command::new("id").arg("-u").output().ok()?.stdout == b"0\n";
        if !root {
            if std::env::var_os("CI").is_some() {
                panic!("CI is set but this is not root: cannot mount a tmpfs");
            }
            eprintln!("\n!!!!! SKIPPING full-disk test: needs root to mount a tmpfs !!!!!\n");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs failed");
        Some(Tmpfs { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A child process killed when dropped (a failing test must not leave its server behind).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `thinpool pool create POOL --size 1G --metadata-size METADATA`.
fn pool_create(pool: &Path, metadata: &str) -> Out {
    thinpool(&[
        "pool",
        "create",
        s(pool),
        "--size",
        "1G",
        "--metadata-size",
        metadata,
    ])
}

/// A 24 MiB tmpfs holding a pool of 1 GiB (8 MiB of metadata) with a 512 MiB volume `v`:
/// the filesystem fills long before the pool does.
fn pool_on_small_fs() -> Option<(Tmpfs, PathBuf)> {
    let fs = Tmpfs::mount("24M")?;
    let pool = fs.path("p");
    pool_create(&pool, "8M").ok();
    thinpool(&["create", s(&pool), "v", "--size", "512M"]).ok();
    Some((fs, pool))
}

#[test]
fn a_pool_that_does_not_fit_is_not_created() {
    let Some(fs) = Tmpfs::mount("4M") else { return };
    let pool = fs.path("p");
    pool_create(&pool, "8M").fails(1, "no space left on device");
    assert!(!pool.exists(), "a half-made pool was left behind");
    // A pool that fits is created on the same filesystem afterwards.
    pool_create(&pool, "4M").ok();
    thinpool(&["check", s(&pool)]).ok();
}

#[test]
fn a_full_filesystem_fails_the_write_and_keeps_what_came_before() {
    let Some((_mounted, pool)) = pool_on_small_fs() else {
        return;
    };
    // More data than the filesystem holds (the input lives elsewhere).
    let src = tempfile::NamedTempFile::new().unwrap();
    let data = pattern(7, 40 << 20);
    std::fs::write(src.path(), &data).unwrap();
    let out =
        thinpool(&["write", s(&pool), "v", s(src.path())]).fails(1, "no space left on device");
    assert!(out.stderr.contains("are committed"), "{}", out.stderr);
    thinpool(&["check", s(&pool)]).ok();
    // What the message calls committed reads back exactly, after a reopen.
    let mapped = thinpool(&["info", s(&pool), "v", "--json"]).ok().json()["mapped_blocks"]
        .as_u64()
        .unwrap();
    assert!(
        mapped > 0,
        "nothing was committed before the filesystem filled"
    );
    let committed = mapped * 65536;
    let back = tempfile::NamedTempFile::new().unwrap();
    let len = committed.to_string();
    thinpool(&["read", s(&pool), "v", "--length", &len, s(back.path())]).ok();
    assert!(
        std::fs::read(back.path()).unwrap() == data[..committed as usize],
        "the committed prefix does not read back"
    );
    // Freeing space makes the pool writable again (freed blocks are punched at the next
    // commit and go back to the filesystem).
    thinpool(&["remove", s(&pool), "v"]).ok();
    thinpool(&["create", s(&pool), "w", "--size", "8M"]).ok();
    std::fs::write(src.path(), &data[..4 << 20]).unwrap();
    thinpool(&["write", s(&pool), "w", s(src.path())]).ok();
    thinpool(&["check", s(&pool)]).ok();
}

/// Over NBD with a real client: a write that fills the filesystem fails with ENOSPC (not a
/// generic I/O error), the space it took is given back at once, and the next write, once
/// flushed, survives the server's stop.
#[test]
fn a_full_filesystem_under_a_served_pool() {
    full_under_serve(&[]);
}

/// The same with O_DIRECT, where the data file is allocated a chunk at a time ahead of the
/// writes (src/pool/extents.rs): an allocation the filesystem cannot make changes nothing
/// either.
#[test]
fn a_full_filesystem_under_a_direct_served_pool() {
    full_under_serve(&["--direct"]);
}

fn full_under_serve(flags: &[&str]) {
    if !common::tools::have_tools(&["qemu-io"]) {
        return;
    }
    let Some((_mounted, pool)) = pool_on_small_fs() else {
        return;
    };
    let mut server = KillOnDrop(
        Command::new(BIN)
            .args(["serve", s(&pool)])
            .args(flags)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = std::time::Instant::now();
    while !pool.join("nbd.sock").exists() {
        assert!(t0.elapsed().as_secs() < 20, "serve did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let uri = format!("nbd+unix:///v?socket={}", s(&pool.join("nbd.sock")));
    let qemu_io = |cmds: &[&str]| {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw", &uri]);
        for x in cmds {
            c.args(["-c", x]);
        }
        let o = c.output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    };
    let out = qemu_io(&["write -P 0xaa 0 30M"]);
    assert!(out.contains("No space left on device"), "{out}");
    let out = qemu_io(&["write -P 0xbb 0 1M", "flush"]);
    assert!(out.contains("wrote 1048576/1048576"), "{out}");
    Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(server.0.wait().unwrap().success());
    let back = tempfile::NamedTempFile::new().unwrap();
    thinpool(&["read", s(&pool), "v", "--length", "1M", s(back.path())]).ok();
    assert!(std::fs::read(back.path()).unwrap() == vec![0xbb; 1 << 20]);
    thinpool(&["check", s(&pool)]).ok();
}
