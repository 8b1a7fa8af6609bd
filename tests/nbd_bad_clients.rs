//! Misbehaving clients on raw sockets: malformed handshakes and requests get error replies
//! or a clean disconnect, and never disturb a well-behaved connection running alongside.

#[path = "common/nbd.rs"]
mod nbd_util;
use nbd_util::raw::*;
use nbd_util::*;
use std::io::Write;
use std::path::Path;

const EPERM: u32 = 1;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

/// The well-behaved client: writes a block and reads it back.
fn good_roundtrip(c: &mut Raw, seed: u8) {
    let data: Vec<u8> = (0..5000u32).map(|i| (i as u8) ^ seed).collect();
    assert_eq!(c.write(seed as u64, 70_000, &data), 0);
    assert_eq!(c.read(1000 + seed as u64, 70_000, 5000).unwrap(), data);
}

fn setup() -> (tempfile::TempDir, Server, Raw) {
    let t = make_pool(&[("vol", 8 * MIB), ("other", MIB)], 64 << 10);
    let srv = Server::start(&pool_dir(&t));
    let good = Raw::attach(&srv.socket, "vol", false);
    (t, srv, good)
}

#[test]
fn malformed_handshakes() {
    let (_t, srv, mut good) = setup();
    let sock: &Path = &srv.socket;

    // Unknown client flags: the server must close.
    let mut c = Raw::connect(sock);
    c.send(&0x8000_0001u32.to_be_bytes());
    assert!(c.closed());
    good_roundtrip(&mut good, 1);

    // Bad option magic.
    let mut c = Raw::connect(sock);
    c.send(&1u32.to_be_bytes());
    c.send(b"IHAVEOPX\0\0\0\x07\0\0\0\0");
    assert!(c.closed());
    good_roundtrip(&mut good, 2);

    // Unknown option: NBD_REP_ERR_UNSUP, then the session goes on and GO works.
    let mut c = Raw::connect(sock);
    c.send(&1u32.to_be_bytes());
    c.option(0x7777, b"junk");
    let (opt, ty, _) = c.option_reply();
    assert_eq!((opt, ty), (0x7777, REP_ERR_UNSUP));
    // Malformed GO (name length past the payload): ERR_INVALID.
    c.option(OPT_GO, &[0, 0, 1, 0, b'x']);
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    // Unknown export: ERR_UNKNOWN, with a message.
    let (_, ty, msg) = {
        c.option(OPT_GO, &Raw::go_data("nope"));
        c.option_reply()
    };
    assert_eq!(ty, REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&msg).contains("nope"));
    // STRUCTURED_REPLY with data is invalid.
    c.option(OPT_STRUCTURED, b"x");
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    c.go("vol").unwrap();
    assert_eq!(c.size, 8 * MIB);
    good_roundtrip(&mut c, 3);

    // Huge option length: refused without reading it into memory.
    let mut c = Raw::connect(sock);
    c.send(&1u32.to_be_bytes());
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&OPT_GO.to_be_bytes());
    b.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
    c.send(&b);
    assert!(c.closed());

    // Truncated option, then the client vanishes.
    let mut c = Raw::connect(sock);
    c.send(&1u32.to_be_bytes());
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&OPT_GO.to_be_bytes());
    b.extend_from_slice(&100u32.to_be_bytes());
    b.extend_from_slice(&[0; 10]);
    c.send(&b);
    drop(c);
    // Connect and say nothing, then vanish.
    drop(Raw::connect(sock));

    good_roundtrip(&mut good, 4);
    // NBD_OPT_EXPORT_NAME of an unknown export closes; of a known one attaches.
    let mut c = Raw::connect(sock);
    c.send(&3u32.to_be_bytes());
    c.option(1, b"nope");
    assert!(c.closed());
    let mut c = Raw::connect(sock);
    c.send(&3u32.to_be_bytes());
    c.option(1, b"other");
    assert_eq!(c.u64(), MIB);
    let _flags = c.u16();
    good_roundtrip(&mut c, 5);
    srv.stop().unwrap();
}

