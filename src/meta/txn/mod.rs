//! The transaction manager: one `Tm` owns the metadata device of a pool. It allocates and
//! reference-counts metadata and data blocks (`refcount.rs`, the space-map engine), gives the
//! B-tree its node store ([`NodeStore`]), and commits (`commit.rs`) and opens (`open.rs`)
//! through the superblock journal.
//!
//! Commit (docs/design.md §5): the caller has synced the data device; then (1) pending metadata
//! reference-count deltas are applied to the metadata space map until a fixed point; (2) every
//! dirty block is written, only into blocks free as of the last two commits; (3) `fdatasync`;
//! (4) the record goes to slot `seq % N` of both rings; (5) `fdatasync`. An I/O error at any
//! step makes the transaction manager fail-stop: it never retries and acknowledges.

mod commit;
mod open;
mod refcount;

pub use open::{verify_record_roots, OpenReport, Rewind};

use super::btree::NodeStore;
use super::cache::{Block, BlockManager};
use super::journal::{BlockRef, Record, RootId};
use super::label::Label;
use super::spacemap::{SmKind, SmMemo, SmRoots, SmState};
use super::{DataBlock, MetaBlock, MetaError, Result};
use crate::hash::IntSet;
use std::collections::BTreeMap;

/// Blocks kept free for the commit itself (space-map pages and index nodes it shadows).
const META_RESERVE: u64 = 48;

pub struct Tm {
    bm: BlockManager,
    label: Label,
    /// Generation (= seq it will commit as) of the transaction in progress.
    gen: u64,
    /// The last durable record.
    last: Record,
    msm: SmState,
    dsm: SmState,
    shadowed: IntSet<u64>,
    pending: BTreeMap<u64, i64>,
    /// Sum of the positive deltas in `pending` (this transaction's allocations), kept up to
    /// date so the free-space estimate every allocation checks is O(1).
    pending_alloc: i64,
    bump: Option<u64>,
    applying: bool,
    /// Data blocks whose count reached zero in this transaction (punched after commit).
    data_freed: Vec<u64>,
    sm_memo: SmMemo,
    read_only: bool,
    /// Metadata blocks the last commit freed (zero in S, not in S-1): free by the space map
    /// but protected from reuse until the next commit, so not available to allocate.
    meta_freed_last: u64,
    /// The same count for the commit being applied.
    meta_freed_now: u64,
    failed: Option<String>,
    /// Test-only fault switch: write the record before syncing the new metadata blocks.
    broken_commit_order: bool,
}

impl Tm {
    pub(crate) fn is_shadowed(&self, b: MetaBlock) -> bool {
        self.shadowed.contains(&b.0)
    }
    pub(crate) fn mark_shadowed(&mut self, b: MetaBlock) {
        self.shadowed.insert(b.0);
    }

    // ----- state ---------------------------------------------------------------------------

    pub fn check_writable(&self) -> Result<()> {
        if let Some(why) = &self.failed {
            return Err(MetaError::FailStopped(why.clone()));
        }
        if self.read_only {
            return Err(MetaError::ReadOnly("the pool was opened read-only".into()));
        }
        Ok(())
    }

    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Stop accepting changes for good (an fsync failed: what is on disk is unknown).
    pub fn fail_stop(&mut self, why: String) {
        if self.failed.is_none() {
            tracing::error!("fail-stop: the pool refuses every change from now on: {why}");
            self.failed = Some(why);
        }
    }

    fn fail(&mut self, e: MetaError) -> MetaError {
        if self.failed.is_none() {
            tracing::error!("fail-stop: the pool refuses every change from now on: {e}");
            self.failed = Some(e.to_string());
        }
        e
    }

    /// True when the transaction in progress changed anything.
    pub fn is_dirty(&self) -> bool {
        !self.shadowed.is_empty() || !self.pending.is_empty()
    }

    /// Forget the transaction in progress and return to the last durable record.
    pub fn abort(&mut self) {
        self.bm.discard_dirty();
        self.pending.clear();
        self.pending_alloc = 0;
        self.shadowed.clear();
        self.sm_memo.forget_pages();
        self.data_freed.clear();
        self.meta_freed_now = 0;
        let last = self.last.clone();
        self.msm = sm_from_record(SmKind::Meta, &last, self.msm.protected, self.msm.cursor);
        self.dsm = sm_from_record(SmKind::Data, &last, self.dsm.protected, self.dsm.cursor);
    }

    /// The user roots and counters of the last durable record.
    pub fn user_state(&self) -> UserRoots {
        UserRoots {
            roots: [
                self.last.root(RootId::User0).r,
                self.last.root(RootId::User1).r,
            ],
            counters: self.last.counters,
        }
    }

