//! Create and open: a new metadata device (label, first record), and open by scanning every
//! journal slot, taking the newest record whose roots verify; falling back from a *valid*
//! record with damaged roots is a rewind, reported (docs/design.md §5).

use super::super::block::{self, BlockType};
use super::super::btree::Btree;
use super::super::cache::BlockManager;
use super::super::journal::{self, Record, Root, RootId, SlotScan, NR_ROOTS};
use super::super::label::Label;
use super::super::spacemap::{
    disk, SmKind, SmRoots, SmState, SmStore, SpaceMap, SM_INDEX, SM_OVERFLOW,
};
use super::super::{MetaBlock, MetaError, Result, BLOCK_SIZE};
use super::{sm_from_record, Tm};
use crate::hash::IntSet;
use crate::io::BlockDev;
use std::collections::BTreeMap;
use std::sync::Arc;

#[cfg(test)]
#[path = "open_tests.rs"]
mod tests;

/// What open found in the journal (reported by `pool info` and the checker).
#[derive(Debug, Clone)]
pub struct OpenReport {
    pub slots: Vec<SlotScan>,
    pub chosen_seq: u64,
    pub newest_valid_seq: u64,
    /// Records newer than the chosen one that were skipped, with the reason.
    pub skipped: Vec<(u64, String)>,
}

/// Open fell back from a valid newest record whose trees are damaged: damage to an
/// acknowledged commit, not the trace of a crash (a record is written only after the blocks
/// it names are durable, so a crash leaves the newest valid record's trees whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewind {
    /// The newest valid record, whose trees are damaged.
    pub newest: u64,
    /// The commit open fell back to.
    pub chosen: u64,
    /// Why the newest record (and any between) was skipped.
    pub why: String,
}

impl std::fmt::Display for Rewind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the newest commit (seq {}) is damaged ({}); the newest intact commit is seq {}",
            self.newest, self.why, self.chosen
        )
    }
}

impl OpenReport {
    /// `Some` when open fell back from damaged acknowledged state (not for an explicit
    /// older state, nor for torn records, which are not valid and never counted).
    pub fn rewound(&self) -> Option<Rewind> {
        if self.chosen_seq == self.newest_valid_seq || self.skipped.is_empty() {
            return None;
        }
        let why = self
            .skipped
            .iter()
            .map(|(seq, why)| format!("seq {seq}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        Some(Rewind {
            newest: self.newest_valid_seq,
            chosen: self.chosen_seq,
            why,
        })
    }
}
impl Tm {
    /// Initialise a new metadata device. The caller builds its user trees with
    /// [`crate::meta::btree::Btree::btree_empty`] and commits.
    pub fn create(
        dev: Arc<dyn BlockDev>,
        label: Label,
        data_blocks: u64,
        cache_blocks: usize,
    ) -> Result<Tm> {
        let meta_blocks = label.meta_blocks;
        dev.ensure_len(meta_blocks * BLOCK_SIZE as u64)
            .map_err(|e| MetaError::io_device("size metadata device", e))?;
        let mut bm = BlockManager::new(dev, label.uuid, meta_blocks, cache_blocks);
        let mut lbuf = label.encode();
        bm.write_direct(MetaBlock(0), &mut lbuf)?;
        let empty_sm = |kind, nr_blocks| SmState {
            kind,
            nr_blocks,
            nr_allocated: 0,
            roots: SmRoots::default(),
            protected: [None, None],
            cursor: 0,
        };
        let first_free = label.first_free_block();
        let mut tm = Tm {
            bm,
            gen: 1,
            last: Record {
                seq: 0,
                slot: 0,
                flags: 0,
                data_blocks,
                meta_blocks,
                counters: [0, 0],
                data_allocated: 0,
                meta_allocated: 0,
                roots: [Root::default(); NR_ROOTS],
            },
            label,
            msm: empty_sm(SmKind::Meta, meta_blocks),
            dsm: empty_sm(SmKind::Data, data_blocks),
            shadowed: IntSet::default(),
            pending: BTreeMap::new(),
            pending_alloc: 0,
            bump: Some(first_free),
            applying: false,
            data_freed: Vec::new(),
            sm_memo: Default::default(),
            read_only: false,
            meta_freed_last: 0,
            meta_freed_now: 0,
            failed: None,
            broken_commit_order: false,
        };
        for k in [SmKind::Meta, SmKind::Data] {
            let idx = tm.btree_empty(SM_INDEX)?;
            let ovf = tm.btree_empty(SM_OVERFLOW)?;
            tm.sm_state_mut(k).roots = SmRoots {
                index: idx,
                overflow: ovf,
            };
            for pi in 0..tm.sm_state(k).nr_pages() {
                disk::add_page(&mut tm, k, pi)?;
                let pr = disk::page_ref(&mut tm, k, pi)?;
                tm.mark_shadowed(pr.block);
            }
        }
        for b in 0..first_free {
            tm.meta_delta(MetaBlock(b), 1);
        }
        tm.bump = None;
        Ok(tm)
    }

    /// Open a metadata device: pick the newest record whose roots verify.
    pub fn open(
        dev: Arc<dyn BlockDev>,
        cache_blocks: usize,
        read_only: bool,
    ) -> Result<(Tm, OpenReport)> {
        Self::open_at(dev, cache_blocks, read_only, None)
    }