#[test]
fn malformed_requests() {
    let (_t, srv, mut good) = setup();
    let mut c = Raw::attach(&srv.socket, "vol", false);
    let size = c.size;

    // Out of range: read EINVAL, write ENOSPC (and its payload is consumed).
    assert_eq!(c.read(1, size - 10, 20), Err(EINVAL));
    assert_eq!(c.write(2, size - 10, &[7; 20]), ENOSPC);
    assert_eq!(c.read(3, size, 1), Err(EINVAL));
    // offset + length overflows.
    assert_eq!(c.read(4, u64::MAX - 5, 100), Err(EINVAL));
    c.request(0, 4, 5, u64::MAX, 10, &[]); // trim
    assert_eq!(c.simple(), (EINVAL, 5));
    // Unknown command, unknown flags, flags not valid for the command.
    c.request(0, 42, 6, 0, 0, &[]);
    assert_eq!(c.simple(), (EINVAL, 6));
    c.request(0x4000, 0, 7, 0, 512, &[]);
    assert_eq!(c.simple(), (EINVAL, 7));
    c.request(2, 0, 8, 0, 512, &[]); // NO_HOLE on a read
    assert_eq!(c.simple(), (EINVAL, 8));
    // Block status without a negotiated context.
    c.request(0, 7, 9, 0, 512, &[]);
    assert_eq!(c.simple(), (EINVAL, 9));
    // Read larger than the 32 MiB maximum.
    assert_eq!(c.read(10, 0, (32 << 20) + 1), Err(EINVAL));
    good_roundtrip(&mut good, 6);
    // Write larger than the maximum: its payload is skipped, EINVAL, and we stay in sync.
    let big = vec![0x55u8; (32 << 20) + 4096];
    assert_eq!(c.write(11, 0, &big), EINVAL);
    assert_eq!(c.read(12, 0, 4096).unwrap(), vec![0; 4096]);
    // Zero-length requests are fine.
    assert_eq!(c.read(13, 0, 0).unwrap(), Vec::<u8>::new());
    assert_eq!(c.write(14, 100, &[]), 0);
    good_roundtrip(&mut c, 7);

    // Pipelining: many requests in flight, replies matched by handle in any order.
    let n = 200u64;
    let mut batch = Vec::new();
    for i in 0..n {
        let mut b = REQ_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&(1000 + i).to_be_bytes());
        b.extend_from_slice(&(i * 4096).to_be_bytes());
        b.extend_from_slice(&4096u32.to_be_bytes());
        b.extend_from_slice(&[i as u8; 4096]);
        batch.extend_from_slice(&b);
    }
    c.s.write_all(&batch).unwrap();
    let mut seen: Vec<u64> = (0..n)
        .map(|_| c.simple())
        .map(|(e, h)| {
            assert_eq!(e, 0);
            h
        })
        .collect();
    seen.sort();
    assert_eq!(seen, (1000..1000 + n).collect::<Vec<_>>());
    for i in (0..n).step_by(37) {
        assert_eq!(
            c.read(5000 + i, i * 4096, 4096).unwrap(),
            vec![i as u8; 4096]
        );
    }

    // Bad request magic: hard disconnect (framing is lost).
    c.send(&[0xde, 0xad, 0xbe, 0xef]);
    c.send(&[0; 24]);
    assert!(c.closed());
    // Truncated request, then gone.
    let mut c = Raw::attach(&srv.socket, "vol", false);
    c.request(0, 1, 1, 0, 4096, &[1; 100]);
    drop(c);
    good_roundtrip(&mut good, 8);
    // NBD_CMD_DISC: the server closes after answering what is in flight.
    let mut c = Raw::attach(&srv.socket, "vol", false);
    c.request(0, 1, 1, 0, 10, &[9; 10]);
    c.request(0, 2, 2, 0, 0, &[]);
    assert_eq!(c.simple(), (0, 1));
    assert!(c.closed());
    good_roundtrip(&mut good, 9);
    srv.stop().unwrap();
}

