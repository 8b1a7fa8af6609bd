//! Walking what a record names: the details tree and the top-level mapping tree, every
//! volume's mapping tree (mappings inside the pool and the volume, mapped counts against
//! the details), mapped blocks past the end of the data device, the space maps' trees, and
//! the previous state's space-map index that the allocator still reads.

use super::{Checker, Collected};
use crate::meta::block::{self, BlockType};
use crate::meta::btree::Node;
use crate::meta::journal::{decode_ref, BlockRef, RootId};
use crate::meta::spacemap::{SM_INDEX, SM_OVERFLOW};
use crate::meta::MetaBlock;
use crate::pool::details::{Details, DETAILS};
use crate::pool::trees::{unpack_mapping, DEV_ROOTS, MAPPING};

impl Checker<'_> {
    /// Check everything the record names.
    pub(super) fn run(&mut self) {
        for b in 0..self.label.first_free_block().min(self.rec.meta_blocks) {
            self.meta_refs[b as usize] += 1;
        }
        let coll = self.user_trees();
        self.volumes(&coll);
        self.space_maps();
        self.previous_space_maps();
    }

    /// Walk the details tree and the top-level mapping tree (their nodes are counted).
    fn user_trees(&mut self) -> Collected {
        let r = |id| self.rec.root(id).r;
        let (details_root, top_root) = (r(RootId::User0), r(RootId::User1));
        let details_kind = DETAILS;
        let mut coll = Collected::default();
        self.tree(
            details_root,
            details_kind,
            "details tree",
            &mut |c, k, v| {
                coll.details.insert(k, Details::decode(v));
                let _ = c;
            },
        );
        self.tree(
            top_root,
            DEV_ROOTS,
            "top-level mapping tree",
            &mut |_, k, v| {
                coll.dev_roots.insert(k, decode_ref(v));
            },
        );
        coll
    }

    /// Each volume's mapping tree against its details entry, and details without a tree.
    /// Each subtree root gets one reference per volume that points at it.
    fn volumes(&mut self, coll: &Collected) {
        let bs = self.label.data_block_size;
        for (id, root) in coll.dev_roots.clone() {
            let name = coll
                .details
                .get(&id)
                .map(|d| d.name.clone())
                .unwrap_or_default();
            let loc = format!("volume {id} '{name}'");
            let size_blocks = coll
                .details
                .get(&id)
                .map(|d| d.size.div_ceil(bs))
                .unwrap_or(u64::MAX);
            let data_blocks = self.rec.data_blocks;
            let mut beyond = 0u64;
            let entries = self.tree(root, MAPPING, &loc, &mut |c, vb, v| {
                let (pb, _) = unpack_mapping(u64::from_le_bytes(v.try_into().unwrap()));
                if pb.0 >= data_blocks {
                    c.rep.error("mapping", None, &loc, format!("virtual block {vb} maps to data block {} beyond the pool ({data_blocks} blocks)", pb.0));
                } else {
                    c.add_data_ref(pb.0);
                }
                if vb >= size_blocks {
                    beyond += 1;
                }
            });
            if beyond > 0 {
                self.rep.error(
                    "mapping",
                    None,
                    &loc,
                    format!("{beyond} mappings lie beyond the volume's size"),
                );
            }
            match coll.details.get(&id) {
                None => self.rep.error(
                    "details",
                    None,
                    &loc,
                    "volume has a mapping tree but no details entry",
                ),
                Some(d) if d.mapped != entries => self.rep.error(
                    "details",
                    None,
                    &loc,
                    format!(
                        "details say {} mapped blocks, the tree holds {entries}",
                        d.mapped
                    ),
                ),
                _ => {}
            }
        }
        self.data_past_end(bs);
        for (id, d) in &coll.details {
            if !coll.dev_roots.contains_key(id) {
                self.rep.error(
                    "details",
                    None,
                    &format!("volume {id} '{}'", d.name),
                    "details entry without a mapping tree",
                );
            }
        }
        self.rep.stats.volumes = coll.details.len() as u64;
    }

    /// The data and metadata space maps: their trees and pages are metadata too, so every
    /// tree is walked before any count is compared.
    fn space_maps(&mut self) {
        let rec = self.rec.clone();
        let r = |id| rec.root(id).r;
        let mut sms = Vec::new();
        for (name, idx, ovf, nr, allocated) in [
            (
                "data",
                RootId::DataIndex,
                RootId::DataOverflow,
                self.rec.data_blocks,
                self.rec.data_allocated,
            ),
            (
                "metadata",
                RootId::MetaIndex,
                RootId::MetaOverflow,
                self.rec.meta_blocks,
                self.rec.meta_allocated,
            ),
        ] {
            let mut c2 = Collected::default();
            let loc = format!("{name} space map");
            self.tree(r(idx), SM_INDEX, &format!("{loc} index"), &mut |_, k, v| {
                c2.pages.insert(k, decode_ref(v));
            });
            self.tree(
                r(ovf),
                SM_OVERFLOW,
                &format!("{loc} overflow tree"),
                &mut |_, k, v| {
                    c2.overflow
                        .insert(k, u64::from_le_bytes(v.try_into().unwrap()));
                },
            );
            for p in c2.pages.values() {
                self.add_meta_ref(p.block);
            }
            sms.push((name == "metadata", nr, allocated, c2, loc));
        }
        for (is_meta, nr, allocated, c2, loc) in sms {
            self.compare_space_map(is_meta, nr, allocated, &c2, &loc);
        }
    }

    /// The previous state's space maps must still be intact (allocation protection): the
    /// allocator reads their index and pages before it hands out a block, so damage there
    /// makes every allocation of that space map fail.
    fn previous_space_maps(&mut self) {
        if self.rec.seq.saturating_add(2) <= self.newest {
            // The commit before this one is no longer protected: the commits since may have
            // reused its blocks, so its space map reads as damage although nothing is wrong
            // (and nothing reads it: an open at this seq is read-only, and `pool rewind`
            // records this state as its own previous one).
            self.rep.info(
                "journal",
                "",
                format!(
                    "the space maps of seq {} (the commit before this one) are not checked: \
                     that commit is no longer protected",
                    self.rec.seq.saturating_sub(1)
                ),
            );
            return;
        }
        for id in [RootId::PrevDataIndex, RootId::PrevMetaIndex] {
            let root = self.rec.root(id);
            if root.r.block.0 == 0 {
                continue;
            }
            let mut seen = std::collections::HashSet::new();
            if let Err((b, msg)) = self.prev_index(root.r, 0, &mut seen) {
                self.rep.error(
                    "journal",
                    Some(b),
                    "",
                    format!(
                        "{id:?}: the previous commit's space map is damaged ({msg}); \
                         allocations read it, so writes fail"
                    ),
                );
            }
        }
    }

    /// Read a previous state's space-map index and the bitmap pages it names (reachable
    /// blocks only verified, not counted: that state holds no references of its own).
    fn prev_index(
        &self,
        r: BlockRef,
        depth: u32,
        seen: &mut std::collections::HashSet<u64>,
    ) -> Result<(), (MetaBlock, String)> {
        if depth > 64 || !seen.insert(r.block.0) {
            return Err((r.block, "the index tree loops".into()));
        }
        let raw = self
            .read(r.block, BlockType::Node)
            .map_err(|e| (r.block, e.to_string()))?;
        if block::generation(&raw) != r.gen {
            return Err((r.block, "a node has another generation".into()));
        }
        let n = Node(&raw);
        n.validate_shape().map_err(|e| (r.block, e))?;
        if n.value_size() != 16 {
            return Err((r.block, "not a space-map index node".into()));
        }
        for i in 0..n.nr() {
            let c = n.child(i);
            if !n.is_leaf() {
                self.prev_index(c, depth + 1, seen)?;
                continue;
            }
            let page = self
                .read(c.block, BlockType::Bitmap)
                .map_err(|e| (c.block, e.to_string()))?;
            if block::generation(&page) != c.gen {
                return Err((c.block, "a bitmap page has another generation".into()));
            }
        }
        Ok(())
    }

    /// Mapped data blocks whose end lies past the end of the data device.
    fn data_past_end(&mut self, bs: u64) {
        let Some(len) = self.data_len else { return };
        let first = len / bs;
        let past: Vec<u64> = (first..self.data_refs.len() as u64)
            .filter(|&b| self.data_refs[b as usize] != 0)
            .collect();
        if let (Some(lo), Some(hi)) = (past.first(), past.last()) {
            self.rep.error(
                "data",
                None,
                "data file",
                format!(
                    "{} mapped blocks lie past the end of the data file ({len} bytes): data \
                     blocks {lo} to {hi} would read as zeros; the data file was truncated or \
                     replaced",
                    past.len()
                ),
            );
        }
    }
}