    /// Open at the newest record, or at the record with sequence number `at` (read-only
    /// inspection of an older state).
    pub fn open_at(
        dev: Arc<dyn BlockDev>,
        cache_blocks: usize,
        read_only: bool,
        at: Option<u64>,
    ) -> Result<(Tm, OpenReport)> {
        let mut lbuf = vec![0u8; BLOCK_SIZE];
        dev.read_at(&mut lbuf, 0)
            .map_err(|e| MetaError::io("read label", MetaBlock(0), e))?;
        if dev.len() < BLOCK_SIZE as u64 {
            return Err(MetaError::BadLabel(
                "metadata file is empty or truncated (no label block)".into(),
            ));
        }
        let label = Label::decode(&lbuf)?;
        // Saturating: a damaged label's size must not wrap around to a plausible one.
        if dev.len() < label.meta_blocks.saturating_mul(BLOCK_SIZE as u64) {
            return Err(MetaError::BadLabel(format!(
                "metadata file is truncated: {} bytes, the pool needs {}",
                dev.len(),
                label.meta_blocks.saturating_mul(BLOCK_SIZE as u64)
            )));
        }
        let slots = journal::scan(dev.as_ref(), &label.uuid, label.ring_slots)?;
        let mut recs: Vec<Record> = slots
            .iter()
            .filter_map(|s| s.result.as_ref().ok().cloned())
            .collect();
        recs.sort_by_key(|r| std::cmp::Reverse(r.seq));
        recs.dedup_by(|a, b| a.seq == b.seq && a == b);
        let newest = recs.first().map(|r| r.seq).ok_or_else(|| {
            MetaError::NoValidRecord("no journal slot holds a valid record".into())
        })?;
        let bm = BlockManager::new(dev, label.uuid, label.meta_blocks, cache_blocks);
        let mut skipped = Vec::new();
        let mut chosen = None;
        let mut bm = bm;
        for rec in &recs {
            if let Some(at) = at {
                if rec.seq != at || at.saturating_add(2) < newest {
                    continue;
                }
            } else if rec.seq.saturating_add(2) < newest {
                // Older states are no longer protected from reuse.
                break;
            }
            match verify_roots(&mut bm, rec) {
                Ok(()) => {
                    chosen = Some(rec.clone());
                    break;
                }
                Err(e) => skipped.push((rec.seq, e)),
            }
        }
        let rec = match chosen {
            Some(r) => r,
            None => {
                let why = if let (Some(at), Some((_, e))) = (at, skipped.first()) {
                    format!("commit {at} is damaged: {e}")
                } else if let Some(at) = at {
                    let lo = newest
                        .saturating_sub(2)
                        .max(recs.last().map_or(0, |r| r.seq));
                    format!(
                        "commit {at} cannot be opened: only the last three commits stay intact \
                         ({lo} to {newest}); later commits reuse the blocks of older ones"
                    )
                } else {
                    format!("every recent record is damaged: {skipped:?}")
                };
                return Err(MetaError::NoValidRecord(why));
            }
        };
        let prot = |r: Root| if r.r.block.0 == 0 { None } else { Some(r.r) };
        let msm_prot = [
            Some(rec.root(RootId::MetaIndex).r),
            prot(rec.root(RootId::PrevMetaIndex)),
        ];
        let dsm_prot = [
            Some(rec.root(RootId::DataIndex).r),
            prot(rec.root(RootId::PrevDataIndex)),
        ];
        let tm = Tm {
            bm,
            gen: newest + 1,
            msm: sm_from_record(SmKind::Meta, &rec, msm_prot, 0),
            dsm: sm_from_record(SmKind::Data, &rec, dsm_prot, 0),
            last: rec.clone(),
            label,
            shadowed: IntSet::default(),
            pending: BTreeMap::new(),
            pending_alloc: 0,
            bump: None,
            applying: false,
            data_freed: Vec::new(),
            sm_memo: Default::default(),
            read_only,
            meta_freed_last: 0,
            meta_freed_now: 0,
            failed: None,
            broken_commit_order: false,
        };
        let mut tm = tm;
        if !read_only {
            tm.meta_freed_last = tm.space_map(SmKind::Meta).freed_by_last_commit()?.len() as u64;
        }
        let report = OpenReport {
            slots,
            chosen_seq: rec.seq,
            newest_valid_seq: newest,
            skipped,
        };
        Ok((tm, report))
    }
}

/// Check that every root a record names is a node with the recorded crc and generation.
fn verify_roots(bm: &mut BlockManager, rec: &Record) -> std::result::Result<(), String> {
    verify_record_roots(bm, rec).map_err(|(_, msg)| msg)
}

/// The same, naming the damaged root's block (for the checker).
pub fn verify_record_roots(
    bm: &mut BlockManager,
    rec: &Record,
) -> std::result::Result<(), (MetaBlock, String)> {
    for id in [
        RootId::User0,
        RootId::User1,
        RootId::DataIndex,
        RootId::DataOverflow,
        RootId::MetaIndex,
        RootId::MetaOverflow,
    ] {
        let root = rec.root(id);
        let b = root.r.block;
        let raw = bm.read_raw(b).map_err(|e| (b, e.to_string()))?;
        block::verify(&raw, Some(BlockType::Node), b, bm.uuid())
            .map_err(|e| (b, format!("{id:?} root: {e}")))?;
        if block::stored_crc(&raw) != root.crc {
            return Err((
                b,
                format!(
                    "{id:?} root {b} has crc {:#x}, record says {:#x}",
                    block::stored_crc(&raw),
                    root.crc
                ),
            ));
        }
        if block::generation(&raw) != root.r.gen {
            return Err((
                b,
                format!(
                    "{id:?} root {b} has generation {}, record says {}",
                    block::generation(&raw),
                    root.r.gen
                ),
            ));
        }
    }
    Ok(())
}
