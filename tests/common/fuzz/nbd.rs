//! The NBD server fed arbitrary client bytes: the option negotiation alone (in memory), the
//! transmission phase's request validation and execution, and whole connections over a
//! socket pair. Wire rules follow docs/nbd.md.
//!
//! "Silently wrong" here: a reply that is not the answer the protocol prescribes — an
//! option answered for another option or not at all, a request accepted that must be
//! refused (or refused with an error no rule gives), read data or a block-status extent
//! that disagrees with what was written.

use super::{once, open_options, pattern, Images, OverlayDev, BS};
use arbitrary::Unstructured;
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::sync::{Arc, OnceLock};
use thinpool::fuzzing::NbdServer;
use thinpool::nbd::proto::*;
use thinpool::pool::Pool;

const EXPORTS: [(&str, u64, bool); 2] = [("v", 64 * BS + 512, false), ("r", 16 * BS, true)];

static BASE: OnceLock<Images> = OnceLock::new();

fn base() -> &'static Images {
    once(&BASE, || {
        Images::build(|p| {
            let v = p.create_volume("v", EXPORTS[0].1, false).unwrap();
            p.write(v, 5000, &pattern(1, 5000, 30000)).unwrap();
            p.write(v, 50 * BS, &pattern(2, 0, 3 * BS as usize))
                .unwrap();
            let r = p.create_volume("r", EXPORTS[1].1, false).unwrap();
            p.write(r, 0, &pattern(3, 0, 10000)).unwrap();
            p.set_read_only("r", true).unwrap();
            p.commit().unwrap();
        })
    })
}

fn new_server(read_only: bool) -> (NbdServer, Arc<OverlayDev>) {
    let b = base();
    let (meta, data) = b.overlays();
    let p = Pool::open_on(meta.clone(), data, &open_options(false)).unwrap();
    (NbdServer::new(p, read_only), meta)
}

/// The contents of an export in the base pool.
fn contents(name: &str) -> Vec<u8> {
    static C: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let all = once(&C, || {
        let (srv, _) = new_server(false);
        let mut p = srv.pool().lock().unwrap();
        EXPORTS
            .iter()
            .map(|(n, size, _)| {
                let (id, _) = p.find(n).unwrap();
                let mut v = vec![0u8; *size as usize];
                p.read(id, 0, &mut v).unwrap();
                v
            })
            .collect()
    });
    all[EXPORTS.iter().position(|e| e.0 == name).unwrap()].clone()
}

// ----- negotiation --------------------------------------------------------------------------

/// Client bytes in, server bytes out.
struct Duplex<'a> {
    input: &'a [u8],
    output: Vec<u8>,
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}
impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const EXPORT_NAMES: [&str; 5] = ["v", "r", "", "nope", "v\0"];

fn name_payload(u: &mut Unstructured, out: &mut Vec<u8>) {
    let n = EXPORT_NAMES[u.choose_index(EXPORT_NAMES.len()).unwrap_or(0)].as_bytes();
    let len = if u.ratio(1, 16u8).unwrap_or(false) {
        u.arbitrary().unwrap_or(0)
    } else {
        n.len() as u32
    };
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(n);
}

