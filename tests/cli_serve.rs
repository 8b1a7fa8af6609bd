//! Commands sent to a running `thinpool serve` through POOL/control.sock run inside the
//! server, with the same output and exit codes as when they open the pool themselves.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Server {
    fn start(tp: &TestPool) -> Server {
        let sock = tp.file("nbd.sock");
        let child = Command::new(BIN)
            .args(["serve", tp.p(), "--socket", sock.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut server = Server(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !tp.dir.join("control.sock").exists() {
            if let Some(st) = server.0.try_wait().unwrap() {
                panic!("thinpool serve exited early: {st}");
            }
            assert!(Instant::now() < deadline, "no control socket after 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// SIGTERM, then wait: a clean shutdown commits.
    fn stop(mut self) {
        let pid = self.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let st = self.0.wait().unwrap();
        assert!(st.success(), "serve exited with {st}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn management_through_the_control_socket() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "1M"]).ok();
    let server = Server::start(&tp);

    // Without forwarding these would fail: the server holds the exclusive lock.
    let out = tp.run(&["create", "{}", "new", "--size", "2M"]).ok();
    assert!(
        out.text().contains("created volume 'new'"),
        "{}",
        out.text()
    );
    let list = tp.list();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(tp.info()["volumes"] == 2);

    // Errors come back with their exit codes and messages.
    tp.run(&["info", "{}", "nope"])
        .fails(1, "no volume named 'nope'");
    tp.run(&["create", "{}", "x", "--size", "10X"])
        .fails(2, "unknown unit");

    // A relative FILE is resolved in the caller's directory, not the server's.
    std::fs::write(tp.file("rel.bin"), b"relative path data").unwrap();
    thinpool_at(
        &["write", tp.p(), "vm", "--offset", "100", "rel.bin"],
        None,
        Some(tp.tmp.path()),
    )
    .ok();
    thinpool_at(
        &[
            "read",
            tp.p(),
            "vm",
            "--offset",
            "100",
            "--length",
            "18",
            "back.bin",
        ],
        None,
        Some(tp.tmp.path()),
    )
    .ok();
    assert_eq!(
        std::fs::read(tp.file("back.bin")).unwrap(),
        b"relative path data"
    );

    // Standard streams do not travel through the control socket: a clear refusal.
    tp.run_in(&["write", "{}", "vm"], Some(b"stdin data"))
        .fails(1, "give a FILE path");
    tp.run(&["read", "{}", "vm"]).fails(1, "give a FILE path");
    tp.run(&["demo"]).ok();

    tp.run(&["snapshot", "{}", "vm", "snap"]).ok();
    server.stop();

    // Everything done through the server is durable and visible without it.
    assert_eq!(tp.read("snap", 100, 18), b"relative path data");
    let names: Vec<String> = tp
        .list()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["vm", "new", "snap"]);
    tp.check_clean();
}

/// `--export` names must exist when the server starts: a typo is refused at once (it
/// would otherwise serve nothing and fail only when a client asks), leaving no sockets.
#[test]
fn serve_refuses_an_unknown_export() {
    let tp = TestPool::new("64M", "64K");
    tp.run(&["create", "{}", "v", "--size", "1M"]).ok();
    // With a deadline: a server that does start must not hang the test.
    let o = thinpool_within(
        &["serve", tp.p(), "--export", "v", "--export", "vv"],
        Duration::from_secs(20),
    );
    let err = o.stderr;
    assert_eq!(o.code, 1, "{err}");
    assert!(err.contains("no volume named 'vv'"), "{err}");
    assert!(!tp.dir.join("nbd.sock").exists());
    assert!(!tp.dir.join("control.sock").exists());
}

/// Runs `thinpool serve POOL --socket SOCK` expecting a refusal: exit 1 within 20 s, with
/// `needle` in its message. Returns stderr.
fn serve_refused(tp: &TestPool, sock: &std::path::Path, needle: &str) -> String {
    let o = thinpool_within(
        &["serve", tp.p(), "--socket", sock.to_str().unwrap()],
        Duration::from_secs(20),
    );
    let err = o.stderr;
    assert_eq!(o.code, 1, "{err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert!(!tp.dir.join("control.sock").exists(), "{err}");
    err
}

/// `--socket` never replaces anything but a stale socket: not the pool's own files (this
/// once deleted the metadata, and every volume with it), not a user's file, directory or
/// symlink, and not a socket a live server accepts on.
#[test]
fn serve_socket_never_replaces_a_file() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "v", "--size", "1M"]).ok();
    let data = pattern(7, 64 << 10);
    tp.run(&["write", "{}", "v", &tp.put("in.bin", &data)]).ok();
    let meta_before = std::fs::read(tp.dir.join("metadata")).unwrap();

    serve_refused(&tp, &tp.dir.join("metadata"), "pool's own");
    serve_refused(&tp, &tp.dir.join("data"), "pool's own");
    assert_eq!(std::fs::read(tp.dir.join("metadata")).unwrap(), meta_before);

    let user = tp.file("notes.txt");
    std::fs::write(&user, b"keep me").unwrap();
    serve_refused(&tp, &user, "not a socket");
    assert_eq!(std::fs::read(&user).unwrap(), b"keep me");

    let link = tp.file("link.sock");
    std::os::unix::fs::symlink(&user, &link).unwrap();
    serve_refused(&tp, &link, "not a socket");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(std::fs::read(&user).unwrap(), b"keep me");

    let d = tp.file("adir");
    std::fs::create_dir(&d).unwrap();
    serve_refused(&tp, &d, "not a socket");
    assert!(d.is_dir());

    // A live listener is in use; the server does not steal its path.
    let live = tp.file("live.sock");
    let l = std::os::unix::net::UnixListener::bind(&live).unwrap();
    serve_refused(&tp, &live, "in use");
    drop(l);

    // The server's control socket is not a place for the NBD socket either.
    serve_refused(&tp, &tp.dir.join("control.sock"), "control socket");

    assert_eq!(tp.read("v", 0, data.len() as u64), data);
    tp.check_clean();
}

/// A socket left behind by a server that died (nobody accepts on it) is replaced, and the
/// server removes its own socket when it stops.
#[test]
fn serve_replaces_a_stale_socket() {
    let tp = TestPool::new("16M", "4K");
    let sock = tp.file("nbd.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let server = Server::start(&tp);
    assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok());
    server.stop();
    assert!(!sock.exists());
}
