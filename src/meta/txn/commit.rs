//! The commit protocol (docs/design.md §5; steps in the `txn` module docs): apply the
//! metadata deltas to a fixed point, write and sync the new blocks, then the record to both
//! rings and sync again. Any I/O error fail-stops the transaction manager.

use super::super::block::BlockType;
use super::super::journal::{self, BlockRef, Record, Root, RootId, NR_ROOTS};
use super::super::spacemap::{SmKind, SpaceMap};
use super::super::{MetaBlock, MetaError, Result};
use super::Tm;

impl Tm {
    /// Commit the transaction (the caller has already synced the data device). Returns the
    /// new record.
    pub fn commit(&mut self, user: super::UserRoots) -> Result<Record> {
        let (user_roots, counters) = (user.roots, user.counters);
        self.check_writable()?;
        // (1) Apply metadata reference-count deltas until nothing is left pending.
        self.applying = true;
        let applied = self.apply_pending();
        self.applying = false;
        applied?;
        // (2) Write the new blocks, (3) sync.
        let seq = self.gen;
        let rec = self.build_record(seq, user_roots, counters)?;
        if self.broken_commit_order {
            self.write_record(&rec).map_err(|e| self.fail(e))?;
            self.bm.write_dirty().map_err(|e| self.fail(e))?;
            self.bm.sync().map_err(|e| self.fail(e))?;
        } else {
            self.bm.write_dirty().map_err(|e| self.fail(e))?;
            self.bm.sync().map_err(|e| self.fail(e))?;
            // (4) the record to both rings, (5) sync.
            self.write_record(&rec).map_err(|e| self.fail(e))?;
            self.bm.sync().map_err(|e| self.fail(e))?;
        }
        self.after_commit(rec.clone());
        Ok(rec)
    }

    pub(super) fn apply_pending(&mut self) -> Result<()> {
        while let Some((&b, &d)) = self.pending.iter().next() {
            let stored = self.space_map(SmKind::Meta).count(b)? as i64;
            let new = stored + d;
            if new < 0 {
                return Err(MetaError::corrupt(
                    MetaBlock(b),
                    "reference count would go below zero",
                ));
            }
            self.space_map(SmKind::Meta).set_count(b, new as u64)?;
            // Deltas added for `b` while applying stay pending.
            self.meta_delta(MetaBlock(b), -d);
        }
        Ok(())
    }

    pub(super) fn build_record(
        &mut self,
        seq: u64,
        user: [BlockRef; 2],
        counters: [u64; 2],
    ) -> Result<Record> {
        let mut roots = [Root::default(); NR_ROOTS];
        let mut set = |tm: &mut Tm, id: RootId, r: BlockRef, ty: BlockType| -> Result<()> {
            let crc = tm.bm.crc_of(r.block, ty)?;
            roots[id as usize] = Root { r, crc };
            Ok(())
        };
        set(self, RootId::User0, user[0], BlockType::Node)?;
        set(self, RootId::User1, user[1], BlockType::Node)?;
        set(
            self,
            RootId::DataIndex,
            self.dsm.roots.index,
            BlockType::Node,
        )?;
        set(
            self,
            RootId::DataOverflow,
            self.dsm.roots.overflow,
            BlockType::Node,
        )?;
        set(
            self,
            RootId::MetaIndex,
            self.msm.roots.index,
            BlockType::Node,
        )?;
        set(
            self,
            RootId::MetaOverflow,
            self.msm.roots.overflow,
            BlockType::Node,
        )?;
        // The previous state's indexes: the record's own S-1 protection. Their blocks are
        // protected, so their crcs are those recorded when they were committed.
        let prev_d = self.last.root(RootId::DataIndex);
        let prev_m = self.last.root(RootId::MetaIndex);
        roots[RootId::PrevDataIndex as usize] = if self.dsm.protected[0].is_some() {
            prev_d
        } else {
            Root::default()
        };
        roots[RootId::PrevMetaIndex as usize] = if self.msm.protected[0].is_some() {
            prev_m
        } else {
            Root::default()
        };
        let slot = (seq % self.label.ring_slots as u64) as u32;
        Ok(Record {
            seq,
            slot,
            flags: 0,
            data_blocks: self.dsm.nr_blocks,
            meta_blocks: self.msm.nr_blocks,
            counters,
            data_allocated: self.dsm.nr_allocated,
            meta_allocated: self.msm.nr_allocated,
            roots,
        })
    }

    pub(super) fn write_record(&mut self, rec: &Record) -> Result<()> {
        let uuid = *self.bm.uuid();
        for b in journal::slot_blocks(self.label.ring_slots, rec.slot) {
            let mut buf = rec.encode(&uuid, b);
            self.bm.write_direct(b, &mut buf)?;
        }
        Ok(())
    }

    pub(super) fn after_commit(&mut self, rec: Record) {
        self.dsm.protected = [Some(self.dsm.roots.index), self.dsm.protected[0]];
        self.msm.protected = [Some(self.msm.roots.index), self.msm.protected[0]];
        self.sm_memo.forget_protected();
        self.shadowed.clear();
        self.last = rec;
        self.gen += 1;
        self.meta_freed_last = std::mem::take(&mut self.meta_freed_now);
    }
}
