//! Incremental streams in Ceph's "rbd diff v1" format (`doc/dev/rbd-diff.rst` in Ceph), so a
//! diff written here can be applied by `rbd import-diff` and one written by `rbd export-diff`
//! can be applied here.
//!
//! Format: the header `rbd diff v1\n`, then records, each a one-byte tag: `f` from-snapshot
//! name and `t` to-snapshot name (le32 length + bytes), `s` image size (le64), then data
//! records `w` (le64 offset, le64 length, the bytes) and `z` (le64 offset, le64 length: reads
//! as zeros), and a final `e`.
//!
//! Applying a diff follows `rbd import-diff`: when the diff names a from-snapshot, the
//! target must have a snapshot of that name (a volume of that name whose origin is the
//! target); after the data, a read-only snapshot named by `t` is taken (unless `t` is the
//! target's own name: a diff of a head, applied to the same-named volume). The target is
//! protected by a temporary snapshot (O(1)) taken before the first change: any error rolls the
//! target back to it, so a bad or truncated stream leaves the target as it was.
//!
//! `stream` reads and writes the records ([`DiffReader`], [`DiffWriter`]), `export` turns a
//! volume's changes into a stream ([`export_diff`]), and `import` applies one
//! ([`import_diff`]).

mod export;
mod import;
mod stream;

pub use export::{export_diff, ExportDiffStats};
pub use import::{guard_name, import_diff, ImportDiffOptions, ImportDiffReport};
pub use stream::{DiffReader, DiffWriter};

/// The stream's first bytes.
pub const HEADER: &[u8; 12] = b"rbd diff v1\n";
/// Largest `w` record written, and bytes of a record's data handled at once.
const MAX_RECORD: u64 = 8 << 20;

/// One record of a stream (the data of a `w` record follows it, see [`DiffReader::read_data`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    FromSnap(String),
    ToSnap(String),
    Size(u64),
    Write { offset: u64, length: u64 },
    Zero { offset: u64, length: u64 },
    End,
}