    // ----- read-only views -----------------------------------------------------------------

    /// Generation (= the seq it will commit as) of the transaction in progress.
    pub fn generation(&self) -> u64 {
        self.gen
    }
    /// The last durable record.
    pub fn last_record(&self) -> &Record {
        &self.last
    }
    pub fn label(&self) -> &Label {
        &self.label
    }
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
    /// Size and use of the data space map.
    pub fn data_space(&self) -> SpaceUse {
        SpaceUse::of(&self.dsm)
    }
    /// Size and use of the metadata space map (as of the last commit).
    pub fn meta_space(&self) -> SpaceUse {
        SpaceUse::of(&self.msm)
    }
    /// Dirty metadata blocks the transaction holds in memory.
    pub fn dirty_blocks(&self) -> usize {
        self.bm.dirty_count()
    }
    pub fn metadata_dev(&self) -> &std::sync::Arc<dyn crate::io::BlockDev> {
        self.bm.dev()
    }
    pub fn cache_stats(&self) -> super::cache::CacheStats {
        self.bm.stats
    }
    /// Data blocks whose count reached zero in this transaction, handed over once (the
    /// caller punches them after the commit).
    pub fn take_data_freed(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.data_freed)
    }
    /// Test-only fault switch: write the record before syncing the new metadata blocks.
    pub fn set_broken_commit_order(&mut self, on: bool) {
        self.broken_commit_order = on;
    }
}

/// What the user of the transaction manager keeps in each record: two tree roots and two
/// counters, opaque here (the pool names them, see `pool::UserState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRoots {
    pub roots: [BlockRef; 2],
    pub counters: [u64; 2],
}

/// A space map's size and the blocks in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceUse {
    pub total: u64,
    pub allocated: u64,
}

impl SpaceUse {
    fn of(sm: &SmState) -> SpaceUse {
        SpaceUse {
            total: sm.nr_blocks,
            allocated: sm.nr_allocated,
        }
    }
    pub fn free(&self) -> u64 {
        self.total.saturating_sub(self.allocated)
    }
}

impl NodeStore for Tm {
    fn generation(&self) -> u64 {
        self.gen
    }
    fn pool_uuid(&self) -> [u8; 16] {
        *self.bm.uuid()
    }
    fn alloc_block(&mut self) -> Result<MetaBlock> {
        self.alloc_meta()
    }
    fn read_block(&mut self, b: MetaBlock) -> Result<Block> {
        self.bm.read(b, super::block::BlockType::Node)
    }
    fn block_ref(&mut self, b: MetaBlock) -> Result<&[u8]> {
        self.bm.read_ref(b, super::block::BlockType::Node)
    }
    fn block_mut(&mut self, b: MetaBlock) -> Result<&mut [u8]> {
        Ok(self.bm.get_mut(b, super::block::BlockType::Node)?)
    }
    fn put_block(&mut self, b: MetaBlock, buf: Vec<u8>) -> Result<()> {
        self.bm.put_new(b, buf)
    }
    fn ref_count(&mut self, b: MetaBlock) -> Result<u64> {
        self.meta_count(b)
    }
    fn ref_delta(&mut self, b: MetaBlock, d: i64) {
        self.meta_delta(b, d)
    }
    fn was_shadowed(&self, b: MetaBlock) -> bool {
        self.is_shadowed(b)
    }
    fn note_shadowed(&mut self, b: MetaBlock) {
        self.mark_shadowed(b)
    }
    fn data_delta(&mut self, b: DataBlock, d: i64) -> Result<()> {
        if d > 0 {
            self.data_inc(b)
        } else {
            self.data_dec(b)
        }
    }
}

fn sm_from_record(
    k: SmKind,
    rec: &Record,
    protected: [Option<BlockRef>; 2],
    cursor: u64,
) -> SmState {
    let (idx, ovf, nr, alloc) = match k {
        SmKind::Meta => (
            RootId::MetaIndex,
            RootId::MetaOverflow,
            rec.meta_blocks,
            rec.meta_allocated,
        ),
        SmKind::Data => (
            RootId::DataIndex,
            RootId::DataOverflow,
            rec.data_blocks,
            rec.data_allocated,
        ),
    };
    SmState {
        kind: k,
        nr_blocks: nr,
        nr_allocated: alloc,
        roots: SmRoots {
            index: rec.root(idx).r,
            overflow: rec.root(ovf).r,
        },
        protected,
        cursor,
    }
}
