//! Fixed newstyle negotiation: the option haggling that ends with a client attached to one
//! export (NBD_OPT_GO or the old NBD_OPT_EXPORT_NAME) or with the connection closed.
//!
//! Any malformed option is answered with an error reply when the stream stays in sync
//! (we know the option's length), and ends the connection when it does not (bad magic,
//! absurd lengths). Nothing here touches volume data; export lookups take the pool lock
//! briefly through [`Shared::find_export`].
//!
//! `NBD_OPT_STARTTLS` (docs/nbd.md, TLS): once acknowledged, the caller's `start_tls` turns
//! the stream into a TLS session and haggling starts over: nothing negotiated in plain text
//! (structured replies, extended headers, meta contexts) carries over, so a man in the middle
//! cannot plant state before the encryption (CVE-2021-3716 in nbdkit was that bug). With
//! `--tls require`, every option before it but ABORT gets `NBD_REP_ERR_TLS_REQD`.

use super::proto::*;
use super::shared::{Export, Shared};
use super::tls::{Tls, TlsMode};
use std::io::{self, Read, Write};

/// Largest option payload we read into memory; larger ones are skipped and refused.
const MAX_OPTION: u32 = 64 << 10;
/// Larger than this, skipping is not worth it: the client is broken, hang up.
const MAX_SKIP: u32 = 16 << 20;

/// What negotiation settled on.
#[derive(Debug, Clone)]
pub struct Session {
    pub export: Export,
    /// Structured replies (also true with extended headers, which imply them).
    pub structured: bool,
    /// Extended headers (NBD_OPT_EXTENDED_HEADERS): 32-byte requests and reply chunks,
    /// 64-bit lengths, never a simple reply.
    pub extended: bool,
    /// `base:allocation` was selected for this export.
    pub allocation_context: bool,
    /// `thinpool:changed:SNAP` contexts selected for this export, in their id order.
    pub changed: Vec<ChangedContext>,
}

/// A selected `thinpool:changed:SNAP` context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedContext {
    pub id: u32,
    /// SNAP, the volume extents are compared with.
    pub base: crate::pool::VolumeId,
    pub name: String,
}

impl Session {
    /// How a reply chunk to `req` is addressed.
    pub fn to(&self, req: &Request) -> ChunkTo {
        ChunkTo {
            handle: req.handle,
            offset: req.offset,
            extended: self.extended,
        }
    }

    /// A BLOCK_STATUS request has something to report.
    pub fn has_contexts(&self) -> bool {
        self.allocation_context || !self.changed.is_empty()
    }
}

/// Transmission flags for an export.
pub fn transmission_flags(export: &Export, structured: bool) -> u16 {
    let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN | TF_SEND_CACHE;
    if export.read_only {
        f |= TF_READ_ONLY;
    } else {
        f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES | TF_SEND_FAST_ZERO;
    }
    if structured {
        f |= TF_SEND_DF;
    }
    f
}

/// Cursor over an option's payload; every read is bounds-checked.
struct Payload<'a>(&'a [u8]);

impl<'a> Payload<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(be16)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(be32)
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        if n > 4096 {
            return None;
        }
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

enum Next {
    Continue,
    Close,
    Attach(Session),
    /// STARTTLS was acknowledged: the TLS handshake comes next.
    StartTls,
}

/// Turns a stream into a TLS session over it (`Tls::start` for the server's sockets).
pub type StartTls<'a, S> = &'a mut dyn FnMut(&mut S, &Tls) -> io::Result<()>;

