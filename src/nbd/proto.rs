//! NBD wire constants and encoders (fixed newstyle negotiation, simple and structured
//! replies). Every number is big-endian on the wire. The values follow the protocol document
//! `doc/proto.md` of the NetworkBlockDevice/nbd project.

use std::io::{self, Read};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR + 1;
pub const REP_ERR_POLICY: u32 = REP_ERR + 2;
pub const REP_ERR_INVALID: u32 = REP_ERR + 3;
pub const REP_ERR_TLS_REQD: u32 = REP_ERR + 5;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR + 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_ERR + 7;
pub const REP_ERR_TOO_BIG: u32 = REP_ERR + 9;
pub const REP_ERR_EXT_HEADER_REQD: u32 = REP_ERR + 10;

// NBD_REP_INFO types.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const TF_HAS_FLAGS: u16 = 1 << 0;
pub const TF_READ_ONLY: u16 = 1 << 1;
pub const TF_SEND_FLUSH: u16 = 1 << 2;
pub const TF_SEND_FUA: u16 = 1 << 3;
pub const TF_SEND_TRIM: u16 = 1 << 5;
pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TF_SEND_DF: u16 = 1 << 7;
pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TF_SEND_CACHE: u16 = 1 << 10;
pub const TF_SEND_FAST_ZERO: u16 = 1 << 11;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
/// Extended headers only: the request carries `length` bytes of payload.
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

// Structured reply chunk types and flags.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_BLOCK_STATUS_EXT: u16 = 6;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

// base:allocation status bits.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// The metadata contexts we offer: `base:allocation` with this id, and
/// `thinpool:changed:SNAP` (per extent: differs from snapshot SNAP?), numbered from
/// `CHANGED_ID_BASE` in the order a client selected them.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const BASE_ALLOCATION_ID: u32 = 1;
pub const CHANGED_PREFIX: &str = "thinpool:changed:";
pub const CHANGED_ID_BASE: u32 = 2;
/// Most `thinpool:changed:` contexts one connection may select (each costs a tree walk per
/// BLOCK_STATUS).
pub const MAX_CHANGED_CONTEXTS: usize = 8;
/// `thinpool:changed:` status bit, as `qemu:dirty-bitmap:` sets it for dirty extents.
pub const STATE_CHANGED: u32 = 1 << 0;

// Error values (NBD defines its own numbers; they happen to match Linux errno).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// Largest READ/WRITE payload we accept (also advertised as the maximum block size).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Preferred I/O size advertised in NBD_INFO_BLOCK_SIZE.
pub const PREFERRED_BLOCK: u32 = 4096;

/// Size of a transmission request header (compact, and with extended headers).
pub const REQUEST_SIZE: usize = 28;
pub const EXT_REQUEST_SIZE: usize = 32;
/// Size of a simple reply header.
pub const SIMPLE_REPLY_SIZE: usize = 16;
/// Size of a structured reply chunk header (compact, and with extended headers).
pub const CHUNK_HEADER_SIZE: usize = 20;
pub const EXT_CHUNK_HEADER_SIZE: usize = 32;

/// Map a host errno (from `PoolError::errno`) to an NBD error value.
pub fn nbd_errno(errno: i32) -> u32 {
    match errno {
        libc::EPERM | libc::EROFS | libc::EACCES => EPERM,
        libc::ENOMEM => ENOMEM,
        libc::EINVAL => EINVAL,
        libc::ENOSPC | libc::EDQUOT | libc::EFBIG => ENOSPC,
        libc::EOVERFLOW => EOVERFLOW,
        libc::ENOTSUP => ENOTSUP,
        libc::ESHUTDOWN => ESHUTDOWN,
        _ => EIO,
    }
}

/// One transmission request header.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub magic: u32,
    pub flags: u16,
    pub kind: u16,
    pub handle: u64,
    pub offset: u64,
    /// Effect length (bytes of the export), or a write's payload length; 64 bits only with
    /// extended headers.
    pub length: u64,
}

impl Request {
    /// The fields both layouts share (the first 24 bytes), with `length`.
    fn fields(b: &[u8], length: u64) -> Request {
        Request {
            magic: be32(&b[0..4]),
            flags: be16(&b[4..6]),
            kind: be16(&b[6..8]),
            handle: be64(&b[8..16]),
            offset: be64(&b[16..24]),
            length,
        }
    }

    pub fn decode(b: &[u8; REQUEST_SIZE]) -> Request {
        Request::fields(b, be32(&b[24..28]) as u64)
    }

