//! Reading and writing the records of an rbd diff v1 stream, byte for byte as Ceph does
//! (the format is described in [the module above](super)). The reader checks every record
//! and says at which byte a stream is bad or cut short.

use super::{Record, HEADER};
use crate::export::{ExportError, Result};
use std::io::{Read, Write};

/// Longest snapshot name accepted from a stream.
const MAX_NAME: u32 = 4096;

/// Reads records from a stream, tracking the byte position for error messages.
pub struct DiffReader<'a> {
    r: &'a mut dyn Read,
    pos: u64,
}

impl<'a> DiffReader<'a> {
    /// Check the header.
    pub fn new(r: &'a mut dyn Read) -> Result<DiffReader<'a>> {
        let mut rd = DiffReader { r, pos: 0 };
        let mut h = [0u8; HEADER.len()];
        let n = rd.fill(&mut h)?;
        if n > 0 && n < h.len() && HEADER.starts_with(&h[..n]) {
            return Err(ExportError::Truncated {
                offset: n as u64,
                what: "the header",
            });
        }
        if &h != HEADER {
            return Err(ExportError::BadHeader {
                found: String::from_utf8_lossy(&h[..n]).into_owned(),
            });
        }
        Ok(rd)
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = crate::io::read_full(self.r, buf).map_err(ExportError::io(format!(
            "reading the diff at byte {}",
            self.pos
        )))?;
        self.pos += n as u64;
        Ok(n)
    }

    fn exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<()> {
        if self.fill(buf)? < buf.len() {
            return Err(ExportError::Truncated {
                offset: self.pos,
                what,
            });
        }
        Ok(())
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        let mut b = [0u8; 8];
        self.exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    fn name(&mut self, what: &'static str) -> Result<String> {
        let at = self.pos;
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        let len = u32::from_le_bytes(b);
        if len > MAX_NAME {
            return Err(ExportError::BadRecord {
                offset: at,
                why: format!("a snapshot name of {len} bytes is too long"),
            });
        }
        let mut s = vec![0u8; len as usize];
        self.exact(&mut s, what)?;
        String::from_utf8(s).map_err(|_| ExportError::BadRecord {
            offset: at,
            why: "a snapshot name is not UTF-8".into(),
        })
    }

    /// The next record. For `Write`, the caller must then read exactly `length` bytes with
    /// [`DiffReader::read_data`].
    pub fn next_record(&mut self) -> Result<Record> {
        let mut tag = [0u8; 1];
        if self.fill(&mut tag)? == 0 {
            return Err(ExportError::Truncated {
                offset: self.pos,
                what: "the record stream (no end record 'e')",
            });
        }
        let at = self.pos - 1;
        let range = |rd: &mut Self, what| -> Result<(u64, u64)> {
            let offset = rd.u64(what)?;
            let length = rd.u64(what)?;
            if offset.checked_add(length).is_none() {
                return Err(ExportError::BadRecord {
                    offset: at,
                    why: format!("range {offset}+{length} overflows"),
                });
            }
            Ok((offset, length))
        };
        Ok(match tag[0] {
            b'f' => Record::FromSnap(self.name("a from-snapshot record ('f')")?),
            b't' => Record::ToSnap(self.name("a to-snapshot record ('t')")?),
            b's' => Record::Size(self.u64("a size record ('s')")?),
            b'w' => {
                let (offset, length) = range(self, "a data record ('w')")?;
                Record::Write { offset, length }
            }
            b'z' => {
                let (offset, length) = range(self, "a zero record ('z')")?;
                Record::Zero { offset, length }
            }
            b'e' => Record::End,
            t => return Err(ExportError::UnknownTag { tag: t, offset: at }),
        })
    }

    /// Data of the current `w` record.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<()> {
        self.exact(buf, "the data of a 'w' record")
    }
}

/// Writes a stream.
pub struct DiffWriter<'a> {
    w: &'a mut dyn Write,
}

impl<'a> DiffWriter<'a> {
    pub fn new(w: &'a mut dyn Write) -> Result<DiffWriter<'a>> {
        let mut dw = DiffWriter { w };
        dw.put(HEADER)?;
        Ok(dw)
    }
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w
            .write_all(b)
            .map_err(ExportError::io("writing the diff"))
    }
    fn named(&mut self, tag: u8, name: &str) -> Result<()> {
        self.put(&[tag])?;
        self.put(&(name.len() as u32).to_le_bytes())?;
        self.put(name.as_bytes())
    }
    pub fn from_snap(&mut self, name: &str) -> Result<()> {
        self.named(b'f', name)
    }
    pub fn to_snap(&mut self, name: &str) -> Result<()> {
        self.named(b't', name)
    }
    pub fn size(&mut self, size: u64) -> Result<()> {
        self.put(b"s")?;
        self.put(&size.to_le_bytes())
    }
    fn range(&mut self, tag: u8, offset: u64, length: u64) -> Result<()> {
        self.put(&[tag])?;
        self.put(&offset.to_le_bytes())?;
        self.put(&length.to_le_bytes())
    }
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.range(b'w', offset, data.len() as u64)?;
        self.put(data)
    }
    pub fn zero(&mut self, offset: u64, length: u64) -> Result<()> {
        self.range(b'z', offset, length)
    }
    pub fn end(mut self) -> Result<()> {
        self.put(b"e")?;
        self.w.flush().map_err(ExportError::io("flushing the diff"))
    }
}
