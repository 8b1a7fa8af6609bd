//! The control socket and the server's lifecycle: commands run between requests, snapshots
//! hold every completed write, attached volumes are protected, shutdown commits.

#[path = "common/nbd.rs"]
mod nbd_util;
use nbd_util::raw::Raw;
use nbd_util::*;
use std::path::Path;
use thinpool::nbd::forward;
use thinpool::pool::{OpenOptions, Pool};

fn argv(a: &[&str]) -> Vec<String> {
    std::iter::once("thinpool")
        .chain(a.iter().copied())
        .map(String::from)
        .collect()
}

fn fwd(dir: &Path, a: &[&str]) -> (i32, String, String) {
    let f = forward(dir, &argv(a))
        .unwrap()
        .expect("a server is running");
    (
        f.code,
        String::from_utf8_lossy(&f.stdout).into_owned(),
        String::from_utf8_lossy(&f.stderr).into_owned(),
    )
}

#[test]
fn snapshot_through_control_socket_holds_completed_writes() {
    let t = make_pool(&[("vol", 4 * MIB)], 64 << 10);
    let dir = pool_dir(&t);
    let srv = Server::start(&dir);
    let d = dir.to_str().unwrap();
    let mut c = Raw::attach(&srv.socket, "vol", false);
    // Completed (acknowledged) but never flushed: still in the snapshot.
    assert_eq!(c.write(1, 1000, &[0xab; 70_000]), 0);
    let (code, _, err) = fwd(&dir, &["snapshot", d, "vol", "snap"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(c.write(2, 1000, &[0xcd; 70_000]), 0);
    let (code, out, _) = fwd(&dir, &["list", d]);
    assert_eq!((code, out.as_str()), (0, "vol\nsnap\n"));
    // The new snapshot is exported at once, read-only (the handler made it so).
    let mut s = Raw::attach(&srv.socket, "snap", false);
    assert_ne!(s.flags & 2, 0);
    assert_eq!(s.read(3, 1000, 70_000).unwrap(), vec![0xab; 70_000]);
    assert_eq!(s.read(4, 0, 1000).unwrap(), vec![0; 1000]);
    assert_eq!(c.read(5, 1000, 70_000).unwrap(), vec![0xcd; 70_000]);
    // A command error comes back as code and message.
    let (code, _, err) = fwd(&dir, &["snapshot", d, "nope", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("nope"), "{err}");
    srv.stop().unwrap();
}

#[test]
fn remove_of_attached_volume_needs_force() {
    let t = make_pool(&[("vol", MIB), ("free", MIB)], 64 << 10);
    let dir = pool_dir(&t);
    let srv = Server::start_cli(&dir);
    let d = dir.to_str().unwrap();
    let mut c = Raw::attach(&srv.socket, "vol", false);
    let (code, _, err) = fwd(&dir, &["remove", d, "vol"]);
    assert_eq!(code, 1);
    assert!(err.contains("attached") && err.contains("--force"), "{err}");
    let (code, _, err) = fwd(&dir, &["rollback", d, "vol", "whatever"]);
    assert_eq!(code, 1);
    assert!(err.contains("attached"), "{err}");
    // Unattached volumes go as usual.
    assert_eq!(fwd(&dir, &["remove", d, "free"]).0, 0);
    // Once the client leaves, the volume can go.
    c.request(0, 2, 1, 0, 0, &[]);
    assert!(c.closed());
    let t0 = std::time::Instant::now();
    loop {
        let (code, _, err) = fwd(&dir, &["remove", d, "vol"]);
        if code == 0 {
            break;
        }
        assert!(t0.elapsed().as_secs() < 10, "{err}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // --force overrides; the client then gets errors, not a crash.
    let t2 = make_pool(&[("vol", MIB)], 64 << 10);
    let dir2 = pool_dir(&t2);
    let srv2 = Server::start_cli(&dir2);
    let mut c = Raw::attach(&srv2.socket, "vol", false);
    let d2 = dir2.to_str().unwrap();
    assert_eq!(fwd(&dir2, &["remove", d2, "vol", "--force"]).0, 0);
    assert!(c.read(1, 0, 512).is_err());
    assert_ne!(c.write(2, 0, &[1; 512]), 0);
    srv2.stop().unwrap();
    srv.stop().unwrap();
}

#[test]
fn forward_without_server_and_stale_socket() {
    let t = make_pool(&[("vol", MIB)], 64 << 10);
    let dir = pool_dir(&t);
    assert!(forward(&dir, &argv(&["list"])).unwrap().is_none());
    // A socket file nobody listens on (a server that was SIGKILLed).
    drop(std::os::unix::net::UnixListener::bind(dir.join("control.sock")).unwrap());
    drop(std::os::unix::net::UnixListener::bind(dir.join("nbd.sock")).unwrap());
    assert!(forward(&dir, &argv(&["list"])).unwrap().is_none());
    // A new server replaces the stale sockets; a second one is refused.
    let srv = Server::start(&dir);
    let mode = std::fs::metadata(dir.join("control.sock")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    let e = thinpool::nbd::serve_until(
        thinpool::nbd::ServeOptions::new(&dir),
        test_handler(),
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
    )
    .unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    assert!(
        dir.join("nbd.sock").exists(),
        "the running server keeps its socket"
    );
    srv.stop().unwrap();
    assert!(!dir.join("nbd.sock").exists() && !dir.join("control.sock").exists());
}

#[test]
fn listen_refuses_remote_addresses() {
    let t = make_pool(&[("vol", MIB)], 64 << 10);
    let mut o = thinpool::nbd::ServeOptions::new(pool_dir(&t));
    o.listen = Some("0.0.0.0:0".into());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let e = thinpool::nbd::serve_until(o, test_handler(), stop).unwrap_err();
    assert!(e.to_string().contains("--allow-remote"), "{e}");
    // Loopback TCP works.
    let mut o = thinpool::nbd::ServeOptions::new(pool_dir(&t));
    o.listen = Some("127.0.0.1:0".into());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    thinpool::nbd::serve_until(o, test_handler(), stop).unwrap();
}

#[test]
fn shutdown_commits_completed_writes() {
    let t = make_pool(&[("vol", 4 * MIB)], 64 << 10);
    let dir = pool_dir(&t);
    let mut o = thinpool::nbd::ServeOptions::new(&dir);
    o.commit_interval = std::time::Duration::from_secs(3600);
    let srv = Server::start_with(o);
    let mut c = Raw::attach(&srv.socket, "vol", false);
    assert_eq!(c.write(1, 4096, &[0x42; 100_000]), 0);
    srv.stop().unwrap();
    assert!(c.closed());
    let mut p = Pool::open(&dir, &OpenOptions::default()).unwrap();
    let id = p.volume_id("vol").unwrap();
    let mut buf = vec![0u8; 100_000];
    p.read(id, 4096, &mut buf).unwrap();
    assert_eq!(buf, vec![0x42; 100_000]);
}