    /// An extended request header (NBD_OPT_EXTENDED_HEADERS).
    pub fn decode_ext(b: &[u8; EXT_REQUEST_SIZE]) -> Request {
        Request::fields(b, be64(&b[24..32]))
    }
}

pub fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
pub fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

pub fn read_u16(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}
pub fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}
pub fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Read and discard `n` bytes (a payload we refuse but must skip to stay in sync).
pub fn skip(r: &mut impl Read, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// A simple reply header, written into `out[..16]`.
pub fn simple_reply(out: &mut [u8], error: u32, handle: u64) {
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&handle.to_be_bytes());
}

/// Where a chunk belongs: the request's handle (cookie) and offset (echoed by extended
/// headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkTo {
    pub handle: u64,
    pub offset: u64,
    pub extended: bool,
}

impl ChunkTo {
    /// Bytes of the chunk header.
    pub fn header_size(&self) -> usize {
        if self.extended {
            EXT_CHUNK_HEADER_SIZE
        } else {
            CHUNK_HEADER_SIZE
        }
    }
}

/// A chunk header for a payload of `length` bytes appended to `out`: structured (20 bytes)
/// or extended (32 bytes).
pub fn chunk_header(out: &mut Vec<u8>, to: ChunkTo, flags: u16, kind: u16, length: u64) {
    let magic = if to.extended {
        EXTENDED_REPLY_MAGIC
    } else {
        STRUCTURED_REPLY_MAGIC
    };
    out.extend_from_slice(&magic.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&to.handle.to_be_bytes());
    if to.extended {
        out.extend_from_slice(&to.offset.to_be_bytes());
        out.extend_from_slice(&length.to_be_bytes());
    } else {
        out.extend_from_slice(&(length as u32).to_be_bytes());
    }
}

/// A complete chunk (header and payload) appended to `out`.
pub fn push_chunk(out: &mut Vec<u8>, to: ChunkTo, flags: u16, kind: u16, payload: &[u8]) {
    chunk_header(out, to, flags, kind, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// An NBD_REPLY_TYPE_ERROR chunk with a human-readable message, marked final.
pub fn error_chunk(to: ChunkTo, error: u32, msg: &str) -> Vec<u8> {
    // Strings in the protocol must stay under 4096 bytes; ours are short, but cut safely.
    let mut end = msg.len().min(1024);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    let msg = &msg.as_bytes()[..end];
    let mut payload = Vec::with_capacity(6 + msg.len());
    payload.extend_from_slice(&error.to_be_bytes());
    payload.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    payload.extend_from_slice(msg);
    let mut out = Vec::new();
    push_chunk(&mut out, to, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, &payload);
    out
}

/// An option reply header followed by its payload.
pub fn option_reply(option: u32, reply: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + payload.len());
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrip() {
        let mut b = [0u8; REQUEST_SIZE];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&CMD_FLAG_FUA.to_be_bytes());
        b[6..8].copy_from_slice(&CMD_WRITE.to_be_bytes());
        b[8..16].copy_from_slice(&7u64.to_be_bytes());
        b[16..24].copy_from_slice(&4096u64.to_be_bytes());
        b[24..28].copy_from_slice(&512u32.to_be_bytes());
        let r = Request::decode(&b);
        assert_eq!(r.magic, REQUEST_MAGIC);
        assert_eq!((r.flags, r.kind, r.handle), (CMD_FLAG_FUA, CMD_WRITE, 7));
        assert_eq!((r.offset, r.length), (4096, 512));
    }

    #[test]
    fn error_chunk_layout() {
        let to = ChunkTo {
            handle: 9,
            offset: 0,
            extended: false,
        };
        let c = error_chunk(to, EINVAL, "bad");
        assert_eq!(c.len(), CHUNK_HEADER_SIZE + 6 + 3);
        assert_eq!(be32(&c[0..4]), STRUCTURED_REPLY_MAGIC);
        assert_eq!(be16(&c[4..6]), REPLY_FLAG_DONE);
        assert_eq!(be16(&c[6..8]), REPLY_TYPE_ERROR);
        assert_eq!(be64(&c[8..16]), 9);
        assert_eq!(be32(&c[16..20]), 9);
        assert_eq!(be32(&c[20..24]), EINVAL);
        assert_eq!(be16(&c[24..26]), 3);
    }

    #[test]
    fn errno_mapping() {
        assert_eq!(nbd_errno(libc::ENOSPC), ENOSPC);
        assert_eq!(nbd_errno(libc::EPERM), EPERM);
        assert_eq!(nbd_errno(libc::EINVAL), EINVAL);
        assert_eq!(nbd_errno(libc::ENOENT), EIO);
    }
}
