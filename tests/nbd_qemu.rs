//! Real NBD clients against an in-process server: qemu-io, qemu-img, nbdinfo, nbdcopy.

#[path = "common/nbd.rs"]
mod nbd_util;
#[path = "common/serve.rs"]
mod serve;
use nbd_util::*;
use std::process::Command;

#[test]
fn qemu_io_unaligned_patterns() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let t = make_pool(&[("vol", 64 * MIB)], 64 << 10);
    let srv = Server::start(&pool_dir(&t));
    let uri = srv.uri("vol");
    let o = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        &uri,
        "-c",
        "write -P 0xab 1000 70000",
        "-c",
        "write -P 0xcd 131000 200000",
        "-c",
        "read -P 0xab 1000 70000",
        "-c",
        "read -P 0xcd 131000 200000",
        "-c",
        "read -P 0 0 1000",
        "-c",
        "read -P 0 71000 60000",
        "-c",
        "flush",
    ]));
    let out = stdout(&o);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    // A second connection sees the data (multi-conn: it is all one pool).
    let o = run(Command::new("qemu-io").args(["-f", "raw", &uri, "-c", "read -P 0xab 1000 70000"]));
    assert!(!stdout(&o).contains("failed"), "{}", stdout(&o));
    srv.stop().unwrap();
}

#[test]
fn qemu_io_detects_wrong_pattern() {
    // Guards the other tests: a wrong pattern must be reported in qemu-io's output.
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let t = make_pool(&[("vol", 4 * MIB)], 64 << 10);
    let srv = Server::start(&pool_dir(&t));
    let o = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            &srv.uri("vol"),
            "-c",
            "write -P 0x11 0 4096",
            "-c",
            "read -P 0x22 0 4096",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    eprintln!("{out}");
    assert!(out.contains("Pattern verification failed"), "{out}");
}

const K: u64 = 1024;

/// Writes that map exactly blocks 0-1, 5 and 10-11 of a 64 KiB-block volume.
fn write_known_layout(target: &[&str]) {
    let mut args: Vec<String> = target.iter().map(|s| s.to_string()).collect();
    for c in [
        "write -P 0xab 1000 70000",
        "write -P 0x5a 327780 10",
        "write -P 0x77 655360 131072",
        "flush",
    ] {
        args.push("-c".into());
        args.push(c.into());
    }
    run(Command::new("qemu-io").args(&args));
}

const DATA: &[(u64, u64)] = &[(0, 128 * K), (320 * K, 64 * K), (640 * K, 128 * K)];

/// The expected (offset, length, is_data) layout of a 4 MiB volume after `write_known_layout`.
fn expected_layout(size: u64) -> Vec<(u64, u64, bool)> {
    let mut out = Vec::new();
    let mut pos = 0;
    for &(o, l) in DATA {
        if o > pos {
            out.push((pos, o - pos, false));
        }
        out.push((o, l, true));
        pos = o + l;
    }
    if pos < size {
        out.push((pos, size - pos, false));
    }
    out
}

