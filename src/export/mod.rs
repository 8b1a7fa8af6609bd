//! Moving volumes in and out of a pool: sparse raw images ([`raw`]), the changed ranges
//! between two volumes found by walking their mapping trees side by side ([`diff`]), and
//! incremental streams in Ceph's "rbd diff v1" format ([`rbd`]), so thinpool interoperates
//! with `rbd export-diff` / `rbd import-diff`.
//!
//! Invariants:
//! - an export reads only mapped blocks, in mapping order, in large coalesced reads; holes
//!   (unmapped or all-zero blocks) are never written to a regular file;
//! - an import never allocates a block that is all zeros, and on failure leaves the pool as
//!   it was (a new volume is removed; a diff's target is rolled back);
//! - a tree diff skips every subtree the two trees share (same block and generation), so its
//!   cost follows the size of the change, not the size of the volumes.

pub mod diff;
pub mod raw;
pub mod rbd;

pub use diff::{diff_volumes, diff_volumes_with_progress, DiffKind, DiffRange, DiffStats};
pub use raw::{export_raw, import_raw, ImportSource, RawSink};
pub use rbd::{export_diff, import_diff, ImportDiffOptions, ImportDiffReport};

use crate::pool::details::escape_name;
use crate::pool::PoolError;
use std::io;

/// Errors of export, import and diff operations.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("{what} failed: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("not an rbd diff v1 stream: the header is {found:?}, expected \"rbd diff v1\\n\"")]
    BadHeader { found: String },
    #[error("bad rbd diff stream at byte {offset}: unknown record tag 0x{tag:02x}")]
    UnknownTag { tag: u8, offset: u64 },
    #[error("rbd diff stream is truncated at byte {offset}: {what} is incomplete (was the transfer cut short?)")]
    Truncated { offset: u64, what: &'static str },
    #[error("bad rbd diff stream at byte {offset}: {why}")]
    BadRecord { offset: u64, why: String },
    #[error("the diff starts from snapshot '{}', but '{vol}' has no snapshot of that name (apply the earlier diffs first, or create the snapshot)", escape_name(.snap))]
    MissingFromSnap { vol: String, snap: String },
    #[error("the diff ends at snapshot '{}', but a volume of that name already exists (use --no-snapshot, or remove it)", escape_name(.0))]
    ToSnapExists(String),
    #[error("the diff ends at snapshot '{}', which cannot be a volume name (use --no-snapshot to apply it without taking the snapshot): {why}", escape_name(.name))]
    BadToSnap { name: String, why: String },
    #[error("import of '{name}' failed: {why}")]
    Import { name: String, why: String },
    #[error("an earlier import-diff into '{}' was interrupted: snapshot '{}' holds what it held before. `thinpool rollback {pool} {0} {1}` restores that (or `thinpool remove {pool} {1}` keeps '{0}' as it is); then import again", escape_name(.vol), escape_name(.guard))]
    InterruptedImport {
        pool: String,
        vol: String,
        guard: String,
    },
}

impl ExportError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> ExportError {
        let what = what.into();
        move |source| ExportError::Io { what, source }
    }
}

impl From<crate::meta::MetaError> for ExportError {
    fn from(e: crate::meta::MetaError) -> Self {
        ExportError::Pool(PoolError::Meta(e))
    }
}

pub type Result<T, E = ExportError> = std::result::Result<T, E>;

pub use crate::progress::{NoProgress, Progress};

/// True when every byte of `buf` is zero (64 bytes at a time, which the compiler vectorizes;
/// no `unsafe` outside `io/`).
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(64);
    let body = chunks.by_ref().all(|c| {
        c.chunks_exact(8)
            .fold(0u64, |a, w| a | u64::from_ne_bytes(w.try_into().unwrap()))
            == 0
    });
    body && chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 70_001];
        assert!(super::is_zero(&v));
        for i in [0, 3, 8, 4096, 70_000] {
            v[i] = 1;
            assert!(!super::is_zero(&v), "byte {i}");
            assert!(!super::is_zero(&v[i..]), "slice from {i}");
            v[i] = 0;
        }
        assert!(super::is_zero(&v[1..]));
        assert!(super::is_zero(&[]));
    }
}
