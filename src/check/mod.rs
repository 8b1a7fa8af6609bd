//! The checker (`thinpool check`, like `thin_check`): verifies every reachable metadata block
//! of the chosen record and recomputes every reference count.
//!
//! What it checks: every journal slot (valid or not, which record is chosen, gaps and
//! conflicting duplicates); every reachable node's checksum, own block number, pool UUID,
//! generation (equal to what its parent recorded and not newer than the record), tree kind,
//! fill, key order and key range, and leaf depth; every mapping inside the pool and inside its
//! volume; per-volume mapped counts against the details tree; every space-map page and its
//! free count; and the recomputed reference count of every metadata and data block against
//! the space maps (more on disk than computed is a leak, fewer is fatal).
//!
//! It reads blocks directly (no cache, each reachable node once) and visits the children of
//! an internal node in block order, so a freshly written tree is read front to back.

//!
//! `trees` walks the trees a record names (details, volumes, space-map trees, the previous
//! state's index), `node` checks each node of a tree, and `refs` counts references and
//! compares them with the space maps; [`Report`] holds the findings.

mod node;
mod refs;
mod report;
mod trees;

pub use report::{Finding, Report, Severity};

use crate::io::BlockDev;
use crate::meta::journal::{BlockRef, Record};
use crate::meta::label::Label;
use crate::meta::txn::Tm;
use crate::meta::BLOCK_SIZE;
use crate::pool::details::Details;
use crate::progress::{NoProgress, Progress};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Check a pool's metadata alone. `at_seq` checks an older record instead of the newest
/// usable one.
pub fn check(meta: Arc<dyn BlockDev>, at_seq: Option<u64>) -> Report {
    check_inner(meta, None, at_seq, &NoProgress)
}

/// Check a pool's metadata and the length of its data device: a mapped block whose end lies
/// past `data_len` is an error (the data file was truncated or replaced; it would read as
/// zeros).
pub fn check_with_data(meta: Arc<dyn BlockDev>, data_len: u64, at_seq: Option<u64>) -> Report {
    check_inner(meta, Some(data_len), at_seq, &NoProgress)
}

/// [`check_with_data`], reporting each metadata block read to `progress` (the total is the
/// metadata blocks the record says are in use).
pub fn check_with_progress(
    meta: Arc<dyn BlockDev>,
    data_len: Option<u64>,
    at_seq: Option<u64>,
    progress: &dyn Progress,
) -> Report {
    check_inner(meta, data_len, at_seq, progress)
}

fn check_inner(
    meta: Arc<dyn BlockDev>,
    data_len: Option<u64>,
    at_seq: Option<u64>,
    progress: &dyn Progress,
) -> Report {
    let mut rep = Report::default();
    let (tm, open) = match Tm::open_at(meta.clone(), 256, true, at_seq) {
        Ok(x) => x,
        Err(e) => {
            rep.error("journal", None, "", format!("cannot open the pool: {e}"));
            damaged_roots(&mut rep, meta);
            return rep;
        }
    };
    report::journal_findings(&mut rep, &open);
    let rec = tm.last_record().clone();
    let label = tm.label().clone();
    drop(tm);
    progress.set_total(rec.meta_allocated);
    let mut c = Checker {
        dev: meta,
        label,
        newest: open.newest_valid_seq,
        rec: rec.clone(),
        meta_refs: vec![0u32; rec.meta_blocks as usize],
        data_refs: vec![0u8; rec.data_blocks as usize],
        data_big: HashMap::new(),
        data_len,
        memo: HashMap::new(),
        rep,
        progress,
    };
    c.run();
    c.rep
}

/// When no record opens: say which root block of each valid record is damaged.
fn damaged_roots(rep: &mut Report, meta: Arc<dyn BlockDev>) {
    let mut lbuf = vec![0u8; BLOCK_SIZE];
    if meta.read_at(&mut lbuf, 0).is_err() {
        return;
    }
    let Ok(label) = Label::decode(&lbuf) else {
        return;
    };
    let Ok(slots) = crate::meta::journal::scan(meta.as_ref(), &label.uuid, label.ring_slots) else {
        return;
    };
    let mut bm = crate::meta::cache::BlockManager::new(meta, label.uuid, label.meta_blocks, 64);
    let mut seen = std::collections::HashSet::new();
    for s in &slots {
        if let Ok(rec) = &s.result {
            if let Err((b, msg)) = crate::meta::txn::verify_record_roots(&mut bm, rec) {
                if seen.insert((b, msg.clone())) {
                    rep.error("node", Some(b), &format!("root of seq {}", rec.seq), msg);
                }
            }
        }
    }
}

/// One check in progress: the reference counts found so far and the findings.
struct Checker<'p> {
    dev: Arc<dyn BlockDev>,
    label: Label,
    /// The newest valid commit (the one checked, unless `--seq` named an older one).
    newest: u64,
    rec: Record,
    meta_refs: Vec<u32>,
    data_refs: Vec<u8>,
    data_big: HashMap<u64, u64>,
    /// Length of the data device, when it is checked too.
    data_len: Option<u64>,
    /// Entries below each visited node (for per-volume mapped counts of shared subtrees).
    memo: HashMap<u64, u64>,
    rep: Report,
    /// Told of every block read (`Checker::read`).
    progress: &'p dyn Progress,
}

/// Everything collected from the leaves of the trees that describe the pool itself.
#[derive(Default)]
struct Collected {
    details: BTreeMap<u64, Details>,
    dev_roots: BTreeMap<u64, BlockRef>,
    pages: BTreeMap<u64, BlockRef>,
    overflow: BTreeMap<u64, u64>,
}