/// One option, mostly well-formed.
fn option(u: &mut Unstructured, out: &mut Vec<u8>) {
    const OPTS: [u32; 12] = [
        OPT_EXPORT_NAME,
        OPT_ABORT,
        OPT_LIST,
        OPT_STARTTLS,
        OPT_INFO,
        OPT_GO,
        OPT_STRUCTURED_REPLY,
        OPT_LIST_META_CONTEXT,
        OPT_SET_META_CONTEXT,
        OPT_EXTENDED_HEADERS,
        4,
        0x7777,
    ];
    let opt = OPTS[u.choose_index(OPTS.len()).unwrap_or(0)];
    let mut data = Vec::new();
    match opt {
        OPT_EXPORT_NAME => {
            data.extend_from_slice(
                EXPORT_NAMES[u.choose_index(EXPORT_NAMES.len()).unwrap_or(0)].as_bytes(),
            );
        }
        OPT_INFO | OPT_GO => {
            name_payload(u, &mut data);
            let n = u.int_in_range(0..=4u16).unwrap_or(0);
            data.extend_from_slice(&n.to_be_bytes());
            for _ in 0..n {
                data.extend_from_slice(&u.int_in_range(0..=4u16).unwrap_or(0).to_be_bytes());
            }
        }
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            name_payload(u, &mut data);
            let n = u.int_in_range(0..=3u32).unwrap_or(0);
            data.extend_from_slice(&n.to_be_bytes());
            for _ in 0..n {
                let q: &[u8] = match u.int_in_range(0..=7u8).unwrap_or(0) {
                    0 => b"base:allocation",
                    1 => b"base:",
                    2 => b"qemu:dirty-bitmap:x",
                    3 => b"thinpool:",
                    4 => b"thinpool:changed:",
                    5 => b"thinpool:changed:v",
                    6 => b"thinpool:changed:r",
                    _ => b"",
                };
                data.extend_from_slice(&(q.len() as u32).to_be_bytes());
                data.extend_from_slice(q);
            }
        }
        _ => {}
    }
    if u.ratio(1, 8u8).unwrap_or(false) {
        let n = u.int_in_range(0..=8usize).unwrap_or(0);
        data.extend_from_slice(u.bytes(n).unwrap_or(&[]));
    }
    let magic = if u.ratio(1, 64u8).unwrap_or(false) {
        IHAVEOPT ^ 1
    } else {
        IHAVEOPT
    };
    let len = match u.int_in_range(0..=63u8).unwrap_or(0) {
        0 => (64 << 10) + u.int_in_range(1..=100u32).unwrap_or(1),
        1 => u.arbitrary().unwrap_or(0),
        _ => data.len() as u32,
    };
    out.extend_from_slice(&magic.to_be_bytes());
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    if len > 64 << 10 && len < 1 << 20 && u.ratio(1, 2u8).unwrap_or(false) {
        // An oversized option the server must skip and refuse.
        out.resize(out.len() + len as usize, 0xee);
    } else {
        out.extend_from_slice(&data);
    }
}

fn client_hello(u: &mut Unstructured, out: &mut Vec<u8>) {
    let flags = match u.int_in_range(0..=31u8).unwrap_or(0) {
        0 => u.arbitrary().unwrap_or(0),
        1..=15 => FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES,
        _ => FLAG_C_FIXED_NEWSTYLE,
    };
    out.extend_from_slice(&flags.to_be_bytes());
}

fn negotiation_bytes(u: &mut Unstructured) -> Vec<u8> {
    let mut c = Vec::new();
    client_hello(u, &mut c);
    for _ in 0..u.int_in_range(0..=6u8).unwrap_or(0) {
        option(u, &mut c);
    }
    if u.ratio(1, 8u8).unwrap_or(false) {
        super::mutate(u, &mut c, 64);
    }
    if u.ratio(1, 8u8).unwrap_or(false) {
        let n = u.int_in_range(0..=c.len()).unwrap_or(0);
        c.truncate(n);
    }
    c
}

/// A client's option as the reference reads it.
struct ClientOpt {
    opt: u32,
    len: u32,
    data: Vec<u8>,
}

/// Split client bytes the way the protocol frames them: the flags, then whole options up to
/// the first one the server must hang up on.
fn client_options(c: &[u8]) -> (Option<u32>, Vec<ClientOpt>, bool) {
    if c.len() < 4 {
        return (None, Vec::new(), true);
    }
    let flags = be32(&c[..4]);
    let mut r = &c[4..];
    let mut opts = Vec::new();
    if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return (Some(flags), opts, true);
    }
    while r.len() >= 16 {
        if be64(&r[..8]) != IHAVEOPT {
            return (Some(flags), opts, true);
        }
        let (opt, len) = (be32(&r[8..12]), be32(&r[12..16]));
        r = &r[16..];
        if (len > 64 << 10 && opt == OPT_EXPORT_NAME) || len > 16 << 20 {
            return (Some(flags), opts, true);
        }
        if r.len() < len as usize {
            return (Some(flags), opts, true);
        }
        let data = if len > 64 << 10 {
            Vec::new()
        } else {
            r[..len as usize].to_vec()
        };
        r = &r[len as usize..];
        opts.push(ClientOpt { opt, len, data });
    }
    (Some(flags), opts, false)
}

struct OptReply {
    opt: u32,
    kind: u32,
    payload: Vec<u8>,
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if r.len() < n {
        return None;
    }
    let (a, b) = r.split_at(n);
    *r = b;
    Some(a)
}

fn option_reply(r: &mut &[u8]) -> Option<OptReply> {
    let h = take(r, 20)?;
    assert_eq!(be64(&h[..8]), OPT_REPLY_MAGIC, "option reply magic");
    let len = be32(&h[16..20]) as usize;
    let payload = take(r, len).expect("a whole option reply").to_vec();
    Some(OptReply {
        opt: be32(&h[8..12]),
        kind: be32(&h[12..16]),
        payload,
    })
}