#[test]
fn structured_replies_and_block_status() {
    let (_t, srv, _good) = setup();
    let mut c = Raw::attach(&srv.socket, "vol", true);
    let bs = 64 * 1024u64;
    assert_eq!(c.write(1, 2 * bs + 10, &[0xaa; 100]), 0);
    // Read across hole / data / hole: chunks cover the range exactly, holes as OFFSET_HOLE.
    c.request(0, 0, 2, bs, 3 * bs as u32, &[]);
    let mut covered = Vec::new();
    loop {
        let ch = c.chunk();
        assert_eq!(ch.handle, 2);
        let off = u64::from_be_bytes(ch.payload[..8].try_into().unwrap());
        match ch.kind {
            1 => {
                let data = &ch.payload[8..];
                let rel = (2 * bs + 10 - off) as usize;
                assert_eq!(&data[rel..rel + 100], &[0xaa; 100][..]);
                covered.push((off, data.len() as u64, true));
            }
            2 => {
                let n = u32::from_be_bytes(ch.payload[8..12].try_into().unwrap());
                covered.push((off, n as u64, false));
            }
            k => panic!("unexpected chunk type {k}"),
        }
        if ch.flags & 1 != 0 {
            break;
        }
    }
    assert_eq!(
        covered,
        vec![(bs, bs, false), (2 * bs, bs, true), (3 * bs, bs, false)]
    );
    // Don't-fragment read: one data chunk with the zeros present.
    c.request(4, 0, 3, bs, 3 * bs as u32, &[]);
    let ch = c.chunk();
    assert_eq!((ch.kind, ch.flags & 1), (1, 1));
    assert_eq!(ch.payload.len() as u64, 8 + 3 * bs);
    // Block status: hole, data, hole.
    c.request(0, 7, 4, 0, 4 * bs as u32, &[]);
    let ch = c.chunk();
    assert_eq!((ch.kind, ch.flags & 1), (5, 1));
    let p = &ch.payload;
    assert_eq!(u32::from_be_bytes(p[0..4].try_into().unwrap()), 1);
    let ext: Vec<(u32, u32)> = p[4..]
        .chunks(8)
        .map(|d| {
            (
                u32::from_be_bytes(d[0..4].try_into().unwrap()),
                u32::from_be_bytes(d[4..8].try_into().unwrap()),
            )
        })
        .collect();
    let b = bs as u32;
    assert_eq!(ext, vec![(2 * b, 3), (b, 0), (b, 3)]);
    // REQ_ONE: only the first extent; unaligned start.
    c.request(8, 7, 5, 100, 4 * bs as u32, &[]);
    let ch = c.chunk();
    assert_eq!(ch.payload.len(), 12);
    assert_eq!(
        u32::from_be_bytes(ch.payload[4..8].try_into().unwrap()),
        2 * b - 100
    );
    // Errors arrive as error chunks with a message.
    c.request(0, 0, 6, c.size, 1, &[]);
    let ch = c.chunk();
    assert_eq!((ch.kind, ch.flags & 1), (32769, 1));
    assert_eq!(
        u32::from_be_bytes(ch.payload[0..4].try_into().unwrap()),
        EINVAL
    );
    c.request(0, 7, 7, c.size - 10, 20, &[]);
    assert_eq!(c.chunk().kind, 32769);
    // Non-read commands may get simple replies.
    c.request(0, 3, 8, 0, 0, &[]);
    assert_eq!(c.simple(), (0, 8));
    srv.stop().unwrap();
}

#[test]
fn read_only_exports_refuse_writes() {
    let t = make_pool(&[("vol", 4 * MIB)], 64 << 10);
    let mut o = thinpool::nbd::ServeOptions::new(pool_dir(&t));
    o.read_only = true;
    let srv = Server::start_with(o);
    let mut c = Raw::attach(&srv.socket, "vol", false);
    assert_ne!(c.flags & 2, 0, "READ_ONLY flag");
    assert_eq!(c.write(1, 0, &[1; 512]), EPERM);
    c.request(0, 4, 2, 0, 512, &[]);
    assert_eq!(c.simple(), (EPERM, 2));
    c.request(0, 6, 3, 0, 512, &[]);
    assert_eq!(c.simple(), (EPERM, 3));
    assert_eq!(c.read(4, 0, 512).unwrap(), vec![0; 512]);
    srv.stop().unwrap();
}

