//! Per-volume details, stored in the details tree (`volume id -> Details`).
//!
//! Value layout (176 bytes, little-endian): `0..8` size in bytes; `8..16` mapped blocks;
//! `16..24` creation time (seconds since the epoch); `24..28` pool snapshot time at creation;
//! `28..32` flags (bit 0 read-only); `32..40` origin volume id (`u64::MAX`: none);
//! `40..48` seq of the commit that created it; `48` name length; `49..176` name (UTF-8).

use super::VolumeId;
use crate::meta::btree::{TreeKind, ValueRefs};

pub const DETAILS_SIZE: usize = 176;
pub const MAX_NAME: usize = 127;
/// The origin field of a volume that is no snapshot (or whose origin was removed).
const NO_ORIGIN: u64 = u64::MAX;

// Byte offsets of the value's fields (the layout above).
const SIZE: usize = 0;
const MAPPED: usize = 8;
const CREATED: usize = 16;
const SNAP_TIME: usize = 24;
const FLAGS: usize = 28;
const ORIGIN: usize = 32;
const CREATED_SEQ: usize = 40;
const NAME_LEN: usize = 48;
const NAME: usize = 49;

/// The details tree: volume id -> [`Details`] (no references).
pub const DETAILS: TreeKind = TreeKind {
    id: 5,
    name: "details",
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
    /// The volume this one is a snapshot of, while that one exists.
    pub origin: Option<VolumeId>,
    pub created_seq: u64,
    pub name: String,
}

impl Details {
    pub fn encode(&self) -> [u8; DETAILS_SIZE] {
        let mut b = [0u8; DETAILS_SIZE];
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(SIZE, &self.size.to_le_bytes());
        put(MAPPED, &self.mapped.to_le_bytes());
        put(CREATED, &self.created.to_le_bytes());
        put(SNAP_TIME, &self.snap_time.to_le_bytes());
        let flags = if self.read_only { FLAG_READ_ONLY } else { 0 };
        put(FLAGS, &flags.to_le_bytes());
        let origin = self.origin.map_or(NO_ORIGIN, |o| o.0);
        put(ORIGIN, &origin.to_le_bytes());
        put(CREATED_SEQ, &self.created_seq.to_le_bytes());
        let name = self.name.as_bytes();
        put(NAME_LEN, &[name.len() as u8]);
        put(NAME, name);
        b
    }

    pub fn decode(b: &[u8]) -> Details {
        let n = (b[NAME_LEN] as usize).min(MAX_NAME);
        Details {
            name: String::from_utf8_lossy(&b[NAME..NAME + n]).into_owned(),
            ..Details::decode_fixed(b)
        }
    }

    /// Every field but the name (left empty: no allocation).
    fn decode_fixed(b: &[u8]) -> Details {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        Details {
            size: u64_at(SIZE),
            mapped: u64_at(MAPPED),
            created: u64_at(CREATED),
            snap_time: u32_at(SNAP_TIME),
            read_only: u32_at(FLAGS) & FLAG_READ_ONLY != 0,
            origin: Some(u64_at(ORIGIN))
                .filter(|&o| o != NO_ORIGIN)
                .map(VolumeId),
            created_seq: u64_at(CREATED_SEQ),
            name: String::new(),
        }
    }
}

/// What a data request needs of a volume's details (see `Pool::resolve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IoVolume {
    pub size: u64,
    pub read_only: bool,
    pub snap_time: u32,
}

impl IoVolume {
    /// The fields of an encoded [`Details`] value the data path reads (no name).
    pub(crate) fn decode(b: &[u8]) -> IoVolume {
        IoVolume::from(&Details::decode_fixed(b))
    }
}

impl From<&Details> for IoVolume {
    fn from(d: &Details) -> IoVolume {
        IoVolume {
            size: d.size,
            read_only: d.read_only,
            snap_time: d.snap_time,
        }
    }
}

/// Whether a data request reads or changes the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}

/// The rule for volume and snapshot names, as messages state it (see [`validate_name`]).
pub const NAME_RULE: &str = "a name is 1 to 127 bytes of UTF-8, not '.' or '..', without '/', \
     control characters (U+0000-U+001F, U+007F-U+009F) or bidirectional overrides and \
     isolates (U+202A-U+202E, U+2066-U+2069)";