#[test]
fn qemu_img_compare_map_and_nbdinfo() {
    if !have_tools(&["qemu-io", "qemu-img", "nbdinfo"]) {
        return;
    }
    let size = 4 * MIB;
    let t = make_pool(&[("vol", size)], 64 << 10);
    let srv = Server::start(&pool_dir(&t));
    let uri = srv.uri("vol");
    write_known_layout(&["-f", "raw", &uri]);
    // The same writes into a plain raw file.
    let raw = t.path().join("ref.raw");
    std::fs::File::create(&raw).unwrap().set_len(size).unwrap();
    write_known_layout(&["-f", "raw", raw.to_str().unwrap()]);
    let o = run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        raw.to_str().unwrap(),
        &uri,
    ]));
    assert!(stdout(&o).contains("identical"), "{}", stdout(&o));

    // qemu-img map: mapped blocks are data, the rest zero holes.
    let o = run(Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", &uri]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let got: Vec<(u64, u64, bool)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let data = e["data"].as_bool().unwrap();
            assert_eq!(e["zero"].as_bool().unwrap(), !data, "{e}");
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                data,
            )
        })
        .collect();
    assert_eq!(got, expected_layout(size), "qemu-img map: {}", stdout(&o));

    // nbdinfo --map: "offset length type description" per line.
    let o = run(Command::new("nbdinfo").args(["--map", &uri]));
    let got: Vec<(u64, u64, bool)> = stdout(&o)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ty: u32 = f[2].parse().unwrap();
            assert!(ty == 0 || ty == 3, "{l}");
            (f[0].parse().unwrap(), f[1].parse().unwrap(), ty == 0)
        })
        .collect();
    assert_eq!(got, expected_layout(size), "nbdinfo --map: {}", stdout(&o));

    // nbdinfo sees the export's properties.
    let o = run(Command::new("nbdinfo").args(["--json", &uri]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["export-size"].as_u64(), Some(size), "{v}");
    assert_eq!(e["can_multi_conn"].as_bool(), Some(true), "{v}");
    assert_eq!(e["is_read_only"].as_bool(), Some(false), "{v}");
    assert_eq!(e["block_size_maximum"].as_u64(), Some(32 * MIB), "{v}");
    srv.stop().unwrap();
}

#[test]
fn nbdcopy_out_and_in() {
    if !have_tools(&["qemu-io", "qemu-img", "nbdcopy"]) {
        return;
    }
    let size = 4 * MIB;
    let t = make_pool(&[("src", size), ("dst", size)], 64 << 10);
    let srv = Server::start(&pool_dir(&t));
    write_known_layout(&["-f", "raw", &srv.uri("src")]);
    let file = t.path().join("out.raw");
    run(Command::new("nbdcopy").args([&srv.uri("src"), file.to_str().unwrap()]));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), size);
    let o = run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        file.to_str().unwrap(),
        &srv.uri("src"),
    ]));
    assert!(stdout(&o).contains("identical"));
    run(Command::new("nbdcopy").args([file.to_str().unwrap(), &srv.uri("dst")]));
    let o = run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        &srv.uri("src"),
        &srv.uri("dst"),
    ]));
    assert!(stdout(&o).contains("identical"));
    // Volume to volume, several connections each way.
    run(Command::new("nbdcopy").args(["--connections=4", &srv.uri("dst"), &srv.uri("src")]));
    srv.stop().unwrap();
}

/// Changed blocks since snapshot `s1` of a 64 MiB volume (64 KiB blocks): 128 KiB written at
/// 1 MiB, 64 KiB at 10 MiB, 64 KiB discarded at 2 MiB.
fn changed_since_s1(t: &tempfile::TempDir) -> Vec<(u64, u64)> {
    use thinpool::pool::{OpenOptions, Pool};
    let mut pool = Pool::open(&pool_dir(t), &OpenOptions::default()).unwrap();
    let (v, _) = pool.find("vol").unwrap();
    let data: Vec<u8> = (0..8 * MIB).map(|i| (i * 7 + i / 4099) as u8).collect();
    pool.write(v, 0, &data).unwrap();
    pool.snapshot("vol", "s1", true).unwrap();
    pool.write(v, MIB, &vec![0xa5; 128 << 10]).unwrap();
    pool.write(v, 10 * MIB, &vec![0x5a; 64 << 10]).unwrap();
    pool.discard(v, 2 * MIB, 64 << 10).unwrap();
    pool.commit().unwrap();
    vec![(MIB, 128 << 10), (2 * MIB, 64 << 10), (10 * MIB, 64 << 10)]
}