#[test]
fn exports_list_limits_what_clients_see() {
    let t = make_pool(&[("a", MIB), ("b", MIB)], 64 << 10);
    let mut o = thinpool::nbd::ServeOptions::new(pool_dir(&t));
    o.exports = vec!["b".into()];
    let srv = Server::start_with(o);
    let mut c = Raw::connect(&srv.socket);
    c.send(&1u32.to_be_bytes());
    c.option(3, &[]); // LIST
    let (_, ty, p) = c.option_reply();
    assert_eq!(ty, 2);
    assert_eq!(&p[4..], b"b");
    assert_eq!(c.option_reply().1, REP_ACK);
    assert_eq!(c.go("a"), Err(REP_ERR_UNKNOWN));
    // The empty name means the only export.
    c.go("").unwrap();
    assert_eq!(c.size, MIB);
    srv.stop().unwrap();
}

/// Idle clients cannot lock others out: when the server is full, the connection idle
/// longest is closed to admit a new one once it has been idle for `evict_idle` (issue 10:
/// 512 idle attached connections used to lock every other client out indefinitely).
#[test]
fn idle_connections_make_room_when_the_server_is_full() {
    let t = make_pool(&[("vol", 8 * MIB)], 64 << 10);
    let mut opts = thinpool::nbd::ServeOptions::new(pool_dir(&t));
    opts.max_connections = 3;
    opts.evict_idle = std::time::Duration::from_millis(800);
    let srv = Server::start_with(opts);
    let mut busy = Raw::attach(&srv.socket, "vol", false);
    let idle: Vec<Raw> = (0..2)
        .map(|_| Raw::attach(&srv.socket, "vol", false))
        .collect();
    // Full, and nobody has been idle long: a fourth client is refused at once.
    let mut c = std::os::unix::net::UnixStream::connect(&srv.socket).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut c, &mut b).unwrap(), 0, "admitted");
    // The busy client keeps working; the idle ones pass the limit.
    for i in 0..6 {
        std::thread::sleep(std::time::Duration::from_millis(200));
        good_roundtrip(&mut busy, i + 10);
    }
    let mut newcomer = Raw::attach(&srv.socket, "vol", false);
    good_roundtrip(&mut newcomer, 20);
    good_roundtrip(&mut busy, 21);
    // One of the idle connections was closed to make room.
    let closed = idle
        .into_iter()
        .filter(|r| {
            r.s.set_read_timeout(Some(std::time::Duration::from_millis(300)))
                .unwrap();
            true
        })
        .filter_map(|mut r| r.closed().then_some(()))
        .count();
    assert_eq!(closed, 1);
    srv.stop().unwrap();
}

