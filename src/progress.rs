//! Progress of a long operation, reported by the library and drawn by the CLI (a bar on a
//! terminal; nothing in pipes or with `--json`). The library default is silent.

/// Work done so far, in the operation's unit (bytes for copies, nodes for the checker).
pub trait Progress {
    /// The amount of work, once known.
    fn set_total(&self, _total: u64) {}
    /// `n` more units done.
    fn inc(&self, _n: u64) {}
}

/// No progress reporting.
pub struct NoProgress;
impl Progress for NoProgress {}
