//! Shared helpers for the CLI integration tests: run the real `thinpool` binary, make
//! pools in temporary directories, read their state as JSON.
#![allow(dead_code)]

pub mod serve;
pub mod tools;

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_thinpool");

/// What one run of the binary produced.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Out {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", self.text()))
    }

    /// Assert success; returns self for chaining.
    #[track_caller]
    pub fn ok(self) -> Out {
        assert_eq!(
            self.code,
            0,
            "expected success\nstdout: {}\nstderr: {}",
            self.text(),
            self.stderr
        );
        self
    }

    /// Assert a failure with `code` whose stderr mentions `needle` (case-insensitive), in
    /// the `thinpool: ...` form for exit 1, and never a panic.
    #[track_caller]
    pub fn fails(self, code: i32, needle: &str) -> Out {
        assert_eq!(
            self.code,
            code,
            "expected exit {code}\nstdout: {}\nstderr: {}",
            self.text(),
            self.stderr
        );
        assert!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "stderr does not mention {needle:?}: {}",
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "panic: {}", self.stderr);
        if code == 1 {
            assert!(
                self.stderr.starts_with("thinpool: "),
                "message not in `thinpool: ...` form: {}",
                self.stderr
            );
        }
        self
    }
}

/// Run `thinpool ARGS...`.
pub fn thinpool(args: &[&str]) -> Out {
    thinpool_in(args, None)
}

/// Run `thinpool ARGS...` with `stdin` as its standard input.
pub fn thinpool_in(args: &[&str], stdin: Option<&[u8]>) -> Out {
    thinpool_at(args, stdin, None)
}

/// Run `thinpool ARGS...` in working directory `cwd`.
pub fn thinpool_at(args: &[&str], stdin: Option<&[u8]>, cwd: Option<&Path>) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().expect("spawn thinpool");
    let writer = stdin.map(|data| {
        let mut w = child.stdin.take().unwrap();
        let data = data.to_vec();
        // A thread, so a large input cannot deadlock against a full stdout pipe.
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        })
    });
    let out = child.wait_with_output().expect("wait for thinpool");
    if let Some(w) = writer {
        w.join().unwrap();
    }
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run `thinpool ARGS...` under `umask MASK` (e.g. "022"), through `sh`, so file modes do
/// not depend on the umask the tests happen to run with.
pub fn thinpool_umask(mask: &str, args: &[&str]) -> Out {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {mask} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run thinpool through sh");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run `thinpool ARGS...` with a deadline: a command that has not exited within `limit` (a
/// server that starts where it should refuse, an open that blocks) is killed and fails the
/// test instead of hanging it.
#[allow(dead_code)]
pub fn thinpool_within(args: &[&str], limit: std::time::Duration) -> Out {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn thinpool");
    // Drained by threads, so a chatty child cannot block on a full pipe.
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + limit;
    let st = loop {
        if let Some(st) = child.try_wait().expect("wait for thinpool") {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`thinpool {}` still running after {limit:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Out {
        code: st.code().unwrap_or(-1),
        stdout: out.join().unwrap(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    }
}

/// A pool in a temporary directory (removed on drop), plus room for scratch files.
pub struct TestPool {
    pub tmp: TempDir,
    pub dir: PathBuf,
}

impl TestPool {
    /// `thinpool pool create` with `size` and `block_size` (e.g. "64M", "4K").
    pub fn new(size: &str, block_size: &str) -> TestPool {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pool");
        let tp = TestPool { tmp, dir };
        thinpool(&[
            "pool",
            "create",
            tp.p(),
            "--size",
            size,
            "--block-size",
            block_size,
        ])
        .ok();
        tp
    }

    /// The pool directory as a string argument.
    pub fn p(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// A path for a scratch file next to the pool.
    pub fn file(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Write `data` to a scratch file; returns its path as a string.
    pub fn put(&self, name: &str, data: &[u8]) -> String {
        let p = self.file(name);
        std::fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    }

    /// `thinpool ARGS...` with `{}` in any argument replaced by the pool directory.
    pub fn run(&self, args: &[&str]) -> Out {
        self.run_in(args, None)
    }

    pub fn run_in(&self, args: &[&str], stdin: Option<&[u8]>) -> Out {
        let args: Vec<String> = args.iter().map(|a| a.replace("{}", self.p())).collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        thinpool_in(&refs, stdin)
    }

    pub fn info(&self) -> Value {
        thinpool(&["pool", "info", self.p(), "--json"]).ok().json()
    }

    pub fn list(&self) -> Value {
        thinpool(&["list", self.p(), "--json"]).ok().json()
    }

    /// Everything a failed command must leave as it was.
    pub fn state(&self) -> (Value, Value) {
        (self.info(), self.list())
    }

    /// One volume's `info --json`.
    pub fn vol(&self, name: &str) -> Value {
        thinpool(&["info", self.p(), "--json", "--", name])
            .ok()
            .json()
    }

    /// Read a range of a volume through the CLI (to stdout).
    pub fn read(&self, vol: &str, offset: u64, len: u64) -> Vec<u8> {
        let (o, l) = (offset.to_string(), len.to_string());
        thinpool(&["read", self.p(), "--offset", &o, "--length", &l, "--", vol])
            .ok()
            .stdout
    }

    /// Run the library's checker on the pool's metadata; panics with its findings if any.
    pub fn check_clean(&self) {
        let dev = thinpool::io::FileDev::open(&self.dir.join("metadata"), false).unwrap();
        let data = thinpool::io::FileDev::open(&self.dir.join("data"), false).unwrap();
        let report = thinpool::check::check_with_data(
            std::sync::Arc::new(dev),
            thinpool::io::BlockDev::len(&data),
            None,
        );
        assert!(
            report.is_clean(),
            "checker found errors: {}",
            report.to_json()
        );
    }
}

/// A recognizable, non-repeating-per-block byte pattern.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// Sorted keys of a JSON object.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}
