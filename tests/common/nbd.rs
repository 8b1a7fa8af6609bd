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

#[path = "tools.rs"]
mod tools;
#[allow(unused_imports)] // not every NBD test drives an external client
pub use tools::have_tools;

pub const MIB: u64 = 1 << 20;

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

/// A handler that understands just enough commands (in the CLI's syntax) to test the
/// control path: `snapshot POOL SRC NEW`, `remove POOL VOL [--force]`, `list POOL`. It has
/// no attached-volume guard (that is the CLI's, see [`Server::start_cli`]).
pub fn test_handler() -> ControlHandler {
    Box::new(|pool, argv, _attached, out, err| {
        let a: Vec<&str> = argv.iter().map(|s| s.as_str()).collect();
        let r = match a.get(1..).unwrap_or(&[]) {
            ["snapshot", _, src, new] => pool.snapshot(src, new, true).map(|_| ()),
            ["remove", _, vol, ..] => pool.remove_volume(vol),
            ["list", _] => pool.volumes().map(|v| {
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
        Self::start_with_handler(opts, test_handler())
    }

    /// A server whose control socket runs the real CLI (`thinpool::cli::run_in_pool`).
    pub fn start_cli(dir: &Path) -> Server {
        Self::start_with_handler(ServeOptions::new(dir), Box::new(thinpool::cli::run_in_pool))
    }

    pub fn start_with_handler(opts: ServeOptions, handler: ControlHandler) -> Server {
        let dir = opts.pool_dir.clone();
        let socket = opts.socket.clone().unwrap_or_else(|| dir.join("nbd.sock"));
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || serve_until(opts, handler, s2));
        let t0 = Instant::now();
        // Connectable, not merely present: a stale socket file may exist before the start.
        let up = |p: &Path| std::os::unix::net::UnixStream::connect(p).is_ok();
        while !up(&socket) || !up(&dir.join("control.sock")) {
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

/// A minimal raw NBD client for protocol tests (speaks just enough to misbehave on purpose).
pub mod raw {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::Path;
    use std::time::Duration;

    pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
    pub const REQ_MAGIC: u32 = 0x2560_9513;
    pub const SIMPLE: u32 = 0x6744_6698;
    pub const STRUCTURED: u32 = 0x668e_33ef;
    pub const OPT_GO: u32 = 7;
    pub const OPT_STRUCTURED: u32 = 8;
    pub const OPT_SET_META: u32 = 10;
    pub const REP_ACK: u32 = 1;
    pub const REP_INFO: u32 = 3;
    pub const REP_META: u32 = 4;
    pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
    pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
    pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

    /// Over a unix socket, or any other byte stream (a TLS session over one).
    pub struct Raw<S: Read + Write = UnixStream> {
        pub s: S,
        pub flags: u16,
        pub size: u64,
    }

    pub struct Chunk {
        pub flags: u16,
        pub kind: u16,
        pub handle: u64,
        pub payload: Vec<u8>,
    }

    impl Raw {
        /// Connect and read the server greeting.
        pub fn connect(sock: &Path) -> Raw {
            let mut s = UnixStream::connect(sock).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut g = [0u8; 18];
            s.read_exact(&mut g).unwrap();
            assert_eq!(&g[..8], b"NBDMAGIC");
            assert_eq!(&g[8..16], b"IHAVEOPT");
            Raw::over(s)
        }
        /// Full handshake: flags, optionally structured replies + base:allocation, GO.
        pub fn attach(sock: &Path, name: &str, structured: bool) -> Raw {
            let mut c = Raw::connect(sock);
            c.send(&3u32.to_be_bytes()); // FIXED_NEWSTYLE | NO_ZEROES
            if structured {
                c.option(OPT_STRUCTURED, &[]);
                assert_eq!(c.option_reply().1, REP_ACK);
                c.option(OPT_SET_META, &Raw::meta_data(name, &["base:allocation"]));
                assert_eq!(c.option_reply().1, REP_META);
                assert_eq!(c.option_reply().1, REP_ACK);
            }
            c.go(name).unwrap();
            c
        }
        pub fn go_data(name: &str) -> Vec<u8> {
            let mut d = (name.len() as u32).to_be_bytes().to_vec();
            d.extend_from_slice(name.as_bytes());
            d.extend_from_slice(&0u16.to_be_bytes());
            d
        }
        /// The payload of NBD_OPT_LIST/SET_META_CONTEXT: export `name`, then `queries`.
        pub fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
            let mut d = (name.len() as u32).to_be_bytes().to_vec();
            d.extend_from_slice(name.as_bytes());
            d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
            for q in queries {
                d.extend_from_slice(&(q.len() as u32).to_be_bytes());
                d.extend_from_slice(q.as_bytes());
            }
            d
        }
    }

    impl<S: Read + Write> Raw<S> {
        /// A client on `s`, past the greeting.
        pub fn over(s: S) -> Raw<S> {
            Raw {
                s,
                flags: 0,
                size: 0,
            }
        }
        pub fn send(&mut self, b: &[u8]) {
            self.s.write_all(b).unwrap();
            self.s.flush().unwrap();
        }
        pub fn u16(&mut self) -> u16 {
            let mut b = [0u8; 2];
            self.s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b)
        }
        pub fn u32(&mut self) -> u32 {
            let mut b = [0u8; 4];
            self.s.read_exact(&mut b).unwrap();
            u32::from_be_bytes(b)
        }
        pub fn u64(&mut self) -> u64 {
            let mut b = [0u8; 8];
            self.s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b)
        }
        pub fn bytes(&mut self, n: usize) -> Vec<u8> {
            let mut v = vec![0u8; n];
            self.s.read_exact(&mut v).unwrap();
            v
        }
        /// True when the server closed the connection (EOF) within the timeout.
        pub fn closed(&mut self) -> bool {
            let mut b = [0u8; 1];
            match self.s.read(&mut b) {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        }
        pub fn option(&mut self, opt: u32, data: &[u8]) {
            let mut b = IHAVEOPT.to_be_bytes().to_vec();
            b.extend_from_slice(&opt.to_be_bytes());
            b.extend_from_slice(&(data.len() as u32).to_be_bytes());
            b.extend_from_slice(data);
            self.send(&b);
        }
        /// One option reply: (option, reply type, payload).
        pub fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
            assert_eq!(self.u64(), 0x0003_e889_0455_65a9);
            let opt = self.u32();
            let ty = self.u32();
            let len = self.u32() as usize;
            (opt, ty, self.bytes(len))
        }
        /// NBD_OPT_GO; Ok(()) once attached, Err(reply type) on an error reply.
        pub fn go(&mut self, name: &str) -> Result<(), u32> {
            self.option(OPT_GO, &Raw::<UnixStream>::go_data(name));
            loop {
                let (_, ty, p) = self.option_reply();
                match ty {
                    REP_INFO => {
                        if u16::from_be_bytes([p[0], p[1]]) == 0 {
                            self.size = u64::from_be_bytes(p[2..10].try_into().unwrap());
                            self.flags = u16::from_be_bytes([p[10], p[11]]);
                        }
                    }
                    REP_ACK => return Ok(()),
                    t => return Err(t),
                }
            }
        }
        pub fn request(
            &mut self,
            flags: u16,
            kind: u16,
            handle: u64,
            off: u64,
            len: u32,
            payload: &[u8],
        ) {
            self.send_request(
                REQ_MAGIC,
                flags,
                kind,
                handle,
                off,
                &len.to_be_bytes(),
                payload,
            );
        }
        /// The same as an extended request (after NBD_OPT_EXTENDED_HEADERS): 64-bit length.
        pub fn ext_request(
            &mut self,
            flags: u16,
            kind: u16,
            handle: u64,
            off: u64,
            len: u64,
            payload: &[u8],
        ) {
            self.send_request(
                0x21e4_1c71,
                flags,
                kind,
                handle,
                off,
                &len.to_be_bytes(),
                payload,
            );
        }
        #[allow(clippy::too_many_arguments)]
        fn send_request(
            &mut self,
            magic: u32,
            flags: u16,
            kind: u16,
            handle: u64,
            off: u64,
            len: &[u8],
            payload: &[u8],
        ) {
            let mut b = magic.to_be_bytes().to_vec();
            for field in [
                &flags.to_be_bytes()[..],
                &kind.to_be_bytes(),
                &handle.to_be_bytes(),
            ] {
                b.extend_from_slice(field);
            }
            b.extend_from_slice(&off.to_be_bytes());
            b.extend_from_slice(len);
            b.extend_from_slice(payload);
            self.send(&b);
        }
        /// A simple reply: (error, handle); a read's data follows it on the stream.
        pub fn simple(&mut self) -> (u32, u64) {
            assert_eq!(self.u32(), SIMPLE);
            let err = self.u32();
            (err, self.u64())
        }
        pub fn chunk(&mut self) -> Chunk {
            assert_eq!(self.u32(), STRUCTURED);
            let flags = self.u16();
            let kind = self.u16();
            let handle = self.u64();
            let len = self.u32() as usize;
            Chunk {
                flags,
                kind,
                handle,
                payload: self.bytes(len),
            }
        }
        pub fn write(&mut self, handle: u64, off: u64, data: &[u8]) -> u32 {
            self.request(0, 1, handle, off, data.len() as u32, data);
            let (e, h) = self.simple();
            assert_eq!(h, handle);
            e
        }
        /// Read with simple replies.
        pub fn read(&mut self, handle: u64, off: u64, len: u32) -> Result<Vec<u8>, u32> {
            self.request(0, 0, handle, off, len, &[]);
            let (e, h) = self.simple();
            assert_eq!(h, handle);
            if e != 0 {
                return Err(e);
            }
            Ok(self.bytes(len as usize))
        }
    }
}
