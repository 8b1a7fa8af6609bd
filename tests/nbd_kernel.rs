//! Kernel end to end: the real `thinpool serve`, nbdfuse exposing the volume as a file, a
//! loop device over it, ext4 on top. Then a snapshot through the control socket while the
//! filesystem is frozen, `fsck.ext4 -n` of the snapshot, and fstrim reaching the pool.
//!
//! Needs root, /dev/fuse and loop devices. Missing tools fail under `CI`; a machine without
//! the privileges skips loudly unless `THINPOOL_REQUIRE_KERNEL` is set.

#[path = "common/nbd.rs"]
mod nbd_util;
use nbd_util::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_thinpool");

fn privileged() -> bool {
    let ok = Path::new("/dev/fuse").exists()
        && Path::new("/dev/loop-control").exists()
        && std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false);
    if !ok {
        if std::env::var_os("THINPOOL_REQUIRE_KERNEL").is_some() {
            panic!("THINPOOL_REQUIRE_KERNEL is set but this is not root with /dev/fuse and loop devices");
        }
        eprintln!(
            "\n!!!!! SKIPPING kernel test: needs root, /dev/fuse and /dev/loop-control !!!!!\n"
        );
    }
    ok
}

/// Everything mounted or attached, undone in reverse order even when the test fails.
#[derive(Default)]
struct Cleanup {
    mounts: Vec<PathBuf>,
    loops: Vec<String>,
    fuse: Vec<(PathBuf, Child)>,
    serve: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for m in self.mounts.drain(..).rev() {
            let _ = Command::new("fsfreeze").arg("-u").arg(&m).output();
            let _ = Command::new("umount").arg(&m).output();
        }
        for l in self.loops.drain(..) {
            let _ = Command::new("losetup").args(["-d", &l]).output();
        }
        for (dir, mut child) in self.fuse.drain(..) {
            let _ = Command::new("umount").arg(&dir).output();
            let t0 = Instant::now();
            while child.try_wait().ok().flatten().is_none() && t0.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut s) = self.serve.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &s.id().to_string()])
                .output();
            let _ = s.wait();
        }
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ext4_on_nbdfuse_loop_with_snapshot_and_fsck() {
    if !have_tools(&[
        "nbdfuse",
        "losetup",
        "mkfs.ext4",
        "fsck.ext4",
        "fsfreeze",
        "fstrim",
        "nbdcopy",
        "debugfs",
        "mount",
        "umount",
    ]) || !privileged()
    {
        return;
    }
    let t = make_pool(&[("disk", 256 * MIB)], 64 << 10);
    let dir = pool_dir(&t);
    let d = dir.to_str().unwrap();
    let mut cl = Cleanup::default();
    cl.serve = Some(Command::new(BIN).args(["serve", d]).spawn().unwrap());
    let sock = dir.join("nbd.sock");
    wait_for("serve", || {
        std::os::unix::net::UnixStream::connect(dir.join("control.sock")).is_ok()
    });

    let fuse = t.path().join("fuse");
    let mnt = t.path().join("mnt");
    std::fs::create_dir_all(&fuse).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let pidfile = t.path().join("nbdfuse.pid");
    let uri = format!("nbd+unix:///disk?socket={}", sock.display());
    let child = Command::new("nbdfuse")
        .arg("-P")
        .arg(&pidfile)
        .arg(&fuse)
        .arg(&uri)
        .spawn()
        .unwrap();
    cl.fuse.push((fuse.clone(), child));
    wait_for("nbdfuse", || pidfile.exists() && fuse.join("nbd").exists());

    let o = run(Command::new("losetup")
        .args(["-f", "--show"])
        .arg(fuse.join("nbd")));
    let dev = stdout(&o).trim().to_string();
    cl.loops.push(dev.clone());
    run(Command::new("mkfs.ext4").args(["-q", "-F", &dev]));
    run(Command::new("mount").arg(&dev).arg(&mnt));
    cl.mounts.push(mnt.clone());

    let content: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(mnt.join("file"), &content).unwrap();
    run(&mut Command::new("sync"));

    // A consistent snapshot: freeze (flushes the filesystem down to an NBD FLUSH), snapshot
    // through the control socket, thaw.
    run(Command::new("fsfreeze").arg("-f").arg(&mnt));
    let snap = Command::new(BIN)
        .args(["snapshot", d, "disk", "snap1"])
        .output()
        .unwrap();
    run(Command::new("fsfreeze").arg("-u").arg(&mnt));
    assert!(snap.status.success(), "{snap:?}");

    // Change the live filesystem afterwards; the snapshot must not see it.
    std::fs::write(mnt.join("file2"), vec![7u8; 5 << 20]).unwrap();
    std::fs::remove_file(mnt.join("file")).unwrap();
    run(&mut Command::new("sync"));
    // fstrim sends TRIM through loop -> FUSE -> NBD: the pool unmaps the freed blocks.
    run(Command::new("fstrim").arg(&mnt));

    let img = t.path().join("snap.img");
    let snap_uri = format!("nbd+unix:///snap1?socket={}", sock.display());
    run(Command::new("nbdcopy").arg(&snap_uri).arg(&img));
    run(Command::new("fsck.ext4").args(["-n", "-f"]).arg(&img));
    // The snapshot's file reads back exactly (debugfs needs no mount).
    let dumped = t.path().join("file.out");
    run(Command::new("debugfs")
        .args(["-R", &format!("dump /file {}", dumped.display())])
        .arg(&img));
    assert!(
        std::fs::read(&dumped).unwrap() == content,
        "snapshot file differs"
    );

    // Unmount everything, stop the server, and check the live volume too.
    drop(cl);
    let img2 = t.path().join("disk.img");
    let o = run(Command::new(BIN).args(["read", d, "disk"]).arg(&img2));
    drop(o);
    run(Command::new("fsck.ext4").args(["-n", "-f"]).arg(&img2));
    let o = run(Command::new(BIN).args(["list", d, "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mapped = |n: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == n)
            .unwrap()["mapped_blocks"]
            .as_u64()
            .unwrap_or_else(|| panic!("{v}"))
    };
    assert!(
        mapped("disk") < mapped("snap1"),
        "fstrim freed the deleted file's blocks: {v}"
    );
}