/// Negotiate with a new client. `Ok(None)`: the client left or broke the protocol.
pub fn negotiate<S: Read + Write>(
    s: &mut S,
    shared: &Shared,
    start_tls: StartTls<'_, S>,
) -> io::Result<Option<Session>> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello)?;
    s.flush()?;
    let client_flags = read_u32(s)?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        // The spec requires closing when the client asks for something we did not offer.
        return Ok(None);
    }
    let mut st = State::new(client_flags & FLAG_C_NO_ZEROES != 0, false);
    loop {
        if read_u64(s)? != IHAVEOPT {
            return Ok(None);
        }
        let opt = read_u32(s)?;
        let len = read_u32(s)?;
        if len > MAX_OPTION {
            if opt == OPT_EXPORT_NAME || len > MAX_SKIP {
                return Ok(None);
            }
            skip(s, len as u64)?;
            reply_err(s, opt, REP_ERR_TOO_BIG, "option payload too large")?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match st.option(s, shared, opt, &data)? {
            Next::Continue => {}
            Next::Close => return Ok(None),
            Next::Attach(sess) => return Ok(Some(sess)),
            Next::StartTls => {
                let Some(tls) = shared.tls() else {
                    return Ok(None);
                };
                // A failed handshake ends the connection (the pump closes it).
                start_tls(s, tls)?;
                st = State::new(st.no_zeroes, true);
            }
        }
    }
}

struct State {
    no_zeroes: bool,
    /// The connection runs under TLS (STARTTLS succeeded).
    tls: bool,
    structured: bool,
    /// NBD_OPT_EXTENDED_HEADERS was accepted (structured is then true as well).
    extended: bool,
    /// What NBD_OPT_SET_META_CONTEXT selected: for which export, `base:allocation` or not,
    /// and the `thinpool:changed:` contexts.
    selected: Option<(String, bool, Vec<ChangedContext>)>,
}

impl State {
    /// Nothing negotiated yet (again, after STARTTLS).
    fn new(no_zeroes: bool, tls: bool) -> State {
        State {
            no_zeroes,
            tls,
            structured: false,
            extended: false,
            selected: None,
        }
    }
}

fn reply_err<S: Write>(s: &mut S, opt: u32, code: u32, msg: &str) -> io::Result<()> {
    s.write_all(&option_reply(opt, code, msg.as_bytes()))?;
    s.flush()
}

fn reply_context<S: Write>(s: &mut S, opt: u32, id: u32, name: &str) -> io::Result<()> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(name.as_bytes());
    s.write_all(&option_reply(opt, REP_META_CONTEXT, &p))
}

fn ack<S: Write>(s: &mut S, opt: u32) -> io::Result<()> {
    s.write_all(&option_reply(opt, REP_ACK, &[]))?;
    s.flush()
}

impl State {
    fn option<S: Read + Write>(
        &mut self,
        s: &mut S,
        shared: &Shared,
        opt: u32,
        data: &[u8],
    ) -> io::Result<Next> {
        if shared.stopping() && opt != OPT_ABORT {
            reply_err(s, opt, REP_ERR_SHUTDOWN, "server is shutting down")?;
            return Ok(Next::Continue);
        }
        if opt == OPT_STARTTLS {
            return self.starttls(s, shared, data);
        }
        let required = shared.tls().is_some_and(|t| t.mode == TlsMode::Require);
        if required && !self.tls {
            match opt {
                OPT_ABORT => {}
                // No error reply is possible here.
                OPT_EXPORT_NAME => return Ok(Next::Close),
                _ => {
                    let msg = "TLS is required: send NBD_OPT_STARTTLS first";
                    reply_err(s, opt, REP_ERR_TLS_REQD, msg)?;
                    return Ok(Next::Continue);
                }
            }
        }
        match opt {
            // A client with extended headers must use NBD_OPT_GO: this one is broken.
            OPT_EXPORT_NAME if self.extended => Ok(Next::Close),
            OPT_EXPORT_NAME => {
                let Ok(name) = std::str::from_utf8(data) else {
                    return Ok(Next::Close);
                };
                // This option cannot fail politely: an unknown export closes the connection.
                let Some(export) = shared.find_export(name) else {
                    return Ok(Next::Close);
                };
                let mut out = Vec::with_capacity(10 + 124);
                out.extend_from_slice(&export.size.to_be_bytes());
                out.extend_from_slice(&transmission_flags(&export, self.structured).to_be_bytes());
                if !self.no_zeroes {
                    out.resize(out.len() + 124, 0);
                }
                s.write_all(&out)?;
                s.flush()?;
                Ok(Next::Attach(self.session(export)))
            }
            OPT_ABORT => {
                // The client may already have closed; a failed ACK does not matter.
                let _ = ack(s, opt);
                Ok(Next::Close)
            }
            OPT_LIST => {
                if !data.is_empty() {
                    reply_err(s, opt, REP_ERR_INVALID, "NBD_OPT_LIST takes no data")?;
                    return Ok(Next::Continue);
                }
                for name in shared.export_names() {
                    let mut p = Vec::with_capacity(4 + name.len());
                    p.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    p.extend_from_slice(name.as_bytes());
                    s.write_all(&option_reply(opt, REP_SERVER, &p))?;
                }
                ack(s, opt)?;
                Ok(Next::Continue)
            }
            OPT_INFO | OPT_GO => self.info_or_go(s, shared, opt, data),
            OPT_STRUCTURED_REPLY if self.extended => {
                let msg = "extended headers are already negotiated; they take precedence";
                reply_err(s, opt, REP_ERR_EXT_HEADER_REQD, msg)?;
                Ok(Next::Continue)
            }
            OPT_EXTENDED_HEADERS => {
                if !data.is_empty() {
                    let msg = "NBD_OPT_EXTENDED_HEADERS takes no data";
                    reply_err(s, opt, REP_ERR_INVALID, msg)?;
                    return Ok(Next::Continue);
                }
                self.extended = true;
                self.structured = true;
                ack(s, opt)?;
                Ok(Next::Continue)
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    reply_err(
                        s,
                        opt,
                        REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data",
                    )?;
                    return Ok(Next::Continue);
                }
                self.structured = true;
                ack(s, opt)?;
                Ok(Next::Continue)
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => self.meta_context(s, shared, opt, data),
            _ => {
                reply_err(s, opt, REP_ERR_UNSUP, "option not supported by thinpool")?;
                Ok(Next::Continue)
            }
        }
    }

