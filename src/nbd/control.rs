//! The control socket (`POOL/control.sock`, mode 0600): how other `thinpool` processes run
//! commands inside a serving process, which holds the pool's lock.
//!
//! Wire format (ours, big-endian), one request and one response per connection:
//! - request: magic `TPCTL001`, `u32` argc, then per argument `u32` length and UTF-8 bytes;
//! - response: magic, `i32` exit code, `u32` length + stdout bytes, `u32` length + stderr.
//!
//! The command runs with the pool lock held, i.e. between NBD requests, so it sees every
//! write completed before it. The handler is told how many NBD connections have each volume
//! attached: the CLI refuses `remove`/`rollback` of an attached volume unless `--force` is
//! given (it decides on the parsed command, see `cli::Command::guarded_volumes`).

use super::shared::Shared;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

/// What a forwarded command returned.
pub struct Forwarded {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

pub const SOCKET_NAME: &str = "control.sock";
const MAGIC: &[u8; 8] = b"TPCTL001";
const MAX_ARGS: u32 = 4096;
const MAX_ARG_LEN: u32 = 64 << 10;
/// Largest stdout or stderr a client accepts (a `list --json` of a huge pool fits).
const MAX_OUTPUT: u32 = 256 << 20;

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_bytes(r: &mut impl Read, max: u32) -> io::Result<Vec<u8>> {
    let n = read_u32(r)?;
    if n > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("control message field of {n} bytes is too large"),
        ));
    }
    let mut v = vec![0u8; n as usize];
    r.read_exact(&mut v)?;
    Ok(v)
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn read_magic(r: &mut impl Read) -> io::Result<()> {
    let mut m = [0u8; 8];
    r.read_exact(&mut m)?;
    if &m != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a thinpool control message (version mismatch between thinpool binaries?)",
        ));
    }
    Ok(())
}

/// Client side: run `argv` inside the server holding `pool_dir`, if there is one.
pub fn forward(pool_dir: &Path, argv: &[String]) -> io::Result<Option<Forwarded>> {
    let path = pool_dir.join(SOCKET_NAME);
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        // No server, or a socket left behind by one that died.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("connect to {}: {e}", path.display()),
            ))
        }
    };
    let mut req = MAGIC.to_vec();
    req.extend_from_slice(&(argv.len() as u32).to_be_bytes());
    for a in argv {
        put_bytes(&mut req, a.as_bytes());
    }
    s.write_all(&req)?;
    let mut r = io::BufReader::new(s);
    let lost = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!(
                "the `thinpool serve` holding {} did not answer ({e}); the command may or may \
                 not have run",
                pool_dir.display()
            ),
        )
    };
    read_magic(&mut r).map_err(lost)?;
    let code = read_u32(&mut r).map_err(lost)? as i32;
    let stdout = read_bytes(&mut r, MAX_OUTPUT).map_err(lost)?;
    let stderr = read_bytes(&mut r, MAX_OUTPUT).map_err(lost)?;
    Ok(Some(Forwarded {
        code,
        stdout,
        stderr,
    }))
}

fn read_request(s: &mut UnixStream) -> io::Result<Vec<String>> {
    let mut r = io::BufReader::new(s);
    read_magic(&mut r)?;
    let argc = read_u32(&mut r)?;
    if argc > MAX_ARGS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many arguments",
        ));
    }
    let mut argv = Vec::with_capacity(argc as usize);
    for _ in 0..argc {
        let b = read_bytes(&mut r, MAX_ARG_LEN)?;
        let a = String::from_utf8(b)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "argument is not UTF-8"))?;
        argv.push(a);
    }
    Ok(argv)
}

/// Server side: answer one control connection.
pub fn serve_one(shared: &Shared, mut s: UnixStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let argv = match read_request(&mut s) {
        Ok(a) => a,
        Err(e) => {
            respond(
                &mut s,
                2,
                b"",
                format!("thinpool serve: bad control request: {e}\n").as_bytes(),
            );
            return;
        }
    };
    if argv.get(1).map(String::as_str) == Some(super::stats::STATS_REQUEST) {
        // Counters only: no pool lock, no pause of the data path.
        let (code, out, err) = match serde_json::to_vec(&shared.io_stats().sample()) {
            Ok(v) => (0, v, Vec::new()),
            Err(e) => (1, Vec::new(), format!("thinpool serve: {e}\n").into_bytes()),
        };
        respond(&mut s, code, &out, &err);
        return;
    }
    let (code, out, err) = match shared.pool().exclusive_synced() {
        Err(_) => (
            1,
            Vec::new(),
            b"thinpool serve: the pool is unusable after an internal error; restart the server\n"
                .to_vec(),
        ),
        Ok(mut ex) => {
            let pool = &mut *ex.pool;
            let (mut out, mut err) = (Vec::new(), Vec::new());
            // No data request is in flight (exclusive), so the command runs, and may commit
            // on its own, as in a process of its own.
            let attached = |id| shared.attached(id);
            let r = catch_unwind(AssertUnwindSafe(|| {
                (shared.handler())(&mut *pool, &argv, &attached, &mut out, &mut err)
            }));
            match r {
                Ok(code) => (code, out, err),
                Err(_) => {
                    err.extend_from_slice(b"thinpool serve: internal error running the command\n");
                    (101, out, err)
                }
            }
        }
    };
    respond(&mut s, code, &out, &err);
}

fn respond(s: &mut UnixStream, code: i32, out: &[u8], err: &[u8]) {
    let mut msg = MAGIC.to_vec();
    msg.extend_from_slice(&code.to_be_bytes());
    put_bytes(&mut msg, out);
    put_bytes(&mut msg, err);
    // The client may have given up; nothing to do about it here.
    let _ = s.write_all(&msg);
}