/// Whether `c` may not appear in a name: `/`, a control character (Unicode category Cc:
/// ASCII 0x00-0x1f and 0x7f, and C1 0x80-0x9f), which could end a `list` row early or
/// drive the terminal, or a bidirectional override or isolate, which reorders the text
/// shown around it.
fn forbidden_in_name(c: char) -> bool {
    c == '/' || c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// How a character refused in names is shown in a message: `\n`, `\x1b`, `U+202E`, `'/'`.
fn escape_char(c: char) -> String {
    match c {
        '\0' => "\\0".into(),
        '\t' => "\\t".into(),
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        '/' => "'/'".into(),
        c if c.is_ascii() => format!("\\x{:02x}", c as u32),
        c => format!("U+{:04X}", c as u32),
    }
}

/// `name` for a message: each character refused in names (except `/`) escaped (`\n`,
/// `\x1b`, `\u{202E}`), so a bad name cannot break a line, send a terminal escape or
/// reorder the message.
pub fn escape_name(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for c in name.chars() {
        if c == '/' || !forbidden_in_name(c) {
            s.push(c);
        } else if c.is_ascii() {
            s.push_str(&escape_char(c));
        } else {
            s.push_str(&format!("\\u{{{:04X}}}", c as u32));
        }
    }
    s
}

/// The one check of a new volume or snapshot name ([`NAME_RULE`]), used by every path that
/// names a volume: create, snapshot, rename, import, and import-diff's end snapshot. The
/// error says what is wrong (for a refused character: which, and at which byte offset) and
/// states the rule.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("it is empty; {NAME_RULE}"));
    }
    if let Some((at, c)) = name.char_indices().find(|&(_, c)| forbidden_in_name(c)) {
        return Err(format!(
            "character {} at byte {at} is not allowed; {NAME_RULE}",
            escape_char(c)
        ));
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "it is {} bytes long (at most {MAX_NAME} bytes); {NAME_RULE}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("'{name}' is reserved; {NAME_RULE}"));
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
            origin: Some(VolumeId(3)),
            created_seq: 99,
            name: "vm-disk.0".into(),
        };
        assert_eq!(Details::decode(&d.encode()), d);
        assert!(validate_name("a/b").is_err());
        assert!(validate_name(&"x".repeat(128)).is_err());
        assert!(validate_name(&"x".repeat(127)).is_ok());
    }

    #[test]
    fn the_name_rule() {
        for ok in ["v", "-x", "my disk", "café", "日本語", "a.b+c_d=e~!", "..."] {
            assert_eq!(validate_name(ok), Ok(()), "{ok:?}");
        }
        let why = |n: &str| validate_name(n).unwrap_err();
        assert!(why("a\nb").starts_with("character \\n at byte 1 is not allowed; "));
        assert!(why("\0").starts_with("character \\0 at byte 0 "));
        assert!(why("é\x1b[0m").starts_with("character \\x1b at byte 2 "));
        assert!(why("a\x7f").starts_with("character \\x7f at byte 1 "));
        assert!(why("a\u{9b}").starts_with("character U+009B at byte 1 "));
        assert!(why("a\u{202e}b").starts_with("character U+202E at byte 1 "));
        assert!(why("\u{202a}").starts_with("character U+202A at byte 0 "));
        assert!(why("\u{2066}").starts_with("character U+2066 at byte 0 "));
        assert!(why("x\u{2069}").starts_with("character U+2069 at byte 1 "));
        assert!(why("a/b").starts_with("character '/' at byte 1 "));
        assert!(why("").starts_with("it is empty; "));
        assert!(why(".").starts_with("'.' is reserved; "));
        assert!(why("..").starts_with("'..' is reserved; "));
        assert!(why(&"x".repeat(128)).starts_with("it is 128 bytes long (at most 127 bytes); "));
        // Neighbours of the refused ranges are names.
        for ok in ["\u{a0}", "\u{202f}", "\u{2065}", "\u{206a}"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok:?}");
        }
        assert!(why("a\tb").ends_with(NAME_RULE));
        assert_eq!(
            escape_name("a\n\x1b[1m\u{202e}/é\u{85}"),
            "a\\n\\x1b[1m\\u{202E}/é\\u{0085}"
        );
    }
}