/// Reads longer than 1 MiB are read and sent a piece at a time (docs/nbd.md, "Memory"):
/// simple, structured and don't-fragment replies still carry exactly the volume's bytes,
/// with pipelined long and short reads on one connection.
#[test]
fn long_reads_arrive_whole_in_every_reply_form() {
    let (_t, srv, mut good) = setup();
    let bs = 64 * 1024u64;
    // Every third block written with its own pattern, the rest holes.
    let mut want = vec![0u8; 8 * MIB as usize];
    for b in (0..128u64).step_by(3) {
        let data: Vec<u8> = (0..bs)
            .map(|i| (i as u8).wrapping_mul(7) ^ b as u8)
            .collect();
        assert_eq!(good.write(b, b * bs, &data), 0);
        want[(b * bs) as usize..((b + 1) * bs) as usize].copy_from_slice(&data);
    }
    let (off, len) = (bs + 4096, 5 * MIB as u32 + 777);
    let expect = &want[off as usize..off as usize + len as usize];
    // Simple replies, two long reads and a short one in flight at once.
    good.request(0, 0, 1, off, len, &[]);
    good.request(0, 0, 2, 0, 100, &[]);
    good.request(0, 0, 3, off, len, &[]);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (e, h) = good.simple();
        assert_eq!(e, 0);
        let n = if h == 2 { 100 } else { len as usize };
        let got = good.bytes(n);
        if h == 2 {
            assert_eq!(got, &want[..100]);
        } else {
            assert!(got == expect, "simple long read {h} differs");
        }
        seen.push(h);
    }
    seen.sort();
    assert_eq!(seen, vec![1, 2, 3]);
    // Structured: data and hole chunks cover the range in order, with the right bytes.
    let mut c = Raw::attach(&srv.socket, "vol", true);
    c.request(0, 0, 4, off, len, &[]);
    let mut pos = off;
    loop {
        let ch = c.chunk();
        assert_eq!(ch.handle, 4);
        let at = u64::from_be_bytes(ch.payload[..8].try_into().unwrap());
        assert_eq!(at, pos, "chunks out of order or with gaps");
        let n = match ch.kind {
            1 => {
                let d = &ch.payload[8..];
                assert!(d == &want[at as usize..at as usize + d.len()]);
                d.len() as u64
            }
            2 => {
                let n = u32::from_be_bytes(ch.payload[8..12].try_into().unwrap()) as u64;
                assert!(want[at as usize..(at + n) as usize].iter().all(|&b| b == 0));
                n
            }
            k => panic!("unexpected chunk type {k}"),
        };
        pos += n;
        if ch.flags & 1 != 0 {
            break;
        }
    }
    assert_eq!(pos, off + len as u64, "the chunks do not cover the read");
    // Don't fragment: one data chunk with every byte.
    c.request(4, 0, 5, off, len, &[]);
    let ch = c.chunk();
    assert_eq!((ch.kind, ch.flags & 1), (1, 1));
    assert!(&ch.payload[8..] == expect);
    good_roundtrip(&mut good, 3);
    srv.stop().unwrap();
}

/// A client's TRIM gives its space back to the filesystem within two commit intervals
/// with no further writes: the timer commits once more after a commit that freed blocks
/// (they can be punched only then). It once waited for the next mapping change.
#[test]
fn trimmed_space_returns_to_the_filesystem_on_an_idle_server() {
    use std::os::unix::fs::MetadataExt;
    let t = make_pool(&[("vol", 8 * MIB)], 64 << 10);
    let dir = pool_dir(&t);
    let mut opts = thinpool::nbd::ServeOptions::new(&dir);
    opts.commit_interval = std::time::Duration::from_millis(100);
    let srv = Server::start_with(opts);
    let mut c = Raw::attach(&srv.socket, "vol", false);
    let chunk = vec![0x77u8; MIB as usize];
    for i in 0..8u64 {
        assert_eq!(c.write(i, i * MIB, &chunk), 0);
    }
    c.request(0, 3, 100, 0, 0, &[]); // FLUSH
    assert_eq!(c.simple(), (0, 100));
    let held = || std::fs::metadata(dir.join("data")).unwrap().blocks() * 512;
    let full = held();
    assert!(full >= 8 * MIB, "data file holds {full} bytes");
    c.request(0, 4, 101, 0, 8 * MIB as u32, &[]); // TRIM
    assert_eq!(c.simple(), (0, 101));
    let t0 = std::time::Instant::now();
    while held() > full - 8 * MIB {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "5 s after a TRIM of 8 MiB the data file still holds {} of {full} bytes",
            held()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    println!("trimmed space returned in {:?}", t0.elapsed());
    good_roundtrip(&mut c, 4);
    srv.stop().unwrap();
}

/// Reads, once armed, wait until `want` of them are inside at once (or 10 s pass: then they
/// fail, and the server replies EIO).
struct Rendezvous {
    armed: std::sync::atomic::AtomicBool,
    want: usize,
    /// (reads inside now, most inside at once, everyone released)
    state: std::sync::Mutex<(usize, usize, bool)>,
    cv: std::sync::Condvar,
}

impl thinpool::io::hooked::Hooks for Rendezvous {
    fn before_read(&self, _offset: u64, _len: usize) -> std::io::Result<()> {
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            let mut st = self.state.lock().unwrap();
            st.0 += 1;
            st.1 = st.1.max(st.0);
            if st.0 >= self.want {
                st.2 = true;
                self.cv.notify_all();
            }
            let (mut st, _) = self
                .cv
                .wait_timeout_while(st, std::time::Duration::from_secs(10), |s| !s.2)
                .unwrap();
            let released = st.2;
            st.0 -= 1;
            if !released {
                return Err(std::io::Error::other("fewer reads in flight than wanted"));
            }
        }
        Ok(())
    }
}

