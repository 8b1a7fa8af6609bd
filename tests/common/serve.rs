//! The real `thinpool serve` as a child process, for tests that need the binary itself (its
//! logs, its signal handling, the CLI's control handler): started, waited for until its
//! control socket accepts, stopped with SIGTERM.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `thinpool serve DIR ARGS` with `env` added (and `RUST_LOG` removed unless given), its
/// stderr to `log` (or inherited); returns once the control socket accepts.
pub fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)], log: Option<&Path>) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_thinpool"));
    c.arg("serve").arg(dir).args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    if let Some(log) = log {
        c.stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
    }
    let mut child = c.spawn().unwrap();
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(dir.join("control.sock")).is_err() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("serve exited with {st} before it served");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "serve did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// SIGTERM (through kill(1): the tests stay free of unsafe libc calls), then the exit status
/// once it has stopped.
pub fn sigterm(mut child: Child) -> ExitStatus {
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -TERM failed");
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "serve did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}
