//! Shared helpers for the NBD tests: a pool in a temporary directory, an in-process server,
//! and tool discovery (missing tools fail under `CI`, skip loudly otherwise).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thinpool::nbd::{serve_until, ControlHandler, ServeOptions};
use thinpool::pool::{CreateOptions, Pool};

pub const MIB: u64 = 1 << 20;

/// True when every tool is installed. Otherwise: under `CI` the test fails, elsewhere it
/// prints a loud skip message and the caller returns.
pub fn have_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and required tools are missing: {missing:?}");
    }
    eprintln!("\n!!!!! SKIPPING: tools not installed: {missing:?} (apt-get install qemu-utils libnbd-bin fio nbdfuse) !!!!!\n");
    false
}

/// A new pool with volumes `(name, size)`, block size `bs`.
pub fn make_pool(vols: &[(&str, u64)], bs: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pool");
    let mut o = CreateOptions::new(1 << 30);
    o.block_size = bs;
    let mut pool = Pool::create(&p, &o).unwrap();
    for (n, s) in vols {
        pool.create_volume(n, *s, false).unwrap();
    }
    pool.commit().unwrap();
    dir
}

pub fn pool_dir(t: &tempfile::TempDir) -> PathBuf {
    t.path().join("pool")
}

/// A handler that understands just enough commands to test the control path:
/// `snapshot SRC NEW`, `remove VOL [--force]`, `list`.
pub fn test_handler() -> ControlHandler {
    Box::new(|pool, argv, out, err| {
        let a: Vec<&str> = argv.iter().map(|s| s.as_str()).collect();
        let r = match a.get(1..).unwrap_or(&[]) {
            ["snapshot", src, new] => pool.snapshot(src, new, true).map(|_| ()),
            ["remove", vol, ..] => pool.remove_volume(vol),
            ["list"] => pool.volumes().map(|v| {
                for (_, d) in v {
                    out.extend_from_slice(format!("{}\n", d.name).as_bytes());
                }
            }),
            _ => {
                err.extend_from_slice(b"unknown test command\n");
                return 2;
            }
        };
        match r {
            Ok(()) => 0,
            Err(e) => {
                err.extend_from_slice(format!("{e}\n").as_bytes());
                1
            }
        }
    })
}

pub struct Server {
    pub dir: PathBuf,
    pub socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub fn start(dir: &Path) -> Server {
        Self::start_with(ServeOptions::new(dir))
    }

    pub fn start_with(opts: ServeOptions) -> Server {
        let dir = opts.pool_dir.clone();
        let socket = opts.socket.clone().unwrap_or_else(|| dir.join("nbd.sock"));
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || serve_until(opts, test_handler(), s2));
        let t0 = Instant::now();
        while !socket.exists() || !dir.join("control.sock").exists() {
            if thread.is_finished() {
                panic!("server exited: {:?}", thread.join().unwrap());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Server {
            dir,
            socket,
            stop,
            thread: Some(thread),
        }
    }

    /// `nbd+unix:///NAME?socket=...`
    pub fn uri(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.socket.display())
    }

    pub fn stop(mut self) -> std::io::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> std::io::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t.join().unwrap(),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Run a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if !o.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    o
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