/// Requests that block on the disk (O_DIRECT, a cold page cache) are all in flight at
/// once, up to 16 per connection: a client at queue depth 16 whose reads each wait for the
/// device gets 16 at the device, not one per worker the connection started with (it had
/// four, and 4k random reads at queue depth 16 through `serve --direct` had four in flight).
#[test]
fn reads_that_block_on_the_device_are_all_in_flight_together() {
    use std::io::Read;
    use std::sync::Arc;
    use thinpool::io::{BlockDev, MemDev};
    use thinpool::pool::{CreateOptions, Pool};
    const N: usize = 16;
    const BS: u64 = 64 << 10;
    let data = Arc::new(thinpool::io::hooked::Hooked::new(
        MemDev::new(64 << 20).unwrap(),
        Rendezvous {
            armed: false.into(),
            want: N,
            state: Default::default(),
            cv: Default::default(),
        },
    ));
    let meta: Arc<dyn BlockDev> = Arc::new(MemDev::new(16 << 20).unwrap());
    let mut o = CreateOptions::new(32 << 20);
    o.block_size = BS;
    let mut p = Pool::create_on(meta, data.clone(), &o).unwrap();
    let v = p.create_volume("v", N as u64 * BS, false).unwrap();
    for i in 0..N as u64 {
        p.write(v, i * BS, &vec![i as u8 + 1; BS as usize]).unwrap();
    }
    p.commit().unwrap();
    let srv = thinpool::fuzzing::NbdServer::new(p, false);
    data.armed.store(true, std::sync::atomic::Ordering::SeqCst);

    // Handshake flags, NBD_OPT_GO, N reads of 4 KiB (one per block), then NBD_CMD_DISC.
    let mut c = 3u32.to_be_bytes().to_vec();
    c.extend_from_slice(&IHAVEOPT.to_be_bytes());
    c.extend_from_slice(&OPT_GO.to_be_bytes());
    let go = Raw::go_data("v");
    c.extend_from_slice(&(go.len() as u32).to_be_bytes());
    c.extend_from_slice(&go);
    let req = |c: &mut Vec<u8>, kind: u16, handle: u64, off: u64, len: u32| {
        c.extend_from_slice(&REQ_MAGIC.to_be_bytes());
        c.extend_from_slice(&0u16.to_be_bytes());
        c.extend_from_slice(&kind.to_be_bytes());
        c.extend_from_slice(&handle.to_be_bytes());
        c.extend_from_slice(&off.to_be_bytes());
        c.extend_from_slice(&len.to_be_bytes());
    };
    for i in 0..N as u64 {
        req(&mut c, 0, i, i * BS, 4096);
    }
    req(&mut c, 2, 99, 0, 0);
    let out = srv.connection(&c).unwrap();

    let mut r = &out[..];
    let mut take = |n: usize| {
        let mut b = vec![0u8; n];
        r.read_exact(&mut b).unwrap();
        b
    };
    let be32 = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    take(18); // greeting
    loop {
        let h = take(20); // option reply: magic, option, type, length
        let (ty, len) = (be32(&h[12..16]), be32(&h[16..20]) as usize);
        take(len);
        if ty == REP_ACK {
            break;
        }
        assert_eq!(ty, REP_INFO, "NBD_OPT_GO failed: reply type {ty:#x}");
    }
    let mut seen = Vec::new();
    for _ in 0..N {
        let h = take(16);
        assert_eq!(be32(&h[..4]), SIMPLE);
        let handle = u64::from_be_bytes(h[8..16].try_into().unwrap());
        assert_eq!(be32(&h[4..8]), 0, "read {handle} failed");
        assert_eq!(take(4096), vec![handle as u8 + 1; 4096], "read {handle}");
        seen.push(handle);
    }
    seen.sort();
    assert_eq!(seen, (0..N as u64).collect::<Vec<_>>());
    assert_eq!(
        data.state.lock().unwrap().1,
        N,
        "most reads at the device at once"
    );
}