fn export_of(name: &str) -> Option<(&'static str, u64, bool)> {
    let name = if name.is_empty() { return None } else { name };
    EXPORTS.iter().copied().find(|e| e.0 == name)
}

/// Check the server's side of a negotiation against the client's options; returns the bytes
/// left after it (the transmission phase, for whole connections) and whether it attached.
fn check_negotiation<'a>(
    client: &[u8],
    server: &'a [u8],
    read_only: bool,
) -> (&'a [u8], Option<(String, bool, bool)>) {
    let mut r = server;
    let hello = take(&mut r, 18).expect("the server's greeting");
    assert_eq!(be64(&hello[..8]), NBDMAGIC);
    assert_eq!(be64(&hello[8..16]), IHAVEOPT);
    assert_eq!(be16(&hello[16..18]), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    let (flags, opts, _) = client_options(client);
    let Some(flags) = flags else {
        assert!(
            r.is_empty(),
            "the server answered a client that sent no flags"
        );
        return (r, None);
    };
    let no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
    let mut structured = false;
    // What the last SET selected: the export, and whether base:allocation was among it.
    let mut context: Option<(String, bool)> = None;
    let mut extended = false;
    for o in &opts {
        if o.opt == OPT_EXPORT_NAME && extended {
            assert!(
                r.is_empty(),
                "NBD_OPT_EXPORT_NAME after extended headers must close"
            );
            return (r, None);
        }
        if o.opt == OPT_EXPORT_NAME {
            let Some((name, size, ro)) = std::str::from_utf8(&o.data)
                .ok()
                .and_then(|n| export_of(n).map(|e| (n, e)))
                .map(|(_, e)| e)
            else {
                assert!(
                    r.is_empty(),
                    "NBD_OPT_EXPORT_NAME of an unknown export must close"
                );
                return (r, None);
            };
            let n = if no_zeroes { 10 } else { 134 };
            let info = take(&mut r, n).expect("the export's size and flags");
            assert_eq!(be64(&info[..8]), size);
            let tf = be16(&info[8..10]);
            assert_eq!(tf & TF_READ_ONLY != 0, ro || read_only);
            let ctx = structured && context == Some((name.to_string(), true));
            return (r, Some((name.to_string(), structured, ctx)));
        }
        // Every reply up to and including the final one is for this option.
        let mut infos = Vec::new();
        let fin = loop {
            let rep = option_reply(&mut r)
                .unwrap_or_else(|| panic!("option {} got no final reply", o.opt));
            assert_eq!(rep.opt, o.opt, "a reply for another option");
            if rep.kind == REP_ACK || rep.kind & (1 << 31) != 0 {
                break rep;
            }
            infos.push(rep);
        };
        if o.len > 64 << 10 {
            assert_eq!(fin.kind, REP_ERR_TOO_BIG);
            continue;
        }
        match o.opt {
            OPT_ABORT => {
                assert_eq!(fin.kind, REP_ACK);
                assert!(r.is_empty(), "the server went on after NBD_OPT_ABORT");
                return (r, None);
            }
            OPT_LIST => {
                if o.data.is_empty() {
                    assert_eq!(fin.kind, REP_ACK);
                    let names: HashSet<Vec<u8>> =
                        infos.iter().map(|i| i.payload[4..].to_vec()).collect();
                    let want: HashSet<Vec<u8>> =
                        EXPORTS.iter().map(|e| e.0.as_bytes().to_vec()).collect();
                    assert_eq!(names, want, "NBD_OPT_LIST");
                } else {
                    assert_eq!(fin.kind, REP_ERR_INVALID);
                }
            }
            OPT_STRUCTURED_REPLY if extended => assert_eq!(fin.kind, REP_ERR_EXT_HEADER_REQD),
            OPT_STRUCTURED_REPLY => {
                if o.data.is_empty() {
                    assert_eq!(fin.kind, REP_ACK);
                    structured = true;
                } else {
                    assert_eq!(fin.kind, REP_ERR_INVALID);
                }
            }
            // Extended headers imply structured replies. (The connection target sends
            // compact requests only after its own plain negotiation, which never asks
            // for them, so transmission checks stay compact.)
            OPT_EXTENDED_HEADERS => {
                if o.data.is_empty() {
                    assert_eq!(fin.kind, REP_ACK);
                    structured = true;
                    extended = true;
                } else {
                    assert_eq!(fin.kind, REP_ERR_INVALID);
                }
            }
            OPT_INFO | OPT_GO => {
                let parsed = parse_go(&o.data);
                match parsed {
                    None => assert_eq!(fin.kind, REP_ERR_INVALID),
                    Some(name) => match export_of(&name) {
                        None => assert_eq!(fin.kind, REP_ERR_UNKNOWN, "GO {name:?}"),
                        Some((n, size, ro)) => {
                            assert_eq!(fin.kind, REP_ACK);
                            let ex = infos
                                .iter()
                                .find(|i| be16(&i.payload[..2]) == INFO_EXPORT)
                                .expect("NBD_INFO_EXPORT");
                            assert_eq!(be64(&ex.payload[2..10]), size);
                            let tf = be16(&ex.payload[10..12]);
                            assert_eq!(tf & TF_READ_ONLY != 0, ro || read_only);
                            if o.opt == OPT_GO {
                                let ctx = structured && context == Some((n.to_string(), true));
                                return (r, Some((n.to_string(), structured, ctx)));
                            }
                        }
                    },
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let set = o.opt == OPT_SET_META_CONTEXT;
                match parse_meta(&o.data) {
                    None => assert_eq!(fin.kind, REP_ERR_INVALID),
                    Some(_) if set && !structured => assert_eq!(fin.kind, REP_ERR_INVALID),
                    Some((name, _)) if export_of(&name).is_none() => {
                        assert_eq!(fin.kind, REP_ERR_UNKNOWN)
                    }
                    Some((name, qs)) => {
                        assert_eq!(fin.kind, REP_ACK);
                        let alloc = if set {
                            qs.iter().any(|q| q == "base:allocation")
                        } else {
                            qs.is_empty()
                                || qs.iter().any(|q| q == "base:allocation" || q == "base:")
                        };
                        // LIST offers the thinpool:changed:* pattern; every query naming a
                        // volume (all are exported here) is granted, each once.
                        let pattern = !set
                            && (qs.is_empty()
                                || qs
                                    .iter()
                                    .any(|q| q == "thinpool:" || q == "thinpool:changed:"));
                        let mut granted: Vec<&str> = Vec::new();
                        for q in &qs {
                            if let Some(v) = q.strip_prefix("thinpool:changed:") {
                                if export_of(v).is_some() && !granted.contains(&v) {
                                    granted.push(v);
                                }
                            }
                        }
                        assert_eq!(
                            infos.len(),
                            alloc as usize + pattern as usize + granted.len(),
                            "meta context replies"
                        );
                        if set {
                            context = (alloc || !granted.is_empty()).then_some((name, alloc));
                        }
                    }
                }
            }
            // The fuzzed server has no certificates: STARTTLS is refused by policy (or as
            // malformed, with data), and the session goes on in plain text.
            OPT_STARTTLS if o.data.is_empty() => assert_eq!(fin.kind, REP_ERR_POLICY),
            OPT_STARTTLS => assert_eq!(fin.kind, REP_ERR_INVALID),
            _ => assert_eq!(fin.kind, REP_ERR_UNSUP, "option {}", o.opt),
        }
    }
    (r, None)
}

fn string(p: &mut &[u8]) -> Option<String> {
    let n = be32(take(p, 4)?) as usize;
    if n > 4096 {
        return None;
    }
    String::from_utf8(take(p, n)?.to_vec()).ok()
}

fn parse_go(d: &[u8]) -> Option<String> {
    let mut p = d;
    let name = string(&mut p)?;
    let n = be16(take(&mut p, 2)?);
    take(&mut p, 2 * n as usize)?;
    p.is_empty().then_some(name)
}

fn parse_meta(d: &[u8]) -> Option<(String, Vec<String>)> {
    let mut p = d;
    let name = string(&mut p)?;
    let n = be32(take(&mut p, 4)?);
    let mut qs = Vec::new();
    for _ in 0..n {
        qs.push(string(&mut p)?);
    }
    p.is_empty().then_some((name, qs))
}

static HANDSHAKE_SERVERS: OnceLock<[NbdServer; 2]> = OnceLock::new();

/// The negotiation over an in-memory stream.
pub fn handshake(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let read_only = u.ratio(1, 4u8).unwrap_or(false);
    let srv = &once(&HANDSHAKE_SERVERS, || {
        [new_server(false).0, new_server(true).0]
    })[read_only as usize];
    let client = negotiation_bytes(&mut u);
    let mut d = Duplex {
        input: &client,
        output: Vec::new(),
    };
    let res = srv.negotiate(&mut d);
    let (rest, attached) = check_negotiation(&client, &d.output, read_only);
    assert!(rest.is_empty(), "bytes after the negotiation");
    match (res, attached) {
        (Ok(Some(a)), Some((name, structured, ctx))) => {
            assert_eq!(a.export, name);
            assert_eq!((a.structured, a.allocation_context), (structured, ctx));
            let e = export_of(&name).unwrap();
            assert_eq!((a.size, a.read_only), (e.1, e.2 || read_only));
        }
        (Ok(Some(a)), None) => panic!("attached to {a:?} without a GO or EXPORT_NAME"),
        (_, Some(x)) => panic!("the server answered a GO for {x:?} but did not attach"),
        (Ok(None) | Err(_), None) => {}
    }
}

// ----- transmission -------------------------------------------------------------------------

struct Req {
    hdr: [u8; REQUEST_SIZE],
    kind: u16,
    flags: u16,
    handle: u64,
    offset: u64,
    length: u32,
    payload: Vec<u8>,
}

fn request(u: &mut Unstructured, size: u64) -> Req {
    const KINDS: [u16; 9] = [
        CMD_READ,
        CMD_READ,
        CMD_WRITE,
        CMD_WRITE,
        CMD_FLUSH,
        CMD_TRIM,
        CMD_WRITE_ZEROES,
        CMD_BLOCK_STATUS,
        CMD_CACHE,
    ];
    let kind = if u.ratio(1, 32u8).unwrap_or(false) {
        u.arbitrary().unwrap_or(0)
    } else {
        KINDS[u.choose_index(KINDS.len()).unwrap_or(0)]
    };
    let flags = match u.int_in_range(0..=7u8).unwrap_or(0) {
        0..=3 => 0,
        4 => CMD_FLAG_FUA,
        5 => 1 << u.int_in_range(0..=4u32).unwrap_or(0),
        6 => CMD_FLAG_DF | CMD_FLAG_REQ_ONE,
        7 if u.ratio(1, 2u8).unwrap_or(false) => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        _ => u.arbitrary().unwrap_or(0),
    };
    let offset = match u.int_in_range(0..=7u8).unwrap_or(0) {
        0..=4 => u.int_in_range(0..=size).unwrap_or(0),
        5 => size.saturating_sub(u.int_in_range(0..=5000u64).unwrap_or(0)),
        6 => u64::MAX - u.int_in_range(0..=5000u64).unwrap_or(0),
        _ => u.arbitrary().unwrap_or(0),
    };
    let length = match u.int_in_range(0..=7u8).unwrap_or(0) {
        0 => 0,
        1..=4 => u.int_in_range(1..=3 * BS as u32).unwrap_or(1),
        5 => size.saturating_sub(offset).min(u32::MAX as u64) as u32,
        6 => MAX_PAYLOAD + u.int_in_range(0..=1u32).unwrap_or(0),
        _ => u.int_in_range(0..=1u32 << 20).unwrap_or(0),
    };
    let length = if kind == CMD_WRITE {
        length.min(1 << 20)
    } else {
        length
    };
    let handle: u64 = u.arbitrary().unwrap_or(0);
    let payload = if kind == CMD_WRITE {
        let tag: u8 = u.arbitrary().unwrap_or(0);
        if tag % 5 == 0 {
            vec![0u8; length as usize]
        } else {
            pattern(tag as u64, offset, length as usize)
        }
    } else {
        Vec::new()
    };
    let mut hdr = [0u8; REQUEST_SIZE];
    hdr[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    hdr[4..6].copy_from_slice(&flags.to_be_bytes());
    hdr[6..8].copy_from_slice(&kind.to_be_bytes());
    hdr[8..16].copy_from_slice(&handle.to_be_bytes());
    hdr[16..24].copy_from_slice(&offset.to_be_bytes());
    hdr[24..28].copy_from_slice(&length.to_be_bytes());
    Req {
        hdr,
        kind,
        flags,
        handle,
        offset,
        length,
        payload,
    }
}

/// Errors the protocol (and docs/nbd.md) allows for a request, before any pool error.
fn allowed_errors(r: &Req, structured: bool, ctx: bool, ro: bool, size: u64) -> Vec<u32> {
    let mut errs = Vec::new();
    let allowed = match r.kind {
        CMD_READ if structured => CMD_FLAG_FUA | CMD_FLAG_DF,
        CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        CMD_BLOCK_STATUS => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
        CMD_CACHE => 0,
        _ => return vec![EINVAL],
    };
    if r.flags & !allowed != 0 {
        errs.push(EINVAL);
    }
    let writes = matches!(r.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && ro {
        errs.push(EPERM);
    }
    let in_range = r
        .offset
        .checked_add(r.length as u64)
        .is_some_and(|e| e <= size);
    if r.kind != CMD_FLUSH && !in_range {
        errs.push(if matches!(r.kind, CMD_WRITE | CMD_WRITE_ZEROES) {
            ENOSPC
        } else {
            EINVAL
        });
    }
    if r.kind == CMD_READ && r.length > MAX_PAYLOAD {
        errs.push(EINVAL);
    }
    if r.kind == CMD_BLOCK_STATUS && (!ctx || r.length == 0) {
        errs.push(EINVAL);
    }
    // Zeroing that must keep the space (writes the zeros) is not fast.
    let fast_no_hole = CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO;
    if r.kind == CMD_WRITE_ZEROES && r.flags & fast_no_hole == fast_no_hole {
        errs.push(ENOTSUP);
    }
    errs
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    be32(&b[o..o + 4])
}

/// Parse and check one reply in `out` against the request and the model of the export.
/// How the session under test frames replies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    Simple,
    Structured,
    /// Extended headers: every reply an extended chunk, never a simple reply.
    Extended,
}

fn check_reply(out: &[u8], r: &Req, framing: Framing, errs: &[u32], model: &[u8]) {
    let structured = framing != Framing::Simple;
    let extended = framing == Framing::Extended;
    let mut p = out;
    let is_err;
    let magic = be32(&p[..4]);
    let chunked = magic == STRUCTURED_REPLY_MAGIC || magic == EXTENDED_REPLY_MAGIC;
    if structured && (r.kind == CMD_READ || !errs.is_empty() || extended) {
        assert!(
            chunked,
            "a simple reply to a read or an error in a structured session, or any with \
             extended headers"
        );
    }
    if chunked {
        assert!(structured, "a structured reply in a simple session");
        // Chunks until DONE.
        let mut pos = r.offset;
        let mut err = None;
        loop {
            let (flags, kind, pl) = if extended {
                let h = take(&mut p, EXT_CHUNK_HEADER_SIZE).expect("an extended chunk header");
                assert_eq!(be32(&h[..4]), EXTENDED_REPLY_MAGIC);
                assert_eq!(be64(&h[8..16]), r.handle, "reply handle");
                assert_eq!(be64(&h[16..24]), r.offset, "the request's offset, echoed");
                let len = be64(&h[24..32]) as usize;
                (
                    be16(&h[4..6]),
                    be16(&h[6..8]),
                    take(&mut p, len).expect("a whole chunk"),
                )
            } else {
                let h = take(&mut p, CHUNK_HEADER_SIZE).expect("a chunk header");
                assert_eq!(be32(&h[..4]), STRUCTURED_REPLY_MAGIC);
                assert_eq!(be64(&h[8..16]), r.handle, "reply handle");
                let len = u32_at(h, 16) as usize;
                (
                    be16(&h[4..6]),
                    be16(&h[6..8]),
                    take(&mut p, len).expect("a whole chunk"),
                )
            };
            match kind {
                REPLY_TYPE_ERROR => err = Some(u32_at(pl, 0)),
                // A zero-length read, or (extended headers) any success without data.
                // (A FLUSH's offset and length mean nothing and may be anything.)
                REPLY_TYPE_NONE if extended && r.kind != CMD_READ => {
                    pos = r.offset.saturating_add(r.length as u64)
                }
                REPLY_TYPE_NONE => assert_eq!(r.length, 0),
                REPLY_TYPE_OFFSET_DATA => {
                    let off = be64(&pl[..8]);
                    assert_eq!(off, pos, "chunks out of order or overlapping");
                    let d = &pl[8..];
                    assert!(
                        d == &model[off as usize..off as usize + d.len()],
                        "read data differs at {off}"
                    );
                    pos += d.len() as u64;
                }
                REPLY_TYPE_OFFSET_HOLE => {
                    let off = be64(&pl[..8]);
                    let n = u32_at(pl, 8) as u64;
                    assert_eq!(off, pos);
                    assert!(
                        model[off as usize..(off + n) as usize]
                            .iter()
                            .all(|&b| b == 0),
                        "a hole over data at {off}"
                    );
                    pos += n;
                }
                REPLY_TYPE_BLOCK_STATUS | REPLY_TYPE_BLOCK_STATUS_EXT => {
                    assert_eq!(
                        kind == REPLY_TYPE_BLOCK_STATUS_EXT,
                        extended,
                        "BLOCK_STATUS_EXT exactly when extended headers are in use"
                    );
                    assert_eq!(u32_at(pl, 0), BASE_ALLOCATION_ID);
                    // (length, status) descriptors: 64-bit ones after a count, or 32-bit.
                    let desc: Vec<(u64, u64)> = if extended {
                        let n = u32_at(pl, 4) as usize;
                        assert!(n > 0 && pl.len() == 8 + 16 * n, "descriptor count");
                        pl[8..]
                            .chunks(16)
                            .map(|e| (be64(&e[..8]), be64(&e[8..])))
                            .collect()
                    } else {
                        let ext = &pl[4..];
                        assert!(!ext.is_empty() && ext.len() % 8 == 0);
                        ext.chunks(8)
                            .map(|e| (u32_at(e, 0) as u64, u32_at(e, 4) as u64))
                            .collect()
                    };
                    if r.flags & CMD_FLAG_REQ_ONE != 0 {
                        assert_eq!(desc.len(), 1);
                    }
                    let mut at = r.offset;
                    for (l, st) in desc {
                        assert!(l > 0 && st >> 32 == 0);
                        if st as u32 & STATE_HOLE != 0 {
                            assert!(
                                model[at as usize..(at + l) as usize]
                                    .iter()
                                    .all(|&b| b == 0),
                                "block status calls data a hole at {at}"
                            );
                        }
                        at += l;
                    }
                    assert!(at <= r.offset + r.length as u64, "extents past the request");
                    pos = r.offset + r.length as u64;
                }
                k => panic!("unexpected chunk type {k}"),
            }
            if flags & REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        if err.is_none() {
            assert_eq!(
                pos,
                r.offset.saturating_add(r.length as u64),
                "chunks do not cover the read"
            );
        }
        is_err = err;
    } else {
        let h = take(&mut p, SIMPLE_REPLY_SIZE).expect("a simple reply");
        assert_eq!(u32_at(h, 0), SIMPLE_REPLY_MAGIC);
        assert_eq!(be64(&h[8..16]), r.handle, "reply handle");
        let e = u32_at(h, 4);
        if e == 0 && r.kind == CMD_READ {
            let d = take(&mut p, r.length as usize).expect("read data");
            let off = r.offset as usize;
            assert!(
                d == &model[off..off + d.len()],
                "read data differs at {off}"
            );
        }
        is_err = (e != 0).then_some(e);
    }
    assert!(p.is_empty(), "bytes after the reply");
    match is_err {
        None => assert!(
            errs.is_empty(),
            "accepted a request that must fail with {errs:?}"
        ),
        Some(e) => assert!(
            errs.contains(&e),
            "error {e} for a request allowed {errs:?} (kind {}, flags {:#x})",
            r.kind,
            r.flags
        ),
    }
}

/// Requests executed one by one on an attached session, against a model of the export.
pub fn requests(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let server_ro = u.ratio(1, 8u8).unwrap_or(false);
    let (srv, meta) = new_server(server_ro);
    let (name, size, vol_ro) = EXPORTS[u.ratio(1, 4u8).unwrap_or(false) as usize];
    let ro = vol_ro || server_ro;
    let framing = match u.int_in_range(0..=2u8).unwrap_or(1) {
        0 => Framing::Simple,
        1 => Framing::Structured,
        _ => Framing::Extended,
    };
    let structured = framing != Framing::Simple;
    let ctx = structured && u.ratio(3, 4u8).unwrap_or(true);
    let mut model = contents(name);
    let n = u.int_in_range(1..=24u8).unwrap_or(1);
    for _ in 0..n {
        let r = request(&mut u, size);
        let errs = allowed_errors(&r, structured, ctx, ro, size);
        let out = if framing == Framing::Extended {
            // The same request in the 32-byte layout (64-bit length).
            let mut hdr = [0u8; EXT_REQUEST_SIZE];
            hdr[0..4].copy_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
            hdr[4..24].copy_from_slice(&r.hdr[4..24]);
            hdr[24..32].copy_from_slice(&(r.length as u64).to_be_bytes());
            srv.execute_ext(name, ctx, &hdr, &r.payload)
        } else {
            srv.execute(name, structured, ctx, &r.hdr, &r.payload)
        }
        .expect("the export exists");
        check_reply(&out, &r, framing, &errs, &model);
        if errs.is_empty() {
            let (o, l) = (r.offset as usize, r.length as usize);
            match r.kind {
                CMD_WRITE => model[o..o + l].copy_from_slice(&r.payload),
                CMD_TRIM | CMD_WRITE_ZEROES => model[o..o + l].fill(0),
                _ => {}
            }
        }
    }
    let pool = srv.pool();
    let mut got = vec![0u8; size as usize];
    let id = pool.lock().unwrap().find(name).unwrap().0;
    pool.read(id, 0, &mut got).unwrap();
    assert!(
        got == model,
        "the export's contents differ from what was written"
    );
    pool.commit().unwrap();
    let rep = thinpool::check::check(meta, None);
    assert!(rep.is_clean(), "check after requests");
}

/// A whole connection over a socket pair: negotiation bytes, then raw requests (with
/// payloads), then possibly garbage. Every reply is well-framed and answers a request that
/// was sent; the connection ends; the pool checks clean afterwards.
pub fn connection(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (srv, meta) = new_server(false);
    let mut c = Vec::new();
    let structured = u.ratio(1, 2u8).unwrap_or(true);
    let plain = u.ratio(3, 4u8).unwrap_or(true);
    if plain {
        c.extend_from_slice(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes());
        let mut opt = |o: u32, d: &[u8]| {
            c.extend_from_slice(&IHAVEOPT.to_be_bytes());
            c.extend_from_slice(&o.to_be_bytes());
            c.extend_from_slice(&(d.len() as u32).to_be_bytes());
            c.extend_from_slice(d);
        };
        if structured {
            opt(OPT_STRUCTURED_REPLY, &[]);
        }
        let mut go = Vec::new();
        go.extend_from_slice(&1u32.to_be_bytes());
        go.extend_from_slice(b"v");
        go.extend_from_slice(&0u16.to_be_bytes());
        opt(OPT_GO, &go);
    } else {
        c = negotiation_bytes(&mut u);
    }
    let neg_len = c.len();
    let mut handles = std::collections::HashMap::new();
    for _ in 0..u.int_in_range(0..=12u8).unwrap_or(0) {
        let r = request(&mut u, EXPORTS[0].1);
        // A repeated handle makes the reply's request ambiguous: None.
        handles
            .entry(r.handle)
            .and_modify(|e| *e = None)
            .or_insert(Some((r.kind, r.length)));
        c.extend_from_slice(&r.hdr);
        c.extend_from_slice(&r.payload);
    }
    if u.ratio(1, 4u8).unwrap_or(false) {
        let n = u.int_in_range(0..=64usize).unwrap_or(0);
        c.extend_from_slice(u.bytes(n).unwrap_or(&[]));
    }
    let mutated = u.ratio(1, 8u8).unwrap_or(false);
    if mutated {
        let mut tail = c.split_off(neg_len);
        super::mutate(&mut u, &mut tail, 28);
        c.extend_from_slice(&tail);
    }
    let out = srv.connection(&c).expect("the connection runs");
    let (mut rest, attached) = check_negotiation(&c, &out, false);
    if attached.is_none() {
        assert!(rest.is_empty(), "transmission replies without an attach");
    }
    if mutated || !plain {
        // Where the requests begin, or their handles and lengths, are not known.
        rest = &[];
    }
    let structured = attached.as_ref().is_some_and(|a| a.1);
    // Replies: simple or structured, each for a request that was sent.
    while !rest.is_empty() {
        let magic = be32(&rest[..4]);
        if magic == SIMPLE_REPLY_MAGIC {
            let h = take(&mut rest, SIMPLE_REPLY_SIZE).expect("a simple reply");
            let handle = be64(&h[8..16]);
            let Some(req) = handles.get(&handle) else {
                panic!("a reply for handle {handle} nobody sent")
            };
            // A successful simple read reply carries the request's length of data.
            if u32_at(h, 4) == 0 {
                match req {
                    Some((CMD_READ, len)) => {
                        take(&mut rest, *len as usize).expect("the read's data");
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        } else {
            assert!(structured, "a structured reply in a simple session");
            assert_eq!(magic, STRUCTURED_REPLY_MAGIC, "reply magic");
            let h = take(&mut rest, CHUNK_HEADER_SIZE).expect("a chunk header");
            let handle = be64(&h[8..16]);
            assert!(
                handles.contains_key(&handle),
                "a chunk for handle {handle} nobody sent"
            );
            take(&mut rest, u32_at(h, 16) as usize).expect("a whole chunk");
        }
    }
    srv.pool().commit().unwrap();
    drop(srv);
    let rep = thinpool::check::check(meta, None);
    assert!(rep.is_clean(), "check after a connection");
}
