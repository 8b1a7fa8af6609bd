//! Per-volume details, stored in the details tree (`volume id -> Details`).
//!
//! Value layout (176 bytes, little-endian): `0..8` size in bytes; `8..16` mapped blocks;
//! `16..24` creation time (seconds since the epoch); `24..28` pool snapshot time at creation;
//! `28..32` flags (bit 0 read-only); `32..40` origin volume id (`u64::MAX`: none);
//! `40..48` seq of the commit that created it; `48` name length; `49..176` name (UTF-8).

use crate::meta::btree::{TreeKind, ValueRefs, DETAILS_KIND_ID};

pub const DETAILS_SIZE: usize = 176;
pub const MAX_NAME: usize = 127;
pub const NO_ORIGIN: u64 = u64::MAX;

pub const DETAILS: TreeKind = TreeKind {
    id: DETAILS_KIND_ID,
    value_size: DETAILS_SIZE,
    refs: ValueRefs::None,
};

const FLAG_READ_ONLY: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Details {
    pub size: u64,
    pub mapped: u64,
    pub created: u64,
    pub snap_time: u32,
    pub read_only: bool,
    pub origin: u64,
    pub created_seq: u64,
    pub name: String,
}

impl Details {
    pub fn encode(&self) -> [u8; DETAILS_SIZE] {
        let mut b = [0u8; DETAILS_SIZE];
        b[0..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..16].copy_from_slice(&self.mapped.to_le_bytes());
        b[16..24].copy_from_slice(&self.created.to_le_bytes());
        b[24..28].copy_from_slice(&self.snap_time.to_le_bytes());
        let flags = if self.read_only { FLAG_READ_ONLY } else { 0 };
        b[28..32].copy_from_slice(&flags.to_le_bytes());
        b[32..40].copy_from_slice(&self.origin.to_le_bytes());
        b[40..48].copy_from_slice(&self.created_seq.to_le_bytes());
        let name = self.name.as_bytes();
        b[48] = name.len() as u8;
        b[49..49 + name.len()].copy_from_slice(name);
        b
    }

    pub fn decode(b: &[u8]) -> Details {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let n = (b[48] as usize).min(MAX_NAME);
        Details {
            size: u64_at(0),
            mapped: u64_at(8),
            created: u64_at(16),
            snap_time: u32_at(24),
            read_only: u32_at(28) & FLAG_READ_ONLY != 0,
            origin: u64_at(32),
            created_seq: u64_at(40),
            name: String::from_utf8_lossy(&b[49..49 + n]).into_owned(),
        }
    }
}

/// Volume names: 1..=127 bytes, no `/`, no NUL, not `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("a name cannot be empty");
    }
    if name.len() > MAX_NAME {
        return Err("a name is at most 127 bytes");
    }
    if name.contains('/') || name.contains('\0') {
        return Err("a name cannot contain '/' or NUL");
    }
    if name == "." || name == ".." {
        return Err("'.' and '..' are not volume names");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_round_trip() {
        let d = Details {
            size: 10 << 30,
            mapped: 17,
            created: 1_700_000_000,
            snap_time: 4,
            read_only: true,
            origin: 3,
            created_seq: 99,
            name: "vm-disk.0".into(),
        };
        assert_eq!(Details::decode(&d.encode()), d);
        assert!(validate_name("a/b").is_err());
        assert!(validate_name(&"x".repeat(128)).is_err());
        assert!(validate_name(&"x".repeat(127)).is_ok());
    }
}