/// The `thinpool:changed:SNAP` metadata context through real clients: `nbdinfo --map`
/// reports exactly the changed extents, qemu's `x-dirty-bitmap` sees them, and
/// tools/nbd_backup.sh turns a full copy of the snapshot (nbdcopy) into a copy of the
/// volume by moving only those extents, byte for byte what the volume holds.
#[test]
fn incremental_backup_through_the_changed_blocks_context() {
    if !have_tools(&["qemu-img", "nbdinfo", "nbdcopy", "jq"]) {
        return;
    }
    let t = make_pool(&[("vol", 64 * MIB)], 64 << 10);
    let changed = changed_since_s1(&t);
    let srv = Server::start(&pool_dir(&t));
    let uri = srv.uri("vol");

    let o = run(Command::new("nbdinfo").args(["--json", "--map=thinpool:changed:s1", &uri]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let got: Vec<(u64, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_u64().unwrap() & 1 == 1)
        .map(|e| (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, changed, "{v}");
    // The extents cover the whole volume.
    let covered: u64 = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(covered, 64 * MIB);
    // An unknown snapshot is not offered.
    let o = Command::new("nbdinfo")
        .args(["--map=thinpool:changed:nosuch", &uri])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{o:?}");
    // The contexts an export lists.
    let o = run(Command::new("nbdinfo").args(["--json", &uri]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ctx = v["exports"][0]["contexts"].to_string();
    assert!(
        ctx.contains("base:allocation") && ctx.contains("thinpool:changed:*"),
        "{ctx}"
    );

    // qemu's NBD client reads a dirty-bitmap-style context with x-dirty-bitmap (and reports
    // the set bit as "data": false).
    let sock = srv.socket.to_str().unwrap();
    let opts = format!(
        "driver=nbd,server.type=unix,server.path={sock},export=vol,x-dirty-bitmap=thinpool:changed:s1"
    );
    let o = run(Command::new("qemu-img").args(["map", "--output=json", "--image-opts", &opts]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let dirty: Vec<(u64, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["data"].as_bool().unwrap())
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(dirty, changed, "{v}");

    // The backup: a full copy of s1, then only the changed extents.
    let backup = t.path().join("backup.img");
    run(Command::new("nbdcopy").args([&srv.uri("s1"), backup.to_str().unwrap()]));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/nbd_backup.sh");
    let o = run(Command::new(script).args([&uri, "s1", backup.to_str().unwrap()]));
    let last = stdout(&o).lines().last().unwrap_or_default().to_string();
    let moved: u64 = changed.iter().map(|c| c.1).sum();
    assert_eq!(
        last,
        format!("moved {moved} of {}", 64 * MIB),
        "{}",
        stdout(&o)
    );
    let now = t.path().join("now.img");
    run(Command::new("nbdcopy").args([&uri, now.to_str().unwrap()]));
    assert!(
        std::fs::read(&backup).unwrap() == std::fs::read(&now).unwrap(),
        "the incremental backup differs from the volume"
    );
    srv.stop().unwrap();
}

/// The option exchange of `thinpool:changed:`, byte by byte: LIST offers the pattern, SET
/// grants only snapshots a client may compare with (at most eight, duplicates once),
/// BLOCK_STATUS answers one chunk per context with the last one ending the reply.
#[test]
fn changed_blocks_context_negotiation_and_replies() {
    use nbd_util::raw::*;
    use thinpool::pool::{OpenOptions, Pool};
    let t = make_pool(&[("vol", 4 * MIB), ("other", MIB)], 64 << 10);
    {
        let mut pool = Pool::open(&pool_dir(&t), &OpenOptions::default()).unwrap();
        for i in 0..10 {
            pool.snapshot("vol", &format!("s{i}"), true).unwrap();
        }
        let (v, _) = pool.find("vol").unwrap();
        pool.write(v, 64 << 10, &[1u8; 4096]).unwrap();
        pool.commit().unwrap();
    }
    let mut opts = thinpool::nbd::ServeOptions::new(pool_dir(&t));
    opts.exports = vec!["vol".into()];
    let srv = Server::start_with(opts);
    let meta = Raw::meta_data;
    // Replies until the ACK: (id, name) per context.
    let contexts = |c: &mut Raw| {
        let mut v = Vec::new();
        loop {
            let (_, ty, p) = c.option_reply();
            match ty {
                REP_META => v.push((
                    u32::from_be_bytes(p[..4].try_into().unwrap()),
                    String::from_utf8(p[4..].to_vec()).unwrap(),
                )),
                REP_ACK => return v,
                t => panic!("reply type {t:#x}"),
            }
        }
    };
    let mut c = Raw::connect(&srv.socket);
    c.send(&3u32.to_be_bytes());
    c.option(9, &meta("vol", &[])); // LIST, no query
    let listed: Vec<String> = contexts(&mut c).into_iter().map(|x| x.1).collect();
    assert_eq!(listed, ["base:allocation", "thinpool:changed:*"]);
    c.option(OPT_STRUCTURED, &[]);
    assert_eq!(c.option_reply().1, REP_ACK);
    // "other" is neither exported nor a snapshot of vol: not granted.
    let mut q: Vec<String> = vec![
        "thinpool:changed:other".into(),
        "thinpool:changed:s0".into(),
    ];
    q.extend((0..10).map(|i| format!("thinpool:changed:s{i}")));
    q.push("base:allocation".into());
    let refs: Vec<&str> = q.iter().map(String::as_str).collect();
    c.option(OPT_SET_META, &meta("vol", &refs));
    let got = contexts(&mut c);
    let want: Vec<(u32, String)> = std::iter::once((1, "base:allocation".to_string()))
        .chain((0..8).map(|i| (2 + i, format!("thinpool:changed:s{i}"))))
        .collect();
    assert_eq!(got, want);
    c.go("vol").unwrap();
    c.request(0, 7, 5, 0, (4 * MIB) as u32, &[]); // BLOCK_STATUS
    let mut seen = Vec::new();
    loop {
        let ch = c.chunk();
        assert_eq!((ch.handle, ch.kind), (5, 5), "block status chunk");
        let id = u32::from_be_bytes(ch.payload[..4].try_into().unwrap());
        let desc: Vec<(u32, u32)> = ch.payload[4..]
            .chunks(8)
            .map(|d| {
                (
                    u32::from_be_bytes(d[..4].try_into().unwrap()),
                    u32::from_be_bytes(d[4..].try_into().unwrap()),
                )
            })
            .collect();
        seen.push(id);
        if id == 1 {
            // base:allocation: one mapped block at 64 KiB.
            assert_eq!(
                desc,
                [
                    (64 << 10, 3),
                    (64 << 10, 0),
                    ((4 * MIB - (128 << 10)) as u32, 3)
                ]
            );
        } else {
            // Changed since every snapshot: the block written after them.
            assert_eq!(
                desc,
                [
                    (64 << 10, 0),
                    (64 << 10, 1),
                    ((4 * MIB - (128 << 10)) as u32, 0)
                ]
            );
        }
        if ch.flags & 1 != 0 {
            break;
        }
    }
    assert_eq!(seen, (1..=9).collect::<Vec<u32>>());
    srv.stop().unwrap();
}

/// NBD_CMD_CACHE and NBD_CMD_FLAG_FAST_ZERO: both advertised (and seen by nbdinfo); a fast
/// zero that may unmap succeeds, one with NO_HOLE (which writes the zeros) fails at once with
/// ENOTSUP and changes nothing; CACHE answers success in range and EINVAL outside.
#[test]
fn cache_and_fast_zero() {
    use nbd_util::raw::*;
    if !have_tools(&["nbdinfo"]) {
        return;
    }
    let t = make_pool(&[("vol", 4 * MIB)], 64 << 10);
    let srv = Server::start(&pool_dir(&t));
    let o = run(Command::new("nbdinfo").args(["--json", &srv.uri("vol")]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["can_cache"].as_bool(), Some(true), "{v}");
    assert_eq!(e["can_fast_zero"].as_bool(), Some(true), "{v}");

    let mut c = Raw::attach(&srv.socket, "vol", false);
    assert_ne!(c.flags & (1 << 10), 0, "SEND_CACHE");
    assert_ne!(c.flags & (1 << 11), 0, "SEND_FAST_ZERO");
    let data = vec![0x77u8; 256 << 10];
    assert_eq!(c.write(1, 0, &data), 0);
    const WRITE_ZEROES: u16 = 6;
    const CACHE: u16 = 5;
    const NO_HOLE: u16 = 1 << 1;
    const FAST_ZERO: u16 = 1 << 4;
    c.request(NO_HOLE | FAST_ZERO, WRITE_ZEROES, 2, 0, 64 << 10, &[]);
    assert_eq!(c.simple(), (95, 2), "ENOTSUP");
    assert_eq!(c.read(3, 0, 64 << 10).unwrap(), data[..64 << 10]);
    c.request(FAST_ZERO, WRITE_ZEROES, 4, 0, 128 << 10, &[]);
    assert_eq!(c.simple(), (0, 4));
    assert_eq!(c.read(5, 0, 128 << 10).unwrap(), vec![0u8; 128 << 10]);
    assert_eq!(c.read(6, 128 << 10, 128 << 10).unwrap(), data[128 << 10..]);
    c.request(0, CACHE, 7, 0, (4 * MIB) as u32, &[]);
    assert_eq!(c.simple(), (0, 7));
    c.request(0, CACHE, 8, 4 * MIB, 1, &[]);
    assert_eq!(c.simple(), (22, 8), "EINVAL past the end");
    srv.stop().unwrap();
}

/// Extended headers (NBD_OPT_EXTENDED_HEADERS), byte by byte: 32-byte requests and reply
/// chunks that echo the request's offset, a BLOCK_STATUS of 8 GiB in one request answered
/// with 64-bit BLOCK_STATUS_EXT descriptors, writes with and without PAYLOAD_LEN, a payload
/// on a command that takes none refused without losing the stream, and structured replies
/// refused once extended headers are in use.
#[test]
fn extended_headers_byte_by_byte() {
    use nbd_util::raw::*;
    const GIB: u64 = 1 << 30;
    let t = make_pool(&[("big", 8 * GIB)], 64 << 10);
    let srv = Server::start(&pool_dir(&t));
    let mut c = Raw::connect(&srv.socket);
    c.send(&3u32.to_be_bytes());
    c.option(11, &[]); // NBD_OPT_EXTENDED_HEADERS
    assert_eq!(c.option_reply().1, REP_ACK);
    c.option(OPT_STRUCTURED, &[]);
    assert_eq!(c.option_reply().1, (1 << 31) + 10, "EXT_HEADER_REQD");
    c.option(OPT_SET_META, &Raw::meta_data("big", &["base:allocation"]));
    assert_eq!(c.option_reply().1, REP_META);
    assert_eq!(c.option_reply().1, REP_ACK);
    c.go("big").unwrap();
    assert_eq!(c.size, 8 * GIB);

    let req = |c: &mut Raw, flags: u16, kind: u16, handle: u64, off: u64, len: u64, p: &[u8]| {
        c.ext_request(flags, kind, handle, off, len, p)
    };
    // One extended chunk: (flags, type, offset echoed, payload).
    let chunk = |c: &mut Raw, handle: u64| {
        assert_eq!(c.u32(), 0x6e8a_278c, "extended reply magic");
        let flags = c.u16();
        let ty = c.u16();
        assert_eq!(c.u64(), handle);
        let off = c.u64();
        let len = c.u64() as usize;
        (flags, ty, off, c.bytes(len))
    };
    const PAYLOAD_LEN: u16 = 1 << 5;
    let at = 6 * GIB;
    let data = vec![0x5cu8; 4096];
    req(&mut c, PAYLOAD_LEN, 1, 1, at, 4096, &data);
    assert_eq!(
        chunk(&mut c, 1),
        (1, 0, at, vec![]),
        "a final NONE chunk, not a simple reply"
    );
    // Without the flag a write still carries its data (what qemu 10 sends).
    req(&mut c, 0, 1, 2, at + 4096, 4096, &data);
    assert_eq!(chunk(&mut c, 2), (1, 0, at + 4096, vec![]));
    req(&mut c, 0, 0, 3, at, 8192, &[]);
    let (flags, ty, off, p) = chunk(&mut c, 3);
    assert_eq!((flags, ty, off), (1, 1, at), "one final OFFSET_DATA chunk");
    assert_eq!(u64::from_be_bytes(p[..8].try_into().unwrap()), at);
    assert!(p[8..].iter().all(|&b| b == 0x5c) && p.len() == 8 + 8192);
    // A payload on FLUSH: skipped and refused; the stream goes on.
    req(&mut c, PAYLOAD_LEN, 3, 4, 0, 10, &[7; 10]);
    let (flags, ty, _, p) = chunk(&mut c, 4);
    assert_eq!((flags, ty), (1, (1 << 15) + 1), "an error chunk");
    assert_eq!(u32::from_be_bytes(p[..4].try_into().unwrap()), 22);
    // BLOCK_STATUS over the whole 8 GiB at once.
    req(&mut c, 0, 7, 5, 0, 8 * GIB, &[]);
    let (flags, ty, off, p) = chunk(&mut c, 5);
    assert_eq!((flags, ty, off), (1, 6, 0), "BLOCK_STATUS_EXT");
    assert_eq!(
        u32::from_be_bytes(p[..4].try_into().unwrap()),
        1,
        "base:allocation id"
    );
    let n = u32::from_be_bytes(p[4..8].try_into().unwrap()) as usize;
    assert_eq!(p.len(), 8 + 16 * n);
    let desc: Vec<(u64, u64)> = p[8..]
        .chunks(16)
        .map(|d| {
            (
                u64::from_be_bytes(d[..8].try_into().unwrap()),
                u64::from_be_bytes(d[8..].try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(desc, [(at, 3), (64 << 10, 0), (2 * GIB - (64 << 10), 3)]);
    req(&mut c, 0, 2, 6, 0, 0, &[]); // DISC
    assert!(c.closed());
    srv.stop().unwrap();
}

/// qemu 10 negotiates extended headers with `thinpool serve` (its log says so) and works
/// above 4 GiB: patterns written and read back at 6 GiB, and `qemu-img map` of the 8 GiB
/// volume; clients without them (libnbd 1.14's nbdinfo) are unchanged.
#[test]
fn qemu_negotiates_extended_headers() {
    if !have_tools(&["qemu-io", "qemu-img", "nbdinfo"]) {
        return;
    }
    let t = make_pool(&[("big", 8 << 30)], 64 << 10);
    let dir = pool_dir(&t);
    let log = t.path().join("serve.log");
    let srv = serve::spawn(&dir, &[], &[], Some(&log));
    let sock = dir.join("nbd.sock");
    let uri = format!("nbd+unix:///big?socket={}", sock.display());
    let o = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        &uri,
        "-c",
        "write -P 0x5c 6G 128k",
        "-c",
        "read -P 0x5c 6G 128k",
        "-c",
        "write -z -u 6G 64k",
        "-c",
        "read -P 0 6G 64k",
    ]));
    assert!(!stdout(&o).contains("failed"), "{}", stdout(&o));
    let o = run(Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", &uri]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let data: Vec<(u64, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"].as_bool().unwrap())
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(data, [((6 << 30) + (64 << 10), 64 << 10)], "{v}");
    let o = run(Command::new("nbdinfo").args(["--map", &uri]));
    assert!(stdout(&o).contains("data"), "{}", stdout(&o));
    assert!(serve::sigterm(srv).success());
    let text = std::fs::read_to_string(&log).unwrap();
    let attached: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("client attached"))
        .collect();
    assert!(
        attached.iter().any(|l| l.contains("extended_headers=true")),
        "qemu did not negotiate extended headers: {text}"
    );
    assert!(
        attached
            .iter()
            .any(|l| l.contains("extended_headers=false")),
        "nbdinfo (libnbd 1.14) should not: {text}"
    );
}