    fn starttls<S: Write>(&mut self, s: &mut S, shared: &Shared, data: &[u8]) -> io::Result<Next> {
        let (code, msg) = if !data.is_empty() {
            (REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data")
        } else if self.tls {
            (REP_ERR_INVALID, "TLS is already in use")
        } else if shared.tls().is_none() {
            (
                REP_ERR_POLICY,
                "TLS is not enabled on this server (serve --tls-cert)",
            )
        } else {
            ack(s, OPT_STARTTLS)?;
            return Ok(Next::StartTls);
        };
        reply_err(s, OPT_STARTTLS, code, msg)?;
        Ok(Next::Continue)
    }

    fn session(&self, export: Export) -> Session {
        let (allocation_context, changed) = match &self.selected {
            Some((name, alloc, changed)) if self.structured && *name == export.name => {
                (*alloc, changed.clone())
            }
            _ => (false, Vec::new()),
        };
        Session {
            export,
            structured: self.structured,
            extended: self.extended,
            allocation_context,
            changed,
        }
    }

    fn info_or_go<S: Read + Write>(
        &mut self,
        s: &mut S,
        shared: &Shared,
        opt: u32,
        data: &[u8],
    ) -> io::Result<Next> {
        let mut p = Payload(data);
        let parsed = (|| {
            let name = p.string()?;
            let n = p.u16()?;
            let mut reqs = Vec::with_capacity(n as usize);
            for _ in 0..n {
                reqs.push(p.u16()?);
            }
            p.0.is_empty().then_some((name, reqs))
        })();
        let Some((name, reqs)) = parsed else {
            reply_err(s, opt, REP_ERR_INVALID, "malformed NBD_OPT_INFO/GO request")?;
            return Ok(Next::Continue);
        };
        let Some(export) = shared.find_export(&name) else {
            let msg = format!("no export named '{name}' (see NBD_OPT_LIST or `thinpool list`)");
            reply_err(s, opt, REP_ERR_UNKNOWN, &msg)?;
            return Ok(Next::Continue);
        };
        let mut info = Vec::with_capacity(12);
        info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        info.extend_from_slice(&export.size.to_be_bytes());
        info.extend_from_slice(&transmission_flags(&export, self.structured).to_be_bytes());
        s.write_all(&option_reply(opt, REP_INFO, &info))?;
        // Block size limits: any alignment works (minimum 1), so sending them unasked is safe.
        let mut bs = Vec::with_capacity(14);
        bs.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        bs.extend_from_slice(&1u32.to_be_bytes());
        bs.extend_from_slice(&PREFERRED_BLOCK.to_be_bytes());
        bs.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
        s.write_all(&option_reply(opt, REP_INFO, &bs))?;
        if reqs.contains(&INFO_NAME) {
            let mut n = INFO_NAME.to_be_bytes().to_vec();
            n.extend_from_slice(export.name.as_bytes());
            s.write_all(&option_reply(opt, REP_INFO, &n))?;
        }
        if reqs.contains(&INFO_DESCRIPTION) {
            let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
            d.extend_from_slice(format!("thinpool volume {}", export.name).as_bytes());
            s.write_all(&option_reply(opt, REP_INFO, &d))?;
        }
        ack(s, opt)?;
        if opt == OPT_GO {
            Ok(Next::Attach(self.session(export)))
        } else {
            Ok(Next::Continue)
        }
    }

    fn meta_context<S: Read + Write>(
        &mut self,
        s: &mut S,
        shared: &Shared,
        opt: u32,
        data: &[u8],
    ) -> io::Result<Next> {
        let set = opt == OPT_SET_META_CONTEXT;
        let mut p = Payload(data);
        let parsed = (|| {
            let name = p.string()?;
            let n = p.u32()?;
            let mut queries = Vec::new();
            for _ in 0..n {
                queries.push(p.string()?);
            }
            p.0.is_empty().then_some((name, queries))
        })();
        let Some((name, queries)) = parsed else {
            reply_err(s, opt, REP_ERR_INVALID, "malformed meta context request")?;
            return Ok(Next::Continue);
        };
        if set && !self.structured {
            let msg = "NBD_OPT_SET_META_CONTEXT needs NBD_OPT_STRUCTURED_REPLY first";
            reply_err(s, opt, REP_ERR_INVALID, msg)?;
            return Ok(Next::Continue);
        }
        // The empty name is the default export: selections are kept under its real name.
        let Some(export) = shared.find_export(&name) else {
            reply_err(
                s,
                opt,
                REP_ERR_UNKNOWN,
                &format!("no export named '{name}'"),
            )?;
            return Ok(Next::Continue);
        };
        let name = export.name;
        let alloc = if set {
            queries.iter().any(|q| q == BASE_ALLOCATION)
        } else {
            queries.is_empty() || queries.iter().any(|q| q == BASE_ALLOCATION || q == "base:")
        };
        if alloc {
            reply_context(s, opt, BASE_ALLOCATION_ID, BASE_ALLOCATION)?;
        }
        // `thinpool:changed:SNAP` for every SNAP this client may compare with (exported,
        // or a snapshot of the export: `Shared::changed_base`). A LIST with no query, `thinpool:` or `thinpool:changed:`
        // gets the pattern itself (id 0: LIST ids mean nothing).
        let mut changed: Vec<ChangedContext> = Vec::new();
        let pattern = queries.is_empty()
            || queries
                .iter()
                .any(|q| q == "thinpool:" || q == CHANGED_PREFIX);
        if !set && pattern {
            reply_context(s, opt, 0, &format!("{CHANGED_PREFIX}*"))?;
        }
        for q in &queries {
            let Some(snap) = q.strip_prefix(CHANGED_PREFIX).filter(|n| !n.is_empty()) else {
                continue;
            };
            if changed.len() >= MAX_CHANGED_CONTEXTS || changed.iter().any(|c| c.name == snap) {
                continue;
            }
            let Some(base) = shared.changed_base(&name, snap) else {
                continue; // not ours to offer: no reply for it
            };
            let id = CHANGED_ID_BASE + changed.len() as u32;
            reply_context(s, opt, if set { id } else { 0 }, q)?;
            changed.push(ChangedContext {
                id,
                base,
                name: snap.to_string(),
            });
        }
        if set {
            // A new SET replaces the previous selection.
            self.selected = (alloc || !changed.is_empty()).then_some((name, alloc, changed));
        }
        ack(s, opt)?;
        Ok(Next::Continue)
    }
}
